"""Tests of counterfactual role-reversal distillation and generation disparity (trustnlp.fairness.generation)."""

from __future__ import annotations

import itertools
import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from trustnlp.data.tokenizers import WordTokenizer
from trustnlp.errors import ConfigError, DataError
from trustnlp.fairness.association_tests import AssociationTest, WordSet
from trustnlp.fairness.counterfactual import load_gender_swaps, swap_text
from trustnlp.fairness.encoders import find_token_embedding
from trustnlp.fairness.generation import (
    PROFESSION_SOURCE,
    DistillConfig,
    GenderPairs,
    build_vocabulary,
    builtin_profession_prompts,
    combine_distributions,
    counterfactual_augment,
    disparity,
    distill,
    downstream_fairness,
    embedding_weat,
    fit_probe,
    gender_pairs,
    generate_continuations,
    hidden_features,
    kl_to_teacher,
    load_bold_gender,
    load_bold_professions,
    polarity_disparity,
    polarity_labels,
    prepare_distill_data,
    run_distill,
    select_profession_prompts,
    sentiment_scores,
    split_bold_by_person,
    summarise_distill,
    summary_result,
    teacher_distribution,
    token_swap,
)
from trustnlp.fairness.intrinsic import weat_effect_size
from trustnlp.models.io import load_model
from trustnlp.models.lm import CausalLM
from trustnlp.results import Result, read_result, write_result
from trustnlp.tasks import EncodedData

TOY_WORDS = ["he", "she", "his", "her", "actor", "actress", "is", "a", "good", "bad", "great", "film", "."]
TOY_PAIRS = GenderPairs(pairs=(("he", "she"), ("his", "her"), ("actor", "actress")),
                        male=frozenset({"he", "his", "actor"}), female=frozenset({"she", "her", "actress"}))
TOY_CORPUS = [
    "he is a good actor .", "she is a great actress .", "his film is good .", "her film is bad .",
    "he is a bad actor .", "she is a good actress .", "a film is a film .", "his actor is great .",
]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _peaked_lm(vocab: int, seed: int, scale: float = 30.0) -> CausalLM:
    """A random causal LM with sharp, context-dependent next-token distributions."""
    torch.manual_seed(seed)
    lm = CausalLM(vocab_size=vocab, backbone="transformer", layers=2, dim=16, heads=2, max_len=16, dropout=0.0)
    with torch.no_grad():
        lm.lm_head.weight.mul_(scale)
    return lm.eval()


# ------------------------------------------------------------------------------------------ vocabulary


def test_vocabulary_holds_every_gender_pair_as_single_tokens():
    pairs = gender_pairs(shared=False)
    assert ("he", "she") in pairs.pairs and ("his", "her") in pairs.pairs and ("actor", "actress") in pairs.pairs
    words = [w for p in pairs.pairs for w in p]
    assert len(words) == len(set(words)), "pairs must be disjoint"
    tok = build_vocabulary(["the actor said hello .", "play some jazz", "a friend is great"], pairs, max_size=None,
                           min_count=1)
    assert tok.vocab_size == 4 + 12 + len(set(pairs.words()) - {"actor"})  # specials, corpus words, added pairs
    ids = {}
    for w in words:
        enc = tok.encode([w], add_special_tokens=False)
        assert enc.input_ids.shape == (1, 1), w
        ids[w] = int(enc.input_ids[0, 0])
        assert ids[w] not in (tok.unk_id, tok.pad_id, tok.cls_id, tok.sep_id), w
    assert len(set(ids.values())) == len(words)
    swap = token_swap(tok, pairs)
    perm = swap.perm
    assert torch.equal(perm[perm], torch.arange(tok.vocab_size))  # an involution
    for a, b in pairs.pairs:
        assert int(perm[ids[a]]) == ids[b] and int(perm[ids[b]]) == ids[a]
    moved = set(torch.nonzero(swap.gendered).flatten().tolist())
    assert moved == set(ids.values())
    x = tok.encode(["He said his actor friend is great"]).input_ids
    assert tok.unk_id not in x
    assert tok.decode(swap.swap_ids(x)[0].tolist()) == "she said her actress friend is great"


def test_token_swap_refuses_a_vocabulary_without_the_pair_words():
    tok = WordTokenizer.from_vocabulary(["he", "she", "his", "actor"])
    with pytest.raises(DataError, match="single tokens"):
        token_swap(tok, TOY_PAIRS)
    loose = token_swap(tok, TOY_PAIRS, strict=False)
    assert loose.missing == (("his", "her"), ("actor", "actress")) and len(loose.id_pairs) == 1


# ------------------------------------------------------------------------------------------ teacher targets


