"""Device selection: every selector's inclusion frequencies against its stated pi_k (fixed seeds, alpha
stated per test), Horvitz-Thompson unbiasedness (exact enumeration, float64), power-of-choice's
choice, availability never picking an offline device, Oort's exploit/explore and state round trip,
and the selectors inside the engine (rows record who and why; resume with Oort is bitwise)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from fed_fixtures import LABELS, bag, config, one_thread, population, synthetic
from scipy import stats

from trustnlp.errors import ConfigError
from trustnlp.federated import FederatedConfig, simulate
from trustnlp.federated.selection import (
    ActivitySelector,
    AvailabilitySelector,
    OortSelector,
    PowerOfChoiceSelector,
    SelectionContext,
    UniformSelector,
    diurnal_online,
    inclusion_probabilities,
    make_selector,
    parse_selection_spec,
)
from trustnlp.federated.strategy import ClientUpdate, FedAvg, FitInstruction
from trustnlp.tasks import ClassifyTask

TASK = ClassifyTask(LABELS)
ALPHA = 1e-3  # family-wise significance level of the statistical tests below (Bonferroni over clients)


def _binomial_ok(counts: np.ndarray, trials: int, p: np.ndarray) -> float:
    """The smallest two-sided binomial p-value times the number of tested clients (Bonferroni)."""
    tested = (p > 0) & (p < 1)
    pv = [stats.binomtest(int(c), trials, float(q)).pvalue for c, q in zip(counts[tested], p[tested])]
    return min(pv) * tested.sum() if pv else 1.0


def _heavy_tailed(k: int, seed: int = 0) -> np.ndarray:
    return np.maximum(1, np.round(np.random.default_rng(seed).pareto(1.2, size=k) * 5)).astype(np.int64)


def _brute_force_c(w: np.ndarray, target: float) -> float:
    """c with sum_k min(1, c w_k) = target, by bisection (an independent reference for the water-filling)."""
    lo, hi = 0.0, 1.0 / w[w > 0].min()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(1, mid * w).sum() < target else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_inclusion_probabilities_match_a_bisection_reference(beta: float) -> None:
    n = _heavy_tailed(60)
    n[:3] = 0  # devices holding nothing are never picked
    pi = inclusion_probabilities(n, beta=beta, num=12)
    w = np.where(n > 0, n.astype(float) ** beta, 0.0)
    ref = np.minimum(1.0, _brute_force_c(w, 12.0) * w)
    np.testing.assert_allclose(pi, ref, rtol=1e-9, atol=1e-12)
    assert math.isclose(pi.sum(), 12.0, rel_tol=1e-12) and np.all(pi[:3] == 0) and pi.max() <= 1.0
    if beta == 1.0:
        assert np.sum(pi == 1.0) >= 1  # the heavy tail is capped
    assert inclusion_probabilities(np.array([3, 0, 5]), beta=1.0, num=10).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match="beta"):
        inclusion_probabilities(n, beta=1.5, num=2)


def test_activity_selector_frequencies_match_pi() -> None:
    # 40 devices, heavy-tailed activity, expected 6 per round, 4000 rounds: each count ~ Binomial(4000, pi_k).
    n = _heavy_tailed(40, seed=1)
    ctx = SelectionContext(n)
    sel = ActivitySelector(6, beta=1.0, seed=5)
    pi = sel.probabilities(np.arange(40), ctx)
    counts, sizes = np.zeros(40), []
    for rnd in range(1, 4001):
        s = sel.select(rnd, np.arange(40), ctx)
        counts[s.clients] += 1
        sizes.append(len(s.clients))
        np.testing.assert_allclose(s.inclusion, pi[s.clients], rtol=0)
        assert all("Poisson draw" in r for r in s.reasons)
    assert _binomial_ok(counts, 4000, pi) > ALPHA
    assert abs(np.mean(sizes) - 6) < 4 * math.sqrt((pi * (1 - pi)).sum() / 4000)  # mean round size = sum pi = 6
    assert stats.spearmanr(counts, n).statistic > 0.8  # activity-based: frequency grows with activity
    # a subset available: probabilities are recomputed over it
    s = sel.select(3, np.array([1, 5, 7]), ctx)
    assert set(s.clients.tolist()) <= {1, 5, 7}


@pytest.mark.parametrize("kind", ["uniform", "activity:0"])
def test_uniform_selectors_frequencies(kind: str) -> None:
    sel = make_selector(kind, num=5, num_clients=25, seed=2)
    ctx = SelectionContext(_heavy_tailed(25, seed=3))
    counts = np.zeros(25)
    for rnd in range(1, 3001):
        s = sel.select(rnd, np.arange(25), ctx)
        counts[s.clients] += 1
        np.testing.assert_allclose(s.inclusion, 5 / 25)
    assert _binomial_ok(counts, 3000, np.full(25, 0.2)) > ALPHA


def test_availability_selector_never_picks_offline_devices_and_is_uniform_among_online() -> None:
    offsets = np.random.default_rng(0).integers(-8, 9, size=30).astype(float)
    sel = AvailabilitySelector(4, offsets=offsets, hours=8, rounds_per_day=24, seed=1)
    counts, expected, online_frac = np.zeros(30), np.zeros(30), []
    for rnd in range(1, 24 * 150 + 1):
        on = sel.online(rnd)
        s = sel.select(rnd, np.arange(30), SelectionContext(np.ones(30)))
        assert np.all(on[s.clients]), "an offline device was selected"
        n_on = on.sum()
        if n_on:
            expected[on] += min(1.0, 4 / n_on)
            np.testing.assert_allclose(s.inclusion, min(1.0, 4 / n_on))
        counts[s.clients] += 1
        online_frac.append(on.mean())
    assert abs(np.mean(online_frac) - 8 / 24) < 1e-9  # every device is online exactly 8 of 24 hours
    # counts are sums of independent Bernoulli(pi_t): z-test with the exact variance, Bonferroni over 30 devices
    var = np.zeros(30)
    for rnd in range(1, 25):
        on = sel.online(rnd)
        if on.sum():
            p = min(1.0, 4 / on.sum())
            var[on] += 150 * p * (1 - p)
    z = np.abs(counts - expected) / np.sqrt(np.maximum(var, 1e-12))
    assert 2 * stats.norm.sf(z.max()) * 30 > ALPHA
    # the diurnal rule itself: local 23:00 with a 22:00 start and 8 hours is online, 07:00 is not
    assert diurnal_online(np.array([2.0, 2.0]), np.array([22.0, 22.0]), 8.0, np.array(21.0)).all()
    assert not diurnal_online(np.array([0.0]), np.array([22.0]), 8.0, 7.0).any()
    assert diurnal_online(np.array([0.0]), np.array([22.0]), 8.0, 5.99).all()


def test_power_of_choice_keeps_the_highest_loss_candidates() -> None:
    n = _heavy_tailed(50, seed=4)
    losses = np.random.default_rng(9).random(50)
    queried: list[np.ndarray] = []

    def query(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queried.append(np.asarray(ids))
        return losses[ids], losses[ids] * 1.1

    sel = PowerOfChoiceSelector(3, candidates=10, seed=0)
    first_candidate = np.zeros(50)
    for rnd in range(1, 301):
        s = sel.select(rnd, np.arange(50), SelectionContext(n, loss=query))
        cand = queried[-1]
        assert len(cand) == 10 and len(set(cand.tolist())) == 10
        top = cand[np.argsort(-losses[cand])[:3]]
        assert sorted(top.tolist()) == s.clients.tolist()
        assert s.inclusion is None and all("rank" in r for r in s.reasons)
        first_candidate[cand] += 1
    # candidates are drawn in proportion to data size: the biggest device is a candidate far more often
    assert first_candidate[np.argmax(n)] > first_candidate[np.argmin(n)]
    # d = 1 candidate: a draw proportional to n_k (chi-square at ALPHA)
    one = PowerOfChoiceSelector(1, candidates=1, seed=3)
    small = np.array([1, 2, 3, 4, 10])
    hits = np.zeros(5)
    for rnd in range(1, 4001):
        hits[one.select(rnd, np.arange(5), SelectionContext(small, loss=lambda i: (np.zeros(len(i)), np.zeros(len(i))))).clients] += 1
    assert stats.chisquare(hits, 4000 * small / small.sum()).pvalue > ALPHA
    with pytest.raises(ConfigError, match="loss query"):
        sel.select(1, np.arange(50), SelectionContext(n))
    with pytest.raises(ConfigError, match="candidates"):
        PowerOfChoiceSelector(5, candidates=3, seed=0)


def test_oort_exploits_high_utility_explores_unseen_and_round_trips_its_state() -> None:
    n = np.full(20, 10)
    rms = np.linspace(0.1, 2.0, 20)  # client 19 has the highest loss, hence utility

    def query(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rms[ids], rms[ids]

    ctx = SelectionContext(n, loss=query, steps=np.full(20, 4))
    sel = OortSelector(4, num_clients=20, seed=0, epsilon=0.9, epsilon_min=0.2, speed_sigma=0.0)
    seen: set[int] = set()
    for rnd in range(1, 6):
        s = sel.select(rnd, np.arange(20), ctx)
        explore = [c for c, r in zip(s.clients, s.reasons) if r.startswith("explore")]
        assert all(c not in seen for c in explore)
        seen |= set(s.clients.tolist())
    assert sel.epsilon < 0.9
    # everyone explored; with epsilon at its floor, exploitation picks from the top utilities
    greedy = OortSelector(4, num_clients=20, seed=1, epsilon=0.0, epsilon_min=0.0, speed_sigma=0.0)
    greedy.feedback(1, [{"client": c, "num_examples": 10, "loss_rms": rms[c], "steps": 4} for c in range(20)])
    picks = np.zeros(20)
    for rnd in range(2, 40):
        fresh = OortSelector(4, num_clients=20, seed=rnd, epsilon=0.0, epsilon_min=0.0, speed_sigma=0.0)
        fresh.load_state_dict(greedy.state_dict())
        picks[fresh.select(rnd, np.arange(20), SelectionContext(n)).clients] += 1
    assert picks[:10].sum() == 0 and picks[16:].sum() > 0  # only high-utility clients (>= 0.95 of the cut-off)
    # state round trip: a copy restored from state_dict selects exactly what the original does
    a = OortSelector(4, num_clients=20, seed=3)
    for rnd in range(1, 4):
        a.select(rnd, np.arange(20), ctx)
    b = OortSelector(4, num_clients=20, seed=3)
    b.load_state_dict(a.state_dict())
    assert a.select(4, np.arange(20), ctx).clients.tolist() == b.select(4, np.arange(20), ctx).clients.tolist()
    # a slow device is penalised: same statistical utility, 4x slower than the preferred duration
    slow = OortSelector(2, num_clients=3, seed=0, speed_sigma=0.0)
    slow.feedback(1, [{"client": c, "num_examples": 10, "loss_rms": 1.0, "steps": s} for c, s in enumerate([4, 4, 16])])
    util = slow.scores(2, np.arange(3))
    assert util[2] < util[0] / 10


def _toy(k: int = 6, dim: int = 3) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in rng.integers(2, 12, size=k)]
    A = [rng.standard_normal((s, dim)) for s in sizes]
    b = [rng.standard_normal(s) for s in sizes]
    return A, b, np.array(sizes)


def test_horvitz_thompson_aggregation_is_unbiased_exactly() -> None:
    # Linear toy problem: client k takes one gradient step on its least squares; its update is linear in the data.
    A, b, n = _toy()
    x = np.array([0.3, -0.2, 0.5])
    local = [x - 0.1 * Ak.T @ (Ak @ x - bk) / len(bk) for Ak, bk in zip(A, b)]
    N = n.sum()
    full = x - sum(nk / N * (x - xk) for nk, xk in zip(n, local))  # full participation FedAvg
    pi = inclusion_probabilities(n, beta=1.0, num=3)
    strat = FedAvg()
    state = strat.initialize({"w": torch.tensor(x)})
    ht_mean, sample_mean = np.zeros(3), np.zeros(3)
    for members in itertools.product([0, 1], repeat=len(n)):  # every Poisson sample, with its probability
        S = [k for k in range(len(n)) if members[k]]
        prob = float(np.prod([pi[k] if members[k] else 1 - pi[k] for k in range(len(n))]))
        if not S:
            ht_mean += prob * x
            sample_mean += prob * x
            continue
        ups = [ClientUpdate(k, {"w": torch.tensor(local[k])}, int(n[k]), weight=float(n[k] / (N * pi[k]))) for k in S]
        new, _ = strat.aggregate(1, state, ups)
        ht_mean += prob * new.params["w"].numpy()
        plain = [ClientUpdate(k, {"w": torch.tensor(local[k])}, int(n[k])) for k in S]
        sample_mean += prob * strat.aggregate(1, state, plain)[0].params["w"].numpy()
    np.testing.assert_allclose(ht_mean, full, rtol=1e-10)
    assert np.abs(sample_mean - full).max() > 1e-3  # the normalised sample-weighted mean is biased under pi ~ n
    with pytest.raises(ConfigError, match="mix"):
        strat.aggregate(1, state, [ClientUpdate(0, {"w": torch.tensor(x)}, 1, weight=1.0),
                                   ClientUpdate(1, {"w": torch.tensor(x)}, 1)])


def test_selection_specs_and_config_errors() -> None:
    assert parse_selection_spec("activity:0.5") == ("activity", 0.5)
    assert parse_selection_spec("Power-of-Choice:20") == ("power-of-choice", 20.0)
    for bad in ("random", "activity:2", "power-of-choice:0", "oort:3", "availability:25", "activity:x"):
        with pytest.raises(ConfigError, match="selection"):
            parse_selection_spec(bad)
    with pytest.raises(ValueError, match="horvitz-thompson"):
        FederatedConfig(selection="oort", aggregation="horvitz-thompson")
    with pytest.raises(ValueError, match="continual"):
        FederatedConfig(storage=5)
    with pytest.raises(ValueError, match="rounds >= periods"):
        FederatedConfig(setting="continual", periods=10, rounds=5)
    with pytest.raises(ValueError, match="selection"):
        FederatedConfig(selection="best")


@pytest.mark.parametrize("spec,agg", [("activity:1", "horvitz-thompson"), ("power-of-choice:4", "sample"),
                                      ("availability:12", "sample")])
def test_selectors_in_the_engine_record_who_and_why(spec: str, agg: str) -> None:
    data = synthetic(80, seed=2)
    clients = population(data, num_clients=8)
    cfg = config(rounds=4, clients_per_round=2, selection=spec, aggregation=agg)
    sel = make_selector(spec, num=2, num_clients=8, seed=0, rounds_per_day=4)
    with one_thread():
        res = simulate(bag(), TASK, clients, config=cfg, selector=sel, progress=False)
    for r in res.rows:
        assert len(r["selected"]) == len(r["selection_reasons"]) == len(r["inclusion"]) == r["num_clients"]
        assert all(r["selection_reasons"])
        if spec.startswith("activity"):
            assert all(0 < p <= 1 for p in r["inclusion"])
    assert all(np.isfinite(p.detach().numpy()).all() for p in res.state.params.values())


def test_oort_resume_is_bitwise_equal(tmp_path) -> None:
    data = synthetic(60, seed=4)
    clients = population(data, num_clients=6)
    cfg = config(rounds=4, clients_per_round=2, selection="oort")

    def run(**kw: object) -> tuple[torch.nn.Module, object]:
        model = bag(seed=1)
        res = simulate(model, TASK, clients, config=cfg, selector=make_selector("oort", num=2, num_clients=6, seed=0),
                       progress=False, **kw)
        return model, res

    with one_thread():
        full_model, full = run()
        run(checkpoint_dir=tmp_path, stop_after_rounds=2)
        resumed_model, resumed = run(checkpoint_dir=tmp_path)
    assert resumed.resumed_from_round == 2
    assert [r["selected"] for r in resumed.rows] == [r["selected"] for r in full.rows]
    for k, v in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[k], v), k


def test_uniform_selection_unchanged_by_the_new_interface() -> None:
    # The uniform draw is the same function of (seed, round) as before the selector interface grew.
    gen = np.random.default_rng(np.random.SeedSequence([3, 7, 1]))
    assert UniformSelector(5, seed=3).select(7, np.arange(20)).clients.tolist() == sorted(
        gen.choice(np.arange(20), size=5, replace=False).tolist())
    assert FitInstruction(1).inclusion is None


def test_continual_setting_in_the_engine_respects_storage_and_evaluates_the_next_period() -> None:
    from trustnlp.federated.settings import ContinualSchedule, ContinualSpec, poisson_arrival_periods

    data = synthetic(120, seed=5)
    clients = population(data, num_clients=6)
    spec = ContinualSpec(periods=4, retention=2, storage=6, deletion="fifo")
    schedule = ContinualSchedule(poisson_arrival_periods([c.num_examples for c in clients], 4, seed=0), spec, seed=0)
    cfg = config(rounds=8, clients_per_round=3, setting="continual", periods=4, retention=2, storage=6,
                 selection="activity", aggregation="horvitz-thompson")
    sel = make_selector("activity", num=3, num_clients=6, seed=0)
    trained: list[int] = []
    from trustnlp.federated import engine

    original = engine.train_round

    def spy(path, worker, task, clients_now, instructions, params, local, *, seed, round):  # noqa: A002
        for ins in instructions:
            n = clients_now[ins.client_id].num_examples
            assert 0 < n <= 6, "a device trained on more than its storage or on nothing"
            trained.append(n)
        return original(path, worker, task, clients_now, instructions, params, local, seed=seed, round=round)

    engine.train_round = spy
    try:
        with one_thread():
            res = simulate(bag(), TASK, clients, config=cfg, selector=sel, schedule=schedule, central_test=synthetic(20, seed=8),
                           progress=False)
    finally:
        engine.train_round = original
    assert trained
    assert [r["period"] for r in res.rows] == [0, 0, 1, 1, 2, 2, 3, 3]
    for r in res.rows:
        act = schedule.activity(r["period"])
        assert r["held_examples"] == int(act.sum()) and act.max() <= 6
        assert set(r["selected"]) <= set(np.flatnonzero(act).tolist())  # only devices holding data
    ends = [r for r in res.rows if "future_accuracy" in r]
    assert [r["round"] for r in ends] == [2, 4, 6]  # the last period has no next period
    for r in ends:
        assert r["future_examples"] == sum(len(i) for i in schedule.future_indices(r["period"]))
    with pytest.raises(ConfigError, match="periods"):
        simulate(bag(), TASK, clients, config=config(rounds=3, setting="static"), schedule=schedule, progress=False)


def test_continual_study_on_the_built_in_corpus(tmp_path) -> None:
    import json

    from trustnlp.federated import run_federated

    cfg = FederatedConfig(data="assistant", corpus_size=400, corpus_users=20, tokenizer="word", partition="user",
                          clients_per_round=4, rounds=4, batch_size=16, device="cpu", seed=1, setting="continual",
                          periods=2, retention=1, storage=8, selection="availability", rounds_per_day=4, eval_every=0)
    with one_thread():
        result = run_federated(cfg, tmp_path, progress=False)
    m = result.metrics
    assert m["setting"] == "continual" and m["arrival"] == "timestamp (timestamp)"
    assert 0.0 <= m["future_accuracy_mean_over_periods"] <= 1.0
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert len(sel["times_selected"]) == m["num_clients"] and sum(sel["times_selected"]) == sum(
        r["num_clients"] for r in result.rows)
    assert sel["schedule"]["periods"] == 2
    assert all("online at local" in why for r in result.rows for why in r["selection_reasons"])
