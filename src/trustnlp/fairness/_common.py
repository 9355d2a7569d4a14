"""Small shared helpers of the fairness package: array checks, option checks, correlations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustnlp.errors import ConfigError, DataError, expected

__all__ = ["Correlation", "check_choice", "check_positive_int", "correlation", "float_matrix", "finite_or_none"]


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else :class:`ConfigError` in the house phrasing."""
    if value not in choices:
        raise ConfigError(expected(name, f"one of {list(choices)}", value))
    return value


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(expected(name, f"an integer >= {minimum}", value))
    return int(value)


def float_matrix(name: str, x: Any, *, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 matrix ``[n, d]`` with at least ``min_rows`` rows."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(f"Expected `{name}` to be a 2-D array [n, dim], but got an array of shape {arr.shape}.")
    if arr.shape[0] < min_rows:
        raise DataError(f"Expected `{name}` to have at least {min_rows} row(s), but got {arr.shape[0]}.")
    if not np.isfinite(arr).all():
        raise DataError(f"Expected `{name}` to be finite, but it holds NaN or infinite values.")
    return arr


def finite_or_none(x: float) -> float | None:
    """``float(x)`` or ``None`` when it is not finite (callers record the reason)."""
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of two paired samples, with two-sided p-values.

    ``None`` (with ``reason``) when undefined: fewer than 3 pairs or a constant sample.
    """

    n: int
    pearson: float | None
    pearson_p: float | None
    spearman: float | None
    spearman_p: float | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "pearson": self.pearson,
            "pearson_p": self.pearson_p,
            "spearman": self.spearman,
            "spearman_p": self.spearman_p,
            "reason": self.reason,
        }


def correlation(x: Any, y: Any, *, names: tuple[str, str] = ("x", "y")) -> Correlation:
    """Pearson's r and Spearman's rho of ``x`` and ``y`` (scipy), flagged undefined when constant."""
    from scipy import stats

    a, b = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise DataError(f"Expected `{names[0]}` and `{names[1]}` to have the same length, but got {a.size} and {b.size}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError(f"Expected `{names[0]}` and `{names[1]}` to be finite.")
    n = int(a.size)
    if n < 3:
        return Correlation(n, None, None, None, None, reason=f"correlation needs >= 3 pairs, got {n}")
    for name, v in zip(names, (a, b)):
        if np.ptp(v) == 0:
            return Correlation(n, None, None, None, None, reason=f"`{name}` is constant: correlation undefined")
    pr = stats.pearsonr(a, b)
    sr = stats.spearmanr(a, b)
    return Correlation(n, float(pr.statistic), float(pr.pvalue), float(sr.statistic), float(sr.pvalue))
