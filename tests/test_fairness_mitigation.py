"""Tests of trustnlp.fairness.mitigation: the context-aware gender swap, its accuracy on the hand-labelled
set, counterfactual data augmentation and the ``cda`` run.

References used here are independent of the code under test where possible: the hand-labelled
``swap_gold.tsv`` (which rows are gendered, what the swap must be), the swap list itself (which words
are gendered), a binomial test for one-sided CDA, and trustnlp's own JSON-lines loader for the file
``run_cda`` writes.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from trustnlp.data.assistant import AssistantConfig, assistant_vocabulary, generate_assistant
from trustnlp.data.dataset import DataMeta, TextDataset
from trustnlp.data.files import load_jsonl
from trustnlp.errors import ConfigError, DataError, MissingDependencyError
from trustnlp.fairness import mitigation as M
from trustnlp.fairness.counterfactual import load_gender_swaps, swap_text
from trustnlp.results import read_result

SWAPS = load_gender_swaps(shared=None)  # property tests hold for any list; gold tests use `full_swaps`
GOLD = M.load_swap_gold()
GOLD_THRESHOLD = 0.95  # measured: 105 / 108 = 0.972 (heuristic "her" rule, shared lists present)

# Gold sentences that do not come back after two swaps: each is a documented ambiguity (module docs).
NON_INVOLUTIVE_GOLD = {
    "They packed his and hers towels for the beach.",  # "his and hers" -> "hers and his" -> "his and her"
    "A friend of hers owns the bakery on Main Street.",  # double genitive "of his owns": his -> her
    "Mrs. Garcia teaches chemistry on Tuesdays.",  # Mrs -> Mr -> Ms
    "Yes, ma'am, the package arrived this morning.",  # ma'am -> sir -> madam
    "Excuse me, miss, you dropped this.",  # miss -> sir -> madam
    "Mr and Mrs Lee invited us to dinner.",  # Mrs -> Mr -> Ms
}
# Words the built-in corpus may record as ambiguous: given names that are common words (lower-case text),
# "her" after a verb taking two objects, and the non-invertible list words.
CORPUS_AMBIGUOUS_WORDS = {"grace", "lily", "jack", "mason", "her", "his", "mrs", "miss"}


@pytest.fixture(scope="module")
def full_swaps(shared_data):
    """The project's list plus the shared WinoBias / GN-GloVe lists (the default where they are found)."""
    return load_gender_swaps(shared_data, shared=True)


@pytest.fixture(scope="module")
def corpus():
    return generate_assistant(AssistantConfig(n_utterances=1200, n_users=60), seed=0)


def _corpus_texts(splits) -> list[str]:
    return [t for _, ds in splits.items() for t in ds.texts]


# -- the swap ---------------------------------------------------------------------------------------------
@pytest.mark.shared
def test_gold_accuracy_meets_threshold(full_swaps):
    acc = M.swap_accuracy(swaps=full_swaps)
    assert acc["n"] == len(GOLD) >= 60
    assert acc["accuracy"] >= GOLD_THRESHOLD, acc["failures"]
    assert acc["n_correct"] == acc["n"] - len(acc["failures"])
    # sentences without a gendered word must come back byte-identical, every one of them
    assert acc["by_category"]["none"]["accuracy"] == 1.0
    for cat, v in acc["by_category"].items():
        assert v["accuracy"] >= 0.8, (cat, acc["failures"])
    # every failure is a real mismatch, recomputed independently of swap_accuracy
    for f in acc["failures"]:
        assert M.swap_gender(f["original"], full_swaps).text == f["got"] != f["expected"]


@pytest.mark.parametrize("g", GOLD, ids=lambda g: f"line{g.line}")
def test_gold_sentence_outside_words_unchanged(g):
    """Whatever the swap does, the text between words is byte-identical and only gendered words change."""
    out = M.swap_gender(g.original, SWAPS).text
    sep = re.compile(r"\w+(?:['’]am)?")
    assert sep.split(out) == sep.split(g.original)
    gendered = set(SWAPS.mapping) | {"her", "miss", "mrs", "ma'am"}
    for a, b in zip(sep.findall(g.original), sep.findall(out)):
        if a.lower() not in gendered:
            assert a == b


