"""Tests of client-level DP for federated averaging (trustnlp.federated.client_dp).

References are computed independently here: clipping and the noiseless aggregate by explicit loops in
float64, epsilons by composing dp_accounting events directly (and, at m = K, from the Gaussian's RDP
in closed form), noise by chi-square tests at alpha = 1e-3 with fixed seeds.
"""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld, rdp
from dp_accounting.privacy_accountant import NeighboringRelation
from scipy import stats

from trustnlp.errors import ConfigError, DataError
from trustnlp.federated.client_dp import (
    SELECTIONS_ALLOWED_WITH_CLIENT_DP,
    ClientDPConfig,
    adaptive_clip_update,
    calibrate_client_noise,
    check_selection_for_client_dp,
    client_dp_epsilon,
    clip_update,
    dp_fedavg_aggregate,
    effective_noise_multiplier,
)
from trustnlp.privacy.quantile import joint_noise_multiplier

ALPHA = 1e-3  # significance level of every statistical test here


def _rng(*tags: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([20240611, *tags]))


def _deltas(n: int, scales: list[float], seed: int, dtype: torch.dtype = torch.float64) -> list[dict[str, torch.Tensor]]:
    """``n`` deltas with two parameters; delta i is a random direction scaled to norm ``scales[i]``."""
    rng = _rng(seed)
    out = []
    for i in range(n):
        a, b = rng.standard_normal((3, 4)), rng.standard_normal(5)
        s = scales[i] / math.sqrt(float((a**2).sum() + (b**2).sum()))
        out.append({"w": torch.tensor(a * s, dtype=dtype), "b": torch.tensor(b * s, dtype=dtype)})
    return out


def _norm64(d: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((v.double() ** 2).sum()) for v in d.values()))


# -- clipping -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_clip_update_bounds_the_norm_and_keeps_direction(dtype: torch.dtype) -> None:
    scales = [0.1, 0.999, 1.0, 1.5, 7.0, 1e4]
    for d in _deltas(len(scales), scales, seed=1, dtype=dtype):
        clipped, norm = clip_update(d, 1.0)
        assert norm == pytest.approx(_norm64(d), rel=1e-12)
        assert _norm64(clipped) <= 1.0  # in the tensors' own dtype, no tolerance
        factor = min(1.0, 1.0 / norm)
        for k in d:
            assert clipped[k].dtype == dtype
            tol = 1e-12 if dtype == torch.float64 else 1e-6
            np.testing.assert_allclose(clipped[k].double().numpy(), d[k].double().numpy() * factor, rtol=tol, atol=0)


def test_clip_update_leaves_small_updates_unchanged_exactly() -> None:
    for d in _deltas(4, [0.0, 0.3, 0.9, 1.0], seed=2):
        clipped, _ = clip_update(d, 1.0 + 1e-12)
        for k in d:
            assert torch.equal(clipped[k], d[k])
            assert clipped[k].data_ptr() != d[k].data_ptr()  # a copy


def test_clip_update_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        clip_update({"w": torch.ones(2)}, 0.0)
    with pytest.raises(DataError, match="finite"):
        clip_update({"w": torch.tensor([float("nan"), 1.0])}, 1.0)
    with pytest.raises(DataError, match="delta"):
        clip_update({}, 1.0)


# -- aggregation ----------------------------------------------------------------------------------


def test_noiseless_aggregate_is_clipped_sum_over_fixed_denominator() -> None:
    scales = [0.2, 0.5, 1.7, 3.0, 0.9, 12.0, 1.2]
    deltas = _deltas(len(scales), scales, seed=3)
    c, m = 1.1, 10.0  # expected clients: NOT the 7 that reported
    cfg = ClientDPConfig(noise_multiplier=0.0, clip_norm=c)
    agg, info = dp_fedavg_aggregate(deltas, config=cfg, clip_norm=c, expected_clients=m,
                                    generator=torch.Generator().manual_seed(0))
    ref = {k: np.zeros(v.shape) for k, v in deltas[0].items()}
    norms = []
    for d in deltas:  # the reference, written out
        arrays = {k: v.numpy() for k, v in d.items()}
        norm = math.sqrt(sum(float((a * a).sum()) for a in arrays.values()))
        norms.append(norm)
        for k, a in arrays.items():
            ref[k] += a * min(1.0, c / norm)
    for k in ref:
        np.testing.assert_allclose(agg[k].numpy(), ref[k] / m, rtol=1e-10, atol=0)
    np.testing.assert_allclose(info["norms"], norms, rtol=1e-12)
    assert info["clipped_fraction"] == sum(n > c for n in norms) / len(norms) == 4 / 7
    assert info["noise_std"] == 0.0 and info["num_clients"] == 7 and info["expected_clients"] == m


