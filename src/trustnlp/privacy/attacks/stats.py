"""Exact (Clopper-Pearson) confidence intervals for a binomial proportion.

For ``k`` successes in ``n`` trials, the two-sided interval at confidence ``1 - a`` is

    lo = B(a/2; k, n - k + 1)          (0 when k = 0)
    hi = B(1 - a/2; k + 1, n - k)      (1 when k = n)

with ``B(p; a, b)`` the ``p``-quantile of the Beta(a, b) distribution (Clopper & Pearson 1934). It
inverts two one-sided binomial tests, ``P[Bin(n, lo) >= k] = a/2`` and ``P[Bin(n, hi) <= k] = a/2``,
so each end is a one-sided bound at confidence ``1 - a/2`` and the interval covers the true
proportion with probability at least ``1 - a`` for every proportion (it is conservative).

Example:
    >>> lo, hi = clopper_pearson(5, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.0164, 0.1128)
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from trustnlp.errors import DataError, expected
from trustnlp.privacy.attacks._checks import check_confidence, check_count

__all__ = ["clopper_pearson", "clopper_pearson_arrays"]


def clopper_pearson(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval ``(lo, hi)`` for ``successes`` out of ``trials``.

    Args:
        successes: the number of successes ``k`` (0 <= k <= n).
        trials: the number of trials ``n`` (>= 1).
        confidence: the two-sided confidence level ``1 - a``.

    Returns:
        ``(lo, hi)``; each end alone is a one-sided bound at confidence ``1 - a/2``.
    """
    n = check_count(trials, "trials", minimum=1)
    k = check_count(successes, "successes", maximum=n, maximum_name="trials")
    lo, hi = clopper_pearson_arrays(np.array([k]), np.array([n]), confidence=confidence)
    return float(lo[0]), float(hi[0])


def clopper_pearson_arrays(successes: np.ndarray, trials: np.ndarray, *,
                           confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`clopper_pearson` over integer arrays of equal shape (float64 ``lo``, ``hi``)."""
    conf = check_confidence(confidence)
    k = np.asarray(successes)
    n = np.asarray(trials)
    if not (np.issubdtype(k.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
        raise DataError(expected("successes and trials", "integer arrays", f"dtypes {k.dtype} and {n.dtype}"))
    if k.shape != n.shape:
        raise DataError(expected("successes", f"the shape of `trials` {n.shape}", f"shape {k.shape}"))
    if (n < 1).any() or (k < 0).any() or (k > n).any():
        raise DataError(expected("successes and trials", "0 <= successes <= trials and trials >= 1",
                                 "counts outside that range"))
    a = 1.0 - conf
    kf = k.astype(np.float64)
    nf = n.astype(np.float64)
    lo = np.zeros(k.shape, dtype=np.float64)
    hi = np.ones(k.shape, dtype=np.float64)
    some, not_all = k > 0, k < n
    lo[some] = stats.beta.ppf(a / 2, kf[some], nf[some] - kf[some] + 1)
    hi[not_all] = stats.beta.ppf(1 - a / 2, kf[not_all] + 1, nf[not_all] - kf[not_all])
    return lo, hi
