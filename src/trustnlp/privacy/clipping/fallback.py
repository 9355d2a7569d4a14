"""Generic per-example gradients of any module's own parameters with ``torch.func``.

For a module ``f(θ, x)`` called on a batch, with recorded inputs ``x`` and the summed loss's
gradient ``g = ∂(Σ_j L_j)/∂y`` with respect to its output ``y``, example ``i``'s gradient is a
vector-Jacobian product of the module alone:

    G_i = (∂f(θ, x_i)/∂θ)ᵀ g_i        (as g_i = ∂L_i/∂y_i when examples do not interact)

computed for all ``i`` at once as ``torch.func.vmap`` over examples of ``torch.func.vjp`` of
``torch.func.functional_call(module, θ, (x_i,))`` (each example re-run with a batch of one).
Tuple outputs (e.g. ``nn.LSTM``'s ``(out, (h, c))``) get zero cotangents for unused parts.

The re-run must reproduce the recorded batched output: a module whose forward mixes examples
(``BatchNorm`` in training mode), draws random numbers (dropout inside the module) or cannot be
batched by ``vmap`` raises :class:`~trustnlp.errors.PrivacyError`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from trustnlp.errors import PrivacyError
from trustnlp.privacy.clipping.grads import Call, Dense, PerExampleGrad
from trustnlp.privacy.clipping.rules import Rule

__all__ = ["VmapFallback", "flatten"]


def flatten(tree: Any) -> tuple[list[Any], Callable[[list[Any]], Any]]:
    """Leaves of nested tuples / lists / dicts (namedtuples kept) and a function rebuilding the structure."""
    if isinstance(tree, (tuple, list)):
        parts = [flatten(x) for x in tree]
        sizes = [len(p[0]) for p in parts]

        def build_seq(leaves: list[Any]) -> Any:
            items, pos = [], 0
            for (_, rebuild), n in zip(parts, sizes):
                items.append(rebuild(leaves[pos : pos + n]))
                pos += n
            if isinstance(tree, list):
                return items
            return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)

        return [leaf for p in parts for leaf in p[0]], build_seq
    if isinstance(tree, dict):
        keys = list(tree)
        leaves, rebuild = flatten([tree[k] for k in keys])
        return leaves, lambda xs: dict(zip(keys, rebuild(xs)))
    return [tree], lambda xs: xs[0]


def _batch_dims(module: nn.Module, leaves: Sequence[Any], batch_size: int, outputs: bool) -> list[int | None]:
    """Batch dimension of each tensor leaf (``None``: not batched, passed whole to every example).

    RNNs (``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``): sequence tensors have the batch first when
    ``batch_first`` (else second); hidden states ``[layers, B, H]`` second. Other modules: the first
    dimension when it has the batch's size.
    """
    dims: list[int | None] = []
    for j, t in enumerate(leaves):
        if not isinstance(t, Tensor) or t.dim() == 0:
            dims.append(None)
            continue
        if isinstance(module, nn.RNNBase):
            d = (0 if module.batch_first else 1) if j == 0 else 1
        else:
            d = 0
        if t.dim() > d and t.shape[d] == batch_size:
            dims.append(d)
        elif outputs:
            raise PrivacyError(
                f"Expected its output {j} to have a batch dimension of size {batch_size}, but got shape "
                f"{tuple(t.shape)}."
            )
        else:
            dims.append(None)
    return dims


@contextlib.contextmanager
def _without_onednn() -> Iterator[None]:
    old = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = old  # type: ignore[assignment]


class VmapFallback(Rule):
    """Per-example gradients by ``vmap(vjp(functional_call))`` (instantiated, :class:`Dense`)."""

    name = "vmap-fallback"

    def grads(
        self, module: nn.Module, calls: Sequence[Call], params: dict[str, nn.Parameter], batch_size: int
    ) -> dict[str, list[PerExampleGrad]]:
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise PrivacyError(
                "batch normalisation in training mode mixes the examples of a batch, so per-example gradients "
                "are undefined; use LayerNorm/GroupNorm or put the module in eval mode."
            )
        out: dict[str, list[PerExampleGrad]] = {name: [] for name in params}
        for call in calls:
            try:
                grads = self._one_call(module, call, params, batch_size)
            except PrivacyError:
                raise
            except Exception as e:  # vmap cannot batch it, random ops, data-dependent control flow, ...
                raise PrivacyError(
                    f"per-example gradients via torch.func failed ({type(e).__name__}: {str(e).splitlines()[0]}). "
                    "Register a rule for this layer type (trustnlp.privacy.clipping.register_rule) or replace it."
                ) from e
            for name, g in grads.items():
                out[name].append(Dense(g))
        return out

    def _one_call(
        self, module: nn.Module, call: Call, params: dict[str, nn.Parameter], batch_size: int
    ) -> dict[str, Tensor]:
        leaves, rebuild = flatten((call.args, call.kwargs))
        in_dims = _batch_dims(module, leaves, batch_size, outputs=False)
        out_dims = _batch_dims(module, call.outputs, batch_size, outputs=True)
        dims_out = [d for d in out_dims if d is not None]  # all of them (outputs must be batched)
        batched = [(j, d) for j, d in enumerate(in_dims) if d is not None]
        # Parameters expanded to [B, ...] (no copy): every tensor inside is then batched, which some
        # kernels with in-place updates (the native LSTM cell) need under vmap.
        theta = {name: p.detach().expand(batch_size, *p.shape) for name, p in params.items()}

        def one(theta: dict[str, Tensor], xs: tuple[Tensor, ...], cots: tuple[Tensor, ...]) -> Any:
            full = list(leaves)
            for (j, d), x in zip(batched, xs):
                full[j] = x.unsqueeze(d)
            args, kwargs = rebuild(full)

            def f(th: dict[str, Tensor]) -> tuple[Tensor, ...]:
                res, _ = flatten(functional_call(module, th, tuple(args), kwargs))
                return tuple(r for r in res if isinstance(r, Tensor) and r.is_floating_point())

            primal: Any = vjp(f, theta)
            ys, pullback = primal
            (g,) = pullback(tuple(c.unsqueeze(d) for c, d in zip(cots, dims_out)))
            return g, tuple(y.squeeze(d) for y, d in zip(ys, dims_out))

        xs = tuple(leaves[j] for j, _ in batched)
        with warnings.catch_warnings(), _without_onednn():
            # oneDNN's RNN kernel has no vmap batching rule (it would loop over examples, with a warning)
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            result: Any = vmap(one, in_dims=(0, tuple(d for _, d in batched), tuple(dims_out)))(
                theta, xs, tuple(call.grads)
            )
        grads, ys = result
        for j, (y, ref, d) in enumerate(zip(ys, call.outputs, dims_out)):
            ref = ref.movedim(d, 0)
            tol = 10 * torch.finfo(ref.dtype).eps ** 0.5
            scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
            if y.shape != ref.shape or not torch.allclose(y, ref, rtol=tol, atol=tol * scale):
                raise PrivacyError(
                    f"re-running it one example at a time does not reproduce its batched output {j}: its forward "
                    "mixes examples or is random (dropout inside the module?), so per-example gradients are undefined."
                )
        return grads
