"""Where a model runs (CPU, CUDA, Apple MPS) and in which precision (fp32 or mixed).

``device``: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA if available, else MPS, else
CPU). ``precision``: ``32`` (fp32 everywhere), ``bf16`` or ``16`` (mixed precision, Micikevicius
et al. 2018, "Mixed Precision Training"): the forward pass runs under ``torch.autocast`` (matrix
products in bfloat16 / float16, reductions and the loss in float32) while the parameters, their
gradients and the optimiser state (the *master weights*) stay float32. float16's narrow exponent
range needs loss scaling (``torch.amp.GradScaler``: the loss is multiplied by ``S`` before the
backward and the gradients divided by ``S`` before the step, ``S`` halved on overflow), which the
training loop applies for ``16`` on CUDA; bfloat16 has float32's range and needs none.

:class:`DeviceModel` wraps a model so that callers need not know where it runs: inputs move to
the device, the forward runs under autocast, and its float16 / bfloat16 outputs come back as float32
on the inputs' device (so a loss or a metric computed from them is float32, and evaluation code written
for CPU tensors keeps working).

Per-example clipping (DP-SGD) needs per-example gradient norms in float32: :func:`fp32_boundary`
makes every layer that owns trainable parameters take and return float32 tensors (its matrix
products still run in the low precision under autocast), so what the clipper records, the layer
inputs ``a`` and the output gradients ``g``, is float32.

Example:
    >>> resolve_device("cpu"), autocast_dtype("bf16", torch.device("cpu"))
    (device(type='cpu'), torch.bfloat16)
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from trustnlp.errors import ConfigError, expected

__all__ = ["DEVICE_PATTERN", "PRECISIONS", "DeviceModel", "autocast_dtype", "fp32_boundary", "loss_scaler", "move_tensors",
           "resolve_device", "to_device", "upcast"]

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
PRECISIONS = ("32", "bf16", "16")
_LOW = {"bf16": torch.bfloat16, "16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """The ``torch.device`` for a ``device`` option, checked to be usable here.

    Raises:
        ConfigError: a malformed name, or a device this machine / this torch build does not have.
    """
    if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
        raise ConfigError(expected("device", "one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'", device))
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no visible CUDA device"
            raise ConfigError(
                f"Expected `device` to be available, but got {device!r}: CUDA is not available ({build}, "
                f"torch {torch.__version__}). Use --device cpu (or auto)."
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                expected("device", f"a CUDA device index < {torch.cuda.device_count()} (the visible devices)", device)
            )
        return torch.device("cuda", index)
    if device == "mps" and not _mps_available():
        raise ConfigError(
            f"Expected `device` to be available, but got {device!r}: Apple MPS is not available on this machine. "
            "Use --device cpu (or auto)."
        )
    return torch.device(device)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (``None`` for fp32).

    Raises:
        ConfigError: an unknown precision, or one the device does not support (float16 mixed
            precision needs CUDA; bfloat16 needs CPU or a CUDA device with bfloat16 support).
    """
    if precision not in PRECISIONS:
        raise ConfigError(expected("precision", f"one of {list(PRECISIONS)} ('fp16' = '16')", precision))
    if precision == "32":
        return None
    if device.type == "mps" or (precision == "16" and device.type != "cuda"):
        ok = "'32' or 'bf16'" if device.type == "cpu" else "'32'"
        raise ConfigError(
            f"Expected `precision` to be {ok} on device {str(device)!r}, but got {precision!r}"
            + (": float16 mixed precision (with loss scaling) needs CUDA." if device.type == "cpu" else ".")
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"Expected `precision` to be '32' or '16' on device {str(device)!r}, but got 'bf16': this GPU does not "
            "support bfloat16."
        )
    return _LOW[precision]


def _tree_map(fn: Any, tree: Any) -> Any:
    """``fn`` applied to every tensor in ``tree`` (tuples, named tuples, lists, dicts)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_tree_map(fn, x) for x in tree))
    if isinstance(tree, tuple | list):
        return type(tree)(_tree_map(fn, x) for x in tree)
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return tree


def loss_scaler(precision: str, device: torch.device, *, private: bool = False, default_step: bool = True
                ) -> torch.amp.GradScaler | None:
    """The loss scaler float16 mixed precision needs (``None`` for other precisions).

    Raises:
        ConfigError: the precision is not supported on ``device`` (see :func:`autocast_dtype`), or
            float16 is asked for a private step (the per-example clipping backward cannot be
            scaled) or a custom step (only the default step applies the scaler).
    """
    if autocast_dtype(precision, device) != torch.float16:
        return None
    if private:
        raise ConfigError(
            "Expected `precision` to be '32' or 'bf16' for private training (DP-SGD), but got '16': float16 needs "
            "loss scaling, which cannot wrap the per-example clipping backward; use bf16."
        )
    if not default_step:
        raise ConfigError(
            "Expected `precision` to be '32' or 'bf16' with a custom `step_fn`, but got '16': float16 needs loss "
            "scaling, which only the default step applies; use bf16."
        )
    return torch.amp.GradScaler(device.type)


def move_tensors(data: Any, device: torch.device) -> Any:
    """A copy of the dataclass ``data`` (e.g. an ``EncodedData``) with its tensor fields on ``device``."""
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    tensors = {k: v for k, v in fields.items() if isinstance(v, torch.Tensor) and v.device != device}
    return dataclasses.replace(data, **{k: v.to(device) for k, v in tensors.items()}) if tensors else data


def to_device(tree: Any, device: torch.device | str) -> Any:
    """``tree`` (tensors in tuples / named tuples / lists / dicts) moved to ``device``."""
    return _tree_map(lambda t: t.to(device), tree)


def upcast(tree: Any) -> Any:
    """``tree`` with its float16 / bfloat16 tensors cast to float32 (other tensors unchanged)."""
    return _tree_map(lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t, tree)


class DeviceModel(nn.Module):
    """``model`` run on ``device`` in ``precision``: ``forward(input_ids, attention_mask)`` moves the
    inputs there, runs the forward (under ``torch.autocast`` for mixed precision) and returns the
    float16 / bfloat16 outputs as float32, on the device the inputs came from.

    The wrapped model must already be on ``device`` (``model.to(device)``); ``train()`` /
    ``eval()`` reach it as a sub-module.
    """

    def __init__(self, model: nn.Module, *, device: torch.device, precision: str = "32") -> None:
        super().__init__()
        self.model, self.device = model, device
        self.precision, self.dtype = precision, autocast_dtype(precision, device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        source = input_ids.device
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if self.dtype is None:
            out = self.model(input_ids, attention_mask)
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.dtype):
                out = upcast(self.model(input_ids, attention_mask))
        return out if source == self.device else to_device(out, source)


@contextlib.contextmanager
def fp32_boundary(model: nn.Module) -> Iterator[None]:
    """Inside the block, every module owning trainable parameters takes and returns float32 tensors.

    Forward pre-hooks cast its float16 / bfloat16 inputs and forward hooks its outputs to float32
    (both prepended, so hooks registered later, such as a per-sample clipper's, see float32); under
    autocast the module's own matrix products still run in the low precision. Gradients with
    respect to its outputs are then float32 too. Removed on exit.
    """
    handles = []
    for module in model.modules():
        if any(p is not None and p.requires_grad for p in module._parameters.values()):
            handles.append(module.register_forward_pre_hook(_cast_inputs, with_kwargs=True, prepend=True))
            handles.append(module.register_forward_hook(_cast_output, prepend=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _cast_inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return upcast(args), upcast(kwargs)


def _cast_output(module: nn.Module, args: Any, output: Any) -> Any:
    return upcast(output)
