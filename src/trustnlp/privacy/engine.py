"""DP-SGD for a plain PyTorch training loop: an Opacus-shaped :class:`PrivacyEngine`.

::

    engine = PrivacyEngine(accountant="rdp", secure_mode=False, seed=0)
    model, optimizer, loader = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                                   noise_multiplier=1.0, max_grad_norm=1.0)
    for x, y in loader:                       # the loop of non-private PyTorch, unchanged
        optimizer.zero_grad(); loss = criterion(model(x), y); loss.backward(); optimizer.step()
    engine.get_epsilon(1e-5)

Design. :meth:`PrivacyEngine.make_private` returns

(a) **the same module**, with the hooks of a :class:`~trustnlp.privacy.clipping.PerSampleClipper`
    in capture mode: forward hooks record each trainable layer's inputs, and a pre-hook on each
    recorded output's autograd node keeps that output's gradient during the user's
    ``loss.backward()``. Per-example output gradients are recoverable from the reduced loss:
    with ``loss = (1/B) Σ_j L_j`` (``loss_reduction="mean"``), ``∂loss/∂y_i = (1/B) ∂L_i/∂y_i``
    (example ``i`` only reaches row ``i`` of a layer's output), so they are rescaled by ``B``, the
    batch's size read from the recorded activations (batch first); with ``"sum"`` they are used
    as they are. When the backward ends, the clipper's per-layer rules (ghost norm, Embedding
    rows, LayerNorm, ``torch.func`` fallback, ...) give per-example norms and the clipped sum of
    that physical batch, accumulated aside.
(b) a :class:`~trustnlp.privacy.optimizer.DPOptimizer` wrapping the user's optimizer: ``step()``
    OVERWRITES ``p.grad`` of every trainable parameter with ``(Σ_i clip(g_i) + N(0, σ²S²I)) / (qN)``
    (noise once per logical step, ``S`` the clipping sensitivity, ``qN`` the expected batch
    size), records the step in :attr:`PrivacyEngine.ledger`, then steps the wrapped optimizer.
    Autograd's unclipped gradient is discarded: this path pays for one ordinary backward (weight
    gradients included) plus the clipping work, unlike the training loop's
    :class:`~trustnlp.privacy.dp_step.DPStep`, whose single ``autograd.grad`` w.r.t. the layer
    outputs never forms the weight gradients. ``zero_grad()`` also drops captured state.
    Gradient accumulation: ``backward`` on several physical batches, one ``step``; or
    :class:`~trustnlp.privacy.optimizer.BatchMemoryManager`.
(c) a :class:`~trustnlp.privacy.sampling.DPDataLoader` (Poisson sampling, ``q = 1/len(loader)``
    unless ``sampling_rate`` is given); an empty batch is still a step (noise only). Unless the
    given loader has a ``generator``, the new one gets its own (seeded from the engine's seed) for
    its workers' base seeds, so iterating it never draws from the global torch RNG.

**Budget.** :meth:`PrivacyEngine.make_private_with_epsilon` (and :meth:`~PrivacyEngine.make_private`
with ``max_epsilon``) give the optimizer a :class:`~trustnlp.privacy.budget.BudgetGuard`: before
every real step it checks that one more step keeps epsilon within the budget, and otherwise raises
:class:`~trustnlp.errors.PrivacyBudgetExceeded` without updating anything, so the run stops at the
last step that fits instead of overshooting.

**DDP.** A module wrapped in ``torch.nn.parallel.DistributedDataParallel`` is detected: the clipper
hooks the inner module, the loader becomes a
:class:`~trustnlp.privacy.distributed.DistributedDPDataLoader` (each rank's share of one global
Poisson batch), DDP's all-reduce of the unclipped gradients is replaced by a no-op communication
hook, and the optimizer sums the ranks' clipped sums with the noise added once (rank 0), then
divides by the global ``qN`` (:mod:`trustnlp.privacy.distributed`). Every rank ends a step with the
same parameters as a single process with the same seed (up to the rounding of the sum's order),
and the same ledger.

**Resume.** :meth:`PrivacyEngine.state_dict` / :meth:`~PrivacyEngine.load_state_dict` hold the
ledger, the noise stream, each loader's position and each optimizer's step count (tensors, ints,
floats and strings: save them with :func:`trustnlp.checkpoint.save_checkpoint`'s ``state``, no
pickle), so an interrupted run resumes bitwise.

Only trainable parameters (``requires_grad=True``) are clipped and noised, so parameter-efficient
training (a frozen encoder, the last k layers) costs and perturbs only what is trained.

Limitations: each backward is one physical batch whose row ``i`` in every layer is example ``i``
(batch first); loss terms reaching parameters other than through their module's forward (weight
decay written into the loss) are not part of the update (use the optimizer's ``weight_decay``);
activation checkpointing and double backward are not supported; BatchNorm in training mode is
refused; ``nn.DataParallel`` is refused (use DDP, one process per device).
"""

