"""Run a trustnlp classifier from input embeddings instead of token ids (for model inversion).

A relaxed (soft) token is a distribution ``p`` over the vocabulary; its input is the mixture of
embedding rows ``p @ E`` (``E`` the token embedding matrix). For a one-hot ``p`` this is exactly the
embedding lookup, so :func:`forward_from_embeddings` on ``onehot(ids) @ E`` equals ``model(ids, mask)``
(tested in float64 for every family). Everything after the token lookup (position embeddings,
token types, LayerNorm, masking, pooling, head) runs unchanged.

Adapters by family:

- ``bag`` / ``cnn`` / ``lstm`` / ``transformer`` (:mod:`trustnlp.models.classifiers`): the model's
  own ``forward`` runs with a forward hook on its token embedding that returns the given embeddings
  (so no model code is copied; the ids passed along only give the shape);
- ``minilm`` and any Hugging Face encoder (:class:`~trustnlp.models.HFEncoderClassifier`): the
  transformers model is called with ``inputs_embeds`` (it adds position and token-type embeddings
  itself), also when the encoder is frozen (its own forward runs without autograd);
- any other module that defines ``input_embedding() -> nn.Embedding`` and
  ``forward_from_embeddings(inputs_embeds, attention_mask) -> logits``.

Example:
    >>> from trustnlp.models import build_model
    >>> model = build_model("cnn", vocab_size=30, num_labels=3, dim=8, filters=4).eval()
    >>> ids = torch.tensor([[2, 7, 9, 3]]); mask = torch.ones_like(ids)
    >>> soft = torch.nn.functional.one_hot(ids, 30).float() @ input_embedding(model).weight
    >>> torch.allclose(forward_from_embeddings(model, soft, mask), model(ids, mask))
    True
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from trustnlp.errors import ConfigError, DataError

__all__ = ["forward_from_embeddings", "input_embedding", "supports_embedding_forward"]


def _small_classifier_embedding(model: nn.Module) -> nn.Embedding | None:
    """The token embedding of a ``bag`` / ``cnn`` / ``lstm`` / ``transformer`` classifier, else ``None``."""
    from trustnlp.models.classifiers import BagClassifier, CNNClassifier, LSTMClassifier, TransformerClassifier

    if not isinstance(model, BagClassifier | CNNClassifier | LSTMClassifier | TransformerClassifier):
        return None
    enc = model.encoder
    emb = getattr(enc, "token_embedding", None) or getattr(enc, "embedding", None)
    return emb if isinstance(emb, nn.Embedding) else None


def _is_hf(model: nn.Module) -> bool:
    from trustnlp.models.hf import HFEncoderClassifier

    return isinstance(model, HFEncoderClassifier)


def supports_embedding_forward(model: nn.Module) -> bool:
    """Whether :func:`forward_from_embeddings` has an adapter for ``model``."""
    custom = callable(getattr(model, "input_embedding", None)) and callable(getattr(model, "forward_from_embeddings", None))
    return custom or _is_hf(model) or _small_classifier_embedding(model) is not None


def _unsupported(model: nn.Module) -> ConfigError:
    return ConfigError(
        f"Model {type(model).__name__} (arch {getattr(model, 'arch', '?')!r}) has no forward-from-embeddings adapter; "
        "supported: the bag, cnn, lstm, transformer and minilm classifiers, or a module defining input_embedding() "
        "and forward_from_embeddings(inputs_embeds, attention_mask)."
    )


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The token embedding table ``E`` (``[vocab, dim]``) whose rows the relaxed tokens mix."""
    custom = getattr(model, "input_embedding", None)
    if callable(custom) and callable(getattr(model, "forward_from_embeddings", None)):
        emb = custom()
    elif _is_hf(model):
        emb = model.encoder.model.get_input_embeddings()  # type: ignore[union-attr,operator]
    else:
        emb = _small_classifier_embedding(model)
    if not isinstance(emb, nn.Embedding):
        raise _unsupported(model)
    return emb


@contextlib.contextmanager
def _replace_output(module: nn.Module, value: torch.Tensor) -> Iterator[None]:
    """Inside the block, ``module(...)`` returns ``value`` (a forward hook; removed on exit)."""
    handle = module.register_forward_hook(lambda _m, _inp, _out: value)
    try:
        yield
    finally:
        handle.remove()


def _hf_forward(model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    from trustnlp.models.base import position_ids
    from trustnlp.models.hf import additive_mask

    enc = model.encoder
    hf = enc.model
    mask4 = additive_mask(attention_mask, inputs_embeds.dtype)
    kwargs: dict[str, Any] = {"inputs_embeds": inputs_embeds,
                              "attention_mask": attention_mask if mask4 is None else mask4}
    params = inspect.signature(hf.forward).parameters
    if "position_ids" in params:
        kwargs["position_ids"] = position_ids(attention_mask)
    if "token_type_ids" in params and getattr(hf.config, "type_vocab_size", 0) > 0:
        kwargs["token_type_ids"] = torch.zeros_like(attention_mask).contiguous()
    hidden = hf(**kwargs).last_hidden_state
    return model.head(model.dropout(enc.pool(hidden, attention_mask)))


def forward_from_embeddings(model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, num_labels]`` of ``model`` for token embeddings ``inputs_embeds [B, T, dim]``.

    ``inputs_embeds`` replaces the token-embedding lookup ``E[input_ids]`` only; everything after it
    runs as in ``model(input_ids, attention_mask)``. Gradients flow to ``inputs_embeds``.

    Raises:
        ConfigError: no adapter for this model (see the module docstring).
        DataError: shapes that do not fit (``[B, T, dim]`` against a ``[B, T]`` mask).
    """
    emb = input_embedding(model)
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[:2] != attention_mask.shape or \
            inputs_embeds.shape[2] != emb.embedding_dim:
        raise DataError(f"Expected `inputs_embeds` of shape [B, T, {emb.embedding_dim}] with an attention mask "
                        f"[B, T], but got {tuple(inputs_embeds.shape)} and {tuple(attention_mask.shape)}.")
    custom = getattr(model, "forward_from_embeddings", None)
    if callable(custom) and callable(getattr(model, "input_embedding", None)):
        return custom(inputs_embeds, attention_mask)
    if _is_hf(model):
        return _hf_forward(model, inputs_embeds, attention_mask)
    # bag / cnn / lstm / transformer: the ids only give the shape; the hook supplies the embeddings.
    ids = torch.zeros(attention_mask.shape, dtype=torch.long, device=attention_mask.device)
    with _replace_output(emb, inputs_embeds):
        return model(ids, attention_mask)
