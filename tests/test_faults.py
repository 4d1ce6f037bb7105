"""Faults that used to give silently wrong results, lost work or a traceback, each on a tiny data
set written here (ml1m's TSV format): repeated rows, huge ids, two writers on one run directory,
a fresh run into an old one, --resume with other flags, a kill while a multi-file artefact is
written, one-class and degenerate splits, checkpoints from the wild, and every CLI's one-line
error for bad input."""
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import bpe
import data
import eval as ev
import llama
import lora
import metrics
import train
import walk
from conftest import ROOT, fake_best
from drivers import bench, datainfo, decode, report
from tools import backbones, dist, runs, sources, tables
from tools.sources import DataError


HEADER = "user_id\titem_id\tlabel\ttimestamp\tsplit"
N_ITEMS = 12


def tiny_rows():
    """6 users x (5 train, 2 valid, 3 test) rows, each (user, item) pair once, both labels in
    every split; train is earlier than valid, valid than test."""
    rows = []
    for u in range(1, 7):
        for k, split in enumerate(["train"] * 5 + ["valid"] * 2 + ["test"] * 3):
            t = {"train": 1000, "valid": 2000, "test": 3000}[split] + 10 * u + k
            rows.append(f"{u}\t{(u + k) % N_ITEMS + 1}\t{(u + k) % 2}\t{t}\t{split}")
    return rows


def write_data(root, rows=None, items=None):
    """root/ml1m/interactions.tsv and items.tsv; returns root (the --data-dir)."""
    d = root / "ml1m"
    d.mkdir(parents=True, exist_ok=True)
    items = items if items is not None else [f"{i}\tMovie {i} (2000)" for i in range(1, N_ITEMS + 1)]
    (d / "items.tsv").write_text("item_id\ttitle\n" + "".join(line + "\n" for line in items))
    rows = rows if rows is not None else tiny_rows()
    (d / "interactions.tsv").write_text(HEADER + "\n" + "".join(line + "\n" for line in rows))
    return root


@pytest.fixture
def root(tmp_path):
    return write_data(tmp_path / "data")


def cf_run(root, out, *extra):
    fitted = "--stage" in extra and extra[extra.index("--stage") + 1] in ("pop", "mc")  # (no epochs, no batches)
    return train.main(["--stage", "mf", "--data", "ml1m", "--data-dir", str(root), "--out", str(out),
                       *["--max-epochs", "2", "--batch-size", "16"] * (not fitted), "--threads", "1", *extra])


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err[:2000]
    assert len(err) < 1100, f"an error line of {len(err)} characters"  # runs.MAX_ERROR, and the word and the tail
    return err

# ---------------------------------------------------------------------------------------------
# data integrity


def test_a_repeated_pair_is_an_error_naming_both_lines(root):
    rows = tiny_rows()
    test_rows = [r for r in rows if r.endswith("test")]
    write_data(root, rows + test_rows)  # every test row twice: each liked target in its own history
    first = rows.index(test_rows[0]) + 2  # line 1 is the header
    with pytest.raises(data.DataError, match=rf"interactions.tsv:{len(rows) + 2}: user_id 1 and item_id \d+ "
                                             rf"repeat line {first}; expected each \(user, item\) pair once"):
        data.load("ml1m", root)


def test_a_repeated_item_id_is_an_error_naming_both_lines(root):
    write_data(root, items=[f"{i}\tMovie {i}" for i in range(1, N_ITEMS + 1)] + ["3\tAnother title"])
    with pytest.raises(data.DataError, match=rf"items.tsv:{N_ITEMS + 2}: item_id 3 repeats line 4"):
        data.load("ml1m", root)


def test_a_huge_sparse_id_is_an_error_not_a_huge_table(root):
    rows = tiny_rows()
    rows[7] = "999999999" + rows[7][1:]
    write_data(root, rows)
    with pytest.raises(data.DataError, match=r"interactions.tsv:9: user_id 999999999, but there are only 7 "
                                             r"distinct user_ids; expected ids numbered 1..N"):
        data.load("ml1m", root)


def test_amazon_duplicates_are_dropped_counted_and_said(tmp_path, capsys):
    reviews = [{"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t} for u, i, r, t in
               [("A", "x", 5, 1), ("A", "x", 1, 2), ("B", "x", 2, 3), ("A", "y", 4, 4), ("B", "y", 5, 5),
                ("C", "x", 5, 6), ("C", "y", 1, 7), ("A", "z", 5, 8), ("B", "z", 1, 9), ("C", "z", 4, 10)]]
    (tmp_path / "r.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    (tmp_path / "m.json").write_text("".join(json.dumps({"asin": a, "title": a.upper()}) + "\n" for a in "xyz"))
    ds = data.load("amazon", tmp_path, split="ratio", reviews=str(tmp_path / "r.json"), meta=str(tmp_path / "m.json"))
    assert len(ds) == 9 and ds.notes == [f"{tmp_path / 'r.json'}: dropped 1 repeated (user, item) reviews, "
                                         "keeping each pair's first"]
    assert "note: " + ds.notes[0] in capsys.readouterr().err


def test_histories_share_one_array_and_match_a_brute_force(tmp_path):
    """One user with 3000 rows: a list per row would hold ~4.5 M ids, the offsets hold 3000."""
    n = 3000
    rows = [f"1\t{k + 1}\t{k % 3 != 0:d}\t{k}\t{'train' if k < n - 20 else 'valid' if k < n - 10 else 'test'}"
            for k in range(n)] + [f"2\t1\t{k}\t{5000 + k}\t{s}" for k, s in enumerate(["train"])]
    root = write_data(tmp_path, rows, [f"{i}\tM{i}" for i in range(1, n + 1)])
    ds = data.load("ml1m", root)
    assert ds.history.liked.size == int(ds.label.sum())   # one entry per like, not per (row, like)
    liked = [k + 1 for k in range(n) if k % 3 != 0]
    for r in (0, 1, 2, 4, n // 2, n - 1):
        assert ds.history[r] == [i for i in liked if i <= r]
    assert ds.history[n] == []                            # user 2's only row
    torch.testing.assert_close(ds.history.padded([n - 1, n], 4), data.pad_left([ds.history[n - 1], []], 4))
    rows = [0, 1, 5, n - 1, n]  # SASRec's next-item sequences from the shared array, as (history + [item])[-5:]
    torch.testing.assert_close(data.cf_tensors(ds, rows, 4, next_item=True)["seq"],
                               data.pad_left([ds.history[r] + [int(ds.item[r])] for r in rows], 5))


@pytest.mark.parametrize("split, stage", [("train", "mf"), ("valid", "mf"), ("train", "text"), ("valid", "joint")])
def test_a_one_class_train_or_valid_split_is_a_clear_error(root, tmp_path, capsys, split, stage):
    """As in Amazon Gift Cards (train: 100% likes), where Pop's log-odds start would be logit(1) = inf; the text
    stage trained on it to a test AUC of 0.0, and a one-class valid split picked epoch 1 by a NaN AUC."""
    fields = [line.split("\t") for line in tiny_rows()]
    write_data(root, ["\t".join(f[:2] + ["1" if f[4] == split else f[2]] + f[3:]) for f in fields])
    flags = [] if stage == "mf" else ["--llm", "tiny", "--runs", str(tmp_path), *["--cf", "mf"] * (stage == "joint")]
    assert cf_run(root, tmp_path / stage, "--stage", stage, *flags) == 2
    err = one_error_line(capsys)
    assert f"interactions.tsv: the {split} split holds only likes (" in err and "expected both likes and dislikes" in err


def test_an_empty_split_is_a_clear_error(root, capsys):
    write_data(root, [r for r in tiny_rows() if not r.endswith("valid")])
    assert datainfo.main(["ml1m", "--data-dir", str(root)]) == 2
    assert "split 'valid' is empty" in one_error_line(capsys)

# ---------------------------------------------------------------------------------------------
# a run directory belongs to one run


def test_a_stale_lock_is_taken_over_and_said(root, tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / runs.LOCK).write_text(json.dumps(dict(pid=gone.pid, host=socket.gethostname(), started="then")))
    assert cf_run(root, out) == 0
    assert f"taking over the lock of pid {gone.pid}" in capsys.readouterr().out
    assert (out / "metrics.json").exists() and not (out / runs.LOCK).exists()


def test_an_old_run_is_kept_unless_overwrite_and_then_moved_aside(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cf_run(root, out) == 0
    before = {f: (out / f).read_bytes() for f in ("metrics.json", "log.jsonl", "best.pt")}
    capsys.readouterr()
    for extra in ([], ["--max-epochs", "1"]):
        assert cf_run(root, out, *extra) == 2
        err = one_error_line(capsys)
        assert f"{out} holds an earlier run (best.pt, last.pt, log.jsonl, ...); continue it with --resume" in err
        assert all((out / f).read_bytes() == b for f, b in before.items())
    assert cf_run(root, out, "--overwrite", "--max-epochs", "1") == 0
    [aside] = [d for d in os.listdir(out) if d.startswith("old-")]
    assert all((out / aside / f).read_bytes() == b for f, b in before.items())
    assert len((out / "log.jsonl").read_text().splitlines()) == 1  # the new run's own log


def test_resume_refuses_flags_that_change_the_run(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cf_run(root, out, "--stop-after", "1") == 0
    capsys.readouterr()
    assert cf_run(root, out, "--resume", "--lr", "0.5", "--batch-size", "8") == 2
    err = one_error_line(capsys)
    assert "--batch-size 8 (the run has 16); --lr 0.5 (the run has 0.003)" in err
    assert train.main(["--stage", "ncf", "--data", "ml1m", "--data-dir", str(root), "--out", str(out),
                       "--max-epochs", "2", "--batch-size", "16", "--threads", "1", "--resume"]) == 2
    assert "--stage ncf (the run has mf)" in one_error_line(capsys)
    os.symlink(root, tmp_path / "linked-data")  # the same files spelt otherwise (a link, another cwd): refused
    assert cf_run(tmp_path / "linked-data", out, "--resume", "--threads", "2", "--runs", str(tmp_path / "elsewhere")) == 0
    ck = runs.read_checkpoint(str(out / "last.pt"))
    assert ck["args"]["lr"] == 3e-3 and ck["epoch"] == 2


def test_bad_output_locations_fail_before_training(root, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cf_run(root, a_file) == 2
    assert one_error_line(capsys) == f"error: {a_file} is a file; expected a run directory (--out)\n"
    assert cf_run(root, a_file / "run") == 2
    assert f"error: {a_file / 'run'}: cannot write there" in one_error_line(capsys)
    if os.geteuid() != 0:  # root writes into read-only directories anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert cf_run(root, ro) == 2
        assert "cannot write there" in one_error_line(capsys)


def test_ctrl_c_says_resume_and_releases_the_lock(root, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(data, "cf_batches", interrupted)
    assert cf_run(root, tmp_path / "run") == 130
    assert "--resume" in capsys.readouterr().err and not (tmp_path / "run" / runs.LOCK).exists()


def test_a_truncated_checkpoint_is_one_line(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert cf_run(root, out, "--stop-after", "1") == 0
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:300])
    capsys.readouterr()
    assert cf_run(root, out, "--resume") == 2
    assert f"error: {out / 'last.pt'}: cannot read this checkpoint (" in one_error_line(capsys)

# ---------------------------------------------------------------------------------------------
# multi-file artefacts appear whole or not at all


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    d = tmp_path_factory.mktemp("backbone") / "tiny-llm"
    return backbones.make_tiny(d, texts=[f"Movie {i} (2000)" for i in range(1, N_ITEMS + 1)])


def _killed_after_one_file(write_first):
    def write(*args, **kwargs):
        write_first(*args, **kwargs)
        raise KeyboardInterrupt  # the kill, after one of the artefact's files is on disk
    return write


def test_a_kill_while_writing_the_tiny_backbone_leaves_no_half_backbone(root, tmp_path, tiny_llm, monkeypatch):
    args = train.parse_args(["--stage", "text", "--llm", "tiny", "--runs", str(tmp_path),
                             "--tokenizer", str(tiny_llm / "tokenizer.model")])
    ds = data.load("ml1m", root)
    with monkeypatch.context() as m:
        m.setattr(backbones, "save_file", _killed_after_one_file(backbones.save_file))
        with pytest.raises(KeyboardInterrupt):
            train.backbone_dir(args, ds)
    assert not (tmp_path / "tiny-llm").exists()  # only tiny-llm.tmp-<pid>, which a later write ignores
    (tmp_path / "tiny-llm").mkdir()  # an older checkout's half backbone: weights, no config.json
    (tmp_path / "tiny-llm" / "model.safetensors").write_bytes(b"half")
    d = train.backbone_dir(args, ds)
    model, tok = llama.load(d)
    assert model.cfg.hidden_size == 64 and tok.yes_id != tok.no_id
    from test_tokenizer import write_tiny_bpe
    args.tokenizer, args.runs = str(write_tiny_bpe(tmp_path / "bpe") / "tokenizer.json"), str(tmp_path / "r2")
    with pytest.raises(ValueError, match="--llm tiny needs a sentencepiece tokenizer.model"):  # not "is the disk full?"
        train.backbone_dir(args, ds)


def test_a_kill_while_writing_the_adapter_says_how_to_finish(root, tmp_path, capsys, monkeypatch):
    common = ["--data", "ml1m", "--data-dir", str(root), "--llm", "tiny", "--runs", str(tmp_path), "--max-epochs", "1",
              "--iters-per-epoch", "0", "--batch-size", "8", "--threads", "1"]
    assert train.main(["--stage", "mf", "--data", "ml1m", "--data-dir", str(root), "--out", str(tmp_path / "mf"),
                       "--max-epochs", "1", "--threads", "1"]) == 0
    joint = ["--stage", "joint", "--cf", "mf", *common]
    with monkeypatch.context() as m:
        m.setattr(lora, "save_file", _killed_after_one_file(lora.save_file))
        assert train.main(["--stage", "text", *common]) == 130
    assert (tmp_path / "text" / "metrics.json").exists() and not (tmp_path / "text" / "adapter").exists()
    capsys.readouterr()
    assert train.main(joint) == 2
    err = one_error_line(capsys)
    assert f"needs a text-stage LoRA adapter at {tmp_path / 'text' / 'adapter'}: python train.py --stage text" in err
    assert f"--out {tmp_path / 'text'} --resume." in err  # its run stopped between metrics.json and the adapter
    assert train.main(["--stage", "text", *common, "--resume"]) == 0  # re-scores the best epoch, writes the adapter
    assert sorted(os.listdir(tmp_path / "text" / "adapter")) == ["adapter_config.json", "adapter_model.safetensors",
                                                                  "made_from.json"]
    adapter = tmp_path / "text" / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-10])  # a truncated copy
    capsys.readouterr()
    assert train.main(joint) == 2
    assert f"error: {adapter}: cannot read it" in one_error_line(capsys)

# ---------------------------------------------------------------------------------------------
# checkpoints from the wild, and llama.py's one-line errors


def _copy(tiny_llm, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_llm, d)
    return d


def test_old_conversions_load_as_hf_loads_them(tiny_llm, tmp_path):
    """rotary_emb.inv_freq buffers (older Llama-2 / Vicuna conversions) are skipped as HF skips
    them, fp16 / bf16 shards are cast, and a real stray key is still refused."""
    d = _copy(tiny_llm, tmp_path)
    state = load_file(d / "model.safetensors")
    ref = llama.load_model(tiny_llm)
    ids = torch.tensor([[1, 5, 9, 20]])
    for dtype in (torch.float16, torch.bfloat16):
        wild = {k: v.to(dtype) for k, v in state.items()}
        wild.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(8) for i in range(2)})
        save_file(wild, d / "model.safetensors")
        model = llama.load_model(d, dtype=torch.float32)
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids), ref(input_ids=ids), atol=0.1, rtol=0.05)
    wild["model.layers.0.self_attn.rotary_emb.scale"] = torch.ones(1)
    save_file(wild, d / "model.safetensors")
    with pytest.raises(ValueError, match="unexpected key 'model.layers.0.self_attn.rotary_emb.scale'"):
        llama.load_model(d)


def _no_hidden_size(d):
    cfg = json.loads((d / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))


def _edit_config(key, value):
    def edit(d):
        cfg = json.loads((d / "config.json").read_text())
        cfg[key] = value
        (d / "config.json").write_text(json.dumps(cfg))
    return edit


def _index(text):
    def edit(d):  # an index in place of model.safetensors
        (d / "model.safetensors").unlink()
        (d / "model.safetensors.index.json").write_text(text)
    return edit


