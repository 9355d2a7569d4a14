"""Privacy accounting: epsilons equal direct dp-accounting computations, calibration, the ledger, the guard.

Reference values are recomputed here with dp-accounting's own accountants (never through
trustnlp's code path). Golden numbers: ../shared/BASELINE.md section 4 (q = 256/60000, 10 epochs ->
2343 steps, delta = 1e-5).
"""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from trustnlp.errors import ConfigError, DataError, PrivacyError
from trustnlp.privacy.accounting import (
    ACCOUNTANTS,
    BudgetGuard,
    DPEventRecord,
    PrivacyLedger,
    calibrate_noise,
    compute_delta,
    compute_epsilon,
    default_delta,
    epsilon_curve,
)

Q = 256 / 60000
STEPS = int(10 / Q)  # 2343
DELTA = 1e-5


def sgd(sigma: float, q: float, count: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), count)


def direct(event: dp_accounting.DpEvent, accountant: str, interval: float = 1e-4, delta: float = DELTA) -> float:
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant(value_discretization_interval=interval)
    acc.compose(event)
    return acc.get_epsilon(delta)


# -- golden values --------------------------------------------------------------------------------


def test_epsilon_rdp_golden():
    eps = compute_epsilon(noise_multiplier=1.1, sampling_rate=Q, steps=STEPS, delta=DELTA, accountant="rdp")
    assert eps == pytest.approx(direct(sgd(1.1, Q, STEPS), "rdp"), rel=1e-6)
    assert eps == pytest.approx(1.0986, abs=1e-4)


def test_epsilon_pld_golden():
    eps = compute_epsilon(noise_multiplier=1.1, sampling_rate=Q, steps=STEPS, delta=DELTA, accountant="pld")
    assert eps == pytest.approx(direct(sgd(1.1, Q, STEPS), "pld", 1e-4), rel=1e-6)
    assert eps == pytest.approx(0.9188, abs=1e-4)


# BASELINE's sigmas (0.7430 RDP, 0.6946 PLD) come from dp-accounting's calibrate_dp_mechanism with
# tol=1e-3, which returns the feasible end of a bracket 1e-3 wide; the smallest feasible sigma lies
# up to 1e-3 below. calibrate_noise finds it to 1e-5 (relative): 0.74200 and 0.69373, i.e. 1.0e-3 and
# 0.9e-3 below the golden values, outside the 5e-4 once asked for. So: golden - 1.5e-3 <= sigma <= golden,
# plus a direct check that sigma is feasible, within [0.99, 1] x target, and minimal.
@pytest.mark.parametrize(("accountant", "golden", "exact"), [("rdp", 0.7430, 0.74200), ("pld", 0.6946, 0.69373)])
def test_calibrate_golden(accountant, golden, exact):
    sigma = calibrate_noise(3.0, DELTA, Q, STEPS, accountant=accountant)
    assert golden - 1.5e-3 <= sigma <= golden
    assert sigma == pytest.approx(exact, abs=5e-5)
    eps = direct(sgd(sigma, Q, STEPS), accountant)
    assert 0.99 * 3 <= eps <= 3
    shrink = 1e-4 if accountant == "rdp" else 5e-4  # PLD: coarse boundary, ~1e-4 above the 1e-4 one
    assert direct(sgd(sigma * (1 - shrink), Q, STEPS), accountant) > 3
    if accountant == "rdp":  # the guard then allows every planned step
        assert BudgetGuard.max_steps(target_epsilon=3.0, delta=DELTA, noise_multiplier=sigma, sampling_rate=Q,
                                     hint=STEPS) >= STEPS


def test_calibrate_with_schedule_composes_epochs_exactly():
    sched, spe, q = [1.0, 0.9, 0.8], 100, 0.01
    sigma = calibrate_noise(2.0, DELTA, q, 300, schedule=sched, steps_per_epoch=spe)
    event = dp_accounting.ComposedDpEvent([sgd(sigma * s, q, spe) for s in sched])
    assert 0.99 * 2 <= direct(event, "rdp") <= 2.0
    assert direct(dp_accounting.ComposedDpEvent([sgd(sigma * (1 - 1e-4) * s, q, spe) for s in sched]), "rdp") > 2.0


