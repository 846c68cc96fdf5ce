from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import ROOT, reset_accelerate, train_end_to_end

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps a process-wide singleton; each test builds its own Accelerator."""
    yield
    reset_accelerate()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/genrl; share one cache across the session's tests."""
    if "GENRL_CACHE" not in os.environ or os.environ.get("GENRL_TEST_PRIVATE_CACHE"):
        root = tmp_path_factory.getbasetemp() / "genrl_cache"
        monkeypatch.setenv("GENRL_CACHE", str(root))


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory):
    """The quick start, run once per test session (as on a fresh machine: it builds its own models)."""
    work = tmp_path_factory.mktemp("quickstart")
    cache = os.environ.get("GENRL_CACHE") or str(tmp_path_factory.getbasetemp() / "genrl_cache")
    return train_end_to_end(ROOT / "recipes/quickstart.yaml", work, cache)
