from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, reset_accelerate

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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENRL_CACHE": cache}
    run = work / "run"
    proc = subprocess.run([sys.executable, "-m", "genrl.cli", "train", str(ROOT / "recipes/quickstart.yaml"),
                           "--run-dir", str(run), "logging.progress=false"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    before = json.loads((run / "eval" / "before.json").read_text())
    after = json.loads((run / "eval" / "after.json").read_text())
    return run, before, after, proc.stdout
