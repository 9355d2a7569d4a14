"""Per-layer-type rules (a registry by module type) giving per-example gradient representations.

A rule turns what the forward hooks recorded for one module (its inputs ``a`` and, after the
single backward, the gradients ``g`` of the summed loss with respect to its outputs) into
per-example gradient representations (:mod:`trustnlp.privacy.clipping.grads`) of each trainable
parameter, without materialising per-example gradients where that is cheaper:

* ``nn.Linear`` (``y = x Wᵀ + b``): ``G_i = Σ_t g_it a_itᵀ`` (Goodfellow 2015), ghost norm
  (Li et al. 2022) or instantiation by Bu et al. 2023's cost rule; bias ``Σ_t g_it``.
* transformers' GPT-2 ``Conv1D`` (``y = x W + b``, ``W [in, out]``): ``G_i = Σ_t a_it g_itᵀ``.
* ``nn.Conv1d``: the input unfolded into patches makes it a sequence Linear.
* ``nn.Embedding``: a scatter of ``g_it`` into rows ``id_it`` (none into ``padding_idx``).
* ``nn.LayerNorm`` / ``nn.RMSNorm``: ``Σ_t g ⊙ x̂`` and ``Σ_t g`` are only ``[B, d]``: instantiated.

Anything else goes to the ``torch.func`` fallback (:mod:`trustnlp.privacy.clipping.fallback`).
Register a rule for a new layer type with ``@register_rule(MyLayer)`` on a :class:`Rule` subclass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trustnlp.errors import PrivacyError
from trustnlp.privacy.clipping.grads import Call, Dense, Outer, PerExampleGrad, Rows, batched

__all__ = ["RULES", "Rule", "find_rule", "register_rule"]

Params = dict[str, nn.Parameter]
Grads = dict[str, list[PerExampleGrad]]


class Rule:
    """How per-example gradients of one module type's own parameters are formed.

    Subclasses set ``name`` and implement :meth:`grads`; ``outer`` rules (weight gradients as
    :class:`~trustnlp.privacy.clipping.grads.Outer`) report the norm method chosen (``-ghost`` /
    ``-instantiate``).
    """

    name: str = "rule"
    outer: bool = False

    def supports(self, module: nn.Module) -> bool:
        """Whether this rule handles this configuration of the module (else the fallback is used)."""
        return True

    def grads(
        self, module: nn.Module, calls: Sequence[Call], params: dict[str, nn.Parameter], batch_size: int
    ) -> dict[str, list[PerExampleGrad]]:
        """Per-example gradient representations of the trainable parameters ``params`` (by name)."""
        raise NotImplementedError

    def describe(self, module: nn.Module, merged: dict[str, list[PerExampleGrad]]) -> str:
        """The name reported by ``rules_report`` (after a backward, with the norm method chosen)."""
        outer = [g for g in merged.get("weight", []) if isinstance(g, Outer)]
        if self.outer and outer:
            return f"{self.name}-{'ghost' if outer[0].ghost else 'instantiate'}"
        return self.name


RULES: dict[type, Rule] = {}
_LAZY_RULES: dict[str, Rule] = {}  # "module.QualName" -> rule, for classes we do not import


def register_rule(module_type: type | str) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator registering a :class:`Rule` for ``module_type`` (a class, or its qualified
    name ``"package.module.Class"`` for classes of optional dependencies)."""

    def deco(cls: type[Rule]) -> type[Rule]:
        if isinstance(module_type, str):
            _LAZY_RULES[module_type] = cls()
        else:
            RULES[module_type] = cls()
        return cls

    return deco


def find_rule(module: nn.Module) -> Rule | None:
    """The registered rule for the module's class or nearest registered base class, if it supports the module."""
    for cls in type(module).__mro__:
        rule = RULES.get(cls)
        if rule is None and (rule := _LAZY_RULES.get(f"{cls.__module__}.{cls.__qualname__}")) is not None:
            RULES[cls] = rule  # the class exists now: register it by type
        if rule is not None:
            return rule if rule.supports(module) else None
    return None


def _seq(t: Tensor, batch_size: int, what: str) -> Tensor:
    """``[B, ..., d] -> [B, T, d]`` (a ``[B, d]`` input is a sequence of length 1)."""
    t = batched(t, batch_size, what)
    return t.reshape(batch_size, -1, t.shape[-1])


def _bias(g: Tensor, params: dict[str, nn.Parameter], out: dict[str, list[PerExampleGrad]], dim: int = 1) -> None:
    if "bias" in params:
        out["bias"] = [Dense(g.sum(dim))]


@register_rule(nn.Linear)
class LinearRule(Rule):
    """``y = x Wᵀ + b``: ``G_i = Σ_t g_it a_itᵀ`` (:class:`Outer`), bias ``Σ_t g_it``."""

    name = "linear"
    outer = True

    def grads(self, module: Any, calls: Sequence[Call], params: Params, batch_size: int) -> Grads:
        out: dict[str, list[PerExampleGrad]] = {}
        for call in calls:
            a, g = _seq(call.x, batch_size, "input"), _seq(call.g, batch_size, "output")
            r: dict[str, list[PerExampleGrad]] = {"weight": [Outer(g, a, module.weight.shape)]}
            _bias(g, params, r)
            for k in params:
                out.setdefault(k, []).extend(r[k])
        return out


