"""Set up DP-SGD for a training run from its config: sampling, calibration, noise, ledger, guard.

``plan_private_training`` turns ``TrainConfig(dp=True, epsilon=..., ...)`` and the training-set
size into everything :func:`trustnlp.train.fit` needs (a Poisson sampler and a
:class:`~trustnlp.privacy.dp_step.DPStep`), and ``privacy_metrics`` states what was spent.

Sampling rate ``q = batch_size / n``; steps per epoch ``round(1/q)`` (an epoch visits ``n``
examples in expectation); planned steps ``epochs * steps_per_epoch`` (or ``max_steps``). With a
target epsilon the noise multiplier is the smallest that keeps epsilon within budget for the planned
steps (``calibrate_noise``); the budget guard stops training before any step that would exceed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trustnlp.config import TrainConfig

__all__ = ["PrivatePlan", "plan_private_training", "privacy_metrics", "DP_DEFAULT_MAX_LENGTH"]

# Private runs never size inputs from the private data (the longest training text is a statistic
# of it): they use this fixed length unless --max-length is given.
DP_DEFAULT_MAX_LENGTH = 64


@dataclass
class PrivatePlan:
    """Everything a private run needs, and what it promised."""

    step: Any
    sampler: Any
    noise_multiplier: float
    delta: float
    sampling_rate: float
    planned_steps: int
    ledger: Any


def plan_private_training(config: TrainConfig, model: torch.nn.Module, *, num_examples: int) -> PrivatePlan:
    """Build the DP step, Poisson sampler, ledger and guard for ``config``."""
    from trustnlp.privacy.accounting import BudgetGuard, PrivacyLedger, calibrate_noise, default_delta
    from trustnlp.privacy.dp_step import DPStep
    from trustnlp.privacy.noise import make_noise_source
    from trustnlp.privacy.sampling import PoissonSampler

    q = min(1.0, config.batch_size / num_examples)
    sampler = PoissonSampler(num_examples, sampling_rate=q, seed=config.seed)
    planned = config.max_steps or config.epochs * sampler.steps_per_epoch
    delta = config.delta if config.delta is not None else default_delta(num_examples)
    if config.noise_multiplier is not None:
        sigma = float(config.noise_multiplier)
    else:
        assert config.epsilon is not None  # enforced by TrainConfig
        sigma = calibrate_noise(config.epsilon, delta, q, planned, accountant=config.accountant)
    ledger = PrivacyLedger()
    guard = None
    if config.epsilon is not None:
        guard = BudgetGuard(target_epsilon=config.epsilon, delta=delta, noise_multiplier=sigma, sampling_rate=q,
                            accountant=config.accountant, ledger=ledger)
    step = DPStep(
        model,
        noise_multiplier=sigma,
        max_grad_norm=config.max_grad_norm,
        clipping=config.clipping,
        sampling_rate=q,
        expected_batch_size=q * num_examples,
        noise=make_noise_source(secure=config.secure_noise, seed=config.seed),
        ledger=ledger,
        guard=guard,
    )
    return PrivatePlan(step=step, sampler=sampler, noise_multiplier=sigma, delta=delta, sampling_rate=q,
                       planned_steps=planned, ledger=ledger)


def privacy_metrics(plan: PrivatePlan, config: TrainConfig) -> dict[str, Any]:
    """The privacy fields of a private run's results."""
    eps = plan.ledger.epsilon(plan.delta, accountant=config.accountant) if plan.ledger.records else 0.0
    return {
        "private": True,
        "epsilon": eps,
        "target_epsilon": config.epsilon,
        "delta": plan.delta,
        "privacy_unit": "example",
        "accountant": config.accountant,
        "noise_multiplier": plan.noise_multiplier,
        "max_grad_norm": config.max_grad_norm,
        "clipping": config.clipping,
        "sampling_rate": plan.sampling_rate,
        "dp_steps": plan.step.steps,
        "planned_steps": plan.planned_steps,
        "secure_noise": bool(config.secure_noise),
        "clipping_rules": plan.step.clipper.rules_report(),
        "privacy_ledger": plan.ledger.to_dict(),
    }
