"""Shared pytest fixtures: where the read-only shared data and the real tokenizer live.

The data root comes from SASRECLLM_DATA (set by .ci/run), else ../shared/data beside the checkout.
Tests that need the real files skip with a reason when they are absent.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA_DIR = Path(os.environ.get("SASRECLLM_DATA", ROOT.parent / "shared" / "data"))
TOKENIZER = Path(os.environ.get("SASRECLLM_TOKENIZER",
                                ROOT.parent / "shared" / "models" / "llama2-tokenizer" / "tokenizer.model"))


@pytest.fixture(scope="session")
def data_dir():
    if not (DATA_DIR / "ml1m" / "interactions.tsv").exists():
        pytest.skip(f"shared ML-1M split not found under {DATA_DIR} (set SASRECLLM_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def tokenizer_path():
    if not TOKENIZER.exists():
        pytest.skip(f"real Llama-2 tokenizer not found at {TOKENIZER} (set SASRECLLM_TOKENIZER)")
    return TOKENIZER
