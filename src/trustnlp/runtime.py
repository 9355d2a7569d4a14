"""Process-level settings for fast CPU training.

glibc's ``malloc`` hands large blocks (tensors of megabytes) to ``mmap`` and returns the top of the
heap to the system as soon as enough of it is free. A training step that allocates and frees tens
of megabytes of activations, output gradients and noise then page-faults the same memory back in
at every step: on the 2-core benchmark machine DP-SGD on the bag-of-embeddings model took ~12,000
minor page faults (~10 ms) per logical step, more than the non-private step itself.
:func:`tune_allocator` raises the ``mmap`` threshold and the trim threshold to 1 GiB,
so freed blocks stay in the heap and are reused; the price is that the process keeps its
high-water mark of memory instead of returning it between steps.

:func:`trustnlp.train.fit` calls it for every run, private or not (so comparisons are fair), and
``benchmarks/dp_overhead.py`` for every mode. Set ``TRUSTNLP_TUNE_MALLOC=0`` to leave the
allocator alone. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator", "allocator_settings"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # tensors up to 1 GiB come from the heap (glibc >= 2.26 accepts it)
TRIM_THRESHOLD = 1 << 30

_state: dict[str, object] = {"tuned": False}


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process (see the module docstring); idempotent.

    Returns:
        Whether the allocator is tuned (False off glibc or with ``TRUSTNLP_TUNE_MALLOC=0``).
    """
    if _state["tuned"]:
        return True
    if os.environ.get("TRUSTNLP_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state["tuned"] = ok
    return ok


def allocator_settings() -> dict[str, object]:
    """What :func:`tune_allocator` did, for a results file."""
    if not _state["tuned"]:
        return {"tuned": False}
    return {"tuned": True, "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