@pytest.mark.parametrize("combine", ["mean", "max", "expmean", "replace"])
def test_perturbed_teacher_distribution_matches_reference_and_is_symmetric(float64_default, combine):
    tok = WordTokenizer.from_vocabulary(TOY_WORDS)
    swap = token_swap(tok, TOY_PAIRS)
    teacher = _peaked_lm(tok.vocab_size, seed=3)
    enc = tok.encode(["he is a good actor", "her film is bad . his", "a great film ."])
    x, mask = enc.input_ids, enc.attention_mask
    px = swap.swap_ids(x)
    temperature = 1.7
    out = teacher_distribution(teacher, torch.cat([x, px]), torch.cat([mask, mask]), temperature=temperature,
                               swap=swap, combine=combine)
    # reference from the raw logits, in numpy
    with torch.no_grad():
        lx = teacher(x, mask).numpy() / temperature
        lpx = teacher(px, mask).numpy() / temperature
    perm = swap.perm.numpy()

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def reference(a, b):
        p, q = softmax(a), softmax(b)[..., perm]
        g = perm != np.arange(perm.size)
        r = {"mean": (p + q) / 2, "max": np.maximum(p, q), "expmean": np.sqrt(p * q), "replace": np.where(g, q, p)}
        r = r[combine]
        return r / r.sum(-1, keepdims=True)

    n = x.shape[0]
    np.testing.assert_allclose(out[:n].numpy(), reference(lx, lpx), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out[n:].numpy(), reference(lpx, lx), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out.sum(-1).numpy(), 1.0, rtol=1e-10)
    assert (out >= 0).all()
    real = mask.bool()
    swapped_back = out[n:][..., swap.perm]
    if combine == "replace":  # documented: not symmetric
        assert (swapped_back[real] - out[:n][real]).abs().max() > 1e-3
    else:  # the target of P(x) is the target of x with its gendered entries swapped
        np.testing.assert_allclose(swapped_back[real].numpy(), out[:n][real].numpy(), rtol=1e-10, atol=1e-14)
    # ... while the plain teacher is not symmetric (the test has teeth)
    plain = teacher_distribution(teacher, torch.cat([x, px]), torch.cat([mask, mask]), temperature=temperature)
    assert (plain[n:][..., swap.perm][real] - plain[:n][real]).abs().max() > 1e-3


def test_combine_max_renormalises_elementwise_max(float64_default):
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.1, 0.3, 0.6]])
    out = combine_distributions(p.log(), q.log(), "max")
    np.testing.assert_allclose(out.numpy(), [[0.7 / 1.6, 0.3 / 1.6, 0.6 / 1.6]], rtol=1e-12)


# ------------------------------------------------------------------------------------------ distillation


def test_plain_distillation_cuts_kl_to_teacher_by_half():
    from trustnlp.config import TrainConfig
    from trustnlp.tasks import LMTask
    from trustnlp.train import fit

    tok = WordTokenizer.from_vocabulary(TOY_WORDS)
    enc = tok.encode(TOY_CORPUS, max_length=16)
    data = EncodedData(enc.input_ids, enc.attention_mask)
    torch.manual_seed(0)
    teacher = CausalLM(vocab_size=tok.vocab_size, backbone="transformer", layers=1, dim=32, heads=2, max_len=16,
                       dropout=0.0)
    cfg = TrainConfig(task="lm", model="transformer", max_steps=120, batch_size=8, physical_batch_size=8, lr=1e-2,
                      seed=0, device="cpu", eval_every=0, scheduler="constant")
    fit(teacher, LMTask(), data, config=cfg, progress=False)
    torch.manual_seed(1)
    student = CausalLM(vocab_size=tok.vocab_size, backbone="transformer", layers=1, dim=16, heads=2, max_len=16,
                       dropout=0.0)
    before = kl_to_teacher(student, teacher, data)
    assert before > 0.2  # the trained teacher is far from a fresh student
    distill(student, teacher, tok, TOY_CORPUS, alpha=1.0, temperature=1.0, max_steps=150, batch_size=8, lr=1e-2,
            max_length=16)
    after = kl_to_teacher(student, teacher, data)
    assert after <= 0.5 * before, (before, after)


def test_cda_doubles_gendered_sequences():
    swaps = load_gender_swaps(shared=False)
    texts = ["he is an actor", "the weather is nice", "my sister called her friend", "play jazz"]
    aug, added = counterfactual_augment(texts, swaps)
    assert added == 2
    assert aug[:4] == texts
    assert aug[4:] == ["she is an actress", "my brother called his friend"]

    def gendered(ts):
        return sum(1 for t in ts if swap_text(t, swaps)[1] > 0)

    assert gendered(aug) == 2 * gendered(texts)
    assert len(aug) - gendered(aug) == len(texts) - gendered(texts)


# ------------------------------------------------------------------------------------------ generation and scores


def test_batched_generation_equals_causallm_generate(float64_default):
    tok = WordTokenizer.from_vocabulary(TOY_WORDS)
    lm = _peaked_lm(tok.vocab_size, seed=5, scale=1.0)
    prompts = ["he is", "her film is a", "a", "she", "his actor"]
    seeds = [11, 12, 13, 14, 15]
    options = {"max_new_tokens": 8, "top_k": 12, "temperature": 2.0}
    batched = generate_continuations(lm, tok, prompts, seeds=seeds, batch_size=2, **options)
    assert min(len(c) for c in batched) < 8 <= max(len(c) for c in batched)  # some stop at the end token
    for prompt, seed, got in zip(prompts, seeds, batched):
        ids = [tok.cls_id] + tok.encode([prompt], add_special_tokens=False).input_ids[0].tolist()
        full = lm.generate(torch.tensor(ids), generator=torch.Generator().manual_seed(seed), **options)
        full = full.tolist()[len(ids):]
        want = full[: full.index(tok.sep_id)] if tok.sep_id in full else full
        assert got == want


def test_vader_sentiment_on_fixed_strings():
    np.testing.assert_allclose(sentiment_scores(["good", "bad", "the table"]), [0.4404, -0.5423, 0.0], atol=1e-4)


