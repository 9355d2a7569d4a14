"""Reference per-example gradients by a loop over single examples (helpers for the clipping tests; no tests here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from trustnlp.privacy.clipping import PerSampleClipper

Batch = Mapping[str, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]  # (model, batch) -> per-example losses [B]


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    """Unique trainable parameters, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def param_groups(model: nn.Module) -> dict[int, str]:
    """id(param) -> path of the first module owning it (the clipper's per-layer groups)."""
    out: dict[int, str] = {}
    for name, module in model.named_modules():
        for p in module._parameters.values():
            if p is not None and p.requires_grad:
                out.setdefault(id(p), name)
    return out


def loop_grads(model: nn.Module, loss_fn: LossFn, batch: Batch) -> Tensor:
    """``[B, P]``: example ``i``'s flattened gradient, from a forward of ``batch[i:i+1]`` alone."""
    params = trainable_params(model)
    rows = []
    for i in range(next(iter(batch.values())).shape[0]):
        sub = {k: v[i : i + 1] for k, v in batch.items()}
        loss = loss_fn(model, sub)[0]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]))
    return torch.stack(rows)


def per_sample_grad_norms_loop(model: nn.Module, loss_fn: LossFn, batch: Batch) -> Tensor:
    """Per-example total gradient norms ``[B]`` by the loop."""
    return loop_grads(model, loss_fn, batch).norm(dim=1)


def split(model: nn.Module, flat: Tensor) -> list[Tensor]:
    """A flat ``[P]`` vector as tensors shaped like the trainable parameters."""
    out, pos = [], 0
    for p in trainable_params(model):
        out.append(flat[pos : pos + p.numel()].view_as(p))
        pos += p.numel()
    return out


def group_columns(model: nn.Module) -> dict[str, Tensor]:
    """Per-layer group -> boolean mask over the ``P`` flattened columns."""
    groups = param_groups(model)
    params = trainable_params(model)
    total = sum(p.numel() for p in params)
    masks: dict[str, Tensor] = {}
    pos = 0
    for p in params:
        m = masks.setdefault(groups[id(p)], torch.zeros(total, dtype=torch.bool))
        m[pos : pos + p.numel()] = True
        pos += p.numel()
    return masks


def clipped_grads(model: nn.Module, loss_fn: LossFn, batch: Batch, clipper: PerSampleClipper) -> tuple[Tensor, Tensor]:
    """Run ``clipper`` on ``batch`` (grads zeroed first); returns (stats.norms, flat p.grad)."""
    model.zero_grad(set_to_none=True)
    with clipper:
        stats = clipper.backward(loss_fn(model, batch))
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in trainable_params(model)])
    return stats.norms, flat


def assert_close(actual: Tensor, expected: Tensor, rtol: float = 1e-8) -> None:
    """Relative comparison with an absolute floor scaled to ``expected``'s magnitude."""
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-12))
