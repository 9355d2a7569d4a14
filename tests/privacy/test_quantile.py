"""The private clip-norm estimate (Andrew et al. 2021 geometric quantile update) and its accounting."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting import rdp

from trustnlp.errors import ConfigError, DataError
from trustnlp.privacy.accounting import PrivacyLedger
from trustnlp.privacy.noise import TorchNoise
from trustnlp.privacy.quantile import estimate_clip_norm, joint_noise_multiplier, quantile_update


def lognormal_norms(n: int = 20_000, median: float = 5.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * 0.7 + math.log(median))


@pytest.mark.parametrize("quantile", [0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1])
def test_converges_to_the_quantile(quantile, seed):
    norms = lognormal_norms()
    ledger = PrivacyLedger()
    c = estimate_clip_norm(norms, ledger=ledger, quantile=quantile, noise_multiplier=50.0, sampling_rate=0.05,
                           rounds=150, generator=torch.Generator().manual_seed(seed))
    true = float(torch.quantile(norms, quantile))
    assert c == pytest.approx(true, rel=0.1)
    assert float((norms <= c).double().mean()) == pytest.approx(quantile, abs=0.04)


def test_ledger_gets_the_record():
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=1.0, sampling_rate=0.05, steps=10)
    estimate_clip_norm(lognormal_norms(2000), ledger=ledger, noise_multiplier=5.0, sampling_rate=0.05, rounds=40,
                       generator=torch.Generator().manual_seed(0))
    rec = ledger.records[1]
    assert (rec.kind, rec.noise_multiplier, rec.sampling_rate, rec.count, rec.purpose) == (
        "poisson_gaussian", 5.0, 0.05, 40, "clip-norm estimate")
    event = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(s)), c)
        for s, c in [(1.0, 10), (5.0, 40)]])
    acc = rdp.RdpAccountant()
    acc.compose(event)
    assert ledger.epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_seeded_and_noise_source():
    norms = lognormal_norms(2000)

    def run(**kw):
        return estimate_clip_norm(norms, ledger=PrivacyLedger(), noise_multiplier=5.0, sampling_rate=0.1, rounds=30,
                                  generator=torch.Generator().manual_seed(3), **kw)

    assert run() == run()
    assert run(noise=TorchNoise(7)) == run(noise=TorchNoise(7)) != run()


def test_update_direction_and_size():
    norms = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # all norms <= C, no noise: b̄ = 1, C shrinks by exp(-lr (1 - 0.5))
    assert quantile_update(10.0, norms, noise_std=0.0, expected_batch_size=4, lr=0.2) == pytest.approx(10 * math.exp(-0.1))
    assert quantile_update(0.5, norms, noise_std=0.0, expected_batch_size=4, lr=0.2) == pytest.approx(0.5 * math.exp(0.1))
    assert quantile_update(2.5, norms, noise_std=0.0, expected_batch_size=4) == pytest.approx(2.5)
    assert quantile_update(1.0, torch.zeros(0), noise_std=1.0, expected_batch_size=4,
                           generator=torch.Generator().manual_seed(0)) > 0


def test_joint_noise_multiplier():
    s, sb = 1.0, 2.0
    joint = joint_noise_multiplier(s, sb)
    assert joint == pytest.approx((1 + 0.25) ** -0.5)

    def eps(event):
        acc = rdp.RdpAccountant()
        acc.compose(event)
        return acc.get_epsilon(1e-5)

    g = dp_accounting.GaussianDpEvent
    # without subsampling the two releases compose exactly into one Gaussian ...
    assert eps(g(joint)) == pytest.approx(eps(dp_accounting.ComposedDpEvent([g(s), g(sb)])), rel=1e-9)
    # ... with a shared Poisson sample, composing them as independent subsampled releases under-states epsilon
    p = lambda x: dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.01, g(x)), 1000)  # noqa: E731
    assert eps(p(joint)) > eps(dp_accounting.ComposedDpEvent([p(s), p(sb)]))


def test_errors():
    ledger = PrivacyLedger()
    with pytest.raises(DataError, match="Expected `norms` to be a non-empty 1-D tensor"):
        estimate_clip_norm(torch.ones(2, 2), ledger=ledger, noise_multiplier=1.0, sampling_rate=0.1)
    with pytest.raises(ConfigError, match=r"Expected `quantile` to be in \(0, 1\), but got 1.0."):
        estimate_clip_norm(torch.ones(5), ledger=ledger, quantile=1.0, noise_multiplier=1.0, sampling_rate=0.1)
    with pytest.raises(ConfigError, match=r"Expected `sampling_rate` to be in \(0, 1\]"):
        estimate_clip_norm(torch.ones(5), ledger=ledger, noise_multiplier=1.0, sampling_rate=0.0)
    with pytest.raises(ConfigError, match="Expected `initial` to be a finite number > 0"):
        estimate_clip_norm(torch.ones(5), ledger=ledger, noise_multiplier=1.0, sampling_rate=0.1, initial=0)
    assert not ledger.records  # nothing released, nothing recorded
