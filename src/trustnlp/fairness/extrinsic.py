"""Extrinsic fairness: group metrics of a system's predictions, fairlearn style.

Functions over arrays, ``f(y_true, y_pred, *, sensitive_features)``. :func:`group_metrics` returns
a :class:`GroupMetrics`: each metric overall, per group, the between-group difference
(``max_g m_g - min_g m_g``) and ratio (``min_g m_g / max_g m_g``), with seeded percentile
bootstrap intervals. Overall and per-group values, differences and ratios are computed by
``fairlearn.metrics.MetricFrame``; the bootstrap resamples examples with replacement *within*
each group (group sizes fixed) and recomputes the same ratios from counts.

Metrics (``pos_label`` is the positive class; multi-class labels are one-vs-rest):

| name | definition |
|---|---|
| ``accuracy`` | ``P(yhat = y)`` |
| ``selection_rate`` | ``P(yhat = pos)`` (its difference/ratio is demographic parity) |
| ``tpr`` | ``P(yhat = pos | y = pos)`` |
| ``fpr`` | ``P(yhat = pos | y != pos)`` |
| ``fnr`` | ``P(yhat != pos | y = pos)`` |

**Undefined values are never silent NaNs.** A rate whose denominator is empty in a group (TPR of
a group with no positives) is ``None`` and its reason is in ``GroupMetrics.undefined`` under its
dotted path; a difference or ratio that involves an undefined group value is ``None`` too (fairlearn
itself skips NaN groups there, and its ``true_positive_rate`` returns 0 for a group without
positives). A group named in ``groups`` with no examples, or fewer than two groups, raises
:class:`~trustnlp.errors.DataError`.

AUC-based bias (Borkan et al. 2019) and counterfactual token fairness live in
:mod:`trustnlp.fairness.auc_bias` and :mod:`trustnlp.fairness.counterfactual`, re-exported here.

Example:
    >>> gm = group_metrics([1, 0, 1, 0], [1, 0, 0, 0], sensitive_features=["a", "a", "b", "b"], n_bootstrap=0)
    >>> gm.by_group["b"]["tpr"], gm.difference["tpr"], gm.difference["selection_rate"]
    (0.0, 1.0, 0.5)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.fairness._common import check_choice, check_positive_int
from trustnlp.fairness.auc_bias import AUCBias, auc_bias, bnsp_auc, bpsn_auc, generalized_mean, subgroup_auc
from trustnlp.fairness.counterfactual import (
    CounterfactualResult,
    SwapList,
    counterfactual_texts,
    counterfactual_token_fairness,
    load_gender_swaps,
    swap_text,
)

__all__ = [
    "GROUP_METRICS",
    "AUCBias",
    "CounterfactualResult",
    "GroupMetrics",
    "SwapList",
    "auc_bias",
    "bnsp_auc",
    "bpsn_auc",
    "counterfactual_texts",
    "counterfactual_token_fairness",
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equalized_odds_difference",
    "generalized_mean",
    "group_metrics",
    "load_gender_swaps",
    "subgroup_auc",
    "swap_text",
    "tpr_gap_by_class",
]

GROUP_METRICS = ("accuracy", "selection_rate", "tpr", "fpr", "fnr")
_WHY = {"tpr": "no positive examples", "fnr": "no positive examples", "fpr": "no negative examples"}


def _indicators(name: str, t: np.ndarray, p: np.ndarray, pos: Any) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) indicators: the metric is sum(num) / sum(den)."""
    tp, pp = t == pos, p == pos
    ones = np.ones(t.shape, dtype=bool)
    return {
        "accuracy": (t == p, ones),
        "selection_rate": (pp, ones),
        "tpr": (pp & tp, tp),
        "fpr": (pp & ~tp, ~tp),
        "fnr": (~pp & tp, tp),
    }[name]


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def _metric_fn(name: str, pos: Any) -> Any:
    def fn(y_true: Any, y_pred: Any) -> float:
        n, d = _indicators(name, np.asarray(y_true), np.asarray(y_pred), pos)
        return _ratio(float(n.sum()), float(d.sum()))

    fn.__name__ = name
    return fn


