"""AUC-based bias metrics (Borkan et al. 2019, "Nuanced Metrics for Measuring Unintended Bias").

For a binary task (``y = 1`` positive, e.g. toxic) with scores ``f(x)`` and an identity subgroup
``s`` (examples that mention it), with ``D^+``/``D^-`` the positive/negative examples *outside*
the subgroup (the background) and ``D_s^+``/``D_s^-`` those inside:

* **Subgroup AUC** = AUC(D_s^+ u D_s^-): separability within the subgroup;
* **BPSN AUC** (background positive, subgroup negative) = AUC(D^+ u D_s^-): low when the
  subgroup's negatives score higher than the background's positives (false positives);
* **BNSP AUC** (background negative, subgroup positive) = AUC(D^- u D_s^+): low when the
  subgroup's positives score lower than the background's negatives (false negatives).

They are combined over subgroups by the generalised (power) mean
``M_p(m) = ((1/N) sum_s m_s^p)^(1/p)`` with ``p = -5`` (penalises the worst subgroups); the
Jigsaw *final score* is ``w_0 AUC_overall + sum_a w_a M_p(m_a)`` with all ``w = 0.25``.

AUCs are scikit-learn's ``roc_auc_score``. A set with only one class has no AUC: the single-metric
functions raise :class:`~trustnlp.errors.DataError`; :func:`auc_bias` reports ``None`` with the
reason in ``undefined`` and leaves that subgroup out of the generalised mean (listed in ``excluded``).

Example:
    >>> generalized_mean([0.9, 0.8, 0.6], p=-5)  # doctest: +ELLIPSIS
    0.7019...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trustnlp.errors import ConfigError, DataError, expected

__all__ = ["AUC_METRICS", "DEFAULT_POWER", "AUCBias", "auc_bias", "bnsp_auc", "bpsn_auc", "generalized_mean",
           "subgroup_auc"]

DEFAULT_POWER = -5.0
AUC_METRICS = ("subgroup_auc", "bpsn_auc", "bnsp_auc")


def generalized_mean(values: Any, p: float = DEFAULT_POWER) -> float:
    """``((1/N) sum_i v_i^p)^(1/p)`` for ``v_i >= 0`` (``p = 0``: geometric mean; a zero value with
    ``p < 0`` gives 0, the limit)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise DataError("Expected at least one value for the generalised mean, but got none.")
    if not np.isfinite(v).all() or (v < 0).any():
        raise DataError(f"Expected finite values >= 0 for the generalised mean, but got {v.tolist()}.")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not np.isfinite(p):
        raise ConfigError(expected("p", "a finite number", p))
    if p == 0:
        return float(np.exp(np.log(v).mean())) if (v > 0).all() else 0.0
    if p < 0 and (v == 0).any():
        return 0.0
    return float(np.mean(v**p) ** (1.0 / p))


def _binary(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    t, s = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if t.ndim != 1 or s.shape != t.shape:
        raise DataError(f"Expected `y_true` and `y_score` to be 1-D of the same length, but got {t.shape} and {s.shape}.")
    vals = set(np.unique(t).tolist())
    if not vals <= {0, 1}:
        raise DataError(f"Expected binary `y_true` (0/1 or bool), but got values {sorted(vals, key=str)[:10]}.")
    if not np.isfinite(s).all():
        raise DataError("Expected finite `y_score`.")
    return t.astype(bool), s


def _mask(name: str, m: Any, n: int) -> np.ndarray:
    arr = np.asarray(m)
    if arr.shape != (n,) or arr.dtype != bool:
        raise DataError(f"Expected `{name}` to be a boolean mask of length {n}, but got dtype {arr.dtype} and shape {arr.shape}.")
    return arr


def _auc(t: np.ndarray, s: np.ndarray, what: str) -> float:
    from sklearn.metrics import roc_auc_score

    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"{what} is undefined: it has {n_pos} positive and {n_neg} negative example(s); an AUC needs both.")
    return float(roc_auc_score(t, s))


def subgroup_auc(y_true: Any, y_score: Any, *, subgroup: Any) -> float:
    """AUC within the subgroup (``subgroup``: boolean mask)."""
    t, s = _binary(y_true, y_score)
    g = _mask("subgroup", subgroup, t.size)
    return _auc(t[g], s[g], "Subgroup AUC")


def bpsn_auc(y_true: Any, y_score: Any, *, subgroup: Any) -> float:
    """AUC over the background positives and the subgroup negatives."""
    t, s = _binary(y_true, y_score)
    g = _mask("subgroup", subgroup, t.size)
    sel = (g & ~t) | (~g & t)
    return _auc(t[sel], s[sel], "BPSN AUC")