BAD_CHECKPOINTS = {
    "config.json: missing hidden_size; expected an HF Llama config": _no_hidden_size,
    "config.json: hidden_size is '64'; expected an integer >= 1": _edit_config("hidden_size", "64"),
    "config.json: rms_norm_eps is 'small'; expected a finite number >= 1e-30": _edit_config("rms_norm_eps", "small"),
    "config.json: expected a JSON object": lambda d: (d / "config.json").write_text("[1, 2"),
    "tokenizer.model: expected a sentencepiece model": lambda d: (d / "tokenizer.model").write_bytes(b"garbage"),
    "tokenizer.model: expected a sentencepiece model (": lambda d: (d / "tokenizer.model").write_bytes(b""),
    "model.safetensors.index.json: expected a JSON object with a weight_map of file names in its directory; shard '../x'": _index('{"weight_map": {"a": "../x"}}'),
    "model.safetensors.index.json: expected a JSON object with a weight_map of file names in its directory; shard 'x\\x00y": _index('{"weight_map": {"a": "x\\u0000y"}}'),  # a NUL: "embedded null byte", naming no file
    "config.json: expected a JSON object, an HF-format checkpoint's config.json (key 'model_type' repeats)": lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace("{", '{"model_type": "gpt2", ', 1)),  # the last of two won
    ": no tokenizer.model (sentencepiece) or tokenizer.json": lambda d: (d / "tokenizer.model").unlink(),
    "model.safetensors: cannot read this safetensors file": lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-64]),
}