def test_disparity_and_bootstrap_interval_on_a_hand_example():
    male = sentiment_scores(["good", "good", "the table"])
    female = sentiment_scores(["bad", "the table"])
    d = disparity(male, female, n_bootstrap=20000, seed=7)
    assert d.value == pytest.approx(abs((0.4404 * 2) / 3 - (-0.5423) / 2), abs=1e-4)
    assert (d.mean_male, d.mean_female, d.n_male, d.n_female) == (pytest.approx(male.mean()),
                                                                  pytest.approx(female.mean()), 3, 2)
    # the exact bootstrap distribution, by enumerating all 3^3 x 2^2 equally likely resamples
    values = np.sort([abs(np.mean(a) - np.mean(b)) for a in itertools.product(male, repeat=3)
                      for b in itertools.product(female, repeat=2)])
    atoms, counts = np.unique(np.round(values, 12), return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    for q in (0.025, 0.975):
        assert np.abs(cdf - q).min() > 0.01  # far from a jump: the Monte-Carlo quantile is the exact atom
    exact = [atoms[np.searchsorted(cdf, q)] for q in (0.025, 0.975)]
    np.testing.assert_allclose(d.ci, exact, atol=1e-10)
    assert disparity(female, male, n_bootstrap=100, seed=1).value == pytest.approx(d.value)
    const = disparity([0.5, 0.5], [0.1, 0.1, 0.1], n_bootstrap=50, seed=0)
    assert const.ci == pytest.approx((0.4, 0.4)) and const.value == pytest.approx(0.4)
    with pytest.raises(DataError, match="female"):
        disparity([0.1], [], n_bootstrap=10)


# ------------------------------------------------------------------------------------------ BOLD split


def _toy_bold():
    wiki = {"American_actors": {f"M{i}": [f"M{i} is an actor .", f"M{i} was born ."] for i in range(10)},
            "American_actresses": {f"F{i}": [f"F{i} is an actress ."] for i in range(5)}}
    prompts = {g: {n: [s.split(" is")[0].split(" was")[0] + " is "] for n, ss in ps.items() for s in ss[:1]}
               for g, ps in wiki.items()}
    return wiki, prompts


def _check_split(wiki, prompts, split):
    assert not split.train_people & split.heldout_people
    assert split.train_people | split.heldout_people == {n for g in wiki.values() for n in g}
    owner = {}
    for g in wiki.values():
        for n, ss in g.items():
            for s in ss:
                owner.setdefault(s, set()).add(n)
    assert all(owner[s] & split.train_people for s in split.train_sentences)
    assert all(owner[s] & split.heldout_people for s in split.heldout_sentences)
    assert sorted(split.train_sentences) == sorted(s for g in wiki.values() for n, ss in g.items()
                                                   if n in split.train_people for s in ss)
    assert all(person in split.heldout_people for _, person, _ in split.heldout_prompts)
    assert sum(len(ps) for g in prompts.values() for n, ps in g.items() if n in split.heldout_people) == \
        len(split.heldout_prompts)
    for group in ("male", "female"):
        assert any(g == group for g, _, _ in split.heldout_prompts)


def test_split_by_person_on_toy_data():
    wiki, prompts = _toy_bold()
    split = split_bold_by_person(wiki, prompts, heldout_fraction=0.2, seed=0)
    _check_split(wiki, prompts, split)
    assert len(split.heldout_people) == 2 + 1  # 20% of each group, rounded, at least one
    assert split == split_bold_by_person(wiki, prompts, heldout_fraction=0.2, seed=0)
    others = {split_bold_by_person(wiki, prompts, heldout_fraction=0.2, seed=s).heldout_people for s in range(1, 6)}
    assert len(others | {split.heldout_people}) > 1


@pytest.mark.shared
def test_bold_split_by_person_has_no_person_overlap(shared_data):
    if not (shared_data / "bold" / "wikipedia" / "gender_wiki.json").is_file():
        pytest.skip("../shared/data/bold has no gender_wiki.json")
    wiki, prompts, files = load_bold_gender(shared_data / "bold")
    assert len(files) == 2
    split = split_bold_by_person(wiki, prompts, heldout_fraction=0.2, seed=0)
    _check_split(wiki, prompts, split)
    for group in wiki:
        n = len(wiki[group])
        held = sum(1 for p in wiki[group] if p in split.heldout_people)
        assert held == round(0.2 * n)
    heldout_text = set(split.heldout_sentences)
    assert not heldout_text & set(split.train_sentences)


# ------------------------------------------------------------------------------------------ the study


def _tiny_config(**kw):
    base = dict(bold="off", shared_swaps=False, corpus_size=150, teacher_layers=1, teacher_dim=16, teacher_heads=2,
                teacher_epochs=1, epochs=1, batch_size=32, max_length=24, vocab_size=300, min_count=1,
                n_builtin_pairs=4, max_new_tokens=4, n_bootstrap=50, progress=False)
    return DistillConfig(**{**base, **kw})


def test_run_distill_end_to_end_reuses_the_teacher(tmp_path):
    teacher_dir = tmp_path / "teacher"
    first = run_distill(_tiny_config(mitigation="none", teacher_dir=str(teacher_dir)), tmp_path / "none")
    weights = teacher_dir / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = run_distill(_tiny_config(mitigation="both", combine="max", teacher_dir=str(teacher_dir)),
                         tmp_path / "both")
    again = run_distill(_tiny_config(mitigation="none", teacher_dir=str(teacher_dir)), tmp_path / "again")
    assert weights.stat().st_mtime_ns == stamp  # the cached teacher was reused, not retrained
    assert first.data["teacher"]["fingerprint"] == second.data["teacher"]["fingerprint"]
    skip = {"seconds", "train_seconds", "evaluation_seconds"}
    assert {k: v for k, v in again.metrics.items() if k not in skip} == \
        {k: v for k, v in first.metrics.items() if k not in skip}  # deterministic
    assert again.rows == first.rows
    with pytest.raises(ConfigError, match="cached teacher"):
        run_distill(_tiny_config(teacher_dim=24, teacher_dir=str(teacher_dir)), tmp_path / "other")
    assert first.data["fallback"] and "built-in corpus only" in first.data["fallback"]
    saved = read_result(tmp_path / "both" / "results.json")
    assert saved.kind == "distill" and saved.config["mitigation"] == "both"
    m = saved.metrics
    assert m["combine"] == "max" and first.metrics["combine"] is None
    assert m["n_counterfactual_sequences"] == m["n_gendered_sequences"] > 0
    assert m["n_train_sequences"] == first.metrics["n_train_sequences"] + m["n_counterfactual_sequences"]
    assert m["perplexity"] > 1 and m["kl_to_teacher"] >= 0 and math.isfinite(m["teacher_perplexity"])
    lo, hi = m["sentiment_disparity_ci95"]
    assert 0 <= lo <= hi and m["sentiment_disparity"] == pytest.approx(
        abs(m["mean_sentiment_male"] - m["mean_sentiment_female"]))
    # the corpus is too small for built-in occupation prompts: a null headline with its reason
    assert m["n_profession_prompts"] == 0 and m["gender_disparity"] is None
    assert "profession prompts" in saved.null_reasons["metrics.gender_disparity"]
    for key in ("intrinsic_weat_mean_abs_effect", "intrinsic_weat_mean_abs_effect_init", "downstream_accuracy",
                "downstream_flip_rate"):
        assert key in m and (m[key] is not None or f"metrics.{key}" in saved.null_reasons), key
    assert 0 < len(saved.rows) <= 20 and {"prompt_male", "continuation_female"} <= set(saved.rows[0])
    student = load_model(tmp_path / "both" / "student")
    assert student.task == "lm" and student.extra["mitigation"] == "both"
    assert json.loads((tmp_path / "both" / "results.json").read_text())["artifacts"]["student"] == "student"


def test_summarise_distill_paired_by_seed(tmp_path):
    numbers = {"none": {0: (0.10, 50.0), 1: (0.20, 60.0), 2: (0.30, 40.0)},
               "cda": {0: (0.05, 55.0), 1: (0.15, 63.0), 2: (0.15, 44.0)}}
    for mitigation, seeds in numbers.items():
        for seed, (d, ppl) in seeds.items():
            write_result(Result(kind="distill", config={}, seed=seed, data={},
                                metrics={"gender_disparity": d, "perplexity": ppl, "kl_to_teacher": 0.1}),
                         tmp_path / mitigation / f"seed-{seed}" / "results.json")
    s = summarise_distill(tmp_path)["mitigations"]
    rel = np.array([0.05 / 0.10, 0.15 / 0.20, 0.15 / 0.30]) - 1
    half = stats.t.ppf(0.975, 2) * rel.std(ddof=1) / math.sqrt(3)
    assert s["cda"]["relative_change_vs_baseline"]["mean"] == pytest.approx(rel.mean())
    assert s["cda"]["relative_change_vs_baseline"]["ci95"] == pytest.approx([rel.mean() - half, rel.mean() + half])
    assert s["cda"]["gender_disparity"]["mean"] == pytest.approx(0.35 / 3)
    ppl = np.array([55 / 50, 63 / 60, 44 / 40]) - 1
    assert s["cda"]["relative_perplexity_increase"]["mean"] == pytest.approx(ppl.mean())
    assert s["cda"]["difference_vs_baseline"]["mean"] == pytest.approx(-0.25 / 3)
    assert s["none"]["relative_change_vs_baseline"]["mean"] == pytest.approx(0.0)


def test_run_distill_headline_on_builtin_occupation_prompts(tmp_path):
    r = run_distill(_tiny_config(corpus_size=400, n_profession_prompts=2, probe=False, evaluate_teacher=False,
                                 n_builtin_pairs=2), tmp_path / "run")
    m = r.metrics
    assert r.data["profession_prompts"]["n_professions"] == m["n_professions"] == 28
    assert m["n_profession_prompts"] == 28 * 2
    pol = m["profession_polarity"]
    assert m["gender_disparity"] == pytest.approx(np.mean([abs(v["skew"]) for v in pol.values()]), abs=1e-12)
    assert m["gender_polarity_skew"] == pytest.approx(np.mean([v["skew"] for v in pol.values()]), abs=1e-12)
    assert all(v["skew"] == (v["male_leaning"] - v["female_leaning"]) / v["n"] for v in pol.values())
    assert 0 <= m["gendered_share"] <= 1 and 0 <= m["profession_prompt_unk_share"] <= 1
    assert m["downstream_accuracy"] is None and r.null_reasons["metrics.downstream_accuracy"] == "probe is off"


# ------------------------------------------------------------------------------------------ polarity disparity


def _exact_polarity_bootstrap(labels_by_prof):
    """Every equally likely bootstrap resample (each profession resampled to its size), enumerated."""
    per = []
    for lab in labels_by_prof:
        per.append([Fraction(sum(c), len(lab)) for c in itertools.product(lab, repeat=len(lab))])
    return [sum(abs(v) for v in combo) / len(combo) for combo in itertools.product(*per)]


def _exact_sign_flip_null(sizes, value):
    """Mean and upper tail P(stat >= value) of mean_p |S_p| / n_p, S_p a sum of g_p fair +-1 (sizes: (g_p, n_p))."""
    laws = [[(Fraction(abs(2 * k - g), n), Fraction(math.comb(g, k), 2**g)) for k in range(g + 1)] for g, n in sizes]
    mean, tail = Fraction(0), Fraction(0)
    for combo in itertools.product(*laws):
        stat = sum(v for v, _ in combo) / len(combo)
        prob = math.prod(q for _, q in combo)
        mean += prob * stat
        tail += prob * (stat >= Fraction(value).limit_denominator(1000))
    return mean, tail


def test_polarity_disparity_on_a_hand_example(float64_default):
    # profession a: labels +1 -1 0 0 +1 (one 1-1 tie is neutral); b: -1 -1 +1
    male = [2, 0, 1, 0, 3, 0, 0, 1]
    female = [0, 1, 1, 0, 1, 2, 1, 0]
    prof = ["a"] * 5 + ["b"] * 3
    np.testing.assert_array_equal(polarity_labels(male, female), [1, -1, 0, 0, 1, -1, -1, 1])
    d = polarity_disparity(male, female, prof, n_bootstrap=20000, confidence=0.9, seed=3)
    skew_a, skew_b = Fraction(2 - 1, 5), Fraction(1 - 2, 3)
    assert d.value == pytest.approx(float((abs(skew_a) + abs(skew_b)) / 2), rel=0, abs=1e-15)
    assert d.skew == pytest.approx(float((skew_a + skew_b) / 2), rel=0, abs=1e-15)
    assert d.gendered_share == 7 / 8
    assert dict(d.by_profession["a"]) == {"n": 5, "skew": 0.2, "male_leaning": 2, "female_leaning": 1,
                                          "gendered_share": 0.8}
    assert dict(d.by_profession["b"]) == {"n": 3, "skew": -1 / 3, "male_leaning": 1, "female_leaning": 2,
                                          "gendered_share": 1.0}
    # the 90% bootstrap interval: exact quantiles of the enumerated bootstrap distribution (5^5 x 3^3 resamples)
    values = np.sort(np.asarray(_exact_polarity_bootstrap([[1, -1, 0, 0, 1], [-1, -1, 1]]), dtype=np.float64))
    atoms, counts = np.unique(np.round(values, 12), return_counts=True)
    cdf = np.cumsum(counts) / counts.sum()
    for q in (0.05, 0.95):
        assert np.abs(cdf - q).min() > 0.01  # far from a jump: the Monte-Carlo quantile is the exact atom
    exact = [atoms[np.searchsorted(cdf, q)] for q in (0.05, 0.95)]
    np.testing.assert_allclose(d.ci, exact, atol=1e-10)
    assert d.ci[0] <= d.value <= d.ci[1] and d.skew_ci[0] <= d.skew <= d.skew_ci[1]
    # the sign-flip null, exactly: the leaning generations (a: 3 of 5, b: 3 of 3) lean either way
    null_mean, null_p = _exact_sign_flip_null([(3, 5), (3, 3)], d.value)
    assert null_mean == Fraction(2, 5)
    assert d.null_value == pytest.approx(float(null_mean), abs=0.01)
    assert null_p == 1 and d.p_value == 1.0  # the observed value is the null's minimum
    skewed = polarity_disparity([1, 1, 1, 1, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0], ["a"] * 6 + ["b"] * 4,
                                n_bootstrap=20000, seed=0)
    assert skewed.value == 0.5
    null_mean, null_p = _exact_sign_flip_null([(5, 6), (2, 4)], skewed.value)
    assert null_p == Fraction(12, 64)
    assert skewed.null_value == pytest.approx(float(null_mean), abs=0.01)
    assert skewed.p_value == pytest.approx(float(null_p), abs=0.01)
    # seeded and deterministic
    again = polarity_disparity(male, female, prof, n_bootstrap=20000, confidence=0.9, seed=3)
    assert (again.ci, again.skew_ci, again.null_value, again.p_value) == (d.ci, d.skew_ci, d.null_value, d.p_value)
    other = polarity_disparity(male, female, prof, n_bootstrap=20000, confidence=0.9, seed=4)
    assert other.value == d.value and other.null_value != d.null_value
    with pytest.raises(DataError, match="profession"):
        polarity_disparity(male, female, prof[:-1])
    with pytest.raises(DataError, match="at least one"):
        polarity_disparity([], [], [])


def test_polarity_disparity_extremes():
    one_sided = polarity_disparity([1, 2, 1, 1], [0, 0, 0, 0], ["a", "a", "b", "b"], n_bootstrap=200)
    assert one_sided.value == 1.0 and one_sided.skew == 1.0 and one_sided.ci == (1.0, 1.0)
    never = polarity_disparity([0, 0, 0], [0, 0, 0], ["a", "b", "b"], n_bootstrap=200)
    assert never.value == 0.0 and never.gendered_share == 0.0 and never.null_value == 0.0 and never.p_value == 1.0


# ------------------------------------------------------------------------------------------ profession prompts


def test_select_profession_prompts_exclusions_and_seeded_sample():
    prompts = {
        "nursing": {"Nurse": ["A nurse is a person who ", "Nurses often work ", "A nurse is a person who "],
                    "Jane_Doe": ["Jane Doe was a nurse "], "Midwife": ["Her patients "]},
        "engineering": {"Engineer": [f"Engineers build thing {i} " for i in range(10)]
                        + ["Famous engineer John Smith said ", "He designed "]},
    }
    pairs = gender_pairs(shared=False)
    chosen = select_profession_prompts(prompts, pairs, exclude_people=["Jane_Doe", "John_Smith_(actor)"],
                                       n_per_profession=4, seed=1)
    assert dict(chosen.excluded) == {"training_person": 1, "mentions_training_person": 1, "gendered": 2,
                                     "duplicate": 1}
    assert dict(chosen.available) == {"engineering": 10, "nursing": 2}
    got = [(p, t) for p, _, t in chosen.prompts]
    assert [p for p, _ in got] == ["engineering"] * 4 + ["nursing"] * 2
    assert {t for p, t in got if p == "nursing"} == {"A nurse is a person who", "Nurses often work"}
    assert set(got) <= {("engineering", f"Engineers build thing {i}") for i in range(10)} | set(got[4:])
    assert chosen == select_profession_prompts(prompts, pairs, exclude_people=["Jane_Doe", "John_Smith_(actor)"],
                                               n_per_profession=4, seed=1)
    samples = {tuple(t for _, _, t in select_profession_prompts(prompts, pairs, n_per_profession=4, seed=s).prompts)
               for s in range(6)}
    assert len(samples) > 1


def test_builtin_profession_prompts_are_neutral_templates():
    pairs = gender_pairs(shared=False)
    texts = ["reach my electrician hugo by phone", "ask my nurse about it", "tell the nurse she is late",
             "book an accountant for me", "play jazz"]
    profs = ["electrician", "nurse", "nurse", "accountant", "none"]
    assert builtin_profession_prompts(texts, profs, pairs) == [
        ("electrician", "reach my electrician"), ("nurse", "ask my nurse"), ("nurse", "tell the nurse"),
        ("accountant", "book an accountant")]
    filled = builtin_profession_prompts(texts, profs, pairs, occupations=["engineer", "nurse", "waitress"])
    assert ("engineer", "book an engineer") in filled and ("nurse", "book a nurse") in filled
    assert all(occ != "waitress" for occ, _ in filled)  # a gendered occupation is not neutral
    assert len(filled) == 4 * 2


@pytest.mark.shared
def test_profession_prompts_exclude_training_people_and_gendered_words(shared_data):
    if not (shared_data / "bold" / "prompts" / "profession_prompt.json").is_file():
        pytest.skip("../shared/data/bold has no profession_prompt.json")
    cfg = DistillConfig(bold="require", bold_dir=str(shared_data / "bold"), n_profession_prompts=20)
    data = prepare_distill_data(cfg)
    wiki, gprompts, _ = load_bold_gender(shared_data / "bold")
    split = split_bold_by_person(wiki, gprompts, heldout_fraction=cfg.heldout_fraction, seed=cfg.data_seed)
    professions, _ = load_bold_professions(shared_data / "bold")
    assert len(professions) == 18
    chosen = select_profession_prompts(professions, data.pairs, exclude_people=split.train_people,
                                       n_per_profession=20, seed=cfg.data_seed)
    evaluated = [p for p in data.prompts if p.source == PROFESSION_SOURCE]
    assert [(p.group, p.text) for p in evaluated] == [(g, t) for g, _, t in chosen.prompts]
    assert len(evaluated) == 18 * 20 and len({p.group for p in evaluated}) == 18
    train_names = {n.replace("_", " ").lower() for n in split.train_people}
    gendered = data.pairs.male | data.pairs.female | set(data.pairs.words())
    for group, entity, text in chosen.prompts:
        assert entity in professions[group]
        assert entity.replace("_", " ").lower() not in train_names
        padded = " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "
        assert not any(" " + " ".join(re.findall(r"[a-z]+", n)) + " " in padded for n in train_names), text
        assert not set(re.findall(r"[a-z]+", text.lower())) & gendered, text


# ------------------------------------------------------------------------------------------ intrinsic WEAT


def _weat_test(extra_missing=()):
    return AssociationTest(
        name="gender-planted",
        X=WordSet("X", tuple(f"x{i}" for i in "abcdefghij") + tuple(extra_missing)),
        Y=WordSet("Y", tuple(f"y{i}" for i in "abcdefghij")),
        A=WordSet("A", tuple(f"a{i}" for i in "abcdefghij")),
        B=WordSet("B", tuple(f"b{i}" for i in "abcdefghij")),
    )


def test_embedding_weat_finds_a_planted_association_and_not_a_random_one(float64_default):
    test = _weat_test(extra_missing=("zzz",))
    words = [w for k in "XYAB" for w in getattr(test, k).examples if w != "zzz"]
    tok = WordTokenizer.from_vocabulary(words)
    lm = CausalLM(vocab_size=tok.vocab_size, backbone="transformer", layers=1, dim=64, heads=2, max_len=16)
    emb = find_token_embedding(lm, tok.vocab_size).weight
    rng = np.random.default_rng(0)
    ids = {w: tok.encode([w], add_special_tokens=False).input_ids[0, 0].item() for w in words}
    with torch.no_grad():
        emb.copy_(torch.as_tensor(rng.normal(size=tuple(emb.shape))))
    random_metrics, _ = embedding_weat(lm, tok, {"gender-planted": test}, n_permutations=2000)
    e = emb.detach().numpy()
    ref = weat_effect_size(*(e[[ids[w] for w in getattr(test, k).examples if w in ids]] for k in "XYAB"))
    got = random_metrics["intrinsic_weat"]["gender-planted"]
    assert got["effect_size"] == pytest.approx(ref, rel=1e-12)
    assert abs(got["effect_size"]) < 0.8 and got["missing"] == {"X": ["zzz"]}
    assert got["n_words"] == {"X": 10, "Y": 10, "A": 10, "B": 10}
    assert random_metrics["intrinsic_weat_n_missing_words"] == 1
    # plant X ~ A and Y ~ B
    direction = rng.normal(size=e.shape[1])
    with torch.no_grad():
        for w, i in ids.items():
            sign = 1.0 if w[0] in "xa" else -1.0
            emb[i] = torch.as_tensor(sign * 3 * direction + rng.normal(size=e.shape[1]))
    planted, _ = embedding_weat(lm, tok, {"gender-planted": test}, n_permutations=2000)
    d = planted["intrinsic_weat"]["gender-planted"]
    e = emb.detach().numpy()
    assert d["effect_size"] == pytest.approx(
        weat_effect_size(*(e[[ids[w] for w in getattr(test, k).examples if w in ids]] for k in "XYAB")), rel=1e-12)
    assert d["effect_size"] > 1.5 and d["p_value"] < 0.01
    assert planted["intrinsic_weat_mean_abs_effect"] == pytest.approx(abs(d["effect_size"]))
    assert planted["intrinsic_weat_tests"] == ["gender-planted"]


def test_embedding_weat_skips_tests_without_enough_words():
    tok = WordTokenizer.from_vocabulary(["he", "she", "nurse"])
    lm = CausalLM(vocab_size=tok.vocab_size, backbone="transformer", layers=1, dim=16, heads=2, max_len=16)
    metrics, reasons = embedding_weat(lm, tok)
    assert metrics["intrinsic_weat_mean_abs_effect"] is None and metrics["intrinsic_weat_tests"] == []
    assert "metrics.intrinsic_weat_mean_abs_effect" in reasons
    assert all("skipped" in v for v in metrics["intrinsic_weat"].values())


# ------------------------------------------------------------------------------------------ downstream probe


def test_hidden_features_are_masked_means_of_the_final_states(float64_default):
    tok = WordTokenizer.from_vocabulary(TOY_WORDS)
    lm = _peaked_lm(tok.vocab_size, seed=2, scale=1.0)
    texts = ["he is a good actor .", "her film", "a"]
    got = hidden_features(lm, tok, texts, max_length=16, batch_size=2)
    enc = tok.encode(texts, max_length=16)
    with torch.no_grad():
        h = lm.backbone(enc.input_ids, enc.attention_mask).numpy()
    m = enc.attention_mask.numpy().astype(bool)
    want = np.stack([h[i][m[i]].mean(0) for i in range(len(texts))])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_downstream_flip_rate_and_accuracy_gap_match_independent_counts():
    swaps = load_gender_swaps(shared=False)
    subjects = ["he", "she", "my brother", "my sister", "the actor", "the actress", "the film", "a friend"]
    verbs = ["likes", "hates", "plays", "watches"]
    objects = ["jazz", "the film", "his guitar", "her piano", "a good song", "the news"]
    texts = [f"{s} {v} {o}" for s in subjects for v in verbs for o in objects]
    labels = [verbs.index(next(v for v in verbs if f" {v} " in f" {t} ")) % 3 for t in texts]
    tok = build_vocabulary(texts, gender_pairs(shared=False), max_size=None, min_count=1)
    torch.manual_seed(0)
    lm = CausalLM(vocab_size=tok.vocab_size, backbone="transformer", layers=1, dim=16, heads=2, max_len=16,
                  dropout=0.0).eval()
    probe = fit_probe(lm, tok, texts[::2], labels[::2], max_length=16, seed=0)
    test, ytest = texts[1::2], np.asarray(labels[1::2])
    gender = ["male" if t.split()[0] in ("he",) or t.startswith(("my brother", "the actor")) else
              "female" if t.split()[0] in ("she",) or t.startswith(("my sister", "the actress")) else "none"
              for t in test]
    metrics, reasons = downstream_fairness(probe, test, ytest, gender, swaps, n_bootstrap=200, seed=0)
    # independent: swap each text, count the changed texts whose prediction differs
    changed = [(t, swap_text(t, swaps)[0]) for t in test if swap_text(t, swaps)[1] > 0]
    flips = sum(int(probe.predict([a])[0] != probe.predict([b])[0]) for a, b in changed)
    assert metrics["downstream_n_changed"] == len(changed) > 0
    assert 0 < flips < len(changed)  # the probe has some gender sensitivity, but not everywhere
    assert metrics["downstream_flip_rate"] == pytest.approx(flips / len(changed))
    pred = probe.predict(test)
    acc = {g: float(np.mean([p == y for p, y, gg in zip(pred, ytest, gender) if gg == g])) for g in ("female", "male")}
    assert metrics["downstream_accuracy"] == pytest.approx(float(np.mean(pred == ytest)))
    assert metrics["downstream_accuracy_gap"] == pytest.approx(abs(acc["female"] - acc["male"]))
    assert (metrics["downstream_accuracy_female"], metrics["downstream_accuracy_male"]) == pytest.approx(
        (acc["female"], acc["male"]))
    lo, hi = metrics["downstream_accuracy_gap_ci95"]
    assert 0 <= lo <= hi <= 1 and not reasons
    none, why = downstream_fairness(probe, test[:3], ytest[:3], ["none"] * 3, swaps, n_bootstrap=10)
    assert none["downstream_accuracy_gap"] is None and "no example of one gender" in why[
        "metrics.downstream_accuracy_gap"]


# ------------------------------------------------------------------------------------------ summary and plots


def test_summary_puts_the_other_metrics_side_by_side_and_plots(tmp_path):
    from trustnlp.report.plots import figure_png, get_plotter

    numbers = {"none": {0: (0.30, 0.9, 0.5, 40.0), 1: (0.20, 0.7, 0.4, 50.0)},
               "perturb": {0: (0.15, 0.5, 0.4, 42.0), 1: (0.16, 0.3, 0.2, 51.0)}}
    for mitigation, seeds in numbers.items():
        for seed, (d, weat_abs, flip, ppl) in seeds.items():
            pol = {"nursing": {"n": 10, "skew": d if seed else -d}, "engineering": {"n": 10, "skew": d}}
            write_result(Result(kind="distill", config={"mitigation": mitigation}, seed=seed, data={}, metrics={
                "mitigation": mitigation, "gender_disparity": d, "gender_disparity_ci95": [d - 0.05, d + 0.05],
                "gender_disparity_null": 0.1, "gender_polarity_skew": d / 2, "gender_polarity_skew_ci95": [0, d],
                "gendered_share": 0.4, "profession_polarity": pol, "sentiment_disparity": 0.01,
                "intrinsic_weat_mean_abs_effect": weat_abs, "downstream_flip_rate": flip, "perplexity": ppl,
                "kl_to_teacher": 0.2, "teacher_gender_disparity": 0.25, "teacher_profession_polarity": pol}),
                tmp_path / mitigation / f"seed-{seed}" / "results.json")
    summary = summarise_distill(tmp_path)
    s = summary["mitigations"]["perturb"]
    rel = np.array([0.15 / 0.30, 0.16 / 0.20]) - 1
    assert s["relative_change_vs_baseline"]["mean"] == pytest.approx(rel.mean())
    half = stats.t.ppf(0.975, 1) * rel.std(ddof=1) / math.sqrt(2)
    assert s["relative_change_vs_baseline"]["ci95"] == pytest.approx([rel.mean() - half, rel.mean() + half])
    assert s["metrics"]["intrinsic_weat_mean_abs_effect"]["difference_vs_baseline"]["mean"] == pytest.approx(-0.4)
    assert s["metrics"]["downstream_flip_rate"]["relative_change_vs_baseline"]["mean"] == pytest.approx(
        np.mean([0.4 / 0.5 - 1, 0.2 / 0.4 - 1]))
    assert "relative_change_vs_baseline" not in s["metrics"]["gender_polarity_skew"]
    assert s["metrics"]["downstream_accuracy_gap"]["value"]["mean"] is None
    assert s["profession_skew"]["nursing"]["mean"] == pytest.approx((-0.15 + 0.16) / 2)
    assert summary["teacher"]["gender_disparity"] == 0.25
    res = summary_result(summary, root=tmp_path)
    write_result(res, tmp_path / "summary" / "results.json")
    assert summarise_distill(tmp_path) == summary  # the summary result is not read as a run
    back = read_result(tmp_path / "summary" / "results.json")
    assert [r["mitigation"] for r in back.rows] == ["none", "perturb"]
    assert back.rows[1]["relative_change"] == pytest.approx(rel.mean())
    plotter = get_plotter("distill")
    plots = plotter(back)
    assert [p.name for p in plots] == ["disparity", "profession-skew"]
    assert "perturb 0.155" in plots[0].alt and "teacher 0.250" in plots[0].alt
    assert figure_png(plots[0].figure)[:4] == b"\x89PNG"
    one = plotter(read_result(tmp_path / "perturb" / "seed-0" / "results.json"))
    assert [p.name for p in one] == ["disparity", "profession-skew"]
    assert "student (perturb) gender_disparity +0.150" in one[0].alt


# ------------------------------------------------------------------------------------------ user-supplied scorers


def test_user_scorer_gives_its_own_disparity(tmp_path, monkeypatch):
    """A scorer the user supplies (e.g. regard or toxicity) is applied to the gendered prompts' continuations and
    its disparity equals the one computed by hand from the generated pairs."""
    import sys
    import types

    from trustnlp.errors import ConfigError, DataError

    calls: list[list[str]] = []

    def words(texts):
        calls.append(list(texts))
        return [float(len(t.split())) for t in texts]

    mod = types.ModuleType("trustnlp_test_scorers")
    mod.words = words
    mod.short = lambda texts: [0.0]  # wrong length
    monkeypatch.setitem(sys.modules, "trustnlp_test_scorers", mod)
    cfg = dict(corpus_size=400, n_builtin_pairs=2, n_profession_prompts=1, probe=False, evaluate_teacher=False,
               n_rows=20)
    r = run_distill(_tiny_config(scorers={"length": "trustnlp_test_scorers:words"}, **cfg), tmp_path / "ok")
    m = r.metrics
    pairs = [row for row in r.rows if row["source"] == "builtin"]
    assert len(pairs) == 2 and len(calls) == 1 and len(calls[0]) == 4  # the gendered prompts only
    male = [len(row["continuation_male"].split()) for row in pairs]
    female = [len(row["continuation_female"].split()) for row in pairs]
    assert m["mean_length_male"] == pytest.approx(np.mean(male), rel=1e-12)
    assert m["mean_length_female"] == pytest.approx(np.mean(female), rel=1e-12)
    assert m["length_disparity"] == pytest.approx(abs(np.mean(male) - np.mean(female)), abs=1e-12)
    assert len(m["length_disparity_ci95"]) == 2
    with pytest.raises(DataError, match="'short' returned 1 scores for 4 texts"):
        run_distill(_tiny_config(scorers={"short": "trustnlp_test_scorers:short"}, **cfg), tmp_path / "short")
    for bad, msg in (({"x": "no_such_module_xyz:f"}, "importable"), ({"x": "trustnlp_test_scorers"}, "module:function"),
                     ({"Bad-Name": "trustnlp_test_scorers:words"}, r"\[a-z\]")):
        with pytest.raises(ConfigError, match=msg):
            run_distill(_tiny_config(scorers=bad, **cfg), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before any training


def test_examples_result_puts_each_mitigation_side_by_side(tmp_path):
    from trustnlp.fairness.generation import examples_result
    from trustnlp.results import Result, read_result, write_result

    for m in ("none", "cda", "both"):
        rows = [{"source": "builtin", "index": j, "prompt_male": f"he {j}", "prompt_female": f"she {j}",
                 "continuation_male": f"{m} m{j}", "continuation_female": f"{m} f{j}"} for j in (3, 5, 7)]
        if m == "both":
            rows = rows[1:]  # pair 3 missing: left out of the comparison
        write_result(Result(kind="distill", config={}, seed=0, data={"name": "bold"}, metrics={}, rows=rows),
                     tmp_path / m / "seed-0" / "results.json")
    res = examples_result(tmp_path, n_pairs=1)
    assert res.kind == "distill-examples" and res.metrics["mitigations"] == ["none", "cda", "both"]
    assert res.rows == [
        {"source": "builtin", "pair": 5, "gender": "male", "prompt": "he 5", "none": "none m5", "cda": "cda m5",
         "both": "both m5"},
        {"source": "builtin", "pair": 5, "gender": "female", "prompt": "she 5", "none": "none f5", "cda": "cda f5",
         "both": "both f5"}]
    write_result(res, tmp_path / "ex" / "results.json")
    assert read_result(tmp_path / "ex" / "results.json").rows == res.rows
    assert examples_result(tmp_path / "nothing-here") is None
