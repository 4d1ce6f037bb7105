"""Same seed, same bits: a short tiny chain (SASRec for 2 epochs, then 3 steps of the text stage
and 3 of the joint stage, 120 rows per split, one thread) pinned exactly, with float.hex and a
SHA-256 of the trained tensors, not with a tolerance. Any change to the numerics fails here; the
commit that makes one refreshes GOLDEN (run this file with
GOLDEN_PRINT=1 to see the new values) and re-runs the commands whose figures it moves
(results/README.md names them)."""
import hashlib
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT
from tools import runs

# One set of bits for x86-64: the suite runs with portable numerics (tools/runs.PORTABLE, set by conftest.py),
# one AVX2 kernel path on every x86-64 CPU. Seen equal on an AMD EPYC with avx512_bf16 and on an AMD EPYC
# with AVX2 only; without portable numerics, each CPU kind gave its own bits (results/README.md).
GOLDEN = {
    "sasrec": ["0x1.bf12080000000p-2", "0x1.ac34d643e8fc3p-2", "0x1.165ed097b425fp-1", "0x1.7be536cba29bcp-1",
               "eb2545753feed1c8"],
    "text": ["0x1.2548e4aaaaaabp+0", "0x1.0fcd6e9e06523p-1", "0x1.07684bda12f68p-1", "0x1.2ba76166064fap+0",
             "87534071bed6c168"],
    "joint": ["0x1.dc7ce20000000p-1", "0x1.1212508d54af6p-1", "0x1.e97b425ed097bp-2", "0x1.e3713d22db206p-1",
              "dd27ab46f0377711"],
}
STAGES = ("sasrec", "text", "joint")


def fingerprint(run_dir):
    """(last train loss, valid AUC, test AUC, test LogLoss) as float.hex, and a digest of best.pt's tensors."""
    log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    state = runs.read_checkpoint(os.path.join(run_dir, "best.pt"))["model"]
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    floats = [log[-1]["train_loss"], m["valid"]["auc"], m["test"]["auc"], m["test"]["logloss"]]
    return [float(x).hex() for x in floats] + [h.hexdigest()[:16]]


def test_a_short_tiny_chain_repeats_bit_for_bit(data_dir, tmp_path):
    threads = torch.get_num_threads()
    common = ["--data", "ml1m", "--data-dir", str(data_dir), "--runs", str(tmp_path), "--limit", "120", "--threads", "1"]
    llm = ["--llm", "tiny", "--max-epochs", "1", "--iters-per-epoch", "3", "--batch-size", "8", "--eval-batch-size", "32"]
    try:
        assert train.main(["--stage", "sasrec", *common, "--max-epochs", "2"]) == 0
        assert train.main(["--stage", "text", *common, *llm]) == 0
        assert train.main(["--stage", "joint", *common, *llm]) == 0
    finally:
        torch.set_num_threads(threads)
    got = {stage: fingerprint(tmp_path / stage) for stage in STAGES}
    logs = {s: json.loads(open(tmp_path / s / "log.jsonl").readline()) for s in STAGES}
    assert "tokens_per_s" not in logs["sasrec"]  # prompts only: tokens per sample within the prompts' lengths
    assert all(30 < logs[s]["tokens_per_s"] / logs[s]["samples_per_s"] < 300 for s in ("text", "joint")), logs
    if os.environ.get("GOLDEN_PRINT"):
        print(json.dumps(got, indent=4))
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"golden bits are pinned for x86-64, not {platform.machine()}")
    assert torch.backends.cpu.get_cpu_capability() == "AVX2", "portable numerics are off in this process"
    assert got == GOLDEN


def test_portable_numerics_are_chosen_before_torch_s_first_op(tmp_path):
    """The place that works: train.main turns them on before any op, and says so in its first line; a
    process that ran an op first has its kernels chosen, and the line says they are not portable (on a CPU
    wider than AVX2: on an AVX2-only one torch's own choice is the AVX2 path, and the line says portable)."""
    from test_faults import write_data
    root = write_data(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k not in runs.PORTABLE}
    native = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    run = ["import sys; sys.path.insert(0, {root!r}); import train; "
           "train.main(['--stage', 'pop', '--data-dir', {data!r}, '--out', {out!r}])"]
    portable, not_portable = "numerics: portable (one AVX2 kernel path", "numerics: NOT portable"
    for first_op, extra, want in (("", {}, portable),
                                  ("import torch; torch.ones(2).sum(); ", {}, portable if native == "AVX2" else not_portable),
                                  ("", dict(ATEN_CPU_CAPABILITY="default"), not_portable)):  # the caller's own choice
        code = first_op + run[0].format(root=str(ROOT), data=str(root), out=str(tmp_path / f"pop{len(first_op)}{len(extra)}"))
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             check=True).stdout
        assert out.splitlines()[0].startswith(want), out
