"""Metrics against independent references: scikit-learn (macro-F1) and seqeval (CoNLL span F1)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import f1_score as seqeval_f1
from sklearn.metrics import accuracy_score, f1_score

from trustnlp.metrics import accuracy, bio_chunks, macro_f1, perplexity, span_f1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=60))
def test_macro_f1_and_accuracy_match_sklearn(pairs):
    y_true = np.array([a for a, _ in pairs])
    y_pred = np.array([b for _, b in pairs])
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0), rel=1e-10, abs=1e-12)
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred), rel=1e-10)


TAGS = ["O", "B-a", "I-a", "B-b", "I-b"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(TAGS), st.sampled_from(TAGS)), min_size=1, max_size=12), min_size=1, max_size=8))
def test_span_f1_matches_seqeval(sentences):
    gold = [[g for g, _ in s] for s in sentences]
    pred = [[p for _, p in s] for s in sentences]
    ours = span_f1(gold, pred)
    has_chunks = any(bio_chunks(g) for g in gold) or any(bio_chunks(p) for p in pred)
    if not has_chunks:
        assert math.isnan(ours)
        return
    # seqeval's default (non-strict) mode follows conlleval, as ours does
    assert ours == pytest.approx(seqeval_f1(gold, pred, zero_division=0), rel=1e-10, abs=1e-12)


def test_span_f1_worked_example():
    gold = [["B-city", "I-city", "O", "B-date"]]
    pred = [["B-city", "I-city", "O", "O"]]
    # 1 correct of 1 predicted (P=1), of 2 gold (R=0.5) -> F1 = 2/3
    assert span_f1(gold, pred) == pytest.approx(2 / 3, rel=1e-12)
    assert bio_chunks(["I-x", "I-x", "B-x", "O", "I-y"]) == {("x", 0, 2), ("x", 2, 3), ("y", 4, 5)}


def test_perplexity_and_errors():
    assert perplexity(math.log(7) * 10, 10) == pytest.approx(7.0, rel=1e-12)
    assert math.isnan(perplexity(1.0, 0))
    with pytest.raises(ValueError, match="same shape"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="Sequence 0"):
        span_f1([["O", "O"]], [["O"]])
