"""Prediction sensitivity: PS against analytic Jacobians and finite differences, APS across planted
dependence on a protected attribute, the text feature space against per-example loops, and the
relation to counterfactual fairness. Synthetic data with fixed seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from trustnlp.data.tokenizers import WordTokenizer
from trustnlp.errors import ConfigError, DataError
from trustnlp.fairness._common import correlation
from trustnlp.fairness.counterfactual import counterfactual_token_fairness, load_gender_swaps
from trustnlp.fairness.sensitivity import (
    accumulated_prediction_sensitivity,
    fit_protected_status,
    pooled_input_embeddings,
    prediction_sensitivity,
    sensitivity_vs_counterfactual,
    text_prediction_sensitivity,
)


def test_ps_of_softmax_regression_matches_analytic_jacobian() -> None:
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    X, v = rng.normal(size=(7, 5)), rng.random(5)
    Wt, bt = torch.tensor(W), torch.tensor(b)
    ps = prediction_sensitivity(lambda x: x @ Wt.T + bt, X, v=v)
    ps_pred = prediction_sensitivity(lambda x: x @ Wt.T + bt, X, v=v, w="predicted")
    ps_logit = prediction_sensitivity(lambda x: x @ Wt.T + bt, X, v=v, output="logit", w=[0.5, 0.0, 2.0])
    for i, x in enumerate(X):
        z = W @ x + b
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        J = (np.diag(p) - np.outer(p, p)) @ W  # d softmax / dx
        assert ps[i] == pytest.approx(np.abs(J).sum(0) @ v, rel=1e-10)
        assert ps_pred[i] == pytest.approx(np.abs(J[p.argmax()]) @ v, rel=1e-10)
        assert ps_logit[i] == pytest.approx(np.array([0.5, 0.0, 2.0]) @ np.abs(W) @ v, rel=1e-10)


def test_ps_of_mlp_matches_finite_differences() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    X = np.random.default_rng(1).normal(size=(5, 4))
    v = np.array([0.4, 0.3, 0.2, 0.1])
    ps = prediction_sensitivity(net, X, v=v)
    h = 1e-6
    for i, x in enumerate(X):
        J = np.zeros((3, 4))
        for j in range(4):
            e = np.zeros(4)
            e[j] = h
            with torch.no_grad():
                up = torch.softmax(net(torch.tensor(x + e)[None]), 1)[0].numpy()
                dn = torch.softmax(net(torch.tensor(x - e)[None]), 1)[0].numpy()
            J[:, j] = (up - dn) / (2 * h)
        assert ps[i] == pytest.approx(np.abs(J).sum(0) @ v, rel=1e-6)


def _synthetic(beta: float, *, n: int = 4000, d: int = 6, seed: int = 0) -> tuple:
    """Protected a in {0, 1}; feature 0 encodes a (plus noise), features 1.. do not; the label
    depends on feature 1 and, with strength beta, on a. Returns features, counterfactual features
    (a flipped, same noise), a and y."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2, n)
    noise0, Z, eps = rng.standard_normal(n), rng.standard_normal((n, d)), rng.standard_normal(n)

    def feats(aa: np.ndarray) -> np.ndarray:
        X = Z.copy()
        X[:, 0] = (2 * aa - 1) + 0.5 * noise0
        return X

    y = (Z[:, 1] + beta * (2 * a - 1) + 0.5 * eps > 0).astype(int)
    return feats(a), feats(1 - a), a, y


def _logreg(X: np.ndarray, y: np.ndarray, columns: np.ndarray) -> tuple:
    clf = LogisticRegression(max_iter=2000).fit(X[:, columns], y)
    W = np.zeros((2, X.shape[1]))
    W[1, columns] = clf.coef_[0]
    Wt, bt = torch.tensor(W), torch.tensor([0.0, clf.intercept_[0]])

    def proba(x: np.ndarray) -> np.ndarray:
        return torch.softmax(torch.tensor(x) @ Wt.T + bt, 1).numpy()

    return (lambda x: x @ Wt.T + bt), proba


