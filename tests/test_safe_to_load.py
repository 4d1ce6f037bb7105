"""Files a user is handed are hostile: a checkpoint that would run code, links planted in a run
directory, a lock held from another PID namespace, a disk that fills at any write, a run read
from another directory. Each test pins one class, through every path that meets it."""
import errno
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import eval as ev
import llama
import lora
import loop
import train
import walk
from test_faults import cf_run, one_error_line, write_data
from drivers import report
from tools import limits, runs


@pytest.fixture
def root(tmp_path):
    return write_data(tmp_path / "data")


class Payload:
    """Unpickling this makes a directory: the proof that a loader ran the file's code."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_no_loader_runs_a_hostile_pickle(root, tmp_path, capsys):
    out, marker = tmp_path / "mf", tmp_path / "ran"
    assert cf_run(root, out) == 0
    for name in ("best.pt", "last.pt"):
        torch.save({"args": {}, "model": Payload(marker)}, out / name)  # a plain pickle where a checkpoint goes
    (out / "evil.pkl").write_bytes(pickle.dumps(Payload(marker)))
    capsys.readouterr()
    assert cf_run(root, out, "--resume", "--max-epochs", "3") == 2            # --resume
    assert f"{out / 'last.pt'}: cannot read this checkpoint" in one_error_line(capsys)
    assert ev.main([str(out)]) == 2                                            # eval.py RUN
    assert f"{out / 'best.pt'}: cannot read this checkpoint" in one_error_line(capsys)
    assert walk.main(["--run", str(out), "--data-dir", str(root)]) == 2      # walk.py --run
    one_error_line(capsys)
    for path in (out / "best.pt", out / "evil.pkl"):                           # --cf-ckpt, read by the joint stage
        with pytest.raises(runs.RunError, match="cannot read this checkpoint"):
            train.load_cf(train.parse_args(["--stage", "joint", "--cf", "mf", "--cf-ckpt", str(path)]), None)
    adapter = tmp_path / "adapter"                                             # an adapter's legacy .bin
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(dict(peft_type="LORA", r=2, lora_alpha=4,
                                                                 target_modules=["q_proj"])))
    torch.save({"x": Payload(marker)}, adapter / "adapter_model.bin")
    model = torch.nn.Module()
    model.q_proj = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="adapter_model.bin"):
        lora.load_adapter(model, adapter)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["best.pt", "last.pt", "log.jsonl", "metrics.json", "run.lock", "rescored.json"])
def test_nothing_is_written_through_a_planted_link(root, tmp_path, capsys, name):
    out, outside = tmp_path / "mf", tmp_path / "outside"
    assert cf_run(root, out, "--stop-after", "1") == 0
    if name == "rescored.json":
        assert cf_run(root, out, "--resume") == 0
    keep = out / "kept"  # a link in place of a checkpoint: the run's own bytes, read through the link
    os.replace(out / name, keep) if (out / name).exists() else keep.write_bytes(b"")
    outside.write_bytes(keep.read_bytes())
    (out / name).symlink_to(outside)
    capsys.readouterr()
    rc = ev.main([str(out)]) if name == "rescored.json" else cf_run(root, out, "--resume")
    assert rc == 2 and f"{out / name} is a symbolic link; refusing to write through it" in one_error_line(capsys)
    assert outside.read_bytes() == keep.read_bytes()


LOCK_HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps(dict(pid=int(sys.argv[2]), host=sys.argv[3], started="then")).encode())
print("held", flush=True)
time.sleep(60)
"""


def test_a_lock_belongs_to_its_run_across_pid_namespaces(root, tmp_path, capsys):
    """Run A, pid 1 of its own namespace, shows the pid of run B: B is refused, and leaves A's lock."""
    out = tmp_path / "mf"
    out.mkdir()
    a = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out / runs.LOCK), str(os.getpid()),
                          socket.gethostname()], stdout=subprocess.PIPE, text=True)
    try:
        assert a.stdout.readline() == "held\n"
        before = (out / runs.LOCK).read_bytes()
        for run in (lambda: cf_run(root, out), lambda: cf_run(root, out, "--resume"), lambda: ev.main([str(out)])):
            capsys.readouterr()
            assert run() == 2 and f"is in use by another run (pid {os.getpid()} on" in one_error_line(capsys)
            assert (out / runs.LOCK).read_bytes() == before  # still A's
    finally:
        a.kill()
        a.wait()
    capsys.readouterr()
    assert cf_run(root, out) == 0  # A has ended: its lock is proven stale, and taken over
    assert f"taking over the lock of pid {os.getpid()}" in capsys.readouterr().out
    assert not (out / runs.LOCK).exists()