@pytest.mark.parametrize("words", list(BAD_CHECKPOINTS))
def test_llama_cli_bad_checkpoint_is_one_line(tiny_llm, tmp_path, capsys, monkeypatch, words):
    d = _copy(tiny_llm, tmp_path)
    BAD_CHECKPOINTS[words](d)
    assert decode.main([str(d), "--max-new-tokens", "1"]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {d}") and words in err

# ---------------------------------------------------------------------------------------------
# every CLI, as a subprocess: bad input is one line (argparse's usage line aside) and exit 2


def test_each_cli_says_bad_input_in_one_line(root, tmp_path, tiny_llm):
    rows = tiny_rows()
    dup = write_data(tmp_path / "dup", rows + rows[-1:])
    bad_ckpt = _copy(tiny_llm, tmp_path)
    _edit_config("num_hidden_layers", -2)(bad_ckpt)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    train_py = [sys.executable, "train.py", "--stage", "mf", "--data-dir", str(root)]
    cases = {  # command -> (exit code, words in the error line, argparse's usage first)
        "datainfo dup": ([sys.executable, "-m", "drivers.datainfo", "ml1m", "--data-dir", str(dup)], 2,
                        f"error: {dup / 'ml1m' / 'interactions.tsv'}:{len(rows) + 2}: user_id 6 and item_id", False),
        "train.py --out FILE": (train_py + ["--out", str(a_file)], 2, f"error: {a_file} is a file", False),
        "train.py --limit -5": (train_py + ["--limit", "-5"], 2,
                                "train.py: error: argument --limit: expected an integer >= 0, got -5", True),
        "train.py --batch-size 0": (train_py + ["--batch-size", "0"], 2,
                                    "train.py: error: argument --batch-size: expected an integer >= 1, got 0", True),
        "backbones bad config": ([sys.executable, "-m", "drivers.decode", str(bad_ckpt)], 2,
                                 "num_hidden_layers is -2; expected an integer >= 1", False),
        "bench --steps 0": ([sys.executable, "-m", "drivers.bench", "--no-hf", "--steps", "0"], 2,
                            "bench.py: error: argument --steps: expected an integer >= 1 and <= 4096, got 0", True),
        "train.py --seed 1_0": (train_py + ["--seed", "1_0"], 2,  # flags are read as strictly as data files
                                "train.py: error: argument --seed: expected an integer, got '1_0'", True),
        "train.py --lr nan": (train_py + ["--lr", "nan"], 2,
                              "train.py: error: argument --lr: expected a finite number, got 'nan'", True),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, (cmd, *_) in cases.items()}  # in parallel: imports dominate
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        _, code, words, usage = cases[name]
        assert p.returncode == code and "Traceback" not in err, (name, err)
        lines = err.strip().splitlines()
        if usage:
            assert lines[0].startswith("usage: ") and lines[-1].startswith(words), (name, err)
        else:
            assert len(lines) == 1 and words in lines[0], (name, err)


def test_numbers_past_range_and_lookalike_digits_are_one_line(root, tmp_path, capsys):
    """OverflowError's class (a flag whose use overflows, a number of 400 digits in a file) and digits
    spelled another way (cuda:01, Arabic-Indic digits, seed01): one line each, never a traceback."""
    assert cf_run(root, tmp_path / "w", "--warmup-epochs", "1e308") == 2
    assert "--warmup-epochs 1e+308 is more than --max-epochs 2" in one_error_line(capsys)
    for device in ("cuda:01", "cuda:\u0661"):
        assert cf_run(root, tmp_path / "d", "--device", device) == 2
        assert f"--device {device}: expected cpu, cuda or cuda:N" in one_error_line(capsys)
    (a_file := tmp_path / "file").write_text("x")
    assert ev.main([str(a_file)]) == 2 and f"{a_file}: no such run directory" in one_error_line(capsys)
    table = tmp_path / "table"
    (table / "seed0" / "sasrec").mkdir(parents=True)
    (table / "seed0" / "sasrec" / "metrics.json").write_text('{"test": {"auc": 1' + "0" * 400 + "}}")
    fake_best(table / "seed0" / "sasrec")
    assert report.main(["--table", str(table)]) == 2
    assert "metrics.json: expected a run's metrics (integer 10000" in one_error_line(capsys)
    (table / "seed0").rename(table / "seed01")  # not seed 1, nor seed 0: no seed at all
    assert report.main(["--table", str(table)]) == 2 and "seed01: expected seed<N>" in one_error_line(capsys)
    with pytest.raises(SystemExit):  # argparse's: a flag's value echoed in 40 characters at most
        cf_run(root, tmp_path / "s", "--seed", "1" + "0" * 5000)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --seed: expected an integer, got '1000" in err and len(err) < 200, err[:300]
    (stale := tmp_path / "stale").mkdir()
    (stale / runs.LOCK).write_text("[" * 5000)  # a dead run's lock, nested too deep to read: taken over
    assert cf_run(root, stale) == 0
    reviews = tmp_path / "r.json"
    reviews.write_text('{"reviewerID": "u", "asin": "i", "overall": 1' + "0" * 400 + ', "unixReviewTime": 1}\n')
    with pytest.raises(DataError, match=r"r.json:1: .*integer 10000.*out of range"):
        data.load("amazon", tmp_path, reviews=str(reviews), meta=str(reviews))


def test_drivers_and_run_dirs_write_only_where_they_should(root, tmp_path, capsys, tiny_llm):
    """Writes that went astray: a $(command) in table.sh's SEEDS or ROWS ran; a link planted in a table root
    (its files, a row's directory) was written through; --out over the data moved it aside; an export over
    an input file replaced it; a README marker embedded a file from anywhere. Each is one line, nothing
    written."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    env = {**os.environ, "PYTHON": "true", "ROWS": "pop"}
    for name, value in (("SEEDS", "PPID[$(touch " + str(tmp_path / "ran") + ")]"), ("ROWS", "a[$(touch x)]")):
        out = subprocess.run(["bash", "drivers/table.sh", str(tmp_path / "t")], cwd=ROOT, capture_output=True, text=True,
                             env={**env, name: value})
        assert out.returncode == 2 and out.stderr.startswith(f"error: {name}") and not (tmp_path / "ran").exists()
    for name, value, words in (("CF_FLAGS", "--seed 7", "sets --seed"), ("POP_FLAGS", "--out=x", "sets --out"),
                               ("MINUTES", "abc", "MINUTES=abc"), ("MINUTES", "10 minutes", "MINUTES=10 minutes"),
                               ("MINUTES", "0", "MINUTES=0")):  # a row's flags won over the table's; no minutes
        out = subprocess.run(["bash", "drivers/table.sh", str(tmp_path / "t")], cwd=ROOT, capture_output=True, text=True,
                             env={**env, name: value})
        assert out.returncode == 2 and words in out.stderr, (name, value, out.stderr)
    for lrs in ("../../x", "*", "1e-3 $(touch x)", "1e-3 0.001", "1e-3\n1e-2"):  # lr_sweep.sh: LRS names directories
        # (and was globbed); one rate spelled twice made two rows of one run; a newline split sweep.md's command
        out = subprocess.run(["bash", "drivers/lr_sweep.sh", str(tmp_path / "sw"), "--stage", "mf"], cwd=ROOT,
                             capture_output=True, text=True, env={**env, "LRS": lrs})
        assert out.returncode == 2 and "error: LRS holds" in out.stderr and not (tmp_path / "x").exists(), out.stderr
    for e in ({"REPEATS": "abc"}, {"REPEATS": "0"}, {"CHAIN": "2"}):  # a table of -nan; CHAIN=0 ran the chain
        out = subprocess.run(["bash", "drivers/numerics_cost.sh", str(tmp_path / "nc")], cwd=ROOT, capture_output=True,
                             text=True, env={**env, **e})
        assert out.returncode == 2 and "expected REPEATS 1..999" in out.stderr and not (tmp_path / "nc").exists()
    elsewhere = tmp_path / "elsewhere"  # table.sh from another directory: ROOT is the caller's, train.py the repo's
    elsewhere.mkdir()
    for stray in ("train.py", "drivers.py"):  # and no module of the cwd's (python -m and -c put it first)
        (elsewhere / stray).write_text(f"raise SystemExit('the stray {stray} ran')")
    out = subprocess.run(["bash", str(ROOT / "drivers" / "table.sh"), "t", "--data-dir", str(root)], cwd=elsewhere,
                         capture_output=True, text=True, env={**os.environ, "ROWS": "pop"})
    assert out.returncode == 0 and (elsewhere / "t" / "seed0" / "pop" / "metrics.json").exists(), out.stderr[-2000:]
    with pytest.raises(SystemExit):  # --see was --seed (argparse's abbreviations), past table.sh's guard
        train.parse_args(["--stage", "mf", "--see", "7"])
    capsys.readouterr()
    for planted in ("times.tsv", "commands.txt", "shuffle_cf.md.tmp", "seed0", "seed0/pop"):
        t = tmp_path / f"t_{planted.replace('/', '_')}"
        (t / planted).parent.mkdir(parents=True, exist_ok=True)
        (t / planted).symlink_to(victim if "." in planted else tmp_path)
        out = subprocess.run(["bash", "drivers/table.sh", str(t)], cwd=ROOT, capture_output=True, text=True, env=env)
        assert out.returncode == 2 and "is a symbolic link" in out.stderr, (planted, out.stderr)
    assert victim.read_text() == "keep me"
    (link := tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert cf_run(root, link) == 2 and "is a symbolic link" in one_error_line(capsys)
    assert cf_run(root, root / "ml1m", "--overwrite") == 2 and "overlaps" in one_error_line(capsys)
    assert cf_run(root, root, "--overwrite") == 2 and "overlaps" in one_error_line(capsys)
    assert sorted(os.listdir(root / "ml1m")) == ["interactions.tsv", "items.tsv"]
    assert datainfo.main(["ml1m", "--data-dir", str(root), "--export", str(root / "ml1m" / "items.tsv")]) == 2
    assert "--export" in one_error_line(capsys) and "Movie" in (root / "ml1m" / "items.tsv").read_text()
    for marker in ("file /etc/hostname", "file ../outside.md", "table test | a: /etc/hostname"):
        with pytest.raises(ValueError, match="expected a path inside"):
            report.render_readme(f"<!-- {marker} -->\n<!-- /generated -->\n", str(tmp_path))
    for twice in ("a.json + a.json", "a.json + ./a.json", "a.json + sub/../a.json"):  # ("± 0.0000": one run, no spread)
        with pytest.raises(ValueError, match="names one file twice"):
            report.render_readme(f"<!-- table test | SASRec: {twice} -->\n<!-- /generated -->\n", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_rsa.md").write_text("SECRET")  # inside the README's folder, and still not its to embed
    (tmp_path / "id_rsa").write_text("SECRET")
    for marker in ("file .ssh/id_rsa.md", "file id_rsa", "table test | a: id_rsa"):
        with pytest.raises(ValueError, match="file, outside hidden folders"):
            report.render_readme(f"<!-- {marker} -->\n<!-- /generated -->\n", str(tmp_path))
    (tmp_path / "latin1.md").write_bytes(b"caf\xe9\n")  # a README, or a file it embeds, not in UTF-8: named
    (tmp_path / "embeds.md").write_text("<!-- file latin1.md -->\n<!-- /generated -->\n")
    for readme in ("latin1.md", "embeds.md"):
        assert report.main(["--check-readme", str(tmp_path / readme)]) == 2
        assert "latin1.md: expected a" in one_error_line(capsys)
    (tmp_path / "closes.md").write_text("A\n<!-- /generated -->\nB\n")  # each --readme added a B and a closer
    with pytest.raises(ValueError, match="holds a marker line of its own"):
        report.render_readme("<!-- file closes.md -->\n<!-- /generated -->\n", str(tmp_path))
    (tmp_path / "into").symlink_to(tmp_path / "victim_dir", target_is_directory=True)
    with pytest.raises(runs.RunError, match="symbolic link"):  # --collect's --into, as --plot's
        report.collect([str(tmp_path / "icl")], str(tmp_path / "into"))
    (tmp_path / "victim_dir" / "inner").mkdir(parents=True)  # "link/..": the link target's parent, not link's
    (tmp_path / "lk").mkdir()
    (tmp_path / "lk" / "L").symlink_to(tmp_path / "victim_dir" / "inner", target_is_directory=True)
    with pytest.raises(runs.RunError, match="'..' after a symbolic link"):
        report.collect([str(tmp_path / "icl")], str(tmp_path / "lk" / "L" / ".."))
    with pytest.raises(SystemExit):  # every CLI's path flags (runs.path)
        datainfo.main(["ml1m", "--data-dir", str(root), "--export", str(tmp_path / "lk" / "L" / ".." / "e.jsonl")])
    assert "after a symbolic link" in capsys.readouterr().err and os.listdir(tmp_path / "victim_dir") == ["inner"]
    for argv in (["--out", str(tmp_path / "lk" / "L" / ".." / "x")], ["--data-dir", str(tmp_path / "lk" / "L" / "..")]):
        assert cf_run(root, tmp_path / "y", *argv) == 2  # train.py's abspath read it lexically, the kernel does not
        assert "after a symbolic link" in one_error_line(capsys)
    with pytest.raises(SystemExit):
        ev.main([str(tmp_path / "lk" / "L" / ".." / "run")])
    assert "after a symbolic link" in capsys.readouterr().err
    assert os.listdir(tmp_path / "victim_dir") == ["inner"] and not (tmp_path / "lk" / "x").exists()
    unclosed = "<!-- file x.md -->\n" + "<!-- file " * 1000 + "\n<!-- file y.md -->\nz <!-- /generated -->\n"
    assert report.render_readme(unclosed, str(tmp_path)) == unclosed  # no closer on a line of its own: as it was
    (tmp_path / "tiny-llm").mkdir()  # --runs inside the data; a tiny-llm of someone else's files is kept
    (tmp_path / "tiny-llm" / "notes.txt").write_text("keep me")
    icl = ["--stage", "icl", "--llm", "tiny", "--data-dir", str(root), "--limit", "40", "--threads", "1"]
    assert train.main([*icl, "--runs", str(root / "ml1m"), "--out", str(tmp_path / "icl")]) == 2
    assert "--runs" in one_error_line(capsys) and sorted(os.listdir(root / "ml1m")) == ["interactions.tsv", "items.tsv"]
    assert train.main([*icl, "--runs", str(tmp_path), "--out", str(tmp_path / "icl")]) == 0
    with pytest.raises(runs.RunError, match="--runs .* overlaps"):  # walk.py writes it through backbone_dir too
        train.backbone_dir(train.parse_args(icl + ["--runs", str(root / "ml1m")]), data.load("ml1m", root))
    assert bench.main(["--threads", "1000000"]) == 2 and "--threads 1000000" in one_error_line(capsys)
    assert [p.read_text() for p in tmp_path.glob("tiny-llm.old-*/notes.txt")] == ["keep me"]
    for head in ("best_epoch", " "):  # a marker naming a number, or nothing, as its section: one line, no traceback
        with pytest.raises(ValueError, match="section of metrics; a README table marker names one"):
            report.render_readme(f"<!-- table {head} | a: icl/metrics.json -->\n<!-- /generated -->\n", str(tmp_path))
    with contextlib.chdir(tmp_path / "icl"):  # a run named "." is named by its folder, not "..json"
        report.collect(["."], str(tmp_path / "col"))
    assert os.listdir(tmp_path / "col") == ["icl.json"]
    bad = _copy(tiny_llm, tmp_path)  # bench --ckpt: our checks before transformers builds 100000 layers
    _edit_config("num_hidden_layers", 100000)(bad)
    assert bench.main(["--ckpt", str(bad), "--steps", "1", "--data-dir", str(root)]) == 2
    assert "num_hidden_layers is 100000" in one_error_line(capsys)
    for flags in (["--max-new-tokens", "99999999999"], ["--max-new-tokens", "4000", "--prompt", "x"]):
        with contextlib.suppress(SystemExit):
            assert decode.main([str(tiny_llm), *flags]) == 2
        assert "--max-new-tokens" in capsys.readouterr().err


def test_a_metrics_file_out_of_range_is_one_line_not_a_broken_plot(tmp_path, capsys):
    """An AUC of 2e-323 made Fig. 10's ticks fail (StopIteration), 1e308 an OverflowError, a metric
    missing a KeyError; metrics are read once, each present and in its range, and a sweep's log too."""
    for auc, words in ((2e-323, None), (1e308, "got 1e+308 (larger than 1e12)"), (1.5, "test's auc is 1.5; expected 0..1"),
                       ("drop", "test has no auc")):
        for stage in ("icl", "text", "sasrec", "joint"):  # the rows the figures need
            run = tmp_path / f"r{auc}" / "seed0" / stage
            run.mkdir(parents=True)
            m = dict(logloss=0.6, precision=0.5, recall=0.5, f1=0.5, accuracy=0.5, auc=0.5, uauc=0.5)
            test = {k: v for k, v in {**m, "auc": auc}.items() if v != "drop"}
            (run / "metrics.json").write_text(json.dumps({"test": test, "valid": m}))
            fake_best(run)
            (run / "log.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.6, "valid": {"auc": 0.5}}) + "\n")
        code = report.main(["--plot", str(tmp_path / f"r{auc}")])
        if words is None:
            assert code in (0, None), capsys.readouterr().err
            planted = tmp_path / "planted"  # the same runs, and a link at ROOT/figures: no figure goes through it
            shutil.copytree(tmp_path / f"r{auc}", planted, ignore=shutil.ignore_patterns("figures"))
            (tmp_path / "victim").mkdir()
            (planted / "figures").symlink_to(tmp_path / "victim", target_is_directory=True)
            assert report.main(["--plot", str(planted)]) == 2 and "symbolic link" in one_error_line(capsys)
            assert not list((tmp_path / "victim").iterdir())
        else:
            assert code == 2 and words in one_error_line(capsys)
    sweep = tmp_path / "sweep"
    for lr, auc in (("1e-3", 0.6), ("3e-3", float("nan")), ("1e-4", 0.7)):  # NaN: as loop.write_log writes it
        (sweep / f"lr{lr}").mkdir(parents=True)
        (sweep / f"lr{lr}" / "log.jsonl").write_text(json.dumps(
            {"epoch": 1, "train_loss": 0.6, "seconds": 1.0, "valid": dict(auc=auc, uauc=float("nan"), n=9)}) + "\n")
        fake_best(sweep / f"lr{lr}", lr=float(lr))
    (sweep / "lr1e-2").mkdir()  # null: an undefined AUC as a hand-made log may write it
    (sweep / "lr1e-2" / "log.jsonl").write_text(json.dumps(
        {"epoch": 1, "train_loss": 0.6, "seconds": 1.0, "valid": dict(auc=None, uauc=None, n=9)}) + "\n")
    fake_best(sweep / "lr1e-2", lr=1e-2)
    assert report.main(["--sweep", str(sweep)]) in (0, None)
    assert [line.split("|")[1].strip() for line in (sweep / "sweep.md").read_text().splitlines()
            if line.startswith("|")][2:] == \
        ["1e-4", "1e-3", "3e-3", "1e-2"]  # best valid AUC first, an undefined one last
    shutil.rmtree(sweep / "lr1e-2")
    forged = sweep / "lr2e-3 | 0.0 | 0.99 | 0.99 | 9 | 0 |\n| 9e-9"  # a directory's name is no table row
    shutil.copytree(sweep / "lr1e-3", forged)
    assert report.main(["--sweep", str(sweep)]) in (0, None) and "0.99" not in (sweep / "sweep.md").read_text()
    shutil.rmtree(forged)
    (tmp_path / "m.json").write_text(json.dumps({"best_epoch": 1, "test": 0.5}))
    with pytest.raises(sources.DataError, match="test is 0.5; expected an object of metrics"):
        tables.read_metrics_file(tmp_path / "m.json")
    (sweep / "lr1e-5").mkdir()
    (sweep / "lr1e-5" / "log.jsonl").write_text(json.dumps({"epoch": 1, "valid": {"uauc": 0.5}}) + "\n")
    assert report.main(["--sweep", str(sweep)]) == 2 and "expected train_loss" in one_error_line(capsys)
    reviews = tmp_path / "amazon" / "r.json"  # an Amazon run beside its files (their folder is not an input)
    assert runs.refuse_overlap(tmp_path / "amazon" / "runs", sources.input_dirs("amazon", None, str(reviews),
                                                                                 str(reviews))) is None
    with pytest.raises(runs.RunError, match="overlaps"):
        runs.refuse_overlap(tmp_path / "amazon", sources.input_dirs("amazon", None, str(reviews), str(reviews)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda is valid here")
def test_cuda_without_cuda_is_one_line(root, tmp_path, capsys):
    assert train.main(["--stage", "pop", "--data-dir", str(root), "--device", "cuda", "--out", str(tmp_path / "p")]) == 2
    assert "sees no CUDA device; use --device cpu" in one_error_line(capsys)

# ---------------------------------------------------------------------------------------------
# round 3: a run knows what it was made from, eval.py only reads, nothing non-finite scores


def test_non_finite_weights_fail_the_run_and_never_score(root, tmp_path, capsys):
    assert cf_run(root, tmp_path / "mf", "--lr", "1e30") == 1  # the last update diverges; the loss was finite
    err = one_error_line(capsys)
    assert "NaN or inf" in err or "loss is nan" in err or "loss is inf" in err
    assert not (tmp_path / "mf" / "metrics.json").exists()
    with pytest.raises(FloatingPointError, match="2 of 3 scores are NaN or infinite"):
        metrics.auc([1, 0, 1], [float("nan"), 0.2, float("inf")])


def test_resume_and_eval_refuse_other_data_naming_what_changed(root, tmp_path, capsys):
    out = tmp_path / "mf"
    assert cf_run(root, out, "--stop-after", "1") == 0
    flipped = write_data(tmp_path / "flipped", [_flip(r) for r in tiny_rows()])
    capsys.readouterr()
    assert train.main(["--stage", "mf", "--data", "ml1m", "--data-dir", str(flipped), "--out", str(out), "--max-epochs",
                       "2", "--batch-size", "16", "--threads", "1", "--resume"]) == 2
    assert "made from other inputs than these: data, rows changed" in one_error_line(capsys)
    assert cf_run(root, out, "--resume") == 0  # the same data: it goes on
    capsys.readouterr()
    assert ev.main([str(out), "--data-dir", str(flipped)]) == 2
    assert "rows changed" in one_error_line(capsys)
    assert ev.main([str(out)]) == 0 and (out / "rescored.json").exists()
    other = tmp_path / "mf_flipped"  # the fusion probe over runs of two data sets scored B against A's labels
    assert train.main(["--stage", "mf", "--data", "ml1m", "--data-dir", str(flipped), "--out", str(other),
                       "--max-epochs", "1", "--batch-size", "16", "--threads", "1"]) == 0
    capsys.readouterr()
    assert ev.main([str(out), "--fuse", str(other)]) == 2  # (after the numerics line, as the progress lines)
    assert "made from other data (data differ in their best.pt)" in capsys.readouterr().err.splitlines()[-1]


def _flip(row):
    u, i, y, t, s = row.split("\t")
    return "\t".join([u, i, str(1 - int(y)), t, s])


def test_the_tiny_backbone_depends_on_the_titles_not_on_the_rows_loaded(root, tmp_path, capsys):
    common = ["--stage", "icl", "--data", "ml1m", "--data-dir", str(root), "--llm", "tiny", "--threads", "1"]
    assert train.main([*common, "--runs", str(tmp_path / "a"), "--limit", "3"]) == 0
    assert train.main([*common, "--runs", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "tiny-llm" / "made_from.json").read_text()) for d in ("a", "b"))
    assert a == b and (tmp_path / "a" / "tiny-llm" / "tokenizer.model").read_bytes() == \
        (tmp_path / "b" / "tiny-llm" / "tokenizer.model").read_bytes()
    other = write_data(tmp_path / "other", items=[f"{i}\tFilm {i} (1990)" for i in range(1, N_ITEMS + 1)])
    capsys.readouterr()
    assert train.main([*common[:5], str(other), *common[6:], "--runs", str(tmp_path / "a"), "--overwrite"]) == 2
    assert "the tiny backbone" in one_error_line(capsys)


def test_eval_reads_only_finished_runs_that_nobody_is_writing(root, tmp_path, capsys):
    out = tmp_path / "mf"
    assert cf_run(root, out, "--stop-after", "1") == 0
    capsys.readouterr()
    assert ev.main([str(out)]) == 2 and "unfinished" in one_error_line(capsys)
    assert cf_run(root, out, "--resume") == 0
    fd, _ = runs.lock(str(out))  # a run writing there
    capsys.readouterr()
    assert ev.main([str(out)]) == 2 and "is in use by another run" in one_error_line(capsys)
    runs.unlock(fd, str(out / runs.LOCK))
    before = (out / "metrics.json").read_bytes()
    assert ev.main([str(out)]) == 0 and ev.main([str(out)]) == 0
    assert (out / "metrics.json").read_bytes() == before and len(list(out.glob("rescored-*.json"))) == 1
    assert ev.main([str(out)]) == 0 and len(list(out.glob("rescored-*.json"))) == 2  # within a second: none lost


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_damaged_checkpoint_bytes_are_refused(root, tmp_path, capsys, name):
    out = tmp_path / "mf"
    assert cf_run(root, out) == 0
    raw = bytearray((out / name).read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = b"\x3f" * 64  # inside the payload, not its header
    (out / name).write_bytes(bytes(raw))
    capsys.readouterr()
    rc = cf_run(root, out, "--resume", "--max-epochs", "3") if name == "last.pt" else ev.main([str(out)])
    assert rc == 2 and f"{out / name}: cannot read this checkpoint" in one_error_line(capsys)


def test_the_joint_stage_refuses_a_cf_checkpoint_of_another_model_or_history(root, tmp_path, capsys):
    common = ["--data", "ml1m", "--data-dir", str(root), "--llm", "tiny", "--runs", str(tmp_path), "--threads", "1",
              "--max-epochs", "1", "--iters-per-epoch", "2", "--batch-size", "8"]
    assert cf_run(root, tmp_path / "sasrec") == 0  # an MF run where the SASRec checkpoint should be
    assert train.main(["--stage", "text", *common]) == 0
    capsys.readouterr()
    assert train.main(["--stage", "joint", *common]) == 2
    assert "is a mf run" in one_error_line(capsys)
    assert train.main(["--stage", "sasrec", *common[:4], "--out", str(tmp_path / "s10"), "--maxlen", "10",
                       "--max-epochs", "1", "--threads", "1"]) == 0
    capsys.readouterr()
    assert train.main(["--stage", "joint", *common, "--cf-ckpt", str(tmp_path / "s10" / "best.pt")]) == 2
    assert "reading 10 items of history" in one_error_line(capsys)
    flipped = write_data(tmp_path / "flipped", [_flip(r) for r in tiny_rows()])  # the same catalog, other rows
    assert train.main(["--stage", "sasrec", "--data", "ml1m", "--data-dir", str(flipped), "--out",
                       str(tmp_path / "s_other"), "--max-epochs", "1", "--threads", "1"]) == 0
    capsys.readouterr()  # --limit cuts both down to the same rows: only the whole data set tells them apart
    assert train.main(["--stage", "joint", *common, "--limit", "2", "--cf-ckpt", str(tmp_path / "s_other" / "best.pt")]) == 2
    assert "made from other inputs than these: data changed" in one_error_line(capsys)
    assert train.main(["--stage", "text", *common[:3], str(flipped), *common[4:], "--out", str(tmp_path / "t_other")]) == 0
    capsys.readouterr()
    assert train.main(["--stage", "joint", *common, "--lora", str(tmp_path / "t_other" / "adapter")]) == 2
    assert "made from other inputs than these: data changed" in one_error_line(capsys)
    assert train.main(["--stage", "joint", *common, "--template", "collm"]) == 2  # an adapter of the paper's prompts
    assert "template changed (template paper then, collm now)" in one_error_line(capsys)
    made = json.loads((tmp_path / "text" / "adapter" / "made_from.json").read_text())
    (tmp_path / "text" / "adapter" / "made_from.json").write_text(json.dumps(dict(made, domain="book")))
    assert train.main(["--stage", "joint", *common]) == 2  # an adapter of "books" prompts, on "movies" ones
    assert "domain changed (domain book then, movie now)" in one_error_line(capsys)
    old = {"rows": "r", "catalog": "c"}  # a run before the whole-data digest: compared on what it records
    assert runs.made_from_changes(old, dict(old, data="d")) == [] and runs.made_from_changes(old, {"data": "d"})


@pytest.mark.parametrize("spelling, words", [  # no base_model.model.: peft would load none of it
    ("model.layers.0.self_attn.q_proj.lora_A.weight", "lacks peft's prefix"),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", "a second time")])
def test_two_adapter_keys_for_one_weight_are_refused(tiny_llm, tmp_path, spelling, words):
    lora.save_adapter(lora.inject(llama.load_model(tiny_llm)), tmp_path / "a")
    state = load_file(tmp_path / "a" / "adapter_model.safetensors")
    state[spelling] = torch.full_like(state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"], 9.0)
    save_file(state, tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(ValueError, match=words):  # one of them won, silently
        lora.load_adapter(llama.load_model(tiny_llm), tmp_path / "a")


@pytest.mark.parametrize("edit, words", [
    (lambda cfg, sd: cfg.update(init_lora_weights="pissa"), "init_lora_weights 'pissa'"),  # peft moves W into it
    (lambda cfg, sd: cfg.update(layers_to_transform=0), "layers_to_transform"),  # peft: layer 0 alone
    (lambda cfg, sd: sd.update({k: v.double().fill_(1e300) for k, v in sd.items()}), "NaN or inf"),  # inf as fp32
    (lambda cfg, sd: [sd.update({k.removeprefix(lora.PEFT_PREFIX): sd.pop(k)}) for k in list(sd)], "lacks peft's prefix"),
    (None, "lora_alpha 8, but the model's LoRA has others")])  # loaded into a model of another LoRA: its scaling stayed
def test_an_adapter_that_peft_reads_otherwise_is_refused(tiny_llm, tmp_path, edit, words):
    """Each loaded here as plain LoRA, while peft scores it otherwise (up to 4.4 apart in the logits)."""
    lora.save_adapter(lora.inject(llama.load_model(tiny_llm), r=4, alpha=8), tmp_path / "a")
    cfg, sd = json.loads((tmp_path / "a" / "adapter_config.json").read_text()), \
        load_file(tmp_path / "a" / "adapter_model.safetensors")
    for ok in ({"init_lora_weights": "gaussian", "layers_to_transform": None}, {}):  # what peft reads as plain LoRA
        (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, **ok}))
        lora.load_adapter(llama.load_model(tiny_llm), tmp_path / "a")
    if edit:
        edit(cfg, sd)
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(sd, tmp_path / "a" / "adapter_model.safetensors")
    model = lora.inject(llama.load_model(tiny_llm), r=4, alpha=16) if edit is None else llama.load_model(tiny_llm)
    with pytest.raises(ValueError, match=words):
        lora.load_adapter(model, tmp_path / "a")


def test_an_adapter_feature_that_is_not_implemented_is_refused(tiny_llm, tmp_path):
    model = llama.load_model(tiny_llm)
    lora.save_adapter(lora.inject(model), tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "alora_invocation_tokens": [5, 6]}))
    with pytest.raises(ValueError, match="alora_invocation_tokens"):
        lora.load_adapter(llama.load_model(tiny_llm), tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": []}))
    with pytest.raises(ValueError, match=r"a/adapter_config.json: "):
        lora.load_adapter(llama.load_model(tiny_llm), tmp_path / "a")  # (inject's error, naming the file)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.model",
                                  "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"])
@pytest.mark.parametrize("odd", ["fifo", "directory"])
def test_no_file_of_a_backbone_or_adapter_that_is_a_fifo_or_a_directory_hangs(tiny_llm, tmp_path, name, odd):
    """Every file that llama.load or lora.load_adapter opens: a FIFO would block its reader forever (after 10 s,
    far past the tiny load's time, another process marks the test failed and opens the FIFO to write, which frees
    the reader), a directory must not pass for the file. (A thread could not: safetensors' open holds the GIL.)"""
    ckpt, adapter, freed = tmp_path / "ckpt", tmp_path / "adapter", tmp_path / "freed"
    shutil.copytree(tiny_llm, ckpt)
    lora.save_adapter(lora.inject(llama.load_model(tiny_llm)), adapter)
    if name == "adapter_model.bin":  # peft's older format: read only where no .safetensors is
        os.remove(adapter / "adapter_model.safetensors")
    path = (adapter if name.startswith("adapter") else ckpt) / name
    if path.exists():
        os.remove(path)
    os.mkfifo(path) if odd == "fifo" else path.mkdir()
    free = subprocess.Popen(["sh", "-c", 'sleep 10; touch "$2"; while :; do : > "$1"; sleep 1; done', "-",
                             str(path), str(freed)]) if odd == "fifo" else None
    try:
        with pytest.raises(Exception) as e:
            llama.load(ckpt) if path.parent == ckpt else lora.load_adapter(llama.load_model(tiny_llm), adapter)
    finally:
        free and (free.kill(), free.wait())
    assert not freed.exists(), f"{name}: its reader waited on the FIFO"
    assert isinstance(e.value, (ValueError, FileNotFoundError)), repr(e.value)
    assert name in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("flags, words", [
    (["--clip", "-1"], "--clip: expected a finite number > 0"), (["--clip", "0"], "--clip: expected a finite number > 0"),
    (["--wd", "-5"], "--wd: expected a finite number >= 0"), (["--dropout", "nan"], "--dropout: expected a finite"),
    (["--warmup-epochs", "nan"], "--warmup-epochs: expected a finite"),
    (["--max-minutes", "-1"], "--max-minutes: expected a finite number >= 0"), (["--lr", "inf"], "--lr: expected a finite"),
    (["--seed", "4294967296"], "--seed: expected an integer >= 0 and <= 4294967295")])  # numpy's, after the data
def test_flags_that_make_no_sense_are_refused_where_they_enter(root, tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit) as e:
        cf_run(root, tmp_path / "mf", *flags)
    assert e.value.code == 2 and words in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "mf").exists()


def test_a_device_that_does_not_exist_and_zero_repeats_are_one_line(root, tmp_path, capsys):
    assert cf_run(root, tmp_path / "mf", "--device", "foo") == 2
    assert "--device foo: expected cpu, cuda or cuda:N" in one_error_line(capsys)
    for n in ("0", "-2"):
        with pytest.raises(SystemExit):
            ev.main([str(tmp_path), "--repeats", n])
        assert "--repeats: expected an integer >= 1" in capsys.readouterr().err


def test_probabilities_near_0_and_1_keep_their_order(tmp_path, capsys):
    """A clip at 1e-7 tied every probability past it: AUC 0.625 and UAUC 0.75 where the order gives 0.75 and 1."""
    path = tmp_path / "p.tsv"
    path.write_text("user_id\titem_id\tlabel\tscore\n1\t1\t0\t0.9999999\n1\t2\t1\t0.99999999\n"
                    "2\t1\t0\t0.00000001\n2\t2\t1\t0.0000001\n")
    assert ev.main(["--preds", str(path), "--scores", "probs"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split("|")
    assert [c.strip() for c in row[-3:-1]] == ["0.7500", "1.0000"], row  # AUC, UAUC
    tie = float(np.nextafter(0.04097352, 1))  # one ulp apart: the same logit in float64, not the same probability
    path.write_text(f"user_id\titem_id\tlabel\tscore\n1\t1\t0\t0.04097352\n1\t2\t1\t{tie!r}\n"
                    "2\t1\t0\t0.0\n2\t2\t1\t5e-324\n")
    assert ev.main(["--preds", str(path), "--scores", "probs"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split("|")
    assert [c.strip() for c in row[-3:-1]] == ["0.7500", "1.0000"], row  # as sklearn orders them (ties: 0.5, 0.5)


def test_prediction_files_say_what_they_hold(tmp_path, capsys):
    head = "user_id\titem_id\tlabel\tscore\twarm\n"
    path = tmp_path / "p.tsv"
    path.write_text(head + "1\t1\t1\t0.9\t1\n1\t2\t0\t0.2\t0\n")
    with pytest.raises(SystemExit):
        ev.main(["--preds", str(path)])  # no --scores: no guessing between logits and probabilities
    for body, words in (("1\t1\t0.7\t0.9\t1\n", "expected label 0 or 1, got '0.7'"),
                        ("1\t1\t1\t0.9\tt\n", "expected warm as 1/0, true/false or yes/no, got 't'"),
                        ("1\t1\t1\tnan\t1\n", "expected a finite number as score"),
                        ("1\t1\t1\t0.9\t1\tTest\n", "expected split train, valid or test, got 'Test'")):
        path.write_text((head if body.count("\t") == 4 else head.replace("\n", "\tsplit\n")) + body)
        capsys.readouterr()
        assert ev.main(["--preds", str(path), "--scores", "logits"]) == 2 and words in one_error_line(capsys)
    for body, words in (("1\t1\t1\t0.9\t1\ttest\n1\t2\t1\t0.2\t0\ttest\n1\t3\t0\t0.1\t0\tvalid\n",
                         "2 test rows, 2 of them liked; expected likes and dislikes"),  # (it printed nan, exit 0)
                        ("1\t1\t1\t0.9\t1\tvalid\n1\t2\t0\t0.1\t0\tvalid\n", "0 test rows, 0 of them liked")):
        path.write_text(head.replace("\n", "\tsplit\n") + body)
        assert ev.main(["--preds", str(path), "--scores", "logits"]) == 2 and words in one_error_line(capsys)
    path.write_text("\ufeff" + head + "1\t1\t1\t0.9\t1\n1\t2\t0\t0.2\t0\n")  # a BOM (Excel's): read past
    assert ev.main(["--preds", str(path), "--scores", "logits"]) == 0 and "| test |" in capsys.readouterr().out
    path.write_text((head + "1\t1\t1\t0.9\t1\n").replace("\n", "\r"))  # CR line ends: one line to readline
    assert ev.main(["--preds", str(path), "--scores", "logits"]) == 2
    assert "p.tsv:1: a carriage return inside a line" in one_error_line(capsys)


def test_ratings_out_of_range_are_refused_on_their_line(tmp_path):
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "movies.dat").write_text("1::A (2000)::Drama\n", encoding="latin-1")
    (d / "ratings.dat").write_text("1::1::5::100\n1::1::9::200\n", encoding="latin-1")
    with pytest.raises(data.DataError, match=r"ratings.dat:2: rating 9 is outside 1..5"):
        data.load("movielens", tmp_path)


def test_a_title_never_makes_or_moves_a_slot(root, tmp_path):
    items = [f"{i}\tMovie {i} <TargetItemID> <UserID> <<UserID>> <<TargetItemTitle>> (2000)"  # (one pass left
             for i in range(1, N_ITEMS + 1)]                                                   # "<UserID>")
    ds = data.load("ml1m", write_data(tmp_path / "d", items=items))
    tok = llama.load_tokenizer(backbones.make_tiny(tmp_path / "tok", texts=["Movie (2000)"]))
    for r in range(len(ds)):
        p = data.encode_prompt(data.prompt(ds, r, True), tok)
        assert len(p.user_pos) == len(p.item_pos) == 1 and p.user_pos[0] < p.item_pos[0]
    from test_tokenizer import write_tiny_bpe  # a byte-level BPE's added tokens in a title stay text
    bpe_tok = llama.load_tokenizer(write_tiny_bpe(tmp_path / "bpe"))
    p = data.encode_prompt("Heat <|im_end|><|endoftext|> <|im_start|> <UserID>", bpe_tok)
    assert p.ids.count(bpe_tok.bos_id) == 1 and bpe_tok.eos_id not in p.ids and p.ids.count(bpe_tok.unk_id) == 1
    assert bpe_tok.encode("<|im_end|>", bos=False) == [bpe_tok.eos_id]  # (a user's own --prompt: as HF reads it)


def test_a_tokenizer_of_unknown_answers_or_ids_outside_it_is_refused(tmp_path):
    """"Yes" and "No" as UNK made every score 0; a BOS id of -1 failed in torch.embedding with a traceback."""
    class UnknownWords(bpe.AnswerIds):
        path, unk_id = "t", 0
        encode, pieces = (lambda self, text, bos=False: [0]), (lambda self, ids: ["<unk>"])
    with pytest.raises(ValueError, match="'Yes' is not a single token in t"):
        UnknownWords().yes_id
    import io
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["Yes No abc"] * 50), model_writer=buf, vocab_size=30,
                                   model_type="bpe", bos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="bos id -1, eos id 2 or unk id 0 is not a token"):
        llama.Tokenizer(tmp_path / "tokenizer.model")
    buf = io.BytesIO()  # no EOS: the tiny backbone's config.json was written, then refused (eos_token_id -1)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["Yes No abc"] * 50), model_writer=buf, vocab_size=30,
                                   model_type="bpe", eos_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="bos id 1, eos id -1 or unk id 0 is not a token"):
        llama.Tokenizer(tmp_path / "tokenizer.model")
    with pytest.raises(ValueError, match="eos id -1"):  # before the backbone is written
        train.backbone_dir(train.parse_args(["--stage", "icl", "--llm", "tiny", "--tokenizer",
                                             str(tmp_path / "tokenizer.model"), "--runs", str(tmp_path / "runs")]),
                           types.SimpleNamespace(titles=["", "Heat (1995)"]))
    assert not (tmp_path / "runs").exists()


def test_a_bad_byte_is_reported_on_its_own_line(root):
    path = root / "ml1m" / "items.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[9] = b"9\tMovie \xff 9"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(data.DataError, match=rf"{path}:10: expected utf-8 text"):
        data.load("ml1m", root)


def test_no_tool_of_the_project_destroys_a_file(root, tmp_path, capsys):
    for seed, d in enumerate(("a", "b")):
        assert cf_run(root, tmp_path / d / "mf", "--seed", str(seed)) == 0
    capsys.readouterr()
    assert report.main(["--collect", str(tmp_path / "a" / "mf"), str(tmp_path / "b" / "mf"), "--into", str(tmp_path / "x")]) == 2
    assert "two runs named mf" in one_error_line(capsys) and not (tmp_path / "x").exists()
    assert report.main(["--collect", str(tmp_path / "a" / "mf"), str(tmp_path / "a"), "--into", str(tmp_path / "y")]) == 2
    assert "metrics.json" in one_error_line(capsys) and not (tmp_path / "y").exists()  # (a half --collect: mf copied)
    for d in ("a", "a", "b"):  # the same figures again change nothing; other figures under mf.json are kept
        assert report.main(["--collect", str(tmp_path / d / "mf"), "--into", str(tmp_path / "x")]) in (0, None)
    kept = list((tmp_path / "x").glob("old-*/mf.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == (tmp_path / "a" / "mf" / "metrics.json").read_bytes()
    inter = root / "ml1m" / "interactions.tsv"
    before = inter.read_bytes()
    assert datainfo.main(["ml1m", "--data-dir", str(root), "--export", str(inter)]) == 2
    assert "overlaps" in one_error_line(capsys) and inter.read_bytes() == before

# ---------------------------------------------------------------------------------------------
# hostile sizes: a type-valid but absurd config.json, adapter or flag is one line, before memory is spent

from tools import limits  # noqa: E402


def _config_text(old, new):
    return lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace(old, new))


def _two_shards(d):
    """The weights in two shards, the second also holding a zero embedding table: read in turn, it won."""
    state = load_file(d / "model.safetensors")
    save_file(state, d / "a.safetensors")
    save_file({"model.embed_tokens.weight": torch.zeros_like(state["model.embed_tokens.weight"])}, d / "b.safetensors")
    (d / "model.safetensors").unlink()
    index = {"weight_map": {"lm_head.x": "b.safetensors", **{k: "a.safetensors" for k in state}}}  # (both files)
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


HOSTILE_CONFIGS = {  # words in the error line -> the edit; each error names the file
    "config.json: num_hidden_layers is 1000000000; expected an integer >= 1 and <= 1024":
        _edit_config("num_hidden_layers", 10 ** 9),
    "config.json: num_hidden_layers is 30, but the weights": _edit_config("num_hidden_layers", 30),
    "config.json: num_hidden_layers is 1000000000.0; expected an integer >= 1": _edit_config("num_hidden_layers", 1e9),
    "config.json: rms_norm_eps is inf; expected a finite number >= 1e-30 and < 1": _config_text('"rms_norm_eps": 1e-05', '"rms_norm_eps": 1e999'),
    "config.json: rope_theta is 0; expected a finite number >= 1 and <= 3.4e+38": _edit_config("rope_theta", 0),
    "config.json: rope_theta is 1e-300; expected a finite number >= 1": _edit_config("rope_theta", 1e-300),  # 0 in fp32
    "config.json: rope_theta is 1" + "0" * 29 + "...; expected": _edit_config("rope_theta", 10 ** 300),
    "config.json: rope_theta 10000.0 and rope_parameters' 500000.0 differ": _edit_config(
        "rope_parameters", {"rope_type": "default", "rope_theta": 500000.0}),  # HF reads the latter; ours the former
    "model.safetensors: key 'model.norm.weight' is I8; expected F16, BF16, F32, F64": lambda d: save_file(
        {**load_file(d / "model.safetensors"), "model.norm.weight": torch.ones(64, dtype=torch.int8)},
        d / "model.safetensors"),  # (cast to fp32 without a word; U64 weights scored -6e17)
    "b.safetensors: key 'model.embed_tokens.weight' is in ": _two_shards,
    "config.json: rms_norm_eps is 1e-300; expected a finite number >= 1e-30": _edit_config("rms_norm_eps", 1e-300),
    "ckpt: both model.safetensors and model.safetensors.index.json; expected one": lambda d: (
        d / "model.safetensors.index.json").write_text('{"weight_map": {}}'),  # HF reads the one, we read the other
    "config.json: transformers_weights='other.safetensors': another weights file": _edit_config(
        "transformers_weights", "other.safetensors"),
    "config.json: quantization_config={'quant_method': 'bitsandbytes'}: quantized weights": _edit_config(
        "quantization_config", {"quant_method": "bitsandbytes"}),
    "model.safetensors: key 'model.norm.weight' holds NaN or inf values": lambda d: save_file(
        {**load_file(d / "model.safetensors"), "model.norm.weight": torch.full((64,), float("inf"))},
        d / "model.safetensors"),  # (decode printed NaN, as no JSON, with exit 0)
    "config.json: num_attention_heads is 0; expected an integer >= 1": _edit_config("num_attention_heads", 0),
    "config.json: num_key_value_heads is 0; expected an integer >= 1": _edit_config("num_key_value_heads", 0),
    "config.json: hidden_size is 0; expected an integer >= 1": _edit_config("hidden_size", 0),
    "config.json: head_dim is 3; expected a positive even number": _edit_config("head_dim", 3),
    "key 'model.layers.0.mlp.gate_proj.weight' has shape (172, 64),": _edit_config("intermediate_size", 10 ** 9),
    "key 'model.embed_tokens.weight' has shape": _edit_config("vocab_size", 10 ** 12),
    "config.json: eos_token_id is []; expected an integer >= 0, or a non-empty list": _edit_config("eos_token_id", []),
    "config.json: expected a JSON object, an HF-format checkpoint's config.json (nested too deep)": lambda d: (d / "config.json").write_text("[" * 10 ** 5),
    "model.safetensors.index.json: expected a JSON object with a weight_map": _index('{"weight_map": {"a": 3}}'),
}


@pytest.mark.parametrize("words", list(HOSTILE_CONFIGS))
def test_a_hostile_config_is_one_line_before_anything_is_built(tiny_llm, tmp_path, capsys, words):
    d = _copy(tiny_llm, tmp_path)
    HOSTILE_CONFIGS[words](d)
    assert decode.main([str(d), "--max-new-tokens", "1"]) == 2
    err = one_error_line(capsys)
    assert err.startswith(f"error: {d}") and words in err


def test_an_eos_list_of_ints_loads_as_hf_allows(tiny_llm, tmp_path):
    d = _copy(tiny_llm, tmp_path)
    _edit_config("eos_token_id", [2, 7])(d)
    assert llama.load_model(d).cfg.eos_token_id == 2


def test_weights_that_cannot_fit_are_refused_before_they_are_read(tiny_llm, monkeypatch):
    monkeypatch.setattr(limits, "available", lambda device="cpu": 2 ** 10)  # 1 KiB free
    with pytest.raises(limits.SizeError, match=rf"{tiny_llm}/model.safetensors: mapping it needs about 0.0 GiB, more"):
        llama.load_model(tiny_llm)  # (safe_open maps the whole file: checked first)
    real = limits.fits  # the file mapped, its weights as the header declares them
    monkeypatch.setattr(limits, "fits", lambda need, what, device="cpu": what.endswith("mapping it") or real(need, what))
    with pytest.raises(limits.SizeError, match=rf"{tiny_llm}: [\d,]+ weights in float32 needs about 0.0 GiB, more"):
        llama.load_model(tiny_llm)


@pytest.mark.parametrize("edit, words", [
    (dict(r=10 ** 8), "r is 100000000, but "), (dict(r=8.0), "r is 8.0; expected an integer >= 1"),
    (dict(r=0), "r is 0; expected an integer >= 1"), (dict(lora_alpha=float("inf")), "lora_alpha is inf"),
    (dict(lora_alpha=1e308), "lora_alpha is 1e.308; expected a finite number > 0 and <= 65504"),  # a NaN loss
    (dict(lora_dropout=1.0), "lora_dropout is 1.0; expected a finite number >= 0 and < 1"),
    (dict(target_modules=["q_proj"]), "target_modules ['q_proj'] lack 'v_proj'"),
    (dict(target_modules=5), "target_modules is 5; expected a list of module names"),
    (dict(target_modules=["q_proj", "v_proj", "lm_head"]), "target_modules has 'lm_head'; lora.py adapts the decoder")])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_an_adapter_of_hostile_sizes_is_refused_before_inject(tiny_llm, tmp_path, edit, words, fmt):
    lora.save_adapter(lora.inject(llama.load_model(tiny_llm)), tmp_path / "a")
    if fmt == "bin":  # peft's older format: no header, the tensors are read first
        torch.save(load_file(tmp_path / "a" / "adapter_model.safetensors"), tmp_path / "a" / "adapter_model.bin")
        (tmp_path / "a" / "adapter_model.safetensors").unlink()
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({**cfg, **edit}))
    model = llama.load_model(tiny_llm)
    with pytest.raises(ValueError, match="adapter_config.json: " + words.replace("[", r"\[").replace("(", r"\(")):
        lora.load_adapter(model, tmp_path / "a")
    assert not lora.lora_layers(model)  # refused before inject allocated anything


@pytest.fixture
def little_memory(monkeypatch):
    """16 GiB free, whatever this machine has: the refusals below do not depend on it."""
    monkeypatch.setattr(limits, "available", lambda device="cpu": 16 * limits.GiB)


@pytest.mark.parametrize("flags, words", [
    (["--dim", "100000"], "--stage sasrec --dim 100000 --layers 2 --heads 4 --maxlen 25 --batch-size 1024 on 60 rows"),
    (["--layers", "100000"], "--layers 100000: expected at most 1024 blocks"), (["--maxlen", "1000000"], "--maxlen 1000000 "),
    (["--heads", "3"], "--heads 3 does not divide --dim 64"), (["--threads", "100000"], "--threads 100000: ")])
def test_hostile_cf_flags_are_one_line_before_the_model_is_built(root, tmp_path, capsys, little_memory, flags, words):
    assert train.main(["--stage", "sasrec", "--data-dir", str(root), "--out", str(tmp_path / "s"), *flags]) == 2
    err = one_error_line(capsys)
    memory = flags[0] not in ("--heads", "--threads", "--layers")
    assert words in err and ("GiB, more than the 16.0 GiB available" in err) == memory


@pytest.fixture(scope="module")
def llm_parts(tiny_llm, tmp_path_factory):
    """Data, an MF checkpoint and a LoRA adapter for the joint stage on a copy of the tiny backbone."""
    top = tmp_path_factory.mktemp("parts")
    root = write_data(top / "data")
    assert cf_run(root, top / "runs" / "mf") == 0
    lora.save_adapter(lora.inject(llama.load_model(tiny_llm)), top / "runs" / "text" / "adapter")
    return root, top / "runs"


def llm_run(parts, stage, *flags):
    root, runs_dir = parts
    return train.main(["--stage", stage, "--data-dir", str(root), "--runs", str(runs_dir), "--threads", "1",
                       *["--cf", "mf"] * (stage == "joint"),
                       "--out", str(runs_dir / f"{stage}-{len(os.listdir(runs_dir))}"), "--max-epochs", "1", *flags])


def test_a_refused_run_leaves_no_folder_it_made(root, tmp_path, capsys, monkeypatch):
    """A run refused after its --out was made (a joint stage without its parts) left that folder, and the
    parents it made, empty behind; a folder that was there before stays."""
    def joint(out):
        return train.main(["--stage", "joint", "--cf", "mf", "--data-dir", str(root), "--runs", str(tmp_path / "none"),
                           "--out", str(out), "--threads", "1"])
    assert joint(tmp_path / "new" / "deeper" / "joint") == 2
    assert "the joint stage needs " in one_error_line(capsys) and sorted(os.listdir(tmp_path)) == ["data"]
    (tmp_path / "kept").mkdir()
    assert joint(tmp_path / "kept" / "joint") == 2
    assert "the joint stage needs " in one_error_line(capsys) and not list((tmp_path / "kept").iterdir())
    assert sorted(os.listdir(tmp_path)) == ["data", "kept"]
    real_mkdir, theirs = os.mkdir, tmp_path / "theirs"
    def raced(path, *a, **k):  # another process makes the parent between the run's look and its mkdir
        if os.path.abspath(path) == str(theirs):
            real_mkdir(path)
        return real_mkdir(path, *a, **k)
    monkeypatch.setattr(os, "mkdir", raced)
    assert joint(theirs / "joint") == 2
    assert "the joint stage needs " in one_error_line(capsys) and theirs.is_dir()  # (not the run's to remove)


@pytest.mark.parametrize("script, env, flags", [("table.sh", {"ROWS": "mf", "CF_FLAGS": "--lr nan"}, []),
                                                 ("lr_sweep.sh", {"LRS": "1e-3"}, ["--stage", "mf", "--lr", "nan"])])
def test_a_refused_table_or_sweep_leaves_no_root_it_made(tmp_path, script, env, flags):
    """table.sh and lr_sweep.sh made ROOT before a row was refused, and left it empty; one there before stays."""
    (tmp_path / "kept").mkdir()
    for root in (tmp_path / "new" / "deeper", tmp_path / "kept"):  # (the parent mkdir -p made: gone as well)
        out = subprocess.run(["bash", str(ROOT / "drivers" / script), str(root), *flags], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, **env})
        assert out.returncode == 2 and "argument --lr: expected a finite number" in out.stderr, out.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["kept"] and not list((tmp_path / "kept").iterdir())


@pytest.mark.parametrize("stage, flags, words", [
    ("icl", ["--pad-multiple", "1000000000"], "--pad-multiple 1000000000 --iters-per-epoch 400 (prompts of up to "),
    ("text", ["--iters-per-epoch", str(10 ** 13)], "--iters-per-epoch 10000000000000"),
    ("text", ["--iters-per-epoch", str(10 ** 9)], "--iters-per-epoch 1000000000"),  # (passed, then built for hours)
    ("text", ["--lora-r", "100000000"], "LoRA rank r=100000000 is more than the 32 a layer"),
    ("joint", ["--proj-token-num", "100000"], "--proj-token-num 100000: 2 x 100000 pseudo-tokens leave no room"),
    ("joint", ["--proj-token-num", "1000"], "pseudo-tokens, more than the 2048 positions of --llm ")])
def test_hostile_llm_flags_are_one_line_before_memory_is_spent(tiny_llm, llm_parts, capsys, little_memory, stage, flags,
                                                                words):
    assert llm_run(llm_parts, stage, "--llm", str(tiny_llm), *flags) == 2
    assert words in one_error_line(capsys)


def test_a_prompt_past_max_position_embeddings_is_refused_naming_the_row(tiny_llm, llm_parts, tmp_path, capsys):
    d = _copy(tiny_llm, tmp_path)
    _edit_config("max_position_embeddings", 16)(d)
    assert llm_run(llm_parts, "icl", "--llm", str(d)) == 2
    err = one_error_line(capsys)
    assert "error: row 0 (user 1, item 2): its prompt is " in err and f"more than the 16 positions of --llm {d}" in err
    root = llm_parts[0]  # walk.py scores one row's prompt: the same refusal, naming that row
    assert walk.main(["--data-dir", str(root), "--llm", str(d), "--runs", str(tmp_path / "w"), "--row", "3"]) == 2
    assert "error: row 3 (user 1, item 5): its prompt is " in one_error_line(capsys)


def test_normal_runs_pass_the_estimates_easily(ml1m, monkeypatch):
    """SASRec at its defaults on ML-1M, and SmolLM2-135M at batch 16 on its longest ML-1M prompt (265 tokens),
    within 12 GiB."""
    monkeypatch.setattr(limits, "available", lambda device="cpu": 12 * limits.GiB)
    for stage in train.CF_STAGES:
        limits.check_cf(train.parse_args(["--stage", stage]), ml1m)
    smol = llama.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192)
    prompts = [data.Prompt(ids=[1] * 265, user_pos=[], item_pos=[])] * len(ml1m)
    limits.check_prompts(train.parse_args(["--stage", "text", "--llm", "x"]), ml1m, smol, prompts)
    assert limits.available() > 2 ** 20  # /proc/meminfo read on Linux