def test_aps_rises_with_planted_dependence_and_vanishes_without_the_feature() -> None:
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    aps, aps_logit, cf_gap = [], [], []
    for beta in levels:
        X, Xcf, a, y = _synthetic(beta)
        f, proba = _logreg(X, y, np.arange(X.shape[1]))
        r = accumulated_prediction_sensitivity(f, X, a)
        assert r.protected_model["top_features"][0] == 0  # the protected-status model finds feature 0
        aps.append(r.aps)
        aps_logit.append(accumulated_prediction_sensitivity(f, X, a, output="logit").aps)
        cf_gap.append(float(np.abs(proba(X)[:, 1] - proba(Xcf)[:, 1]).mean()))
    assert all(lo < hi for lo, hi in zip(aps, aps[1:])), aps
    assert all(lo < hi for lo, hi in zip(aps_logit, aps_logit[1:])), aps_logit
    assert aps[-1] > 20 * aps[0]
    # the same model family without the protected feature in its input
    X, _, a, y = _synthetic(levels[-1])
    f_excl, _ = _logreg(X, y, np.arange(1, X.shape[1]))
    excl = accumulated_prediction_sensitivity(f_excl, X, a).aps
    assert excl < 0.02 * aps[-1] and excl < aps[1]
    # per data set: APS orders the levels as the counterfactual gap does
    c = correlation(aps, cf_gap)
    assert c.spearman == pytest.approx(1.0) and c.pearson is not None and c.pearson > 0.95


def test_ps_tracks_counterfactual_gap_per_example() -> None:
    X, Xcf, a, y = _synthetic(0.75)
    f, proba = _logreg(X, y, np.arange(X.shape[1]))
    r = accumulated_prediction_sensitivity(f, X, a)
    gap = np.abs(proba(X)[:, 1] - proba(Xcf)[:, 1])
    c = correlation(r.ps, gap)
    # a local gradient vs a finite flip: positively associated (alpha = 1e-6), not identical
    assert c.spearman is not None and c.spearman > 0.3 and c.spearman_p < 1e-6
    assert set(r.by_group) == {"0", "1"}


def test_protected_status_model_and_errors() -> None:
    X, _, a, _ = _synthetic(0.0, n=400)
    psm = fit_protected_status(X, a)
    assert psm.v.sum() == pytest.approx(1.0) and psm.v.argmax() == 0 and psm.train_accuracy > 0.9
    with pytest.raises(DataError, match="at least 2 protected groups"):
        fit_protected_status(X, np.zeros(len(X)))
    with pytest.raises(DataError, match="one per feature"):
        prediction_sensitivity(lambda x: x, X[:3], v=[1.0, 2.0])
    with pytest.raises(ConfigError, match="`w`"):
        prediction_sensitivity(lambda x: x[:, :2], X[:3], v=np.ones(6), w=[1.0, 2.0, 3.0])
    with pytest.raises(ConfigError, match="`output`"):
        prediction_sensitivity(lambda x: x[:, :2], X[:3], v=np.ones(6), output="prob")


# -- text models --------------------------------------------------------------------------------
TEXTS = ["he plays jazz", "she plays jazz", "remind him to call", "remind her to call", "my brother is late",
         "my sister is late", "play some music", "set an alarm for him"]
GENDER = ["m", "f", "m", "f", "m", "f", "m", "m"]


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return WordTokenizer.build(TEXTS + ["she", "her", "sister"], provenance="generator")


def test_text_ps_of_bag_model_equals_ps_on_pooled_embeddings(tok: WordTokenizer) -> None:
    from trustnlp.models import build_model

    torch.manual_seed(0)
    model = build_model("bag", vocab_size=tok.vocab_size, num_labels=3, dim=8, hidden=0).double().eval()
    r = text_prediction_sensitivity(model, tok, TEXTS, GENDER, batch_size=3)
    x = pooled_input_embeddings(model, tok, TEXTS)
    psm = fit_protected_status(x, GENDER)
    direct = prediction_sensitivity(lambda z: model.head(z), x, v=psm.v)  # bag: logits = head(mean embedding)
    np.testing.assert_allclose(r.ps, direct, rtol=1e-10)
    assert r.options["feature_space"] == "pooled input embeddings"