@register_rule("transformers.pytorch_utils.Conv1D")
class GPT2Conv1DRule(Rule):
    """transformers' GPT-2 ``Conv1D`` (``y = x W + b``, ``W`` of shape ``[in, out]``): ``G_i = Σ_t a_it g_itᵀ``."""

    name = "gpt2-conv1d"
    outer = True

    def grads(self, module: Any, calls: Sequence[Call], params: Params, batch_size: int) -> Grads:
        out: dict[str, list[PerExampleGrad]] = {}
        for call in calls:
            a, g = _seq(call.x, batch_size, "input"), _seq(call.g, batch_size, "output")
            r: dict[str, list[PerExampleGrad]] = {"weight": [Outer(a, g, module.weight.shape)]}
            _bias(g, params, r)
            for k in params:
                out.setdefault(k, []).extend(r[k])
        return out


@register_rule(nn.Embedding)
class EmbeddingRule(Rule):
    """``y_t = E[id_t]``: ``G_i = Σ_t e_{id_it} g_itᵀ`` (:class:`Rows`); no gradient to ``padding_idx``.

    ``scale_grad_by_freq`` (frequencies over the whole batch mix examples) goes to the fallback.
    """

    name = "embedding"

    def supports(self, module: nn.Module) -> bool:
        return not getattr(module, "scale_grad_by_freq", False)

    def grads(self, module: Any, calls: Sequence[Call], params: Params, batch_size: int) -> Grads:
        reps: list[PerExampleGrad] = []
        for call in calls:
            ids = batched(call.x, batch_size, "input ids").reshape(batch_size, -1)
            reps.append(Rows(ids, _seq(call.g, batch_size, "output"), module.num_embeddings, module.padding_idx))
        return {"weight": reps}


def _norm_grads(
    x_hat: Tensor, g: Tensor, ndim: int, params: dict[str, nn.Parameter], batch_size: int
) -> dict[str, list[PerExampleGrad]]:
    shape = g.shape[g.dim() - ndim :]
    out: dict[str, list[PerExampleGrad]] = {}
    if "weight" in params:
        out["weight"] = [Dense((g * x_hat).reshape(batch_size, -1, *shape).sum(1))]
    if "bias" in params:
        out["bias"] = [Dense(g.reshape(batch_size, -1, *shape).sum(1))]
    return out


@register_rule(nn.LayerNorm)
class LayerNormRule(Rule):
    """``y = x̂ ⊙ w + b`` with ``x̂ = (x − μ)/sqrt(σ² + ε)``: instantiated ``Σ_t g ⊙ x̂`` and ``Σ_t g`` (``[B, d]``)."""

    name = "layernorm"

    def grads(self, module: Any, calls: Sequence[Call], params: Params, batch_size: int) -> Grads:
        out: dict[str, list[PerExampleGrad]] = {}
        k = len(module.normalized_shape)
        for call in calls:
            x = batched(call.x, batch_size, "input")
            dims = tuple(range(x.dim() - k, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
            for name, reps in _norm_grads(
                (x - mean) * torch.rsqrt(var + module.eps), call.g, k, params, batch_size
            ).items():
                out.setdefault(name, []).extend(reps)
        return out


@register_rule(nn.RMSNorm)
class RMSNormRule(Rule):
    """``y = x̂ ⊙ w`` with ``x̂ = x / sqrt(mean(x²) + ε)``: instantiated ``Σ_t g ⊙ x̂``."""

    name = "rmsnorm"

    def grads(self, module: Any, calls: Sequence[Call], params: Params, batch_size: int) -> Grads:
        out: dict[str, list[PerExampleGrad]] = {}
        k = len(module.normalized_shape)
        for call in calls:
            x = batched(call.x, batch_size, "input")
            eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
            ms = x.pow(2).mean(dim=tuple(range(x.dim() - k, x.dim())), keepdim=True)
            for name, reps in _norm_grads(x * torch.rsqrt(ms + eps), call.g, k, params, batch_size).items():
                out.setdefault(name, []).extend(reps)
        return out


@register_rule(nn.Conv1d)
class Conv1dRule(Rule):
    """``nn.Conv1d`` (groups 1, zero padding, any stride/dilation): the input unfolded into patches
    ``[B, L_out, C_in·k]`` makes it a sequence Linear, ``G_i = Σ_l g_il p_ilᵀ`` (:class:`Outer`)."""

    name = "conv1d"
    outer = True

    def supports(self, module: nn.Module) -> bool:
        return bool(module.groups == 1 and module.padding_mode == "zeros")

    def grads(self, module: Any, calls: Sequence[Call], params: Params, batch_size: int) -> Grads:
        (k,), (dil,), (stride,) = module.kernel_size, module.dilation, module.stride
        if module.padding == "same":
            total = dil * (k - 1)
            left, right = total // 2, total - total // 2
        elif module.padding == "valid":
            left = right = 0
        else:
            left = right = module.padding[0]
        out: dict[str, list[PerExampleGrad]] = {}
        for call in calls:
            x = batched(call.x, batch_size, "input")
            if x.dim() != 3:
                raise PrivacyError(f"Expected a batched input [B, C, L], but got shape {tuple(x.shape)}.")
            x = F.pad(x, (left, right))
            patches = F.unfold(x.unsqueeze(2), (1, k), dilation=(1, dil), stride=(1, stride))  # [B, C·k, L_out]
            g = call.g  # [B, C_out, L_out]
            r: dict[str, list[PerExampleGrad]] = {
                "weight": [Outer(g.transpose(1, 2), patches.transpose(1, 2), module.weight.shape)]
            }
            _bias(g, params, r, dim=2)
            for name in params:
                out.setdefault(name, []).extend(r[name])
        return out
