"""Empirical privacy: lower bounds on epsilon from attacks, and the one-run audit.

A mechanism is (eps, delta)-DP when for neighbouring inputs and every event E,
``P[E | in] <= e^eps P[E | out] + delta`` and the same with in/out swapped. An attack that flags
"member" at a threshold has a true-positive rate TPR (E = "flagged", given in) and a false-positive
rate FPR (given out); applying the definition to "flagged" and to "not flagged" gives

    TPR <= e^eps FPR + delta          and          1 - FPR <= e^eps (1 - TPR) + delta,

so every (eps, delta)-DP mechanism has

    eps >= max( log((TPR - delta) / FPR),  log((1 - FPR - delta) / (1 - TPR)) ).

**From counts** (Jagielski et al. 2020, "Auditing differentially private machine learning: how
private is private SGD?"; Nasr et al. 2021, "Adversary instantiation"): with ``tp`` of ``P`` members
and ``fp`` of ``N`` non-members flagged, replace TPR by its Clopper-Pearson *lower* bound and FPR by
its *upper* bound — both terms above decrease as TPR falls and FPR rises, so these two ends are the
pessimistic ones in *both* terms:

    eps_lb = max(0, log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo))).

(``1 - FPR`` is bounded below by ``1 - FPR_hi`` and ``1 - TPR`` above by ``1 - TPR_lo``; using
``FPR_lo`` or ``TPR_hi`` in the second term would overstate the bound.) ``TPR_lo`` and ``FPR_hi`` are
the ends of two-sided Clopper-Pearson intervals at level ``confidence``; each is a one-sided bound at
``1 - a/2`` (``a = 1 - confidence``), so both hold together with probability ``>= confidence`` (union
bound) and ``eps_lb <= eps`` with that probability for any (eps, delta)-DP training.

**Choosing the threshold.** Maximising ``eps_lb`` over thresholds on the same examples is a multiple
comparison. :func:`epsilon_lower_bound_from_scores` picks the threshold on held-out *calibration*
examples and computes the bound once on the *evaluation* examples (valid at ``confidence``);
:func:`epsilon_lower_bound_bonferroni` takes ``T`` thresholds fixed in advance and reports the
maximum with each bound at ``1 - a/T`` (Bonferroni).

**One run** (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training run"): ``m``
canaries are each included independently with probability 1/2; after training the auditor guesses
"in" for the ``k+`` highest-scoring canaries and "out" for the ``k-`` lowest (``r = k+ + k-`` guesses,
abstaining on the rest) and counts ``v`` correct guesses. For an (eps, delta)-DP training, with
``q = e^eps / (1 + e^eps)`` (the accuracy of eps-DP randomised response) and ``W ~ Binomial(r, q)``,
the paper's main theorem in its delta > 0 form bounds

    P[V >= v] <= beta + 2 m delta alpha,     beta = P[W >= v],
    alpha = max_{i = 1..v} P[v - i <= W < v] / i

(for delta = 0 this is the binomial tail: V is stochastically dominated by W), computed as in the
p-value routine the authors publish with the paper. The reported bound is the largest eps whose
p-value is below ``1 - confidence``: a claim of (eps, delta)-DP with a smaller eps is rejected at that
confidence. Trying several ``(k+, k-)`` pairs is again a multiple comparison (``n_comparisons``).

Example:
    >>> bound = epsilon_lower_bound(900, 1000, 50, 1000, delta=1e-5)
    >>> round(bound.epsilon, 3)
    2.599
    >>> round(one_run_epsilon_lower_bound(m=1000, r=100, v=100, delta=0.0), 3)  # 100 of 100 correct
    3.493
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special, stats

from trustnlp.errors import ConfigError, DataError, PrivacyError, expected
from trustnlp.privacy.attacks._checks import (
    as_mask,
    as_scores,
    check_confidence,
    check_count,
    check_delta,
    check_int,
    is_number,
)
from trustnlp.privacy.attacks.stats import clopper_pearson_arrays

__all__ = [
    "EpsilonLowerBound",
    "OneRunAudit",
    "epsilon_lower_bound",
    "epsilon_lower_bound_from_scores",
    "epsilon_lower_bound_bonferroni",
    "one_run_p_value",
    "one_run_epsilon_lower_bound",
    "one_run_audit",
    "check_claim",
]


@dataclass(frozen=True)
class EpsilonLowerBound:
    """An empirical lower bound on epsilon from one attack threshold (see the module docstring)."""

    epsilon: float
    delta: float
    confidence: float
    true_positives: int
    n_members: int
    false_positives: int
    n_nonmembers: int
    tpr_lower: float
    fpr_upper: float
    threshold: float | None = None
    n_comparisons: int = 1
    method: str = "counts"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "epsilon", "delta", "confidence", "method", "threshold", "n_comparisons", "true_positives",
            "n_members", "false_positives", "n_nonmembers", "tpr_lower", "fpr_upper")}


def _bounds(tp: np.ndarray, p: np.ndarray, fp: np.ndarray, n: np.ndarray, delta: float,
            confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised ``eps_lb`` with the Clopper-Pearson ends it used: ``(eps, tpr_lo, fpr_hi)``."""
    tpr_lo, _ = clopper_pearson_arrays(tp, p, confidence=confidence)
    _, fpr_hi = clopper_pearson_arrays(fp, n, confidence=confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(tpr_lo > delta, np.log(np.maximum(tpr_lo - delta, 1e-300)) - np.log(fpr_hi), -np.inf)
        second = np.where(1 - fpr_hi > delta, np.log(np.maximum(1 - fpr_hi - delta, 1e-300)) - np.log1p(-tpr_lo),
                          -np.inf)
    return np.maximum(0.0, np.maximum(first, second)), tpr_lo, fpr_hi


def epsilon_lower_bound(true_positives: int, n_members: int, false_positives: int, n_nonmembers: int, *,
                        delta: float, confidence: float = 0.95, n_comparisons: int = 1) -> EpsilonLowerBound:
    """Lower bound on epsilon at ``confidence`` from an attack's counts at one threshold.

    ``eps_lb = max(0, log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))`` with
    two-sided Clopper-Pearson ends at ``1 - (1 - confidence) / n_comparisons`` (Bonferroni when this
    threshold is one of ``n_comparisons`` tried on these counts' data).

    Args:
        true_positives: members flagged, of ``n_members``.
        n_members: members evaluated.
        false_positives: non-members flagged, of ``n_nonmembers``.
        n_nonmembers: non-members evaluated.
        delta: the delta of the (eps, delta) claim being audited.
        confidence: the probability that the bound holds.
        n_comparisons: the number of thresholds this one was picked from on the same data.
    """
    p = check_count(n_members, "n_members", minimum=1)
    n = check_count(n_nonmembers, "n_nonmembers", minimum=1)
    tp = check_count(true_positives, "true_positives", maximum=p, maximum_name="n_members")
    fp = check_count(false_positives, "false_positives", maximum=n, maximum_name="n_nonmembers")
    d = check_delta(delta)
    conf = check_confidence(confidence)
    t = check_int(n_comparisons, "n_comparisons", 1)
    eps, lo, hi = _bounds(np.array([tp]), np.array([p]), np.array([fp]), np.array([n]), d, 1 - (1 - conf) / t)
    return EpsilonLowerBound(epsilon=float(eps[0]), delta=d, confidence=conf, true_positives=tp, n_members=p,
                             false_positives=fp, n_nonmembers=n, tpr_lower=float(lo[0]), fpr_upper=float(hi[0]),
                             n_comparisons=t)


def _counts_at(scores: np.ndarray, member: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(#members >= t, #non-members >= t)`` for each threshold."""
    mem, non = np.sort(scores[member]), np.sort(scores[~member])
    tp = mem.size - np.searchsorted(mem, thresholds, side="left")
    fp = non.size - np.searchsorted(non, thresholds, side="left")
    return tp.astype(np.int64), fp.astype(np.int64)


def _scores_and_members(scores: object, is_member: object) -> tuple[np.ndarray, np.ndarray]:
    s = as_scores(scores, "scores")
    return s, as_mask(is_member, "is_member", s.shape)


def _need_both(member: np.ndarray, where: str) -> None:
    if member.all() or not member.any():
        raise DataError(expected("is_member", f"members and non-members among the {where} examples",
                                 f"{int(member.sum())} members of {member.size}"))


def epsilon_lower_bound_from_scores(scores: object, is_member: object, *, calibration: object, delta: float,
                                   confidence: float = 0.95) -> EpsilonLowerBound:
    """The bound at the threshold that maximises it on the calibration examples, evaluated once on the rest.

    Every distinct calibration score is a candidate threshold (flag ``score >= t``); the one with the
    largest calibration ``eps_lb`` is applied to the evaluation examples (``~calibration``), where the
    reported bound is computed with no multiple-comparison correction (the threshold did not see them).

    Args:
        scores: per-example attack scores ``[N]``, higher = member.
        is_member: ``[N]`` true membership.
        calibration: ``[N]`` bool, the held-out examples that choose the threshold.
        delta: the delta of the audited claim.
        confidence: the probability that the reported bound holds.
    """
    s, member = _scores_and_members(scores, is_member)
    calib = as_mask(calibration, "calibration", s.shape)
    d = check_delta(delta)
    conf = check_confidence(confidence)
    _need_both(member[calib], "calibration")
    _need_both(member[~calib], "evaluation")
    cs, cm = s[calib], member[calib]
    candidates = np.unique(cs)
    tp, fp = _counts_at(cs, cm, candidates)
    eps, _, _ = _bounds(tp, np.full_like(tp, cm.sum()), fp, np.full_like(fp, (~cm).sum()), d, conf)
    threshold = float(candidates[int(np.argmax(eps))])
    tp_e, fp_e = _counts_at(s[~calib], member[~calib], np.array([threshold]))
    bound = epsilon_lower_bound(int(tp_e[0]), int(member[~calib].sum()), int(fp_e[0]), int((~member[~calib]).sum()),
                                delta=d, confidence=conf)
    return _with(bound, threshold=threshold, method="calibrated threshold")


def epsilon_lower_bound_bonferroni(scores: object, is_member: object, *, thresholds: object, delta: float,
                                   confidence: float = 0.95) -> EpsilonLowerBound:
    """The largest bound over ``T`` thresholds fixed in advance, each at confidence ``1 - (1 - confidence) / T``.

    The thresholds must not be chosen from these scores (use a grid fixed beforehand, or thresholds
    from other data); the Bonferroni correction then makes the maximum hold at ``confidence``.
    """
    s, member = _scores_and_members(scores, is_member)
    grid = as_scores(thresholds, "thresholds")
    d = check_delta(delta)
    conf = check_confidence(confidence)
    _need_both(member, "given")
    t = int(grid.size)
    tp, fp = _counts_at(s, member, grid)
    eps, _, _ = _bounds(tp, np.full_like(tp, member.sum()), fp, np.full_like(fp, (~member).sum()), d,
                        1 - (1 - conf) / t)
    best = int(np.argmax(eps))
    bound = epsilon_lower_bound(int(tp[best]), int(member.sum()), int(fp[best]), int((~member).sum()), delta=d,
                                confidence=conf, n_comparisons=t)
    return _with(bound, threshold=float(grid[best]), method="bonferroni")


def _with(bound: EpsilonLowerBound, **changes: Any) -> EpsilonLowerBound:
    return EpsilonLowerBound(**{**bound.__dict__, **changes})


# -- the one-run audit ----------------------------------------------------------------------------


def _check_mrv(m: object, r: object, v: object) -> tuple[int, int, int]:
    mm = check_count(m, "m", minimum=1)
    rr = check_count(r, "r", maximum=mm, maximum_name="m")
    vv = check_count(v, "v", maximum=rr, maximum_name="r")
    return mm, rr, vv


def _p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    if v == 0:
        return 1.0
    q = float(special.expit(eps))
    beta = float(stats.binom.sf(v - 1, r, q))  # P[W >= v]
    if delta == 0:
        return min(beta, 1.0)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[W = v-1], P[W = v-2], ..., P[W = 0]
    alpha = float(np.max(np.cumsum(below) / np.arange(1, v + 1)))  # max_i P[v-i <= W < v] / i
    return min(beta + 2 * m * delta * alpha, 1.0)


def one_run_p_value(m: int, r: int, v: int, *, epsilon: float, delta: float) -> float:
    """Upper bound on ``P[>= v correct of r guesses]`` for ``m`` canaries under (epsilon, delta)-DP.

    ``beta + 2 m delta alpha`` (module docstring; Steinke, Nasr & Jagielski 2023), capped at 1.
    """
    mm, rr, vv = _check_mrv(m, r, v)
    if not is_number(epsilon) or not math.isfinite(epsilon) or epsilon < 0:
        raise ConfigError(expected("epsilon", "a finite number >= 0", epsilon))
    return _p_value(mm, rr, vv, float(epsilon), check_delta(delta))


def one_run_epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float = 0.95,
                                n_comparisons: int = 1) -> float:
    """The largest epsilon whose one-run p-value is below ``(1 - confidence) / n_comparisons`` (0 if none).

    Bracketing by doubling, then bisection to a relative width of 1e-12, keeping
    ``p(lo) < significance <= p(hi)``, as the authors' routine does.
    """
    mm, rr, vv = _check_mrv(m, r, v)
    d = check_delta(delta)
    sig = (1 - check_confidence(confidence)) / check_int(n_comparisons, "n_comparisons", 1)
    if _p_value(mm, rr, vv, 0.0, d) >= sig:
        return 0.0
    lo, hi = 0.0, 1.0
    while _p_value(mm, rr, vv, hi, d) < sig:
        lo, hi = hi, 2 * hi
        if hi > 1e4:  # cannot happen for r >= 1 (q -> 1 makes beta -> 1); guard against a silent loop
            raise PrivacyError(f"The one-run p-value stays below {sig} up to epsilon = {hi}; m={mm}, r={rr}, v={vv}.")
    while hi - lo > 1e-12 * hi:
        mid = 0.5 * (lo + hi)
        if _p_value(mm, rr, vv, mid, d) < sig:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunAudit:
    """A one-run audit: ``v`` correct of ``r = k_plus + k_minus`` guesses on ``m`` canaries, and its bound."""

    epsilon: float
    delta: float
    confidence: float
    m: int
    r: int
    v: int
    k_plus: int
    k_minus: int
    n_comparisons: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def one_run_audit(scores: object, included: object, *, k_plus: int, k_minus: int, delta: float,
                  confidence: float = 0.95, n_comparisons: int = 1) -> OneRunAudit:
    """Guess from canary scores and bound epsilon (Steinke, Nasr & Jagielski 2023).

    Args:
        scores: one score per canary ``[m]``, higher = more likely included (ties broken by index).
        included: ``[m]`` bool, which canaries were trained on (each independently w.p. 1/2).
        k_plus: guess "in" for this many highest-scoring canaries.
        k_minus: guess "out" for this many lowest-scoring canaries (``k_plus + k_minus <= m``).
        delta: the delta of the audited claim.
        confidence: the probability that the bound holds.
        n_comparisons: how many ``(k_plus, k_minus)`` pairs were tried on this run (Bonferroni).
    """
    s = as_scores(scores, "scores")
    inc = as_mask(included, "included", s.shape)
    m = int(s.size)
    kp = check_int(k_plus, "k_plus", 0)
    km = check_int(k_minus, "k_minus", 0)
    if kp + km > m or kp + km == 0:
        raise ConfigError(expected("k_plus + k_minus", f"in [1, m = {m}]", kp + km))
    order = np.argsort(-s, kind="stable")
    v = int(inc[order[:kp]].sum() + (~inc[order[m - km:]]).sum())
    eps = one_run_epsilon_lower_bound(m=m, r=kp + km, v=v, delta=delta, confidence=confidence,
                                      n_comparisons=n_comparisons)
    return OneRunAudit(epsilon=eps, delta=float(delta), confidence=float(confidence), m=m, r=kp + km, v=v,
                       k_plus=kp, k_minus=km, n_comparisons=int(n_comparisons))


def check_claim(empirical_lower: float, *, claimed_epsilon: float) -> None:
    """Raise :class:`PrivacyError` when an empirical lower bound exceeds the claimed (theoretical) epsilon.

    At the audit's confidence this should not happen for a correct DP implementation and a sound
    audit; when it does, the privacy claim is falsified (e.g. noise switched off, wrong accounting).
    """
    if not is_number(empirical_lower) or not is_number(claimed_epsilon) or math.isnan(empirical_lower) \
            or math.isnan(claimed_epsilon):
        raise ConfigError(expected("empirical_lower and claimed_epsilon", "numbers",
                                   (empirical_lower, claimed_epsilon)))
    if empirical_lower > claimed_epsilon:
        raise PrivacyError(
            f"The empirical epsilon lower bound {empirical_lower:.4g} exceeds the claimed epsilon "
            f"{claimed_epsilon:.4g}: the privacy claim is falsified (noise, sampling or accounting is wrong).")