def test_text_ps_of_cnn_matches_per_example_jacobian(tok: WordTokenizer) -> None:
    from trustnlp.models import build_model

    torch.manual_seed(1)
    model = build_model("cnn", vocab_size=tok.vocab_size, num_labels=3, dim=8, filters=4).double().eval()
    r = text_prediction_sensitivity(model, tok, TEXTS, GENDER, batch_size=4)
    v = fit_protected_status(pooled_input_embeddings(model, tok, TEXTS), GENDER).v
    emb = model.encoder.embedding
    for i, text in enumerate(TEXTS):
        enc = tok.encode([text])
        with torch.no_grad():
            e0 = emb(enc.input_ids)

        def f(delta: torch.Tensor, e0: torch.Tensor = e0, enc=enc) -> torch.Tensor:
            handle = emb.register_forward_hook(lambda m, inp, out: e0 + delta)  # every real token shifted by delta
            try:
                return torch.softmax(model(enc.input_ids, enc.attention_mask), 1)[0]
            finally:
                handle.remove()

        J = torch.autograd.functional.jacobian(f, torch.zeros(8, dtype=torch.float64)).numpy()
        assert r.ps[i] == pytest.approx(np.abs(J).sum(0) @ v, rel=1e-8)


def test_text_sensitivity_vs_counterfactual(tok: WordTokenizer) -> None:
    from trustnlp.models import build_model

    torch.manual_seed(2)
    model = build_model("bag", vocab_size=tok.vocab_size, num_labels=2, dim=8, hidden=0).double().eval()
    with torch.no_grad():  # plant a dependence on the female words only
        model.head.weight.zero_()
        for w in ("she", "her", "sister"):
            model.encoder.embedding.weight[tok._index[w]] = torch.linspace(-1, 1, 8, dtype=torch.float64)
        model.head.weight[1] = torch.linspace(-1, 1, 8, dtype=torch.float64) * 3

    def proba(texts: list[str]) -> np.ndarray:
        enc = tok.encode(list(texts))
        with torch.no_grad():
            return torch.softmax(model(enc.input_ids, enc.attention_mask), 1).numpy()

    sens = text_prediction_sensitivity(model, tok, TEXTS, GENDER)
    cf = counterfactual_token_fairness(proba, TEXTS, swaps=load_gender_swaps(shared=False))
    assert cf.n_changed == 7 and cf.mean_tv is not None and cf.mean_tv > 0
    c = sensitivity_vs_counterfactual(sens, cf)
    ps_changed = [sens.ps[i] for i in cf.changed]  # aligned on the swapped texts ("play some music" has none)
    assert cf.changed == (0, 1, 2, 3, 4, 5, 7)
    ref = correlation(ps_changed, cf.tv)
    assert (c.n, c.pearson, c.spearman) == (7, ref.pearson, ref.spearman)
    assert set(sens.by_group) == {"f", "m"} and sens.aps == pytest.approx(np.mean(sens.ps))
    with pytest.raises(DataError, match="same 8 texts"):
        sensitivity_vs_counterfactual(sens, counterfactual_token_fairness(proba, TEXTS[:3],
                                                                          swaps=load_gender_swaps(shared=False)))


def test_text_ps_through_a_frozen_hf_encoder(tok: WordTokenizer) -> None:
    from trustnlp.models.hf import HFEncoderClassifier

    tiny = {"model_type": "bert", "vocab_size": tok.vocab_size, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32}
    torch.manual_seed(3)
    model = HFEncoderClassifier(vocab_size=tok.vocab_size, num_labels=3, encoder_config=tiny, trainable="frozen",
                                attn_implementation="eager").double()
    r = text_prediction_sensitivity(model, tok, TEXTS, GENDER)
    assert r.aps > 0 and all(np.isfinite(r.ps))
    assert model.encoder.trainable == "frozen" and not any(p.requires_grad for p in model.encoder.parameters())
