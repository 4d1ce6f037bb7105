"""bench.py: the mechanism that makes its ratios independent of the order, not its speed.

A GPU pays a one-time cost the first time any implementation meets a batch shape, so bench.py
warms every implementation on every batch before timing and rotates who goes first. These tests
check that schedule (by recording every call), the padding to a multiple of 16 (left, and without
changing a score), and that `--check` (the bench, then train.py's loop on real ML-1M prompts)
prints one JSON line whose figures add up. No test asserts a speed.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools import bench

torch.set_num_threads(1)  # one thread: robust on a shared 2-core machine
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def impls():
    """Ours, HF+peft, HF+peft last on the same tiny fp32 weights, on CPU."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    return bench.build(bench.TINY, torch.float32, torch.device("cpu"))


def test_turn_orders():
    for i in range(6):
        assert bench.turn(3, "ours-first", i) == [0, 1, 2]
        assert bench.turn(3, "hf-first", i) == [1, 2, 0]
        assert sorted(bench.turn(3, "alternate", i)) == [0, 1, 2]  # every impl runs every batch
    assert [bench.turn(3, "alternate", i)[0] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert bench.turn(1, "hf-first", 0) == [0]  # --no-hf
    assert bench.turn(4, "hf-first", 0, n_ours=2) == [2, 3, 0, 1]  # --compile: two of ours go last


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside torch.compile
def test_compiled_candidate_scores_as_eager_on_the_same_weights():
    """--compile's implementation: compiled layers, the same weight tensors and LoRA init, the same
    scores; the warm pass absorbs its compilation, and its ratio to eager is reported (about 30 s of
    compiling on CPU)."""
    eager, compiled = bench.build(bench.TINY, torch.float32, torch.device("cpu"), with_hf=False, compile=True)
    assert (eager.name, compiled.name) == ("llama.py+lora.py", "llama.py+lora.py compiled")
    assert compiled.model.lm_head.weight.data_ptr() == eager.model.lm_head.weight.data_ptr()  # shared, not copied
    g = torch.Generator().manual_seed(0)
    data = [bench.make_batch(lens, 1000, g, pad_multiple=16) for lens in ([5, 7], [20, 18])]
    cfg = eager.model.cfg
    warm_s, passes = bench.run_phase([eager, compiled], "score", data, cfg, torch.device("cpu"), False, ("hf-first",))
    with torch.no_grad():
        for ids, mask, _ in data:
            torch.testing.assert_close(compiled.yes_no(ids, mask), eager.yes_no(ids, mask), atol=1e-5, rtol=1e-5)
    assert set(bench.ratios(passes["hf-first"])) == {"compiled_vs_eager"}
    assert warm_s[1] > passes["hf-first"][1].elapsed  # compiling happened in the warm pass


def test_batches_are_left_padded_to_a_multiple():
    exact = bench.batches(4, 8, 1000, seed=1, pad_multiple=1)
    rounded = bench.batches(4, 8, 1000, seed=1, pad_multiple=16)
    for (ids1, mask1, y1), (ids16, mask16, y16) in zip(exact, rounded):
        assert ids16.shape[1] % 16 == 0 and ids16.shape[1] - ids1.shape[1] < 16
        assert (mask16[:, -1] == 1).all()                           # every prompt ends at the right
        assert (mask16.diff(dim=1) >= 0).all()                      # 0...0 1...1: padding on the left
        assert (ids16[mask16 == 0] == 0).all()
        assert torch.equal(ids16[mask16 == 1], ids1[mask1 == 1])    # the same prompts, only wider
        assert torch.equal(y1, y16)


def test_shape_stats():
    lengths = [[3, 5], [17, 20], [18, 18]]                          # widths 5, 20, 18 -> 16, 32, 32
    assert bench.shape_stats(lengths, 1) == {"shapes": 3, "pad_frac": round(1 - 81 / 86, 4)}
    assert bench.shape_stats(lengths, 16) == {"shapes": 2, "pad_frac": round(1 - 81 / 160, 4)}


def test_padding_to_16_keeps_every_score(impls):
    g = torch.Generator().manual_seed(0)
    ids, mask, _ = bench.make_batch([5, 9, 12, 1], 1000, g, pad_multiple=1)   # width 12
    wide_ids, wide_mask = bench.left_pad(ids, mask, 16)                        # width 16
    assert wide_ids.shape == (4, 16)
    with torch.no_grad():
        for impl in impls:
            impl.model.eval()  # LoRA dropout off
            torch.testing.assert_close(impl.yes_no(wide_ids, wide_mask), impl.yes_no(ids, mask),
                                       atol=1e-5, rtol=0)
        # the same weights, a fresh (zero) LoRA: both implementations agree
        torch.testing.assert_close(impls[1].yes_no(ids, mask), impls[0].yes_no(ids, mask),
                                   atol=1e-4, rtol=1e-4)


def test_warm_pass_meets_every_shape_before_any_timing(impls, monkeypatch):
    calls = []  # (impl name, batch width), in the order they ran
    for impl in impls:
        def recorded(ids, mask, impl=impl, inner=impl.yes_no):
            calls.append((impl.name, ids.shape[1]))
            return inner(ids, mask)
        monkeypatch.setattr(impl, "yes_no", recorded)
    g = torch.Generator().manual_seed(0)
    data = [bench.make_batch(lens, 1000, g, pad_multiple=16) for lens in ([5, 7], [20, 18], [33, 40])]
    widths = [ids.shape[1] for ids, _, _ in data]
    assert widths == [16, 32, 48]
    orders = ("ours-first", "hf-first", "alternate")
    cfg = impls[0].model.cfg
    warm_s, passes = bench.run_phase(impls, "train", data, cfg, torch.device("cpu"), False, orders)

    names = [impl.name for impl in impls]
    n_warm = len(impls) * len(data)
    assert sorted(calls[:n_warm]) == sorted((n, w) for n in names for w in widths)  # every (impl, shape)
    timed = calls[n_warm:]
    expected = [(names[j], widths[i]) for order in orders
                for i in range(len(data)) for j in bench.turn(len(impls), order, i)]
    assert timed == expected
    assert len(warm_s) == len(impls) and all(s > 0 for s in warm_s)
    tokens = sum(int(mask.sum()) for _, mask, _ in data)
    for order in orders:  # under every order, each implementation is timed on the same tokens
        assert [(m.impl.name, m.steps, m.tokens) for m in passes[order]] == [(n, 3, tokens) for n in names]
        assert all(set(r) == {"vs_hf_peft", "vs_hf_peft_last"} for r in [bench.ratios(passes[order])])


def test_check_prints_one_json_line(data_dir, tokenizer_path):
    """The GPU check's own command on CPU (the tiny shape, CHECK's CPU sizes: 2 epochs of 4
    iterations, 64 rows per split), about 10 s on one thread."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    out = subprocess.run([sys.executable, "-m", "tools.bench", "--check", "--device", "cpu", "--shape", "tiny",
                          "--threads", "1", "--tokenizer", str(tokenizer_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "SASRECLLM_DATA": str(data_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # the loop's progress lines went to stderr
    r = json.loads(lines[0])
    assert (r["bench"], r["device"], r["dtype"], r["shape"], r["pad_multiple"]) == ("check", "cpu", "fp32", "tiny", 16)
    names = ["llama.py+lora.py", "hf+peft", "hf+peft last"]
    for phase in ("train", "score"):
        assert list(r[phase]) == names
        assert all(r[phase][n]["tokens_per_s"] > 0 for n in names)
        assert set(r["ratios"][phase]) == {"alternate", "ours-first", "hf-first"}
        assert all(v > 0 for rs in r["ratios"][phase].values() for v in rs.values())
        assert set(r["padding"][phase]) == {"pad_multiple_1", "pad_multiple_16"}
        assert r["shapes"][phase] == r["padding"][phase]["pad_multiple_16"]["shapes"] >= 1
    assert "warm pass" in r["method"]

    # the loop: train.py's text stage at the bench's batch sizes, its last epoch and its test pass timed
    figures = ("loop_train_samples_per_s", "loop_train_tokens_per_s", "bench_train_samples_per_s",
               "bench_train_tokens_per_s", "loop_vs_bench_train", "loop_vs_bench_train_tokens",
               "eval_seconds", "eval_prompts", "eval_prompts_per_s", "eval_tokens_per_s", "wall_s")
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in figures), {k: r[k] for k in figures}
    loop = r["loop"]
    assert loop["batch"] == {"train": r["batch"]["train"], "eval": r["batch"]["score"]}
    assert (loop["epochs"], loop["iters_per_epoch"], loop["limit"]) == (2, 4, 64)
    assert r["bench_train_samples_per_s"] == r["train"]["llama.py+lora.py"]["samples_per_s"]
    assert r["bench_train_tokens_per_s"] == r["train"]["llama.py+lora.py"]["tokens_per_s"]
    assert r["loop_vs_bench_train"] == pytest.approx(r["loop_train_samples_per_s"] / r["bench_train_samples_per_s"], abs=6e-4)
    assert r["loop_vs_bench_train_tokens"] == pytest.approx(r["loop_train_tokens_per_s"] / r["bench_train_tokens_per_s"], abs=6e-4)
    assert r["loop_train_tokens_per_s"] == pytest.approx(r["loop_train_samples_per_s"] * loop["mean_prompt_tokens"], rel=1e-3)
    assert (r["eval_split"], r["eval_prompts"]) == ("test", 64)  # all of the test split that --limit leaves
    assert r["eval_prompts_per_s"] == pytest.approx(r["eval_prompts"] / r["eval_seconds"], abs=0.06)
    # after each epoch a valid pass, then loop.finish's valid and test passes; the last is the one reported
    assert [(e["split"], e["prompts"]) for e in loop["evals"]] == [("valid", 64)] * 3 + [("test", 64)]
    assert loop["evals"][-1]["seconds"] == pytest.approx(r["eval_seconds"], abs=6e-4)
    assert 0 <= loop["timed_epoch"]["new_shapes"] <= loop["timed_epoch"]["shapes"]
    assert r["wall_s"] >= loop["wall_s"]


def test_ckpt_mode_prints_every_precision_mode_on_real_prompts(tiny_dir, data_dir):
    """--ckpt on a real-layout checkpoint (the tiny backbone here, ours only): one JSON line per
    (mode, phase), tokens/s and the share of the measured bf16 peak, then the table."""
    out = subprocess.run([sys.executable, "-m", "tools.bench", "--ckpt", str(tiny_dir), "--no-hf", "--steps", "1",
                          "--train-batch", "2", "--score-batch", "2", "--threads", "1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "SASRECLLM_DATA": str(data_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {(r["mode"], r["phase"]) for r in rows} == {(m, p) for m in bench.MODES for p in ("train", "score")}
    assert all(r["tokens_per_s"] > 0 and 0 < r["pct_bf16_peak"] < 100 for r in rows)
    table = [line for line in out.stdout.splitlines() if line.startswith("| llama.py+lora.py |")]
    assert len(table) == len(bench.MODES)
