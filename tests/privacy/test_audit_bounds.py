"""Empirical epsilon lower bounds and the one-run audit, against hand computations and DP mechanisms with
known epsilon (randomised response, the Gaussian mechanism). Fixed seeds; alphas stated per test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import optimize, stats

from trustnlp.errors import ConfigError, DataError, PrivacyError
from trustnlp.privacy.attacks import calibration_split
from trustnlp.privacy.audit import (
    check_claim,
    epsilon_lower_bound,
    epsilon_lower_bound_bonferroni,
    epsilon_lower_bound_from_scores,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
)


def cp_lower(k, n, a):
    """One-sided lower Clopper-Pearson bound at 1 - a by root finding: P[Bin(n, p) >= k] = a."""
    return 0.0 if k == 0 else optimize.brentq(lambda p: stats.binom.sf(k - 1, n, p) - a, 1e-300, 1, xtol=1e-15)


def cp_upper(k, n, a):
    """One-sided upper Clopper-Pearson bound at 1 - a: P[Bin(n, p) <= k] = a."""
    return 1.0 if k == n else optimize.brentq(lambda p: stats.binom.cdf(k, n, p) - a, 0, 1 - 1e-16, xtol=1e-15)


def hand_bound(tp, p, fp, n, delta, confidence=0.95, comparisons=1):
    """eps_lb by hand: both rates' pessimistic ends at (1 - confidence) / (2 * comparisons) each."""
    a = (1 - confidence) / comparisons / 2
    tpr_lo, fpr_hi = cp_lower(tp, p, a), cp_upper(fp, n, a)
    terms = [0.0]
    if tpr_lo > delta:
        terms.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi > delta:
        terms.append(math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return max(terms), tpr_lo, fpr_hi


@pytest.mark.parametrize(("tp", "p", "fp", "n"), [
    (900, 1000, 50, 1000),   # the first term (TPR / FPR) decides
    (1000, 1000, 500, 1000),  # the second term ((1 - FPR) / (1 - TPR)) decides
    (400, 1000, 0, 1000),    # no false positive at all
    (37, 5000, 2, 5000),     # low-FPR regime, small counts
    (10, 100, 10, 100),      # no signal: 0
])
@pytest.mark.parametrize("delta", [0.0, 1e-5, 0.05])
def test_epsilon_lower_bound_vs_hand_computation(tp, p, fp, n, delta):
    got = epsilon_lower_bound(tp, p, fp, n, delta=delta)
    eps, lo, hi = hand_bound(tp, p, fp, n, delta)
    assert got.epsilon == pytest.approx(eps, rel=1e-8, abs=1e-12)
    assert (got.tpr_lower, got.fpr_upper) == pytest.approx((lo, hi), rel=1e-8, abs=1e-14)
    json.dumps(got.to_dict(), allow_nan=False)


def test_epsilon_lower_bound_worked_example():
    """900/1000 members and 50/1000 non-members flagged, delta = 1e-5, 95%:
    TPR_lo = 0.87971, FPR_hi = 0.06539 (2.5% one-sided each), eps_lb = log(0.87970 / 0.06539) = 2.5992;
    the other term is log(0.93461 / 0.12029) = 2.0502."""
    b = epsilon_lower_bound(900, 1000, 50, 1000, delta=1e-5)
    assert b.tpr_lower == pytest.approx(0.879712, abs=1e-6)
    assert b.fpr_upper == pytest.approx(0.065390, abs=1e-6)
    assert b.epsilon == pytest.approx(math.log((0.8797120634813074 - 1e-5) / 0.06539048791549364), rel=1e-12)
    assert b.epsilon == pytest.approx(2.5992, abs=1e-4)
    # Bonferroni over 10 thresholds: each end at 0.25% one-sided, so a smaller bound
    b10 = epsilon_lower_bound(900, 1000, 50, 1000, delta=1e-5, n_comparisons=10)
    assert b10.epsilon == pytest.approx(hand_bound(900, 1000, 50, 1000, 1e-5, comparisons=10)[0], rel=1e-8)
    assert b10.epsilon < b.epsilon


def test_epsilon_lower_bound_covers_randomised_response():
    """eps-DP randomised response (TPR = e^eps / (1 + e^eps), FPR = 1 - TPR) is exactly tight at delta = 0.
    Over 400 fixed-seed audits with 1,000 members and 1,000 non-members, the 95% bound may exceed eps in at
    most 5% + 3 s.e. (8.3%) of them; it must also get within 30% of eps on average (not vacuous)."""
    eps = 2.0
    q = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(0)
    tps, fps = rng.binomial(1000, q, 400), rng.binomial(1000, 1 - q, 400)
    bounds = np.array([epsilon_lower_bound(int(t), 1000, int(f), 1000, delta=0.0).epsilon for t, f in zip(tps, fps)])
    assert (bounds > eps).mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)
    assert bounds.mean() > 0.7 * eps