@pytest.mark.shared
def test_involution_on_gold_except_listed_ambiguities(full_swaps):
    non_involutive = set()
    for g in GOLD:
        first = M.swap_gender(g.original, full_swaps)
        second = M.swap_gender(first.text, full_swaps)
        if second.text != g.original:
            non_involutive.add(g.original)
            assert first.ambiguous or second.ambiguous, g.original  # never silently lossy
        if not (first.ambiguous or second.ambiguous):
            assert second.text == g.original
        assert first.n_swapped == second.n_swapped
    assert non_involutive == NON_INVOLUTIVE_GOLD


def test_involution_on_builtin_corpus(corpus):
    texts = _corpus_texts(corpus)
    n_gendered = n_ambiguous = 0
    for t in texts:
        first = M.swap_gender(t, SWAPS)
        second = M.swap_gender(first.text, SWAPS)
        n_gendered += first.n_swapped > 0
        amb = first.ambiguous + second.ambiguous
        if amb:
            n_ambiguous += 1
            assert {w.lower() for _, w in amb} <= CORPUS_AMBIGUOUS_WORDS, (t, amb)
        else:
            assert second.text == t, (t, first.text, second.text)
    assert n_gendered >= 150
    assert n_ambiguous <= 0.15 * n_gendered


def test_builds_on_counterfactual_swap(corpus):
    """On the corpus, the only differences from counterfactual.swap_text are the fixed "take/bring her home"."""
    pairs = [(t, M.swap_gender(t, SWAPS).text) for t in _corpus_texts(corpus)]
    diffs = [(t, new) for t, new in pairs if new != swap_text(t, SWAPS)[0]]
    assert diffs
    for t, new in diffs:
        assert re.search(r"\b(take|bring) her home\b", t), t
        assert re.search(r"\b(take|bring) him home\b", new), new


@pytest.mark.shared
@pytest.mark.parametrize(("text", "want", "n_amb"), [
    ("Her car is red.", "His car is red.", 0),
    ("I saw her.", "I saw him.", 0),
    ("HER BOOK IS ON HER DESK, NOT WITH HER.", "HIS BOOK IS ON HIS DESK, NOT WITH HIM.", 0),
    ("The book is his.", "The book is hers.", 0),
    ("his book", "her book", 0),
    ("He's sure she'll call.", "She's sure he'll call.", 0),
    ("He’s sure she’ll call.", "She’s sure he’ll call.", 0),  # curly apostrophes
    ("John's mom", "Mary's dad", 0),
    ("I miss my dad.", "I miss my mom.", 0),
    ("Miss Lee is here.", "Mr Lee is here.", 1),
    ("Ma'am, MA'AM", "Sir, SIR", 2),
    ("a master's degree; the master bedroom", "a master's degree; the master bedroom", 0),
    ("He will host the dinner.", "She will host the dinner.", 0),
    ("he2 user_he José", "he2 user_he José", 0),
    ("the goddess and the god", "the god and the goddess", 0),  # the list's "godess" misspelling fixed
    ("Grace said grace.", "Logan said grace.", 0),
    ("call grace", "call logan", 1),  # lower-case text: a name, but recorded as ambiguous
    ("  he\tand\nshe  ", "  she\tand\nhe  ", 0),
])
def test_cases(text, want, n_amb, full_swaps):
    out = M.swap_gender(text, full_swaps)
    assert out.text == want
    assert len(out.ambiguous) == n_amb
    for pos, word in out.ambiguous:
        assert text[pos : pos + len(word)] == word


def test_case_kept_for_every_listed_pair():
    for w, v in SWAPS.mapping.items():
        if w in ("his", "miss") or w in M._NAME_WORDS or w in M._VERB_SENSE:
            continue  # context-dependent: tested above
        want = M._SPELLING_FIXES.get(v, v)
        assert M.swap_gender(w, SWAPS).text == want
        assert M.swap_gender(w.upper(), SWAPS).text == want.upper()
        assert M.swap_gender(w.title() + " x", SWAPS).text == want[:1].upper() + want[1:] + " x"


_GENDERED = set(SWAPS.mapping) | {"her", "mrs", "miss", "ma"}
_NEUTRAL = sorted({w for v in assistant_vocabulary() for w in re.findall(r"[a-z]+", v)} - _GENDERED)
_SEPARATORS = [" ", "  ", "\t", "\n", ", ", ". ", "! ", "? ", "'", "’", "-", " — ", " (", ") ", '"', "; ", ": ",
               "...", " 2025 ", "_", "/"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_NEUTRAL), st.sampled_from(["lower", "title", "upper"]),
                          st.sampled_from(_SEPARATORS)), min_size=1, max_size=25))
