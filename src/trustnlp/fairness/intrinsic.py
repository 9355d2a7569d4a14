"""Intrinsic bias of representations: WEAT (Caliskan et al. 2017) and SEAT (May et al. 2019).

WEAT measures the differential association of two target sets ``X``, ``Y`` (e.g. male and female
names) with two attribute sets ``A``, ``B`` (e.g. career and family words) in an embedding space.
With ``cos`` the cosine similarity,

    s(w, A, B)  = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b)
    effect size d = (mean_{x in X} s(x, A, B) - mean_{y in Y} s(y, A, B)) / std_{w in X u Y} s(w, A, B)

with the sample standard deviation (``ddof=1``, as in the reference implementations of May et al.
and Guo & Caliskan). The one-sided permutation p-value is the share of the partitions
``(X_i, Y_i)`` of ``X u Y`` into sets of sizes ``|X|`` and ``|Y|`` whose test statistic
``s(X_i, Y_i, A, B) = sum_{x in X_i} s(x, A, B) - sum_{y in Y_i} s(y, A, B)`` is strictly greater
than the observed one. All partitions are enumerated when there are at most ``n_samples`` of them
(``p_value_method="exact"``); otherwise ``n_samples`` random partitions are drawn from a seeded
generator (``"sampled"``) and ``p = (b + 1) / (n_samples + 1)`` with ``b`` the number of draws
whose statistic is greater (Phipson & Smyth 2010: the observed partition counts as a draw, so a
sampled p-value is never 0 and the test keeps its level; resolution ``1 / (n_samples + 1)``).
The statistic is a monotone function of ``sum_{x in X_i} s(x, A, B)``, so unequal set sizes are
handled the same way.

SEAT is WEAT over sentence embeddings: every word is put into semantically bleached templates
("This is an aster.") and the sentences are encoded (see
:mod:`trustnlp.fairness.association_tests` and :mod:`trustnlp.fairness.encoders`). These
functions only see arrays: any encoder, pooling or representation can feed them.

Example:
    >>> X = [[1.0, 0.0], [0.6, 0.8]]; Y = [[0.0, 1.0], [0.8, 0.6]]
    >>> r = weat(X, Y, [[1.0, 0.0]], [[0.0, 1.0]], test="toy")
    >>> round(r.effect_size, 4), r.p_value, r.p_value_method
    (0.9608, 0.16666666666666666, 'exact')
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trustnlp.errors import DataError
from trustnlp.fairness._common import check_positive_int, float_matrix

__all__ = [
    "DEFAULT_PERMUTATIONS",
    "WEATResult",
    "association",
    "cosine_similarity",
    "permutation_p_value",
    "weat",
    "weat_effect_size",
]

DEFAULT_PERMUTATIONS = 100_000
"""Partitions enumerated (when at most this many exist) or sampled for the WEAT p-value
(the threshold and sample size of May et al.'s sent-bias)."""
_CHUNK = 4096


def _unit_rows(name: str, x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise DataError(f"Expected every embedding in `{name}` to be non-zero (cosine is undefined), but row(s) "
                        f"{zero[:10].tolist()} are zero.")
    return x / norms[:, None]


def cosine_similarity(U: Any, V: Any) -> np.ndarray:
    """Cosine similarities ``[len(U), len(V)]`` of the rows of ``U`` and ``V`` (float64)."""
    u, v = float_matrix("U", U), float_matrix("V", V)
    if u.shape[1] != v.shape[1]:
        raise DataError(f"Expected embeddings of the same dimension, but got {u.shape[1]} and {v.shape[1]}.")
    return _unit_rows("U", u) @ _unit_rows("V", v).T


def association(W: Any, A: Any, B: Any) -> np.ndarray:
    """``s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)`` for every row ``w`` of ``W``."""
    w, a, b = (float_matrix(n, m) for n, m in (("W", W), ("A", A), ("B", B)))
    return cosine_similarity(w, a).mean(axis=1) - cosine_similarity(w, b).mean(axis=1)


def _check_sets(X: Any, Y: Any, A: Any, B: Any) -> tuple[np.ndarray, ...]:
    x, y = float_matrix("X", X, min_rows=2), float_matrix("Y", Y, min_rows=2)
    a, b = float_matrix("A", A), float_matrix("B", B)
    dims = {m.shape[1] for m in (x, y, a, b)}
    if len(dims) != 1:
        raise DataError(f"Expected X, Y, A and B to have the same embedding dimension, but got {sorted(dims)}.")
    return x, y, a, b


def _effect_size_from(s: np.ndarray, nx: int) -> float:
    sd = float(np.std(s, ddof=1))
    if sd == 0.0:
        raise DataError("The WEAT effect size is undefined: every target word has the same association "
                        "s(w, A, B), so their standard deviation is 0.")
    return float((s[:nx].mean() - s[nx:].mean()) / sd)


def weat_effect_size(X: Any, Y: Any, A: Any, B: Any) -> float:
    """Caliskan et al.'s effect size ``d`` (see the module docs); ``X, Y`` need >= 2 rows each."""
    x, y, a, b = _check_sets(X, Y, A, B)
    return _effect_size_from(association(np.vstack([x, y]), a, b), len(x))


@dataclass(frozen=True)
class PermutationTest:
    """A one-sided permutation p-value and how it was obtained."""

    p_value: float
    method: str
    n_partitions: int
    total_partitions: float


def permutation_p_value(s: Any, nx: int, *, n_samples: int = DEFAULT_PERMUTATIONS, seed: int = 0) -> PermutationTest:
    """One-sided WEAT permutation p-value from the associations ``s`` of ``X u Y`` (``X`` first).

    ``p = #{X_i : sum s[X_i] > sum s[X]} / #partitions`` over the subsets ``X_i`` of size ``nx``;
    exact when ``C(len(s), nx) <= n_samples``, else ``(b + 1) / (n_samples + 1)`` from ``n_samples``
    seeded uniform random partitions, ``b`` of them greater. Differences within floating-point
    rounding of the observed sum count as ties (not greater).
    """
    v = np.asarray(s, dtype=np.float64).ravel()
    n = v.size
    check_positive_int("nx", nx)
    if nx >= n:
        raise DataError(f"Expected `nx` to be < the number of targets ({n}), but got {nx}.")
    check_positive_int("n_samples", n_samples)
    total = math.comb(n, nx)
    total_f = float(total) if total < 10**300 else math.inf
    observed = float(v[:nx].sum())
    tol = 64 * np.finfo(np.float64).eps * float(np.abs(v).sum())
    greater = 0
    if total <= n_samples:
        combos = itertools.combinations(range(n), nx)
        while True:
            block = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, _CHUNK)), dtype=np.int64)
            if block.size == 0:
                break
            greater += int((v[block.reshape(-1, nx)].sum(axis=1) > observed + tol).sum())
        return PermutationTest(greater / total, "exact", total, total_f)
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_samples:
        m = min(_CHUNK, n_samples - done)
        idx = rng.permuted(np.broadcast_to(np.arange(n), (m, n)), axis=1)[:, :nx]
        greater += int((v[idx].sum(axis=1) > observed + tol).sum())
        done += m
    return PermutationTest((greater + 1) / (n_samples + 1), "sampled", n_samples, total_f)


