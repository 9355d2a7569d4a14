"""Set up DP-SGD for a training run from its config: sampling, calibration, noise, ledger, guard.

``plan_private_training`` turns ``TrainConfig(dp=True, epsilon=..., ...)`` and the training data
into everything :func:`trustnlp.train.fit` needs (a Poisson sampler, the training data as the
step sees it, and a :class:`~trustnlp.privacy.dp_step.DPStep`), and ``privacy_metrics`` states
what was spent.

- **Sampling.** Rate ``q = batch_size / n`` (``n`` training examples); steps per epoch
  ``round(1/q)``; planned steps ``epochs * steps_per_epoch`` (or ``max_steps``). At user level
  (``privacy_unit="user"``) the *users* are Poisson-sampled with the same ``q`` (a step then sees
  ``batch_size`` examples in expectation without a per-user cap), the normaliser is the expected
  number of users ``qU`` and the default delta is below ``1/U``.
- **Noise schedule.** ``constant``, ``exponential:d`` (epoch ``e``: ``σ·d^e``) or ``linear:r``
  (``σ·(1 + (r - 1)·e/(E - 1))`` over ``E`` epochs); with a target epsilon the scale ``σ`` is the
  smallest whose composed schedule (plus any clip-norm estimate) keeps ``0.99·ε ≤ ε(σ) ≤ ε``.
- **Estimated threshold** (``max_grad_norm="estimate"``): before the first step the per-unit
  gradient norms of the initial model (data independent, so each norm is a function of one unit)
  feed ``CLIP_ESTIMATE_ROUNDS`` rounds of the private geometric quantile update of Andrew et al.
  2021 (:func:`~trustnlp.privacy.quantile.estimate_clip_norm`) on Poisson samples of rate ``q``;
  each round releases a count of sensitivity 1 with noise ``σ_b``. ``σ_b = qN/20`` (Andrew et al.'s
  choice, expected units per round / 20), raised if needed so that the estimate alone costs at most
  ``CLIP_ESTIMATE_SHARE`` of the target epsilon. Its rounds are recorded in the ledger
  (``purpose="clip-norm estimate"``) and the training noise is calibrated for the composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trustnlp.config import TrainConfig
from trustnlp.errors import ConfigError, DataError
from trustnlp.tasks import EncodedData, Task

__all__ = [
    "CLIP_ESTIMATE_ROUNDS",
    "CLIP_ESTIMATE_SHARE",
    "DP_DEFAULT_MAX_LENGTH",
    "ClipEstimate",
    "PrivatePlan",
    "UserEncodedData",
    "calibrate_with_prior",
    "plan_private_training",
    "privacy_metrics",
    "schedule_factors",
]

# Private runs never size inputs from the private data (the longest training text is a statistic
# of it): they use this fixed length unless --max-length is given.
DP_DEFAULT_MAX_LENGTH = 64
CLIP_ESTIMATE_ROUNDS = 100  # rounds of the quantile update (lr 0.2: C can move by e^±10 from 1.0)
CLIP_ESTIMATE_LR = 0.2  # Andrew et al. 2021's geometric learning rate
CLIP_ESTIMATE_INITIAL = 1.0  # the (public) starting threshold
CLIP_ESTIMATE_SHARE = 0.1  # at most this share of a target epsilon goes to the estimate (alone)


@dataclass(frozen=True)
class UserEncodedData(EncodedData):
    """Encoded training data whose batches also carry each example's user (``batch["user"]``)."""

    users: torch.Tensor | None = None

    def batch(self, index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        from trustnlp.privacy.dp_step import USER_KEY

        out = super().batch(index)
        assert self.users is not None
        out[USER_KEY] = self.users[index]
        return out


@dataclass(frozen=True)
class ClipEstimate:
    """How the clipping threshold is estimated (``max_grad_norm="estimate"``)."""

    quantile: float
    noise_multiplier: float
    sampling_rate: float
    rounds: int = CLIP_ESTIMATE_ROUNDS
    initial: float = CLIP_ESTIMATE_INITIAL
    lr: float = CLIP_ESTIMATE_LR

    def prior_records(self) -> list[Any]:
        """The ledger record the estimate will add (for calibration before it runs)."""
        from trustnlp.privacy.accounting import DPEventRecord

        kind = "gaussian" if self.sampling_rate == 1.0 else "poisson_gaussian"
        return [DPEventRecord(kind, self.noise_multiplier, self.sampling_rate, self.rounds, "clip-norm estimate")]

    def to_dict(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "noise_multiplier": self.noise_multiplier,
                "sampling_rate": self.sampling_rate, "rounds": self.rounds, "initial": self.initial, "lr": self.lr}


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
    train_data: EncodedData | None = None
    privacy_unit: str = "example"
    num_units: int = 0
    noise_multipliers: list[float] | None = None  # per epoch, when scheduled
    clip_estimate: ClipEstimate | None = None


def schedule_factors(spec: str, epochs: int) -> list[float] | None:
    """Per-epoch multipliers (relative to the first epoch's) of a ``noise_schedule`` spec; ``None`` for constant.

    ``exponential:d`` -> ``d^e``; ``linear:r`` -> ``1 + (r - 1)·e/(E - 1)`` for ``e < E`` epochs.
    """
    kind, _, arg = spec.partition(":")
    if kind == "constant" and not arg:
        return None
    try:
        x = float(arg)
    except ValueError:
        x = float("nan")
    if kind == "exponential" and 0 < x <= 1:
        return [x**e for e in range(epochs)]
    if kind == "linear" and x > 0:
        return [1.0 + (x - 1.0) * e / max(1, epochs - 1) for e in range(epochs)]
    raise ConfigError(f"Expected `noise_schedule` to be 'constant', 'exponential:<decay in (0, 1]>' or "
                      f"'linear:<end ratio > 0>', but got {spec!r}.")


def calibrate_with_prior(target_epsilon: float, delta: float, sampling_rate: float, steps: int, *,
                         factors: Sequence[float] | None = None, steps_per_epoch: int | None = None,
                         prior: Sequence[Any] = (), accountant: str = "rdp") -> float:
    """The smallest scale σ with ``0.99·target ≤ ε(prior + steps of σ·factors[e]) ≤ target``.

    As :func:`~trustnlp.privacy.budget.calibrate_noise` (bracketing, then bisection; for PLD a
    coarse search checked at the reporting interval), with other releases (``prior`` ledger
    records, e.g. a clip-norm estimate) composed with the DP-SGD steps.
    """
    from trustnlp.privacy import accounting as acc
    from trustnlp.privacy.budget import _smallest_sigma, calibrate_noise

    base: float | list[float] = 1.0 if factors is None else list(factors)
    if not prior:
        return calibrate_noise(target_epsilon, delta, sampling_rate, steps, accountant=accountant,
                               schedule=None if factors is None else list(factors), steps_per_epoch=steps_per_epoch)
    target = acc._check_epsilon(target_epsilon)
    q, steps, delta, accountant = acc._check_common(sampling_rate, steps, delta, accountant)
    pairs = acc._pairs(prior)
    spent = acc._epsilon(pairs, delta, accountant, acc.PLD_INTERVAL)
    if spent >= target:
        raise ConfigError(f"The other releases alone (e.g. the clip-norm estimate) spend epsilon={spent:.4g} >= the "
                          f"target epsilon={target}; raise the target or give `max_grad_norm` a number.")

    def eps_at(interval: float) -> Any:
        return lambda s: acc._epsilon(pairs + acc._schedule_pairs(base, q, steps, steps_per_epoch, scale=s), delta,
                                      accountant, interval)

    if accountant == "rdp":
        return _smallest_sigma(eps_at(acc.PLD_INTERVAL), target, 1.0, 2.0)[0]
    sigma, _ = _smallest_sigma(eps_at(acc.PLD_SEARCH_INTERVAL), target, 1.0, 2.0)
    fine = eps_at(acc.PLD_INTERVAL)
    if not 0.99 * target <= fine(sigma) <= target:
        sigma, _ = _smallest_sigma(fine, target, sigma, 1.01)
    return sigma


def _user_ids(config: TrainConfig, dataset: Any, num_examples: int) -> Sequence[Any]:
    if dataset is None:
        raise ConfigError("User-level DP (privacy_unit='user') needs the training data set (its user column).")
    columns = getattr(dataset, "columns", {})
    if config.user_column not in columns:
        name = getattr(getattr(dataset, "meta", None), "name", "the training data")
        raise DataError(f"User-level DP (--privacy-unit user) needs a per-example user column `{config.user_column}`, "
                        f"but data set `{name}` has columns {sorted(columns)}; set `user_column` to the column "
                        "that holds the user ids, or use --privacy-unit example.")
    ids = columns[config.user_column]
    if len(ids) != num_examples:
        raise DataError(f"Expected the user column `{config.user_column}` to have {num_examples} entries (one per "
                        f"training example), but got {len(ids)}.")
    return ids


def _estimate_noise(q: float, units: int, rounds: int, delta: float, config: TrainConfig) -> float:
    """``σ_b``: ``qU/20`` (Andrew et al. 2021), raised until the estimate alone costs ``<= share · target``."""
    from trustnlp.privacy.accounting import calibrate_noise, compute_epsilon

    sigma_b = q * units / 20
    if config.epsilon is not None:
        budget = CLIP_ESTIMATE_SHARE * config.epsilon
        spent = compute_epsilon(noise_multiplier=sigma_b, sampling_rate=q, steps=rounds, delta=delta,
                                accountant=config.accountant)
        if spent > budget:
            sigma_b = calibrate_noise(budget, delta, q, rounds, accountant=config.accountant)
    return sigma_b


def _clip_estimator(est: ClipEstimate, data: EncodedData, units: torch.Tensor, seed: int) -> Any:
    """``f(step, model, task, physical) -> C``: the private quantile of the initial model's per-unit norms."""

    def run(step: Any, model: torch.nn.Module, task: Task, physical: int) -> float:
        from trustnlp.privacy.quantile import estimate_clip_norm
        from trustnlp.privacy.sampling import _derive_seed

        with torch.random.fork_rng(devices=[]):  # dropout draws here must not shift the training RNG
            norms = step.unit_norms(model, task, data.batch(units), physical)
        gen = torch.Generator().manual_seed(_derive_seed("clip-estimate", seed, 0))
        return estimate_clip_norm(norms, ledger=step.ledger, noise_multiplier=est.noise_multiplier,
                                  sampling_rate=est.sampling_rate, quantile=est.quantile, rounds=est.rounds,
                                  initial=est.initial, lr=est.lr, generator=gen, noise=step.noise)

    return run


def plan_private_training(config: TrainConfig, model: torch.nn.Module, *, num_examples: int,
                          data: EncodedData | None = None, dataset: Any | None = None) -> PrivatePlan:
    """Build the DP step, Poisson sampler, ledger and guard for ``config``.

    Args:
        config: the run's config (``dp=True``).
        model: the model to train.
        num_examples: ``n``, the training examples.
        data: the encoded training split (needed for user-level DP and ``max_grad_norm="estimate"``).
        dataset: the training :class:`~trustnlp.data.dataset.TextDataset` (user-level DP: its user column).
    """
    from trustnlp.privacy.accounting import BudgetGuard, PrivacyLedger, default_delta
    from trustnlp.privacy.dp_step import DPStep
    from trustnlp.privacy.noise import make_noise_source
    from trustnlp.privacy.sampling import PoissonSampler, UserPoissonSampler

    user_level = config.privacy_unit == "user"
    estimate = config.max_grad_norm == "estimate"
    if (user_level or estimate) and data is None:
        raise ConfigError("User-level DP and max_grad_norm='estimate' need the encoded training data (`data`).")
    q = min(1.0, config.batch_size / num_examples)
    train_data = data
    if user_level:
        assert data is not None
        users = UserPoissonSampler(_user_ids(config, dataset, num_examples), sampling_rate=q, seed=config.seed,
                                   max_examples_per_user=config.max_examples_per_user)
        sampler: Any = users.example_batches()
        num_units, unit_index = users.num_users, users.kept_indices
        train_data = UserEncodedData(data.input_ids, data.attention_mask, data.labels, data.tag_ids,
                                     data.num_truncated, users=users.user_index)
    else:
        sampler = PoissonSampler(num_examples, sampling_rate=q, seed=config.seed)
        num_units, unit_index = num_examples, torch.arange(num_examples)
    spe = sampler.steps_per_epoch
    planned = config.max_steps or config.epochs * spe
    delta = config.delta if config.delta is not None else default_delta(num_units)
    factors = schedule_factors(config.noise_schedule, -(-planned // spe))
    est = None
    if estimate:
        est = ClipEstimate(quantile=config.clip_quantile, sampling_rate=q,
                           noise_multiplier=_estimate_noise(q, num_units, CLIP_ESTIMATE_ROUNDS, delta, config))
    if config.noise_multiplier is not None:
        sigma = float(config.noise_multiplier)
    else:
        assert config.epsilon is not None  # enforced by TrainConfig
        sigma = calibrate_with_prior(config.epsilon, delta, q, planned, factors=factors, steps_per_epoch=spe,
                                     prior=est.prior_records() if est else (), accountant=config.accountant)
    schedule = None if factors is None else [sigma * f for f in factors]
    ledger = PrivacyLedger()
    guard = None
    if config.epsilon is not None:
        guard = BudgetGuard(target_epsilon=config.epsilon, delta=delta, noise_multiplier=sigma, sampling_rate=q,
                            accountant=config.accountant, ledger=ledger)
    step = DPStep(
        model,
        noise_multiplier=sigma,
        max_grad_norm=CLIP_ESTIMATE_INITIAL if estimate else float(config.max_grad_norm),
        clipping=config.clipping,
        sampling_rate=q,
        expected_batch_size=q * num_units,
        noise=make_noise_source(secure=config.secure_noise, seed=config.seed),
        ledger=ledger,
        guard=guard,
        privacy_unit=config.privacy_unit,
        noise_schedule=schedule,
        steps_per_epoch=spe,
        clip_estimator=None if est is None else _clip_estimator(est, train_data, unit_index, config.seed),  # type: ignore[arg-type]
    )
    return PrivatePlan(step=step, sampler=sampler, noise_multiplier=sigma, delta=delta, sampling_rate=q,
                       planned_steps=planned, ledger=ledger, train_data=train_data, privacy_unit=config.privacy_unit,
                       num_units=num_units, noise_multipliers=schedule, clip_estimate=est)


def privacy_metrics(plan: PrivatePlan, config: TrainConfig) -> dict[str, Any]:
    """The privacy fields of a private run's results."""
    eps = plan.ledger.epsilon(plan.delta, accountant=config.accountant) if plan.ledger.records else 0.0
    step = plan.step
    estimated = getattr(step, "clip_norm_estimated", None)
    out = {
        "private": True,
        "epsilon": eps,
        "target_epsilon": config.epsilon,
        "delta": plan.delta,
        "privacy_unit": plan.privacy_unit,
        "accountant": config.accountant,
        "noise_multiplier": plan.noise_multiplier,
        "noise_schedule": config.noise_schedule,
        "noise_multipliers": plan.noise_multipliers,
        "max_grad_norm": estimated if config.max_grad_norm == "estimate" else config.max_grad_norm,
        "clip_norm_estimate": None if plan.clip_estimate is None else {**plan.clip_estimate.to_dict(),
                                                                       "estimate": estimated},
        "clipping": config.clipping,
        "sampling_rate": plan.sampling_rate,
        "dp_steps": step.steps,
        "planned_steps": plan.planned_steps,
        "secure_noise": bool(config.secure_noise),
        "clipping_rules": step.clipper.rules_report(),
        "privacy_ledger": plan.ledger.to_dict(),
    }
    if plan.privacy_unit == "user":
        out.update({"num_users": plan.num_units, "max_examples_per_user": config.max_examples_per_user,
                    "expected_users_per_step": plan.sampling_rate * plan.num_units})
    return out
