"""Per-epoch noise schedules in the training path: parsing, calibration of the whole schedule, what each step uses."""

from __future__ import annotations

import dp_accounting
import pytest
import torch
from dp_accounting import rdp

from trustnlp.config import TrainConfig
from trustnlp.errors import ConfigError
from trustnlp.models import build_model
from trustnlp.pipeline import run_train
from trustnlp.privacy.accounting import BudgetGuard, PrivacyLedger, calibrate_noise, compute_epsilon
from trustnlp.privacy.dp_step import DPStep
from trustnlp.privacy.training import calibrate_with_prior, schedule_factors
from trustnlp.tasks import ClassifyTask, EncodedData
from trustnlp.train import StopTraining


def test_schedule_factors():
    assert schedule_factors("constant", 4) is None
    assert schedule_factors("exponential:0.5", 3) == [1.0, 0.5, 0.25]
    assert schedule_factors("linear:0.4", 4) == pytest.approx([1.0, 0.8, 0.6, 0.4], rel=1e-12)
    assert schedule_factors("linear:2", 1) == [1.0]
    for bad in ["exponential:1.5", "exponential:0", "linear:-1", "cosine:1", "constant:1", "linear:x"]:
        with pytest.raises(ConfigError, match="Expected `noise_schedule` to be 'constant'"):
            schedule_factors(bad, 3)


def test_config_validates_the_schedule():
    assert TrainConfig(dp=True, epsilon=1.0, noise_schedule="exponential:0.9").noise_schedule == "exponential:0.9"
    for bad, msg in [("exponential:1.5", "decay in \\(0, 1\\]"), ("linear:0", "end ratio > 0"), ("step:3", "pattern")]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(dp=True, epsilon=1.0, noise_schedule=bad)
    with pytest.raises(ValueError, match="only apply to private training"):
        TrainConfig(noise_schedule="linear:0.5")


def test_calibrated_schedule_meets_the_target():
    q, steps, spe, delta, target = 0.02, 150, 50, 1e-5, 2.0
    factors = schedule_factors("exponential:0.8", 3)
    sigma = calibrate_with_prior(target, delta, q, steps, factors=factors, steps_per_epoch=spe)
    assert sigma == calibrate_noise(target, delta, q, steps, schedule=factors, steps_per_epoch=spe)
    acc = rdp.RdpAccountant()  # independent: the composed per-epoch events
    acc.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma * f)),
                                          spe) for f in factors]))
    assert 0.99 * target <= acc.get_epsilon(delta) <= target
    assert sigma > calibrate_noise(target, delta, q, steps)  # later epochs are quieter: the first is louder


class RecordingNoise:
    """A noise source that adds nothing and records the std it was asked for."""

    def __init__(self) -> None:
        self.stds: list[float] = []

    def add_(self, tensors, *, std):
        self.stds.append(std)

    def state_dict(self):
        return {"stds": list(self.stds)}

    def load_state_dict(self, state):
        self.stds = list(state["stds"])


def _empty_batch():
    ids = torch.zeros(0, 4, dtype=torch.long)
    return EncodedData(ids, ids.clone(), torch.zeros(0, dtype=torch.long)).batch(torch.arange(0))


def test_each_step_uses_its_epochs_sigma_and_records_it():
    model = build_model("bag", vocab_size=20, num_labels=3, pad_id=0, dim=4)
    sched, spe, C, q = [2.0, 1.0, 0.5], 2, 0.3, 0.1
    noise = RecordingNoise()
    step = DPStep(model, noise_multiplier=99.0, max_grad_norm=C, clipping="flat", sampling_rate=q,
                  expected_batch_size=5.0, noise=noise, ledger=PrivacyLedger(), noise_schedule=sched,
                  steps_per_epoch=spe)
    for _ in range(7):  # past the schedule's end the last multiplier continues
        step(model, ClassifyTask(3), _empty_batch(), 0, 4)
    used = [2.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    assert noise.stds == pytest.approx([s * C for s in used], rel=1e-15)
    assert [(r.noise_multiplier, r.count) for r in step.ledger.records] == [(2.0, 2), (1.0, 2), (0.5, 3)]
    eps = compute_epsilon(noise_multiplier=[2.0, 1.0, 0.5, 0.5], sampling_rate=q, steps=7, delta=1e-5,
                          steps_per_epoch=spe)
    assert step.ledger.epsilon(1e-5) == pytest.approx(eps, rel=1e-12)


def test_budget_guard_follows_the_schedule():
    model = build_model("bag", vocab_size=20, num_labels=3, pad_id=0, dim=4)
    q, delta = 0.1, 1e-5
    three = compute_epsilon(noise_multiplier=[2.0, 1.0], sampling_rate=q, steps=3, delta=delta, steps_per_epoch=2)
    ledger = PrivacyLedger()
    guard = BudgetGuard(target_epsilon=three * (1 + 1e-9), delta=delta, noise_multiplier=2.0, sampling_rate=q,
                        ledger=ledger)
    step = DPStep(model, noise_multiplier=2.0, max_grad_norm=1.0, clipping="flat", sampling_rate=q,
                  expected_batch_size=5.0, noise=RecordingNoise(), ledger=ledger, guard=guard,
                  noise_schedule=[2.0, 1.0], steps_per_epoch=2)
    for _ in range(3):
        step(model, ClassifyTask(3), _empty_batch(), 0, 4)
    with pytest.raises(StopTraining, match="after 3 steps"):
        step(model, ClassifyTask(3), _empty_batch(), 0, 4)
    assert step.ledger.epsilon(delta) == pytest.approx(three, rel=1e-12) and step.steps == 3


def test_private_run_with_a_schedule(tmp_path):
    res = run_train(TrainConfig(corpus_size=400, model="bag", dp=True, epsilon=3.0, noise_schedule="linear:0.5",
                                epochs=2, batch_size=40, seed=4, eval_every=0, device="cpu"),
                    tmp_path / "run", progress=False)
    m = res.metrics
    sigmas, q, spe = m["noise_multipliers"], m["sampling_rate"], round(1 / m["sampling_rate"])
    assert m["noise_schedule"] == "linear:0.5" and sigmas == pytest.approx([m["noise_multiplier"],
                                                                             0.5 * m["noise_multiplier"]], rel=1e-12)
    records = m["privacy_ledger"]["records"]
    assert [(r["noise_multiplier"], r["count"]) for r in records] == [(sigmas[0], spe), (sigmas[1], spe)]
    direct = compute_epsilon(noise_multiplier=sigmas, sampling_rate=q, steps=m["dp_steps"], delta=m["delta"],
                             steps_per_epoch=spe)
    assert m["epsilon"] == pytest.approx(direct, rel=1e-12)
    assert 0.99 * 3.0 <= m["epsilon"] <= 3.0 and m["dp_steps"] == m["planned_steps"] == 2 * spe
