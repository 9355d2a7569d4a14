"""Text -> embeddings for intrinsic tests: MiniLM, Hugging Face encoders and trustnlp models.

:class:`TextEncoder` wraps a token encoder (any module ``(input_ids, attention_mask) -> hidden
[B, T, H]``) and its tokeniser, and gives three kinds of embedding:

* :meth:`TextEncoder.sentences` — a pooled **sentence embedding** of each text:
  ``pooling="mean"`` (default; masked mean of the last hidden states over every token, ``[CLS]``
  and ``[SEP]`` included: exactly sentence-transformers' MiniLM embedding before normalisation) or
  ``"cls"`` (the hidden state of the first position);
* :meth:`TextEncoder.words` — a **word embedding**: ``representation="pooled"`` (default) encodes
  the word alone as a text and pools it as above (how May et al. run word-level tests on sentence
  encoders); ``"static"`` averages (``word_pooling="mean"``) or takes the first of
  (``word_pooling="first"``) the rows of the input embedding matrix of the word's sub-word tokens;
* :meth:`TextEncoder.words_in_context` — a **contextual word embedding** (CEAT): the last hidden
  states of the word's sub-word tokens inside a sentence, pooled by ``word_pooling``.

Every option is recorded by :meth:`TextEncoder.describe` and in each result. Embeddings are
float64 numpy arrays; encodings of the same text are cached.

Example:
    >>> enc = load_encoder("minilm")  # doctest: +SKIP
    >>> enc.sentences(["This is Amy.", "This is John."]).shape  # doctest: +SKIP
    (2, 384)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trustnlp.errors import ConfigError, DataError
from trustnlp.fairness._common import check_choice, check_positive_int

__all__ = [
    "DEFAULT_POOLING",
    "DEFAULT_WORD_POOLING",
    "POOLINGS",
    "REPRESENTATIONS",
    "WORD_POOLINGS",
    "TextEncoder",
    "find_token_embedding",
    "load_encoder",
]

POOLINGS = ("mean", "cls")
WORD_POOLINGS = ("mean", "first")
REPRESENTATIONS = ("pooled", "static")
DEFAULT_POOLING = "mean"
"""Sentence pooling default: masked mean over all tokens (MiniLM's own pooling)."""
DEFAULT_WORD_POOLING = "mean"
"""Sub-word pooling default for contextual and static word embeddings: mean over the word's pieces."""


def find_token_embedding(module: nn.Module, vocab_size: int) -> nn.Embedding:
    """The token (input) embedding of ``module``: ``get_input_embeddings()`` when it has one, else a
    ``token_embedding`` / ``embedding`` attribute, else the first ``nn.Embedding`` with at least
    ``vocab_size`` rows."""
    for m in module.modules():
        get = getattr(m, "get_input_embeddings", None)
        if callable(get):
            try:
                emb = get()
            except NotImplementedError:
                continue
            if isinstance(emb, nn.Embedding):
                return emb
    for m in module.modules():
        for attr in ("token_embedding", "embedding"):
            emb = getattr(m, attr, None)
            if isinstance(emb, nn.Embedding) and emb.num_embeddings >= vocab_size:
                return emb
    for m in module.modules():
        if isinstance(m, nn.Embedding) and m.num_embeddings >= vocab_size:
            return m
    raise ConfigError(f"Could not find a token embedding with >= {vocab_size} rows in {type(module).__name__}.")


def _split_words(text: str) -> list[str]:
    import re

    return re.findall(r"\w+(?:['’]\w+)?|[^\w\s]", text)


class TextEncoder:
    """Embeddings of texts, words and words in context from a token encoder and its tokeniser.

    Args:
        token_encoder: ``(input_ids, attention_mask) -> hidden [B, T, H]`` (e.g. a trustnlp
            ``TokenEncoder`` or :class:`~trustnlp.models.hf.HFEncoder`).
        tokenizer: a trustnlp :class:`~trustnlp.data.tokenizers.Tokenizer`.
        name: recorded in results (``"minilm"``, a model directory, ...).
        pooling: sentence pooling, ``mean`` (default) or ``cls``.
        word_pooling: pooling over a word's sub-word tokens, ``mean`` (default) or ``first``.
        max_length: tokens per input (longer inputs are cut and counted in ``num_truncated``).
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        token_encoder: nn.Module,
        tokenizer: Any,
        *,
        name: str,
        pooling: str = DEFAULT_POOLING,
        word_pooling: str = DEFAULT_WORD_POOLING,
        max_length: int = 128,
        batch_size: int = 64,
    ) -> None:
        self.token_encoder = token_encoder.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.pooling = check_choice("pooling", pooling, POOLINGS)
        self.word_pooling = check_choice("word_pooling", word_pooling, WORD_POOLINGS)
        self.max_length = check_positive_int("max_length", max_length, 2)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.num_truncated = 0
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._ctx_cache: dict[tuple[tuple[str, ...], int, int], np.ndarray] = {}

    def describe(self) -> dict[str, Any]:
        """The options that shape every embedding (recorded in results)."""
        return {"encoder": self.name, "pooling": self.pooling, "word_pooling": self.word_pooling,
                "max_length": self.max_length, "tokenizer": self.tokenizer.kind}

    def _batches(self, n: int) -> Iterator[slice]:
        for i in range(0, n, self.batch_size):
            yield slice(i, min(n, i + self.batch_size))

    @torch.no_grad()
    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        device = next(self.token_encoder.parameters()).device
        return self.token_encoder(ids.to(device), mask.to(device)).double().cpu()

    def sentences(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled sentence embeddings ``[len(texts), H]`` (``pooling``)."""
        texts = list(texts)
        if not texts:
            raise DataError("Expected at least one text to encode, but got none.")
        todo = sorted({t for t in texts if ("s", t) not in self._cache}, key=lambda t: (len(t), t))  # less padding
        for sl in self._batches(len(todo)):
            batch = todo[sl]
            enc = self.tokenizer.encode(batch, max_length=self.max_length)
            self.num_truncated += enc.num_truncated
            h = self._hidden(enc.input_ids, enc.attention_mask)
            if self.pooling == "mean":
                m = enc.attention_mask.unsqueeze(-1).double()
                pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            else:
                pooled = h[:, 0]
            for t, v in zip(batch, pooled.numpy()):
                self._cache[("s", t)] = v
        return np.stack([self._cache[("s", t)] for t in texts])

    def pieces(self, word: str) -> list[int]:
        """Token ids of ``word`` (no special tokens)."""
        return self.tokenizer.encode([word], max_length=self.max_length, add_special_tokens=False).input_ids[0].tolist()

    def missing(self, words: Sequence[str]) -> list[str]:
        """The words the tokeniser cannot represent (no tokens, or only unknown tokens)."""
        unk = self.tokenizer.unk_id
        return [w for w in words if all(i == unk for i in self.pieces(w))]

    def _check_known(self, words: Sequence[str], what: str) -> None:
        bad = self.missing(words)
        if bad:
            raise DataError(f"{what}: the tokenizer of `{self.name}` cannot represent {len(bad)} word(s) {bad[:10]} "
                            "(they map to the unknown token only); drop them or use another encoder.")

    def words(self, words: Sequence[str], *, representation: str = "pooled") -> np.ndarray:
        """Word embeddings ``[len(words), H]``: ``pooled`` (the word encoded alone) or ``static``."""
        check_choice("representation", representation, REPRESENTATIONS)
        words = list(words)
        self._check_known(words, "Word embeddings")
        if representation == "pooled":
            return self.sentences(words)
        emb = find_token_embedding(self.token_encoder, self.tokenizer.vocab_size).weight.detach().double().cpu()
        out = []
        for w in words:
            rows = emb[self.pieces(w)]
            out.append((rows.mean(0) if self.word_pooling == "mean" else rows[0]).numpy())
        return np.stack(out)

    def words_in_context(self, contexts: Sequence[tuple[Sequence[str], int, int]]) -> np.ndarray:
        """Contextual embeddings of word spans: ``(words, start, end)`` = the sentence split into
        words and the span ``[start, end)`` of the target; its sub-word hidden states are pooled by
        ``word_pooling``. Raises :class:`DataError` when truncation cuts the span off."""
        items = [(tuple(ws), int(s), int(e)) for ws, s, e in contexts]
        for i, (ws, s, e) in enumerate(items):
            if not 0 <= s < e <= len(ws):
                raise DataError(f"Context {i}: expected a span 0 <= start < end <= {len(ws)}, but got [{s}, {e}).")
        rows: dict[int, np.ndarray] = {}
        for i, it in enumerate(items):
            hit = self._ctx_cache.get(it)
            if hit is not None:
                rows[i] = hit
        todo = [i for i in range(len(items)) if i not in rows]
        order = sorted(todo, key=lambda i: sum(len(w) for w in items[i][0]))  # less padding
        for sl in self._batches(len(order)):
            batch = [items[i] for i in order[sl]]
            enc = self.tokenizer.encode_words([list(ws) for ws, _, _ in batch], max_length=self.max_length)
            self.num_truncated += enc.num_truncated
            h = self._hidden(enc.input_ids, enc.attention_mask)
            assert enc.word_ids is not None
            for j, (ws, s, e) in enumerate(batch):
                pos = [p for p, wid in enumerate(enc.word_ids[j]) if wid is not None and s <= wid < e]
                if not pos:
                    raise DataError(f"Context {order[sl][j]}: the target span {ws[s:e]} has no tokens after truncation "
                                    f"to max_length={self.max_length}.")
                sel = h[j, pos]
                rows[order[sl][j]] = self._ctx_cache[(ws, s, e)] = (sel.mean(0) if self.word_pooling == "mean"
                                                                    else sel[0]).numpy()
        if not rows:
            raise DataError("Expected at least one context to encode, but got none.")
        return np.stack([rows[i] for i in range(len(items))])


@contextlib.contextmanager
def gradients_through(token_encoder: nn.Module) -> Iterator[None]:
    """Let gradients flow through a frozen trustnlp HF encoder (it runs under ``no_grad``) inside the
    block; its weights keep ``requires_grad=False``. Used by prediction sensitivity."""
    from trustnlp.models.hf import HFEncoder

    frozen = [m for m in token_encoder.modules() if isinstance(m, HFEncoder) and m.trainable == "frozen"]
    for m in frozen:
        m.trainable = "full"  # only switches off the no_grad context in HFEncoder.forward
    try:
        yield
    finally:
        for m in frozen:
            m.trainable = "frozen"


def load_encoder(
    spec: str | Path,
    *,
    pooling: str = DEFAULT_POOLING,
    word_pooling: str = DEFAULT_WORD_POOLING,
    max_length: int = 128,
    batch_size: int = 64,
) -> TextEncoder:
    """A :class:`TextEncoder` for ``minilm`` (offline), a saved trustnlp model directory, or a Hugging
    Face encoder (a local directory or a Hub id; pretrained weights).

    A trustnlp model contributes its token encoder (``model.encoder``: the classifier's body
    without the pooling and head); causal LMs are not encoders and are refused.
    """
    from trustnlp.models.hf import MINILM_NAMES, HFEncoder

    name = str(spec)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "model.json").is_file():
        from trustnlp.models.io import load_model

        saved = load_model(path)
        body = getattr(saved.model, "encoder", None)
        if not isinstance(body, nn.Module) or saved.task == "lm":
            raise ConfigError(f"The model in {path} (`{saved.arch}`, task `{saved.task}`) has no token encoder; intrinsic "
                              "tests need a classifier or tagger (use CrowS-Pairs for language models).")
        return TextEncoder(body, saved.tokenizer, name=name, pooling=pooling, word_pooling=word_pooling,
                           max_length=max_length, batch_size=batch_size)
    from trustnlp.data.tokenizers import WordPieceTokenizer

    tok = WordPieceTokenizer.from_pretrained("minilm" if name in MINILM_NAMES else name)
    enc = HFEncoder(vocab_size=tok.vocab_size, pad_id=tok.pad_id, encoder_name=name, trainable="frozen")
    return TextEncoder(enc, tok, name=name, pooling=pooling, word_pooling=word_pooling, max_length=max_length,
                       batch_size=batch_size)


def split_words(text: str) -> list[str]:
    """Split a sentence into words and punctuation marks (the unit of :meth:`TextEncoder.words_in_context`)."""
    return _split_words(text)
