"""Evaluation metrics: functions over arrays.

- :func:`accuracy`, :func:`macro_f1` (unweighted mean of per-class F1 over the classes present in
  ``y_true`` or ``y_pred``, as scikit-learn's ``f1_score(average="macro")``);
- :func:`span_f1`: CoNLL-2000 chunk F1 over BIO tag sequences (Tjong Kim Sang & Buchholz, 2000):
  a predicted chunk counts only when its type, start and end all match a gold chunk;
- :func:`perplexity`: ``exp`` of the mean token negative log-likelihood.

Example:
    >>> span_f1([["B-city", "I-city", "O"]], [["B-city", "I-city", "O"]])
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["accuracy", "macro_f1", "bio_chunks", "span_f1", "perplexity"]


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Fraction of exact matches."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"Expected `y_true` and `y_pred` to have the same shape, but got {t.shape} and {p.shape}.")
    return float((t == p).mean()) if t.size else float("nan")


def macro_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Macro-averaged F1 over the labels present in either array.

    F1_k = 2 TP_k / (2 TP_k + FP_k + FN_k); a class with no true and no predicted example is not
    averaged (scikit-learn's convention for ``labels=None``).
    """
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"Expected `y_true` and `y_pred` to have the same shape, but got {t.shape} and {p.shape}.")
    if not t.size:
        return float("nan")
    labels = np.union1d(t, p)
    f1s = []
    for k in labels:
        tp = np.sum((t == k) & (p == k))
        fp = np.sum((t != k) & (p == k))
        fn = np.sum((t == k) & (p != k))
        denom = 2 * tp + fp + fn
        f1s.append(0.0 if denom == 0 else 2 * tp / denom)
    return float(np.mean(f1s))


def bio_chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Chunks ``(type, start, end_exclusive)`` of a BIO sequence, CoNLL-style.

    As conlleval does, an ``I-x`` that does not continue a chunk of type x starts a new chunk.
    """
    chunks: set[tuple[str, int, int]] = set()
    cur_type: str | None = None
    start = 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-") if tag != "O" else ("O", "", "")
        ends = prefix in ("O", "B") or (prefix == "I" and typ != cur_type)
        if cur_type is not None and ends:
            chunks.add((cur_type, start, i))
            cur_type = None
        if prefix == "B" or (prefix == "I" and cur_type is None):
            cur_type, start = typ, i
    return chunks


def span_f1(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> float:
    """Micro-averaged chunk F1 over sentences (conlleval's FB1 / 100).

    Returns 0.0 when there are no gold and no predicted chunks' overlap, and NaN for empty input.
    """
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"Expected as many predicted as gold sequences, but got {len(pred_tags)} and {len(true_tags)}.")
    n_true = n_pred = n_correct = 0
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise ValueError(f"Sequence {i}: expected {len(t)} predicted tags, but got {len(p)}.")
        ct, cp = bio_chunks(t), bio_chunks(p)
        n_true += len(ct)
        n_pred += len(cp)
        n_correct += len(ct & cp)
    if n_true == 0 and n_pred == 0:
        return float("nan")
    precision = n_correct / n_pred if n_pred else 0.0
    recall = n_correct / n_true if n_true else 0.0
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def perplexity(total_nll: float, n_tokens: int) -> float:
    """``exp(total_nll / n_tokens)``; NaN when there are no tokens."""
    if n_tokens <= 0:
        return float("nan")
    return float(math.exp(total_nll / n_tokens))