# -- schedules, ledger ----------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_schedule_equals_direct_composition(accountant):
    q, spe = 0.02, 50
    got = compute_epsilon(noise_multiplier=[1.2, 1.0, 0.8], sampling_rate=q, steps=120, delta=DELTA,
                          accountant=accountant, steps_per_epoch=spe, pld_interval=1e-3)
    event = dp_accounting.ComposedDpEvent([sgd(1.2, q, 50), sgd(1.0, q, 50), sgd(0.8, q, 20)])
    assert got == pytest.approx(direct(event, accountant, 1e-3), rel=1e-6)


def test_schedule_too_short():
    with pytest.raises(ConfigError, match="per-epoch entries"):
        compute_epsilon(noise_multiplier=[1.0, 0.9], sampling_rate=0.1, steps=25, delta=DELTA, steps_per_epoch=10)


def _ledger() -> PrivacyLedger:
    led = PrivacyLedger()
    led.record(noise_multiplier=1.1, sampling_rate=0.01, steps=100)
    led.record(noise_multiplier=20.0, sampling_rate=0.01, steps=30, purpose="clip-norm estimate")
    led.record(noise_multiplier=5.0, sampling_rate=1.0, steps=3, purpose="statistic")
    led.record(noise_multiplier=1.1, sampling_rate=0.01, steps=50)  # merged into the first record
    led.record(noise_multiplier=0.9, sampling_rate=0.01)
    led.record(noise_multiplier=0.9, sampling_rate=0.01)
    return led


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_ledger_equals_direct_composed_event(accountant):
    led = _ledger()
    event = dp_accounting.ComposedDpEvent([
        sgd(1.1, 0.01, 150), sgd(20.0, 0.01, 30),
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(5.0), 3), sgd(0.9, 0.01, 2)])
    assert led.event() == event
    assert led.epsilon(DELTA, accountant=accountant, pld_interval=1e-3) == pytest.approx(
        direct(event, accountant, 1e-3), rel=1e-6)


def test_ledger_merges_and_round_trips():
    led = _ledger()
    assert [(r.kind, r.noise_multiplier, r.count, r.purpose) for r in led.records] == [
        ("poisson_gaussian", 1.1, 150, "training"), ("poisson_gaussian", 20.0, 30, "clip-norm estimate"),
        ("gaussian", 5.0, 3, "statistic"), ("poisson_gaussian", 0.9, 2, "training")]
    assert led.total_count == 185
    back = PrivacyLedger.from_dict(json.loads(json.dumps(led.to_dict())))
    assert back == led and back.records == led.records
    back.record(noise_multiplier=1.1, sampling_rate=0.01)
    assert back.records[0].count == 151 and led.records[0].count == 150
    assert PrivacyLedger().epsilon(DELTA) == 0.0
    with pytest.raises(DataError):
        PrivacyLedger.from_dict({"records": [{"kind": "gaussian"}]})
    with pytest.raises(DataError):
        PrivacyLedger.from_dict({"entries": []})


def test_record_events_and_validation():
    rec = DPEventRecord("poisson_gaussian", 1.0, 0.1, 4)
    assert rec.to_dp_event() == sgd(1.0, 0.1, 4)
    assert DPEventRecord("gaussian", 2.0, 1.0, 2).to_dp_event() == dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(2.0), 2)
    assert DPEventRecord.from_dict(rec.to_dict()) == rec
    with pytest.raises(ConfigError, match="Expected `sampling_rate` to be 1.0 for kind 'gaussian'"):
        DPEventRecord("gaussian", 1.0, 0.5, 1)
    with pytest.raises(ConfigError, match="Expected `count` to be an int >= 1"):
        DPEventRecord("poisson_gaussian", 1.0, 0.5, 0)
    with pytest.raises(ConfigError, match="Expected `kind`"):
        DPEventRecord("laplace", 1.0, 0.5, 1)
    # no noise: no guarantee
    led = PrivacyLedger()
    led.record(noise_multiplier=0.0, sampling_rate=0.1)
    assert led.epsilon(DELTA) == math.inf and led.epsilon(DELTA, accountant="pld") == math.inf