def test_eval_refuses_a_run_whose_lock_it_cannot_read(root, tmp_path, capsys):
    """A link where run.lock belongs counts as held (live_lock gives {}, falsy): eval.py refuses the run."""
    out = tmp_path / "mf"
    assert cf_run(root, out) == 0
    (out / runs.LOCK).symlink_to(tmp_path / "elsewhere")
    capsys.readouterr()
    assert ev.main([str(out), "--into", str(tmp_path / "into")]) == 2  # (it reads the run: checks its lock)
    assert "is in use by another run (an unreadable lock)" in one_error_line(capsys)
    assert ev.main([str(out)]) == 2 and "run.lock is a symbolic link" in one_error_line(capsys)  # (it holds it)
    assert not (out / "rescored.json").exists() and not (tmp_path / "into").exists()


def full_disk_at(monkeypatch, name, nth):
    """The nth write of a file called `name` fails as a full disk does, part-way through its bytes."""
    seen, opened = [0], {}
    mkstemp, fdopen = runs.tempfile.mkstemp, runs.os.fdopen

    def tracked_mkstemp(prefix="", **kw):
        fd, path = mkstemp(prefix=prefix, **kw)
        opened[fd] = prefix == name + "."
        return fd, path

    class Full:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()
        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def tracked_fdopen(fd, *a, **kw):
        f = fdopen(fd, *a, **kw)
        if opened.pop(fd, False):
            seen[0] += 1
            return Full(f) if seen[0] == nth else f
        return f
    monkeypatch.setattr(runs.tempfile, "mkstemp", tracked_mkstemp)
    monkeypatch.setattr(runs.os, "fdopen", tracked_fdopen)


def run_record(out):
    log = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "samples_per_s")}
           for line in (out / "log.jsonl").read_text().splitlines()]
    return log, json.loads((out / "metrics.json").read_text()), runs.read_checkpoint(str(out / "best.pt"))["model"]


@pytest.mark.parametrize("name, nth", [("best.pt", 1), ("last.pt", 2), ("log.jsonl", 2), ("metrics.json", 1),
                                       ("log.jsonl", 3)])
def test_a_full_disk_at_any_write_loses_nothing(root, tmp_path, capsys, monkeypatch, name, nth):
    assert cf_run(root, tmp_path / "whole", "--max-epochs", "3", "--patience", "9") == 0
    out = tmp_path / "mf"
    with monkeypatch.context() as m:
        full_disk_at(m, name, nth)
        capsys.readouterr()
        assert cf_run(root, out, "--max-epochs", "3", "--patience", "9") == 2
    err = one_error_line(capsys)
    assert f"{out / name}: could not write it ([Errno {errno.ENOSPC}] No space left on device)" in err
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # nothing stale blocks the retry
    assert cf_run(root, out, "--max-epochs", "3", "--patience", "9", "--resume") == 0  # the space freed
    (log, m1, w1), (whole_log, m2, w2) = run_record(out), run_record(tmp_path / "whole")
    assert log == whole_log and m1 == m2 and all(torch.equal(w1[k], w2[k]) for k in w2)