def test_aggregate_noise_has_std_z_c_over_expected_clients() -> None:
    z, c, m = 1.3, 0.7, 12.5
    rng = _rng(4)
    deltas = [{"w": torch.tensor(rng.standard_normal(20000)), "b": torch.tensor(rng.standard_normal((100, 50)))}
              for _ in range(3)]
    clean, _ = dp_fedavg_aggregate(deltas, config=ClientDPConfig(0.0, c), clip_norm=c, expected_clients=m,
                                   generator=torch.Generator().manual_seed(1))
    cfg = ClientDPConfig(noise_multiplier=z, clip_norm=c)
    noisy, info = dp_fedavg_aggregate(deltas, config=cfg, clip_norm=c, expected_clients=m,
                                      generator=torch.Generator().manual_seed(7))
    sigma = z * c / m
    assert info["noise_std"] == pytest.approx(sigma, rel=1e-15) and info["sum_noise_std"] == pytest.approx(z * c)
    noise = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean]).numpy()
    n = noise.size
    chi2 = float((noise**2).sum()) / sigma**2  # ~ chi2(n) when the std is sigma (mean 0)
    p_var = 2 * min(stats.chi2.cdf(chi2, n), stats.chi2.sf(chi2, n))
    p_mean = 2 * stats.norm.sf(abs(noise.mean()) / (sigma / math.sqrt(n)))
    assert p_var > ALPHA, (chi2 / n, p_var)
    assert p_mean > ALPHA, p_mean
    # a std off by 2% would be caught (the test can fail)
    chi2_wrong = float((noise**2).sum()) / (1.02 * sigma) ** 2
    assert 2 * min(stats.chi2.cdf(chi2_wrong, n), stats.chi2.sf(chi2_wrong, n)) < ALPHA
    again, _ = dp_fedavg_aggregate(deltas, config=cfg, clip_norm=c, expected_clients=m,
                                   generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(again[k], noisy[k]) for k in noisy)  # reproducible from the generator


def test_empty_round_still_releases_noise() -> None:
    like = {"w": torch.zeros(3, dtype=torch.float64)}
    cfg = ClientDPConfig(noise_multiplier=1.0, clip_norm=2.0)
    agg, info = dp_fedavg_aggregate([], config=cfg, clip_norm=2.0, expected_clients=4.0,
                                    generator=torch.Generator().manual_seed(3), like=like)
    expected = torch.randn(3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2.0 / 4.0
    assert torch.allclose(agg["w"], expected, rtol=1e-12, atol=0)
    assert info["num_clients"] == 0 and info["clipped_fraction"] == 0.0
    with pytest.raises(DataError, match="like"):
        dp_fedavg_aggregate([], config=cfg, clip_norm=2.0, expected_clients=4.0, generator=torch.Generator())


def test_aggregate_rejects_mismatched_deltas() -> None:
    cfg = ClientDPConfig(noise_multiplier=0.0, clip_norm=1.0)
    with pytest.raises(DataError, match="shape"):
        dp_fedavg_aggregate([{"w": torch.ones(2)}, {"w": torch.ones(3)}], config=cfg, clip_norm=1.0,
                            expected_clients=2.0, generator=torch.Generator())
    with pytest.raises(DataError, match="names"):
        dp_fedavg_aggregate([{"w": torch.ones(2)}, {"v": torch.ones(2)}], config=cfg, clip_norm=1.0,
                            expected_clients=2.0, generator=torch.Generator())
    with pytest.raises(ConfigError, match="expected_clients"):
        dp_fedavg_aggregate([{"w": torch.ones(2)}], config=cfg, clip_norm=1.0, expected_clients=0.0,
                            generator=torch.Generator())


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="noise_multiplier"):
        ClientDPConfig(noise_multiplier=-1.0, clip_norm=1.0)
    with pytest.raises(ConfigError, match="clip_norm"):
        ClientDPConfig(noise_multiplier=1.0, clip_norm=0.0)
    with pytest.raises(ConfigError, match="target_quantile"):
        ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0, target_quantile=1.0)
    with pytest.raises(ConfigError, match="clip_lr"):
        ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0, clip_lr=0.0)


# -- adaptive clipping ----------------------------------------------------------------------------