# -- monotonicity ---------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.floats(0.5, 5.0), st.floats(1.01, 2.0), st.floats(1e-3, 0.2), st.integers(1, 3000))
def test_more_noise_less_epsilon(sigma, factor, q, steps):
    a = compute_epsilon(noise_multiplier=sigma, sampling_rate=q, steps=steps, delta=DELTA)
    b = compute_epsilon(noise_multiplier=sigma * factor, sampling_rate=q, steps=steps, delta=DELTA)
    assert b <= a


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([0.6, 1.0, 2.0]), st.floats(1e-3, 0.2), st.integers(1, 3000), st.integers(1, 3000))
def test_more_steps_more_epsilon(sigma, q, steps, more):
    a = compute_epsilon(noise_multiplier=sigma, sampling_rate=q, steps=steps, delta=DELTA)
    b = compute_epsilon(noise_multiplier=sigma, sampling_rate=q, steps=steps + more, delta=DELTA)
    assert b >= a


def test_epsilon_curve_and_delta():
    curve = epsilon_curve(1.0, 0.01, 500, DELTA, points=10)
    assert [k for k, _ in curve] == list(range(50, 501, 50))
    eps = [e for _, e in curve]
    assert eps == sorted(eps)
    assert eps[-1] == compute_epsilon(noise_multiplier=1.0, sampling_rate=0.01, steps=500, delta=DELTA)
    for accountant in ACCOUNTANTS:
        e = compute_epsilon(noise_multiplier=1.0, sampling_rate=0.01, steps=500, delta=DELTA, accountant=accountant,
                            pld_interval=1e-3)
        d = compute_delta(noise_multiplier=1.0, sampling_rate=0.01, steps=500, epsilon=e, accountant=accountant,
                          pld_interval=1e-3)
        assert d == pytest.approx(DELTA, rel=0.05)


# -- the budget guard -----------------------------------------------------------------------------


def _run(guard: BudgetGuard, sigma: float, q: float, cap: int = 10_000) -> int:
    steps = 0
    while steps < cap and guard.allow_step():
        guard.ledger.record(noise_multiplier=sigma, sampling_rate=q)
        steps += 1
    return steps


def test_guard_rdp_stops_at_brute_force_step():
    sigma, q, target = 1.5, 0.05, 1.0
    brute = 0
    while direct(sgd(sigma, q, brute + 1), "rdp") <= target:
        brute += 1
    assert 10 < brute < 100
    guard = BudgetGuard(target_epsilon=target, delta=DELTA, noise_multiplier=sigma, sampling_rate=q)
    assert _run(guard, sigma, q) == brute
    assert guard.would_exceed() and not guard.allow_step()
    assert guard.spent() <= target
    with pytest.raises(PrivacyError, match=rf"Privacy budget exhausted: .* {brute} steps taken"):
        guard.check()


def test_guard_pld_stops_at_boundary():
    sigma, q, target = 1.5, 0.05, 0.8
    guard = BudgetGuard(target_epsilon=target, delta=DELTA, noise_multiplier=sigma, sampling_rate=q, accountant="pld")
    k = _run(guard, sigma, q)
    assert direct(sgd(sigma, q, k), "pld", 1e-4) <= target < direct(sgd(sigma, q, k + 1), "pld", 1e-4)
    # the coarse interval alone: brute force over every step count
    brute = 0
    while direct(sgd(sigma, q, brute + 1), "pld", 1e-3) <= target:
        brute += 1
    assert BudgetGuard.max_steps(target_epsilon=target, delta=DELTA, noise_multiplier=sigma, sampling_rate=q,
                                 accountant="pld", pld_interval=1e-3) == brute


