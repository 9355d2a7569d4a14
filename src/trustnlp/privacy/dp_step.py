"""DP-SGD as a step of the one training loop.

One logical step of DP-SGD (Abadi et al. 2016) on a Poisson-sampled batch B (each example included
with probability q, so ``E|B| = qN``):

    g̃ = ( Σ_{i∈B} clip(g_i) + N(0, σ² S² I) ) / (qN)

where ``clip`` is the per-example clipping of :class:`~trustnlp.privacy.clipping.PerSampleClipper`
(flat: ``g_i · min(1, C/‖g_i‖)``), ``S`` its L2 sensitivity (``C`` for flat clipping) and ``σ`` the
noise multiplier. Dividing by the *expected* batch size ``qN`` (not the realised ``|B|``, which
would leak it) is the documented normaliser. The logical batch is processed as physical batches
whose clipped sums accumulate in ``p.grad``; the noise is added once per logical step on every
trainable parameter, and every step is recorded in the privacy ledger. A budget guard ends
training (``StopTraining``) before a step that would exceed the target epsilon.
"""

from __future__ import annotations

from typing import Any

import torch

from trustnlp.tasks import Task
from trustnlp.train import StopTraining

__all__ = ["DPStep"]


class DPStep:
    """The DP-SGD step function for :func:`trustnlp.train.fit`.

    Args:
        model: the model being trained (its trainable parameters get clipped sums and noise).
        noise_multiplier: σ.
        max_grad_norm: the clipping threshold C.
        clipping: ``flat`` | ``per-layer`` | ``automatic``.
        sampling_rate: q, the Poisson inclusion probability.
        expected_batch_size: qN, the normaliser.
        noise: a noise source (``TorchNoise`` or ``SecureNoise``).
        ledger: the privacy ledger each step is recorded in.
        guard: optional budget guard; ``guard.allow_step()`` is asked before each step.
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
    ) -> None:
        from trustnlp.privacy.clipping import PerSampleClipper

        self.model = model
        self.noise_multiplier = float(noise_multiplier)
        self.sampling_rate = float(sampling_rate)
        self.expected_batch_size = float(expected_batch_size)
        self.noise = noise
        self.ledger = ledger
        self.guard = guard
        self.clipper = PerSampleClipper(model, max_grad_norm=max_grad_norm, clipping=clipping)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps = 0

    def _clipped_sum(self, model: torch.nn.Module, task: Task, batch: dict[str, torch.Tensor], physical: int) -> float:
        n = batch["input_ids"].shape[0]
        total = 0.0
        with self.clipper:
            for start in range(0, n, physical):
                part = {k: v[start : start + physical] for k, v in batch.items()}
                t = int(part["attention_mask"].sum(dim=1).max())
                part = {k: (v[:, :t] if v.dim() == 2 else v) for k, v in part.items()}
                losses = task.loss(model(part["input_ids"], part["attention_mask"]), part, reduction="none")
                self.clipper.backward(losses)
                total += float(losses.detach().sum())
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return total

    def __call__(self, model: torch.nn.Module, task: Task, batch: dict[str, torch.Tensor], logical: int, physical: int) -> float:
        if self.guard is not None and not self.guard.allow_step():
            raise StopTraining(
                f"privacy budget: another step would exceed epsilon={self.guard.target_epsilon} "
                f"at delta={self.guard.delta} after {self.steps} steps"
            )
        n = batch["input_ids"].shape[0]
        total = self._clipped_sum(model, task, batch, physical) if n else 0.0
        if not n:
            for p in self.params:
                p.grad = torch.zeros_like(p)
        std = self.noise_multiplier * self.clipper.sensitivity
        if std > 0:
            self.noise.add_([p.grad for p in self.params], std=std)
        for p in self.params:
            p.grad.div_(self.expected_batch_size)
        self.ledger.record(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate, steps=1)
        self.steps += 1
        return total / n if n else float("nan")

    def probe(self, model: torch.nn.Module, task: Task, batch: dict[str, torch.Tensor], logical: int, physical: int) -> float:
        """The memory guard's probe: clipping work of one physical batch, no noise, no accounting."""
        total = self._clipped_sum(model, task, batch, physical)
        return total / max(1, batch["input_ids"].shape[0])

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self.noise.state_dict(), "ledger": self.ledger.to_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from trustnlp.privacy.accounting import PrivacyLedger

        self.noise.load_state_dict(state["noise"])
        restored = PrivacyLedger.from_dict(state["ledger"])
        self.ledger.__dict__.update(restored.__dict__)
        self.steps = int(state["steps"])
        if self.guard is not None and hasattr(self.guard, "sync"):
            self.guard.sync(self.ledger)