def test_non_gendered_text_is_byte_identical(parts):
    text = "".join({"lower": w, "title": w.title(), "upper": w.upper()}[c] + s for w, c, s in parts)
    out = M.swap_gender(text, SWAPS)
    assert out.text == text
    assert out.n_swapped == 0 and out.ambiguous == ()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_NEUTRAL + sorted(_GENDERED - {"ma"})), st.sampled_from(_SEPARATORS)),
                min_size=1, max_size=20))
def test_only_gendered_words_change(parts):
    text = "".join(w + s for w, s in parts)
    out = M.swap_gender(text, SWAPS)
    word = re.compile(r"\w+")
    assert word.split(out.text) == word.split(text)  # separators untouched
    before, after = word.findall(text), word.findall(out.text)
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == out.n_swapped
    for a, _ in changed:
        assert a.lower() in _GENDERED


def test_errors_and_pos_rule(monkeypatch):
    with pytest.raises(ConfigError, match="her_rule"):
        M.swap_gender("her", SWAPS, her_rule="tagger")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="string"):
        M.swap_gender(None, SWAPS)  # type: ignore[arg-type]
    # without nltk and spaCy, "pos" names the missing package
    monkeypatch.setitem(sys.modules, "nltk", None)
    monkeypatch.setitem(sys.modules, "spacy", None)
    M._pos_tagger.cache_clear()
    with pytest.raises(MissingDependencyError, match="nltk"):
        M.swap_gender("I saw her car.", SWAPS, her_rule="pos")
    M._pos_tagger.cache_clear()
    # with a tagger, its PRP$ / PRP decide "her"; any other tag falls back to the heuristic, ambiguously
    tags = {"I gave her books.": {7: "PRP"}, "Her own car.": {0: "NN"}, "I like her books.": {7: "PRP$"}}
    monkeypatch.setattr(M, "_pos_tagger", lambda: lambda text: tags[text])
    assert M.swap_gender("I gave her books.", SWAPS, her_rule="pos").text == "I gave him books."
    assert M.swap_gender("I like her books.", SWAPS, her_rule="pos").ambiguous == ()
    fallback = M.swap_gender("Her own car.", SWAPS, her_rule="pos")
    assert fallback.text == "His own car." and fallback.ambiguous == ((0, "Her"),)


# -- counterfactual data augmentation ---------------------------------------------------------------------
def _gold_dataset(labelled: bool = True) -> TextDataset:
    cats = sorted({g.category for g in GOLD})
    genders = ["female" if i % 3 == 0 else "Male" if i % 3 == 1 else "none" for i in range(len(GOLD))]
    return TextDataset([g.original for g in GOLD], [cats.index(g.category) for g in GOLD] if labelled else None,
                       label_names=cats if labelled else (), columns={"gender": genders, "k": list(range(len(GOLD)))},
                       protected=("gender",), meta=DataMeta(name="gold"))


@pytest.mark.shared
def test_two_sided_doubles_exactly_the_gendered(full_swaps):
    ds = _gold_dataset()
    gendered = [i for i, g in enumerate(GOLD) if g.original != g.expected]  # by the hand labels
    out, stats = M.counterfactual_augment(ds, mode="two-sided", swaps=full_swaps)
    assert len(out) == len(ds) + len(gendered) and stats.n_after == len(out)
    assert stats.n_gendered == len(gendered) and stats.n_swapped_rows == len(gendered)
    assert stats.gendered_share == pytest.approx(len(gendered) / len(ds), rel=1e-12)
    assert out.texts[: len(ds)] == ds.texts and out.column("cda_source")[: len(ds)] == tuple(range(len(ds)))
    assert out.column("cda_swapped") == (False,) * len(ds) + (True,) * len(gendered)
    assert list(out.column("cda_source")[len(ds) :]) == gendered
    assert np.array_equal(out.labels[len(ds) :], ds.labels[gendered])  # labels preserved
    assert out.column("k")[len(ds) :] == tuple(gendered)
    flip = {"female": "male", "Male": "Female", "none": "none"}
    assert out.column("gender")[len(ds) :] == tuple(flip[ds.column("gender")[i]] for i in gendered)
    assert stats.attribute_columns == ("gender",)
    assert stats.attribute_changes == sum(ds.column("gender")[i] != "none" for i in gendered)
    copies = out.texts[len(ds) :]
    correct = sum(c == GOLD[i].expected for c, i in zip(copies, gendered))
    assert correct >= GOLD_THRESHOLD * len(gendered) - 1e-9
    assert stats.swaps_total == sum(M.swap_gender(ds.texts[i], full_swaps).n_swapped for i in gendered)
    assert stats.swaps_per_gendered_text == pytest.approx(stats.swaps_total / len(gendered), rel=1e-12)


