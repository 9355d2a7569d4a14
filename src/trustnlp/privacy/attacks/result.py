"""The result of one membership-inference attack, and the function that scores an attack's output.

:func:`evaluate_attack` takes per-example scores (higher = member), the true membership and a
*calibration* mask (held-out examples, e.g. from :func:`~trustnlp.privacy.attacks.roc.calibration_split`).
The calibration non-members only choose the thresholds for each target FPR; the ROC curve, the AUC
and the TPR/FPR at those thresholds are all measured on the remaining *evaluation* examples, so no
reported number is tuned on the data it is reported on.

Example:
    >>> rng = np.random.default_rng(0)
    >>> is_member = rng.random(4000) < 0.5
    >>> scores = rng.normal(is_member * 1.0, 1.0)
    >>> result = evaluate_attack(scores, is_member, calibration=calibration_split(is_member, seed=0),
    ...                          attack="toy")
    >>> [p.target_fpr for p in result.tpr_at]
    [0.001, 0.01]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.privacy.attacks._checks import as_mask, as_scores, check_confidence, frozen, json_float
from trustnlp.privacy.attacks.roc import RocCurve, TprAtFpr, calibration_split, roc_auc, roc_curve, tpr_at_fpr

__all__ = ["AttackResult", "evaluate_attack", "DEFAULT_FPRS"]

DEFAULT_FPRS: tuple[float, ...] = (1e-3, 1e-2)


@dataclass(frozen=True)
class AttackResult:
    """Scores and metrics of one membership-inference attack (plain data; arrays read-only).

    Attributes:
        attack: the attack's name, e.g. ``"lira-online"``.
        scores: per-example scores ``[N]`` (higher = more likely a member), all examples.
        is_member: ``[N]`` true membership.
        calibration: ``[N]`` true for the held-out examples that chose the thresholds.
        roc: the ROC curve on the evaluation examples (``~calibration``).
        auc: its area.
        tpr_at: one :class:`TprAtFpr` per target FPR (thresholds from calibration, rates on evaluation).
        confidence: of the Clopper-Pearson intervals.
    """

    attack: str
    scores: np.ndarray
    is_member: np.ndarray
    calibration: np.ndarray
    roc: RocCurve
    auc: float
    tpr_at: tuple[TprAtFpr, ...]
    confidence: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", frozen(np.array(self.scores, dtype=np.float64)))
        for name in ("is_member", "calibration"):
            object.__setattr__(self, name, frozen(np.array(getattr(self, name), dtype=bool)))
        object.__setattr__(self, "tpr_at", tuple(self.tpr_at))

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The threshold used for each target FPR, in the order of ``tpr_at``."""
        return tuple(p.threshold for p in self.tpr_at)

    def at_fpr(self, fpr: float) -> TprAtFpr:
        """The operating point for target FPR ``fpr`` (one of those evaluated)."""
        for p in self.tpr_at:
            if p.target_fpr == fpr:
                return p
        raise ConfigError(expected("fpr", "one of " + ", ".join(str(p.target_fpr) for p in self.tpr_at), fpr))

    def to_dict(self, *, max_roc_points: int = 1000) -> dict[str, Any]:
        """Strict-JSON data; the ROC curve is thinned to at most ``max_roc_points`` of its own vertices."""
        return {
            "attack": self.attack,
            "auc": self.auc,
            "confidence": self.confidence,
            "n_members": int(self.is_member.sum()),
            "n_nonmembers": int((~self.is_member).sum()),
            "n_calibration": int(self.calibration.sum()),
            "tpr_at": [p.to_dict() for p in self.tpr_at],
            "roc": self.roc.thin(max_roc_points).to_dict(),
            "roc_full_points": int(self.roc.fpr.size),
            "scores": [json_float(s) for s in self.scores],
            "is_member": self.is_member.tolist(),
            "calibration": self.calibration.tolist(),
        }


def evaluate_attack(scores: object, is_member: object, *, calibration: object | None = None, attack: str,
                    fprs: Sequence[float] = DEFAULT_FPRS, confidence: float = 0.95,
                    calibration_fraction: float = 0.5, seed: int = 0) -> AttackResult:
    """ROC, AUC and TPR at each target FPR (with Clopper-Pearson intervals) of one attack.

    Args:
        scores: per-example attack scores ``[N]``, higher = more likely a member.
        is_member: ``[N]`` true membership (bool).
        calibration: ``[N]`` bool, true for held-out examples whose non-members choose the thresholds;
            ``None`` draws a stratified split with ``calibration_fraction`` and ``seed``.
        attack: a name recorded in the result.
        fprs: target false-positive rates, e.g. ``(1e-3, 1e-2)``.
        confidence: of the two-sided Clopper-Pearson intervals.
    """
    s = as_scores(scores, "scores")
    member = as_mask(is_member, "is_member", s.shape)
    if not isinstance(attack, str) or not attack:
        raise ConfigError(expected("attack", "a non-empty name", attack))
    conf = check_confidence(confidence)
    if calibration is None:
        calib = calibration_split(member, fraction=calibration_fraction, seed=seed)
    else:
        calib = as_mask(calibration, "calibration", s.shape)
    evaluation = ~calib
    for what, mask in (("evaluation members", evaluation & member), ("evaluation non-members", evaluation & ~member),
                       ("calibration non-members", calib & ~member)):
        if not mask.any():
            raise DataError(expected("calibration and is_member", f"to leave at least one of the {what}", "none"))
    targets = tuple(fprs)
    if not targets:
        raise ConfigError(expected("fprs", "at least one target FPR", fprs))
    mem, non = s[evaluation & member], s[evaluation & ~member]
    points = tuple(tpr_at_fpr(mem, non, calibration_nonmember_scores=s[calib & ~member], fpr=f, confidence=conf)
                   for f in targets)
    return AttackResult(attack=attack, scores=s, is_member=member, calibration=calib, roc=roc_curve(mem, non),
                        auc=roc_auc(mem, non), tpr_at=points, confidence=conf)
