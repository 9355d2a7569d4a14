"""Small causal language model (next-token prediction) with a seeded sampling loop.

Backbones:

* ``gpt2`` (default): a randomly initialised transformers ``GPT2LMHeadModel`` (2 layers, d=128,
  4 heads, 128 positions, vocabulary of the tokeniser), or a pretrained causal LM by
  ``model_name`` (local directory or Hub id; a clear error when offline).
* ``transformer``: trustnlp's own pre-LN :class:`~trustnlp.models.classifiers.TransformerEncoder`
  with ``causal=True`` and an untied linear LM head (only ``nn.Linear``/``nn.Embedding``/
  ``nn.LayerNorm``, convenient for per-sample gradients).

Example:
    >>> lm = CausalLM(vocab_size=50, dim=16, heads=2, layers=1, max_len=32)
    >>> g = torch.Generator().manual_seed(0)
    >>> lm.generate(torch.tensor([[2, 7]]), max_new_tokens=3, generator=g).shape
    torch.Size([1, 5])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.models.base import TextModel, check_choice, check_float, check_inputs, check_int, position_ids, register
from trustnlp.models.classifiers import TransformerEncoder
from trustnlp.models.hf import (
    ATTN_IMPLEMENTATIONS,
    _json_config,
    additive_mask,
    config_from_dict,
    hub_error,
    quiet_transformers,
    resolve_name,
    set_attention,
)

__all__ = ["LM_BACKBONES", "CausalLM"]

LM_BACKBONES = ("gpt2", "transformer")


@register
class CausalLM(TextModel):
    """A causal LM over token ids: ``forward(input_ids, attention_mask) -> logits [B, T, vocab]``.

    Args:
        vocab_size / pad_id: the tokeniser's.
        bos_id / eos_id: start / end token ids (e.g. the tokeniser's ``cls_id`` / ``sep_id``), or ``None``.
        backbone: ``gpt2`` or ``transformer`` (see the module docs).
        layers / dim / heads / max_len / dropout: size of a randomly initialised backbone.
        model_name: a pretrained causal LM (``gpt2`` backbone only; local directory or Hub id).
        model_config: a full transformers config dict (``to_dict()``); wins over ``model_name`` and
            builds a randomly initialised model of that shape (how ``load_model`` rebuilds it).
        attn_implementation: ``sdpa`` or ``eager`` (``gpt2`` backbone; see :class:`~trustnlp.models.hf.HFEncoder`).
    """

    arch = "lm"

    def __init__(
        self,
        *,
        vocab_size: int,
        pad_id: int = 0,
        bos_id: int | None = None,
        eos_id: int | None = None,
        backbone: str = "gpt2",
        layers: int = 2,
        dim: int = 128,
        heads: int = 4,
        max_len: int = 128,
        dropout: float = 0.1,
        model_name: str | None = None,
        model_config: Mapping[str, Any] | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size, 2)
        check_int("pad_id", pad_id, 0)
        for name, tid in (("bos_id", bos_id), ("eos_id", eos_id)):
            if tid is not None and (check_int(name, tid, 0) >= vocab_size):
                raise ConfigError(expected(name, f"< vocab_size ({vocab_size})", tid))
        check_choice("backbone", backbone, LM_BACKBONES)
        check_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
        for name, value in (("layers", layers), ("dim", dim), ("heads", heads), ("max_len", max_len)):
            check_int(name, value, 1)
        check_float("dropout", dropout, 0.0, 1.0)
        if backbone == "transformer" and (model_name or model_config):
            raise ConfigError("`model_name` / `model_config` need backbone 'gpt2'.")
        cfg: dict[str, Any] = {
            "vocab_size": vocab_size,
            "pad_id": pad_id,
            "bos_id": bos_id,
            "eos_id": eos_id,
            "backbone": backbone,
            "layers": layers,
            "dim": dim,
            "heads": heads,
            "max_len": max_len,
            "dropout": dropout,
            "model_name": model_name,
            "model_config": None,
            "attn_implementation": attn_implementation,
        }
        if backbone == "transformer":
            self.backbone = TransformerEncoder(
                vocab_size=vocab_size,
                pad_id=pad_id,
                dim=dim,
                layers=layers,
                heads=heads,
                ff=2 * dim,
                max_len=max_len,
                dropout=dropout,
                causal=True,
            )
            self.lm_head = nn.Linear(dim, vocab_size, bias=False)
            self.max_positions = max_len
        else:
            with quiet_transformers():
                hf: Any = self._build_hf(
                    vocab_size, pad_id, bos_id, eos_id, layers, dim, heads, max_len, dropout, model_name, model_config
                )
            set_attention(hf, attn_implementation)
            self.model = hf
            hf_vocab = hf.config.vocab_size
            if vocab_size > hf_vocab:
                raise ConfigError(expected("vocab_size", f"<= the model's vocabulary size ({hf_vocab})", vocab_size))
            self.max_positions = int(getattr(hf.config, "n_positions", max_len))
            cfg["model_config"] = _json_config(hf.config)
        self.config = cfg

    @staticmethod
    def _build_hf(
        vocab_size: int,
        pad_id: int,
        bos_id: int | None,
        eos_id: int | None,
        layers: int,
        dim: int,
        heads: int,
        max_len: int,
        dropout: float,
        model_name: str | None,
        model_config: Mapping[str, Any] | None,
    ) -> nn.Module:
        from transformers import AutoModelForCausalLM, GPT2Config

        if model_config is not None:
            return AutoModelForCausalLM.from_config(config_from_dict(model_config))
        if model_name is not None:
            path, local_only = resolve_name(model_name)
            try:
                return AutoModelForCausalLM.from_pretrained(path, local_files_only=local_only).float()
            except OSError as e:
                raise hub_error(model_name, e) from None
        if dim % heads:
            raise ConfigError(expected("dim", f"a multiple of heads ({heads})", dim))
        config = GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_len,
            n_embd=dim,
            n_layer=layers,
            n_head=heads,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        return AutoModelForCausalLM.from_config(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``[B, T, vocab]`` (position ``t`` predicts token ``t + 1``)."""
        check_inputs(input_ids, attention_mask)
        if input_ids.shape[1] > self.max_positions:
            raise DataError(expected("sequence length", f"<= {self.max_positions}", input_ids.shape[1]))
        if self.config["backbone"] == "transformer":
            return self.lm_head(self.backbone(input_ids, attention_mask))
        mask = additive_mask(attention_mask, self.model.dtype, causal=True)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask if mask is not None else attention_mask,
            position_ids=position_ids(input_ids),
            use_cache=False,
        )
        return out.logits

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int = 20,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample a continuation of ``prompt_ids`` (``[T]`` or unpadded ``[B, T]``).

        Each step samples from ``softmax(logits / temperature)`` restricted to the ``top_k`` most
        likely tokens (all when ``None``); ``temperature == 0`` is greedy. The context is cropped to
        the model's maximum length. Runs in eval mode (no dropout) and restores the previous mode.

        Returns:
            ``[B, T + max_new_tokens]`` (or ``[T + max_new_tokens]`` for a 1-D prompt).
        """
        check_int("max_new_tokens", max_new_tokens, 0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
            raise ConfigError(expected("temperature", ">= 0", temperature))
        if top_k is not None:
            check_int("top_k", top_k, 1)
        squeeze = prompt_ids.dim() == 1
        ids = prompt_ids.unsqueeze(0) if squeeze else prompt_ids
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise DataError(
                f"Expected `prompt_ids` of shape [T] or [B, T] with T >= 1, but got {tuple(prompt_ids.shape)}."
            )
        was_training = self.training
        self.eval()
        try:
            for _ in range(max_new_tokens):
                ctx = ids[:, -self.max_positions :]
                logits = self(ctx, torch.ones_like(ctx))[:, -1, :].float()
                if temperature == 0:
                    nxt = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = logits / temperature
                    if top_k is not None and top_k < logits.shape[-1]:
                        kth = logits.topk(top_k, dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = torch.softmax(logits, dim=-1)
                    nxt = torch.multinomial(probs, 1, generator=generator)
                ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
        finally:
            self.train(was_training)
        return ids[0] if squeeze else ids