def test_memory_errors_huge_input_files_and_an_empty_data_variable(tmp_path, capsys, monkeypatch):
    """numpy's MemoryError (a size no check foresaw) escaped cli as a traceback; a sparse 1 TB file beside an
    adapter was digested for hours; SASRECLLM_DATA="" made the data root the current directory."""
    @runs.cli
    def main(argv=None):
        raise MemoryError("Unable to allocate 373. GiB for an array")
    assert main([]) == 1 and "error: out of memory (Unable to allocate 373. GiB" in one_error_line(capsys)
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "README.md").write_bytes(b"x" * 100)
    monkeypatch.setattr(runs, "DIGEST_MAX", 99)
    with pytest.raises(ValueError, match="README.md: 100 bytes; expected at most"):
        runs.files_digest(str(tmp_path))
    with pytest.raises(ValueError, match="more bytes than its size"):  # /proc/self/pagemap: 0 bytes, gives 256 GiB
        runs.files_digest("/proc/self/status")
    out = subprocess.run([sys.executable, "-c", "import data; print(data.DATA_DIR)"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "SASRECLLM_DATA": ""})
    assert out.stdout.strip() == os.path.join(str(ROOT), "data"), out.stderr
    for k, v in (("WORLD_SIZE", "abc"), ("WORLD_SIZE", ""), ("RANK", "-1"), ("LOCAL_RANK", "٣")):  # int()'s message,
        monkeypatch.setenv(k, v)                                                # naming no variable, or a hung group
        with pytest.raises(ValueError, match="expected integers with 0 <= RANK, LOCAL_RANK < WORLD_SIZE"):
            dist.init_distributed("cpu")
        monkeypatch.delenv(k)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "abc")  # oneDNN runs its widest ISA for a value it cannot read
    assert runs.numerics("float32").startswith("numerics: NOT portable: ONEDNN_MAX_CPU_ISA=abc, not AVX2")


