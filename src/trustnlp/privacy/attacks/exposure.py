"""Exposure of an inserted canary (Carlini et al. 2019, "The Secret Sharer").

A canary is a format with a secret slot, e.g. ``"my PIN is ____"``, filled with a random secret
``r`` from a space ``R`` and inserted into the training data. The model's (log-)perplexity ``Px`` of
each filled-in candidate ranks the candidates (lower = more likely); with

    rank(r) = |{r' in R : Px(r') <= Px(r)}|          (the canary itself counts: rank >= 1)

the exposure is

    exposure(r) = log2 |R| - log2 rank(r),

between 0 (the canary is the least likely candidate) and ``log2 |R|`` (the most likely: the model
would give it away first). Ties count against the canary (``<=``), as in the paper's definition.

**Exact** (:func:`exposure_exact`): enumerate ``R``, score every candidate, count.
**Estimated** (:func:`exposure_estimate`, the paper's §4.3 extrapolation): when ``R`` is too large to
enumerate, draw candidates uniformly from ``R``, fit a skew-normal (or normal) density ``rho`` to
their perplexities and use ``rank / |R| ≈ ∫_{-inf}^{Px(r)} rho``, i.e.

    exposure ≈ -log2 F_rho(Px(r)),

which needs no ``|R|`` (it is only used, when given, to cap the estimate at ``log2 |R|``). The tail
probability is computed in log space (``logcdf``), so exposures of hundreds of bits stay finite.

Example:
    >>> px = np.array([5.0, 1.0, 3.0, 2.0])  # perplexities of all |R| = 4 candidates
    >>> exposure_exact(px, canary_index=1)  # the canary is the most likely: log2(4) - log2(1)
    2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.privacy.attacks._checks import as_scores, check_count, check_int, is_number

__all__ = ["ExposureEstimate", "canary_rank", "exposure_from_rank", "exposure_exact", "exposure_estimate"]

_DISTRIBUTIONS = ("skewnorm", "normal")


def canary_rank(perplexities: object, canary_index: int) -> int:
    """``|{r' : Px(r') <= Px(canary)}|`` over the whole enumerated space (the canary included)."""
    px = as_scores(perplexities, "perplexities")
    i = check_count(canary_index, "canary_index", maximum=px.size - 1, maximum_name="len(perplexities) - 1")
    return int((px <= px[i]).sum())


def exposure_from_rank(rank: int, space_size: int) -> float:
    """``log2(space_size) - log2(rank)`` for ``1 <= rank <= space_size``."""
    size = check_count(space_size, "space_size", minimum=1)
    r = check_count(rank, "rank", minimum=1, maximum=size, maximum_name="space_size")
    return math.log2(size) - math.log2(r)


def exposure_exact(perplexities: object, canary_index: int) -> float:
    """Exact exposure from the perplexities of **every** candidate in ``R`` (the canary's own among them).

    Args:
        perplexities: ``[|R|]`` (log-)perplexities of all candidates, lower = more likely.
        canary_index: the position of the inserted secret in ``perplexities``.
    """
    px = as_scores(perplexities, "perplexities")
    return exposure_from_rank(canary_rank(px, canary_index), px.size)


@dataclass(frozen=True)
class ExposureEstimate:
    """An extrapolated exposure and the fitted perplexity distribution it came from.

    ``params`` are scipy's: ``(a, loc, scale)`` for ``skewnorm``, ``(loc, scale)`` for ``normal``.
    """

    exposure: float
    distribution: str
    params: tuple[float, ...]
    n_samples: int
    space_size: int | None
    capped: bool

    def to_dict(self) -> dict[str, Any]:
        return {"exposure": self.exposure, "distribution": self.distribution, "params": list(self.params),
                "n_samples": self.n_samples, "space_size": self.space_size, "capped": self.capped}


def exposure_estimate(canary_perplexity: float, sampled_perplexities: object, *, distribution: str = "skewnorm",
                      space_size: int | None = None) -> ExposureEstimate:
    """Exposure extrapolated from a fit to perplexities of candidates sampled uniformly from ``R``.

    ``exposure ≈ -log2 F(Px(canary))`` with ``F`` the maximum-likelihood skew-normal (default, as in
    the paper) or normal CDF fitted to ``sampled_perplexities``; capped at ``log2(space_size)`` when
    the size is given (the exact exposure never exceeds it).

    Args:
        canary_perplexity: the canary's (log-)perplexity under the model.
        sampled_perplexities: perplexities of candidates drawn uniformly from ``R`` (at least 10;
            thousands for a stable fit), excluding the canary.
        distribution: ``"skewnorm"`` or ``"normal"``.
        space_size: ``|R|``, optional.
    """
    if not is_number(canary_perplexity) or not math.isfinite(canary_perplexity):
        raise DataError(expected("canary_perplexity", "a finite number", canary_perplexity))
    px = as_scores(sampled_perplexities, "sampled_perplexities")
    if px.size < 10:
        raise DataError(expected("sampled_perplexities", "at least 10 samples", px.size))
    if distribution not in _DISTRIBUTIONS:
        raise ConfigError(expected("distribution", "one of " + ", ".join(map(repr, _DISTRIBUTIONS)), distribution))
    size = None if space_size is None else check_int(space_size, "space_size", 1)
    if float(np.ptp(px)) == 0.0:
        raise DataError(expected("sampled_perplexities", "not all equal (a distribution needs a spread)", px[0]))
    if distribution == "skewnorm":
        params = tuple(float(p) for p in stats.skewnorm.fit(px))
        log_cdf = float(stats.skewnorm.logcdf(canary_perplexity, *params))
    else:
        params = tuple(float(p) for p in stats.norm.fit(px))
        log_cdf = float(stats.norm.logcdf(canary_perplexity, *params))
    value = max(0.0, -log_cdf / math.log(2))
    capped = size is not None and value > math.log2(size)
    if capped:
        value = math.log2(size)  # type: ignore[arg-type]
    return ExposureEstimate(exposure=value, distribution=distribution, params=params, n_samples=int(px.size),
                            space_size=size, capped=capped)