def test_unlabelled_and_tagged_data(corpus):
    out, stats = M.counterfactual_augment(_gold_dataset(labelled=False), swaps=SWAPS)
    assert out.labels is None and stats.n_after > stats.n_before
    train = corpus.train
    aug, st_ = M.counterfactual_augment(train, swaps=SWAPS)
    assert aug.has_tags and len(aug) == len(train) + st_.n_gendered
    for i in range(len(train), len(aug)):
        src = aug.column("cda_source")[i]
        assert aug.tokens[i] == tuple(aug.texts[i].split())
        assert aug.tags[i] == train.tags[src]
        assert aug.labels[i] == train.labels[src]


def test_one_sided_swaps_about_half():
    splits = generate_assistant(AssistantConfig(n_utterances=2500, n_users=80), seed=1)
    train = splits.train
    out, stats = M.counterfactual_augment(train, mode="one-sided", swaps=SWAPS, seed=7)
    assert len(out) == len(train) == stats.n_after
    swapped = np.asarray(out.column("cda_swapped"))
    outcomes = [M.swap_gender(t, SWAPS) for t in train.texts]
    gendered = np.asarray([o.n_swapped > 0 for o in outcomes])
    assert not swapped[~gendered].any()  # non-gendered texts untouched
    for i in range(len(train)):
        assert out.texts[i] == (outcomes[i].text if swapped[i] else train.texts[i])
    k, n = int(swapped.sum()), int(gendered.sum())
    assert n >= 300 and k == stats.n_swapped_rows
    assert binomtest(k, n, 0.5).pvalue > 1e-3  # alpha 1e-3, fixed seed
    again, _ = M.counterfactual_augment(train, mode="one-sided", swaps=SWAPS, seed=7)
    other, _ = M.counterfactual_augment(train, mode="one-sided", swaps=SWAPS, seed=8)
    assert again.texts == out.texts and other.texts != out.texts
    assert np.array_equal(out.labels, train.labels)


def test_cda_errors():
    ds = _gold_dataset()
    with pytest.raises(ConfigError, match="mode"):
        M.counterfactual_augment(ds, mode="both")  # type: ignore[arg-type]
    out, _ = M.counterfactual_augment(ds, swaps=SWAPS)
    with pytest.raises(DataError, match="cda_source"):
        M.counterfactual_augment(out, swaps=SWAPS)
    with pytest.raises(DataError, match="no column"):
        M.counterfactual_augment(ds, swaps=SWAPS, attribute_columns=["sex"])


@pytest.mark.shared
def test_run_cda_writes_loadable_jsonl(tmp_path, full_swaps):
    cfg = M.CDAConfig(data="builtin", corpus_size=200, corpus_users=20, mode="two-sided", seed=3)
    result = M.run_cda(cfg, tmp_path)
    cols = ["user_id", "timestamp", "timezone", "template_id", "gender", "profession", "cda_source", "cda_swapped"]
    back = load_jsonl(tmp_path / "train_cda.jsonl", columns={c: c for c in cols})
    m = result.metrics
    assert len(back) == m["n_after"] == m["n_before"] + m["n_gendered"]
    swapped = back.column("cda_swapped")
    assert sum(swapped) == m["n_gendered"] and all(isinstance(v, bool) for v in swapped)
    for i, text in enumerate(back.texts):  # a swapped row is the swap of the row it names
        if swapped[i]:
            src = back.column("cda_source")[i]
            assert not swapped[src] and M.swap_gender(back.texts[src], full_swaps).text == text
            assert back.label_names[back.labels[i]] == back.label_names[back.labels[src]]
    saved = read_result(tmp_path / "results.json")
    assert saved.kind == "cda" and saved.seed == 3 and saved.config["mode"] == "two-sided"
    assert saved.metrics["swap_accuracy"] >= GOLD_THRESHOLD and saved.metrics["swap_gold"]["n"] == len(GOLD)
    assert saved.artifacts == {"train_cda": "train_cda.jsonl"} and "torch" in saved.versions
    with pytest.raises(Exception, match="mode"):
        M.CDAConfig(mode="three-sided")  # type: ignore[arg-type]