def test_guard_follows_other_records_and_restores():
    sigma, q = 1.5, 0.05
    guard = BudgetGuard(target_epsilon=1.5, delta=DELTA, noise_multiplier=sigma, sampling_rate=q, planned_steps=40)
    full = guard.remaining_steps()
    _run(guard, sigma, q, cap=10)
    assert guard.remaining_steps() == full - 10
    guard.ledger.record(noise_multiplier=2.0, sampling_rate=q, steps=20, purpose="clip-norm estimate")
    expected = BudgetGuard.max_steps(target_epsilon=1.5, delta=DELTA, noise_multiplier=sigma, sampling_rate=q,
                                     records=guard.ledger.records)
    assert guard.remaining_steps() == expected < full - 10
    assert guard.would_exceed(DPEventRecord("poisson_gaussian", sigma, q, expected + 1))
    assert not guard.would_exceed([DPEventRecord("poisson_gaussian", sigma, q, expected)])
    assert guard.would_exceed(DPEventRecord("gaussian", 0.5, 1.0, 1))  # one un-subsampled release at sigma 0.5
    # a checkpoint restore replaces the ledger's state in place (as DPStep.load_state_dict does)
    restored = PrivacyLedger.from_dict({"records": []})
    guard.ledger.__dict__.update(restored.__dict__)
    guard.sync()
    assert guard.remaining_steps() == full


def test_guard_edge_cases():
    assert BudgetGuard.max_steps(target_epsilon=1.0, delta=DELTA, noise_multiplier=500.0, sampling_rate=0.01,
                                 limit=1000) == 1000
    no_noise = BudgetGuard(target_epsilon=10.0, delta=DELTA, noise_multiplier=0.0, sampling_rate=0.1)
    assert not no_noise.allow_step()
    big = BudgetGuard(target_epsilon=0.01, delta=DELTA, noise_multiplier=0.5, sampling_rate=1.0)
    assert big.remaining_steps() == 0


# -- default delta, errors ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 99, 1000, 10_000, 10_001, 60_000, 123_456, 10**6, 9_999_999, 10**7])
def test_default_delta_below_one_over_n(n):
    d = default_delta(n)
    assert 0 < d < 1 / n and n * d <= 0.1 and d <= 1e-5
    assert math.log10(d) == round(math.log10(d))  # a power of ten


def test_default_delta_values():
    assert [default_delta(n) for n in (10, 60_000, 100_000, 10**7)] == [1e-5, 1e-6, 1e-6, 1e-8]
    with pytest.raises(ConfigError, match="Expected `n` to be an int >= 1, but got 0."):
        default_delta(0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target_epsilon": 0.0}, "Expected `target_epsilon` to be a finite number > 0, but got 0.0."),
    ({"target_epsilon": -1}, "Expected `target_epsilon` to be a finite number > 0, but got -1."),
    ({"delta": 0.0}, "Expected `delta` to be in (0, 1), but got 0.0."),
    ({"delta": 1.0}, "Expected `delta` to be in (0, 1), but got 1.0."),
    ({"sampling_rate": 0.0}, "Expected `sampling_rate` to be in (0, 1], but got 0.0."),
    ({"sampling_rate": 1.5}, "Expected `sampling_rate` to be in (0, 1], but got 1.5."),
    ({"steps": 0}, "Expected `steps` to be an int >= 1, but got 0."),
    ({"accountant": "prv"}, "Expected `accountant` to be one of 'rdp', 'pld', but got 'prv'."),
])
def test_calibrate_errors(kwargs, message):
    args = {"target_epsilon": 1.0, "delta": DELTA, "sampling_rate": 0.01, "steps": 100} | kwargs
    accountant = args.pop("accountant", "rdp")
    with pytest.raises(ConfigError) as info:
        calibrate_noise(**args, accountant=accountant)
    assert str(info.value) == message


def test_unreachable_target():
    with pytest.raises(ConfigError, match=r"unreachable: even noise_multiplier=1000.0"):
        calibrate_noise(1e-4, 1e-10, 1.0, 10**6)
    with pytest.raises(ConfigError, match="so large"):
        calibrate_noise(1e5, DELTA, 0.01, 10)
