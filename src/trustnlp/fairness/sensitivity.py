"""Prediction sensitivity and accumulated prediction sensitivity (APS).

Following Krishna et al. (ACL 2022, "Measuring Fairness of Text Classifiers via Prediction
Sensitivity"; prediction sensitivity as an individual-fairness audit goes back to Maughan & Near
2020 and Maughan, Ngong & Near 2022, "Prediction Sensitivity: Continual Audit of Counterfactual
Fairness in Deployed Classifiers"): a classifier ``f: R^d -> R^k`` is sensitive to protected
status when its outputs move with the input features that encode it. For one input ``x``

    PS(x) = w(x)^T |J_f(x)| v,      J_f(x) = df/dx  in R^{k x d},  |.| elementwise

* ``v in R^d`` (the **protected-status weights**): a *protected-status model* ``g`` (logistic
  regression, scikit-learn, fitted on the same feature space to predict the protected attribute)
  gives ``v_j = |d logit_g / dx_j|`` = the absolute coefficient of feature ``j`` (the mean over
  classes for a multi-class attribute), normalised to ``sum_j v_j = 1``: how much each feature
  encodes protected status;
* ``w in R^k`` (weights over the outputs): ``"all"`` (default; ``w = 1``: sensitivity accumulated
  over every output), ``"predicted"`` (one-hot on the predicted class) or a fixed vector;
* ``f`` is the class probability (``output="probability"``, default) or the logit.

``APS = (1/N) sum_x PS(x)`` over a data set. A model whose input excludes the protected features
has ``J_f[:, j] = 0`` where ``v_j`` is large, so its APS is ~0.

**Feature spaces.** :func:`prediction_sensitivity` takes any differentiable ``f`` over feature
vectors (e.g. the pooled features of a bag-of-embeddings model). For text models,
:func:`text_prediction_sensitivity` uses the **pooled input embeddings**
``x = (1/T) sum_t e_t`` (mean of the token-embedding rows over the real tokens, ``[CLS]``/``[SEP]``
included) as features: the protected-status model is fitted on them, and
``df/dx_j = sum_t df/de_{t,j}`` is the derivative along a shift of every token embedding by the
same vector (exactly ``df/dx`` when ``f`` depends on the tokens only through their mean, as the
``bag`` model does). Gradients are taken through the whole network with autograd (one backward
pass per output class).

:func:`sensitivity_vs_counterfactual` correlates PS with the counterfactual gap of
:mod:`trustnlp.fairness.counterfactual` per example; across models, correlate their APS with their
mean counterfactual gaps (:func:`trustnlp.fairness._common.correlation`).

Example:
    >>> import torch
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    >>> ps = prediction_sensitivity(lambda x: x @ W.T, [[0.0, 0.0]], v=[1.0, 0.0], output="logit")
    >>> ps.tolist()
    [2.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.fairness._common import Correlation, check_choice, check_positive_int, correlation, float_matrix

__all__ = [
    "OUTPUTS",
    "W_MODES",
    "ProtectedStatusModel",
    "SensitivityResult",
    "accumulated_prediction_sensitivity",
    "fit_protected_status",
    "pooled_input_embeddings",
    "prediction_sensitivity",
    "sensitivity_vs_counterfactual",
    "text_prediction_sensitivity",
]

OUTPUTS = ("probability", "logit")
W_MODES = ("all", "predicted")


@dataclass(frozen=True)
class ProtectedStatusModel:
    """Logistic regression predicting the protected attribute from the features, and its ``v``."""

    v: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: tuple[str, ...]
    train_accuracy: float
    feature_space: str
    C: float

    def to_dict(self) -> dict[str, Any]:
        top = np.argsort(-self.v)[:10]
        return {"classes": list(self.classes), "train_accuracy": self.train_accuracy, "feature_space": self.feature_space,
                "C": self.C, "dim": int(self.v.size), "top_features": top.tolist(), "top_weights": self.v[top].tolist()}


def fit_protected_status(features: Any, protected: Any, *, C: float = 1.0, feature_space: str = "features",
                         max_iter: int = 2000) -> ProtectedStatusModel:
    """Fit the protected-status model ``g`` (L2 logistic regression, ``C`` = inverse strength) and
    derive ``v = |coef| / sum |coef|`` (see the module docs)."""
    from sklearn.linear_model import LogisticRegression

    x = float_matrix("features", features, min_rows=2)
    a = np.asarray([str(v) for v in np.asarray(protected)])
    if a.shape != (x.shape[0],):
        raise DataError(f"Expected one protected value per example ({x.shape[0]}), but got {a.size}.")
    classes = sorted(set(a.tolist()))
    if len(classes) < 2:
        raise DataError(f"Expected at least 2 protected groups to fit the protected-status model, but got {classes}.")
    if isinstance(C, bool) or not isinstance(C, (int, float)) or C <= 0:
        raise ConfigError(expected("C", "> 0", C))
    clf = LogisticRegression(C=float(C), max_iter=max_iter).fit(x, a)
    v = np.abs(clf.coef_).mean(axis=0)
    total = v.sum()
    if total == 0:
        raise DataError("The protected-status model has all-zero coefficients: no feature encodes the protected attribute.")
    return ProtectedStatusModel(v / total, clf.coef_.copy(), clf.intercept_.copy(), tuple(str(c) for c in clf.classes_),
                                float(clf.score(x, a)), feature_space, float(C))


def _weights(w: Any, k: int) -> str | torch.Tensor:
    if isinstance(w, str):
        return check_choice("w", w, W_MODES)
    arr = torch.as_tensor(np.asarray(w, dtype=np.float64))
    if arr.shape != (k,):
        raise ConfigError(expected("w", f"'all', 'predicted' or a vector of {k} class weights", w))
    return arr


def prediction_sensitivity(f: Callable[[torch.Tensor], torch.Tensor], features: Any, *, v: Any, w: Any = "all",
                           output: str = "probability", batch_size: int = 256) -> np.ndarray:
    """``PS(x) = w^T |df/dx| v`` for every row of ``features`` (see the module docs).

    Args:
        f: ``[B, d] -> [B, k]`` logits (examples must not interact: eval mode, no batch statistics).
        features: ``[N, d]``. v: ``[d]`` protected-status weights.
        w: ``"all"`` (default), ``"predicted"`` or ``[k]`` class weights.
        output: differentiate the softmax ``probability`` (default) or the ``logit``.
    """
    x_all = float_matrix("features", features)
    vv = np.asarray(v, dtype=np.float64).ravel()
    if vv.shape != (x_all.shape[1],):
        raise DataError(f"Expected `v` to have {x_all.shape[1]} entries (one per feature), but got {vv.size}.")
    check_choice("output", output, OUTPUTS)
    check_positive_int("batch_size", batch_size)
    vt = torch.as_tensor(vv)
    out = []
    for i in range(0, len(x_all), batch_size):
        x = torch.tensor(x_all[i : i + batch_size], requires_grad=True)
        logits = f(x)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise DataError(f"Expected `f` to return [batch, classes], but got shape {tuple(logits.shape)}.")
        y = torch.softmax(logits, 1) if output == "probability" else logits

        def grad(c: int, y: torch.Tensor = y, x: torch.Tensor = x) -> torch.Tensor:
            return torch.autograd.grad(y[:, c].sum(), x, retain_graph=True)[0]

        out.append(_accumulate(logits, y, grad, vt, w).detach().numpy())
    return np.concatenate(out)


def _accumulate(logits: torch.Tensor, y: torch.Tensor, grad: Callable[[int], torch.Tensor], v: torch.Tensor,
                w: Any) -> torch.Tensor:
    k = logits.shape[1]
    wm = _weights(w, k)
    if isinstance(wm, torch.Tensor):
        weight = wm.to(v.dtype).expand(logits.shape[0], k)
    elif wm == "predicted":
        weight = torch.nn.functional.one_hot(logits.argmax(1), k).to(v.dtype)
    else:
        weight = torch.ones(logits.shape[0], k, dtype=v.dtype)
    ps = torch.zeros(logits.shape[0], dtype=v.dtype)
    for c in range(k):
        if bool((weight[:, c] != 0).any()):
            ps = ps + weight[:, c] * (grad(c).abs().to(v.dtype) @ v)
    return ps


@dataclass(frozen=True)
class SensitivityResult:
    """Prediction sensitivity per example and APS over the data set.

    Attributes:
        aps: mean PS. ps: per example. by_group: protected group -> mean PS.
        protected_model: the protected-status model's summary. options: feature space, ``w``, output.
    """

    aps: float
    ps: tuple[float, ...]
    by_group: dict[str, float] = field(default_factory=dict)
    protected_model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"aps": self.aps, "n": len(self.ps), "ps_mean": self.aps,
                "ps_percentiles": {q: float(np.percentile(self.ps, q)) for q in (50, 90, 99)} if self.ps else {},
                "by_group": dict(self.by_group), "protected_model": dict(self.protected_model), **self.options}


def _by_group(ps: np.ndarray, protected: Any) -> dict[str, float]:
    a = np.asarray([str(v) for v in np.asarray(protected)])
    return {g: float(ps[a == g].mean()) for g in sorted(set(a.tolist()))}


def accumulated_prediction_sensitivity(f: Callable[[torch.Tensor], torch.Tensor], features: Any, protected: Any, *,
                                       w: Any = "all", output: str = "probability",
                                       protected_model: ProtectedStatusModel | None = None, C: float = 1.0,
                                       feature_space: str = "features") -> SensitivityResult:
    """APS of ``f`` over ``features`` with a protected-status model fitted on ``(features, protected)``
    (or the given ``protected_model``, e.g. fitted on held-out data)."""
    psm = protected_model or fit_protected_status(features, protected, C=C, feature_space=feature_space)
    ps = prediction_sensitivity(f, features, v=psm.v, w=w, output=output)
    return SensitivityResult(float(ps.mean()), tuple(float(p) for p in ps), _by_group(ps, protected), psm.to_dict(),
                             {"feature_space": psm.feature_space, "w": w if isinstance(w, str) else list(np.asarray(w)),
                              "output": output})


def _embedding_of(model: nn.Module, vocab_size: int) -> nn.Embedding:
    from trustnlp.fairness.encoders import find_token_embedding

    return find_token_embedding(model, vocab_size)


@torch.no_grad()
def pooled_input_embeddings(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_length: int = 128) -> np.ndarray:
    """``x = mean_t e_t`` over each text's real tokens (the feature space of
    :func:`text_prediction_sensitivity`), float64 ``[N, d]``."""
    emb = _embedding_of(model, tokenizer.vocab_size)
    enc = tokenizer.encode(list(texts), max_length=max_length)
    e = emb(enc.input_ids.to(emb.weight.device)).double().cpu()
    m = enc.attention_mask.unsqueeze(-1).double()
    return ((e * m).sum(1) / m.sum(1)).numpy()


def text_prediction_sensitivity(model: nn.Module, tokenizer: Any, texts: Sequence[str], protected: Any, *,
                                w: Any = "all", output: str = "probability", max_length: int = 128,
                                batch_size: int = 64, protected_model: ProtectedStatusModel | None = None,
                                C: float = 1.0) -> SensitivityResult:
    """PS of a text classifier over pooled input embeddings (module docs), for every text.

    ``model(input_ids, attention_mask)`` returns logits (or a tuple whose first item is the logits).
    The protected-status model is fitted on the pooled input embeddings of ``texts`` and
    ``protected`` unless ``protected_model`` is given.
    """
    from trustnlp.fairness.encoders import gradients_through

    texts = list(texts)
    check_choice("output", output, OUTPUTS)
    feats = pooled_input_embeddings(model, tokenizer, texts, max_length=max_length)
    psm = protected_model or fit_protected_status(feats, protected, C=C, feature_space="pooled input embeddings")
    if psm.v.size != feats.shape[1]:
        raise DataError(f"The protected-status model has {psm.v.size} features, the model's embeddings {feats.shape[1]}.")
    vt = torch.as_tensor(psm.v)
    emb = _embedding_of(model, tokenizer.vocab_size)
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    was_training = model.training
    model.eval()
    handle = emb.register_forward_hook(hook)
    ps_all = []
    try:
        with gradients_through(model), torch.enable_grad():
            for i in range(0, len(texts), batch_size):
                enc = tokenizer.encode(texts[i : i + batch_size], max_length=max_length)
                dev = emb.weight.device
                captured.clear()
                out = model(enc.input_ids.to(dev), enc.attention_mask.to(dev))
                logits = (out[0] if isinstance(out, tuple) else out).double()
                if len(captured) != 1:
                    raise ConfigError(f"Expected the token embedding to run once per forward pass, but it ran {len(captured)} times.")
                leaf, mask = captured[0], enc.attention_mask.to(dev).unsqueeze(-1).to(captured[0].dtype)
                y = torch.softmax(logits, 1) if output == "probability" else logits

                def grad(c: int, y: torch.Tensor = y, leaf: torch.Tensor = leaf, mask: torch.Tensor = mask) -> torch.Tensor:
                    g = torch.autograd.grad(y[:, c].sum(), leaf, retain_graph=True)[0]
                    return (g * mask).sum(1).double().cpu()

                ps_all.append(_accumulate(logits.cpu(), y.cpu(), grad, vt, w).detach().numpy())
    finally:
        handle.remove()
        model.train(was_training)
    ps = np.concatenate(ps_all) if ps_all else np.empty(0)
    return SensitivityResult(float(ps.mean()), tuple(float(p) for p in ps), _by_group(ps, protected), psm.to_dict(),
                             {"feature_space": "pooled input embeddings", "w": w if isinstance(w, str) else list(np.asarray(w)),
                              "output": output, "max_length": max_length})


def sensitivity_vs_counterfactual(sensitivity: SensitivityResult, counterfactual: Any) -> Correlation:
    """Per-example Pearson/Spearman correlation of PS with the counterfactual gap (total variation)
    over the texts that the counterfactual swap changed (same texts, same order)."""
    idx = list(counterfactual.changed)
    if counterfactual.n != len(sensitivity.ps):
        raise DataError(f"Expected the counterfactual result over the same {len(sensitivity.ps)} texts, "
                        f"but it covers {counterfactual.n}.")
    ps = np.asarray(sensitivity.ps)[idx] if idx else np.empty(0)
    return correlation(ps, np.asarray(counterfactual.tv), names=("ps", "counterfactual_tv"))
