"""A private estimate of the clipping norm (``--max-grad-norm estimate``).

The geometric quantile update of Andrew et al. 2021, "Differentially private learning with adaptive
clipping" (NeurIPS): to track the ``quantile`` (gamma) of the per-example gradient norms, each round
releases the fraction of a Poisson sample whose norm is at most the current C,

    b̄ = ( Σ_{i∈B} 1[‖g_i‖ <= C] + N(0, σ_b²) ) / (qN)        (qN: the expected batch size)

and moves C geometrically: ``C <- C · exp(-η (b̄ - γ))``.

Accounting. Adding or removing one example changes the count by at most 1 (sensitivity 1), so one
round is a Gaussian mechanism with noise multiplier ``σ_b`` on a Poisson sample of rate q. The
``rounds`` rounds of :func:`estimate_clip_norm` draw their own Poisson samples and are recorded in
the ledger as their own record, ``noise_multiplier=σ_b, sampling_rate=q, count=rounds,
purpose="clip-norm estimate"``, composed with the training steps like any other record. The norms
must come from a model that does not depend on the private data (e.g. the initial model), so each
norm is a function of one example.

Adaptive clipping *during* training (the count released on the same Poisson batch as the gradient
step) must NOT be accounted as two records with the same q: the two releases share the sample, and
composing them as independent subsampled mechanisms under-states epsilon (e.g. sigma = 1 and
sigma_b = 2, q = 256/60000, 2,343 steps, delta = 1e-5: 1.41 instead of 1.78 by RDP). The pair is exactly one subsampled Gaussian with the
multiplier of :func:`joint_noise_multiplier`, which is what such a step should record.

Example:
    >>> from trustnlp.privacy.accounting import PrivacyLedger
    >>> norms = torch.linspace(0.1, 10.0, 2000)
    >>> ledger = PrivacyLedger()
    >>> c = estimate_clip_norm(norms, ledger=ledger, noise_multiplier=5.0, sampling_rate=0.05,
    ...                        generator=torch.Generator().manual_seed(0))
    >>> ledger.records[0].purpose
    'clip-norm estimate'
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.privacy import accounting as acc

__all__ = ["quantile_update", "estimate_clip_norm", "joint_noise_multiplier"]


def _check_positive(x: object, name: str) -> float:
    if not acc._is_number(x) or not math.isfinite(x) or x <= 0:
        raise ConfigError(expected(name, "a finite number > 0", x))
    return float(x)


def _check_quantile(x: object) -> float:
    if not acc._is_number(x) or not 0 < x < 1:
        raise ConfigError(expected("quantile", "in (0, 1)", x))
    return float(x)


def _check_norms(norms: object) -> torch.Tensor:
    if not isinstance(norms, torch.Tensor) or norms.dim() != 1 or norms.numel() == 0:
        raise DataError(expected("norms", "a non-empty 1-D tensor of per-example gradient norms", norms))
    norms = norms.detach().to(torch.float64)
    if not bool(torch.isfinite(norms).all()) or bool((norms < 0).any()):
        raise DataError(expected("norms", "finite and >= 0", "a tensor with negative or non-finite entries"))
    return norms


def _gaussian(std: float, generator: torch.Generator | None, noise: Any | None) -> float:
    if std == 0:
        return 0.0
    if noise is not None:
        return float(noise.normal((1,), std=std, dtype=torch.float64)[0])
    return float(torch.randn((), generator=generator, dtype=torch.float64)) * std


def quantile_update(clip_norm: float, norms: torch.Tensor, *, quantile: float = 0.5, noise_std: float,
                    expected_batch_size: float, lr: float = 0.2, generator: torch.Generator | None = None,
                    noise: Any | None = None) -> float:
    """One geometric update ``C · exp(-lr (b̄ - quantile))`` from the norms of one Poisson batch.

    ``b̄ = (#{norms <= C} + N(0, noise_std²)) / expected_batch_size``. The caller accounts for it
    (a Gaussian release with noise multiplier ``noise_std`` on the batch's Poisson sample).
    """
    c = _check_positive(clip_norm, "clip_norm")
    if not isinstance(norms, torch.Tensor) or norms.dim() != 1:  # an empty batch is fine
        raise DataError(expected("norms", "a 1-D tensor of per-example gradient norms", norms))
    gamma, sigma_b = _check_quantile(quantile), acc._check_sigma(noise_std, "noise_std")
    m, lr = _check_positive(expected_batch_size, "expected_batch_size"), _check_positive(lr, "lr")
    return _update(c, norms.detach().to(torch.float64), gamma, sigma_b, m, lr, generator, noise)


def _update(c: float, norms: torch.Tensor, gamma: float, sigma_b: float, m: float, lr: float,
            generator: torch.Generator | None, noise: Any | None) -> float:
    frac = (float((norms <= c).sum()) + _gaussian(sigma_b, generator, noise)) / m
    return c * math.exp(-lr * (frac - gamma))


def estimate_clip_norm(norms: torch.Tensor, *, ledger: acc.PrivacyLedger, noise_multiplier: float,
                       sampling_rate: float, quantile: float = 0.5, rounds: int = 100, initial: float = 1.0,
                       lr: float = 0.2, generator: torch.Generator | None = None, noise: Any | None = None) -> float:
    """Privately estimate the ``quantile`` of ``norms`` (one per private example) by ``rounds`` updates.

    Each round Poisson-samples the examples with rate ``sampling_rate`` (``generator``), releases the
    noisy count with noise std ``noise_multiplier`` (σ_b; Andrew et al. suggest ``qN / 20``; drawn
    from ``noise``, a :class:`~trustnlp.privacy.noise.NoiseSource`, when given, else from
    ``generator``) and applies :func:`quantile_update` from ``initial``. Returns the geometric mean
    of C over the last half of the rounds (post-processing: it damps the ±lr/2 jitter of the last
    iterate). The ledger gets one record (``purpose="clip-norm estimate"``) before any release.
    """
    norms = _check_norms(norms)
    sigma_b = acc._check_sigma(noise_multiplier)
    q = acc._check_rate(sampling_rate)
    rounds = acc._check_int(rounds, "rounds", 1)
    c = _check_positive(initial, "initial")
    gamma, lr = _check_quantile(quantile), _check_positive(lr, "lr")
    m = q * norms.numel()
    ledger.record(noise_multiplier=sigma_b, sampling_rate=q, steps=rounds, purpose="clip-norm estimate")
    logs = []
    for _ in range(rounds):
        batch = norms[torch.rand(norms.numel(), generator=generator, dtype=torch.float64) < q] if q < 1 else norms
        c = _update(c, batch, gamma, sigma_b, m, lr, generator, noise)
        logs.append(math.log(c))
    tail = logs[len(logs) // 2:]
    return math.exp(sum(tail) / len(tail))


def joint_noise_multiplier(grad_noise_multiplier: float, count_noise_multiplier: float) -> float:
    """The multiplier of one Gaussian equal to a clipped-gradient release plus a count on the same sample.

    Releasing ``(Σ clip(g_i) + N(0, σ² C² I), Σ b_i + N(0, σ_b²))``: scaled by ``(1/(σC), 1/σ_b)``
    it is a unit-noise Gaussian whose sensitivity is ``sqrt(σ⁻² + σ_b⁻²)``, i.e. one Gaussian with
    multiplier ``(σ⁻² + σ_b⁻²)^(-1/2)`` (as in Andrew et al. 2021; here with sensitivity 1 for the count).
    """
    s = _check_positive(grad_noise_multiplier, "grad_noise_multiplier")
    sb = _check_positive(count_noise_multiplier, "count_noise_multiplier")
    return (s ** -2 + sb ** -2) ** -0.5