def bnsp_auc(y_true: Any, y_score: Any, *, subgroup: Any) -> float:
    """AUC over the background negatives and the subgroup positives."""
    t, s = _binary(y_true, y_score)
    g = _mask("subgroup", subgroup, t.size)
    sel = (g & t) | (~g & ~t)
    return _auc(t[sel], s[sel], "BNSP AUC")


@dataclass(frozen=True)
class AUCBias:
    """Borkan et al.'s bias AUCs per subgroup, their generalised means and the final score.

    Attributes:
        subgroups / sizes: subgroup names and their numbers of examples.
        per_subgroup: subgroup -> ``{"subgroup_auc", "bpsn_auc", "bnsp_auc"}`` (``None`` if undefined).
        overall_auc: AUC over all examples. power: ``p``.
        generalized_mean: metric -> ``M_p`` over the subgroups where it is defined (``excluded``
            lists the others). final_score: ``0.25 (AUC_overall + sum_a M_p(a))``.
        undefined: dotted path -> reason.
    """

    subgroups: tuple[str, ...]
    sizes: Mapping[str, int]
    per_subgroup: Mapping[str, Mapping[str, float | None]]
    overall_auc: float
    power: float
    generalized_mean: Mapping[str, float | None]
    final_score: float | None
    excluded: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    undefined: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subgroups": list(self.subgroups),
            "sizes": dict(self.sizes),
            "per_subgroup": {k: dict(v) for k, v in self.per_subgroup.items()},
            "overall_auc": self.overall_auc,
            "power": self.power,
            "generalized_mean": dict(self.generalized_mean),
            "final_score": self.final_score,
            "excluded": {k: list(v) for k, v in self.excluded.items()},
            "undefined": dict(self.undefined),
        }


def auc_bias(
    y_true: Any,
    y_score: Any,
    *,
    sensitive_features: Any = None,
    subgroups: Mapping[str, Any] | None = None,
    p: float = DEFAULT_POWER,
) -> AUCBias:
    """Subgroup/BPSN/BNSP AUCs of every subgroup and their generalised means.

    Give either ``sensitive_features`` (one group per example; each group value is a subgroup) or
    ``subgroups`` (name -> boolean mask; masks may overlap, as identity mentions do).
    """
    t, s = _binary(y_true, y_score)
    if (sensitive_features is None) == (subgroups is None):
        raise ConfigError("Give exactly one of `sensitive_features` and `subgroups`.")
    if subgroups is None:
        sf = np.asarray([str(v) for v in np.asarray(sensitive_features)])
        if sf.shape != t.shape:
            raise DataError(f"Expected `sensitive_features` of length {t.size}, but got {sf.size}.")
        masks = {g: sf == g for g in sorted(set(sf.tolist()))}
    else:
        masks = {str(k): _mask(f"subgroups[{k!r}]", v, t.size) for k, v in subgroups.items()}
    empty = [k for k, m in masks.items() if not m.any()]
    if empty:
        raise DataError(f"Subgroup(s) {empty} have no examples.")
    if not masks:
        raise DataError("Expected at least one subgroup, but got none.")
    overall = _auc(t, s, "The overall AUC")
    fns = {"subgroup_auc": subgroup_auc, "bpsn_auc": bpsn_auc, "bnsp_auc": bnsp_auc}
    per: dict[str, dict[str, float | None]] = {}
    undefined: dict[str, str] = {}
    for name, m in masks.items():
        per[name] = {}
        for metric, fn in fns.items():
            try:
                per[name][metric] = fn(t, s, subgroup=m)
            except DataError as e:
                per[name][metric] = None
                undefined[f"per_subgroup.{name}.{metric}"] = str(e)
    gmeans: dict[str, float | None] = {}
    excluded: dict[str, tuple[str, ...]] = {}
    for metric in fns:
        vals = [v[metric] for v in per.values() if v[metric] is not None]
        excluded[metric] = tuple(k for k, v in per.items() if v[metric] is None)
        gmeans[metric] = generalized_mean(vals, p) if vals else None
        if not vals:
            undefined[f"generalized_mean.{metric}"] = "undefined for every subgroup"
    final = None
    if all(v is not None for v in gmeans.values()):
        final = 0.25 * (overall + sum(v for v in gmeans.values() if v is not None))
    else:
        undefined["final_score"] = "a generalised mean is undefined"
    return AUCBias(tuple(masks), {k: int(m.sum()) for k, m in masks.items()}, per, overall, float(p), gmeans, final,
                   excluded, undefined)
