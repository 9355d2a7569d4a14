"""Canaries: secret spaces, seeded generation, exact insertion manifests, vocabulary coverage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from trustnlp.data.assistant import AssistantConfig, assistant_vocabulary, generate_assistant
from trustnlp.data.canaries import (
    DEFAULT_TEMPLATES,
    CanarySpec,
    SecretSpace,
    canary_vocabulary,
    canary_words,
    insert_canaries,
    make_canaries,
    secret_space,
    secret_token_ids,
)
from trustnlp.data.dataset import TextDataset
from trustnlp.data.tokenizers import WordTokenizer, check_tokenizer_privacy, minilm_tokenizer
from trustnlp.errors import ConfigError, DataError

LABELS = tuple(f"intent{i}" for i in range(22))


@pytest.fixture(scope="module")
def assistant():
    return generate_assistant(AssistantConfig(n_utterances=300, n_users=30), seed=0)


def test_digit_space_enumerates_in_index_order() -> None:
    space = secret_space("digits")
    assert space.size == 10**4 and space.length == 4 and space.tokens == tuple("0123456789")
    all_secrets = space.enumerate()
    assert all_secrets.shape == (10**4, 4)
    # the index is the base-10 number the digits spell
    assert [space.render(s) for s in all_secrets[[0, 1, 10, 4719, 9999]]] == ["0 0 0 0", "0 0 0 1", "0 0 1 0",
                                                                            "4 7 1 9", "9 9 9 9"]
    np.testing.assert_array_equal(space.index_of(all_secrets), np.arange(10**4))


def test_word_space_is_the_public_list_of_single_tokens() -> None:
    words = canary_words()
    assert len(words) == 1000 and len(set(words)) == 1000
    space = secret_space("words")
    assert space.size == 1000**6
    with pytest.raises(ConfigError, match="cannot be enumerated"):
        space.enumerate()
    # every word is one token of MiniLM's WordPiece vocabulary ...
    ids = secret_token_ids(minilm_tokenizer(), space)
    assert len(set(ids)) == 1000
    # ... and of a word tokenizer whose vocabulary adds the public canary vocabulary
    tok = WordTokenizer.from_vocabulary(assistant_vocabulary() + canary_vocabulary(space, DEFAULT_TEMPLATES["words"]),
                                        provenance="generator")
    assert len(secret_token_ids(tok, space)) == 1000
    check_tokenizer_privacy(tok, private=True)  # public + generator words only: allowed under DP


def test_a_vocabulary_without_the_secret_space_is_refused() -> None:
    tok = WordTokenizer.from_vocabulary(assistant_vocabulary(), provenance="generator")
    with pytest.raises(DataError, match=r"secret token to be one known token.*\[UNK\]"):
        secret_token_ids(tok, secret_space("words"))


def test_canary_vocabulary_lists_template_words_then_the_space() -> None:
    space = SecretSpace(kind="tiny", tokens=("x", "y"), length=2)
    assert canary_vocabulary(space, ["my pin is {secret}", "the pin: {secret} ok"]) == [
        "my", "pin", "is", "the", ":", "ok", "x", "y"]


def test_generation_is_seeded_with_distinct_contexts_and_secrets() -> None:
    spec = CanarySpec(kind="digits", n_canaries=100, repetitions=3)
    a = make_canaries(spec, LABELS, seed=7)
    b = make_canaries(spec, LABELS, seed=7)
    c = make_canaries(spec, LABELS, seed=8)
    assert a.canaries == b.canaries and a.canaries != c.canaries
    assert len({(x.template, x.label) for x in a.canaries}) == 100
    assert len({x.secret for x in a.canaries}) == 100
    for x in a.canaries:
        assert x.text == x.template.replace("{secret}", a.space.render(x.secret))
        assert x.label_name == LABELS[x.label] and x.template in DEFAULT_TEMPLATES["digits"]
    assert a.secrets.shape == (100, 4)


def test_secrets_are_uniform_over_the_space() -> None:
    # chi-square goodness of fit of the digit counts at every position (alpha = 0.01, fixed seed)
    space = secret_space("digits")
    secrets = space.sample(5000, np.random.default_rng(0))
    for j in range(4):
        counts = np.bincount(secrets[:, j], minlength=10)
        assert stats.chisquare(counts).pvalue > 0.01
    assert len({tuple(s) for s in secrets}) == 5000  # distinct


def test_generation_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="n_canaries.*templates x labels"):
        make_canaries(CanarySpec(n_canaries=11), ("a", "b"), seed=0)  # 5 templates x 2 labels
    with pytest.raises(ConfigError, match="canary label"):
        make_canaries(CanarySpec(labels=("nope",)), LABELS, seed=0)
    with pytest.raises(ConfigError, match="exactly one"):
        CanarySpec(templates=("no slot here",))
    with pytest.raises(ConfigError, match="`repetitions`"):
        CanarySpec(repetitions=0)
    with pytest.raises(ConfigError, match="`secret`"):
        CanarySpec(kind="emoji")
    restricted = make_canaries(CanarySpec(n_canaries=5, labels=("intent3",)), LABELS, seed=0)
    assert {x.label_name for x in restricted.canaries} == {"intent3"}


def test_insertion_manifest_records_exactly_what_was_inserted(assistant) -> None:
    train = assistant.train
    cs = make_canaries(CanarySpec(kind="words", n_canaries=12, repetitions=3), train.label_names, seed=1)
    out, manifest = insert_canaries(train, cs)
    n0 = len(train)
    assert len(out) == n0 + 36 and manifest.n_train_before == n0 and manifest.n_train_after == n0 + 36
    # the original examples are untouched
    assert out.texts[:n0] == train.texts
    np.testing.assert_array_equal(out.labels[:n0], train.labels)
    for name, col in train.columns.items():
        assert out.columns[name][:n0] == col
    # every inserted row is a canary copy at the recorded position, and nothing else was added
    d = json.loads(json.dumps(manifest.to_dict()))
    seen = []
    for c, entry in zip(cs.canaries, d["canaries"]):
        assert entry["text"] == c.text and entry["secret"] == list(c.secret) and entry["label"] == c.label
        assert entry["secret_text"] == cs.space.render(c.secret) and len(entry["indices"]) == 3
        for i in entry["indices"]:
            assert out.texts[i] == c.text and out.labels[i] == c.label
            assert out.columns["user_id"][i] == f"canary-{c.id:04d}"
            assert out.columns["timestamp"][i] is None
            assert out.tokens[i] == tuple(c.text.split()) and set(out.tags[i]) == {"O"}
        seen += entry["indices"]
    assert sorted(seen) == list(range(n0, n0 + 36))
    assert d["spec"]["repetitions"] == 3 and d["space"]["size"] == 1000**6 and d["seed"] == 1
    assert out.meta.details["canaries"] == {"n": 12, "repetitions": 3, "kind": "words", "seed": 1}


def test_insertion_checks_the_labels() -> None:
    ds = TextDataset(["a b", "c d"], [0, 1], label_names=("x", "y"))
    cs = make_canaries(CanarySpec(n_canaries=2), ("y", "x"), seed=0)  # label order differs
    with pytest.raises(DataError, match="canary label"):
        insert_canaries(ds, cs)
    with pytest.raises(DataError, match="no labels"):
        insert_canaries(TextDataset(["a"]), cs)
