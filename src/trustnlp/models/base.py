"""Model base class, registry and shared pieces (masked pooling, option checks).

Every trustnlp model is a plain ``torch.nn.Module`` over token ids with
``forward(input_ids: LongTensor[B, T], attention_mask: LongTensor[B, T])``, a class attribute
``arch`` (its registry name), an attribute ``config`` (a JSON-serialisable dict holding everything
needed to rebuild it) and a classmethod ``from_config(config)``.

Example:
    >>> model = build_model("bag", vocab_size=50, num_labels=3)
    >>> ids = torch.tensor([[2, 7, 9, 3]]); mask = torch.ones_like(ids)
    >>> model(ids, mask).shape
    torch.Size([1, 3])
    >>> type(model.from_config(model.config)).__name__
    'BagClassifier'
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar

import torch
from torch import nn

from trustnlp.errors import ConfigError, DataError, expected

__all__ = [
    "MODELS",
    "TextModel",
    "TokenEncoder",
    "build_model",
    "check_choice",
    "check_float",
    "check_inputs",
    "check_int",
    "masked_max",
    "masked_mean",
    "position_ids",
    "register",
]

M = TypeVar("M", bound="TextModel")


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, else :class:`ConfigError` in the house phrasing."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if not is_int:
        raise ConfigError(expected(name, f"an integer >= {minimum}", value))
    if value < minimum:
        raise ConfigError(expected(name, f">= {minimum}", value))
    return value


def check_float(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in ``[low, high)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ConfigError(expected(name, f"a number in [{low}, {high})", value))
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ConfigError(expected(name, f"one of {list(choices)}", value))
    return value


def check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Validate the shapes of a batch (cheap checks only, nothing data-dependent)."""
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise DataError(
            f"Expected `input_ids` and `attention_mask` of the same shape [B, T], but got {tuple(input_ids.shape)} "
            f"and {tuple(attention_mask.shape)}."
        )


def position_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """``arange(T)`` expanded to ``[B, T]`` and made contiguous (per-sample gradient rules need a
    real batch dimension on every embedding input)."""
    b, t = input_ids.shape
    return torch.arange(t, device=input_ids.device).expand(b, t).contiguous()


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [B, T, H]`` over positions where ``attention_mask [B, T]`` is 1 -> ``[B, H]``."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def masked_max(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Max of ``hidden [B, T, H]`` over unmasked positions -> ``[B, H]`` (rows with no token give the dtype's min)."""
    fill = torch.finfo(hidden.dtype).min
    return hidden.masked_fill(attention_mask.unsqueeze(-1) == 0, fill).amax(dim=1)


def _init_options(cls: type) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(cls)
    return {n: p for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}


def _check_options(cls: type, config: Mapping[str, Any], what: str) -> None:
    if not isinstance(config, Mapping):
        raise ConfigError(f"Expected the {what} config to be a mapping, but got {type(config).__name__}.")
    params = _init_options(cls)
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise ConfigError(f"Unknown option(s) {unknown} for {what}; its options are {sorted(params)}.")
    missing = sorted(n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in config)
    if missing:
        raise ConfigError(f"Missing option(s) {missing} for {what}.")


class TextModel(nn.Module):
    """Base of every trustnlp model: ``arch``, ``config`` and ``from_config``.

    Subclasses take only keyword-only constructor arguments and set ``self.config`` to a
    JSON-serialisable dict of them (after validation), so ``cls(**config)`` rebuilds the model.
    """

    arch: ClassVar[str] = ""
    config: dict[str, Any]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """Rebuild a model from its ``config`` (unknown or missing options raise :class:`ConfigError`)."""
        _check_options(cls, config, f"model `{cls.arch}`")
        return cls(**dict(config))

    def num_parameters(self, *, trainable: bool = False) -> int:
        """Number of parameters (only those with ``requires_grad`` when ``trainable``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}"


class TokenEncoder(nn.Module):
    """Token ids -> per-token representations ``[B, T, out_dim]``, plus its own pooling.

    Used inside classifiers and the joint tagger; ``config`` holds its options (without
    ``vocab_size`` / ``pad_id``, which the owning model records).
    """

    out_dim: int
    config: dict[str, Any]

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sequence representation ``[B, out_dim]`` (masked mean unless overridden)."""
        return masked_mean(hidden, attention_mask)

    @classmethod
    def from_options(cls, *, vocab_size: int, pad_id: int, options: Mapping[str, Any], what: str) -> TokenEncoder:
        """Build with validated ``options``."""
        _check_options(cls, {"vocab_size": vocab_size, "pad_id": pad_id, **options}, what)
        return cls(vocab_size=vocab_size, pad_id=pad_id, **dict(options))


MODELS: dict[str, type[TextModel]] = {}


def register(cls: type[M]) -> type[M]:
    """Class decorator: add ``cls`` to :data:`MODELS` under ``cls.arch``."""
    MODELS[cls.arch] = cls
    return cls


def build_model(
    arch: str, *, vocab_size: int, num_labels: int = 0, num_tags: int = 0, pad_id: int = 0, **options: Any
) -> TextModel:
    """Build a fresh model by registry name.

    Args:
        arch: one of :data:`MODELS` (``bag``, ``cnn``, ``lstm``, ``transformer``, ``minilm``, ``joint``, ``lm``).
        vocab_size: the tokeniser's vocabulary size.
        num_labels: number of classes (classifiers and ``joint``; >= 2).
        num_tags: number of slot tags (``joint`` only).
        pad_id: the tokeniser's padding id.
        **options: architecture options (e.g. ``dim``, ``trainable``, ``k``); see each class.

    Raises:
        ConfigError: unknown ``arch``, an option the architecture does not take, or a bad value.
    """
    if arch not in MODELS:
        raise ConfigError(expected("model", f"one of {sorted(MODELS)}", arch))
    cls = MODELS[arch]
    params = _init_options(cls)
    config: dict[str, Any] = {"vocab_size": vocab_size, "pad_id": pad_id}
    for name, value in (("num_labels", num_labels), ("num_tags", num_tags)):
        if name in params:
            config[name] = value
        elif value:
            raise ConfigError(f"Model `{arch}` does not take `{name}` (got {value!r}).")
    clash = sorted(set(options) & set(config))
    if clash:
        raise ConfigError(f"Options {clash} are given twice for model `{arch}`.")
    return cls.from_config({**config, **options})