# ---------------------------------------------------------------------------------------------
# a tenth review: the twins of cases fixed before


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_adapter_and_checkpoint_tensors_that_are_no_floats_are_refused(tiny_llm, tmp_path, fmt):
    """bool, int8 or int64 LoRA tensors (2**50 in one) were cast to fp32 without a word; a joint best.pt's too."""
    lora.save_adapter(lora.inject(llama.load_model(tiny_llm)), tmp_path / "a")
    st = tmp_path / "a" / "adapter_model.safetensors"
    state = load_file(st)
    key = next(k for k in state if ".lora_B." in k)
    state[key] = state[key].to(torch.int64)
    if fmt == "bin":
        torch.save(state, st.with_suffix(".bin"))
        st.unlink()
    else:
        save_file(state, st)
    with pytest.raises(ValueError, match=rf"adapter_model.{fmt}: key '{key}' is (I64|torch.int64); expected F16, BF16"):
        lora.load_adapter(llama.load_model(tiny_llm), tmp_path / "a")
    state[key] = torch.full_like(state[key], float("nan"), dtype=torch.float32)  # a float, and NaN
    torch.save(state, st.with_suffix(".bin")) if fmt == "bin" else save_file(state, st)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'a'}: key '{key}' holds NaN or inf values"):
        lora.load_adapter(llama.load_model(tiny_llm), tmp_path / "a")
    model = torch.nn.Linear(2, 2)
    for weight in (torch.ones(2, 2, dtype=torch.int8), torch.full((2, 2), float("inf"))):
        with pytest.raises(runs.RunError, match=r"of another shape, not a float or not finite \['weight'\]"):
            train.loop.load_trainable(model, {"weight": weight, "bias": torch.zeros(2)}, "b.pt")


def test_eval_into_an_input_of_the_run_is_refused_before_scoring(root, tmp_path, capsys):
    """--into the run's data folder (or its LLM's) wrote there, and changed what the run was made from."""
    assert cf_run(root, tmp_path / "mf") == 0
    capsys.readouterr()
    assert ev.main([str(tmp_path / "mf"), "--into", str(root)]) == 2
    assert "--into " in one_error_line(capsys) and not list(root.glob("*.json"))


def test_torch_out_of_memory_is_one_line_and_other_runtime_errors_are_not_hidden(capsys):
    @runs.cli
    def main(argv=None):
        raise RuntimeError(argv[0])
    assert main(["[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: you tried"]) == 1
    assert "error: out of memory (" in one_error_line(capsys)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["a bug"])
    with pytest.raises(SystemExit):  # (argparse's usage and error line, before anything is allocated)
        bench.main(["--train-batch", "100000000000", "--no-hf"])
    assert "--train-batch: expected an integer >= 1 and <= 4096" in capsys.readouterr().err


def test_a_checkpoint_of_stage_all_is_refused(root, tmp_path, capsys):
    """--stage all is a chain, not a stage: a best.pt that said so gave `error: None`."""
    assert cf_run(root, tmp_path / "mf") == 0
    ck = runs.read_checkpoint(str(tmp_path / "mf" / "best.pt"))
    ck["args"].update(stage="all", dtype=None, amp=None)
    runs.save_atomic(ck, str(tmp_path / "mf" / "best.pt"))
    capsys.readouterr()
    assert ev.main([str(tmp_path / "mf")]) == 2
    assert "not a checkpoint this train.py can use: its stage is 'all'" in one_error_line(capsys)


@pytest.mark.parametrize("edit, words", [
    (lambda log: [log[0], log[0]], "log.jsonl:2: epoch 1; expected 2, the epochs in order from 1"),
    (lambda log: [dict(log[0], valid=dict(log[0]["valid"], auc=1e11))], "log.jsonl:1: valid's auc is 100000000000.0"),
])
def test_a_log_edited_out_of_order_or_range_is_refused(root, tmp_path, edit, words):
    """The report drew an AUC axis up to 1e11, and counted an epoch twice, from a log edited by hand."""
    assert cf_run(root, tmp_path / "mf") == 0
    path = tmp_path / "mf" / "log.jsonl"
    log = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(e) + "\n" for e in edit(log)))
    with pytest.raises(DataError, match=words.replace("(", r"\(")):
        tables.read_log(tmp_path / "mf")


def test_the_fp32_runs_own_isa_cap_does_not_hide_the_cpus_bf16(monkeypatch):
    """numerics() caps oneDNN for an fp32 run; its precision line then said this CPU had no native bf16."""
    hardware = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    monkeypatch.setattr(runs, "SET_HERE", set())
    for k in runs.PORTABLE:
        monkeypatch.delenv(k, raising=False)
    a = train.parse_args(["--stage", "text", "--llm", "d", "--dtype", "float32"])
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # (torch chose its kernels long ago in this process)
    runs.numerics("float32")
    assert "ONEDNN_MAX_CPU_ISA" in runs.SET_HERE and runs.native_bf16() is False  # bf16 is emulated in this process
    assert runs.precision_note(a) == ("as asked" if hardware else runs.default_precision(a)[1])
    monkeypatch.setattr(runs, "SET_HERE", set())  # a cap the caller set: the CPU's bf16 is out of reach, as said
    assert runs.precision_note(a).startswith("fp32: this CPU has no native bf16")


def test_sasrec_blocks_count_their_modules_not_only_their_tensors(root, tmp_path, capsys, monkeypatch):
    """A million 4-wide blocks: 13 GiB of tensors and activations passed, then ~35 KB of modules each (35 GB).
    (--layers is now at most 1024: 1,024 such blocks, 12 MiB of tensors and activations, 64 MiB counted for their
    modules, against 32 MiB free.)"""
    monkeypatch.setattr(limits, "available", lambda device="cpu": 32 << 20)
    assert train.main(["--stage", "sasrec", "--data-dir", str(root), "--out", str(tmp_path / "s"), "--layers", "1024",
                       "--dim", "4", "--heads", "1", "--batch-size", "1", "--max-epochs", "1", "--max-steps", "1"]) == 2
    assert "--layers 1024 --heads 1" in (err := one_error_line(capsys)) and "more than the 0.0 GiB available" in err


def test_a_run_written_into_its_own_tiny_backbone_is_refused(root, tmp_path, capsys):
    """--out RUNS/tiny-llm (or RUNS itself, which holds it) would change the backbone the run reads."""
    for out in (tmp_path / "r" / "tiny-llm", tmp_path / "r"):
        assert train.main(["--stage", "icl", "--llm", "tiny", "--data-dir", str(root), "--runs", str(tmp_path / "r"),
                           "--out", str(out), "--threads", "1"]) == 2
        assert f"--out {out} overlaps {tmp_path / 'r' / 'tiny-llm'}, which this run reads" in one_error_line(capsys)


def test_numerics_cost_deletes_nothing_of_the_callers(tmp_path):
    """OUT/runs was removed before every timed run: with OUT the repository, the main job's runs went with it."""
    (tmp_path / "runs" / "joint").mkdir(parents=True)
    (tmp_path / "runs" / "joint" / "best.pt").write_text("kept")
    out = subprocess.run(["bash", "drivers/numerics_cost.sh", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "SASRECLLM_DATA": str(tmp_path / "none"), "REPEATS": "1"})
    assert out.returncode != 0 and (tmp_path / "runs" / "joint" / "best.pt").read_text() == "kept"
    assert not list(tmp_path.glob("numerics-runs.*"))  # its own scratch folder, removed


def test_the_chain_stops_at_a_stage_that_did_not_finish(root, tmp_path, capsys):
    """--stage all went on past a paused or stopped SASRec: the text stage trained, and the joint stage
    was built on the unfinished SASRec (or refused it, naming the text stage)."""
    assert train.main(["--stage", "all", "--llm", "tiny", "--data-dir", str(root), "--runs", str(tmp_path / "r"),
                       "--stop-after", "1", "--max-epochs", "2", "--threads", "1"]) == 0
    assert (tmp_path / "r" / "sasrec" / "last.pt").exists() and not list((tmp_path / "r" / "text").iterdir())
    assert "=== stage sasrec did not finish; the chain stops here" in capsys.readouterr().out


