"""A DP-SGD optimizer wrapping any ``torch.optim`` optimizer, for plain PyTorch loops.

:class:`DPOptimizer` works with a :class:`~trustnlp.privacy.clipping.PerSampleClipper` in *capture
mode* (:meth:`~trustnlp.privacy.clipping.PerSampleClipper.capture`): the user's own
``loss.backward()`` leaves each physical batch's clipped per-example gradient sum in the clipper,
and :meth:`DPOptimizer.step` turns the sums of one logical batch into the DP-SGD gradient

    p.grad = ( Σ_i clip(g_i) + N(0, σ² S² I) ) / (qN)

for every trainable parameter of the model (``S``: the clipper's sensitivity; ``qN``: the expected
batch size), records the step in the privacy ledger, then calls the wrapped optimizer's ``step``.
Autograd's unclipped ``p.grad`` is overwritten, never used. The update does not depend on the
loss's reduction (``mean`` or ``sum``): it is always the DP-SGD estimate of the mean gradient
(unlike Opacus, which leaves a ``sum``-reduced gradient undivided).

Several physical batches make one logical batch by calling ``backward`` on each and ``step`` once
(gradient accumulation), or with :class:`BatchMemoryManager`, which splits each logical batch of a
loader and makes ``step`` skip (keep accumulating) until the logical batch's last physical batch.

Two options of the engine: a :class:`~trustnlp.privacy.budget.BudgetGuard` asked before every real
(non-skipped) step, which raises :class:`~trustnlp.errors.PrivacyBudgetExceeded` instead of taking a
step that would exceed the budget (nothing is updated, noised or recorded); and, under DDP, a
:class:`~trustnlp.privacy.distributed.NoisyAllReduce` that adds the noise once (rank 0) and sums the
ranks' clipped sums before the normalisation (:mod:`trustnlp.privacy.distributed`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from trustnlp.errors import ConfigError, PrivacyBudgetExceeded, PrivacyError, expected
from trustnlp.privacy.accounting import PrivacyLedger, _check_rate, _check_sigma
from trustnlp.privacy.budget import BudgetGuard
from trustnlp.privacy.clipping import PerSampleClipper
from trustnlp.privacy.distributed import NoisyAllReduce
from trustnlp.privacy.noise import NoiseSource
from trustnlp.privacy.sampling import loader_options

__all__ = ["BatchMemoryManager", "DPOptimizer"]


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """Unique trainable parameters, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


