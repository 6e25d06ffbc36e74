"""Shared test fixtures. Everything is built in-process and offline."""

from __future__ import annotations

import json
import lzma
import os
from pathlib import Path

import pytest

from mobilebert_paddle.core.device import use_avx2_mkl_on_amd

# As the CLI does: in-process tests then run the same MKL kernels as the CLI subprocesses they
# are compared with bit for bit (on AMD processors; a no-op elsewhere).
use_avx2_mkl_on_amd()

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (read-only public data); tests using it skip when absent.
SHARED_DATA = Path(os.environ.get("MOBILEBERT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# Shipped with the repository (tests/data/README.md: what they are and their licences).
FIXTURES = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def bert_vocab_file(tmp_path_factory) -> Path:
    """BERT's uncased WordPiece vocabulary (30,522 pieces), as a plain vocab.txt."""
    path = tmp_path_factory.mktemp("bert-vocab") / "bert-base-uncased-vocab.txt"
    path.write_bytes(lzma.decompress((FIXTURES / "bert-base-uncased-vocab.txt.xz").read_bytes()))
    return path


@pytest.fixture(scope="session")
def squad_articles() -> list[dict]:
    """The SQuAD v1.1 dev articles, paragraphs' contexts only: 48 articles of Wikipedia text."""
    return json.loads(lzma.decompress((FIXTURES / "squad-dev-v1.1-contexts.json.xz").read_bytes()))["data"]