def test_a_run_reads_the_same_from_any_directory(root, tmp_path, capsys, monkeypatch):
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    made.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(made)  # the default, relative --runs
    common = ["--data", "ml1m", "--data-dir", os.path.relpath(root), "--llm", "tiny", "--threads", "1"]
    assert train.main(["--stage", "icl", *common]) == 0
    assert train.main(["--stage", "mf", *common[:4], "--max-epochs", "1"]) == 0
    monkeypatch.chdir(elsewhere)
    for run in ("icl", "mf"):
        assert ev.main([str(made / "runs" / run)]) == 0
    assert walk.main(["--run", str(made / "runs" / "icl")]) == 2  # (an icl run: refused, having read it)
    assert os.listdir(elsewhere) == []  # nothing built or written in the caller's directory
    for f in (made / "runs" / "tiny-llm").iterdir():
        f.unlink()
    (made / "runs" / "tiny-llm").rmdir()
    capsys.readouterr()
    assert ev.main([str(made / "runs" / "icl")]) == 2
    err = one_error_line(capsys)
    assert "tiny-llm/config.json not found: the run's tiny backbone is missing" in err
    assert os.listdir(elsewhere) == [] and not (made / "runs" / "tiny-llm").exists()
    shutil.copytree(root, made / "tiny")  # a data root (or --out) named tiny is a folder like any other
    monkeypatch.chdir(made)
    assert train.main(["--stage", "mf", *common[:2], "--data-dir", "tiny", "--out", "tiny2", "--max-epochs", "1"]) == 0
    monkeypatch.chdir(elsewhere)
    assert ev.main([str(made / "tiny2")]) == 0
    with pytest.raises(FileNotFoundError, match="nowhere not found"):
        runs.files_digest(str(tmp_path / "nowhere"))


def test_a_backbone_rebuilt_by_another_library_version_digests_alike(tmp_path):
    """The same weights saved by transformers 5.24 and 5.25 differ only in config.json's "transformers_version":
    made_from must not call that a changed backbone. Any other change still is one; a JSON file with no such
    key digests as its bytes (so digests recorded before this rule still hold for tiny backbones)."""
    def digest(config, weights=b"w"):
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        d.mkdir()
        (d / "config.json").write_text(config)
        (d / "model.safetensors").write_bytes(weights)
        return runs.files_digest(str(d))
    cfg = '{"hidden_size": 576, "transformers_version": "%s", "_name_or_path": "%s"}'
    assert digest(cfg % ("5.24.0", "a")) == digest(cfg % ("5.25.0", "b")) == digest('{"hidden_size": 576}')
    assert digest(cfg % ("5.24.0", "a")) != digest('{"hidden_size": 577, "transformers_version": "5.24.0"}')
    assert digest(cfg % ("5.24.0", "a")) != digest(cfg % ("5.24.0", "a"), weights=b"v")
    assert digest('{"r": 8, "peft_version": "0.21.0"}') == digest('{"r": 8, "peft_version": "0.22.0"}')
    plain = tmp_path / "plain.json"
    plain.write_text('{"b": 1,  "a": 2}')
    assert runs.files_digest(str(plain)) == hashlib.sha256(b"plain.json" + plain.read_bytes()).hexdigest()[:16]


def crafted(src, dst, edit):
    """dst: src's checkpoint, edited, saved whole with a valid digest: wrong content, not damaged bytes."""
    ck = runs.read_checkpoint(str(src))
    edit(ck)
    runs.save_atomic(ck, str(dst))