def gaussian_dp_epsilon(mu: float, delta: float) -> float:
    """eps(delta) of mu-GDP: delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong, Roth & Su 2022)."""
    def f(e):
        return stats.norm.cdf(-e / mu + mu / 2) - math.exp(e) * stats.norm.cdf(-e / mu - mu / 2) - delta
    return optimize.brentq(f, 0, 100)


def test_bound_from_scores_uses_calibration_threshold_and_respects_gaussian_dp():
    """Scores N(mu, 1) vs N(0, 1) are one release of a mu-GDP mechanism (mu = 3: eps(1e-5) = 16.7 by the
    exact formula). The calibrated-threshold bound must be below it (95% event, fixed seed) and the
    chosen threshold must be the calibration argmax (brute force over every calibration score)."""
    mu, delta = 3.0, 1e-5
    import dp_accounting  # a core dependency; imported here only because it takes ~2 s
    assert gaussian_dp_epsilon(mu, delta) == pytest.approx(dp_accounting.get_epsilon_gaussian(1 / mu, delta), rel=1e-9)
    rng = np.random.default_rng(1)
    is_member = rng.random(6000) < 0.5
    scores = rng.normal(mu * is_member, 1.0)
    calib = calibration_split(is_member, seed=2)
    b = epsilon_lower_bound_from_scores(scores, is_member, calibration=calib, delta=delta)
    assert 0 < b.epsilon <= gaussian_dp_epsilon(mu, delta)
    assert b.epsilon > 3.0  # 4.48 here (3,000 evaluation examples cap what 95% can certify): not vacuous
    cs, cm = scores[calib], is_member[calib]
    best, best_t = -1.0, None
    for t in np.unique(cs):  # brute force over thresholds on the calibration half only
        e = epsilon_lower_bound(int((cs[cm] >= t).sum()), int(cm.sum()), int((cs[~cm] >= t).sum()),
                                int((~cm).sum()), delta=delta).epsilon
        if e > best:
            best, best_t = e, t
    assert b.threshold == best_t and b.method == "calibrated threshold"
    ev, em = scores[~calib], is_member[~calib]
    ref = epsilon_lower_bound(int((ev[em] >= best_t).sum()), int(em.sum()), int((ev[~em] >= best_t).sum()),
                              int((~em).sum()), delta=delta)
    assert b.epsilon == ref.epsilon and b.n_comparisons == 1


def test_bonferroni_bound_is_the_max_over_corrected_thresholds():
    rng = np.random.default_rng(3)
    is_member = rng.random(5000) < 0.5
    scores = rng.normal(2.0 * is_member, 1.0)
    grid = np.linspace(-1, 4, 11)  # fixed in advance
    b = epsilon_lower_bound_bonferroni(scores, is_member, thresholds=grid, delta=1e-5)
    per = [hand_bound(int((scores[is_member] >= t).sum()), int(is_member.sum()),
                      int((scores[~is_member] >= t).sum()), int((~is_member).sum()), 1e-5, comparisons=11)[0]
           for t in grid]
    assert b.epsilon == pytest.approx(max(per), rel=1e-8)
    assert b.threshold == grid[int(np.argmax(per))] and b.n_comparisons == 11


def test_bound_errors():
    with pytest.raises(DataError, match="Expected `true_positives` to be <= `n_members`"):
        epsilon_lower_bound(11, 10, 0, 10, delta=1e-5)
    with pytest.raises(ConfigError, match="Expected `delta` to be in \\[0, 1\\)"):
        epsilon_lower_bound(1, 10, 0, 10, delta=1.0)
    with pytest.raises(DataError, match="members and non-members among the calibration examples"):
        epsilon_lower_bound_from_scores([1.0, 2.0, 3.0, 4.0], [True, True, False, False],
                                        calibration=[True, True, False, False], delta=1e-5)


# -- the one-run audit (Steinke, Nasr & Jagielski 2023) -------------------------------------------


def p_value_by_hand(m, r, v, eps, delta):
    """beta + 2 m delta alpha, with alpha = max_i P[v - i <= W < v] / i, summed term by term."""
    q = math.exp(eps) / (1 + math.exp(eps))
    beta = sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(v, r + 1))
    alpha, window = 0.0, 0.0
    for i in range(1, v + 1):
        j = v - i
        window += math.comb(r, j) * q**j * (1 - q) ** (r - j)
        alpha = max(alpha, window / i)
    return min(1.0, beta + 2 * m * delta * alpha)


@pytest.mark.parametrize(("m", "r", "v"), [(100, 50, 40), (1000, 200, 150), (1000, 1000, 700), (50, 50, 50),
                                           (1000, 10, 0)])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("delta", [0.0, 1e-5, 1e-3])
def test_one_run_p_value_vs_hand_computation(m, r, v, eps, delta):
    assert one_run_p_value(m, r, v, epsilon=eps, delta=delta) == pytest.approx(
        p_value_by_hand(m, r, v, eps, delta), rel=1e-9, abs=1e-300)


