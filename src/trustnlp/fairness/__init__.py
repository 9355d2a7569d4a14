"""Fairness measurement: intrinsic tests of representations, extrinsic metrics of predictions, and
prediction sensitivity.

- intrinsic (:mod:`~trustnlp.fairness.intrinsic`, :mod:`~trustnlp.fairness.ceat`,
  :mod:`~trustnlp.fairness.crows`): WEAT/SEAT effect sizes and permutation p-values over
  embeddings, CEAT's random-effects combination over contexts, CrowS-Pairs for masked and causal
  LMs; tests from :mod:`~trustnlp.fairness.association_tests`, text encoded by
  :mod:`~trustnlp.fairness.encoders`;
- extrinsic (:mod:`~trustnlp.fairness.extrinsic`): :class:`GroupMetrics` (fairlearn MetricFrame,
  bootstrap intervals), AUC-based bias with the generalised mean, counterfactual token fairness;
- :mod:`~trustnlp.fairness.sensitivity`: prediction sensitivity and APS;
- :mod:`~trustnlp.fairness.study`: ``run_fairness`` (the ``trustnlp fairness`` command).

See ``docs/fairness.md`` for the definitions, options and defaults.
"""

from __future__ import annotations

from trustnlp.fairness.association_tests import (
    AssociationTest,
    WordSet,
    builtin_tests,
    load_seat_test,
    load_seat_tests,
    sentence_version,
)
from trustnlp.fairness.auc_bias import AUCBias, auc_bias, bnsp_auc, bpsn_auc, generalized_mean, subgroup_auc
from trustnlp.fairness.ceat import CEATResult, Corpus, MetaAnalysis, ceat, load_bold_corpus, random_effects
from trustnlp.fairness.counterfactual import (
    CounterfactualResult,
    SwapList,
    counterfactual_texts,
    counterfactual_token_fairness,
    load_gender_swaps,
    swap_text,
)
from trustnlp.fairness.crows import (
    CausalLMScorer,
    CrowsPair,
    CrowsResult,
    MaskedLMScorer,
    crows_pairs,
    load_crows_pairs,
    load_lm_scorer,
)
from trustnlp.fairness.encoders import TextEncoder, load_encoder
from trustnlp.fairness.extrinsic import (
    GroupMetrics,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    group_metrics,
    tpr_gap_by_class,
)
from trustnlp.fairness.intrinsic import WEATResult, association, weat, weat_effect_size
from trustnlp.fairness.sensitivity import (
    ProtectedStatusModel,
    SensitivityResult,
    accumulated_prediction_sensitivity,
    fit_protected_status,
    prediction_sensitivity,
    sensitivity_vs_counterfactual,
    text_prediction_sensitivity,
)

__all__ = [
    "AUCBias",
    "AssociationTest",
    "CEATResult",
    "CausalLMScorer",
    "Corpus",
    "CounterfactualResult",
    "CrowsPair",
    "CrowsResult",
    "GroupMetrics",
    "MaskedLMScorer",
    "MetaAnalysis",
    "ProtectedStatusModel",
    "SensitivityResult",
    "SwapList",
    "TextEncoder",
    "WEATResult",
    "WordSet",
    "accumulated_prediction_sensitivity",
    "association",
    "auc_bias",
    "bnsp_auc",
    "bpsn_auc",
    "builtin_tests",
    "ceat",
    "counterfactual_texts",
    "counterfactual_token_fairness",
    "crows_pairs",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "fit_protected_status",
    "generalized_mean",
    "group_metrics",
    "load_bold_corpus",
    "load_crows_pairs",
    "load_encoder",
    "load_gender_swaps",
    "load_lm_scorer",
    "load_seat_test",
    "load_seat_tests",
    "prediction_sensitivity",
    "random_effects",
    "sensitivity_vs_counterfactual",
    "sentence_version",
    "subgroup_auc",
    "swap_text",
    "text_prediction_sensitivity",
    "tpr_gap_by_class",
    "weat",
    "weat_effect_size",
]
