"""Shared fixtures for the attribshield test suite.

Tiers: the default run is fast CPU tests on tiny models; ``@pytest.mark.slow`` marks heavier
ones (real CIFAR-10 subsets, trained models); ``@pytest.mark.cuda`` tests are skipped when
CUDA is not available (as skorch does).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ATTRIBSHIELD_SHARED_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("ATTRIBSHIELD_CACHE", REPO / ".cache"))

# Tiny models run fastest single-threaded; on a shared 2-core machine two threads per test
# process thrash (measured 30x slower under load). Benchmarks choose their own thread counts.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="CUDA is not available on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global seeds."""
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """Root folder holding ``cifar-10-batches-py/`` (torchvision's layout), built once from the
    lossless copy in ``../shared/data`` with its ``materialize.py`` and cached in ``.cache/``."""
    script = SHARED_DATA / "materialize.py"
    if not script.exists():
        pytest.skip(f"real CIFAR-10 copy not found at {SHARED_DATA} (set ATTRIBSHIELD_SHARED_DATA)")
    root = CACHE / "cifar10"
    if not (root / "cifar-10-batches-py" / "test_batch").exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True)
    return root
