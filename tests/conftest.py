"""Shared test set-up: offline mode, and the real data sets in ``../shared/data``.

Real-data tests take the ``shared_data`` fixture (or call :func:`require_shared`) and are marked
``@pytest.mark.shared``. Without ``../shared/data`` they skip, unless ``REQUIRE_SHARED=1``, in
which case they fail (CI sets it so a missing data folder cannot pass silently).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
_MISSING = "../shared/data not found: real-data tests need the shared data sets"


def _missing(reason: str) -> None:
    if os.environ.get("REQUIRE_SHARED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def require_shared(name: str | None = None) -> Path:
    """``../shared/data`` (or its sub-folder ``name``); skips the test when absent (fails with REQUIRE_SHARED=1)."""
    if not SHARED_DATA.is_dir():
        _missing(_MISSING)
    if name is None:
        return SHARED_DATA
    path = SHARED_DATA / name
    if not path.exists():
        _missing(f"../shared/data/{name} not found: this test needs the shared data set `{name}`")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data`` (relative to the repository root)."""
    return require_shared()


@pytest.fixture
def float64_default():
    """Run the test with float64 as torch's default dtype (exact identities at rtol 1e-10)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


CLI_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def run_cli():
    """Run ``trustnlp ARGS...`` as a user does: a separate process, offline; returns the completed process."""
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "trustnlp.cli", *args], capture_output=True, text=True,
                              env=CLI_ENV, timeout=600)

    return run
