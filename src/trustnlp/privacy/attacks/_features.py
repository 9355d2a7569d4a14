"""Frozen-encoder models for shadow training: the encoder as a fixed feature map, and heads on its features.

A classifier ``head(dropout(embed(x)))`` whose encoder is frozen (MiniLM ``trainable="frozen"``) only
trains its head. Two modules make that explicit:

- :class:`FrozenEncoderModel` wraps the whole classifier and keeps the frozen encoder in eval mode
  (no dropout inside it) while the rest trains: the encoder is then a *deterministic* feature map
  ``f(x)``, as in a linear probe. (In train mode a frozen transformer still applies its internal
  dropout, i.e. it would be a randomised feature map that no pre-computed features can reproduce.)
- :class:`FeatureHead` is the same head over pre-computed features ``F[i] = f(x_i)``: its "token
  ids" are example indices ``[B, 1]`` into ``F``, so the one training loop, the Poisson sampler and
  the DP step run unchanged on it and see the same head inputs ``dropout(F[i])``.

Training both with the same seed gives the same heads (the loop draws the same batches, dropout
masks and DP noise in the same order), up to float rounding of ``f(x)`` between a batch of 256
examples and a training batch (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from trustnlp.errors import ConfigError
from trustnlp.tasks import EncodedData

__all__ = ["FeatureHead", "FrozenEncoderModel", "encode_features", "feature_data", "has_frozen_encoder"]


def has_frozen_encoder(model: nn.Module) -> bool:
    """Whether only ``model.head`` trains, over ``model.embed(ids, mask)`` (a frozen pretrained encoder)."""
    head, dropout, embed = getattr(model, "head", None), getattr(model, "dropout", None), getattr(model, "embed", None)
    if not isinstance(head, nn.Linear) or not isinstance(dropout, nn.Dropout) or not callable(embed):
        return False
    head_ids = {id(p) for p in head.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return bool(trainable) and all(id(p) in head_ids for p in trainable) and len(trainable) == len(head_ids)


def _require(model: nn.Module) -> None:
    if not has_frozen_encoder(model):
        raise ConfigError(
            f"The features path needs a classifier whose only trainable part is a linear `head` over `embed` "
            f"(e.g. MiniLM with trainable='frozen'), but model `{getattr(model, 'arch', type(model).__name__)}` "
            "has other trainable parameters; use path='plain' (or 'batched' for small models).")


class FrozenEncoderModel(nn.Module):
    """``model`` with its frozen encoder kept in eval mode; everything else follows ``train()``/``eval()``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        _require(model)
        self.model = model
        self.arch = getattr(model, "arch", "")
        self.config = getattr(model, "config", {})

    def train(self, mode: bool = True) -> FrozenEncoderModel:
        super().train(mode)
        self.model.encoder.eval()  # type: ignore[union-attr]
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


class FeatureHead(nn.Module):
    """``head(dropout(features[i]))`` for example indices ``i`` given as ``input_ids[:, 0]``.

    Args:
        features: ``[N, H]`` pre-computed encoder outputs (a buffer, never trained).
        head: the linear head (trained).
        dropout: the dropout in front of the head (the same module type and rate as the classifier's).
        arch / config: the classifier's, so the loop picks the same default learning rate.
    """

    def __init__(self, features: torch.Tensor, head: nn.Linear, dropout: nn.Dropout, *, arch: str = "",
                 config: dict | None = None) -> None:
        super().__init__()
        self.register_buffer("features", features, persistent=False)
        self.dropout = dropout
        self.head = head
        self.arch = arch
        self.config = dict(config or {})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features[input_ids[:, 0]]))


@torch.no_grad()
def encode_features(model: nn.Module, data: EncodedData, *, batch_size: int = 256) -> torch.Tensor:
    """``model.embed`` of every example (eval mode), ``[N, H]`` in the model's dtype."""
    _require(model)
    was_training = model.training
    model.eval()
    try:
        out = [model.embed(b["input_ids"], b["attention_mask"]) for b in data.batches(batch_size)]  # type: ignore[operator]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def feature_data(index: torch.Tensor, labels: torch.Tensor | None) -> EncodedData:
    """Training data for a :class:`FeatureHead`: ids ``[n, 1]`` are the examples' rows in the feature table."""
    ids = index.reshape(-1, 1).to(torch.long)
    return EncodedData(ids, torch.ones_like(ids), labels, None, 0)