def test_one_run_all_correct_grows_with_r_and_stays_below_pure_dp_maximum():
    """All r guesses correct, 95%: at delta = 0 the bound is the closed form log(a / (1 - a)), a = 0.05^(1/r)
    (q^r = 0.05), the most any r guesses can certify; with delta = 1e-5 it is smaller and both grow with r."""
    m = 1000
    rs = [10, 50, 100, 500, 1000]
    pure = [one_run_epsilon_lower_bound(m=m, r=r, v=r, delta=0.0) for r in rs]
    approx = [one_run_epsilon_lower_bound(m=m, r=r, v=r, delta=1e-5) for r in rs]
    for r, e in zip(rs, pure):
        a = 0.05 ** (1 / r)
        assert e == pytest.approx(math.log(a / (1 - a)), rel=1e-9)
    assert all(x < y for x, y in zip(pure, pure[1:])) and all(x < y for x, y in zip(approx, approx[1:]))
    assert all(0 < d < p for d, p in zip(approx, pure))
    # more canaries at the same guesses: a larger 2 m delta term, a weaker bound
    assert one_run_epsilon_lower_bound(m=10_000, r=100, v=100, delta=1e-5) < approx[2]
    # the bound is where the p-value crosses 0.05
    e = approx[3]
    assert one_run_p_value(m, 500, 500, epsilon=e, delta=1e-5) < 0.05 <= one_run_p_value(m, 500, 500, epsilon=e + 1e-9,
                                                                                          delta=1e-5)


def test_one_run_bound_below_epsilon_for_randomised_response():
    """Guesses simulated from eps-DP randomised response (each correct w.p. e^eps / (1 + e^eps)), eps = 2,
    m = r = 1,000. Fixed seed: the 95% bound is <= eps, and not vacuous (> 1.5). Over 400 seeds it may
    exceed eps in at most 5% + 3 s.e. (8.3%) of runs, at delta = 0 and at delta = 1e-5."""
    eps, m = 2.0, 1000
    q = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(2023)
    v = int(rng.binomial(m, q))
    for delta in (0.0, 1e-5):
        b = one_run_epsilon_lower_bound(m=m, r=m, v=v, delta=delta)
        assert 1.5 < b <= eps
    vs = np.random.default_rng(7).binomial(m, q, 400)
    for delta in (0.0, 1e-5):
        # bound > eps exactly when the p-value at eps is below 0.05 (checked on 20 runs, then used for all)
        rejects = np.array([one_run_p_value(m, m, int(x), epsilon=eps, delta=delta) < 0.05 for x in vs])
        for x, rejected in zip(vs[:20], rejects[:20]):
            assert (one_run_epsilon_lower_bound(m=m, r=m, v=int(x), delta=delta) > eps) == rejected
        assert rejects.mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)


def test_one_run_audit_from_scores():
    rng = np.random.default_rng(5)
    m = 1000
    included = rng.random(m) < 0.5
    scores = included * 1.0 + rng.normal(0, 1, m)
    res = one_run_audit(scores, included, k_plus=100, k_minus=100, delta=1e-5)
    order = np.argsort(-scores)
    v = sum(bool(included[i]) for i in order[:100]) + sum(not included[i] for i in order[-100:])
    assert (res.m, res.r, res.v) == (1000, 200, v)
    assert res.epsilon == one_run_epsilon_lower_bound(m=1000, r=200, v=v, delta=1e-5)
    json.dumps(res.to_dict(), allow_nan=False)
    # positive control: a score that reveals inclusion (no noise) gets every guess right
    leak = one_run_audit(included * 10.0 + rng.normal(0, 1, m), included, k_plus=300, k_minus=300, delta=1e-5)
    assert leak.v == 600 and leak.epsilon == pytest.approx(
        one_run_epsilon_lower_bound(m=1000, r=600, v=600, delta=1e-5)) and leak.epsilon > 3
    # Bonferroni over pairs tried
    assert one_run_audit(scores, included, k_plus=100, k_minus=100, delta=1e-5, n_comparisons=20).epsilon < res.epsilon
    with pytest.raises(ConfigError, match="Expected `k_plus \\+ k_minus` to be in \\[1, m = 1000\\]"):
        one_run_audit(scores, included, k_plus=600, k_minus=600, delta=1e-5)


def test_check_claim_fails_loudly():
    check_claim(0.8, claimed_epsilon=1.0)
    check_claim(5.0, claimed_epsilon=math.inf)
    with pytest.raises(PrivacyError, match="exceeds the claimed epsilon 1"):
        check_claim(1.7, claimed_epsilon=1.0)
    with pytest.raises(ConfigError, match="Expected `empirical_lower and claimed_epsilon` to be numbers"):
        check_claim(math.nan, claimed_epsilon=1.0)