@dataclass(frozen=True)
class WEATResult:
    """A WEAT (or SEAT) result.

    Attributes:
        test: the test's name (``"weat6"``, ``"sent-weat6"``, ``"gender-career"``, ...).
        effect_size: Caliskan et al.'s ``d``.
        p_value: one-sided permutation p-value; ``p_value_method`` is ``"exact"`` or ``"sampled"``
            over ``n_partitions`` of ``total_partitions`` partitions (a float: it can be
            astronomically large).
        statistic: ``s(X, Y, A, B)`` (difference of sums).
        sizes: ``{"X": |X|, "Y": |Y|, "A": |A|, "B": |B|}``.
        categories: the sets' names (``{"X": "MaleNames", ...}``).
        options: how the embeddings were made (encoder, pooling, representation, ...); recorded in rows.
    """

    test: str
    effect_size: float
    p_value: float
    p_value_method: str
    n_partitions: int
    total_partitions: float
    statistic: float
    sizes: Mapping[str, int]
    categories: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "effect_size": self.effect_size,
            "p_value": self.p_value,
            "p_value_method": self.p_value_method,
            "n_partitions": self.n_partitions,
            "total_partitions": self.total_partitions,
            "statistic": self.statistic,
            "sizes": dict(self.sizes),
            "categories": dict(self.categories),
            **dict(self.options),
        }


def weat(
    X: Any,
    Y: Any,
    A: Any,
    B: Any,
    *,
    test: str = "weat",
    n_samples: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    categories: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> WEATResult:
    """WEAT effect size and one-sided permutation p-value over embeddings ``[n, dim]``.

    Args:
        X, Y: target embeddings (>= 2 rows each). A, B: attribute embeddings (>= 1 row each).
        test: name recorded in the result.
        n_samples: enumerate all partitions when there are at most this many, else sample this
            many (seeded by ``seed``).
        categories / options: recorded in the result (set names; encoder and pooling options).

    Raises:
        DataError: a set is too small, a zero or non-finite embedding, mismatched dimensions, or all
            associations equal (effect size undefined).
    """
    x, y, a, b = _check_sets(X, Y, A, B)
    s = association(np.vstack([x, y]), a, b)
    nx = len(x)
    d = _effect_size_from(s, nx)
    perm = permutation_p_value(s, nx, n_samples=n_samples, seed=seed)
    return WEATResult(
        test=test,
        effect_size=d,
        p_value=perm.p_value,
        p_value_method=perm.method,
        n_partitions=perm.n_partitions,
        total_partitions=perm.total_partitions,
        statistic=float(s[:nx].sum() - s[nx:].sum()),
        sizes={"X": nx, "Y": len(y), "A": len(a), "B": len(b)},
        categories=dict(categories or {}),
        options=dict(options or {}),
    )