class DPOptimizer(Optimizer):
    """DP-SGD around ``optimizer``: clipped sums from the clipper, Gaussian noise, accounting.

    ``param_groups``, ``state`` and ``defaults`` are the wrapped optimizer's (learning-rate
    schedulers work on a ``DPOptimizer``). Every parameter the wrapped optimizer updates must be a
    trainable parameter of the clipper's model (checked at each step: another one would be
    updated with an unclipped gradient). Every trainable parameter of the model gets the noisy
    gradient, whether or not the optimizer updates it.

    Args:
        optimizer: the optimizer to wrap.
        clipper: a clipper on the model, in capture mode.
        noise_multiplier: σ >= 0.
        expected_batch_size: qN > 0, the normaliser.
        sampling_rate: q in (0, 1], recorded in the ledger with σ at every step.
        noise: the noise source.
        ledger: the privacy ledger.
        budget: a guard on ``ledger`` asked before every real step (``None``: no budget).
        all_reduce: under DDP, the noisy sum across ranks (``None``: single process, noise added here).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        clipper: PerSampleClipper,
        noise_multiplier: float,
        expected_batch_size: float,
        sampling_rate: float,
        noise: NoiseSource,
        ledger: PrivacyLedger,
        budget: BudgetGuard | None = None,
        all_reduce: NoisyAllReduce | None = None,
    ) -> None:
        if not isinstance(optimizer, Optimizer) or isinstance(optimizer, DPOptimizer):
            raise ConfigError(expected("optimizer", "a torch.optim.Optimizer (not already a DPOptimizer)", optimizer))
        if not isinstance(clipper, PerSampleClipper) or not clipper._capturing:
            raise ConfigError(expected("clipper", "a PerSampleClipper in capture mode (clipper.capture())", clipper))
        ebs = expected_batch_size
        if isinstance(ebs, bool) or not isinstance(ebs, int | float) or not math.isfinite(ebs) or ebs <= 0:
            raise ConfigError(expected("expected_batch_size", "> 0", ebs))
        self.original_optimizer = optimizer
        self.clipper = clipper
        self.noise_multiplier = _check_sigma(noise_multiplier)
        self.expected_batch_size = float(ebs)
        self.sampling_rate = _check_rate(sampling_rate)
        self.noise = noise
        self.ledger = ledger
        if budget is not None and (not isinstance(budget, BudgetGuard) or budget.ledger is not ledger):
            raise ConfigError(expected("budget", "a BudgetGuard on the optimizer's ledger", budget))
        if all_reduce is not None and not isinstance(all_reduce, NoisyAllReduce):
            raise ConfigError(expected("all_reduce", "a NoisyAllReduce", all_reduce))
        self.budget = budget
        self.all_reduce = all_reduce
        self.steps = 0
        self._skip: deque[bool] = deque()
        self._last_skipped = False
        self._check_params()

    # -- the wrapped optimizer's state ---------------------------------------------------------------
    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        return self.original_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.original_optimizer.param_groups = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        return self.original_optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.original_optimizer.state = value

    @property  # type: ignore[override]
    def defaults(self) -> dict[str, Any]:
        return self.original_optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.original_optimizer.defaults = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.original_optimizer.add_param_group(param_group)
        self._check_params()

    def state_dict(self) -> dict[str, Any]:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.original_optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"DPOptimizer({self.original_optimizer!r}, noise_multiplier={self.noise_multiplier})"

    # -- DP-SGD ----------------------------------------------------------------------------------------
    @property
    def params(self) -> list[nn.Parameter]:
        """The model's trainable parameters: each gets the noisy clipped gradient at a step."""
        return _trainable(self.clipper.model)

    def _check_params(self) -> list[nn.Parameter]:
        params = self.params
        mine = {id(p) for p in params}
        foreign = [
            f"param_groups[{i}][{j}] (shape {tuple(p.shape)})"
            for i, group in enumerate(self.original_optimizer.param_groups)
            for j, p in enumerate(group["params"])
            if p.requires_grad and id(p) not in mine
        ]
        if foreign:
            raise ConfigError(
                f"The optimizer updates parameter(s) {foreign} that are not trainable parameters of the private model: "
                "they would be updated with unclipped, un-noised gradients. Give the optimizer the model's parameters."
            )
        return params

    def signal_skip_step(self, do_skip: bool = True) -> None:
        """Queue whether the next :meth:`step` ends a logical batch (``do_skip=False``) or only
        accumulates (``True``); :class:`BatchMemoryManager` calls it once per physical batch."""
        self._skip.append(bool(do_skip))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the wrapped optimizer's gradients and drop the forwards recorded but not back-propagated;
        the clipped sums are dropped too, unless the last :meth:`step` was skipped (a logical batch in
        progress)."""
        self.clipper.clear()
        if not self._last_skipped:
            self.clipper.take_clipped_sums()
        self.original_optimizer.zero_grad(set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Privatise the logical batch's gradient (see the module docstring), then step.

        ``closure`` (optional) is called once, with gradients enabled, before (it should run the
        forward and ``backward``). A step skipped by :meth:`signal_skip_step` only keeps the clipped
        sums accumulated and returns without updating. An empty logical batch (nothing captured)
        is a noise-only step.

        Raises:
            PrivacyBudgetExceeded: with a budget, when this step would bring epsilon above it
                (checked before anything changes; the captured sums are kept until ``zero_grad``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._skip and self._skip.popleft():
            self._last_skipped = True
            return loss
        self._last_skipped = False
        if self.budget is not None:
            try:
                self.budget.check()
            except PrivacyBudgetExceeded:
                raise
            except PrivacyError as err:
                raise PrivacyBudgetExceeded(f"{err} The step was not taken; stop training here.") from err
        self._privatise()
        out = self.original_optimizer.step()
        return loss if closure is not None else out

    def _privatise(self) -> None:
        params = self._check_params()
        sums = self.clipper.take_clipped_sums()
        std = self.noise_multiplier * self.clipper.sensitivity
        grads = []
        for p in params:
            g = sums.get(id(p))
            p.grad = torch.zeros_like(p) if g is None else g
            grads.append(p.grad)
        if self.all_reduce is None:
            self.noise.add_(grads, std=std)
        else:  # noise once (rank 0), then the sum over ranks: the global clipped sum + noise on every rank
            self.all_reduce(grads, noise=self.noise, std=std)
        with torch.no_grad():
            for g in grads:
                g.div_(self.expected_batch_size)
        self.ledger.record(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate, steps=1)
        self.steps += 1


class _SplitBatches:
    """A batch sampler cutting each batch of ``batch_sampler`` into chunks of at most ``size`` and
    telling the optimizer which chunk ends a logical batch (an empty batch is one empty chunk).

    With a :class:`~trustnlp.privacy.distributed.DistributedPoissonSampler` (``sampler``), every
    rank cuts its share into as many chunks as the largest share needs (padding with empty chunks),
    so all ranks run the same number of forwards per logical batch (DDP's forward may communicate)."""

    def __init__(self, batch_sampler: Any, size: int, optimizer: DPOptimizer, expected: float, sampler: Any = None) -> None:
        self.batch_sampler, self.size, self.optimizer, self.expected = batch_sampler, size, optimizer, expected
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:  # pulled here, so the sampler's last draw is this batch's
            idx = [int(i) for i in batch]
            largest = getattr(self.sampler, "largest_share", len(idx))
            count = max(1, math.ceil(max(largest, len(idx)) / self.size))
            chunks = [idx[k * self.size : (k + 1) * self.size] for k in range(count)]
            for k, chunk in enumerate(chunks):
                self.optimizer.signal_skip_step(do_skip=k < len(chunks) - 1)
                yield chunk

    def __len__(self) -> int:
        """An estimate for Poisson batches (their sizes are random): expected chunks per logical batch."""
        return len(self.batch_sampler) * max(1, math.ceil(self.expected / self.size))


class BatchMemoryManager:
    """Split a loader's logical batches into physical batches of at most ``max_physical_batch_size``.

    A context manager giving a ``DataLoader`` over the same dataset (same collate function, so
    empty Poisson batches stay well-formed) whose batches are the physical ones; ``optimizer.step()``
    after every physical batch, as in a plain loop, only updates the model after a logical batch's
    last one (the others accumulate clipped sums). Noise, normaliser and accounting are per logical
    batch, so the privacy guarantee is unchanged. Batches are split in order, no padding.

    Example:
        >>> with BatchMemoryManager(loader, 32, optimizer) as physical:    # doctest: +SKIP
        ...     for x, y in physical:
        ...         optimizer.zero_grad(); criterion(model(x), y).backward(); optimizer.step()
    """

    def __init__(self, data_loader: DataLoader, max_physical_batch_size: int, optimizer: DPOptimizer) -> None:
        if not isinstance(data_loader, DataLoader) or getattr(data_loader, "batch_sampler", None) is None:
            raise ConfigError(expected("data_loader", "a DataLoader with automatic batching", data_loader))
        m = max_physical_batch_size
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(expected("max_physical_batch_size", "an int >= 1", m))
        if not isinstance(optimizer, DPOptimizer):
            raise ConfigError(expected("optimizer", "a DPOptimizer (from PrivacyEngine.make_private)", optimizer))
        self.data_loader, self.max_physical_batch_size, self.optimizer = data_loader, m, optimizer

    def __enter__(self) -> DataLoader:
        loader = self.data_loader
        expected_size = getattr(loader, "expected_batch_size", None) or loader.batch_size or self.max_physical_batch_size
        options = loader_options(loader)
        self.optimizer._skip.clear()
        return DataLoader(
            loader.dataset,
            batch_sampler=_SplitBatches(loader.batch_sampler, self.max_physical_batch_size, self.optimizer,
                                        float(expected_size), getattr(loader, "poisson_sampler", None)),
            collate_fn=loader.collate_fn,
            **options,
        )

    def __exit__(self, *exc: object) -> None:
        self.optimizer._skip.clear()
