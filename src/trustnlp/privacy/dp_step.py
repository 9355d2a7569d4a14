"""DP-SGD as a step of the one training loop.

One logical step of DP-SGD (Abadi et al. 2016) on a Poisson-sampled batch B (each example included
with probability q, so ``E|B| = qN``):

    g̃ = ( Σ_{i∈B} clip(g_i) + N(0, σ_t² S² I) ) / (qN)

where ``clip`` is the per-example clipping of :class:`~trustnlp.privacy.clipping.PerSampleClipper`
(flat: ``g_i · min(1, C/‖g_i‖)``), ``S`` its L2 sensitivity (``C`` for flat clipping) and ``σ_t`` the
noise multiplier of step ``t`` (constant, or a per-epoch schedule ``σ_e``). Dividing by the
*expected* batch size ``qN`` (not the realised ``|B|``, which would leak it) is the documented
normaliser. The logical batch is processed as physical batches whose clipped sums accumulate in
``p.grad``; the noise is added once per logical step on every trainable parameter, and every step is
recorded in the privacy ledger with its ``σ_t``. A budget guard ends training (``StopTraining``)
before a step that would exceed the target epsilon.

**User-level DP** (``privacy_unit="user"``; McMahan et al. 2018): the batch carries each example's
user (key ``"user"``), users are Poisson-sampled with rate q, and each sampled user's *summed*
gradient ``G_u = Σ_{i∈u} g_i`` is clipped (group clipping), so

    g̃ = ( Σ_{u∈B} clip(G_u) + N(0, σ_t² S² I) ) / (qU)        (qU: expected users per step)

Physical batches are cut at user boundaries (a user's examples are never split across clipper
calls; a user with more examples than the physical batch gets a physical batch of its own).

**Estimated clipping threshold** (``clip_estimator``): before the first step the estimator privately
sets ``C`` (a DP quantile of the per-unit gradient norms of the initial model, recorded in the
ledger); the threshold is part of the checkpointed state, so a resumed run does not estimate again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from trustnlp.errors import ConfigError, expected
from trustnlp.tasks import Task
from trustnlp.train import StopTraining

__all__ = ["DPStep", "PRIVACY_UNITS", "USER_KEY"]

PRIVACY_UNITS = ("example", "user")
USER_KEY = "user"  # batch key holding each example's user index (user-level DP)

Batch = dict[str, torch.Tensor]


class DPStep:
    """The DP-SGD step function for :func:`trustnlp.train.fit`.

    Args:
        model: the model being trained (its trainable parameters get clipped sums and noise).
        noise_multiplier: σ (the first epoch's σ when ``noise_schedule`` is given).
        max_grad_norm: the clipping threshold C (a placeholder until ``clip_estimator`` sets it).
        clipping: ``flat`` | ``per-layer`` | ``automatic``.
        sampling_rate: q, the Poisson inclusion probability of a privacy unit.
        expected_batch_size: the normaliser, ``qN`` examples (``qU`` users at user level).
        noise: a noise source (``TorchNoise`` or ``SecureNoise``).
        ledger: the privacy ledger each step is recorded in.
        guard: optional budget guard; ``guard.allow_step()`` is asked before each step (with a
            schedule, a guard of the same budget for each epoch's σ).
        privacy_unit: ``example`` or ``user`` (the batch then has a ``"user"`` entry).
        noise_schedule: per-epoch noise multipliers ``σ_e`` (epoch ``e`` = steps
            ``[e·spe, (e+1)·spe)``; the last one continues past the end), or ``None`` for constant σ.
        steps_per_epoch: ``spe`` of the schedule.
        clip_estimator: ``f(step, model, task, physical) -> C``, run once before the first step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        clipping: str,
        sampling_rate: float,
        expected_batch_size: float,
        noise: Any,
        ledger: Any,
        guard: Any | None = None,
        privacy_unit: str = "example",
        noise_schedule: Sequence[float] | None = None,
        steps_per_epoch: int | None = None,
        clip_estimator: Callable[[DPStep, torch.nn.Module, Task, int], float] | None = None,
    ) -> None:
        from trustnlp.privacy.clipping import PerSampleClipper

        if privacy_unit not in PRIVACY_UNITS:
            raise ConfigError(expected("privacy_unit", f"one of {list(PRIVACY_UNITS)}", privacy_unit))
        if noise_schedule is not None:
            noise_schedule = [float(s) for s in noise_schedule]
            if not noise_schedule or any(not math.isfinite(s) or s < 0 for s in noise_schedule):
                raise ConfigError(expected("noise_schedule", "a non-empty sequence of multipliers >= 0", noise_schedule))
            if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
                raise ConfigError(expected("steps_per_epoch", "an int >= 1 (with a noise schedule)", steps_per_epoch))
        self.model = model
        self.noise_multiplier = float(noise_schedule[0] if noise_schedule else noise_multiplier)
        self.noise_schedule = noise_schedule
        self.steps_per_epoch = steps_per_epoch
        self.sampling_rate = float(sampling_rate)
        self.expected_batch_size = float(expected_batch_size)
        self.noise = noise
        self.ledger = ledger
        self.guard = guard
        self._guards: dict[float, Any] = {} if guard is None else {float(guard.noise_multiplier): guard}
        self.privacy_unit = privacy_unit
        self.clipper = PerSampleClipper(model, max_grad_norm=max_grad_norm, clipping=clipping)
        self.clip_estimator = clip_estimator
        self.clip_norm_estimated: float | None = None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps = 0

    # -- the noise schedule ------------------------------------------------------------------------
    def sigma_at(self, step: int) -> float:
        """The noise multiplier of step ``step`` (0-based)."""
        if self.noise_schedule is None:
            return self.noise_multiplier
        assert self.steps_per_epoch is not None
        return self.noise_schedule[min(step // self.steps_per_epoch, len(self.noise_schedule) - 1)]

    def _guard_for(self, sigma: float) -> Any | None:
        """The budget guard for a step with multiplier ``sigma`` (same budget, that mechanism)."""
        if self.guard is None:
            return None
        if sigma not in self._guards:
            from trustnlp.privacy.budget import BudgetGuard

            g = self.guard
            self._guards[sigma] = BudgetGuard(target_epsilon=g.target_epsilon, delta=g.delta, noise_multiplier=sigma,
                                              sampling_rate=g.sampling_rate, accountant=g.accountant, ledger=self.ledger,
                                              pld_interval=getattr(g, "pld_interval", None))
        return self._guards[sigma]

    # -- physical batches --------------------------------------------------------------------------
    def parts(self, batch: Batch, physical: int) -> Iterator[tuple[Batch, torch.Tensor | None]]:
        """Physical batches (cut to their longest input) and, at user level, each example's group
        (its user's number within the part): parts are cut at user boundaries."""
        n = batch["input_ids"].shape[0]
        users = batch.get(USER_KEY)
        batch = {k: v for k, v in batch.items() if k != USER_KEY}
        if self.privacy_unit == "user":
            if users is None:
                raise ConfigError(f"User-level DP needs each example's user in the batch (key {USER_KEY!r}).")
            order = torch.argsort(users, stable=True)
            batch, users = {k: v[order] for k, v in batch.items()}, users[order]
            _, counts = torch.unique_consecutive(users, return_counts=True)
            bounds, size = [0], 0
            for c in counts.tolist():  # greedy: whole users, at most `physical` examples unless one user is larger
                if size and size + c > physical:
                    bounds.append(bounds[-1] + size)
                    size = 0
                size += c
            spans = list(zip(bounds, bounds[1:] + [n]))
        else:
            spans = [(s, min(s + physical, n)) for s in range(0, n, physical)]
        for start, stop in spans:
            part = {k: v[start:stop] for k, v in batch.items()}
            t = int(part["attention_mask"].sum(dim=1).max())
            part = {k: (v[:, :t] if v.dim() == 2 else v) for k, v in part.items()}
            groups = None
            if users is not None and self.privacy_unit == "user":
                groups = torch.unique_consecutive(users[start:stop], return_inverse=True)[1]
            yield part, groups

    def _clipped_sum(self, model: torch.nn.Module, task: Task, batch: Batch, physical: int) -> float:
        total = 0.0
        with self.clipper:
            for part, groups in self.parts(batch, physical):
                losses = task.loss(model(part["input_ids"], part["attention_mask"]), part, reduction="none")
                self.clipper.backward(losses, groups=groups)
                total += float(losses.detach().sum())
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return total

    def unit_norms(self, model: torch.nn.Module, task: Task, batch: Batch, physical: int) -> torch.Tensor:
        """Gradient norm of each privacy unit in ``batch`` (example, or user's summed gradient); no
        parameter gets a gradient. Users in ascending order of their index; on the CPU."""
        out = []
        with self.clipper:
            for part, groups in self.parts(batch, physical):
                losses = task.loss(model(part["input_ids"], part["attention_mask"]), part, reduction="none")
                out.append(self.clipper.norms(losses, groups=groups).norms.detach().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    # -- the step ----------------------------------------------------------------------------------
    def __call__(self, model: torch.nn.Module, task: Task, batch: Batch, logical: int, physical: int) -> float:
        if self.clip_estimator is not None and self.clip_norm_estimated is None:
            self.set_clip_norm(self.clip_estimator(self, model, task, physical))
        sigma = self.sigma_at(self.steps)
        guard = self._guard_for(sigma)
        if guard is not None and not guard.allow_step():
            raise StopTraining(
                f"privacy budget: another step would exceed epsilon={guard.target_epsilon} "
                f"at delta={guard.delta} after {self.steps} steps"
            )
        n = batch["input_ids"].shape[0]
        total = self._clipped_sum(model, task, batch, physical) if n else 0.0
        if not n:
            for p in self.params:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.params if p.grad is not None]  # all of them (set above)
        std = sigma * self.clipper.sensitivity
        if std > 0:
            self.noise.add_(grads, std=std)
        for g in grads:
            g.div_(self.expected_batch_size)
        self.ledger.record(noise_multiplier=sigma, sampling_rate=self.sampling_rate, steps=1)
        self.steps += 1
        return total / n if n else float("nan")

    def set_clip_norm(self, c: float) -> None:
        """Use the (estimated) threshold ``c`` from now on."""
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or c <= 0:
            raise ConfigError(expected("max_grad_norm", "> 0", c))
        self.clipper.max_grad_norm = float(c)
        self.clip_norm_estimated = float(c)

    def probe(self, model: torch.nn.Module, task: Task, batch: Batch, logical: int, physical: int) -> float:
        """The memory guard's probe: clipping work of one physical batch, no noise, no accounting."""
        total = self._clipped_sum(model, task, batch, physical)
        return total / max(1, batch["input_ids"].shape[0])

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self.noise.state_dict(), "ledger": self.ledger.to_dict(), "steps": self.steps,
                "clip_norm_estimated": self.clip_norm_estimated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from trustnlp.privacy.accounting import PrivacyLedger

        self.noise.load_state_dict(state["noise"])
        restored = PrivacyLedger.from_dict(state["ledger"])
        self.ledger.__dict__.update(restored.__dict__)
        self.steps = int(state["steps"])
        if state.get("clip_norm_estimated") is not None:
            self.set_clip_norm(float(state["clip_norm_estimated"]))
        for guard in self._guards.values():
            if hasattr(guard, "sync"):
                guard.sync(self.ledger)