from __future__ import annotations

import hashlib
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.data import DataLoader, IterableDataset

from trustnlp.errors import ConfigError, DataError, PrivacyError, expected
from trustnlp.privacy.accounting import (
    PrivacyLedger,
    _check_accountant,
    _check_delta,
    _check_epsilon,
    _check_int,
    _check_sigma,
    calibrate_noise,
    default_delta,
)
from trustnlp.privacy.budget import BudgetGuard
from trustnlp.privacy.clipping import PerSampleClipper
from trustnlp.privacy.distributed import (
    DistributedDPDataLoader,
    NoisyAllReduce,
    check_same_on_all_ranks,
    ddp_loader,
    skip_ddp_allreduce,
)
from trustnlp.privacy.noise import make_noise_source
from trustnlp.privacy.optimizer import BatchMemoryManager, DPOptimizer
from trustnlp.privacy.sampling import DPDataLoader
from trustnlp.runtime import tune_allocator

__all__ = ["BatchMemoryManager", "DPOptimizer", "PrivacyEngine"]  # the first two re-exported for convenience

LOSS_REDUCTIONS = ("mean", "sum")
STATE_FORMAT = "trustnlp-privacy-engine"
_PRIVATE: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # modules made private (by any engine)


def _loader_seed(seed: int, k: int) -> int:
    """The Poisson sampler seed of an engine's k-th loader (the first uses ``seed`` itself)."""
    if k == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"trustnlp.engine-loader:{seed}:{k}".encode()).digest()[:7], "little")


def _own_generator(loader: DataLoader, given: DataLoader, seed: int, k: int) -> DataLoader:
    """Give a loader the engine made (not ``given``) a generator of its own when it has none: every
    ``iter(loader)`` draws a base seed for its workers, from the global torch RNG otherwise, which
    would shift the dropout masks of a resumed run (it re-creates the interrupted epoch's iterator)."""
    if loader is not given and loader.generator is None:
        digest = hashlib.sha256(f"trustnlp.engine-loader-workers:{seed}:{k}".encode()).digest()
        loader.generator = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
    return loader


def _same(name: str, got: Any, want: Any) -> None:
    """A saved value must equal this run's (house phrasing otherwise)."""
    if got != want:
        raise ConfigError(expected(name, f"{want!r} (this run's)", got))


@dataclass
class _Private:
    """What one ``make_private`` call attached."""

    module: nn.Module  # the hooked module (DDP's inner module)
    clipper: PerSampleClipper
    optimizer: DPOptimizer
    loader: DataLoader
    ddp_hook: Any = None  # the state of the comm hook on a DDP wrapper


