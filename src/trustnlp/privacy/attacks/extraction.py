"""How much of the canaries' secrets an extraction attack recovered, against chance.

For ``n`` canaries with secrets ``s_i`` of ``L`` tokens from an alphabet of ``V`` (space
``|R| = V^L``) and the attack's guesses ``g_i``:

- **exact extraction rate** ``k/n``, ``k = #{g_i = s_i}``, with a Clopper-Pearson interval;
  chance ``1/|R|`` (a guess independent of a uniform secret matches it with that probability);
- **per-position accuracy** ``#{g_ij = s_ij}/n`` per position ``j`` and overall (``nL`` trials;
  chance ``1/V``; under the null each match is an independent Bernoulli(1/V), since the secret's
  tokens are i.i.d. uniform and independent of the model);
- **set recovery**: the multiset overlap ``|g_i ∩ s_i| / L`` (order-invariant; an order-invariant
  bag-of-words model can leak at most this); its chance is exact:
  ``E|g ∩ S| = sum_t E[min(c_t(g), X_t)]``, ``X_t ~ Binomial(L, 1/V)``, averaged over the guesses;
- **ranks**: the rank of the true secret among all candidates by the model's ``log p(label)``
  (exact from the oracle, or estimated), the **exposure** ``log2|R| - log2 rank`` (Carlini et al.
  2019) and a one-sided **test against chance**: with ``u_i`` the secret's rank as a fraction of the
  space (exact: ``rank/|R|``; sampled: the Monte-Carlo p-value ``(1 + #{samples >= secret})/(m + 1)``),
  ``u_i`` is (super-)uniform on (0, 1] when the model carries no information about the secret; the
  one-sided Kolmogorov-Smirnov test (alternative: ``u`` stochastically smaller than uniform) rejects
  at level ``alpha`` (0.05 unless given). Ties count against the secret, which keeps the test valid.

Example:
    >>> secrets = np.array([[1, 2], [3, 4]]); guesses = np.array([[1, 2], [4, 3]])
    >>> m = extraction_metrics(guesses, secrets, alphabet_size=10, rank_fractions=np.array([0.01, 0.02]),
    ...                        ranks=np.array([1.0, 2.0]), exposures=np.array([6.64, 5.64]))
    >>> m.extraction_rate, m.token_accuracy, m.set_recovery
    (0.5, 0.5, 1.0)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from trustnlp.errors import DataError, expected
from trustnlp.privacy.attacks._checks import check_confidence
from trustnlp.privacy.attacks.stats import clopper_pearson

__all__ = [
    "ExtractionMetrics",
    "RankStatistics",
    "RankTest",
    "exact_rank_statistics",
    "extraction_metrics",
    "rank_test",
    "sampled_rank_statistics",
    "set_overlap",
    "set_recovery_chance",
]

DEFAULT_ALPHA = 0.05


def set_overlap(guess: np.ndarray, secret: np.ndarray) -> int:
    """Size of the multiset intersection of two token sequences."""
    return sum((Counter(np.asarray(guess).tolist()) & Counter(np.asarray(secret).tolist())).values())


def set_recovery_chance(guesses: np.ndarray, alphabet_size: int) -> float:
    """``mean_i E|g_i ∩ S| / L`` for secrets ``S`` uniform over ``alphabet^L`` (exact)."""
    g = np.asarray(guesses)
    length = g.shape[1]
    k = np.arange(length + 1)
    pmf = stats.binom.pmf(k, length, 1.0 / alphabet_size)
    total = 0.0
    for row in g:
        for c in Counter(row.tolist()).values():
            total += float((pmf * np.minimum(k, c)).sum())
    return total / (len(g) * length)


@dataclass(frozen=True)
class RankTest:
    """One-sided KS test of the secrets' rank fractions against uniform (chance)."""

    statistic: float
    p_value: float
    alpha: float
    significant: bool
    method: str = "one-sided Kolmogorov-Smirnov vs U(0,1), alternative: ranks better than chance"

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "p_value": self.p_value, "alpha": self.alpha,
                "significant": self.significant, "method": self.method}


