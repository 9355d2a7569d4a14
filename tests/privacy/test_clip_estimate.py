"""`--max-grad-norm estimate`: the private quantile pre-pass in the training path, its accounting and calibration."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from torch import nn

from trustnlp.config import TrainConfig
from trustnlp.errors import ConfigError
from trustnlp.pipeline import run_train
from trustnlp.privacy.accounting import DPEventRecord, PrivacyLedger, calibrate_noise
from trustnlp.privacy.training import CLIP_ESTIMATE_ROUNDS, calibrate_with_prior, plan_private_training
from trustnlp.tasks import EncodedData

N = 2000


class KnownNorms(nn.Module):
    """Example ``i`` (token id ``i``) has per-example gradient ``f_i`` for the only trainable weight, so
    its gradient norm is ``‖f_i‖ = r_i`` (a frozen feature table of chosen radii)."""

    def __init__(self, radii: torch.Tensor, d: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        u = torch.randn(len(radii), d, generator=g, dtype=torch.float64)
        self.feat = nn.Embedding(len(radii), d).double()
        self.feat.weight = nn.Parameter(u / u.norm(dim=1, keepdim=True) * radii[:, None], requires_grad=False)
        self.lin = nn.Linear(d, 1, bias=False).double()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.lin(self.feat(ids[:, 0]))


class LinearLoss:
    """loss_i = model output (so example i's gradient is f_i)."""

    def loss(self, outputs, batch, *, reduction="mean"):
        per = outputs[:, 0]
        return per if reduction == "none" else per.sum()


def radii(median: float = 5.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.exp(torch.randn(N, generator=g, dtype=torch.float64) * 0.7 + math.log(median))


def toy_data() -> EncodedData:
    ids = torch.arange(N)[:, None]
    return EncodedData(ids, torch.ones_like(ids), torch.zeros(N, dtype=torch.long))


@pytest.mark.parametrize("quantile", [0.5, 0.9])
def test_estimate_converges_to_the_quantile_of_the_gradient_norms(quantile):
    """σ_b = qN/20 = 5 on counts of ~100 per round (noise 5 % of the batch): after 100 rounds the estimate
    is within 10 % of the true quantile (fixed seed; the round-to-round jitter of log C is ~0.02)."""
    r = radii()
    model, data, task = KnownNorms(r), toy_data(), LinearLoss()
    cfg = TrainConfig(dp=True, noise_multiplier=1.0, max_grad_norm="estimate", clip_quantile=quantile, batch_size=100,
                      seed=3)
    plan = plan_private_training(cfg, model, num_examples=N, data=data)
    est = plan.clip_estimate
    assert (est.noise_multiplier, est.sampling_rate, est.rounds) == (5.0, 0.05, CLIP_ESTIMATE_ROUNDS)
    norms = plan.step.unit_norms(model, task, data.batch(torch.arange(N)), 512)
    torch.testing.assert_close(norms, r, rtol=1e-10, atol=0)  # the norms the estimate sees are the true ones
    plan.step(model, task, data.batch(torch.arange(10)), 10, 10)  # the first step estimates C first
    c = plan.step.clip_norm_estimated
    true = float(torch.quantile(r, quantile))
    assert c == pytest.approx(true, rel=0.1)
    assert float((r <= c).double().mean()) == pytest.approx(quantile, abs=0.05)
    assert plan.step.clipper.max_grad_norm == c
    recs = plan.ledger.records
    assert [(x.purpose, x.noise_multiplier, x.sampling_rate, x.count) for x in recs] == [
        ("clip-norm estimate", 5.0, 0.05, CLIP_ESTIMATE_ROUNDS), ("training", 1.0, 0.05, 1)]


def test_resume_restores_the_estimate_without_estimating_again():
    r = radii()
    model, data, task = KnownNorms(r), toy_data(), LinearLoss()
    cfg = TrainConfig(dp=True, noise_multiplier=1.0, max_grad_norm="estimate", batch_size=100, seed=3)
    plan = plan_private_training(cfg, model, num_examples=N, data=data)
    plan.step(model, task, data.batch(torch.arange(4)), 4, 4)
    state = plan.step.state_dict()
    again = plan_private_training(cfg, model, num_examples=N, data=data)
    again.step.load_state_dict(state)
    calls = []
    again.step.clip_estimator = lambda *a: calls.append(a) or 1.0
    again.step(model, task, data.batch(torch.arange(4)), 4, 4)
    assert not calls and again.step.clipper.max_grad_norm == plan.step.clip_norm_estimated
    assert again.ledger.count_of(("poisson_gaussian", again.clip_estimate.noise_multiplier, 0.05,
                                  "clip-norm estimate")) == CLIP_ESTIMATE_ROUNDS  # recorded once


def test_calibration_with_prior_records_matches_dp_accounting():
    prior = [DPEventRecord("poisson_gaussian", 8.0, 0.01, 100, "clip-norm estimate")]
    q, steps, delta, target = 0.01, 1000, 1e-5, 2.0
    sigma = calibrate_with_prior(target, delta, q, steps, prior=prior)

    def eps(s):
        acc = rdp.RdpAccountant()
        acc.compose(dp_accounting.ComposedDpEvent([
            dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(x)), c)
            for x, c in [(8.0, 100), (s, steps)]]))
        return acc.get_epsilon(delta)

    assert 0.99 * target <= eps(sigma) <= target
    assert eps(sigma * (1 - 1e-4)) > target  # the smallest such sigma (bracket width 1e-5 relative)
    assert sigma > calibrate_noise(target, delta, q, steps)  # the estimate costs training noise
    with pytest.raises(ConfigError, match=r"alone \(e.g. the clip-norm estimate\) spend epsilon=0.04049"):
        calibrate_with_prior(0.03, delta, q, steps, prior=prior)  # the prior alone: epsilon 0.040