class PrivacyEngine:
    """Makes a module, optimizer and data loader private (DP-SGD) and accounts for the steps taken.

    Args:
        accountant: ``rdp`` or ``pld`` (:mod:`trustnlp.privacy.accounting`).
        secure_mode: noise from :class:`~trustnlp.privacy.noise.SecureNoise` (AES-256-CTR, fresh
            key; not reproducible) instead of the seeded, reproducible, **not secure**
            :class:`~trustnlp.privacy.noise.TorchNoise`.
        seed: seeds the Poisson sampling and (unless ``secure_mode``) the noise.

    Attributes:
        ledger: the :class:`~trustnlp.privacy.accounting.PrivacyLedger` every step is recorded in
            (shared by all modules this engine made private).
        accountant: the accountant's name.
        noise: the noise source (one stream for the engine's optimizers; under DDP only rank 0's is drawn).
        target_delta / target_epsilon / planned_steps: set by :meth:`make_private_with_epsilon`
            (``target_epsilon`` and ``target_delta`` also by :meth:`make_private` with a budget).
    """

    def __init__(self, accountant: str = "rdp", secure_mode: bool = False, seed: int = 0) -> None:
        self.accountant = _check_accountant(accountant)
        if not isinstance(secure_mode, bool):
            raise ConfigError(expected("secure_mode", "a bool", secure_mode))
        self.seed = _check_int(seed, "seed", 0)
        self.secure_mode = secure_mode
        self.ledger = PrivacyLedger()
        self.noise = make_noise_source(secure=secure_mode, seed=self.seed)
        self.target_delta: float | None = None
        self.target_epsilon: float | None = None
        self.planned_steps: int | None = None
        self._attached: list[_Private] = []

    # -- making things private -----------------------------------------------------------------------
    def make_private(
        self,
        *,
        module: nn.Module,
        optimizer: Optimizer,
        data_loader: DataLoader,
        noise_multiplier: float,
        max_grad_norm: float | Mapping[str, float],
        clipping: str = "flat",
        loss_reduction: str = "mean",
        poisson_sampling: bool = True,
        sampling_rate: float | None = None,
        max_epsilon: float | None = None,
        target_delta: float | None = None,
    ) -> tuple[nn.Module, DPOptimizer, DataLoader]:
        """Return ``(module, optimizer, data_loader)`` made private (see the module docstring).

        Args:
            module: the model (hooked in place and returned), or a ``DistributedDataParallel``
                wrapping it (one process per rank; every rank calls this with the same arguments
                and engine seed).
            optimizer: an optimizer over (a subset of) the module's trainable parameters.
            data_loader: a ``DataLoader`` with automatic batching over a map-style dataset of
                ``N`` examples (the privacy unit: one example). Under DDP, the whole data set
                on every rank: the engine splits each Poisson batch between the ranks.
            noise_multiplier: σ >= 0 (σ = 0: no privacy, epsilon is infinite).
            max_grad_norm: the clipping threshold ``C`` (per-layer: also a mapping module path -> ``C_l``).
            clipping: ``flat`` | ``per-layer`` | ``automatic``.
            loss_reduction: how the loss given to ``backward`` reduces the per-example losses of
                the physical batch: ``mean`` (over examples, not tokens) or ``sum``. The update is
                the same either way; do not divide the loss for gradient accumulation (``step``
                normalises by the expected logical batch size).
            poisson_sampling: ``True``: the loader becomes a ``DPDataLoader``. ``False`` keeps the
                loader (shuffled fixed-size batches) with a warning: the accounting assumes
                Poisson sampling, so the reported epsilon is then not a proven guarantee (refused
                under DDP).
            sampling_rate: ``q``; default ``1/len(data_loader)`` (Poisson) or ``batch_size/N``.
            max_epsilon: a budget: ``optimizer.step()`` raises
                :class:`~trustnlp.errors.PrivacyBudgetExceeded` instead of a step that would bring
                epsilon above it (``None``: no budget).
            target_delta: the delta of the budget and of :meth:`get_epsilon` (default with a
                budget: :func:`~trustnlp.privacy.accounting.default_delta` of ``N``).

        Raises:
            ConfigError: an invalid argument, a module already made private, an optimizer
                updating parameters outside the module, a configuration that differs across ranks.
            PrivacyError: a layer per-example gradients are undefined for (BatchNorm in training mode).
        """
        inner, ddp = self._check_objects(module, optimizer, data_loader)
        sigma = _check_sigma(noise_multiplier)
        budget = None if max_epsilon is None else _check_epsilon(max_epsilon, "max_epsilon")
        delta = None if target_delta is None else _check_delta(target_delta, "target_delta")
        loader, q, n = self._loader(data_loader, poisson_sampling, sampling_rate, ddp)
        guard = None
        if budget is not None:
            delta = default_delta(n) if delta is None else delta
            guard = BudgetGuard(target_epsilon=budget, delta=delta, noise_multiplier=sigma, sampling_rate=q,
                                accountant=self.accountant, ledger=self.ledger)
        out = self._attach(module, inner, ddp, optimizer, loader, sigma, max_grad_norm, clipping, loss_reduction, q, n,
                           guard)
        if budget is not None:
            self.target_epsilon = budget
        if delta is not None:
            self.target_delta = delta
        return out

    def make_private_with_epsilon(
        self,
        *,
        module: nn.Module,
        optimizer: Optimizer,
        data_loader: DataLoader,
        target_epsilon: float,
        target_delta: float | None = None,
        epochs: int,
        max_grad_norm: float | Mapping[str, float],
        clipping: str = "flat",
        loss_reduction: str = "mean",
        poisson_sampling: bool = True,
        sampling_rate: float | None = None,
    ) -> tuple[nn.Module, DPOptimizer, DataLoader]:
        """:meth:`make_private` with the smallest noise multiplier whose epsilon after
        ``epochs · len(loader)`` steps is within ``target_epsilon`` at ``target_delta`` (default
        :func:`~trustnlp.privacy.accounting.default_delta` of the dataset size), by
        :func:`~trustnlp.privacy.accounting.calibrate_noise` (``0.99·target <= epsilon <= target``).

        The target is also a budget: ``optimizer.step()`` raises
        :class:`~trustnlp.errors.PrivacyBudgetExceeded` before any step that would exceed it
        (the planned steps always fit; a few more may, since the calibration leaves up to 1 %).
        """
        inner, ddp = self._check_objects(module, optimizer, data_loader)
        target = _check_epsilon(target_epsilon)
        epochs = _check_int(epochs, "epochs", 1)
        loader, q, n = self._loader(data_loader, poisson_sampling, sampling_rate, ddp)
        delta = default_delta(n) if target_delta is None else _check_delta(target_delta, "target_delta")
        steps = epochs * len(loader)
        self._check_module(inner, optimizer, loss_reduction)  # fail fast, before the calibration
        PerSampleClipper(inner, max_grad_norm=max_grad_norm, clipping=clipping)  # validates both (attaches nothing)
        sigma = calibrate_noise(target, delta, q, steps, accountant=self.accountant)
        guard = BudgetGuard(target_epsilon=target, delta=delta, noise_multiplier=sigma, sampling_rate=q,
                            accountant=self.accountant, ledger=self.ledger, planned_steps=steps)
        out = self._attach(module, inner, ddp, optimizer, loader, sigma, max_grad_norm, clipping, loss_reduction, q, n,
                           guard)
        self.target_epsilon, self.target_delta, self.planned_steps = target, delta, steps
        return out

    def get_epsilon(self, delta: float | None = None) -> float:
        """Epsilon spent so far at ``delta`` (default: the target delta of :meth:`make_private_with_epsilon`)."""
        if delta is None:
            if self.target_delta is None:
                raise ConfigError(expected("delta", "given (no target_delta was set)", delta))
            delta = self.target_delta
        return self.ledger.epsilon(delta, accountant=self.accountant)

    def detach(self) -> None:
        """Remove the hooks from every module this engine made private (they can be made private again);
        a DDP wrapper gets its default gradient all-reduce back."""
        for private in self._attached:
            private.clipper.detach()
            _PRIVATE.discard(private.module)
            if private.ddp_hook is not None:
                private.ddp_hook.active = False
        self._attached.clear()

    # -- resume --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue bitwise: the ledger, the noise stream, and for each
        ``make_private`` call (in order) its optimizer's step count and its loader's position.

        Nested dicts of tensors, ints, floats, strings and ``None`` (no pickle): e.g.
        ``save_checkpoint(dir, model=..., optimizer=dp_optimizer, scheduler=None, state={"privacy":
        engine.state_dict()})``. Take it between logical steps (after ``optimizer.step()``). Under
        DDP, save rank 0's (its noise stream is the one drawn; the rest is the same on every rank).
        A non-Poisson loader's position is not included (resume it yourself).

        Raises:
            ConfigError: a logical batch is in progress (clipped sums captured, not yet stepped).
        """
        private: dict[str, Any] = {}
        for k, p in enumerate(self._attached):
            opt = p.optimizer
            if opt._last_skipped or opt.clipper.clipped_sums:
                raise ConfigError(
                    f"Expected the engine state to be taken between logical steps (after optimizer.step()), but "
                    f"make_private call {k} holds the clipped gradients of a logical batch in progress."
                )
            private[str(k)] = {
                "noise_multiplier": opt.noise_multiplier,
                "sampling_rate": opt.sampling_rate,
                "expected_batch_size": opt.expected_batch_size,
                "steps": opt.steps,
                "loader": dict(p.loader.state_dict()) if isinstance(p.loader, DPDataLoader) else None,
            }
        return {
            "format": STATE_FORMAT,
            "format_version": 1,
            "accountant": self.accountant,
            "ledger": self.ledger.to_dict(),
            "noise": dict(self.noise.state_dict()),
            "private": private,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`, after the same ``make_private`` calls as the saved run
        (same engine seed, mechanisms and loaders; all checked before anything is changed).

        Raises:
            ConfigError: a state of another format, or of a differently configured engine.
        """
        if not isinstance(state, Mapping):
            raise ConfigError(expected("state", "a mapping from PrivacyEngine.state_dict()", type(state).__name__))
        _same('state["format"]', state.get("format"), STATE_FORMAT)
        _same('state["accountant"]', state.get("accountant"), self.accountant)
        private, noise = state.get("private"), state.get("noise")
        calls = sorted(private) if isinstance(private, Mapping) else private
        _same('state["private"] (one entry per make_private call)', calls, [str(k) for k in range(len(self._attached))])
        _same('state["noise"]["kind"]', noise.get("kind") if isinstance(noise, Mapping) else noise, self.noise.kind)
        ledger = PrivacyLedger.from_dict(state.get("ledger"))  # type: ignore[arg-type]
        for k, p in enumerate(self._attached):
            saved, where = private[str(k)], f'state["private"]["{k}"]'  # type: ignore[index]
            for key in ("noise_multiplier", "sampling_rate", "expected_batch_size"):
                _same(f'{where}["{key}"]', saved.get(key), getattr(p.optimizer, key))
            loader = saved.get("loader")
            if isinstance(p.loader, DPDataLoader):
                mine = p.loader.state_dict()
                for key in ("kind", "seed", "num_units", "sampling_rate", "steps_per_epoch"):
                    _same(f'{where}["loader"]["{key}"]', loader.get(key) if isinstance(loader, Mapping) else loader, mine[key])
            else:
                _same(f'{where}["loader"] (this run\'s loader is not Poisson)', loader, None)
            _check_int(saved.get("steps"), f'{where}["steps"]', 0)
        self.noise.load_state_dict(noise)  # type: ignore[arg-type]
        self.ledger = ledger
        for k, p in enumerate(self._attached):
            saved = private[str(k)]  # type: ignore[index]
            if saved["loader"] is not None:
                p.loader.load_state_dict(saved["loader"])  # type: ignore[attr-defined]
            p.optimizer.steps = int(saved["steps"])
            p.optimizer.ledger = ledger
            if p.optimizer.budget is not None:
                p.optimizer.budget.sync(ledger)

    # -- internals -----------------------------------------------------------------------------------
    @staticmethod
    def _check_objects(module: Any, optimizer: Any, data_loader: Any) -> tuple[nn.Module, DistributedDataParallel | None]:
        """Validate; return ``(the module to hook, the DDP wrapper or None)``."""
        if isinstance(module, nn.DataParallel):
            raise ConfigError(
                "Expected `module` to be a plain module or a DistributedDataParallel, but got nn.DataParallel: it "
                "re-creates the module on every forward, so per-example hooks cannot follow it; use "
                "DistributedDataParallel (one process per device)."
            )
        if not isinstance(module, nn.Module):
            raise ConfigError(expected("module", "a torch.nn.Module", type(module).__name__))
        ddp = module if isinstance(module, DistributedDataParallel) else None
        inner: nn.Module = ddp.module if ddp is not None else module
        if isinstance(optimizer, DPOptimizer) or not isinstance(optimizer, Optimizer):
            raise ConfigError(expected("optimizer", "a torch.optim.Optimizer (not a DPOptimizer)", type(optimizer).__name__))
        if not isinstance(data_loader, DataLoader):
            raise ConfigError(expected("data_loader", "a torch.utils.data.DataLoader", type(data_loader).__name__))
        if inner in _PRIVATE:
            raise ConfigError(
                f"Module {type(inner).__name__} was already made private (make_private was called on it before); "
                "use the module, optimizer and loader it returned, or call that engine's detach() first."
            )
        return inner, ddp

    @staticmethod
    def _check_module(module: nn.Module, optimizer: Optimizer, loss_reduction: str) -> None:
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(expected("loss_reduction", f"one of {list(LOSS_REDUCTIONS)}", loss_reduction))
        trainable = {id(p) for p in module.parameters() if p.requires_grad}
        if not trainable:
            raise ConfigError("Expected `module` to have trainable parameters (requires_grad=True), but got none.")
        for name, m in module.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                raise PrivacyError(
                    f"Module `{name}` ({type(m).__name__}) is in training mode: batch normalisation mixes the examples "
                    "of a batch, so per-example gradients are undefined; use LayerNorm/GroupNorm or put it in eval mode."
                )

    def _loader(self, data_loader: DataLoader, poisson: bool, q: float | None,
                ddp: DistributedDataParallel | None = None) -> tuple[DataLoader, float, int]:
        """``(loader, sampling rate, N)``."""
        if not isinstance(poisson, bool):
            raise ConfigError(expected("poisson_sampling", "a bool", poisson))
        dataset = data_loader.dataset
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise DataError(expected("data_loader.dataset", "a map-style dataset with __len__", type(dataset).__name__))
        n = len(dataset)
        if n == 0 or len(data_loader) == 0:
            raise DataError("Expected a non-empty data set, but got 0 examples.")
        if ddp is not None:
            k = len(self._attached)
            shares = ddp_loader(data_loader, poisson_sampling=poisson, sampling_rate=q, seed=_loader_seed(self.seed, k),
                                group=ddp.process_group)
            return _own_generator(shares, data_loader, self.seed, k), shares.sampling_rate, n
        if isinstance(data_loader, DistributedDPDataLoader):
            raise ConfigError(
                "Expected `data_loader` to be a single-process loader, but got a DistributedDPDataLoader (one rank's "
                "share of each batch) with a module that is not DistributedDataParallel: wrap the module in DDP."
            )
        if isinstance(data_loader, DPDataLoader):
            if q is not None and q != data_loader.sampling_rate:
                raise ConfigError(expected("sampling_rate", f"the DPDataLoader's ({data_loader.sampling_rate})", q))
            return data_loader, data_loader.sampling_rate, n
        if poisson:
            k = len(self._attached)
            loader = DPDataLoader.from_data_loader(data_loader, sampling_rate=q, seed=_loader_seed(self.seed, k))
            return _own_generator(loader, data_loader, self.seed, k), loader.sampling_rate, n
        if q is None:
            q = min(1.0, data_loader.batch_size / n) if data_loader.batch_size else 1 / len(data_loader)
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q <= 1:
            raise ConfigError(expected("sampling_rate", "in (0, 1]", q))
        warnings.warn(
            "poisson_sampling=False: the batches are not Poisson samples, but the privacy accounting assumes they "
            "are, so the reported epsilon is not a proven guarantee for this training.",
            UserWarning,
            stacklevel=3,
        )
        return data_loader, float(q), n

    def _attach(
        self,
        module: nn.Module,
        inner: nn.Module,
        ddp: DistributedDataParallel | None,
        optimizer: Optimizer,
        loader: DataLoader,
        sigma: float,
        max_grad_norm: float | Mapping[str, float],
        clipping: str,
        loss_reduction: str,
        q: float,
        n: int,
        guard: BudgetGuard | None,
    ) -> tuple[nn.Module, DPOptimizer, DataLoader]:
        self._check_module(inner, optimizer, loss_reduction)
        tune_allocator()  # keep freed tensor memory: no per-step page faults (trustnlp.runtime)
        clipper = PerSampleClipper(inner, max_grad_norm=max_grad_norm, clipping=clipping)  # validates both
        all_reduce = None
        if ddp is not None:  # a collective: every rank must get here with the same configuration
            trainable = [p for p in inner.parameters() if p.requires_grad]
            check_same_on_all_ranks(
                {"seed": self.seed, "accountant": self.accountant, "make_private call": len(self._attached),
                 "dataset size": n, "sampling_rate": q, "steps per epoch": len(loader), "noise_multiplier": sigma,
                 "max_grad_norm": max_grad_norm, "clipping": clipping,
                 "trainable parameter shapes": [tuple(p.shape) for p in trainable]},
                group=ddp.process_group, device=trainable[0].device)
            all_reduce = NoisyAllReduce(ddp.process_group)
        clipper.capture(loss_reduction=loss_reduction)
        try:
            dp_optimizer = DPOptimizer(optimizer, clipper=clipper, noise_multiplier=sigma, expected_batch_size=q * n,
                                       sampling_rate=q, noise=self.noise, ledger=self.ledger, budget=guard,
                                       all_reduce=all_reduce)
            hook = None if ddp is None else skip_ddp_allreduce(ddp)
        except Exception:
            clipper.detach()
            raise
        _PRIVATE.add(inner)
        self._attached.append(_Private(inner, clipper, dp_optimizer, loader, hook))
        return module, dp_optimizer, loader
