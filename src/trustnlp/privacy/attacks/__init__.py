"""Membership inference and exposure: the maths of the privacy audit (pure numpy/scipy).

Scores are **higher = more likely a member** everywhere.

- :mod:`~trustnlp.privacy.attacks.membership` — loss-threshold (Yeom et al. 2018), calibrated loss
  (Watson et al. 2022) and LiRA online/offline (Carlini et al. 2022) scores from per-example
  statistics of the target and of shadow models; :func:`logit_confidence`; :func:`shadow_inclusion_mask`;
- :mod:`~trustnlp.privacy.attacks.roc` — ROC curve, AUC, TPR at a fixed FPR with the threshold chosen
  on held-out calibration scores;
- :mod:`~trustnlp.privacy.attacks.stats` — Clopper-Pearson intervals;
- :mod:`~trustnlp.privacy.attacks.exposure` — exposure of inserted canaries (Carlini et al. 2019);
- :mod:`~trustnlp.privacy.attacks.result` — :class:`AttackResult` and :func:`evaluate_attack`;
- :mod:`~trustnlp.privacy.attacks.shadows` — training the target and shadow models (plain, batched and
  frozen-encoder feature paths) and their per-example confidences (imports torch; not re-exported here).
- :mod:`~trustnlp.privacy.attacks.extraction` — canary extraction against chance (rates,
  set recovery, ranks, exposure, rank test); the white-box attack is
  :mod:`~trustnlp.privacy.attacks.inversion` (torch, imported on its own).

Empirical epsilon lower bounds and the one-run audit live in :mod:`trustnlp.privacy.audit`.
The maths is described in ``docs/audit.md``.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> is_member = rng.random(2000) < 0.5
    >>> losses = rng.exponential(np.where(is_member, 0.5, 1.0))
    >>> result = evaluate_attack(loss_scores(losses), is_member, attack="loss")
    >>> 0.5 < result.auc < 1.0
    True
"""

from __future__ import annotations

from trustnlp.privacy.attacks.exposure import (
    ExposureEstimate,
    canary_rank,
    exposure_estimate,
    exposure_exact,
    exposure_from_rank,
)
from trustnlp.privacy.attacks.extraction import (
    ExtractionMetrics,
    RankStatistics,
    RankTest,
    exact_rank_statistics,
    extraction_metrics,
    rank_test,
    sampled_rank_statistics,
    set_overlap,
    set_recovery_chance,
)
from trustnlp.privacy.attacks.membership import (
    calibrated_loss_scores,
    lira_scores,
    logit_confidence,
    loss_scores,
    shadow_inclusion_mask,
)
from trustnlp.privacy.attacks.result import DEFAULT_FPRS, AttackResult, evaluate_attack
from trustnlp.privacy.attacks.roc import (
    RocCurve,
    TprAtFpr,
    calibration_split,
    roc_auc,
    roc_curve,
    threshold_at_fpr,
    tpr_at_fpr,
)
from trustnlp.privacy.attacks.stats import clopper_pearson, clopper_pearson_arrays

__all__ = [
    "AttackResult",
    "DEFAULT_FPRS",
    "ExposureEstimate",
    "RocCurve",
    "TprAtFpr",
    "calibrated_loss_scores",
    "calibration_split",
    "canary_rank",
    "clopper_pearson",
    "clopper_pearson_arrays",
    "evaluate_attack",
    "exposure_estimate",
    "exposure_exact",
    "exposure_from_rank",
    "lira_scores",
    "logit_confidence",
    "loss_scores",
    "roc_auc",
    "roc_curve",
    "shadow_inclusion_mask",
    "threshold_at_fpr",
    "tpr_at_fpr",
    # canary extraction (the relaxed attack itself, which needs torch: .inversion, .embedding_forward)
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
