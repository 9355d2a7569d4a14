"""Intrinsic tests: WEAT/SEAT maths against hand computations, test specifications, the encoder
adapter, CEAT's random-effects combination and CrowS-Pairs scoring against per-token loops.

Statistical checks use fixed seeds; the sampled p-value must lie within 4 standard errors of the
exact one (alpha ~ 6e-5).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from trustnlp.data.tokenizers import WordTokenizer
from trustnlp.errors import ConfigError, DataError
from trustnlp.fairness.association_tests import (
    AssociationTest,
    WordSet,
    builtin_tests,
    load_seat_test,
    load_seat_tests,
    sentence_version,
)
from trustnlp.fairness.ceat import Corpus, ceat, find_contexts, load_bold_corpus, random_effects
from trustnlp.fairness.crows import (
    CausalLMScorer,
    CrowsPair,
    MaskedLMScorer,
    crows_pairs,
    load_crows_pairs,
    shared_positions,
)
from trustnlp.fairness.encoders import TextEncoder, load_encoder
from trustnlp.fairness.intrinsic import association, permutation_p_value, weat, weat_effect_size

TINY_BERT = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64}


# -- WEAT maths ---------------------------------------------------------------------------------
def _cos(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def _hand_weat(X: list, Y: list, A: list, B: list) -> tuple[float, float]:
    """Effect size and exact one-sided p-value by plain loops (Caliskan et al. 2017)."""
    def s(w: list) -> float:
        return sum(_cos(w, a) for a in A) / len(A) - sum(_cos(w, b) for b in B) / len(B)

    sx, sy = [s(x) for x in X], [s(y) for y in Y]
    d = (statistics.mean(sx) - statistics.mean(sy)) / statistics.stdev(sx + sy)
    allw = sx + sy
    observed = sum(sx) - sum(sy)
    greater = total = 0
    for xi in itertools.combinations(range(len(allw)), len(X)):
        rest = [allw[i] for i in range(len(allw)) if i not in xi]
        stat = sum(allw[i] for i in xi) - sum(rest)
        greater += stat > observed + 1e-12
        total += 1
    return d, greater / total


def test_weat_hand_worked_toy_example() -> None:
    # s(x1)=1, s(x2)=0.6-0.8=-0.2, s(y1)=-1, s(y2)=0.8-0.6=0.2 -> d = 0.8 / sqrt(2.08/3);
    # of the 6 partitions only {x1, y2} (sum 1.2) beats the observed sum 0.8 -> p = 1/6.
    X, Y, A, B = [[1, 0], [0.6, 0.8]], [[0, 1], [0.8, 0.6]], [[1, 0]], [[0, 1]]
    r = weat(X, Y, A, B, test="toy")
    assert r.effect_size == pytest.approx(0.8 / math.sqrt(2.08 / 3), rel=1e-12)
    assert r.p_value == pytest.approx(1 / 6, rel=1e-12)
    assert (r.p_value_method, r.n_partitions, r.total_partitions) == ("exact", 6, 6.0)
    assert r.statistic == pytest.approx(0.8 - (-0.8), rel=1e-12)


def test_weat_matches_independent_loop_unequal_sizes_unnormalised() -> None:
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(5, 4)) * 3, rng.normal(size=(4, 4)) + 0.3
    A, B = rng.normal(size=(3, 4)) + [1, 0, 0, 0], rng.normal(size=(2, 4)) * 0.5
    d, p = _hand_weat(X.tolist(), Y.tolist(), A.tolist(), B.tolist())
    r = weat(X, Y, A, B)
    assert r.effect_size == pytest.approx(d, rel=1e-12)
    assert r.p_value == pytest.approx(p, rel=1e-12)
    assert weat_effect_size(X, Y, A, B) == pytest.approx(d, rel=1e-12)
    assert r.sizes == {"X": 5, "Y": 4, "A": 3, "B": 2}


def test_sampled_p_value_estimates_exact_one() -> None:
    rng = np.random.default_rng(2)
    s = rng.normal(size=16) + np.r_[np.full(8, 0.4), np.zeros(8)]
    exact = permutation_p_value(s, 8, n_samples=20_000)  # C(16, 8) = 12,870 -> exact
    assert exact.method == "exact" and exact.n_partitions == 12_870
    sampled = permutation_p_value(s, 8, n_samples=5_000, seed=3)
    assert sampled.method == "sampled" and sampled.n_partitions == 5_000
    se = math.sqrt(exact.p_value * (1 - exact.p_value) / 5_000)
    assert abs(sampled.p_value - exact.p_value) < 4 * se
    # (b + 1) / (n + 1): a sampled p-value is never 0, even when no draw beats the observed sum
    far = permutation_p_value(np.r_[np.full(8, 5.0), np.zeros(8)] + np.arange(16) * 1e-3, 8, n_samples=999, seed=0)
    assert far.method == "sampled" and far.p_value == pytest.approx(1 / 1000)
    assert permutation_p_value(s, 8, n_samples=5_000, seed=3) == sampled  # seeded
    assert permutation_p_value(s, 8, n_samples=5_000, seed=4).p_value != sampled.p_value


def test_weat_errors_are_clear() -> None:
    X, Y, A, B = [[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.2, 0.9]], [[1.0, 0.0]], [[0.0, 1.0]]
    with pytest.raises(DataError, match="`X` to have at least 2"):
        weat([[1.0, 0.0]], Y, A, B)
    with pytest.raises(DataError, match="non-zero"):
        weat(X, Y, [[0.0, 0.0]], B)
    with pytest.raises(DataError, match="same embedding dimension"):
        weat(X, Y, A, [[0.0, 1.0, 0.0]])
    with pytest.raises(DataError, match="finite"):
        weat(X, Y, A, [[float("nan"), 1.0]])
    with pytest.raises(DataError, match="standard deviation is 0"):  # every target equally associated
        weat([[1.0, 1.0], [2.0, 2.0]], [[3.0, 3.0], [1.0, 1.0]], A, B)
    np.testing.assert_allclose(association([[3.0, 4.0]], [[1.0, 0.0]], [[0.0, 1.0]]), [0.6 - 0.8], rtol=1e-12)


# -- test specifications --------------------------------------------------------------------------
def test_builtin_tests_and_sentence_templates() -> None:
    tests = builtin_tests()
    assert {"flowers-insects", "gender-career", "gender-occupations"} <= set(tests)
    for t in tests.values():
        assert t.level == "word"
        assert len(t.X.examples) == len(t.Y.examples) == 8
    s = sentence_version(tests["gender-occupations"])
    assert s.name == "sent-gender-occupations" and s.level == "sentence"
    assert "This is an engineer." in s.X.examples and "The nurse is there." in s.Y.examples
    assert len(s.X.examples) == 8 * 7
    with pytest.raises(DataError, match="already a sentence test"):
        sentence_version(s)


def test_seat_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "t.jsonl"
    bad.write_text(json.dumps({"targ1": {"category": "A", "examples": ["a"]}}), encoding="utf-8")
    with pytest.raises(DataError, match=r"missing key\(s\) \['targ2', 'attr1', 'attr2'\]"):
        load_seat_test(bad)
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        load_seat_test(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_seat_test(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="Unknown SEAT test"):
        load_seat_tests(tmp_path, names=["weat99"])


# -- encoder adapter ------------------------------------------------------------------------------
WORDS = ["rose", "tulip", "ant", "wasp", "love", "joy", "filth", "agony", "this", "is", "a", "an", "the", "here",
         "john", "mary", "career", "home", "he", "she", "nurse", "said", "and", "was", "good", "bad", "."]


@pytest.fixture(scope="module")
def tiny_encoder() -> TextEncoder:
    from trustnlp.models.hf import HFEncoder

    torch.manual_seed(0)
    tok = WordTokenizer.from_vocabulary(WORDS, provenance="generator")
    body = HFEncoder(vocab_size=tok.vocab_size, pad_id=tok.pad_id, encoder_config=TINY_BERT, trainable="frozen",
                     attn_implementation="eager").double()
    return TextEncoder(body, tok, name="tiny-bert", batch_size=3)


def test_sentence_pooling_matches_manual_pooling(tiny_encoder: TextEncoder) -> None:
    texts = ["this is a rose .", "joy", "the nurse said here and here ."]
    got = tiny_encoder.sentences(texts)
    cls = TextEncoder(tiny_encoder.token_encoder, tiny_encoder.tokenizer, name="t", pooling="cls").sentences(texts)
    for i, t in enumerate(texts):  # one text at a time: no padding at all
        enc = tiny_encoder.tokenizer.encode([t])
        with torch.no_grad():
            h = tiny_encoder.token_encoder.model(input_ids=enc.input_ids).last_hidden_state[0].double()
        np.testing.assert_allclose(got[i], h.mean(0).numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(cls[i], h[0].numpy(), rtol=1e-8, atol=1e-10)


def test_static_and_contextual_word_embeddings(tiny_encoder: TextEncoder) -> None:
    emb = tiny_encoder.token_encoder.model.get_input_embeddings().weight.detach().double()
    tok = tiny_encoder.tokenizer
    np.testing.assert_allclose(tiny_encoder.words(["rose", "joy"], representation="static"),
                               emb[[tok._index["rose"], tok._index["joy"]]].numpy(), rtol=1e-12)
    words = ["the", "nurse", "said", "rose", "is", "good"]
    got = tiny_encoder.words_in_context([(words, 3, 4), (words, 1, 3)])
    enc = tok.encode_words([words])
    with torch.no_grad():
        h = tiny_encoder.token_encoder.model(input_ids=enc.input_ids).last_hidden_state[0].double()
    np.testing.assert_allclose(got[0], h[4].numpy(), rtol=1e-8, atol=1e-10)  # [CLS] shifts positions by 1
    np.testing.assert_allclose(got[1], h[2:4].mean(0).numpy(), rtol=1e-8, atol=1e-10)
    with pytest.raises(DataError, match="span"):
        tiny_encoder.words_in_context([(words, 4, 4)])


def test_missing_words_are_an_error(tiny_encoder: TextEncoder) -> None:
    assert tiny_encoder.missing(["rose", "zebra", "qwerty"]) == ["zebra", "qwerty"]
    with pytest.raises(DataError, match=r"cannot represent 2 word\(s\) \['zebra', 'qwerty'\]"):
        tiny_encoder.words(["rose", "zebra", "qwerty"])
    with pytest.raises(ConfigError, match="`pooling`"):
        TextEncoder(tiny_encoder.token_encoder, tiny_encoder.tokenizer, name="t", pooling="max")


# -- CEAT ----------------------------------------------------------------------------------------
def test_random_effects_equals_hand_computation() -> None:
    es, v = [0.2, 1.1, 1.9, 0.4], [0.01, 0.02, 0.015, 0.05]
    w = [1 / x for x in v]
    sw = sum(w)
    q = sum(wi * e * e for wi, e in zip(w, es)) - sum(wi * e for wi, e in zip(w, es)) ** 2 / sw
    assert q > len(es) - 1  # heterogeneous: tau^2 > 0
    tau2 = (q - (len(es) - 1)) / (sw - sum(wi * wi for wi in w) / sw)
    ws = [1 / (x + tau2) for x in v]
    ces = sum(wi * e for wi, e in zip(ws, es)) / sum(ws)
    var = 1 / sum(ws)
    p = 0.5 * math.erfc(ces / math.sqrt(var) / math.sqrt(2))
    m = random_effects(es, v)
    assert m.tau2 == pytest.approx(tau2, rel=1e-12) and m.q == pytest.approx(q, rel=1e-12)
    assert m.combined_effect_size == pytest.approx(ces, rel=1e-12)
    assert m.variance == pytest.approx(var, rel=1e-12)
    assert m.p_value == pytest.approx(p, rel=1e-9)
    # homogeneous effect sizes: tau^2 = 0 and CES is the inverse-variance weighted mean
    m0 = random_effects([0.5, 0.7, 0.9], [0.04, 0.05, 0.06])
    assert m0.tau2 == 0.0
    assert m0.combined_effect_size == pytest.approx((0.5 / 0.04 + 0.7 / 0.05 + 0.9 / 0.06) / (1 / 0.04 + 1 / 0.05 + 1 / 0.06))
    with pytest.raises(DataError, match="> 0"):
        random_effects([0.1, 0.2], [0.1, 0.0])


def _toy_corpus() -> list[str]:
    return ["The rose was good.", "A tulip is here.", "The ant was bad.", "This wasp is bad.", "Love and joy.",
            "Joy is good.", "Filth and agony.", "The agony was bad.", "A rose and a tulip.", "An ant is here."]


def _toy_test() -> AssociationTest:
    return AssociationTest("toy", WordSet("F", ("rose", "tulip")), WordSet("I", ("ant", "wasp")),
                           WordSet("P", ("love", "joy")), WordSet("U", ("filth", "agony")))


def test_ceat_with_one_context_per_word_is_weat(tiny_encoder: TextEncoder) -> None:
    corpus = Corpus(tuple(_toy_corpus()), name="toy")
    r = ceat(_toy_test(), tiny_encoder, corpus, n_samples=20, max_contexts=1, seed=0)
    # every draw uses the same (only) context of each word: all sampled effect sizes are equal, Q = 0
    assert r.meta.tau2 == 0.0 and r.effect_sizes["std"] == pytest.approx(0.0, abs=1e-12)
    assert r.coverage["X"] == {"rose": 2, "tulip": 2} and r.coverage_fraction == 1.0
    first = {w: occ[0] for w, occ in find_contexts(corpus, ["rose", "tulip", "ant", "wasp", "love", "joy", "filth", "agony"]).items()}
    assert all(len(v) >= 1 for v in first.values())
    # recompute the single effect size from the contexts CEAT sampled (seeded per word)
    emb = {}
    for w in first:
        occ = find_contexts(corpus, [w])[w]
        rng = np.random.default_rng([0, __import__("zlib").crc32(w.encode())])
        i, s, e = occ[int(rng.choice(len(occ), size=1, replace=False)[0])]
        words = re.findall(r"\w+(?:['’]\w+)?|[^\w\s]", corpus.sentences[i])
        emb[w] = tiny_encoder.words_in_context([(words, s, e)])[0]
    d = weat_effect_size([emb["rose"], emb["tulip"]], [emb["ant"], emb["wasp"]], [emb["love"], emb["joy"]],
                         [emb["filth"], emb["agony"]])
    assert r.effect_size == pytest.approx(d, rel=1e-9)
    assert r.to_dict()["pooling"] == "mean" and r.to_dict()["representation"] == "contextual-word"


def test_ceat_missing_words(tiny_encoder: TextEncoder) -> None:
    t = AssociationTest("m", WordSet("F", ("rose", "tulip", "lily")), WordSet("I", ("ant", "wasp")),
                        WordSet("P", ("love", "joy")), WordSet("U", ("filth", "agony")))
    with pytest.raises(DataError, match=r"1 word\(s\) have no context .*'X': \['lily'\]"):
        ceat(t, tiny_encoder, _toy_corpus(), n_samples=10)
    r = ceat(t, tiny_encoder, _toy_corpus(), n_samples=10, max_contexts=2, on_missing="drop")
    assert r.missing["X"] == ("lily",) and r.coverage_fraction == pytest.approx(8 / 9)


# -- CrowS-Pairs ---------------------------------------------------------------------------------
def test_shared_positions_hand_worked() -> None:
    # [CLS] the poor are lazy [SEP] vs [CLS] the rich are lazy [SEP]: U = all but position 2
    assert shared_positions([2, 10, 11, 12, 13, 3], [2, 10, 21, 12, 13, 3]) == ([0, 1, 3, 4, 5], [0, 1, 3, 4, 5])
    # an insertion: [CLS] a b [SEP] vs [CLS] a x y b [SEP]
    assert shared_positions([2, 5, 6, 3], [2, 5, 8, 9, 6, 3]) == ([0, 1, 2, 3], [0, 1, 4, 5])


PAIR_TEXTS = [("the poor are lazy .", "the rich are lazy ."), ("she was a bad nurse .", "he was a bad nurse ."),
              ("the old man is slow", "the young man is slow")]


@pytest.fixture(scope="module")
def mlm() -> tuple[torch.nn.Module, WordTokenizer]:
    from transformers import BertConfig, BertForMaskedLM

    tok = WordTokenizer.build([t for p in PAIR_TEXTS for t in p], provenance="public")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size + 1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, attn_implementation="eager")
    return BertForMaskedLM(cfg).double().eval(), tok


def _mlm_scorer(model: torch.nn.Module, tok: WordTokenizer, tokens: str | None = None) -> MaskedLMScorer:
    return MaskedLMScorer(lambda i, m: model(input_ids=i, attention_mask=m).logits,
                          lambda s: tok.encode([s]).input_ids[0].tolist(), mask_id=tok.vocab_size,
                          special_ids=[tok.cls_id, tok.sep_id, tok.pad_id], tokens=tokens, batch_size=2)


def test_masked_lm_pll_matches_per_token_loop(mlm: tuple[torch.nn.Module, WordTokenizer]) -> None:
    model, tok = mlm
    more, less = PAIR_TEXTS[0]
    ids_m, ids_l = (tok.encode([s]).input_ids[0].tolist() for s in (more, less))

    def loop(ids: list[int], positions: list[int], all_at_once: bool) -> float:
        total = 0.0
        rows = [positions] if all_at_once else [[p] for p in positions]
        for masked in rows:
            x = torch.tensor([[tok.vocab_size if j in masked else t for j, t in enumerate(ids)]])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=x).logits[0], -1)
            total += sum(float(lp[p, ids[p]]) for p in masked)
        return total

    # unmodified: positions 1, 3, 4, 5 ("the", "are", "lazy", "."); modified: position 2
    got = _mlm_scorer(model, tok).score_pair(more, less)
    assert got[0] == pytest.approx(loop(ids_m, [1, 3, 4, 5], False), rel=1e-10)
    assert got[1] == pytest.approx(loop(ids_l, [1, 3, 4, 5], False), rel=1e-10)
    got = _mlm_scorer(model, tok, "modified").score_pair(more, less)
    assert got == pytest.approx((loop(ids_m, [2], True), loop(ids_l, [2], True)), rel=1e-10)


def test_causal_lm_log_likelihood_matches_loop() -> None:
    from trustnlp.models.lm import CausalLM

    tok = WordTokenizer.build([t for p in PAIR_TEXTS for t in p], provenance="public")
    torch.manual_seed(0)
    lm = CausalLM(vocab_size=tok.vocab_size, backbone="transformer", layers=1, dim=16, heads=2, max_len=32).double().eval()
    scorer = CausalLMScorer(lambda i, m: lm(i, m), lambda s: tok.encode([s]).input_ids[0].tolist(),
                            special_ids=[tok.cls_id, tok.sep_id, tok.pad_id])
    more, less = PAIR_TEXTS[1]
    got = scorer.score_pair(more, less)
    for text, value in zip((more, less), got):
        ids = tok.encode([text]).input_ids[0].tolist()
        total = 0.0
        for t in range(1, len(ids)):  # log P(s_t | s_<t) with the prefix alone
            with torch.no_grad():
                x = torch.tensor([ids[:t]])
                total += float(torch.log_softmax(lm(x, torch.ones_like(x))[0, -1], -1)[ids[t]])
        assert value == pytest.approx(total, rel=1e-10)
    assert scorer.describe()["tokens"] == "all"


class _FixedScorer:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def score_pair(self, more: str, less: str) -> tuple[float, float]:
        return self.scores[more], self.scores[less]

    def describe(self) -> dict[str, str]:
        return {"model": "fixed", "lm": "masked", "tokens": "unmodified"}


def test_crows_metric_aggregation() -> None:
    pairs = [CrowsPair(0, "a1", "b1", "stereo", "gender"), CrowsPair(1, "a2", "b2", "stereo", "race-color"),
             CrowsPair(2, "a3", "b3", "antistereo", "gender"), CrowsPair(3, "a4", "b4", "stereo", "gender")]
    scores = {"a1": -1.0, "b1": -2.0, "a2": -3.0, "b2": -1.0, "a3": -1.0, "b3": -1.5, "a4": -2.0, "b4": -2.0}
    r = crows_pairs(pairs, _FixedScorer(scores))
    assert r.metric_score == 0.5 and r.n_ties == 1  # pair 3 ties: counts as not preferring sent_more
    assert r.stereo_score == pytest.approx(1 / 3) and r.antistereo_score == 1.0
    assert r.by_bias_type == {"gender": {"score": pytest.approx(2 / 3), "n": 3}, "race-color": {"score": 0.0, "n": 1}}
    assert r.p_value == pytest.approx(1.0)  # 2 of 4: the exact binomial test cannot reject
    r2 = crows_pairs(pairs[:2], _FixedScorer(scores))
    assert r2.antistereo_score is None and "antistereo_score" in r2.undefined


# -- shared data (../shared/data) -----------------------------------------------------------------
@pytest.mark.shared
def test_seat_files_load(shared_data: Path) -> None:
    tests = load_seat_tests(shared_data / "seat")
    assert len(tests) == 46
    w6, s6 = tests["weat6"], tests["sent-weat6"]
    assert (w6.X.category, w6.A.category, len(w6.X.examples)) == ("MaleNames", "Career", 8)
    assert s6.level == "sentence" and len(s6.X.examples) == 64 and "This is John." in s6.X.examples
    assert (len(tests["sent-weat1"].A.examples), len(tests["sent-weat1"].B.examples)) == (215, 250)


@pytest.mark.shared
def test_minilm_weat6_and_sent_weat6_subset(shared_data: Path) -> None:
    tests = load_seat_tests(shared_data / "seat", names=["weat6", "sent-weat6"])
    enc = load_encoder("minilm")
    w = {k: enc.words(v.examples) for k, v in tests["weat6"].sets.items()}
    r = weat(w["X"], w["Y"], w["A"], w["B"], test="weat6")
    assert r.p_value_method == "exact" and r.total_partitions == 12_870
    # MiniLM associates male names with career words (regression value of this encoder, mean pooling)
    assert r.effect_size == pytest.approx(1.021, abs=0.01) and r.p_value < 0.05
    sub = {k: v.examples[::4] for k, v in tests["sent-weat6"].sets.items()}  # every 4th template sentence
    s = {k: enc.sentences(v) for k, v in sub.items()}
    r2 = weat(s["X"], s["Y"], s["A"], s["B"], test="sent-weat6", n_samples=2_000, seed=0)
    assert r2.p_value_method == "sampled" and r2.effect_size > 0.5


@pytest.mark.shared
def test_ceat_on_bold_reports_coverage(shared_data: Path, tiny_encoder: TextEncoder) -> None:
    corpus = load_bold_corpus(shared_data / "bold", domains=("gender",))
    raw = json.loads((shared_data / "bold" / "wikipedia" / "gender_wiki.json").read_text(encoding="utf-8"))
    sents = [s for g in raw.values() for ss in g.values() for s in ss if s.strip()]
    assert len(corpus.sentences) == len(sents) == 3204
    t = AssociationTest("mini", WordSet("M", ("he", "john")), WordSet("F", ("she", "mary")),
                        WordSet("C", ("career",)), WordSet("H", ("home", "zebraquux")))
    r = ceat(t, tiny_encoder, corpus, n_samples=30, max_contexts=2, on_missing="drop")
    for word in ("he", "she", "john", "career"):  # an independent whole-word, case-insensitive count
        pattern = re.compile(rf"(?<![\w]){word}(?![\w'’])", re.IGNORECASE)
        expected = sum(len(pattern.findall(s)) for s in sents)
        got = r.coverage["X"].get(word, r.coverage["Y"].get(word, r.coverage["A"].get(word)))
        assert got == expected
    assert r.missing["B"] == ("zebraquux",) and r.coverage_fraction == pytest.approx(6 / 7)
    assert r.meta.n == 30 and np.isfinite(r.effect_size)


@pytest.mark.shared
def test_crows_pairs_file_and_small_scoring(shared_data: Path, mlm: tuple[torch.nn.Module, WordTokenizer]) -> None:
    pairs = load_crows_pairs(shared_data / "crows_pairs" / "crows_pairs_anonymized.csv")
    assert len(pairs) == 1508
    counts = {t: sum(p.bias_type == t for p in pairs) for t in ("race-color", "gender", "disability")}
    assert counts == {"race-color": 516, "gender": 262, "disability": 60}
    sub = load_crows_pairs(shared_data / "crows_pairs" / "crows_pairs_anonymized.csv", bias_types=["gender"], limit=6)
    tok = WordTokenizer.build([t for p in sub for t in (p.sent_more, p.sent_less)], provenance="public")
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=tok.vocab_size + 1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=128)
    model = BertForMaskedLM(cfg).eval()
    r = crows_pairs(sub, _mlm_scorer(model, tok))
    assert r.n_pairs == 6 and r.n_stereo + r.n_antistereo == 6 and set(r.by_bias_type) == {"gender"}
    assert 0.0 <= r.metric_score <= 1.0 and r.options["tokens"] == "unmodified"