EDITS = {  # a checkpoint is input like any other: each is one line naming the file, no traceback
    "a tensor of another shape": lambda ck: ck["model"].update({k: torch.zeros(7, 3) for k in list(ck["model"])[:1]}),
    "a tensor of NaN": lambda ck: [t.fill_(float("nan")) for t in list(ck["model"].values())[:1]],  # every score NaN
    "a tensor of integers": lambda ck: ck["model"].update({k: v.long() for k, v in list(ck["model"].items())[:1]}),
    "a float64 tensor of 1e300": lambda ck: ck["model"].update(  # finite as read, inf in the model's fp32
        {k: torch.full(v.shape, 1e300, dtype=torch.float64) for k, v in list(ck["model"].items())[:1]}),
    "no model": lambda ck: ck.pop("model"),
    "dim as a string": lambda ck: ck["args"].update(dim="64"),
    "dim not an integer": lambda ck: ck["args"].update(dim=64.5),
    "dim negative": lambda ck: ck["args"].update(dim=-5),
    "an unknown stage": lambda ck: ck["args"].update(stage="bogus"),
    "device None": lambda ck: ck["args"].update(device=None),
    "heads that do not divide dim": lambda ck: ck["args"].update(stage="sasrec", heads=3),
    "made_from a list": lambda ck: ck.update(made_from=[1]),
    "made_from of int keys": lambda ck: ck.update(made_from={1: "x"}),  # (eval, walk: TypeError in sorted())
    "a model of int keys": lambda ck: ck.update(model=dict(enumerate(ck["model"].values()))),
    "100000 SASRec blocks": lambda ck: ck["args"].update(stage="sasrec", layers=10 ** 5),  # (minutes of building)
    "a foreign flag": lambda ck: ck["args"].update(colour="blue"),
    "a flag of a megabyte": lambda ck: ck["args"].update(lr="A" * 10 ** 6),  # echoed, cut to one short line
}
RESUME_EDITS = {
    "rng of floats": lambda ck: ck["rng"].update(torch=torch.zeros(3)),
    "a learning rate that is a string": lambda ck: ck["optimizer"]["param_groups"][0].update(lr="x"),
    "moments of another shape": lambda ck: [s.update(exp_avg=torch.zeros(3)) for s in ck["optimizer"]["state"].values()],
    "a scheduler that is a list": lambda ck: ck.update(scheduler=[]),
    "a log that is a number": lambda ck: ck.update(log=5),
    "an epoch that is a string": lambda ck: ck.update(epoch="1"),
    "best without auc": lambda ck: ck.update(best={}),
    "numpy state a string": lambda ck: ck["rng"].update(numpy="x"),
    # what AdamW or the schedule would take silently, or fail on steps later: every setting as the flags build it
    "maximize": lambda ck: ck["optimizer"]["param_groups"][0].update(maximize=True),
    "amsgrad a string": lambda ck: ck["optimizer"]["param_groups"][0].update(amsgrad="yes"),
    "an initial lr of 1e308": lambda ck: ck["optimizer"]["param_groups"][0].update(initial_lr=1e308),
    "an lr off the schedule": lambda ck: ck["optimizer"]["param_groups"][0].update(lr=0.5),
    "base_lrs of 1e308": lambda ck: ck["scheduler"].update(base_lrs=[1e308] * len(ck["scheduler"]["base_lrs"])),
    "a schedule past the run": lambda ck: ck["scheduler"].update(last_epoch=10 ** 6, _step_count=10 ** 6 + 1),
    "a schedule step that is a string": lambda ck: ck["scheduler"].update(last_epoch="x"),
    "a negative epoch": lambda ck: ck.update(epoch=-5),
    "a 0-d moment": lambda ck: [s.update(exp_avg=torch.zeros(())) for s in ck["optimizer"]["state"].values()],
    "a negative second moment": lambda ck: [s.update(exp_avg_sq=-s["exp_avg_sq"] - 1) for s in ck["optimizer"]["state"].values()],
    "no second moment": lambda ck: [s.pop("exp_avg_sq") for s in ck["optimizer"]["state"].values()],
    "a negative AdamW step": lambda ck: [s.update(step=torch.tensor(-5.0)) for s in ck["optimizer"]["state"].values()],
    "an AdamW step of NaN": lambda ck: [s.update(step=torch.tensor(float("nan"))) for s in ck["optimizer"]["state"].values()],
    # numbers past what the RNGs or a float hold: OverflowError, which escaped as a traceback
    "numpy position 1e30": lambda ck: ck["rng"]["numpy"].__setitem__(2, 10 ** 30),
    "a python RNG word of 2**70": lambda ck: ck["rng"]["python"][1].__setitem__(0, 2 ** 70),
    "a gauss of 400 digits": lambda ck: ck["rng"]["numpy"].__setitem__(4, 10 ** 400),
    # LambdaLR.load_state_dict copies any key into the scheduler: an "optimizer" replaced its optimizer
    "a scheduler that names an optimizer": lambda ck: ck["scheduler"].update(optimizer={"param_groups": []}),
    "an optimizer with a foreign key": lambda ck: ck["optimizer"].update(extra=1),
    # numpy trusts the position: past 624 it reads outside its key (a crash at its next draw)
    "numpy position 625": lambda ck: ck["rng"]["numpy"].__setitem__(2, 625),
    "a numpy key of 3 words": lambda ck: ck["rng"]["numpy"].__setitem__(1, [1, 2, 3]),
    # best and log as one run leaves them: patience, the best epoch and the log of a run went astray
    "bad epochs of -1000000": lambda ck: ck["best"].update(bad_epochs=-10 ** 6),
    "a best AUC of inf": lambda ck: ck["best"].update(auc=float("inf")),
    "a best epoch past the run": lambda ck: ck["best"].update(epoch=99),
    "a best AUC that its log does not hold": lambda ck: ck["best"].update(auc=0.123456789),  # test on the wrong epoch
    "a log of 10000 lines": lambda ck: ck.update(log=ck["log"] * 10 ** 4),
    # AdamW's step += 1 on a bool or complex step: a traceback once resumed
    "an AdamW step that is a bool": lambda ck: [s.update(step=torch.tensor(True)) for s in ck["optimizer"]["state"].values()],
}


