"""The extrinsic part of :func:`trustnlp.fairness.study.run_fairness`: a saved classifier on the test
split of a data set with a protected attribute.

Computes, by the protected attribute: :func:`~trustnlp.fairness.extrinsic.group_metrics`
(accuracy; plus selection rate and TPR/FPR/FNR with ``pos_label=1`` for binary tasks), the
per-class TPR gap between the two largest groups (groups named in ``exclude`` such as the built-in
corpus's ``none``, "no gendered mention", are not compared), AUC-based bias (binary tasks),
counterfactual token fairness with the gender swaps, and prediction sensitivity over pooled input
embeddings with a protected-status model fitted on the examples outside ``exclude``; then the
per-example correlation of PS with the counterfactual gap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustnlp.errors import ConfigError, DataError

__all__ = ["extrinsic_metrics"]


def _prefixed(prefix: str, d: Any) -> dict[str, str]:
    return {f"{prefix}.{k}": str(v) for k, v in dict(d).items()}


def extrinsic_metrics(model_dir: str | Path, data: Any, *, protected: str | None = None, n_bootstrap: int = 1000,
                      seed: int = 0, exclude: Sequence[str] = ("none",), batch_size: int = 128
                      ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """``(metrics, null reasons by dotted path under the metrics, data provenance)`` (module docs)."""
    from trustnlp.config import DataConfig
    from trustnlp.fairness.auc_bias import auc_bias
    from trustnlp.fairness.counterfactual import counterfactual_token_fairness, load_gender_swaps
    from trustnlp.fairness.extrinsic import GROUP_METRICS, group_metrics, tpr_gap_by_class
    from trustnlp.fairness.sensitivity import (
        fit_protected_status,
        pooled_input_embeddings,
        sensitivity_vs_counterfactual,
        text_prediction_sensitivity,
    )
    from trustnlp.models.io import load_model
    from trustnlp.pipeline import load_splits

    path = Path(str(model_dir))
    if not (path.is_dir() and (path / "model.json").is_file()):
        raise ConfigError(f"Extrinsic metrics need a saved trustnlp classifier directory, but got {str(model_dir)!r}.")
    saved = load_model(path)
    if saved.task not in ("classify", "tag"):
        raise ConfigError(f"The model in {path} is a `{saved.task}` model; extrinsic metrics need a classifier.")
    cfg = DataConfig.model_validate({"data": data}) if isinstance(data, str) else data
    splits = load_splits(cfg, seed=seed)
    ds = splits.test
    if tuple(ds.label_names) != tuple(saved.label_names):
        raise DataError(f"The model in {path} was trained on other labels than `{splits.meta.name}` has.")
    col = protected or (ds.protected[0] if ds.protected else None)
    if col is None:
        raise DataError(f"Data set `{splits.meta.name}` declares no protected attribute; pass `protected` (a column name).")
    if col not in ds.columns:
        raise DataError(f"Data set `{splits.meta.name}` has no column `{col}` (columns: {sorted(ds.columns)}).")
    groups = np.asarray([str(v) for v in ds.column(col)])
    texts, y_true = list(ds.texts), np.asarray(ds.labels)
    model, tok = saved.model.eval(), saved.tokenizer
    max_length = int(saved.extra.get("max_length", 128))

    @torch.no_grad()
    def predict_proba(batch_texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(batch_texts), batch_size):
            enc = tok.encode(list(batch_texts[i : i + batch_size]), max_length=max_length)
            logits = model(enc.input_ids, enc.attention_mask)
            logits = logits[0] if isinstance(logits, tuple) else logits
            out.append(torch.softmax(logits.double(), -1).numpy())
        return np.concatenate(out)

    probs = predict_proba(texts)
    y_pred = probs.argmax(1)
    binary = len(ds.label_names) == 2
    reasons: dict[str, str] = {}
    gm = group_metrics(y_true, y_pred, sensitive_features=groups, metrics=GROUP_METRICS if binary else ("accuracy",),
                       pos_label=1, n_bootstrap=n_bootstrap, seed=seed)
    reasons.update(_prefixed("group_metrics", gm.undefined))
    out: dict[str, Any] = {"protected": col, "n_test": len(texts), "group_metrics": gm.to_dict()}
    sizes = Counter(g for g in groups.tolist() if g not in set(exclude))
    top = [g for g, _ in sizes.most_common(2)]
    if len(top) == 2:
        gap = tpr_gap_by_class(y_true, y_pred, sensitive_features=groups, groups=(top[0], top[1]))
        out["tpr_gap"] = gap
        reasons.update(_prefixed("tpr_gap.gaps", gap["undefined"]))
    else:
        out["tpr_gap"] = None
        reasons["tpr_gap"] = f"fewer than 2 groups outside {list(exclude)}"
    if binary:
        ab = auc_bias(y_true.astype(bool), probs[:, 1], sensitive_features=groups)
        out["auc_bias"] = ab.to_dict()
        reasons.update(_prefixed("auc_bias", ab.undefined))
    else:
        out["auc_bias"] = None
        reasons["auc_bias"] = "AUC-based bias needs a binary task"
    swaps = load_gender_swaps()
    cf = counterfactual_token_fairness(predict_proba, texts, swaps=swaps, sensitive_features=groups)
    out["counterfactual"] = cf.to_dict()
    reasons.update(_prefixed("counterfactual", cf.undefined))
    keep = ~np.isin(groups, list(exclude))
    if len(set(groups[keep].tolist())) >= 2:
        feats = pooled_input_embeddings(model, tok, texts, max_length=max_length)
        psm = fit_protected_status(feats[keep], groups[keep], feature_space="pooled input embeddings")
        sens = text_prediction_sensitivity(model, tok, texts, groups, protected_model=psm, max_length=max_length)
        out["sensitivity"] = sens.to_dict()
        corr = sensitivity_vs_counterfactual(sens, cf)
        out["ps_vs_counterfactual"] = corr.to_dict()
        if corr.reason:
            for k in ("pearson", "pearson_p", "spearman", "spearman_p"):
                reasons[f"ps_vs_counterfactual.{k}"] = corr.reason
    else:
        out["sensitivity"] = out["ps_vs_counterfactual"] = None
        reasons["sensitivity"] = reasons["ps_vs_counterfactual"] = f"fewer than 2 protected groups outside {list(exclude)}"
    meta = {**splits.meta.to_dict(), "split": "test", "model": str(model_dir)}
    return out, reasons, meta
