"""ROC curves, AUC and TPR at a fixed FPR for membership-inference scores.

Convention: a **higher score means "more likely a member"**, and an attack at threshold ``t``
predicts "member" when ``score >= t``. Over ``P`` members and ``N`` non-members,

    TPR(t) = #{members: s >= t} / P,        FPR(t) = #{non-members: s >= t} / N.

The ROC curve is ``(FPR(t), TPR(t))`` over every distinct score (plus ``t = +inf`` at ``(0, 0)``);
the AUC is its trapezoidal area, equal to the Mann-Whitney probability
``P[s_member > s_non-member] + P[s_member = s_non-member] / 2`` (computed here from ranks).

**TPR at a fixed FPR (Carlini et al. 2022, "Membership inference attacks from first principles")**
is reported at an operating point chosen *before* looking at the evaluation examples: the threshold
is the smallest one whose FPR on held-out *calibration* non-members is at most the target
(:func:`threshold_at_fpr`), and the TPR and FPR it achieves are then measured on the evaluation
examples, each with a Clopper-Pearson interval (:func:`tpr_at_fpr`). Reading the TPR off the ROC
curve of the evaluation set itself picks the threshold on the data it is scored on, which is
optimistic exactly in the low-FPR regime that matters (a handful of non-members decide it); this
module deliberately offers no such function.

Example:
    >>> rng = np.random.default_rng(0)
    >>> members, non_members = rng.normal(1, 1, 5000), rng.normal(0, 1, 5000)
    >>> round(roc_auc(members, non_members), 3)  # theory: Phi(1 / sqrt(2)) = 0.760
    0.754
    >>> calib = rng.normal(0, 1, 5000)  # held-out non-member scores
    >>> point = tpr_at_fpr(members, non_members, calibration_nonmember_scores=calib, fpr=0.01)
    >>> point.false_positives <= 100
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.privacy.attacks._checks import (
    as_mask,
    as_scores,
    check_confidence,
    check_int,
    check_rate,
    frozen,
    is_number,
    json_float,
)
from trustnlp.privacy.attacks.stats import clopper_pearson

__all__ = [
    "RocCurve",
    "TprAtFpr",
    "roc_curve",
    "roc_auc",
    "threshold_at_fpr",
    "tpr_at_fpr",
    "calibration_split",
]


@dataclass(frozen=True)
class RocCurve:
    """An empirical ROC curve: ``fpr[i], tpr[i]`` is the attack at ``score >= thresholds[i]``.

    ``thresholds`` decrease from ``+inf`` (the point ``(0, 0)``); ``fpr`` and ``tpr`` increase to 1.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_members: int
    n_nonmembers: int

    def __post_init__(self) -> None:
        for name in ("fpr", "tpr", "thresholds"):
            object.__setattr__(self, name, frozen(np.array(getattr(self, name), dtype=np.float64)))

    def thin(self, max_points: int = 1000) -> RocCurve:
        """At most ``max_points`` of the curve's own vertices, spread evenly in FPR and in log FPR.

        Every kept point is a real operating point of the attack (nothing is interpolated); the
        first and last points are always kept, and so is the low-FPR end that a log-scale plot shows.
        """
        max_points = check_int(max_points, "max_points", 4)
        n = self.fpr.size
        if n <= max_points:
            return self
        half = (max_points - 2) // 2
        positive = self.fpr[self.fpr > 0]
        grid = np.linspace(0.0, 1.0, half)
        if positive.size:
            grid = np.concatenate([grid, np.geomspace(positive[0], 1.0, half)])
        idx = np.searchsorted(self.fpr, grid, side="left").clip(0, n - 1)
        keep = np.unique(np.concatenate([[0, n - 1], idx]))
        return RocCurve(self.fpr[keep], self.tpr[keep], self.thresholds[keep], self.n_members, self.n_nonmembers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the ``+inf`` threshold of the point ``(0, 0)`` becomes ``None``."""
        return {
            "fpr": self.fpr.tolist(),
            "tpr": self.tpr.tolist(),
            "thresholds": [json_float(t) for t in self.thresholds],
            "n_members": self.n_members,
            "n_nonmembers": self.n_nonmembers,
        }


@dataclass(frozen=True)
class TprAtFpr:
    """The attack at a threshold chosen on calibration non-members for ``target_fpr``, scored on evaluation data.

    ``tpr_interval`` and ``fpr_interval`` are two-sided Clopper-Pearson intervals at ``confidence``.
    """

    target_fpr: float
    threshold: float
    true_positives: int
    n_members: int
    false_positives: int
    n_nonmembers: int
    n_calibration: int
    confidence: float
    tpr_interval: tuple[float, float]
    fpr_interval: tuple[float, float]

    @property
    def tpr(self) -> float:
        """True positives / members on the evaluation examples."""
        return self.true_positives / self.n_members

    @property
    def fpr(self) -> float:
        """False positives / non-members on the evaluation examples (near ``target_fpr``, not equal)."""
        return self.false_positives / self.n_nonmembers

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_fpr": self.target_fpr,
            "threshold": json_float(self.threshold),
            "tpr": self.tpr,
            "tpr_interval": list(self.tpr_interval),
            "fpr": self.fpr,
            "fpr_interval": list(self.fpr_interval),
            "true_positives": self.true_positives,
            "n_members": self.n_members,
            "false_positives": self.false_positives,
            "n_nonmembers": self.n_nonmembers,
            "n_calibration": self.n_calibration,
            "confidence": self.confidence,
        }


def _pair(member_scores: object, nonmember_scores: object) -> tuple[np.ndarray, np.ndarray]:
    return as_scores(member_scores, "member_scores"), as_scores(nonmember_scores, "nonmember_scores")


def roc_curve(member_scores: object, nonmember_scores: object) -> RocCurve:
    """The full empirical ROC curve (one vertex per distinct score).

    Equal to ``sklearn.metrics.roc_curve(y, s, drop_intermediate=False)`` with members labelled 1.

    Args:
        member_scores: scores of the members, 1-D, finite.
        nonmember_scores: scores of the non-members, 1-D, finite.
    """
    mem, non = _pair(member_scores, nonmember_scores)
    scores = np.concatenate([mem, non])
    is_member = np.concatenate([np.ones(mem.size, bool), np.zeros(non.size, bool)])
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_member[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return RocCurve(
        fpr=np.r_[0.0, fp / non.size],
        tpr=np.r_[0.0, tp / mem.size],
        thresholds=np.r_[np.inf, s[last]],
        n_members=int(mem.size),
        n_nonmembers=int(non.size),
    )


def roc_auc(member_scores: object, nonmember_scores: object) -> float:
    """Area under the ROC curve, ``P[s_m > s_n] + P[s_m = s_n] / 2`` (Mann-Whitney U / (P N)).

    Computed from mid-ranks of the pooled scores: ``(Σ rank(members) - P (P + 1) / 2) / (P N)``.
    """
    mem, non = _pair(member_scores, nonmember_scores)
    ranks = stats.rankdata(np.concatenate([mem, non]), method="average")
    p, n = mem.size, non.size
    u = ranks[:p].sum() - p * (p + 1) / 2.0
    return float(u / (p * n))


def _check_fpr(fpr: object) -> float:
    if not is_number(fpr) or not 0 <= fpr < 1:
        raise ConfigError(expected("fpr", "in [0, 1)", fpr))
    return float(fpr)


def threshold_at_fpr(nonmember_scores: object, *, fpr: float) -> float:
    """The smallest threshold whose FPR on these (calibration) non-member scores is at most ``fpr``.

    With ``k = floor(fpr · N)`` false positives allowed and ``s_(k+1)`` the ``(k+1)``-th largest
    score, the threshold is the next float above ``s_(k+1)``: at most ``k`` scores are ``>=`` it, and
    no smaller threshold keeps that. With fewer than ``1 / fpr`` calibration scores, ``k = 0`` and the
    threshold sits just above the largest score (no calibration false positive at all) — conservative.
    Pass *held-out* scores, never the ones the attack is evaluated on.
    """
    target = _check_fpr(fpr)
    non = as_scores(nonmember_scores, "nonmember_scores")
    k = math.floor(target * non.size + 1e-9)
    desc = np.sort(non)[::-1]
    return float(np.nextafter(desc[k], np.inf))


def tpr_at_fpr(member_scores: object, nonmember_scores: object, *, calibration_nonmember_scores: object,
               fpr: float, confidence: float = 0.95) -> TprAtFpr:
    """TPR and FPR on evaluation scores at the threshold chosen for ``fpr`` on calibration non-members.

    Args:
        member_scores: evaluation members' scores.
        nonmember_scores: evaluation non-members' scores.
        calibration_nonmember_scores: held-out non-members' scores, disjoint from the evaluation ones;
            only they choose the threshold (:func:`threshold_at_fpr`).
        fpr: the target false-positive rate, e.g. ``1e-3``.
        confidence: confidence of the two-sided Clopper-Pearson intervals.
    """
    mem, non = _pair(member_scores, nonmember_scores)
    conf = check_confidence(confidence)
    calib = as_scores(calibration_nonmember_scores, "calibration_nonmember_scores")
    t = threshold_at_fpr(calib, fpr=fpr)
    tp, fp = int((mem >= t).sum()), int((non >= t).sum())
    return TprAtFpr(
        target_fpr=float(fpr), threshold=t, true_positives=tp, n_members=int(mem.size),
        false_positives=fp, n_nonmembers=int(non.size), n_calibration=int(calib.size), confidence=conf,
        tpr_interval=clopper_pearson(tp, int(mem.size), confidence=conf),
        fpr_interval=clopper_pearson(fp, int(non.size), confidence=conf),
    )


def calibration_split(is_member: object, *, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """A seeded boolean mask marking ``fraction`` of the members and of the non-members as calibration.

    Stratified by membership (``round(fraction · count)`` of each); the rest are evaluation examples.
    Thresholds are chosen on the calibration examples only, and everything reported is measured on
    the evaluation examples.
    """
    arr = np.asarray(is_member)
    if arr.ndim != 1:
        raise DataError(expected("is_member", "a 1-D boolean array", f"an array of shape {arr.shape}"))
    mask = as_mask(arr, "is_member", arr.shape)
    frac = check_rate(fraction, "fraction")
    if frac >= 1:
        raise ConfigError(expected("fraction", "in (0, 1)", fraction))
    seed = check_int(seed, "seed", 0)
    rng = np.random.default_rng(seed)
    out = np.zeros(mask.size, dtype=bool)
    for group in (np.flatnonzero(mask), np.flatnonzero(~mask)):
        chosen = rng.permutation(group)[: round(frac * group.size)]
        out[chosen] = True
    return out
