"""Tests of counterfactual role-reversal distillation and generation disparity (trustnlp.fairness.generation)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from trustnlp.data.tokenizers import WordTokenizer
from trustnlp.errors import ConfigError, DataError
from trustnlp.fairness.counterfactual import load_gender_swaps, swap_text
from trustnlp.fairness.generation import (
    DistillConfig,
    GenderPairs,
    build_vocabulary,
    combine_distributions,
    counterfactual_augment,
    disparity,
    distill,
    gender_pairs,
    generate_continuations,
    kl_to_teacher,
    load_bold_gender,
    run_distill,
    sentiment_scores,
    split_bold_by_person,
    summarise_distill,
    teacher_distribution,
    token_swap,
)
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
    skip = {"seconds", "train_seconds"}
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
    lo, hi = m["gender_disparity_ci95"]
    assert 0 <= lo <= hi and m["gender_disparity"] == pytest.approx(
        abs(m["mean_sentiment_male"] - m["mean_sentiment_female"]))
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
