"""Batched local training: a round's clients trained at once with ``torch.func``.

All clients of a round start from the same global model, so their parameters are the global ones
stacked along a new client dimension ``[C, ...]``. Each local step evaluates every client's batch in
one ``vmap(grad_and_value(loss))`` call over that dimension (``functional_call`` runs the shared
module with each client's parameters) and applies the local optimiser as tensor arithmetic on the
stacked parameters.

Unequal clients are padded, with masked losses, so the result equals the sequential path
(:func:`trustnlp.federated.client.local_update`) up to floating-point rounding:

- each client's step ``s`` uses exactly the batch the sequential path uses
  (:func:`~trustnlp.federated.client.batch_plan`, same seed);
- batches are padded to the round's largest batch by repeating a real example with loss weight 0,
  and to the longest input with attention-mask-0 padding (the models ignore masked positions);
- the loss is ``sum_i w_i loss_i / B_c`` with ``B_c`` the client's logical batch size, as in
  :func:`trustnlp.train._accumulate`;
- a client that has done all its steps is frozen (``torch.where`` on an active mask), so clients
  with fewer examples take fewer steps, as they would alone.

The local optimisers are written out to match ``torch.optim`` (SGD, SGD with momentum 0.9, Adam,
AdamW with torch's defaults). Models with active dropout are not batched (the random streams would
differ from the sequential path): :func:`vectorization_blocker` says why a model cannot be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from trustnlp.federated.client import Client, LocalTraining, batch_plan
from trustnlp.federated.strategy import ClientUpdate
from trustnlp.tasks import IGNORE_INDEX, Task

__all__ = ["train_vectorized", "vectorization_blocker"]

_BETAS, _EPS, _MOMENTUM = (0.9, 0.999), 1e-8, 0.9  # torch.optim defaults (Adam/AdamW) and make_optimizer's SGD momentum


def vectorization_blocker(model: nn.Module, local: LocalTraining) -> str | None:
    """Why ``model`` cannot be trained batched (``None`` when it can)."""
    for name, m in model.named_modules():
        p = getattr(m, "p", 0.0)
        if isinstance(m, nn.modules.dropout._DropoutNd) and p > 0:
            return f"the model has dropout ({name or 'model'}: p={p}); batched clients would draw different random masks"
    if not any(p.requires_grad for p in model.parameters()):
        return "the model has no trainable parameters"
    return None


def _pad_stack(batches: list[dict[str, torch.Tensor]], pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Stack per-client batches to ``[C, B, T]`` (row padding repeats row 0 with weight 0)."""
    rows = max(b["input_ids"].shape[0] for b in batches)
    length = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "attention_mask": 0, "tag_ids": IGNORE_INDEX}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in batches[0]}
    weights = []
    for b in batches:
        n = b["input_ids"].shape[0]
        for k, v in b.items():
            if v.dim() == 2 and v.shape[1] < length:
                v = torch.cat([v, v.new_full((v.shape[0], length - v.shape[1]), fill[k])], dim=1)
            if n < rows:
                v = torch.cat([v, v[:1].expand(rows - n, *v.shape[1:])], dim=0)
            out[k].append(v)
        weights.append(torch.arange(rows) < n)
    return {k: torch.stack(v) for k, v in out.items()}, torch.stack(weights)


