"""The loop (loop.py) and the CF recipes (train.py): checkpoints, determinism, resume, the NaN stop,
the schedule, the defaults, and a small end-to-end run."""
import json
import dataclasses
import math
import os
import numpy as np
import pytest
import torch

import data
import loop
import train
from sasrecllm import SASRec
from torch.optim.optimizer import register_optimizer_step_post_hook
from tools import runs

torch.set_num_threads(1)
SECTIONS = ("valid", "test", "test_seen", "test_unseen", "test_warm", "test_cold")
KEYS = ("auc", "uauc", "uauc_users", "logloss", "precision", "recall", "f1", "accuracy", "n")


def run(ml1m, out, *extra):
    args = train.parse_args(["--out", str(out), "--limit", "1500", "--threads", "1", *extra])
    report = train.run_cf(args, ds=ml1m)  # (NaN as None, so that reports compare: test_warm's few rows have no UAUC)
    return report and json.loads(json.dumps(report), parse_constant=lambda _: None)


def test_mf_end_to_end_writes_well_formed_files(data_dir, tmp_path):
    out = tmp_path / "mf"
    rc = train.main(["--stage", "mf", "--data", "ml1m", "--data-dir", str(data_dir), "--out", str(out),
                     "--limit", "1500", "--max-epochs", "3", "--threads", "1"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for s in SECTIONS:
        assert set(KEYS) <= set(m[s]), s
        assert 0.0 <= m[s]["auc"] <= 1.0 and m[s]["n"] > 0
    assert m["valid"]["n"] == 1500 and m["test"]["n"] == 1500
    assert m["test_seen"]["n"] + m["test_unseen"]["n"] == m["test"]["n"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert {"train_loss", "valid", "lr", "seconds", "samples_per_s"} <= set(log[0])
    ck = runs.read_checkpoint(str(out / "best.pt"))
    assert ck["args"]["stage"] == "mf" and ck["best_valid_auc"] == max(r["valid"]["auc"] for r in log)
    assert not any(p.endswith(".tmp") for p in os.listdir(out))


def test_same_seed_same_metrics(ml1m, tmp_path):
    a = run(ml1m, tmp_path / "a", "--stage", "sasrec", "--max-epochs", "2")
    b = run(ml1m, tmp_path / "b", "--stage", "sasrec", "--max-epochs", "2")
    assert a == b
    c = run(ml1m, tmp_path / "c", "--stage", "sasrec", "--max-epochs", "2", "--seed", "1")
    assert c["valid"]["auc"] != a["valid"]["auc"]


def test_resume_continues_the_same_curve(ml1m, tmp_path):
    straight = run(ml1m, tmp_path / "straight", "--stage", "sasrec", "--max-epochs", "2")
    assert run(ml1m, tmp_path / "split", "--stage", "sasrec", "--max-epochs", "2", "--stop-after", "1") is None
    resumed = run(ml1m, tmp_path / "split", "--stage", "sasrec", "--max-epochs", "2", "--resume")
    assert resumed == straight
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]


def test_pause_stops_before_an_epoch_that_would_not_end_in_time(ml1m, tmp_path):
    """--pause-minutes: epoch 1 took longer than the time left, so the run stops resumably after it
    (last.pt, no metrics.json), and --resume without it finishes the same curve as a straight run."""
    straight = run(ml1m, tmp_path / "straight", "--stage", "sasrec", "--max-epochs", "3")
    assert run(ml1m, tmp_path / "p", "--stage", "sasrec", "--max-epochs", "3", "--pause-minutes", "1e-6") is None
    assert (tmp_path / "p" / "last.pt").exists() and not (tmp_path / "p" / "metrics.json").exists()
    assert run(ml1m, tmp_path / "p", "--stage", "sasrec", "--max-epochs", "3", "--resume") == straight
    # a pause that falls after the last epoch does not stop the run short of its metrics
    assert run(ml1m, tmp_path / "q", "--stage", "sasrec", "--max-epochs", "1", "--pause-minutes", "1e-6") == \
        run(ml1m, tmp_path / "r", "--stage", "sasrec", "--max-epochs", "1")


def test_next_item_objective_and_closed_form_stages_run(ml1m, tmp_path):
    m = run(ml1m, tmp_path / "next", "--stage", "sasrec", "--objective", "next", "--max-epochs", "1")
    assert 0.0 <= m["test"]["auc"] <= 1.0
    for stage in ("pop", "mc"):
        m = run(ml1m, tmp_path / stage, "--stage", stage)
        assert set(SECTIONS) <= set(m) and (tmp_path / stage / "best.pt").exists()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_runs_and_keeps_parameters_fp32(ml1m, tmp_path, amp):
    m = run(ml1m, tmp_path / amp, "--stage", "gru4rec", "--max-epochs", "1", "--amp", amp)
    assert math.isfinite(m["test"]["auc"])
    ck = runs.read_checkpoint(str(tmp_path / amp / "best.pt"))
    assert all(t.dtype == torch.float32 for t in ck["model"].values())


def test_checkpoint_round_trip_gives_identical_scores(tmp_path, toy_rows):
    torch.manual_seed(0)
    rows = toy_rows()
    model = SASRec(n_items=30, n_users=10, dim=16, n_heads=2, maxlen=8).eval()
    path = str(tmp_path / "ck.pt")
    runs.save_atomic(dict(args={}, model=loop.trainable_state(model)), path)
    torch.manual_seed(1)
    other = SASRec(n_items=30, n_users=10, dim=16, n_heads=2, maxlen=8).eval()
    loop.load_trainable(other, runs.read_checkpoint(str(path))["model"], path)
    with torch.no_grad():
        assert torch.equal(model(rows["user"], rows["hist"], rows["item"]),
                           other(rows["user"], rows["hist"], rows["item"]))
    state = loop.trainable_state(model)
    state.pop("ln_f.bias")
    with pytest.raises(runs.RunError, match="ck.pt: does not fit this model: missing .'ln_f.bias'"):
        loop.load_trainable(other, state, path)


def test_bias_init_starts_from_pop(ml1m):
    from baselines import MF, Pop
    rows = ml1m.idx("train")
    model = MF(ml1m.n_users, ml1m.n_items, dim=4)
    torch.nn.init.zeros_(model.user_emb.weight)
    train.init_biases(model, ml1m, rows)
    pop = Pop(ml1m.n_users, ml1m.n_items)
    pop.fit(*(torch.from_numpy(a[rows]) for a in (ml1m.user, ml1m.item, ml1m.label)))
    u, i = torch.from_numpy(ml1m.user[:50]), torch.from_numpy(ml1m.item[:50])
    torch.testing.assert_close(model(u, None, i), pop(u, None, i))


def test_frozen_parameters_stay_out_of_checkpoints():
    model = SASRec(n_items=30, dim=16, n_heads=2, maxlen=8)
    model.item_emb.weight.requires_grad_(False)
    assert "item_emb.weight" not in loop.trainable_state(model)


def test_nan_loss_stops_the_run(tmp_path, toy_rows):
    model = SASRec(n_items=30, n_users=10, dim=16, n_heads=2, maxlen=8)
    t = toy_rows()
    batch = data.Batch({k: t[k] for k in ("user", "hist", "item")}, t["label"], len(t["label"]))
    cfg = train.Run(stage="sasrec", out=str(tmp_path), lr=1e-3, max_epochs=2, patience=2, warmup_epochs=0)
    with pytest.raises(FloatingPointError, match="loss is nan"):
        loop.train(cfg, {}, model, lambda epoch: [batch], lambda m, b: m(**b.inputs).sum() * np.nan,
                   predict=None, ds=None)


def test_lr_schedule_warms_up_then_decays_to_zero():
    f = loop.lr_lambda(warmup_steps=4, total_steps=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(12) == pytest.approx(0.5) and f(20) == pytest.approx(0.0)


def test_max_epochs_default_is_the_papers_except_on_the_tiny_backbone():
    def max_epochs(*argv):
        return train.parse_args(list(argv)).max_epochs
    assert max_epochs("--stage", "sasrec") == train.STAGE_DEFAULTS["sasrec"]["max_epochs"] == 300
    assert max_epochs("--stage", "joint", "--llm", "some/dir") == 300
    assert max_epochs("--stage", "joint", "--llm", "tiny") == train.MAX_EPOCHS_TINY == 10
    assert max_epochs("--stage", "text", "--llm", "tiny", "--max-epochs", "3") == 3
    chain = train.parse_args(["--stage", "all", "--llm", "tiny"])
    assert chain.max_epochs is None  # filled per stage by run_all
    assert dataclasses.replace(chain, stage="sasrec").max_epochs == 300
    assert dataclasses.replace(chain, stage="text").max_epochs == 10


# Metrics that the code before the loop/recipe restructure (commit ce3d51b) printed for the same
# command: SASRec's numerics must not change (seeds, batch order, RNG use). The LLM stages are
# pinned bit for bit by test_golden.py (their tiny backbone's tokenizer changed since).
BEFORE_RESTRUCTURE = {"valid": (0.5307900085821401, 0.44004255769183775, 0.7761491398264704),
                      "test": (0.5509120787941456, 0.4738019769429071, 0.7576528241852196)}


def test_sasrec_metrics_as_before_the_restructure(data_dir, tmp_path, monkeypatch):
    # measured with that checkout's defaults: SASRec's weight decay was 10 (now 30, chosen on validation)
    monkeypatch.setitem(train.STAGE_DEFAULTS, "sasrec", dict(train.STAGE_DEFAULTS["sasrec"], wd=10.0))
    assert train.main(["--stage", "sasrec", "--limit", "1500", "--max-epochs", "2", "--out", str(tmp_path / "sasrec"),
                       "--data", "ml1m", "--data-dir", str(data_dir), "--threads", "1"]) == 0
    m = json.loads((tmp_path / "sasrec" / "metrics.json").read_text())
    for part, values in BEFORE_RESTRUCTURE.items():
        assert tuple(m[part][k] for k in ("auc", "uauc", "logloss")) == pytest.approx(values, abs=1e-6), part


def test_fp16_overflow_skips_that_step_lowers_the_scale_and_training_goes_on(ml1m, tmp_path, monkeypatch):
    """The paper's mixed precision: fp16 autocast with a GradScaler. One forced overflow (an inf
    gradient at the third step) must make the scaler skip exactly that optimizer step and halve its
    scale; the run then trains on and finishes."""
    steps, taken = [], []
    build = train.build_cf

    def build_with_overflow(a, ds):
        model = build(a, ds)

        def poison(grad):  # called once per backward, scaled gradient in hand
            steps.append(len(steps) + 1)
            return torch.full_like(grad, float("inf")) if len(steps) == 3 else grad
        model.item_emb.weight.register_hook(poison)
        return model
    monkeypatch.setattr(train, "build_cf", build_with_overflow)
    handle = register_optimizer_step_post_hook(lambda opt, *a: taken.append(len(steps)))
    try:
        report = run(ml1m, tmp_path / "fp16", "--stage", "sasrec", "--amp", "fp16", "--max-epochs", "2",
                     "--batch-size", "256")
    finally:
        handle.remove()
    assert len(steps) >= 6 and 3 not in taken and taken == [s for s in steps if s != 3]
    ck = runs.read_checkpoint(str(tmp_path / "fp16" / "last.pt"))
    assert ck["args"]["amp"] == "fp16"
    assert ck["scaler"]["scale"] == 2.0 ** 16 / 2  # GradScaler's start, halved once (no growth in < 2000 steps)
    assert math.isfinite(report["test"]["logloss"]) and 0 < report["test"]["auc"] < 1


def test_amp_defaults_to_fp16_on_cuda_and_none_on_cpu():
    assert train.parse_args(["--stage", "sasrec"]).amp == "none"
    assert train.parse_args(["--stage", "sasrec", "--device", "cuda"]).amp == "fp16"
    assert train.parse_args(["--stage", "text", "--device", "cuda:1", "--amp", "bf16"]).amp == "bf16"
    assert train.parse_args(["--stage", "text", "--device", "cuda", "--amp", "none"]).amp == "none"


@pytest.mark.parametrize("amx, avx512_bf16, want", [(True, True, ("bfloat16", "bf16")), (False, True, ("bfloat16", "bf16")),
                                                    (False, False, ("float32", "none"))])
def test_a_real_llm_on_cpu_runs_in_bf16_only_where_the_cpu_has_it(monkeypatch, amx, avx512_bf16, want):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")  # (the suite's portable cap, tested in test_sasrecllm.py)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    real = train.parse_args(["--stage", "text", "--llm", "some/dir"])
    assert (real.dtype, real.amp) == want
    for argv in (["--stage", "text", "--llm", "tiny"], ["--stage", "sasrec"]):  # fp32 there, by measurement
        a = train.parse_args(argv)
        assert (a.dtype, a.amp) == ("float32", "none")
    asked = train.parse_args(["--stage", "text", "--llm", "some/dir", "--dtype", "float32"])
    assert (asked.dtype, asked.amp) == ("float32", "none")


@pytest.mark.parametrize("argv, want", [
    (["--stage", "text", "--llm", "d"], True), (["--stage", "joint", "--llm", "d", "--max-epochs", "1"], True),
    (["--stage", "text", "--llm", "d", "--max-steps", "20"], False),  # ~50 s of compiling: no gain in 20 steps
    (["--stage", "text", "--llm", "d", "--iters-per-epoch", "0"], False),  # steps unknown before the data
    (["--stage", "text", "--llm", "d", "--no-compile"], False), (["--stage", "text", "--llm", "tiny"], False),
    (["--stage", "text", "--llm", "tiny", "--compile"], True), (["--stage", "icl", "--llm", "d"], False),
    (["--stage", "text", "--llm", "d", "--device", "cuda"], False), (["--stage", "sasrec"], False)])
def test_compile_is_the_default_where_it_measured_faster(argv, want):
    """A real LLM's text or joint stage of >= 100 steps on a CPU compiles its decoder layers unless told not to."""
    assert train.parse_args(argv).compile is want
    assert [a.compile for a in (dataclasses.replace(train.parse_args(["--stage", "all", "--llm", "d"]), stage=s)
                                for s in ("sasrec", "text", "joint"))] == [False, True, True]


def test_compiled_layers_train_as_the_eager_ones(data_dir, tmp_path):
    """--compile (torch.compile of every decoder layer, beside the eager Block.forward) on a short
    tiny text stage (one training step, then the scoring, compiled again with dynamic shapes): the
    same loss and metrics as eager, to float rounding (about 30 s of compiling)."""
    common = ["--stage", "text", "--data", "ml1m", "--data-dir", str(data_dir), "--llm", "tiny", "--runs", str(tmp_path),
              "--limit", "32", "--max-epochs", "1", "--iters-per-epoch", "1", "--batch-size", "8", "--pad-multiple", "16",
              "--threads", str(torch.get_num_threads())]  # (the worker's share of the cores under pytest -n)
    threads = torch.get_num_threads()
    try:
        assert train.main([*common, "--out", str(tmp_path / "eager")]) == 0
        assert train.main([*common, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    finally:
        torch.set_num_threads(threads)
    eager, compiled = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("eager", "compiled"))
    losses = [json.loads((tmp_path / d / "log.jsonl").read_text().splitlines()[-1])["train_loss"] for d in ("eager", "compiled")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-3)
    for part in ("valid", "test"):
        assert compiled[part]["logloss"] == pytest.approx(eager[part]["logloss"], abs=1e-3), part
        assert compiled[part]["auc"] == pytest.approx(eager[part]["auc"], abs=2e-3), part