def test_adaptive_step_is_the_geometric_update_exactly() -> None:
    cfg = ClientDPConfig(noise_multiplier=0.0, clip_norm=1.0, adaptive=True, target_quantile=0.5, clip_lr=0.2,
                         count_noise_multiplier=0.0)
    norms = [0.5] * 8 + [2.0] * 2
    g = torch.Generator().manual_seed(0)
    c = adaptive_clip_update(1.0, norms, config=cfg, expected_clients=10.0, generator=g)
    assert c == pytest.approx(math.exp(-0.2 * (0.8 - 0.5)), rel=1e-15)
    # Poisson round with 8 clients (all under C) for an expected 10: centred bits, b = 1/2 + (8 - 4) / 10
    c = adaptive_clip_update(2.0, [0.5] * 8, config=cfg, expected_clients=10.0, generator=g)
    assert c == pytest.approx(2.0 * math.exp(-0.2 * (0.9 - 0.5)), rel=1e-15)


def test_adaptive_count_noise_has_std_sigma_b_over_m() -> None:
    sb, m, lr = 2.0, 10.0, 0.2
    cfg = ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0, adaptive=True, clip_lr=lr, count_noise_multiplier=sb)
    g = torch.Generator().manual_seed(5)
    norms = [0.5] * 5 + [2.0] * 5  # b = 0.5 = gamma: log(C'/C) = -lr * noise / m
    logs = np.array([math.log(adaptive_clip_update(1.0, norms, config=cfg, expected_clients=m, generator=g))
                     for _ in range(4000)])
    noise = -logs * m / lr
    chi2 = float((noise**2).sum()) / sb**2
    n = noise.size
    assert 2 * min(stats.chi2.cdf(chi2, n), stats.chi2.sf(chi2, n)) > ALPHA


@pytest.mark.parametrize("gamma", [0.5, 0.8])
@pytest.mark.parametrize("start", [0.05, 20.0])
def test_adaptive_clip_converges_to_the_target_quantile(gamma: float, start: float) -> None:
    mu, s, m = 0.3, 0.8, 100
    truth = math.exp(mu + s * stats.norm.ppf(gamma))  # the gamma quantile of LogNormal(mu, s)
    cfg = ClientDPConfig(noise_multiplier=0.5, clip_norm=start * truth, adaptive=True, target_quantile=gamma,
                         clip_lr=0.2, count_noise_multiplier=1.0)  # little noise: sigma_b / m = 0.01
    rng, g = _rng(6, int(gamma * 10), int(start)), torch.Generator().manual_seed(6)
    c, logs = cfg.clip_norm, []
    for t in range(300):
        norms = np.exp(mu + s * rng.standard_normal(m))
        new = adaptive_clip_update(c, norms, config=cfg, expected_clients=m, generator=g)
        if t == 0:
            assert (new > c) == (start < 1)  # moves toward the quantile
        c = new
        logs.append(math.log(c))
    estimate = math.exp(float(np.mean(logs[-100:])))
    assert abs(estimate / truth - 1) < 0.10, (estimate, truth)


def test_effective_noise_multiplier_matches_andrew_et_al() -> None:
    z, m = 1.0, 100.0
    cfg = ClientDPConfig(noise_multiplier=z, clip_norm=1.0, adaptive=True)  # sigma_b = m / 20 = 5
    z_delta = effective_noise_multiplier(cfg, m)
    assert z_delta == pytest.approx((z**-2 - (2 * 5.0) ** -2) ** -0.5, rel=1e-14)
    assert joint_noise_multiplier(z_delta, 2 * 5.0) == pytest.approx(z, rel=1e-12)
    assert z_delta > z
    assert effective_noise_multiplier(ClientDPConfig(noise_multiplier=z, clip_norm=1.0), m) == z
    cfg2 = ClientDPConfig(noise_multiplier=0.8, clip_norm=1.0, adaptive=True, count_noise_multiplier=3.0)
    assert effective_noise_multiplier(cfg2, 7.0) == pytest.approx((0.8**-2 - 6.0**-2) ** -0.5, rel=1e-14)
    # the aggregate uses z_delta for the delta noise
    _, info = dp_fedavg_aggregate([{"w": torch.ones(2)}], config=cfg, clip_norm=1.0, expected_clients=m,
                                  generator=torch.Generator().manual_seed(0))
    assert info["noise_multiplier"] == z_delta and info["noise_std"] == pytest.approx(z_delta / m)
    # sigma_b = 10 / 20 = 0.5: 2 sigma_b = 1 is not > z = 1
    with pytest.raises(ConfigError, match="count_noise_multiplier"):
        effective_noise_multiplier(ClientDPConfig(noise_multiplier=1.0, clip_norm=1.0, adaptive=True), 10.0)


# -- accounting -----------------------------------------------------------------------------------