@pytest.mark.parametrize("flags, words", [
    (["R", "--shuffle-cf", "--shuffle-text"], "--shuffle-cf and --shuffle-text: one at a time"),
    (["R", "--shuffle-cf", "--into", "x"], "--into keeps a plain re-score; --shuffle-cf prints its table"),
    (["R", "--fuse", "S", "--test-only"], "--fuse fits on valid and scores test: no --test-only"),
    (["R", "--preds", "p.tsv", "--scores", "probs"], "--preds scores its file alone; give no RUN")])
def test_eval_refuses_modes_it_would_drop(flags, words, capsys):
    """The first mode ran and the others were dropped without a word (a table titled 'CF tokens permuted')."""
    with pytest.raises(SystemExit):
        ev.main(flags)
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("edit, words", [
    (dict(best_epoch=-7.5), "best_epoch is -7.5; expected an epoch"), (dict(best_epoch=10 ** 13), "larger than 1e12"),
    (dict(test=dict(n=2.5)), "test's n is 2.5; expected a count")])
def test_a_metrics_files_epoch_and_counts_are_checked(tmp_path, edit, words):
    """The cost table showed '1 (-7.5)' epochs from a hand-edited best_epoch, and sweep.md printed any n."""
    m = dict(logloss=0.6, precision=0.5, recall=0.5, f1=0.5, accuracy=0.5, auc=0.5, uauc=0.5, uauc_users=3, n=9)
    obj = {"valid": m, "test": m, "best_epoch": 1}
    obj.update({k: dict(m, **v) if isinstance(v, dict) else v for k, v in edit.items()})
    (tmp_path / "metrics.json").write_text(json.dumps(obj))
    with pytest.raises(DataError, match=words):
        tables.read_metrics_file(tmp_path / "metrics.json")


def test_the_sweep_and_the_table_run_from_anywhere_train_only_and_glob_nothing(root, tmp_path):
    """lr_sweep.sh ran the cwd's train.py (a stray one, or none); --stage mc scored test in a 'sweep on valid';
    table.sh globbed ROWS='m?' into the row a file named mc in the cwd named; the Python drivers run as files."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for stray in ("train.py", "tools.py", "drivers.py"):  # (python -m and -c put the cwd first on sys.path)
        (elsewhere / stray).write_text(f"raise SystemExit('the stray {stray} ran')")
    (elsewhere / "mc").write_text("")
    env = {**os.environ, "LRS": "1e-2"}
    out = subprocess.run(["bash", str(ROOT / "drivers" / "lr_sweep.sh"), "sw", "--stage", "mf", "--data-dir", str(root),
                          "--threads", "1"], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert out.returncode == 0 and (elsewhere / "sw" / "lr1e-2" / "log.jsonl").exists(), out.stderr[-2000:]
    for stage in (["--stage", "mc"], ["--stage=icl"], ["--stage", "mf", "--stage", "pop"]):
        out = subprocess.run(["bash", str(ROOT / "drivers" / "lr_sweep.sh"), "sw2", *stage], cwd=elsewhere,
                             capture_output=True, text=True, env=env)
        assert out.returncode == 2 and "a sweep needs a stage that trains epochs" in out.stderr, out.stderr
    out = subprocess.run(["bash", str(ROOT / "drivers" / "table.sh"), "t"], cwd=elsewhere, capture_output=True,
                         text=True, env={**os.environ, "ROWS": "m?", "PYTHON": "true"})
    assert out.returncode == 2 and "error: ROWS" in out.stderr and not (elsewhere / "t").exists(), out.stderr
    (elsewhere / "linked.py").symlink_to(ROOT / "drivers" / "datainfo.py")  # (python resolves it for sys.path[0])
    drivers = [subprocess.Popen([sys.executable, str(path), "--help"], cwd=elsewhere, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for path in [ROOT / "drivers" / f"{d}.py" for d in ("report", "bench", "datainfo", "decode")]
               + [elsewhere / "linked.py"]]  # as files, not -m: a ModuleNotFoundError was
    for p in drivers:                                                # all they said
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0 and stdout.startswith("usage: ") and not stderr, (p.args, stderr[-1000:])


def test_report_writes_no_file_into_what_a_run_read(root, tmp_path, capsys):
    """--collect (and --plot) --into an input of a run (its adapter, its LLM, its data) changed its digest."""
    assert cf_run(root, tmp_path / "mf") == 0
    capsys.readouterr()
    assert report.main(["--collect", str(tmp_path / "mf"), "--into", str(root / "ml1m")]) == 2
    assert "--into " in one_error_line(capsys) and not list((root / "ml1m").glob("*.json"))


def test_bench_ckpt_checks_the_tokenizer_against_the_vocabulary(tiny_llm, tmp_path, capsys):
    """--ckpt read the tokenizer and the model apart: ids past vocab_size were an IndexError mid-forward."""
    d = _copy(tiny_llm, tmp_path)
    state = load_file(d / "model.safetensors")
    state = {k: v[:300] if k in ("model.embed_tokens.weight", "lm_head.weight") else v for k, v in state.items()}
    save_file(state, d / "model.safetensors")
    _edit_config("vocab_size", 300)(d)
    assert bench.main(["--ckpt", str(d), "--no-hf", "--steps", "1", "--train-batch", "1", "--score-batch", "1"]) == 2
    assert "the tokenizer has ids up to" in one_error_line(capsys)


def test_no_write_replaces_a_device_a_fifo_or_goes_through_a_linked_run(root, tmp_path, capsys):
    """--export /dev/null (as root: the system's) and a FIFO were replaced by regular files; eval.py wrote
    rescored.json through a linked RUN, and its re-score through a linked --into."""
    os.mkfifo(tmp_path / "fifo")
    assert datainfo.main(["ml1m", "--data-dir", str(root), "--export", str(tmp_path / "fifo")]) == 2
    assert "fifo is not a regular file" in one_error_line(capsys) and (tmp_path / "fifo").is_fifo()
    assert cf_run(root, tmp_path / "mf") == 0
    (tmp_path / "linked").symlink_to(tmp_path / "mf", target_is_directory=True)
    (tmp_path / "into").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    capsys.readouterr()
    for argv in ([str(tmp_path / "linked")], [str(tmp_path / "mf"), "--into", str(tmp_path / "into")]):
        assert ev.main(argv) == 2 and "symbolic link" in one_error_line(capsys)
    assert not (tmp_path / "mf" / "rescored.json").exists() and not (tmp_path / "elsewhere").exists()
    t = tmp_path / "t"
    t.mkdir()
    os.mkfifo(t / "commands.txt")  # table.sh hung reading it
    out = subprocess.run(["bash", "drivers/table.sh", str(t)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "ROWS": "pop", "PYTHON": "true"})
    assert out.returncode == 2 and "commands.txt is not a regular file" in out.stderr, out.stderr


def test_a_one_class_test_split_is_refused_as_train_and_valid_are(root, capsys):
    """Its AUC is undefined: the run finished with test AUC NaN and exit 0 (Pop and SASRec alike)."""
    fields = [line.split("\t") for line in tiny_rows()]
    write_data(root, ["\t".join(f[:2] + ["1" if f[4] == "test" else f[2]] + f[3:]) for f in fields])
    for stage in ("pop", "sasrec"):
        assert cf_run(root, root.parent / stage, "--stage", stage) == 2
        assert "the test split holds only likes (" in one_error_line(capsys)


def test_compile_keeps_its_kernels_out_of_the_runs_inputs(root, tmp_path, capsys, monkeypatch, tiny_llm):
    """TORCHINDUCTOR_CACHE_DIR inside the backbone: --compile wrote .so files among its weights (and reads them back)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tiny_llm / "cache"))
    assert train.main(["--stage", "text", "--data-dir", str(root), "--llm", str(tiny_llm), "--compile", "--runs",
                       str(tmp_path), "--max-epochs", "1", "--threads", "1"]) == 2
    kernels = lambda: [p for p in (tiny_llm / "cache").rglob("*") if p.is_file()]  # noqa: E731 (torch may make the dir)
    assert "TORCHINDUCTOR_CACHE_DIR " in one_error_line(capsys) and not kernels()
    assert bench.main(["--ckpt", str(tiny_llm), "--candidates", "--data-dir", str(root), "--steps", "1"]) == 2
    assert "TORCHINDUCTOR_CACHE_DIR " in one_error_line(capsys) and not kernels()  # (bench.py compiles too)


# ---------------------------------------------------------------------------------------------
# a run directory is the run's alone: what --overwrite moves, what --resume continues, who builds on it


def test_overwrite_moves_a_runs_files_only_and_never_a_folder_of_other_files(root, tmp_path, capsys):
    """--out . --overwrite moved a whole repository, .git too, into ./old-*/ (and --out ~ a home)."""
    out = tmp_path / "repo"
    (out / ".git").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me here")
    for extra in ([], ["--overwrite"]):
        assert cf_run(root, out, *extra) == 2
        assert f"{out} holds files no run writes (.git, notes.txt); --out must be a run directory" in one_error_line(capsys)
    assert sorted(os.listdir(out)) == [".git", "notes.txt"]
    assert cf_run(root, tmp_path / "run", "--stop-after", "1") == 0  # a run's own files (and an earlier run's)
    assert cf_run(root, tmp_path / "run", "--overwrite") == 0 and cf_run(root, tmp_path / "run", "--overwrite") == 0


def test_resume_with_no_last_pt_keeps_a_finished_run(root, tmp_path, capsys):
    """A Pop run (no last.pt, ever) resumed as SASRec: its best.pt and metrics.json overwritten, no flag checked."""
    out = tmp_path / "run"
    assert cf_run(root, out, "--stage", "pop") == 0
    before = {f: (out / f).read_bytes() for f in ("best.pt", "metrics.json")}
    for stage in ("sasrec", "pop"):
        assert cf_run(root, out, "--stage", stage, "--resume") == 2
        assert f"--resume: {out} has no last.pt to continue from, but an earlier run's files" in one_error_line(capsys)
    assert all((out / f).read_bytes() == b for f, b in before.items())


def test_resume_refuses_a_best_pt_that_is_not_the_runs_own(root, tmp_path, capsys):
    """Another run's best.pt in a paused run: the resumed run ended by scoring it, its metrics the stranger's."""
    out, other = tmp_path / "run", tmp_path / "other"
    assert cf_run(root, out, "--stop-after", "1") == 0 and cf_run(root, other, "--lr", "0.01") == 0
    shutil.copy(other / "best.pt", out / "best.pt")
    capsys.readouterr()
    assert cf_run(root, out, "--resume") == 2
    assert "its best.pt is not its best epoch 1 (a best.pt of epoch" in one_error_line(capsys)
    assert not (out / "metrics.json").exists()


def test_a_finished_run_that_goes_on_sets_its_metrics_aside(root, tmp_path, capsys):
    """A finished run resumed past its end kept the old metrics.json: eval.py, table.sh and report read it."""
    out = tmp_path / "run"
    assert cf_run(root, out, "--max-steps", "1") == 0  # finished after epoch 1 (max-steps), of 2
    before = (out / "metrics.json").read_bytes()
    assert cf_run(root, out, "--resume", "--stop-after", "2") == 0  # epoch 2, then paused
    [aside] = out.glob("old-*")
    assert (aside / "metrics.json").read_bytes() == before and not (out / "metrics.json").exists()
    capsys.readouterr()
    assert ev.main([str(out)]) == 2 and "metrics.json not found" in one_error_line(capsys)  # unfinished, not stale
    assert cf_run(root, out, "--resume") == 0  # nothing left to train: scored again, metrics of the run it is
    assert len(list(out.glob("old-*"))) == 1 and json.loads((out / "metrics.json").read_text())["best_epoch"] == \
        runs.read_checkpoint(str(out / "best.pt"))["epoch"]


def test_eval_holds_the_run_it_rescores(root, tmp_path, capsys, monkeypatch):
    """A run started over (--overwrite) while eval.py scored the old one: the old run's re-score landed in the new."""
    out = tmp_path / "run"
    assert cf_run(root, out) == 0
    started = []
    score = ev.score_run
    monkeypatch.setattr(ev, "score_run", lambda *a, **k: started.append(cf_run(root, out, "--overwrite")) or score(*a, **k))
    capsys.readouterr()
    assert ev.main([str(out)]) == 0 and started == [2] and "is in use by another run" in capsys.readouterr().err
    assert (out / "rescored.json").exists() and not list(out.glob("old-*")) and not (out / runs.LOCK).exists()


def test_runs_of_other_flags_share_no_row_of_a_table_or_sweep(root, tmp_path, capsys, tiny_llm):
    """report --table averaged seeds of other flags (and a seed1/ trained with --seed 0); a sweep's lr1e-3/
    trained at 0.05, or another stage's, showed as lr 1e-3."""
    table = tmp_path / "table"
    assert cf_run(root, table / "seed0" / "mf") == 0 and cf_run(root, table / "seed1" / "mf", "--seed", "1") == 0
    assert report.main(["--table", str(table)]) in (0, None)  # the same flags but the seed
    assert cf_run(root, table / "seed1" / "mf", "--seed", "1", "--lr", "0.01", "--overwrite") == 0
    capsys.readouterr()
    assert report.main(["--table", str(table)]) == 2
    assert "differ in more than seed, stage: --lr 0.01 (the run has 0.003)" in one_error_line(capsys)
    assert cf_run(root, table / "seed1" / "mf", "--overwrite") == 0  # --seed 0 in seed1/
    assert report.main(["--table", str(table)]) == 2 and "trained with --seed 0, not 1" in one_error_line(capsys)
    assert cf_run(root, table / "seed1" / "mf", "--seed", "1", "--max-steps", "1", "--overwrite") == 0  # a smoke run
    assert report.main(["--table", str(table)]) == 2 and "--max-steps 1 (the run has 0)" in one_error_line(capsys)
    shutil.rmtree(table / "seed1")
    assert cf_run(root, table / "seed0" / "sasrec") == 0  # an MF run in the SASRec row's folder
    assert report.main(["--table", str(table)]) == 2 and "trained with --stage 'mf', not sasrec" in one_error_line(capsys)
    shutil.rmtree(table / "seed0" / "sasrec")
    icl = ["--stage", "icl", "--data-dir", str(root), "--limit", "40", "--threads", "1", "--runs", str(tmp_path)]
    assert train.main([*icl, "--llm", "tiny", "--out", str(table / "seed0" / "icl")]) == 0
    assert train.main([*icl, "--llm", str(tiny_llm), "--out", str(table / "seed1" / "icl"), "--seed", "1"]) == 0
    capsys.readouterr()  # the same flags on another LLM
    assert report.main(["--table", str(table)]) == 2 and "other backbone" in one_error_line(capsys)
    assert cf_run(root, tmp_path / "sweep" / "lr1e-3", "--lr", "0.05", "--stop-after", "1") == 0
    capsys.readouterr()
    assert report.main(["--sweep", str(tmp_path / "sweep")]) == 2
    assert "trained with --lr 0.05, not 0.001" in one_error_line(capsys)


