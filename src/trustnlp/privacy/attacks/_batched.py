"""K small models trained at once: stacked parameters, one vmapped forward/backward, a vectorised optimiser.

Shadow models of a small classifier (e.g. the bag of embeddings) each take a few milliseconds per
step, mostly in per-call overhead. Here the ``K`` models' parameters are stacked (``[K, ...]``), the
``K`` logical batches are padded to one ``[K, B, T]`` batch (padding rows repeat a real example with
weight 0), one ``torch.func.vmap`` of ``functional_call`` computes all logits, and one backward gives
every model's gradient ``∇_k Σ_i w_ki loss_ki / |B_k|``. The optimiser is the torch one written over
the stacked tensors (Adam/AdamW with the single-tensor update order of ``torch.optim``; SGD with
momentum 0.9), with each model's learning rate from its own scheduler
(:func:`trustnlp.train.make_scheduler`) and each model's batches from its own
:class:`~trustnlp.train.ShuffleSampler` — the same batches, learning rates and updates as
:func:`trustnlp.train.fit` gives each model alone (tested: equal parameters after several steps).

Non-private only: DP shadows go through the plain path (their DP step, noise stream and ledger are
the engine's own). Models with active dropout are refused (vmap would draw different masks).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from trustnlp.config import TrainConfig
from trustnlp.errors import ConfigError, TrustNLPError
from trustnlp.tasks import EncodedData, Task
from trustnlp.train import ShuffleSampler, default_lr, make_scheduler

__all__ = ["batch_refusal", "train_batched"]

_BETAS, _EPS, _MOMENTUM = (0.9, 0.999), 1e-8, 0.9  # torch.optim defaults, as trustnlp.train.make_optimizer uses them
_RECIPE_SKIP = {"seed"}


def batch_refusal(model: nn.Module, config: TrainConfig) -> str | None:
    """Why ``model`` trained with ``config`` cannot take the batched path (``None`` when it can)."""
    if config.dp:
        return "the batched path is non-private only (DP shadows use the plain path)"
    if config.task != "classify":
        return "the batched path trains classifiers only"
    if any(not p.requires_grad for p in model.parameters()):
        return "the batched path needs every parameter trainable (frozen encoders: use the features path)"
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return "the batched path needs a model without active dropout (vmap would draw other masks)"
    if config.precision != "32" or config.device not in ("auto", "cpu"):
        return "the batched path runs in float32/float64 on the CPU"
    return None


def _batches(sampler: ShuffleSampler, total: int) -> Iterator[torch.Tensor]:
    step, epoch = 0, 0
    while step < total:
        for idx in sampler.epoch(epoch):
            if step >= total:
                return
            step += 1
            yield idx
        epoch += 1


def _check_recipe(configs: Sequence[TrainConfig]) -> TrainConfig:
    first = configs[0].model_dump(exclude=_RECIPE_SKIP)
    for i, c in enumerate(configs[1:], 1):
        if c.model_dump(exclude=_RECIPE_SKIP) != first:
            raise ConfigError(f"Expected every batched model to share one training recipe (all but the seed), "
                              f"but model {i}'s configuration differs from model 0's.")
    return configs[0]


def _scale(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-model scalars as a ``[R, 1, ..., 1]`` tensor broadcasting over ``like`` (``[R, ...]``)."""
    return torch.tensor(values, dtype=like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


class _StackedOptimizer:
    """``torch.optim`` Adam / AdamW / SGD(momentum 0.9) over stacked parameters, one learning rate per model."""

    def __init__(self, params: Sequence[torch.Tensor], *, name: str, weight_decay: float) -> None:
        if name not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"Expected `optimizer` to be one of ['adamw', 'adam', 'sgd'], but got {name!r}.")
        self.params, self.name, self.wd = list(params), name, float(weight_decay)
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        self.step_count = 0

    def step(self, grads: Sequence[torch.Tensor], lrs: Sequence[float], rows: torch.Tensor | None) -> None:
        """One update of the models in ``rows`` (all when ``None``) with learning rates ``lrs`` (one per row)."""
        self.step_count += 1  # every active model has taken the same number of steps (they start together)
        with torch.no_grad():
            for i, (param, grad) in enumerate(zip(self.params, grads)):
                state = self.state[i]
                if not state:
                    keys = ("momentum",) if self.name == "sgd" else ("exp_avg", "exp_avg_sq")
                    state.update({k: torch.zeros_like(param) for k in keys})
                if rows is None:
                    self._update(param, grad, state, lrs, first=self.step_count == 1)
                else:
                    p, s = param[rows], {k: v[rows] for k, v in state.items()}
                    self._update(p, grad[rows], s, lrs, first=self.step_count == 1)
                    param[rows] = p
                    for k, v in s.items():
                        state[k][rows] = v

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], lrs: Sequence[float],
                *, first: bool) -> None:
        same = all(lr == lrs[0] for lr in lrs)
        if self.name == "sgd":
            if self.wd:
                grad = grad.add(param, alpha=self.wd)
            buf = state["momentum"]
            if first:
                buf.copy_(grad)
            else:
                buf.mul_(_MOMENTUM).add_(grad)
            if same:
                param.add_(buf, alpha=-lrs[0])
            else:
                param.add_(buf * _scale([-lr for lr in lrs], param))
            return
        beta1, beta2 = _BETAS
        if self.wd:
            if self.name == "adamw":
                if same:
                    param.mul_(1 - lrs[0] * self.wd)
                else:
                    param.mul_(_scale([1 - lr * self.wd for lr in lrs], param))
            else:
                grad = grad.add(param, alpha=self.wd)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1, bias2 = 1 - beta1**self.step_count, 1 - beta2**self.step_count
        denom = (exp_avg_sq.sqrt() / bias2**0.5).add_(_EPS)
        if same:
            param.addcdiv_(exp_avg, denom, value=-(lrs[0] / bias1))
        else:  # addcdiv computes self + (value * t1) / t2
            param.add_((exp_avg * _scale([-(lr / bias1) for lr in lrs], param)) / denom)


