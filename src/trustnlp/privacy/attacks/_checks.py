"""Input validation shared by the attack and audit maths (house phrasing from :mod:`trustnlp.errors`)."""

from __future__ import annotations

import math
from typing import TypeGuard

import numpy as np

from trustnlp.errors import ConfigError, DataError, expected


def is_number(x: object) -> TypeGuard[float]:
    """A real number (bool excluded); numpy scalars included."""
    return not isinstance(x, bool) and isinstance(x, int | float | np.floating | np.integer)


def check_confidence(x: object, name: str = "confidence") -> float:
    if not is_number(x) or not 0 < x < 1:
        raise ConfigError(expected(name, "in (0, 1)", x))
    return float(x)


def check_delta(x: object, name: str = "delta") -> float:
    """delta in [0, 1): 0 is allowed (pure DP)."""
    if not is_number(x) or not 0 <= x < 1:
        raise ConfigError(expected(name, "in [0, 1)", x))
    return float(x)


def check_rate(x: object, name: str) -> float:
    """A rate in (0, 1]."""
    if not is_number(x) or not 0 < x <= 1:
        raise ConfigError(expected(name, "in (0, 1]", x))
    return float(x)


def check_int(x: object, name: str, minimum: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < minimum:
        raise ConfigError(expected(name, f"an int >= {minimum}", x))
    return int(x)


def check_count(x: object, name: str, *, minimum: int = 0, maximum: int | None = None,
                maximum_name: str | None = None) -> int:
    """A data count (an int in ``[minimum, maximum]``); a bad count is bad data, so a DataError."""
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < minimum:
        raise DataError(expected(name, f"an int >= {minimum}", x))
    if maximum is not None and x > maximum:
        raise DataError(expected(name, f"<= `{maximum_name}` ({maximum})", int(x)))
    return int(x)


def as_scores(x: object, name: str, *, ndim: int = 1, allow_empty: bool = False) -> np.ndarray:
    """A float64 array of finite values with ``ndim`` dimensions (a copy)."""
    try:
        arr = np.array(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(expected(name, f"a {ndim}-D array of finite numbers", type(x).__name__)) from None
    if arr.ndim != ndim:
        raise DataError(expected(name, f"a {ndim}-D array of finite numbers", f"an array of shape {arr.shape}"))
    if arr.size == 0 and not allow_empty:
        raise DataError(expected(name, f"a non-empty {ndim}-D array", f"an array of shape {arr.shape}"))
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = first[0] if len(first) == 1 else first
        raise DataError(expected(name, "finite everywhere", f"{arr[bad][0]} at index {where}"))
    return arr


def as_mask(x: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean array of the given shape (bool dtype, or 0/1 integers)."""
    arr = np.asarray(x)
    if arr.shape != shape:
        raise DataError(expected(name, f"a boolean array of shape {shape}", f"an array of shape {arr.shape}"))
    if arr.dtype == np.bool_:
        return arr.copy()
    if np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    raise DataError(expected(name, "boolean (or 0/1 integers)", f"an array of dtype {arr.dtype}"))


def frozen(arr: np.ndarray) -> np.ndarray:
    """``arr`` made read-only (result objects are immutable)."""
    arr.setflags(write=False)
    return arr


def json_float(x: float) -> float | None:
    """A float, or None when it is not finite (strict JSON has no NaN or infinity)."""
    x = float(x)
    return x if math.isfinite(x) else None