def test_private_run_with_estimated_threshold_stays_within_target(tmp_path):
    res = run_train(TrainConfig(corpus_size=400, model="bag", dp=True, epsilon=3.0, max_grad_norm="estimate",
                                clip_quantile=0.7, epochs=1, batch_size=32, seed=2, eval_every=0, device="cpu"),
                    tmp_path / "run", progress=False)
    m = res.metrics
    est = m["clip_norm_estimate"]
    assert res.config["max_grad_norm"] == "estimate" and est["quantile"] == 0.7
    assert m["max_grad_norm"] == est["estimate"] > 0
    ledger = m["privacy_ledger"]["records"]
    assert [r["purpose"] for r in ledger] == ["clip-norm estimate", "training"]
    assert ledger[0]["count"] == est["rounds"] and ledger[0]["noise_multiplier"] == est["noise_multiplier"]
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(r["sampling_rate"], dp_accounting.GaussianDpEvent(r["noise_multiplier"])),
            r["count"]) for r in ledger]))
    assert m["epsilon"] == pytest.approx(acc.get_epsilon(m["delta"]), rel=1e-6)
    assert 0.99 * 3.0 <= m["epsilon"] <= 3.0
    assert m["dp_steps"] == m["planned_steps"]
    # the estimate alone costs at most a tenth of the target
    alone = PrivacyLedger([DPEventRecord(**ledger[0])]).epsilon(m["delta"])
    assert alone <= 0.3 + 1e-9


def test_config_for_estimate():
    assert TrainConfig(dp=True, epsilon=1.0, max_grad_norm="estimate").max_grad_norm == "estimate"
    assert TrainConfig(dp=True, epsilon=1.0, max_grad_norm="0.5").max_grad_norm == 0.5
    with pytest.raises(ValueError, match="must be a number > 0 or 'estimate'"):
        TrainConfig(dp=True, epsilon=1.0, max_grad_norm="guess")
    with pytest.raises(ValueError, match="must be a number > 0 or 'estimate'"):
        TrainConfig(dp=True, epsilon=1.0, max_grad_norm=0)
    with pytest.raises(ValueError, match="automatic clipping has no threshold"):
        TrainConfig(dp=True, epsilon=1.0, max_grad_norm="estimate", clipping="automatic")
    with pytest.raises(ValueError, match="clip_quantile"):
        TrainConfig(dp=True, epsilon=1.0, max_grad_norm="estimate", clip_quantile=1.0)
    with pytest.raises(ValueError, match="applies to `max_grad_norm: estimate` only"):
        TrainConfig(dp=True, epsilon=1.0, clip_quantile=0.9)


def test_user_level_run_with_estimate_and_schedule_resumes_bitwise(tmp_path):
    """All three together; an interrupted run resumes to the same weights and epsilon (the estimated C is
    restored from the checkpoint, not estimated again)."""
    from safetensors.torch import load_file

    cfg = TrainConfig(corpus_size=300, corpus_users=50, model="bag", dp=True, epsilon=4.0, max_grad_norm="estimate",
                      privacy_unit="user", max_examples_per_user=6, noise_schedule="exponential:0.8", epochs=2,
                      batch_size=32, seed=5, eval_every=0, checkpoint_every=2, device="cpu")
    full = run_train(cfg, tmp_path / "a", progress=False)
    run_train(cfg, tmp_path / "b", progress=False, stop_after_steps=3)
    resumed = run_train(cfg, tmp_path / "b", progress=False)
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for key in ("epsilon", "max_grad_norm", "noise_multipliers", "privacy_ledger"):
        assert resumed.metrics[key] == full.metrics[key]
    assert full.metrics["privacy_unit"] == "user" and full.metrics["epsilon"] <= 4.0
    assert [r["purpose"] for r in full.metrics["privacy_ledger"]["records"]] == ["clip-norm estimate", "training",
                                                                               "training"]