def test_poisson_epsilon_equals_direct_dp_accounting() -> None:
    z, k, m, rounds, delta = 1.1, 1000, 20, 300, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(m / k, dp_accounting.GaussianDpEvent(z)), rounds)
    direct = rdp.RdpAccountant()
    direct.compose(event)
    eps = client_dp_epsilon(noise_multiplier=z, sampling="poisson", num_clients=k, clients_per_round=m,
                            rounds=rounds, delta=delta)
    assert eps == pytest.approx(direct.get_epsilon(delta), rel=1e-10)
    direct_pld = pld.PLDAccountant(value_discretization_interval=1e-4)
    direct_pld.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(m / k, dp_accounting.GaussianDpEvent(z)), 50))
    eps_pld = client_dp_epsilon(noise_multiplier=z, sampling="poisson", num_clients=k, clients_per_round=m,
                                rounds=50, delta=delta, accountant="pld")
    assert eps_pld == pytest.approx(direct_pld.get_epsilon(delta), rel=1e-6)


def test_uniform_epsilon_equals_direct_dp_accounting_under_replace_one() -> None:
    z, k, m, rounds, delta = 1.5, 500, 10, 200, 1e-5
    # replace-one: the clipped sum moves by up to 2C, so the Gaussian's multiplier relative to its sensitivity is z / 2
    direct = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    direct.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(k, m, dp_accounting.GaussianDpEvent(z / 2)), rounds))
    eps = client_dp_epsilon(noise_multiplier=z, sampling="uniform", num_clients=k, clients_per_round=m,
                            rounds=rounds, delta=delta)
    assert eps == pytest.approx(direct.get_epsilon(delta), rel=1e-10)
    with pytest.raises(ConfigError, match="pld"):
        client_dp_epsilon(noise_multiplier=z, sampling="uniform", num_clients=k, clients_per_round=m, rounds=rounds,
                          delta=delta, accountant="pld")


def test_uniform_epsilon_with_everyone_sampled_is_the_gaussian_with_sensitivity_2c() -> None:
    """m = K: no sampling; sum of K clipped deltas + N(0, z^2 C^2), replace-one sensitivity 2C:
    RDP(alpha) = alpha (2C)^2 / (2 z^2 C^2) = 2 alpha / z^2 per round, in closed form."""
    z, k, rounds, delta = 3.0, 40, 25, 1e-6
    orders = rdp.RdpAccountant().orders
    closed_form = rdp.compute_epsilon(orders, rounds * 2.0 * orders / z**2, delta)[0]
    eps = client_dp_epsilon(noise_multiplier=z, sampling="uniform", num_clients=k, clients_per_round=k,
                            rounds=rounds, delta=delta)
    assert eps == pytest.approx(closed_form, rel=1e-10)
    assert client_dp_epsilon(noise_multiplier=0.0, sampling="poisson", num_clients=k, clients_per_round=4,
                             rounds=rounds, delta=delta) == math.inf


def test_epsilon_input_errors() -> None:
    kw = {"noise_multiplier": 1.0, "num_clients": 10, "rounds": 5, "delta": 1e-5}
    with pytest.raises(ConfigError, match="sampling"):
        client_dp_epsilon(sampling="shuffle", clients_per_round=2, **kw)
    with pytest.raises(ConfigError, match="clients_per_round"):
        client_dp_epsilon(sampling="poisson", clients_per_round=11, **kw)


@pytest.mark.parametrize("sampling", ["poisson", "uniform"])
def test_calibrate_client_noise_hits_the_target(sampling: str) -> None:
    target, delta, k, m, rounds = 2.0, 1e-5, 1000, 20, 100
    z = calibrate_client_noise(target, delta, sampling=sampling, num_clients=k, clients_per_round=m, rounds=rounds)

    def eps(s: float) -> float:
        return client_dp_epsilon(noise_multiplier=s, sampling=sampling, num_clients=k, clients_per_round=m,
                                 rounds=rounds, delta=delta)

    assert 0.99 * target <= eps(z) <= target
    assert eps(0.995 * z) > target  # (nearly) the smallest such z


# -- selection ------------------------------------------------------------------------------------


def test_selection_check_allows_data_independent_samplers() -> None:
    for spec in (*SELECTIONS_ALLOWED_WITH_CLIENT_DP, "activity:0.0", "availability:6"):
        check_selection_for_client_dp(spec)


@pytest.mark.parametrize(("spec", "reason"), [
    ("activity", "n_k"), ("activity:0.5", "n_k"), ("power-of-choice:20", "local losses"),
    ("power-of-choice", "local losses"), ("oort", "loss feedback")])
def test_selection_check_refuses_data_dependent_samplers(spec: str, reason: str) -> None:
    with pytest.raises(ConfigError, match="amplification by sampling") as err:
        check_selection_for_client_dp(spec)
    assert reason in str(err.value) and "private" in str(err.value)


def test_selection_check_rejects_unknown_spec() -> None:
    with pytest.raises(ConfigError, match="selection"):
        check_selection_for_client_dp("round-robin")