def train_vectorized(model: nn.Module, task: Task, clients: Sequence[Client], global_params: Mapping[str, torch.Tensor],
                     local: LocalTraining, *, seeds: Sequence[int], configs: Sequence[Mapping[str, Any]] | None = None,
                     max_steps: int | None = None) -> list[ClientUpdate]:
    """Train ``clients`` from ``global_params`` at once; the same updates as the sequential path.

    Args:
        model: the shared architecture (its own parameter values are not used or changed).
        task: the loss.
        clients: the round's clients.
        global_params: the global trainable parameters.
        local: local training settings.
        seeds: each client's seed (:func:`~trustnlp.federated.client.client_seed`).
        configs: each client's instruction (``mu`` for FedProx).
        max_steps: stop after this many steps (the speed probe).
    """
    from torch.func import functional_call, grad_and_value, vmap

    configs = configs or [{} for _ in clients]
    c = len(clients)
    first = next(iter(global_params.values()))
    device, dtype = first.device, first.dtype
    params = {k: v.detach().unsqueeze(0).repeat(c, *([1] * v.dim())) for k, v in global_params.items()}
    anchor = {k: v.detach() for k, v in global_params.items()}
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in params}
    fixed.update({k: v for k, v in model.named_buffers()})
    pad_id = int((getattr(model, "config", None) or {}).get("pad_id", 0)) if isinstance(getattr(model, "config", None), dict) else 0
    plans = [batch_plan(cl.num_examples, local, s) for cl, s in zip(clients, seeds)]
    steps = torch.tensor([len(p) for p in plans], device=device)
    total = int(steps.max()) if c else 0
    if max_steps is not None:
        total = min(total, max_steps)
    mu = torch.tensor([float(cf.get("mu", 0.0)) for cf in configs], dtype=dtype, device=device)
    lr, wd = float(local.lr), float(local.weight_decay)

    def loss_one(p: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weight: torch.Tensor,
                 logical: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, fixed), (batch["input_ids"], batch["attention_mask"]))
        per = task.loss(out, batch, reduction="none")
        return (per * weight).sum() / logical

    step_fn = vmap(grad_and_value(loss_one))
    state: dict[str, dict[str, torch.Tensor]] = {"buf": {}, "m": {}, "v": {}}
    loss_sum = torch.zeros(c, dtype=torch.float64)
    seen = torch.zeros(c, dtype=torch.float64)
    model.train()
    for s in range(total):
        active = steps > s
        idx = [plan[s] if s < len(plan) else plan[0] for plan in plans]
        batch, weight = _pad_stack([cl.train.batch(i) for cl, i in zip(clients, idx)], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        sizes = torch.tensor([len(i) for i in idx], dtype=dtype)
        grads, losses = step_fn(params, batch, weight.to(device=device, dtype=dtype), sizes.to(device))
        act = active.cpu()
        loss_sum += torch.where(act, losses.detach().double().cpu() * sizes.double(), 0.0)
        seen += torch.where(act, sizes.double(), 0.0)
        _apply(params, grads, state, anchor=anchor, mu=mu, active=active, step=s + 1, lr=lr, wd=wd, kind=local.optimizer)
    return [ClientUpdate(cl.id, {k: v[i] for k, v in params.items()}, cl.num_examples,
                         {"train_loss": float(loss_sum[i] / seen[i]) if seen[i] else float("nan"),
                          "steps": int(min(len(plans[i]), total))})
            for i, cl in enumerate(clients)]


def _apply(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], state: dict[str, dict[str, torch.Tensor]], *,
           anchor: Mapping[str, torch.Tensor], mu: torch.Tensor, active: torch.Tensor, step: int, lr: float, wd: float,
           kind: str) -> None:
    """One local optimiser step on the stacked parameters (clients past their last step unchanged)."""
    for k, p in params.items():
        shape = (-1,) + (1,) * (p.dim() - 1)
        act = active.view(shape)
        g = grads[k]
        if bool((mu != 0).any()):
            g = g + mu.view(shape) * (p - anchor[k])
        if kind in ("sgd", "sgdm", "adam") and wd:
            g = g + wd * p
        if kind == "sgd":
            new = p - lr * g
        elif kind == "sgdm":
            buf = g if step == 1 else _MOMENTUM * state["buf"][k] + g
            state["buf"][k] = torch.where(act, buf, state["buf"].get(k, buf))
            new = p - lr * buf
        else:
            b1, b2 = _BETAS
            base = p * (1 - lr * wd) if kind == "adamw" and wd else p
            m_old = state["m"].get(k, torch.zeros_like(p))
            v_old = state["v"].get(k, torch.zeros_like(p))
            m = m_old.lerp(g, 1 - b1)
            v = v_old * b2 + (1 - b2) * g * g
            state["m"][k], state["v"][k] = torch.where(act, m, m_old), torch.where(act, v, v_old)
            bc1, bc2 = 1 - b1**step, 1 - b2**step
            denom = v.sqrt() / (bc2**0.5) + _EPS
            new = base - (lr / bc1) * (m / denom)
        params[k] = torch.where(act, new, p)