def _clip_rows(grads: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` of each model's gradients (rows of the stacked gradients)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)  # [K]
    coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).reshape((-1,) + (1,) * (g.dim() - 1)))


def train_batched(models: Sequence[nn.Module], task: Task, data: EncodedData, subsets: Sequence[torch.Tensor], *,
                  configs: Sequence[TrainConfig], progress: bool = True) -> list[dict[str, Any]]:
    """Train ``models[k]`` on ``data[subsets[k]]`` with ``configs[k]`` (same recipe, own seed), all at once.

    The models are updated in place. Returns one ``{"steps", "seconds"}`` per model (the wall time
    shared equally).
    """
    if not models or len(models) != len(subsets) or len(models) != len(configs):
        raise ConfigError("Expected as many models as subsets and configs (at least one), but got "
                          f"{len(models)}, {len(subsets)} and {len(configs)}.")
    config = _check_recipe(configs)
    for m in models:
        why = batch_refusal(m, config)
        if why:
            raise ConfigError(why + ".")
    if data.labels is None:
        raise ConfigError("The batched path needs labelled data.")
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    k_models = len(models)
    base = models[0]
    names = [n for n, _ in base.named_parameters()]
    per_model = [dict(m.named_parameters()) for m in models]
    stacked = {n: torch.stack([p[n].detach() for p in per_model]).requires_grad_(True) for n in names}
    buffers = dict(base.named_buffers())
    lr = config.lr or default_lr(base)
    samplers = [ShuffleSampler(len(s), batch_size=config.batch_size, seed=c.seed) for s, c in zip(subsets, configs)]
    totals = [config.max_steps or config.epochs * s.steps_per_epoch for s in samplers]
    schedulers, dummies = [], []
    for total in totals:  # each model's own schedule, from the loop's own scheduler factory
        dummies.append(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr))  # holds the lr; never moves
        schedulers.append(make_scheduler(dummies[-1], name=config.scheduler, total_steps=total,
                                         warmup_ratio=config.warmup_ratio))
    streams = [_batches(s, t) for s, t in zip(samplers, totals)]
    optimizer = _StackedOptimizer(list(stacked.values()), name=config.optimizer, weight_decay=config.weight_decay)

    def forward(params: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(base, (params, buffers), (ids, mask))

    batched_forward = torch.func.vmap(forward, in_dims=(0, 0, 0))
    for m in models:
        m.train()
    bar = tqdm(total=max(totals), desc=f"shadows x{k_models} (batched)", unit="step",
               disable=None if progress else True, leave=False)
    try:
        for t in range(max(totals)):
            active = [k for k in range(k_models) if t < totals[k]]
            chosen = {k: subsets[k][next(streams[k])] for k in active}
            width = max(len(v) for v in chosen.values())
            index = torch.zeros(k_models, width, dtype=torch.long)
            weight = torch.zeros(k_models, width, dtype=stacked[names[0]].dtype)
            logical = torch.ones(k_models, dtype=weight.dtype)
            for k, idx in chosen.items():
                index[k, : len(idx)] = idx
                index[k, len(idx):] = idx[0]  # padding rows: a real example with weight 0
                weight[k, : len(idx)] = 1.0
                logical[k] = len(idx)
            mask = data.attention_mask[index]
            length = int(mask.sum(dim=-1).max())
            logits = batched_forward(stacked, data.input_ids[index][..., :length], mask[..., :length])
            losses = F.cross_entropy(logits.flatten(0, 1), data.labels[index].flatten(), reduction="none")
            model_loss = (losses.view(k_models, width) * weight).sum(dim=1) / logical
            if not torch.isfinite(model_loss).all():
                raise TrustNLPError(f"A batched model's training loss became non-finite at step {t + 1}; "
                                    f"lower the learning rate (lr={lr}).")
            grads = list(torch.autograd.grad(model_loss.sum(), list(stacked.values())))
            if config.grad_clip:
                _clip_rows(grads, config.grad_clip)
            rows = None if len(active) == k_models else torch.tensor(active)
            optimizer.step(grads, [schedulers[k].get_last_lr()[0] for k in active], rows)
            for k in active:
                dummies[k].step()  # no gradient: a no-op, called so the scheduler sees the usual order
                schedulers[k].step()
            bar.update(1)
    finally:
        bar.close()
    with torch.no_grad():
        for k, params in enumerate(per_model):
            for n in names:
                params[n].copy_(stacked[n][k])
    seconds = (time.perf_counter() - started) / k_models
    return [{"steps": total, "seconds": seconds} for total in totals]
