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

from drivers import bench

torch.set_num_threads(1)  # one thread: robust on a shared 2-core machine
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def impls():
    """Ours, HF+peft, HF+peft last on the same tiny fp32 weights, on CPU."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    return bench.build(bench.TINY, torch.float32, torch.device("cpu"))


def batch(lens, pad_multiple=16, seed=0):
    """One batch of random ids at the given prompt lengths."""
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, 1000, (n,), generator=g).tolist() for n in lens]
    [(idx, ids, mask)] = bench.bucketed(seqs, len(lens), pad_multiple, seed=seed)
    return ids, mask, torch.randint(0, 2, (len(lens),), generator=g).float()[idx]


def test_turn_orders():
    for i in range(6):
        assert bench.turn(3, "ours-first", i) == [0, 1, 2]
        assert bench.turn(3, "hf-first", i) == [1, 2, 0]
        assert sorted(bench.turn(3, "alternate", i)) == [0, 1, 2]  # every impl runs every batch
    assert [bench.turn(3, "alternate", i)[0] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert bench.turn(1, "hf-first", 0) == [0]  # --no-hf
    assert bench.turn(4, "hf-first", 0, n_ours=2) == [2, 3, 0, 1]  # --compile: two of ours go last
    assert bench.turn(4, "alternate", 5, n_ours=2) == [1, 2, 3, 0]


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside torch.compile
def test_compiled_variant_scores_as_eager():
    """--compile's implementation: compiled layers on a copy of the same weights and LoRA init, the same
    scores; the warm pass absorbs its compilation, and its ratio to eager is reported. Two batches of one
    width, so the layers compile once (a new width compiles again: test_train's --compile test meets those)."""
    eager, compiled = bench.build(bench.TINY, torch.float32, torch.device("cpu"), with_hf=False, variants=("compiled",))
    assert (eager.name, compiled.name) == ("llama.py+lora.py", "llama.py+lora.py compiled")
    for (k, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        assert torch.equal(a, b), k
    data = [batch([5, 7]), batch([12, 9], seed=1)]
    warm_s, passes = bench.run_phase([eager, compiled], "score", data, torch.device("cpu"), False, ("hf-first",))
    with torch.no_grad():
        for ids, mask, _ in data:
            torch.testing.assert_close(compiled.yes_no(ids, mask), eager.yes_no(ids, mask), atol=1e-5, rtol=1e-5)
    assert set(bench.ratios(passes["hf-first"])) == {"compiled_vs_eager"}
    assert warm_s[1] > passes["hf-first"][1].elapsed  # compiling happened in the warm pass


def test_sdpa_math_variant_scores_as_eager(impls):
    eager = impls[0]
    math = bench.Ours(eager.model, eager.answers, "sdpa math")
    ids, mask, _ = batch([5, 9, 12])
    with torch.no_grad():
        eager.model.eval()
        torch.testing.assert_close(math.yes_no(ids, mask), eager.yes_no(ids, mask), atol=1e-5, rtol=1e-5)
    meters = [bench.Meter(impl, "score", None) for impl in (eager, math, impls[1])]
    for m, rate in zip(meters, (2, 3, 1)):
        m.tokens, m.elapsed = rate, 1.0
    assert bench.ratios(meters) == {"vs_hf_peft": 2.0, "sdpa_math_vs_hf_peft": 3.0, "sdpa_math_vs_eager": 1.5}


def test_batches_are_left_padded_to_a_multiple():
    exact = bench.random_batches(4, 8, 1000, seed=1, pad_multiple=1)
    rounded = bench.random_batches(4, 8, 1000, seed=1, pad_multiple=16)
    for (ids1, mask1, y1), (ids16, mask16, y16) in zip(exact, rounded):
        assert ids16.shape[1] % 16 == 0 and ids16.shape[1] - ids1.shape[1] < 16
        assert (mask16[:, -1] == 1).all()                           # every prompt ends at the right
        assert (mask16.diff(dim=1) >= 0).all()                      # 0...0 1...1: padding on the left
        assert (ids16[mask16 == 0] == 0).all()
        assert torch.equal(ids16[mask16 == 1], ids1[mask1 == 1])    # the same prompts, only wider
        assert torch.equal(y1, y16) and len(y16) == 8


def test_shape_stats():
    lengths = [[3, 5], [17, 20], [18, 18]]                          # widths 5, 20, 18 -> 16, 32, 32
    assert bench.shape_stats(lengths, 1) == {"shapes": 3, "pad_frac": round(1 - 81 / 86, 4)}
    assert bench.shape_stats(lengths, 16) == {"shapes": 2, "pad_frac": round(1 - 81 / 160, 4)}


def test_padding_to_16_keeps_every_score(impls):
    ids, mask, _ = batch([5, 9, 12, 1], pad_multiple=1)                    # width 12
    wide_ids, wide_mask, _ = batch([5, 9, 12, 1], pad_multiple=16)         # width 16, the same prompts
    assert wide_ids.shape == (4, 16) and torch.equal(wide_ids[:, 4:], ids)
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
    data = [batch(lens) for lens in ([5, 7], [20, 18], [33, 40])]
    widths = [ids.shape[1] for ids, _, _ in data]
    assert widths == [16, 32, 48]
    orders = ("ours-first", "hf-first", "alternate")
    warm_s, passes = bench.run_phase(impls, "train", data, torch.device("cpu"), False, orders)

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
    out = subprocess.run([sys.executable, "-m", "drivers.bench", "--check", "--device", "cpu", "--shape", "tiny",
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

    # the loop: train.py's text stage at the bench's batch sizes, its last epoch timed against the bench step
    figures = ("loop_train_samples_per_s", "loop_train_tokens_per_s", "loop_vs_bench_train",
               "loop_vs_bench_train_tokens", "loop_valid_prompts_per_s", "loop_valid_tokens_per_s", "wall_s")
    assert all(math.isfinite(r[k]) and r[k] > 0 for k in figures), {k: r[k] for k in figures}
    loop, ours = r["loop"], r["train"]["llama.py+lora.py"]
    assert (loop["iters_per_epoch"], loop["limit"]) == (4, 64)
    assert r["loop_vs_bench_train"] == pytest.approx(r["loop_train_samples_per_s"] / ours["samples_per_s"], rel=1e-2)
    assert r["loop_vs_bench_train_tokens"] == pytest.approx(r["loop_train_tokens_per_s"] / ours["tokens_per_s"], rel=1e-2)
    assert r["loop_train_tokens_per_s"] == pytest.approx(r["loop_train_samples_per_s"] * loop["mean_prompt_tokens"], rel=5e-3)
    assert r["loop_valid_tokens_per_s"] > r["loop_valid_prompts_per_s"]  # prompts of many tokens
    assert 0 <= loop["timed_epoch"]["new_shapes"] <= loop["timed_epoch"]["shapes"]
    assert r["wall_s"] >= loop["wall_s"]


def run_ckpt(tiny_dir, data_dir, *flags):
    out = subprocess.run([sys.executable, "-m", "drivers.bench", "--ckpt", str(tiny_dir), "--steps", "1", "--train-batch",
                          "1", "--score-batch", "1", "--threads", "1", *flags], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "SASRECLLM_DATA": str(data_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")], out.stdout


def test_ckpt_mode_prints_every_precision_mode_on_real_prompts(tiny_dir, data_dir):
    """--ckpt on a real-layout checkpoint (the tiny backbone here, ours only): one JSON line per
    mode, tokens/s and the share of the measured matmul peak per phase (bf16's, or fp32's on a CPU
    where bf16 is emulated and slower: no mode can beat the faster plain matmul), then the table."""
    lines, stdout = run_ckpt(tiny_dir, data_dir, "--no-hf")
    assert [line["mode"] for line in lines] == list(bench.MODES)
    figures = [line[phase]["llama.py+lora.py"] for line in lines for phase in ("train", "score")]
    assert all(f["tokens_per_s"] > 0 and 0 < f["pct_peak"] < 100 for f in figures)
    table = [line for line in stdout.splitlines() if line.startswith("| llama.py+lora.py |")]
    assert len(table) == len(bench.MODES)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_candidates_time_our_variants_against_eager(tiny_dir, data_dir):
    """--candidates: bf16 only, our variants beside eager on the same batches, then a profile."""
    lines, stdout = run_ckpt(tiny_dir, data_dir, "--candidates")
    [line] = lines
    assert line["mode"] == "bf16 weights, bf16 autocast"
    assert list(line["train"]) == ["llama.py+lora.py", "llama.py+lora.py sdpa math", "llama.py+lora.py compiled"]
    assert set(line["ratios"]["score"]["alternate"]) == {"sdpa_math_vs_eager", "compiled_vs_eager"}
    assert "Self CPU" in stdout  # the profile's table