def rank_test(rank_fractions: np.ndarray, *, alpha: float = DEFAULT_ALPHA) -> RankTest:
    """Test ``u_i`` (rank / |R|, or a Monte-Carlo rank p-value) against U(0, 1), one-sided."""
    u = np.asarray(rank_fractions, dtype=np.float64)
    if u.ndim != 1 or u.size == 0 or not np.all((u > 0) & (u <= 1)):
        raise DataError(expected("rank_fractions", "a non-empty 1-D array in (0, 1]", u[:5].tolist()))
    a = check_confidence(alpha, "alpha")
    res = stats.kstest(u, "uniform", alternative="greater")
    p = float(res.pvalue)
    return RankTest(statistic=float(res.statistic), p_value=p, alpha=a, significant=p < a)


@dataclass(frozen=True)
class RankStatistics:
    """The true secrets' ranks, rank fractions ``u`` and exposures, exact or estimated.

    ``kind`` is ``exact`` (every secret scored: ``rank = |{r : lp(r) >= lp(secret)}|``,
    ``u = rank/|R|``, ``exposure = log2|R| - log2 rank``) or ``sampled`` (``m`` uniform samples per
    canary: ``u = (1 + #{lp(sample) >= lp(secret)})/(m + 1)``, the Monte-Carlo rank p-value;
    ``exposure`` extrapolated from a skew-normal fit to the samples' ``-log p`` (Carlini et al.
    2019, §4.3, :func:`~trustnlp.privacy.attacks.exposure.exposure_estimate`) and
    ``rank = |R| 2^-exposure``, the rank that exposure stands for).
    """

    kind: str
    ranks: np.ndarray
    rank_fractions: np.ndarray
    exposures: np.ndarray
    space_size: int
    n_samples: int | None = None


def exact_rank_statistics(log_probs: np.ndarray, secret_index: np.ndarray) -> RankStatistics:
    """From the oracle's ``[n, |R|]`` log-probabilities (``exhaustive_log_probs``) and each secret's index."""
    from trustnlp.privacy.attacks.exposure import canary_rank, exposure_from_rank

    lp = np.asarray(log_probs, dtype=np.float64)
    idx = np.asarray(secret_index, dtype=np.int64)
    if lp.ndim != 2 or idx.shape != (lp.shape[0],):
        raise DataError(expected("secret_index", f"one index per row of log_probs {lp.shape}", f"shape {idx.shape}"))
    size = lp.shape[1]
    ranks = np.array([canary_rank(-lp[i], int(idx[i])) for i in range(len(idx))], dtype=np.int64)
    exposures = np.array([exposure_from_rank(int(r), size) for r in ranks])
    return RankStatistics(kind="exact", ranks=ranks.astype(np.float64), rank_fractions=ranks / size,
                          exposures=exposures, space_size=size)


def sampled_rank_statistics(secret_log_probs: np.ndarray, sample_log_probs: np.ndarray, *,
                            space_size: int) -> RankStatistics:
    """From each secret's ``log p(label)`` ``[n]`` and those of ``m`` uniform samples per canary ``[n, m]``."""
    from trustnlp.privacy.attacks.exposure import exposure_estimate

    own = np.asarray(secret_log_probs, dtype=np.float64)
    samples = np.asarray(sample_log_probs, dtype=np.float64)
    if samples.ndim != 2 or own.shape != (samples.shape[0],):
        raise DataError(expected("sample_log_probs", f"[n, m] with n = len(secret_log_probs) ({own.shape[0]})",
                                 f"shape {samples.shape}"))
    m = samples.shape[1]
    fractions = (1 + (samples >= own[:, None]).sum(axis=1)) / (m + 1)
    exposures = np.array([exposure_estimate(-own[i], -samples[i], space_size=space_size).exposure
                          for i in range(len(own))])
    ranks = np.maximum(1.0, float(space_size) * np.exp2(-exposures))
    return RankStatistics(kind="sampled", ranks=ranks, rank_fractions=fractions, exposures=exposures,
                          space_size=int(space_size), n_samples=m)


