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
    unless ``sampling_rate`` is given); an empty batch is still a step (noise only).

Only trainable parameters (``requires_grad=True``) are clipped and noised, so parameter-efficient
training (a frozen encoder, the last k layers) costs and perturbs only what is trained.

Limitations: each backward is one physical batch whose row ``i`` in every layer is example ``i``
(batch first); loss terms reaching parameters other than through their module's forward (weight
decay written into the loss) are not part of the update (use the optimizer's ``weight_decay``);
activation checkpointing and double backward are not supported; BatchNorm in training mode is
refused.
"""

from __future__ import annotations

import hashlib
import warnings
import weakref
from collections.abc import Mapping
from typing import Any

from torch import nn
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
from trustnlp.privacy.clipping import PerSampleClipper
from trustnlp.privacy.noise import make_noise_source
from trustnlp.privacy.optimizer import BatchMemoryManager, DPOptimizer
from trustnlp.privacy.sampling import DPDataLoader

__all__ = ["BatchMemoryManager", "DPOptimizer", "PrivacyEngine"]  # the first two re-exported for convenience

LOSS_REDUCTIONS = ("mean", "sum")
_PRIVATE: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # modules made private (by any engine)


def _loader_seed(seed: int, k: int) -> int:
    """The Poisson sampler seed of an engine's k-th loader (the first uses ``seed`` itself)."""
    if k == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"trustnlp.engine-loader:{seed}:{k}".encode()).digest()[:7], "little")


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
        noise: the noise source (one stream for the engine's optimizers).
        target_delta / target_epsilon / planned_steps: set by :meth:`make_private_with_epsilon`.
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
        self._attached: list[tuple[nn.Module, PerSampleClipper]] = []

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
    ) -> tuple[nn.Module, DPOptimizer, DataLoader]:
        """Return ``(module, optimizer, data_loader)`` made private (see the module docstring).

        Args:
            module: the model (hooked in place and returned).
            optimizer: an optimizer over (a subset of) the module's trainable parameters.
            data_loader: a ``DataLoader`` with automatic batching over a map-style dataset of
                ``N`` examples (the privacy unit: one example).
            noise_multiplier: σ >= 0 (σ = 0: no privacy, epsilon is infinite).
            max_grad_norm: the clipping threshold ``C`` (per-layer: also a mapping module path -> ``C_l``).
            clipping: ``flat`` | ``per-layer`` | ``automatic``.
            loss_reduction: how the loss given to ``backward`` reduces the per-example losses of
                the physical batch: ``mean`` (over examples, not tokens) or ``sum``. The update is
                the same either way; do not divide the loss for gradient accumulation (``step``
                normalises by the expected logical batch size).
            poisson_sampling: ``True``: the loader becomes a ``DPDataLoader``. ``False`` keeps the
                loader (shuffled fixed-size batches) with a warning: the accounting assumes
                Poisson sampling, so the reported epsilon is then not a proven guarantee.
            sampling_rate: ``q``; default ``1/len(data_loader)`` (Poisson) or ``batch_size/N``.

        Raises:
            ConfigError: an invalid argument, a module already made private, an optimizer
                updating parameters outside the module.
            PrivacyError: a layer per-example gradients are undefined for (BatchNorm in training mode).
        """
        self._check_objects(module, optimizer, data_loader)
        sigma = _check_sigma(noise_multiplier)
        loader, q, n = self._loader(data_loader, poisson_sampling, sampling_rate)
        return self._attach(module, optimizer, loader, sigma, max_grad_norm, clipping, loss_reduction, q, n)

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
        Nothing stops training after the planned steps: check :meth:`get_epsilon`."""
        self._check_objects(module, optimizer, data_loader)
        target = _check_epsilon(target_epsilon)
        epochs = _check_int(epochs, "epochs", 1)
        loader, q, n = self._loader(data_loader, poisson_sampling, sampling_rate)
        delta = default_delta(n) if target_delta is None else _check_delta(target_delta, "target_delta")
        steps = epochs * len(loader)
        self._check_module(module, optimizer, loss_reduction)  # fail fast, before the calibration
        PerSampleClipper(module, max_grad_norm=max_grad_norm, clipping=clipping)  # validates both (attaches nothing)
        sigma = calibrate_noise(target, delta, q, steps, accountant=self.accountant)
        out = self._attach(module, optimizer, loader, sigma, max_grad_norm, clipping, loss_reduction, q, n)
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
        """Remove the hooks from every module this engine made private (they can be made private again)."""
        for module, clipper in self._attached:
            clipper.detach()
            _PRIVATE.discard(module)
        self._attached.clear()

    # -- internals -----------------------------------------------------------------------------------
    @staticmethod
    def _check_objects(module: Any, optimizer: Any, data_loader: Any) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(expected("module", "a torch.nn.Module", type(module).__name__))
        if isinstance(optimizer, DPOptimizer) or not isinstance(optimizer, Optimizer):
            raise ConfigError(expected("optimizer", "a torch.optim.Optimizer (not a DPOptimizer)", type(optimizer).__name__))
        if not isinstance(data_loader, DataLoader):
            raise ConfigError(expected("data_loader", "a torch.utils.data.DataLoader", type(data_loader).__name__))
        if module in _PRIVATE:
            raise ConfigError(
                f"Module {type(module).__name__} was already made private (make_private was called on it before); "
                "use the module, optimizer and loader it returned, or call that engine's detach() first."
            )

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

    def _loader(self, data_loader: DataLoader, poisson: bool, q: float | None) -> tuple[DataLoader, float, int]:
        """``(loader, sampling rate, N)``."""
        if not isinstance(poisson, bool):
            raise ConfigError(expected("poisson_sampling", "a bool", poisson))
        dataset = data_loader.dataset
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise DataError(expected("data_loader.dataset", "a map-style dataset with __len__", type(dataset).__name__))
        n = len(dataset)
        if n == 0 or len(data_loader) == 0:
            raise DataError("Expected a non-empty data set, but got 0 examples.")
        if isinstance(data_loader, DPDataLoader):
            if q is not None and q != data_loader.sampling_rate:
                raise ConfigError(expected("sampling_rate", f"the DPDataLoader's ({data_loader.sampling_rate})", q))
            return data_loader, data_loader.sampling_rate, n
        if poisson:
            k = len(self._attached)
            loader = DPDataLoader.from_data_loader(data_loader, sampling_rate=q, seed=_loader_seed(self.seed, k))
            return loader, loader.sampling_rate, n
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
        optimizer: Optimizer,
        loader: DataLoader,
        sigma: float,
        max_grad_norm: float | Mapping[str, float],
        clipping: str,
        loss_reduction: str,
        q: float,
        n: int,
    ) -> tuple[nn.Module, DPOptimizer, DataLoader]:
        self._check_module(module, optimizer, loss_reduction)
        clipper = PerSampleClipper(module, max_grad_norm=max_grad_norm, clipping=clipping)  # validates both
        clipper.capture(loss_reduction=loss_reduction)
        try:
            dp_optimizer = DPOptimizer(optimizer, clipper=clipper, noise_multiplier=sigma, expected_batch_size=q * n,
                                       sampling_rate=q, noise=self.noise, ledger=self.ledger)
        except Exception:
            clipper.detach()
            raise
        _PRIVATE.add(module)
        self._attached.append((module, clipper))
        return module, dp_optimizer, loader