@pytest.fixture(scope="module")
def mf_run(tmp_path_factory):
    root = write_data(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("runs") / "mf"
    assert cf_run(root, out, "--stop-after", "1") == 0 and cf_run(root, out, "--resume") == 0
    return root, out


@pytest.mark.parametrize("what", list(EDITS) + list(RESUME_EDITS))
def test_a_checkpoint_of_wrong_content_is_one_line_naming_it(mf_run, tmp_path, capsys, what):
    root, src = mf_run
    out = tmp_path / "mf"
    shutil.copytree(src, out)
    name = "last.pt" if what in RESUME_EDITS else "best.pt"
    crafted(src / name, out / name, {**EDITS, **RESUME_EDITS}[what])
    capsys.readouterr()
    if name == "last.pt":
        assert cf_run(root, out, "--resume", "--max-epochs", "2") == 2
    else:
        assert ev.main([str(out)]) == 2
    assert f"{out / name}" in one_error_line(capsys)
    if name == "best.pt":  # the same file handed to the joint stage as its CF checkpoint
        with pytest.raises(ValueError, match=str(out / name)):
            train.load_cf(train.parse_args(["--stage", "joint", "--cf", "mf", "--cf-ckpt", str(out / name)]),
                          train.load_data(train.parse_args(["--stage", "mf", "--data-dir", str(root)])))


def test_odd_files_where_a_run_reads_or_writes_are_one_line_never_a_hang(mf_run, tmp_path, capsys):
    root, src = mf_run
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "a"
    out.mkdir()
    os.link(victim, out / runs.LOCK)  # a hard link: writing the lock in place would write the victim
    assert cf_run(root, out) == 2 and "is not a plain lock file" in one_error_line(capsys)
    assert victim.read_text() == "keep me"
    os.remove(out / runs.LOCK)
    os.mkfifo(out / runs.LOCK)
    assert cf_run(root, out) == 2 and "is not a plain lock file" in one_error_line(capsys)
    run = tmp_path / "b"
    shutil.copytree(src, run)
    os.remove(run / "best.pt")
    os.mkfifo(run / "best.pt")  # a reader that opened it would wait forever
    assert ev.main([str(run)]) == 2 and "best.pt is not a regular file" in one_error_line(capsys)
    assert walk.main(["--run", str(tmp_path / "nowhere"), "--data-dir", str(root)]) == 2  # not the untrained walk
    assert "nowhere/best.pt not found" in one_error_line(capsys)
    assert train.main(["--stage", "icl", "--llm", "tiny", "--data-dir", str(root), "--threads", "1",
                       "--runs", str(tmp_path / "new" / "runs"), "--out", str(tmp_path / "icl")]) == 0
    assert (tmp_path / "new" / "runs" / "tiny-llm" / "config.json").exists()  # its parent made, not "disk full"
    assert oct((tmp_path / "icl" / "metrics.json").stat().st_mode & 0o777) == oct(0o666 & ~runs.UMASK)


def test_an_adapter_bin_is_sized_from_its_zip_directory_before_it_is_read(tmp_path):
    """torch.save writes stored zip records, so their declared sizes are what torch.load allocates; a
    compressed record (a small file that inflates a thousandfold), the older non-zip format (sizes
    inside the pickle) and a pickle naming more than a dict of tensors needs (weights_only builds a
    bytearray of any size) are refused before torch.load, and a plain .bin still loads."""
    import zipfile
    model = torch.nn.Module()
    model.q_proj = torch.nn.Linear(4, 4)
    lora.inject(model, ("q_proj",), r=2, alpha=4, dropout=0.0)
    torch.nn.init.normal_(model.q_proj.lora_B.weight)
    lora.save_adapter(model, tmp_path / "st")
    state = {"base_model.model." + k: v for k, v in lora.lora_state_dict(model).items()}
    made = {}
    for name, save in {"plain": lambda f: torch.save(state, f),
                       "legacy": lambda f: torch.save(state, f, _use_new_zipfile_serialization=False),
                       "bytearray": lambda f: torch.save({**state, "x": bytearray(100)}, f)}.items():
        (d := tmp_path / name).mkdir()
        shutil.copy(tmp_path / "st" / "adapter_config.json", d)
        save(d / "adapter_model.bin")
        made[name] = d
    (d := tmp_path / "deflated").mkdir()
    shutil.copy(tmp_path / "st" / "adapter_config.json", d)
    with zipfile.ZipFile(made["plain"] / "adapter_model.bin") as src, \
            zipfile.ZipFile(d / "adapter_model.bin", "w", zipfile.ZIP_DEFLATED) as dst:
        for r in src.infolist():
            dst.writestr(r.filename, src.read(r))
    for name, words in (("deflated", "is compressed"), ("legacy", "not a zip file"),
                        ("bytearray", "names '__builtin__ bytearray', not a dict of tensors")):  # 40 bytes could ask 3e8
        target = torch.nn.Module()
        target.q_proj = torch.nn.Linear(4, 4)
        with pytest.raises(ValueError, match=words):
            lora.load_adapter(target, d if name == "deflated" else made[name])
    target = torch.nn.Module()
    target.q_proj = torch.nn.Linear(4, 4)
    lora.load_adapter(target, made["plain"])
    assert torch.equal(target.q_proj.lora_B.weight, model.q_proj.lora_B.weight)


def test_resumed_optimizer_scheduler_and_scaler_states_are_checked_against_fresh_ones():
    """runs.check_resumed on the states three steps of a real fp16 loop wrote: they pass; each setting,
    step or scale edited is refused, as a ValueError (resume_from makes it one line naming last.pt)."""
    import copy
    import loop

    def build():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, loop.lr_lambda(2, 10))
        return model, opt, sched, torch.amp.GradScaler("cpu", enabled=True)

    model, opt, sched, scaler = build()
    for _ in range(3):
        opt.zero_grad()
        scaler.scale(model(torch.randn(5, 4)).square().mean()).backward()
        scaler.step(opt), scaler.update(), sched.step()
    saved = {k: part.state_dict() for k, part in dict(opt=opt, sched=sched, scaler=scaler).items()}

    def resumed(edit=lambda st: None):
        st = copy.deepcopy(saved)
        edit(st)
        _, o, s, sc = build()
        fresh = o.state_dict(), s.state_dict(), sc.state_dict()
        o.load_state_dict(st["opt"]), s.load_state_dict(st["sched"]), sc.load_state_dict(st["scaler"])
        runs.check_resumed(o, s, sc, fresh, steps=3)

    resumed()  # as written
    state = lambda st: st["opt"]["state"][0]  # noqa: E731
    edits = {"maximize": lambda st: st["opt"]["param_groups"][0].update(maximize=True),
             "a step past the run": lambda st: state(st).update(step=torch.tensor(4.0)),
             "a moment of NaN": lambda st: state(st)["exp_avg"].fill_(float("nan")),
             "a loss scale of NaN": lambda st: st["scaler"].update(scale=float("nan")),
             "a loss scale of 0": lambda st: st["scaler"].update(scale=0.0),
             "a growth interval of 0": lambda st: st["scaler"].update(growth_interval=0),
             "a backoff factor of 2": lambda st: st["scaler"].update(backoff_factor=2.0),
             "a growth tracker past its interval": lambda st: st["scaler"].update(_growth_tracker=10 ** 6),
             "a schedule one step ahead": lambda st: st["sched"].update(last_epoch=4, _step_count=5)}
    for what, edit in edits.items():
        with pytest.raises(ValueError):
            resumed(edit)


