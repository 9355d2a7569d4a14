"""Joint intent classification and slot tagging (one encoder, two heads).

Token representations come from a :class:`~trustnlp.models.base.TokenEncoder` (``cnn``,
``transformer`` or ``minilm``); the intent head reads the encoder's masked pooled representation,
the tag head every token. Tag labels on non-first sub-tokens and padding are the loss's business
(ignored there); this model only produces logits.

Example:
    >>> model = JointTagger(vocab_size=100, num_labels=3, num_tags=5, encoder="transformer",
    ...                     encoder_options={"dim": 16, "heads": 2, "ff": 32})
    >>> ids = torch.randint(4, 100, (2, 6)); out = model(ids, torch.ones_like(ids))
    >>> out.intent_logits.shape, out.tag_logits.shape
    (torch.Size([2, 3]), torch.Size([2, 6, 5]))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from trustnlp.models.base import TextModel, TokenEncoder, check_choice, check_float, check_inputs, check_int, register
from trustnlp.models.classifiers import CNNEncoder, TransformerEncoder
from trustnlp.models.hf import HFEncoder

__all__ = ["JOINT_ENCODERS", "JointOutput", "JointTagger"]

JOINT_ENCODERS: dict[str, type[TokenEncoder]] = {
    "cnn": CNNEncoder,
    "transformer": TransformerEncoder,
    "minilm": HFEncoder,
}


class JointOutput(NamedTuple):
    """Logits of the joint model: ``intent_logits [B, num_labels]``, ``tag_logits [B, T, num_tags]``."""

    intent_logits: torch.Tensor
    tag_logits: torch.Tensor


@register
class JointTagger(TextModel):
    """Joint intent + slot model (cf. Chen et al., 2019, "BERT for joint intent classification and slot filling").

    Args:
        vocab_size / num_labels / num_tags / pad_id: sizes from the tokeniser and data.
        encoder: ``cnn``, ``transformer`` or ``minilm``.
        encoder_options: options of that encoder (:class:`CNNEncoder`, :class:`TransformerEncoder`
            or :class:`HFEncoder`, e.g. ``{"trainable": "last-k", "k": 2}``).
        dropout: before both heads.
    """

    arch = "joint"

    def __init__(
        self,
        *,
        vocab_size: int,
        num_labels: int,
        num_tags: int,
        pad_id: int = 0,
        encoder: str = "cnn",
        encoder_options: Mapping[str, Any] | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_int("num_labels", num_labels, 2)
        check_int("num_tags", num_tags, 2)
        check_choice("encoder", encoder, sorted(JOINT_ENCODERS))
        check_float("dropout", dropout, 0.0, 1.0)
        self.encoder = JOINT_ENCODERS[encoder].from_options(
            vocab_size=vocab_size, pad_id=pad_id, options=dict(encoder_options or {}), what=f"joint encoder `{encoder}`"
        )
        self.dropout = nn.Dropout(dropout)
        self.intent_head = nn.Linear(self.encoder.out_dim, num_labels)
        self.tag_head = nn.Linear(self.encoder.out_dim, num_tags)
        self.config = {
            "vocab_size": vocab_size,
            "num_labels": num_labels,
            "num_tags": num_tags,
            "pad_id": pad_id,
            "encoder": encoder,
            "encoder_options": dict(self.encoder.config),
            "dropout": dropout,
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> JointOutput:
        """``JointOutput(intent_logits [B, num_labels], tag_logits [B, T, num_tags])``."""
        check_inputs(input_ids, attention_mask)
        hidden = self.encoder(input_ids, attention_mask)
        pooled = self.encoder.pool(hidden, attention_mask)
        return JointOutput(self.intent_head(self.dropout(pooled)), self.tag_head(self.dropout(hidden)))