@dataclass(frozen=True)
class ExtractionMetrics:
    """Extraction metrics of one setting (see the module docstring); JSON via :meth:`to_dict`."""

    n_canaries: int
    secret_length: int
    alphabet_size: int
    space_size: int
    exact_matches: int
    extraction_rate: float
    extraction_interval: tuple[float, float]
    chance: float
    token_accuracy: float
    token_accuracy_interval: tuple[float, float]
    token_chance: float
    per_position_accuracy: tuple[float, ...]
    set_recovery: float
    set_recovery_chance: float
    mean_rank: float
    median_rank: float
    rank_chance: float
    mean_rank_fraction: float
    mean_exposure: float
    rank_test: RankTest
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_canaries": self.n_canaries,
            "secret_length": self.secret_length,
            "alphabet_size": self.alphabet_size,
            "space_size": self.space_size,
            "exact_matches": self.exact_matches,
            "extraction_rate": self.extraction_rate,
            "extraction_interval": list(self.extraction_interval),
            "chance": self.chance,
            "token_accuracy": self.token_accuracy,
            "token_accuracy_interval": list(self.token_accuracy_interval),
            "token_chance": self.token_chance,
            "per_position_accuracy": list(self.per_position_accuracy),
            "set_recovery": self.set_recovery,
            "set_recovery_chance": self.set_recovery_chance,
            "mean_rank": self.mean_rank,
            "median_rank": self.median_rank,
            "rank_chance": self.rank_chance,
            "mean_rank_fraction": self.mean_rank_fraction,
            "mean_exposure": self.mean_exposure,
            "rank_test": self.rank_test.to_dict(),
            "confidence": self.confidence,
        }


def extraction_metrics(guesses: np.ndarray, secrets: np.ndarray, *, alphabet_size: int, rank_fractions: np.ndarray,
                       ranks: np.ndarray, exposures: np.ndarray, alpha: float = DEFAULT_ALPHA,
                       confidence: float = 0.95) -> ExtractionMetrics:
    """Every metric of one setting.

    Args:
        guesses / secrets: ``[n, L]`` token indices (the attack's answer, the truth).
        alphabet_size: ``V`` (the space is ``V^L``).
        rank_fractions: ``[n]`` ``u_i`` in (0, 1] for the test against chance.
        ranks: ``[n]`` the secrets' ranks (exact or estimated), 1 = most likely.
        exposures: ``[n]`` the secrets' exposures in bits.
        alpha: level of the rank test.
        confidence: of the Clopper-Pearson intervals.
    """
    g = np.asarray(guesses, dtype=np.int64)
    s = np.asarray(secrets, dtype=np.int64)
    if g.ndim != 2 or g.shape != s.shape or g.size == 0:
        raise DataError(expected("guesses", f"a non-empty [n, L] array like `secrets` {s.shape}", f"shape {g.shape}"))
    n, length = s.shape
    for name, arr in (("rank_fractions", rank_fractions), ("ranks", ranks), ("exposures", exposures)):
        if np.asarray(arr).shape != (n,):
            raise DataError(expected(name, f"one value per canary ({n})", f"shape {np.asarray(arr).shape}"))
    conf = check_confidence(confidence)
    size = int(alphabet_size) ** length
    exact = int((g == s).all(axis=1).sum())
    hits = g == s
    token_hits = int(hits.sum())
    r = np.asarray(ranks, dtype=np.float64)
    return ExtractionMetrics(
        n_canaries=n,
        secret_length=length,
        alphabet_size=int(alphabet_size),
        space_size=size,
        exact_matches=exact,
        extraction_rate=exact / n,
        extraction_interval=clopper_pearson(exact, n, confidence=conf),
        chance=1.0 / size,
        token_accuracy=token_hits / (n * length),
        token_accuracy_interval=clopper_pearson(token_hits, n * length, confidence=conf),
        token_chance=1.0 / alphabet_size,
        per_position_accuracy=tuple(float(x) for x in hits.mean(axis=0)),
        set_recovery=float(np.mean([set_overlap(a, b) for a, b in zip(g, s)]) / length),
        set_recovery_chance=set_recovery_chance(g, alphabet_size),
        mean_rank=float(r.mean()),
        median_rank=float(np.median(r)),
        rank_chance=(size + 1) / 2,
        mean_rank_fraction=float(np.mean(rank_fractions)),
        mean_exposure=float(np.mean(exposures)),
        rank_test=rank_test(np.asarray(rank_fractions), alpha=alpha),
        confidence=conf,
    )