@pytest.mark.parametrize("name, nth", [("best.pt", 2), ("last.pt", 2), ("epoch_002.pt", 1)])
def test_a_run_stopped_between_its_checkpoints_writes_resumes(data_dir, tmp_path, capsys, monkeypatch, name, nth):
    """best.pt was written before last.pt: a run stopped between the two (a kill, a full disk) after an epoch that
    improved held a best.pt newer than its last.pt, and --resume refused it as a stranger's, the run lost."""
    flags = ["--stage", "mf", "--data-dir", str(data_dir), "--limit", "400", "--max-epochs", "3", "--patience", "9",
             "--batch-size", "16", "--threads", "1"]  # (valid AUC improves at epochs 2 and 3)
    monkeypatch.setattr(loop, "CHECKPOINT_EVERY", 2)
    assert train.main([*flags, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "mf"
    with monkeypatch.context() as m:
        full_disk_at(m, name, nth)
        assert train.main([*flags, "--out", str(out)]) == 2
    capsys.readouterr()
    assert train.main([*flags, "--out", str(out), "--resume"]) == 0
    assert ("written from last.pt" in capsys.readouterr().out) == (name != "last.pt")
    (log, m1, w1), (whole_log, m2, w2) = run_record(out), run_record(tmp_path / "whole")
    assert log == whole_log and m1 == m2 and all(torch.equal(w1[k], w2[k]) for k in w2)
    assert runs.read_checkpoint(str(out / "epoch_002.pt"))["epoch"] == 2


def test_a_checkpoint_larger_than_memory_is_refused_before_it_is_read(root, tmp_path, capsys):
    """read_checkpoint read every tensor its header declared before any check: a sparse best.pt (no disk) of the
    machine's memory was allocated and filled, and its digest doubled it."""
    out = tmp_path / "run"
    assert cf_run(root, out) == 0
    os.truncate(out / "best.pt", 1 << 42)  # 4 TiB, sparse
    with pytest.raises(limits.SizeError, match=r"best.pt \(its tensors\) needs about 4096.0 GiB"):
        runs.read_checkpoint(str(out / "best.pt"))
    capsys.readouterr()
    assert ev.main([str(out)]) == 2 and "best.pt (its tensors) needs about 4096.0 GiB" in one_error_line(capsys)


def test_a_header_of_another_kind_a_log_of_objects_a_mapped_giant_and_20000_layers(mf_run, tmp_path, capsys,
                                                                                    tiny_dir):
    """A checkpoint's metadata that is JSON but not an object (eval: AttributeError), a log.jsonl whose
    samples_per_s is an object (report --table: TypeError), a safetensors file larger than memory (safe_open's
    mmap: RuntimeError) and a config.json of 20,000 tiny layers (a load of hours): one line each, at once."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    root, src = mf_run
    out = tmp_path / "seed0" / "mf"
    shutil.copytree(src, out)
    with safe_open(str(src / "best.pt"), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, str(out / "best.pt"), metadata=dict(meta, meta="[1]"))
    capsys.readouterr()
    assert ev.main([str(out)]) == 2 and str(out / "best.pt") in one_error_line(capsys)
    shutil.copy(src / "best.pt", out / "best.pt")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    log[0]["samples_per_s"] = {"x": 1}
    (out / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    assert report.main(["--table", str(tmp_path)]) == 2 and "expected samples_per_s to be a number" in \
        one_error_line(capsys)
    big = tmp_path / "big"
    shutil.copytree(tiny_dir, big)
    os.truncate(big / "model.safetensors", 1 << 42)  # 4 TiB, sparse: its header as it was
    with pytest.raises(limits.SizeError, match="model.safetensors: mapping it needs about 4096.0 GiB"):
        llama.load(big)
    with pytest.raises(ValueError, match="num_hidden_layers is 20000; expected an integer >= 1 and <= 1024"):
        llama.LlamaConfig.from_dict({**json.loads((tiny_dir / "config.json").read_text()), "num_hidden_layers": 20000})


def test_int_keys_as_written_the_layers_flag_capped_and_a_header_of_pairs(mf_run, tmp_path, capsys):
    """int_keys keys were read by int(): "+0", " 1", "0_3" or "٠" resumed as 0..3 (and "0" beside "+0" collapsed);
    --layers had no cap (100,000 blocks: minutes before any row); a made_from or args written as [[key, value]]
    pairs became a dict of int keys in report --table (TypeError in sorted())."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    root, src = mf_run
    out = tmp_path / "mf"
    shutil.copytree(src, out)
    with safe_open(str(src / "last.pt"), framework="pt") as f:
        tensors, head = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    state = json.loads(head["meta"])["optimizer"]["state"]["int_keys"]
    assert "0" in state and "00" not in state  # (a parameter's moments, by its index)
    for spelled in ("+0", " 0", "0_0", "\u0660", "00"):
        meta = head["meta"].replace('"int_keys": {"0":', '"int_keys": {"' + spelled + '":', 1)
        assert meta != head["meta"]
        save_file(tensors, str(out / "last.pt"), metadata=dict(head, meta=meta, sha256=runs._sha256(meta, tensors)))
        capsys.readouterr()
        assert cf_run(root, out, "--resume", "--max-epochs", "3") == 2
        assert str(out / "last.pt") in (line := one_error_line(capsys)) and "is not an integer as a checkpoint" in line
    capsys.readouterr()
    assert cf_run(root, tmp_path / "deep", "--stage", "sasrec", "--layers", "100000") == 2
    assert "--layers 100000: expected at most 1024 blocks" in one_error_line(capsys)
    table = tmp_path / "t"
    for s in (0, 1):
        shutil.copytree(src, table / f"seed{s}" / "mf")
    with safe_open(str(src / "best.pt"), framework="pt") as f:
        tensors, head = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    meta = json.loads(head["meta"])
    for key in ("made_from", "args"):
        edited = dict(meta, **{key: [[k, v] for k, v in meta[key].items()] + [[1, "x"]]})
        edited["args"] = edited["args"] if key == "made_from" else edited["args"] + [["seed", 1]]
        save_file(tensors, str(table / "seed1" / "mf" / "best.pt"), metadata=dict(head, meta=json.dumps(edited)))
        capsys.readouterr()
        assert report.main(["--table", str(table)]) == 2 and "seed1/mf" in one_error_line(capsys)


def test_a_metrics_json_without_its_auc_and_a_log_of_negative_or_nan_rates(mf_run, tmp_path, capsys):
    """Another run's metrics.json of the same best epoch, its best_valid_auc deleted, was taken as this run's (read
    as a run from before session 20, the epoch alone compared); a log.jsonl cut short or extended by a copied line,
    or with a samples_per_s of -5000 or NaN, went into the table's cost rows."""
    _, src = mf_run
    run = tmp_path / "t" / "seed0" / "mf"
    shutil.copytree(src, run)
    m = json.loads((src / "metrics.json").read_text())
    m.pop("best_valid_auc")
    (run / "metrics.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert report.main(["--table", str(tmp_path / "t")]) == 2 and "its metrics.json is of epoch" in one_error_line(capsys)
    assert report.main(["--collect", str(run), "--into", str(tmp_path / "out")]) == 2
    assert "its metrics.json is of epoch" in one_error_line(capsys)
    shutil.copy(src / "metrics.json", run / "metrics.json")
    assert report.main(["--table", str(tmp_path / "t")]) in (0, None)
    log = [json.loads(line) for line in (src / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and json.loads((src / "metrics.json").read_text())["cut_short"] == 0
    for lines in (log[:1], log + [{**log[-1], "epoch": 3}]):  # a line cut, or one copied in: "1 (1)", "3 (1)" epochs
        (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
        capsys.readouterr()
        assert report.main(["--table", str(tmp_path / "t")]) == 2
        assert f"log.jsonl: {len(lines)} epochs; its last.pt is of epoch 2" in one_error_line(capsys)
    for key, bad in (("samples_per_s", -5000.0), ("samples_per_s", float("nan")), ("seconds", -1.0)):
        (run / "log.jsonl").write_text("".join(json.dumps({**e, key: bad} if i == 0 else e) + "\n"
                                               for i, e in enumerate(log)))
        capsys.readouterr()
        assert report.main(["--table", str(tmp_path / "t")]) == 2
        assert f"log.jsonl:1: {key} is {bad}; expected a time or a rate" in one_error_line(capsys)