def test_a_data_variable_through_a_link_reads_where_the_shell_does(tmp_path):
    """SASRECLLM_DATA=lnk/.. read the cwd's data (abspath dropped lnk/..), where the shell's lnk/.. is the target's
    parent: another data set, without a word."""
    write_data(tmp_path / "A")
    (tmp_path / "A" / "sub").mkdir()
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "lnk").symlink_to(tmp_path / "A" / "sub", target_is_directory=True)
    write_data(tmp_path / "cwd", tiny_rows()[:-1])  # the cwd's own data root: one row fewer
    out = subprocess.run([sys.executable, "-m", "drivers.datainfo", "ml1m", "--stats"], cwd=tmp_path / "cwd",
                         capture_output=True, text=True, env={**os.environ, "SASRECLLM_DATA": "lnk/..",
                                                              "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and sum(json.loads(out.stdout)["rows"].values()) == len(tiny_rows()), out.stderr


def test_the_fusion_probe_refuses_a_pair_it_would_count_once(root, monkeypatch):
    """eval --fuse keyed rows by (user, item): a split holding a pair twice (GroupLens re-ratings can) lost one."""
    ds = data.load("ml1m", root)
    test = ds.idx("test")
    ds.item[test[1]] = ds.item[test[0]]  # user 1's second test row: the first one's item again
    monkeypatch.setattr(ev.loop, "evaluate", lambda *a, **k: {"test": np.zeros(len(test))})
    run = (train.parse_args(["--stage", "mf", "--out", "R"]), ds, None, lambda: None)
    with pytest.raises(ValueError, match=r"test split holds a \(user, item\) pair twice"):
        ev.row_scores(run, "test")


def test_the_fusion_probe_fits_where_logits_saturate_and_refuses_one_class_or_other_data(root, tmp_path, capsys,
                                                                                         monkeypatch):
    """eval --fuse's 50 plain Newton steps overshot once a logit saturated the sigmoid: weights of -6e7, a fused
    test AUC of 0.46 printed as the fit's (the fit's own: 0.84); a valid overlap of one row, one class, was
    fitted and reported; runs of two data sets were fused (every AUC nan)."""
    assert cf_run(root, tmp_path / "mf") == 0 and cf_run(root, tmp_path / "s1", "--seed", "1") == 0
    shutil.copytree(tmp_path / "mf", tmp_path / "hot")
    ck = runs.read_checkpoint(str(tmp_path / "hot" / "best.pt"))
    ck["model"]["item_bias.weight"].view(-1)[11] = 30.0  # one item's logits far out on the sigmoid
    runs.save_atomic(ck, str(tmp_path / "hot" / "best.pt"))
    capsys.readouterr()
    assert ev.main([str(tmp_path / "hot"), "--fuse", str(tmp_path / "s1")]) == 0
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ")}
    [fused] = [k for k in rows if k.startswith("fused: ")]
    assert all(abs(float(w)) < 1000 for w in re.findall(r"[-+][0-9.]+", fused)), fused
    col = [c.strip() for c in rows["model"]].index("AUC")
    aucs = {k: float(v[col]) for k, v in rows.items() if k != "model"}
    assert aucs[fused] >= min(aucs[f"{tmp_path / 'hot'} alone"], aucs[f"{tmp_path / 's1'} alone"]), aucs
    w = ev.fit_logistic(X := np.array([[1.0, 30.0, 0.2], [1.0, -1.0, 1.5], [1.0, 0.5, -2.0], [1.0, 2.0, 0.1]]),
                        y := np.array([0.0, 1.0, 0.0, 1.0]))
    assert np.abs(X.T @ (ev.sigmoid(X @ w) - y) + 1e-6 * w).max() < 1e-5  # stationary: the penalised optimum
    assert cf_run(root, tmp_path / "lim4", "--limit", "4") == 0 and cf_run(root, tmp_path / "vr6", "--valid-rows", "6") == 0
    capsys.readouterr()
    assert ev.main([str(tmp_path / "lim4"), "--fuse", str(tmp_path / "vr6")]) == 2
    assert "the 1 valid rows both scored are all liked; the probe needs likes and dislikes" in \
        capsys.readouterr().err.splitlines()[-1]
    assert ev.main([str(tmp_path / "mf"), "--fuse", str(tmp_path / "s1"), "--device", "cpu"]) == 0  # (a CUDA run's
    # pair on a CPU: "--device cuda ... use --device cpu" was said, and --device was refused with --fuse)
    shutil.copytree(tmp_path / "s1", tmp_path / "older")  # a run from before made_from held data and domain
    ck = runs.read_checkpoint(str(tmp_path / "older" / "best.pt"))
    ck["made_from"] = {k: v for k, v in ck["made_from"].items() if k not in ("data", "domain", "template")}
    runs.save_atomic(ck, str(tmp_path / "older" / "best.pt"))
    assert ev.main([str(tmp_path / "mf"), "--fuse", str(tmp_path / "older")]) == 0  # (refused as "other data")
    with pytest.raises(ValueError, match="not finite"):  # (a NaN loss was taken for a decrease)
        ev.fit_logistic(np.array([[1.0, np.inf, 0.0], [1.0, 0.0, 1.0]]), np.array([1.0, 0.0]))
    monkeypatch.setattr(ev, "finished_run", None)  # --shuffle-* of a run not joint: refused before it is rebuilt
    for flag in ("--shuffle-cf", "--shuffle-text"):
        assert ev.main([str(tmp_path / "mf"), flag]) == 2
        assert f"{flag} needs a joint run, not a 'mf' run" in capsys.readouterr().err.splitlines()[-1]


def test_a_table_row_is_each_seeds_own_run_and_no_tool_writes_into_a_run(root, tmp_path, capsys):
    """report --table took a metrics.json copied in from another run, and a seed's joint run built on seed 0's
    parts; eval.py --into, --collect and datainfo --export wrote into another run's folder (its figures replaced)."""
    table = tmp_path / "t"
    assert cf_run(root, table / "seed0" / "mf") == 0 and cf_run(root, table / "seed1" / "mf", "--seed", "1") == 0
    pop, mf = tmp_path / "metrics", table / "seed0" / "mf"  # a run named as the file it would replace
    assert cf_run(root, pop, "--stage", "pop") == 0
    before = (mf / "metrics.json").read_bytes()
    capsys.readouterr()
    for main, argv in ((ev.main, [str(pop), "--into", str(mf)]), (report.main, ["--collect", str(pop), "--into", str(mf)]),
                       (datainfo.main, ["ml1m", "--data-dir", str(root), "--export", str(mf / "rows.jsonl")])):
        assert main(argv) == 2 and f"{mf} holds best.pt: a run's" in one_error_line(capsys)
    assert report.main(["--sweep", str(mf)]) == 2 and "sweep.md: its folder" in one_error_line(capsys)
    assert (mf / "metrics.json").read_bytes() == before and sorted(os.listdir(mf)) == sorted(os.listdir(table / "seed1" / "mf"))
    shutil.copy(pop / "metrics.json", table / "seed1" / "mf" / "metrics.json")  # Pop's figures as seed 1's MF
    assert report.main(["--table", str(table)]) == 2 and "its metrics.json is of epoch 0 (valid AUC" in one_error_line(capsys)
    parts = tmp_path / "parts"
    for k in (0, 1):
        for stage in ("sasrec", "text", "joint"):
            (parts / f"seed{k}" / stage).mkdir(parents=True)
            fake_best(parts / f"seed{k}" / stage, cf="sasrec")
        (parts / f"seed{k}" / "text" / "adapter").mkdir()
        (parts / f"seed{k}" / "text" / "adapter" / "adapter_config.json").write_text(str(k))
    for k, own in ((0, 0), (1, 0)):  # seed 1's joint run made from seed 0's SASRec and adapter
        made = dict(cf=runs.files_digest(str(parts / f"seed{own}" / "sasrec" / "best.pt")),
                    adapter=runs.files_digest(str(parts / f"seed{own}" / "text" / "adapter")))
        runs.save_atomic(dict(args=dict(seed=k, stage="joint", cf="sasrec"), made_from=made, model={}),
                         str(parts / f"seed{k}" / "joint" / "best.pt"))
    with pytest.raises(sources.DataError, match=r"seed1/joint: its cf is not .*seed1/sasrec/best.pt"):
        report.table_runs(str(parts), ["sasrec", "text", "joint"])


def test_the_joint_stage_builds_on_finished_runs_only(root, tmp_path, capsys, tiny_llm):
    """A paused SASRec (last.pt, no metrics.json) was taken as the joint stage's CF model without a word."""
    r = tmp_path / "r"
    assert cf_run(root, r / "sasrec", "--stage", "sasrec", "--stop-after", "1") == 0
    capsys.readouterr()
    assert train.main(["--stage", "joint", "--data-dir", str(root), "--llm", str(tiny_llm), "--runs", str(r),
                       "--threads", "1"]) == 2
    assert f"--cf-ckpt {r / 'sasrec' / 'best.pt'}: its run {r / 'sasrec'} has not finished" in one_error_line(capsys)


@pytest.mark.parametrize("argv, words", [
    (["--stage", "all", "--out", "x"], "--stage all writes and reads its stages under --runs"),  # --out was ignored
    (["--stage", "all", "--cf-ckpt", "x.pt"], "--cf-ckpt is for one stage"),  # the joint stage took another SASRec
    (["--stage", "mf", "--out", ""], "--out '': an empty path"),  # "--out $OUT" with OUT unset: runs/mf
    (["--stage", "joint", "--lora", ""], "--lora '': an empty path")])
def test_flags_that_would_be_ignored_or_defaulted_are_refused(argv, words, capsys):
    assert train.main(argv) == 2 and words in one_error_line(capsys)


def test_an_empty_path_or_a_link_spelt_with_a_slash_is_refused_by_every_cli(root, tmp_path, capsys):
    """--into '' re-scored into the run itself; --into LINK/ went through the link (LINK without the slash did not)."""
    for main, argv in ((ev.main, ["R", "--into", ""]), (report.main, ["--collect", "R", "--into", ""]),
                       (walk.main, ["--run", ""]), (datainfo.main, ["ml1m", "--data-dir", ""])):
        with pytest.raises(SystemExit):
            main(argv)
        assert "expected a path, got ''" in capsys.readouterr().err
    assert cf_run(root, tmp_path / "mf") == 0
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    capsys.readouterr()
    for spelt in (f"{tmp_path / 'link'}/", f"{tmp_path / 'link'}/."):
        assert report.main(["--collect", str(tmp_path / "mf"), "--into", spelt]) == 2
        assert "symbolic link" in one_error_line(capsys) and not list((tmp_path / "elsewhere").iterdir())


def test_numerics_cost_writes_through_no_planted_link_and_says_why_it_failed(tmp_path):
    (tmp_path / "victim").write_text("keep me")
    (tmp_path / "nc").mkdir()
    (tmp_path / "nc" / "cost.md").symlink_to(tmp_path / "victim")
    (tmp_path / "nc" / "sasrec-portable-1.log").symlink_to(tmp_path / "victim")  # where its logs were written
    env = {**os.environ, "SASRECLLM_DATA": str(tmp_path / "none"), "REPEATS": "1"}
    out = subprocess.run(["bash", "drivers/numerics_cost.sh", str(tmp_path / "nc")], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "cost.md is a link" in out.stderr and (tmp_path / "victim").read_text() == "keep me"
    (tmp_path / "nc" / "cost.md").unlink()
    out = subprocess.run(["bash", "drivers/numerics_cost.sh", str(tmp_path / "nc")], cwd=ROOT, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "error: the sasrec run (portable) failed" in out.stderr  # (it said nothing)
    assert "not found" in out.stderr and (tmp_path / "victim").read_text() == "keep me"


def test_numerics_cost_runs_the_chain_as_train_py_takes_it(tmp_path):
    """CHAIN=1 gave --stage all an --out, which train.py refuses: the documented command always failed."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text(f'#!/bin/sh\n[ "$1" = -c ] && echo avx2 && exit 0\necho "$@" >> {tmp_path / "calls"}\n')
    (tmp_path / "bin" / "python").chmod(0o755)
    out = subprocess.run(["bash", "drivers/numerics_cost.sh", str(tmp_path / "nc")], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "REPEATS": "1",
                                         "CHAIN": "1"})
    calls = (tmp_path / "calls").read_text().splitlines()
    assert out.returncode == 0 and len(calls) == 4, out.stderr
    assert all(("--out" in c) == ("--stage sasrec" in c) for c in calls), calls


@pytest.mark.parametrize("argv, words", [
    (["--stage", "mf", "--objective", "next"], "--objective: --stage mf does not read it"),  # BCE, no bias init
    (["--stage", "joint", "--dim", "128"], "--dim: --stage joint does not read it"),  # the CF checkpoint's own
    (["--stage", "joint", "--lora-r", "2"], "--lora-r: --stage joint does not read it"),  # the adapter's own
    (["--stage", "sasrec", "--iters-per-epoch", "7"], "--iters-per-epoch: --stage sasrec does not read it"),
    (["--stage", "mf", "--llm", "tiny", "--tokenizer", "t.model"], "--llm: --stage mf does not read it"),
    (["--stage", "text", "--tokenizer", "t.model"], "--tokenizer: --stage text --llm checkpoints/TinyLlama-1.1B"),
    (["--stage", "mf", "--reviews", "r.json"], "--reviews: --stage mf --data ml1m does not read it"),
    (["--stage", "text", "--freeze-cf"], "--freeze-cf: --stage text does not read it"),
    (["--stage", "pop", "--lr", "0.5"], "--lr: --stage pop does not read it"),  # fitted in closed form
    (["--stage", "mc", "--batch-size", "3"], "--batch-size: --stage mc does not read it"),
    (["--stage", "icl", "--wd", "5"], "--wd: --stage icl does not read it"),  # scored once, never trained
    (["--stage", "mf", "--maxlen", "3"], "--maxlen: --stage mf does not read it"),  # no history in MF
    (["--stage", "mf", "--dropout", "0.5"], "--dropout: --stage mf does not read it"),  # MF has no dropout
    (["--stage", "icl", "--iters-per-epoch", "5"], "--iters-per-epoch: --stage icl does not read it"),
    (["--stage", "pop", "--amp", "bf16"], "--amp: --stage pop does not read it"),
    (["--stage", "all", "--objective", "next", "--template", "x"], "argument --template: invalid choice")])
def test_a_flag_the_stage_does_not_read_is_refused(argv, words, capsys):
    """Accepted, recorded in the checkpoint and ignored: --dim 128 --lora-r 2 on a joint run gave the plain run's
    metrics; --objective next on mf trained with BCE but skipped BCE's bias start."""
    with contextlib.suppress(SystemExit):
        assert train.main(argv) == 2
    assert words in capsys.readouterr().err
    for ok in (["--stage", "all", "--dim", "32", "--lora-r", "4", "--llm", "tiny"], ["--stage", "sasrec", "--dim", "32"],
               ["--stage", "icl", "--max-epochs", "6", "--patience", "6"], ["--stage", "gru4rec", "--maxlen", "9"]):
        train.parse_args(ok)  # a flag one of the chain's stages reads


def test_cf_stages_refuse_torchrun_and_lora_flags_stay_in_range(root, monkeypatch, capsys):
    """Under torchrun a CF stage trained every rank on every batch and logged its loss times the ranks;
    --lora-alpha 1e5 trained an adapter that the joint stage then refused."""
    monkeypatch.setattr(train, "rank_world", lambda: (0, 2))
    with pytest.raises(runs.RunError, match="--stage mf under torchrun: a CF stage runs in one process"):
        train.run_cf(train.parse_args(["--stage", "mf", "--data-dir", str(root), "--threads", "1"]))
    with pytest.raises(SystemExit):
        train.parse_args(["--stage", "text", "--lora-alpha", "100000"])
    assert "expected a finite number > 0 and <= 65504" in capsys.readouterr().err


def test_a_sliced_runs_warm_and_seen_rows_are_its_own_train_rows(ml1m):
    """--limit kept the whole data's seen and warm flags: 13 of 100 test rows 'warm' with none really so."""
    s = data.data_slice(ml1m, 100)
    train_rows = s.split == "train"
    count = lambda ids, k: np.bincount(ids[train_rows], minlength=k + 1)
    users, items = count(s.user, s.n_users), count(s.item, s.n_items)
    assert s.warm.tolist() == ((users[s.user] > 3) & (items[s.item] > 3)).tolist()
    assert s.seen.tolist() == ((users[s.user] > 0) & (items[s.item] > 0)).tolist()
    assert s.warm.sum() < ml1m.warm[np.concatenate([ml1m.idx(p)[:100] for p in data.SPLITS])].sum()
    whole = data.data_slice(ml1m, 0, 2000)  # --valid-rows alone keeps every train row: the same flags
    assert whole.warm[whole.split == "test"].tolist() == ml1m.warm[ml1m.split == "test"].tolist()


def test_a_batch_smaller_than_the_ranks_is_left_out_not_a_crash():
    """Under torchrun a length bucket's last batch of fewer rows than ranks left a rank with no row (max() of
    an empty sequence on that rank, a gloo hang-up on the other)."""
    b = data.PromptBatches(None, None, np.arange(5), [[0, 1, 2, 3], [4]], 25, rank=1, world=2)
    assert len(b) == 1 and b.groups == [[0, 1, 2, 3]]
    assert len(data.PromptBatches(None, None, np.arange(5), [[0, 1, 2, 3], [4]], 25)) == 2  # one process: all


def test_each_eval_mode_refuses_the_flags_it_does_not_read(tmp_path, capsys):
    path = tmp_path / "p.tsv"
    path.write_text("user_id\titem_id\tlabel\tscore\n1\t1\t1\t0.9\n1\t2\t0\t0.1\n")
    for argv, words in ((["--preds", str(path), "--scores", "probs", "--repeats", "4"], "--repeats: not read with"),
                        (["--preds", str(path), "--scores", "probs", "--device", "cuda", "--test-only"],
                         "--device, --test-only: not read with --preds"),
                        (["R", "--scores", "probs"], "--scores: not read by this mode"),
                        (["R", "--repeats", "3"], "--repeats: not read by this mode")):
        with pytest.raises(SystemExit):
            ev.main(argv)
        assert words in capsys.readouterr().err


def test_threads_default_to_torchs_own(monkeypatch):
    """--threads defaulted to 2 over OMP_NUM_THREADS (and torchrun's one a rank); walk.py set 2 itself."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert train.parse_args(["--stage", "mf"]).threads == 1
    assert train.parse_args(["--stage", "mf", "--threads", "3"]).threads == 3
    assert "set_num_threads(2)" not in (ROOT / "walk.py").read_text()


def test_drivers_refuse_what_they_would_ignore_and_give_each_row_its_own_flags(tmp_path, capsys):
    """table.sh: ROWS='' trained all nine rows, MF_FLAGS without an mf row was ignored, and CF_FLAGS reached Pop
    (which train.py now refuses); report.py ran one of two modes and ignored --into; walk.py walked a trained
    run's own data whatever --data said; datainfo read ml1m whatever --reviews named."""
    env = {**os.environ, "PYTHON": "true"}  # (no row trains: the commands are what is checked)
    for extra, words in (({"ROWS": ""}, "ROWS is set but empty"), ({"ROWS": "pop", "MF_FLAGS": "--lr 1"},
                         "MF_FLAGS is set, but ROWS (pop) holds none of the rows it is for (mf)"),
                         ({"ROWS": "pop", "LLM_FLAGS": "--compile"}, "LLM_FLAGS is set, but ROWS (pop) holds none"),
                         ({"ROWS": "pop", "SHUFFLE_FLAGS": "--test-only"}, "SHUFFLE_FLAGS is set, but ROWS (pop)"),
                         # (read -ra kept the first line: --max-epochs 1 was dropped, a --seed after it unseen)
                         ({"ROWS": "mf", "CF_FLAGS": "--lr 0.01\n--max-epochs 1 --seed 7"}, "CF_FLAGS holds a newline"),
                         ({"ROWS": "joint", "SHUFFLE_FLAGS": "--test-only\n--bogus"}, "SHUFFLE_FLAGS holds a newline")):
        out = subprocess.run(["bash", "drivers/table.sh", str(tmp_path / "t")], cwd=ROOT, capture_output=True,
                             text=True, env={**env, **extra})
        assert out.returncode == 2 and words in out.stderr, (extra, out.stderr)
    for rows, want in (("pop mf", "--stage pop --data ml1m --seed 0"), ("mf", "--device cpu --dim 32")):
        out = subprocess.run(["bash", "drivers/table.sh", str(tmp_path / rows)], cwd=ROOT, capture_output=True,
                             text=True, env={**env, "ROWS": rows, "CF_FLAGS": "--dim 32"})  # (a row not run stops it)
        first = out.stdout.splitlines()[0]
        assert want in first and first.count("--dim") == (rows == "mf"), out.stdout
    (tmp_path / "ml" / "seed0" / "pop").mkdir(parents=True)  # a finished row; the report's call is written down
    (tmp_path / "ml" / "seed0" / "pop" / "metrics.json").write_text("{}")
    (tmp_path / "py").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n")
    (tmp_path / "py").chmod(0o755)
    out = subprocess.run(["bash", "drivers/table.sh", str(tmp_path / "ml")], cwd=ROOT, capture_output=True, text=True,
                         env={**env, "ROWS": "pop", "DATA": "movielens", "PYTHON": str(tmp_path / "py")})
    assert out.returncode == 0 and "--paper" not in (tmp_path / "calls").read_text(), out.stderr  # ML-1M's figures
    assert (tmp_path / "ml" / "commands.txt").read_text().startswith("DATA=movielens SEEDS=1 ROWS='pop'")
    for argv, words in ((["--check-readme", "R.md", "--collect", "X"], "--collect and --check-readme: one at a time"),
                        (["--readme", "R.md", "--into", "X"], "--into: read by --collect and --plot alone"),
                        (["--table", "T", "--paper", "ML-1M"], "argument --paper: invalid choice")):
        with pytest.raises(SystemExit):
            report.main(argv)
        assert words in capsys.readouterr().err
    (tmp_path / "r" / "joint").mkdir(parents=True)
    (tmp_path / "r" / "joint" / "best.pt").write_text("x")
    for main, argv, words in ((walk.main, ["--runs", str(tmp_path / "r"), "--data", "amazon"], "--data: not read with"),
                              (datainfo.main, ["ml1m", "--reviews", "r.json"], "--reviews and --meta are amazon's")):
        with pytest.raises(SystemExit):
            main(argv)
        assert words in capsys.readouterr().err


def test_a_run_a_budget_cut_short_at_resume_shares_no_row_with_finished_runs(root, tmp_path, capsys):
    """--max-minutes and --max-steps may be given at --resume, and best.pt keeps the flags a run started with: a
    seed stopped by one, a budget its best.pt does not show, was averaged beside seeds that trained to the end."""
    table = tmp_path / "table"
    assert cf_run(root, table / "seed0" / "mf") == 0
    assert cf_run(root, table / "seed1" / "mf", "--seed", "1", "--stop-after", "1") == 0
    assert cf_run(root, table / "seed1" / "mf", "--seed", "1", "--resume", "--max-steps", "1") == 0  # epoch 2 cut
    assert json.loads((table / "seed1" / "mf" / "metrics.json").read_text())["cut_short"] == 1
    capsys.readouterr()
    assert report.main(["--table", str(table)]) == 2
    assert "seed1/mf was cut short by a --max-minutes or --max-steps budget" in one_error_line(capsys)
    assert cf_run(root, table / "seed1" / "mf", "--seed", "1", "--resume", "--max-steps", "1000") == 0  # no epoch left
    assert json.loads((table / "seed1" / "mf" / "metrics.json").read_text())["cut_short"] == 1  # (epoch 2: one step)
    assert report.main(["--table", str(table)]) == 2 and "was cut short by a --max-minutes" in one_error_line(capsys)
    assert cf_run(root, table / "seed1" / "mf", "--seed", "1", "--stop-after", "1", "--overwrite") == 0
    assert cf_run(root, table / "seed1" / "mf", "--seed", "1", "--resume", "--max-minutes", "1e-9") == 0
    assert json.loads((table / "seed1" / "mf" / "metrics.json").read_text())["cut_short"] == 1  # (no epoch 2)
    assert cf_run(root, table / "seed1" / "mf", "--seed", "1", "--resume") == 0  # epoch 2, whole
    assert json.loads((table / "seed1" / "mf" / "metrics.json").read_text())["cut_short"] == 0
    assert report.main(["--table", str(table)]) in (0, None)
    for m in table.glob("seed*/mf/metrics.json"):  # runs older than cut_short: by their log (epoch 1 of 2 run)
        m.write_text(json.dumps({k: v for k, v in json.loads(m.read_text()).items() if k != "cut_short"}))
    (table / "seed1" / "mf" / "log.jsonl").write_text((table / "seed1" / "mf" / "log.jsonl").read_text().splitlines()[0])
    capsys.readouterr()
    assert report.main(["--table", str(table)]) == 2 and "was cut short by a --max-minutes" in one_error_line(capsys)


def test_a_table_takes_no_file_or_run_of_another_run(data_dir, tmp_path, capsys):
    """report --table tied a metrics.json to its run by the best epoch alone (another seed's of the same epoch, or
    a log.jsonl, was averaged in); a seed's adapter replaced by another seed's went unseen; and a joint run's
    directory linked in from another table was checked against that table's CF run (d/.. is the link target's)."""
    t = tmp_path / "t"
    for s in (0, 1):  # (a slice of ML-1M: the toy rows' valid AUC is one value for most models)
        assert cf_run(data_dir, t / f"seed{s}" / "mf", "--seed", str(s), "--limit", "400", "--max-epochs", "1") == 0
    keep = (t / "seed1" / "mf" / "metrics.json").read_bytes()
    shutil.copy(t / "seed0" / "mf" / "metrics.json", t / "seed1" / "mf" / "metrics.json")  # (both best at epoch 1)
    capsys.readouterr()
    assert report.main(["--table", str(t)]) == 2 and "seed1/mf: its metrics.json is of epoch 1 (valid AUC" in \
        one_error_line(capsys)
    (t / "seed1" / "mf" / "metrics.json").write_bytes(keep)
    shutil.copy(t / "seed1" / "mf" / "log.jsonl", t / "seed0" / "mf" / "log.jsonl")  # (seed 0's: the cost row's)
    assert report.main(["--table", str(t)]) == 2 and "seed0/mf: its log.jsonl does not hold its best.pt's epoch" in \
        one_error_line(capsys)
    shutil.rmtree(t)
    common = ["--data", "ml1m", "--data-dir", str(data_dir), "--limit", "200", "--llm", "tiny", "--max-epochs", "1",
              "--iters-per-epoch", "2", "--batch-size", "8", "--threads", "1"]
    for table, lr, seeds in (("t", "0.003", (0, 1)), ("a", "0.01", (0,))):
        for s in seeds:
            seed = tmp_path / table / f"seed{s}"
            assert cf_run(data_dir, seed / "mf", "--seed", str(s), "--lr", lr, "--limit", "200") == 0
            assert train.main(["--stage", "text", *common, "--seed", str(s), "--out", str(seed / "text"),
                               "--runs", str(seed)]) == 0
            assert train.main(["--stage", "joint", "--cf", "mf", *common, "--seed", str(s), "--out", str(seed / "joint"),
                               "--runs", str(seed)]) == 0
    assert report.main(["--table", str(tmp_path / "t")]) in (0, None)
    (tmp_path / "t" / "seed0" / "joint").rename(tmp_path / "joint0")
    (tmp_path / "t" / "seed0" / "joint").symlink_to(tmp_path / "a" / "seed0" / "joint")  # on a's MF run
    capsys.readouterr()
    assert report.main(["--table", str(tmp_path / "t")]) == 2 and "seed0/joint: its cf is not" in one_error_line(capsys)
    (tmp_path / "t" / "seed0" / "joint").unlink()
    (tmp_path / "joint0").rename(tmp_path / "t" / "seed0" / "joint")
    adapter = tmp_path / "t" / "seed1" / "text" / "adapter"
    shutil.rmtree(adapter)
    shutil.copytree(tmp_path / "t" / "seed0" / "text" / "adapter", adapter)  # seed 0's LoRA in seed 1's text run
    assert report.main(["--table", str(tmp_path / "t")]) == 2  # (seed 1's joint run: on seed 1's adapter, unlike it)
    assert "seed1/joint: its adapter is not" in one_error_line(capsys)
    shutil.rmtree(tmp_path / "t" / "seed1" / "joint")  # a joint run trained on the copy: its text run is another's
    assert train.main(["--stage", "joint", "--cf", "mf", *common, "--seed", "1", "--out",
                       str(tmp_path / "t" / "seed1" / "joint"), "--runs", str(tmp_path / "t" / "seed1")]) == 0
    capsys.readouterr()
    assert report.main(["--table", str(tmp_path / "t")]) == 2
    assert "seed1/text/adapter was made by another run" in one_error_line(capsys)


def test_no_tool_writes_inside_a_run_and_a_tables_seed_folders_are_named_so(root, tmp_path, capsys):
    """Only a run's own folder was checked: eval --into RUN/sub wrote inside another run, and --out RUN/old-x
    trained a run among another's set-aside files; --resume --overwrite ignored --overwrite; a table root's seed01/
    or seed-1/ was left out of the table without a word."""
    run = tmp_path / "run"
    assert cf_run(root, run) == 0
    capsys.readouterr()
    assert ev.main([str(run), "--into", str(run / "sub")]) == 2
    assert f"--into {run / 'sub'} is inside {run}, which holds best.pt" in one_error_line(capsys)
    assert cf_run(root, run / "old-inner") == 2 and f"is inside {run}, which holds best.pt" in one_error_line(capsys)
    assert not (run / "sub").exists() and not (run / "old-inner").exists()
    assert cf_run(root, run, "--resume", "--overwrite") == 2 and "give one of them" in one_error_line(capsys)
    table = tmp_path / "t"
    assert cf_run(root, table / "seed0" / "mf") == 0
    for odd in ("seed01", "seed-1", "seed1.0"):
        shutil.copytree(table / "seed0", table / odd)
        capsys.readouterr()
        assert report.main(["--table", str(table)]) == 2 and f"{table / odd}: expected seed<N>" in one_error_line(capsys)
        shutil.rmtree(table / odd)


@pytest.mark.parametrize("edit, words", [({"bias": False}, "adapter uses ['bias']"),
                                         ({"peft_type": None}, "peft_type None; lora.py implements LORA only")])
def test_an_adapter_config_peft_refuses_is_refused(tiny_llm, tmp_path, edit, words):
    """bias false and a config with no peft_type loaded as plain LoRA here; peft refuses both."""
    lora.save_adapter(lora.inject(llama.load_model(tiny_llm)), tmp_path / "a")
    cfg = {k: v for k, v in json.loads((tmp_path / "a" / "adapter_config.json").read_text()).items() if k not in edit}
    cfg.update({k: v for k, v in edit.items() if v is not None})
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=words.replace("[", r"\[")):
        lora.load_adapter(llama.load_model(tiny_llm), tmp_path / "a")


def test_a_run_rescored_otherwise_or_of_an_undefined_auc_is_still_its_own(tmp_path, data_dir, capsys):
    """The tie of metrics.json to best.pt compared the re-scored valid AUC with training's: a bf16 run resumed with
    another --eval-batch-size (allowed) differs in the last digits, and was refused as a copy; a log's NaN AUC (an
    undefined best epoch, read back as NaN, not null) was refused too."""
    flags = ["--stage", "text", "--data-dir", str(data_dir), "--limit", "200", "--llm", "tiny", "--runs",
             str(tmp_path), "--amp", "bf16", "--dtype", "bfloat16", "--max-epochs", "2", "--iters-per-epoch", "2",
             "--batch-size", "8", "--threads", "1", "--out", str(tmp_path / "text")]
    assert train.main([*flags, "--stop-after", "2"]) == 0  # both epochs scored in batches of 32, and paused
    assert train.main([*flags, "--resume", "--eval-batch-size", "1"]) == 0  # no epoch left: best.pt re-scored
    m = tables.read_metrics(tmp_path / "text")
    assert m["valid"]["auc"] != m["best_valid_auc"]  # (bf16: re-scored in batches of 1, other last digits)
    assert m["best_valid_auc"] == runs.peek_args(str(tmp_path / "text" / "best.pt"), None)["best_valid_auc"]
    log = [json.loads(line) for line in (tmp_path / "text" / "log.jsonl").read_text().splitlines()]
    ck = runs.read_checkpoint(str(tmp_path / "text" / "best.pt"))
    for h in log:
        h["valid"]["auc"] = float("nan")
    (tmp_path / "text" / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in log))
    meta = runs.peek_args(str(tmp_path / "text" / "best.pt"), None)
    runs.save_atomic(dict(meta, best_valid_auc=float("nan"), model=ck["model"]), str(tmp_path / "text" / "best.pt"))
    assert len(tables.read_log(tmp_path / "text")) == 2


@pytest.mark.parametrize("home", ["", "rel"])
def test_an_empty_or_relative_home_keeps_compiled_kernels_in_the_temp_folder(home):
    """HOME="" made the portable kernel cache /.cache/... (Python reads it as "/"), a relative HOME the cwd's."""
    code = "from tools import runs; print(runs.PORTABLE['TORCHINDUCTOR_CACHE_DIR'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HOME": home})
    want = os.path.join(tempfile.gettempdir(), ".cache", "sasrecllm", "torchinductor-avx2")
    assert out.stdout.strip() == want, out.stderr