def _arrays(y_true: Any, y_pred: Any, sensitive_features: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, p, s = np.asarray(y_true), np.asarray(y_pred), np.asarray(sensitive_features)
    if t.ndim != 1 or p.shape != t.shape or s.shape != t.shape:
        raise DataError(f"Expected `y_true`, `y_pred` and `sensitive_features` to be 1-D of the same length, but got "
                        f"shapes {t.shape}, {p.shape} and {s.shape}.")
    if t.size == 0:
        raise DataError("Expected at least one example, but got none.")
    return t, p, s


@dataclass(frozen=True)
class GroupMetrics:
    """Metrics overall, by group, their between-group difference and ratio, and bootstrap intervals.

    Attributes:
        metrics / groups: names (groups as strings, in sorted order); counts: examples per group.
        overall / by_group / difference / ratio: values; ``None`` where undefined (see ``undefined``).
        intervals: metric -> ``{"overall", "difference", "ratio", "group:<g>"}`` -> ``(low, high)``
            percentile interval at ``confidence`` (``None`` when undefined; empty without bootstrap).
        undefined: dotted path (``"by_group.b.tpr"``, ``"difference.tpr"``) -> reason.
        n_bootstrap / confidence / seed / pos_label: the options.
    """

    metrics: tuple[str, ...]
    groups: tuple[str, ...]
    counts: Mapping[str, int]
    overall: Mapping[str, float | None]
    by_group: Mapping[str, Mapping[str, float | None]]
    difference: Mapping[str, float | None]
    ratio: Mapping[str, float | None]
    intervals: Mapping[str, Mapping[str, tuple[float, float] | None]] = field(default_factory=dict)
    undefined: Mapping[str, str] = field(default_factory=dict)
    n_bootstrap: int = 0
    confidence: float = 0.95
    seed: int = 0
    pos_label: Any = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": list(self.metrics),
            "groups": list(self.groups),
            "counts": dict(self.counts),
            "overall": dict(self.overall),
            "by_group": {g: dict(v) for g, v in self.by_group.items()},
            "difference": dict(self.difference),
            "ratio": dict(self.ratio),
            "intervals": {m: {k: (list(v) if v is not None else None) for k, v in iv.items()}
                          for m, iv in self.intervals.items()},
            "undefined": dict(self.undefined),
            "n_bootstrap": self.n_bootstrap,
            "confidence": self.confidence,
            "seed": self.seed,
            "pos_label": self.pos_label if isinstance(self.pos_label, (int, float, str, bool)) else str(self.pos_label),
        }


def _spread(vals: list[float]) -> tuple[float, float]:
    hi, lo = max(vals), min(vals)
    return hi - lo, (lo / hi if hi > 0 else float("nan"))


