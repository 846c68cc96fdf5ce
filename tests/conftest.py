from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps a process-wide singleton; each test builds its own Accelerator."""
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.cache/genrl; share one cache across the session's tests."""
    if "GENRL_CACHE" not in os.environ or os.environ.get("GENRL_TEST_PRIVATE_CACHE"):
        root = tmp_path_factory.getbasetemp() / "genrl_cache"
        monkeypatch.setenv("GENRL_CACHE", str(root))