def test_a_path_flag_is_utf8_expanded_and_of_bounded_depth(root, tmp_path, capsys, monkeypatch):
    """One parser for every path flag: a path 300 folders deep overflowed os.makedirs' recursion (a traceback); a
    name that is not UTF-8 failed at the first checkpoint, after the epoch; "--out=~/x" (no shell to expand it)
    made a folder named "~" in the cwd. The same for eval's --into; text flags and --device '' alike."""
    deep = str(tmp_path / ("a/" * 300))
    assert cf_run(root, deep) == 2 and "more than 256 folders deep" in one_error_line(capsys)
    assert not (tmp_path / "a").exists()
    bad = str(tmp_path / "bad") + "\udcff"  # (the byte 0xff, as Python hands a name that is not UTF-8 to us)
    assert cf_run(root, bad) == 2 and "a path that is not UTF-8" in one_error_line(capsys)
    assert os.listdir(tmp_path) == ["data"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert cf_run(root, "~/x") == 0 and (tmp_path / "home" / "x" / "best.pt").exists()
    assert not (tmp_path / "~").exists()
    for argv, words in (([str(tmp_path / "home" / "x"), "--into", deep], "more than 256 folders deep"),
                        ([str(tmp_path / "home" / "x"), "--device", ""], "expected cpu, cuda or cuda:N"),
                        ([str(tmp_path / "home" / "x"), "--into", bad], "a path that is not UTF-8")):
        with pytest.raises(SystemExit) as e:
            ev.main(argv)
        assert e.value.code == 2 and words in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        decode.main([str(tmp_path), "--prompt", "Yes \udcff"])  # (sentencepiece raised a RuntimeError on it)
    assert e.value.code == 2 and "not UTF-8 text" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        bench.main(["--device", ""])
    assert e.value.code == 2 and "expected cpu, cuda or cuda:N" in capsys.readouterr().err


def test_memory_checks_count_the_epochs_step_lists_the_bench_and_ulimit(tmp_path, data_dir):
    """A text stage of 1,000,000 steps of 500 rows passed its check (1 KiB a step counted; each step's list holds
    its 500 ints, ~18 GB) and died of MemoryError; the bench allocated 8 GB for --pad-multiple 4096 unchecked; and
    the memory free ignored `ulimit -v`. Each is now one error line before the allocation."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, resource.RLIM_INFINITY)); "
            "sys.argv[0] = {0!r}; sys.path.insert(0, {1!r}); import runpy; runpy.run_path({0!r}, run_name='__main__')")
    for script, flags in (("train.py", ["--stage", "text", "--llm", "tiny", "--limit", "2000", "--data-dir",
                                        str(data_dir), "--runs", str(tmp_path), "--batch-size", "500",
                                        "--iters-per-epoch", "1000000", "--threads", "1"]),
                          ("drivers/bench.py", ["--no-hf", "--steps", "1", "--train-batch", "4096", "--pad-multiple",
                                                "4096"])):
        out = subprocess.run([sys.executable, "-c", code.format(str(ROOT / script), str(ROOT)), *flags], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and out.stderr.splitlines()[-1].startswith("error: ") and \
            "GiB available" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