def group_metrics(
    y_true: Any,
    y_pred: Any,
    *,
    sensitive_features: Any,
    metrics: Sequence[str] = GROUP_METRICS,
    pos_label: Any = 1,
    groups: Sequence[Any] | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> GroupMetrics:
    """Per-group metrics with differences, ratios and bootstrap intervals (see the module docs).

    Args:
        y_true / y_pred: labels (any hashable values). sensitive_features: group of each example.
        metrics: names from :data:`GROUP_METRICS`.
        pos_label: the positive class for ``selection_rate``/``tpr``/``fpr``/``fnr``.
        groups: the groups to report (others are dropped); each must have examples.
        n_bootstrap: bootstrap replicates (0 = no intervals). confidence: interval level.
        seed: seeds the bootstrap.
    """
    from fairlearn.metrics import MetricFrame

    t, p, s = _arrays(y_true, y_pred, sensitive_features)
    metrics = tuple(metrics)
    for m in metrics:
        check_choice("metric", m, GROUP_METRICS)
    if not metrics:
        raise ConfigError(expected("metrics", f"a non-empty subset of {list(GROUP_METRICS)}", metrics))
    if n_bootstrap != 0:
        check_positive_int("n_bootstrap", n_bootstrap)
    if not 0 < confidence < 1:
        raise ConfigError(expected("confidence", "in (0, 1)", confidence))
    if any(m != "accuracy" for m in metrics) and not ((t == pos_label).any() or (p == pos_label).any()):
        raise DataError(f"`pos_label` {pos_label!r} occurs in neither `y_true` nor `y_pred`; pass the positive class.")
    keys = np.asarray([str(v) for v in s])
    if groups is not None:
        wanted = [str(g) for g in groups]
        empty = [g for g in wanted if not (keys == g).any()]
        if empty:
            raise DataError(f"Group(s) {empty} have no examples in `sensitive_features` (present: {sorted(set(keys))}).")
        keep = np.isin(keys, wanted)
        t, p, keys = t[keep], p[keep], keys[keep]
    names = tuple(sorted(set(keys.tolist())))
    if len(names) < 2:
        raise DataError(f"Expected at least 2 groups in `sensitive_features`, but got {list(names)}.")
    mf = MetricFrame(metrics={m: _metric_fn(m, pos_label) for m in metrics}, y_true=t, y_pred=p,
                     sensitive_features=keys)
    undefined: dict[str, str] = {}
    overall: dict[str, float | None] = {}
    by_group: dict[str, dict[str, float | None]] = {g: {} for g in names}
    diff: dict[str, float | None] = {}
    ratio: dict[str, float | None] = {}
    mf_diff, mf_ratio = None, None
    for m in metrics:
        v = float(mf.overall[m])
        overall[m] = None if np.isnan(v) else v
        if overall[m] is None:
            undefined[f"overall.{m}"] = _WHY[m]
        bad = []
        for g in names:
            gv = float(mf.by_group[m][g])
            by_group[g][m] = None if np.isnan(gv) else gv
            if np.isnan(gv):
                bad.append(g)
                undefined[f"by_group.{g}.{m}"] = f"group {g!r} has {_WHY[m]}"
        if bad:
            for k, d in (("difference", diff), ("ratio", ratio)):
                d[m] = None
                undefined[f"{k}.{m}"] = f"{m} is undefined for group(s) {bad} ({_WHY[m]})"
            continue
        if mf_diff is None:
            mf_diff, mf_ratio = mf.difference(method="between_groups"), None
        diff[m] = float(mf_diff[m])
        if max(by_group[g][m] or 0.0 for g in names) > 0:
            if mf_ratio is None:
                mf_ratio = mf.ratio(method="between_groups")
            ratio[m] = float(mf_ratio[m])
        else:
            ratio[m] = None
            undefined[f"ratio.{m}"] = f"{m} is 0 in every group (0/0)"
    counts = {g: int((keys == g).sum()) for g in names}
    intervals: dict[str, dict[str, tuple[float, float] | None]] = {}
    if n_bootstrap:
        intervals = _bootstrap(t, p, keys, names, metrics, pos_label, n_bootstrap, confidence, seed, undefined)
    return GroupMetrics(metrics, names, counts, overall, by_group, diff, ratio, intervals, undefined,
                        n_bootstrap, float(confidence), int(seed), pos_label)


def _bootstrap(t: np.ndarray, p: np.ndarray, keys: np.ndarray, names: tuple[str, ...], metrics: tuple[str, ...],
               pos: Any, n_boot: int, confidence: float, seed: int, undefined: dict[str, str]
               ) -> dict[str, dict[str, tuple[float, float] | None]]:
    rng = np.random.default_rng(seed)
    idx = {g: np.flatnonzero(keys == g) for g in names}
    draws = {g: rng.integers(0, len(ix), size=(n_boot, len(ix))) for g, ix in idx.items()}
    q = [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100]
    out: dict[str, dict[str, tuple[float, float] | None]] = {}
    for m in metrics:
        num, den = _indicators(m, t, p, pos)
        gn = np.stack([num[idx[g]][draws[g]].sum(1) for g in names]).astype(np.float64)  # [G, B]
        gd = np.stack([den[idx[g]][draws[g]].sum(1) for g in names]).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            vals = np.where(gd > 0, gn / np.where(gd > 0, gd, 1), np.nan)
            overall = np.where(gd.sum(0) > 0, gn.sum(0) / np.maximum(gd.sum(0), 1), np.nan)
        ok = ~np.isnan(vals).any(0)
        hi, lo = vals.max(0, initial=-np.inf, where=~np.isnan(vals)), vals.min(0, initial=np.inf, where=~np.isnan(vals))
        series = {"overall": overall, "difference": np.where(ok, hi - lo, np.nan),
                  "ratio": np.where(ok & (hi > 0), lo / np.where(hi > 0, hi, 1), np.nan)}
        series.update({f"group:{g}": vals[i] for i, g in enumerate(names)})
        out[m] = {}
        for k, v in series.items():
            fin = v[~np.isnan(v)]
            if fin.size < 0.5 * n_boot:
                out[m][k] = None
                undefined[f"intervals.{m}.{k}"] = f"undefined in {n_boot - fin.size} of {n_boot} bootstrap replicates"
            else:
                lo_q, hi_q = np.percentile(fin, q)
                out[m][k] = (float(lo_q), float(hi_q))
                if fin.size < n_boot:
                    undefined[f"intervals.{m}.{k}.note"] = f"computed from {fin.size} of {n_boot} replicates (others undefined)"
    return out


def _one(y_true: Any, y_pred: Any, sensitive_features: Any, metric: str, pos_label: Any, what: str) -> tuple[float, float]:
    gm = group_metrics(y_true, y_pred, sensitive_features=sensitive_features, metrics=(metric,), pos_label=pos_label,
                       n_bootstrap=0)
    d, r = gm.difference[metric], gm.ratio[metric]
    if what == "difference" and d is None or what == "ratio" and r is None:
        raise DataError(f"The {metric} {what} is undefined: {gm.undefined.get(f'{what}.{metric}')}.")
    return (d if d is not None else float("nan")), (r if r is not None else float("nan"))


def demographic_parity_difference(y_true: Any, y_pred: Any, *, sensitive_features: Any, pos_label: Any = 1) -> float:
    """``max_g P(yhat = pos | g) - min_g P(yhat = pos | g)``."""
    return _one(y_true, y_pred, sensitive_features, "selection_rate", pos_label, "difference")[0]


def demographic_parity_ratio(y_true: Any, y_pred: Any, *, sensitive_features: Any, pos_label: Any = 1) -> float:
    """``min_g P(yhat = pos | g) / max_g P(yhat = pos | g)``."""
    return _one(y_true, y_pred, sensitive_features, "selection_rate", pos_label, "ratio")[1]


def equalized_odds_difference(y_true: Any, y_pred: Any, *, sensitive_features: Any, pos_label: Any = 1) -> float:
    """``max(TPR difference, FPR difference)`` between groups (Hardt et al. 2016)."""
    return max(_one(y_true, y_pred, sensitive_features, m, pos_label, "difference")[0] for m in ("tpr", "fpr"))


def tpr_gap_by_class(y_true: Any, y_pred: Any, *, sensitive_features: Any, groups: tuple[Any, Any]
                     ) -> dict[str, Any]:
    """Per-class TPR gap ``TPR_{c, g1} - TPR_{c, g2}`` and its root mean square over classes
    (``GAP^RMS``, De-Arteaga et al. 2019), for multi-class classifiers.

    Classes with no example of one group are undefined (listed with reasons) and left out of the RMS.
    """
    t, p, s = _arrays(y_true, y_pred, sensitive_features)
    keys = np.asarray([str(v) for v in s])
    g1, g2 = (str(g) for g in groups)
    for g in (g1, g2):
        if not (keys == g).any():
            raise DataError(f"Group {g!r} has no examples in `sensitive_features` (present: {sorted(set(keys))}).")
    gaps: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    for c in sorted(set(t.tolist()), key=str):
        rates = []
        for g in (g1, g2):
            sel = (keys == g) & (t == c)
            rates.append(float((p[sel] == c).mean()) if sel.any() else None)
        if None in rates:
            gaps[str(c)] = None
            undefined[str(c)] = f"class {c!r} has no example in group(s) {[g for g, r in zip((g1, g2), rates) if r is None]}"
        else:
            gaps[str(c)] = rates[0] - rates[1]  # type: ignore[operator]
    defined = [v for v in gaps.values() if v is not None]
    rms = float(np.sqrt(np.mean(np.square(defined)))) if defined else None
    if rms is None:
        undefined["rms"] = "no class has examples of both groups"
    return {"groups": [g1, g2], "gaps": gaps, "rms": rms, "undefined": undefined}
