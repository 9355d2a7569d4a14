"""The federated data setting (trustnlp.federated.settings): invariants of the continual schedule over random
configurations (hypothesis: storage cap, nothing from the future, retention, replay only of deleted examples,
conservation), fifo against a brute-force list-queue simulation, random deletion and the replay reservoir
against their distributions (fixed seeds, ALPHA stated), timestamp bins against exact integer arithmetic,
Poisson arrivals against Binomial(n, 1/P), determinism, the static setting and the spec's errors."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from trustnlp.errors import ConfigError, DataError
from trustnlp.federated.settings import (
    ContinualSchedule,
    ContinualSpec,
    arrival_periods_from_timestamps,
    client_arrival_periods,
    poisson_arrival_periods,
)

ALPHA = 1e-3  # family-wise significance level of every statistical test below (Bonferroni within a test)


def _brute_force_fifo(arrival: list[int], periods: int, retention: int | None, cap: int | None):
    """Store and deletions of one client under fifo, as a plain Python list of (arrival, index) pairs."""
    queue: list[tuple[int, int]] = []
    stores, deletions = [], []
    for t in range(periods):
        for j, a in enumerate(arrival):
            if a == t:
                queue.append((a, j))
        gone = [e for e in queue if retention is not None and e[0] <= t - retention]
        queue = [e for e in queue if e not in gone]
        while cap is not None and len(queue) > cap:
            oldest = min(queue)
            queue.remove(oldest)
            gone.append(oldest)
        stores.append(sorted(j for _, j in queue))
        deletions.append(sorted(j for _, j in gone))
    return stores, deletions


@st.composite
def _configs(draw):
    periods = draw(st.integers(1, 6))
    k = draw(st.integers(1, 4))
    arrivals = [np.array(draw(st.lists(st.integers(0, periods - 1), max_size=14)), dtype=np.int64) for _ in range(k)]
    storage = draw(st.one_of(st.none(), st.integers(1, 10)))
    replay = draw(st.integers(0, storage - 1 if storage is not None else 4))
    spec = ContinualSpec(periods=periods, retention=draw(st.one_of(st.none(), st.integers(1, periods + 1))),
                         storage=storage, deletion=draw(st.sampled_from(["fifo", "random"])), replay=replay)
    return arrivals, spec, draw(st.integers(0, 2**32))


@settings(max_examples=150, deadline=None)
@given(cfg=_configs())
def test_invariants_hold_for_random_configurations(cfg) -> None:
    arrivals, spec, seed = cfg
    sched = ContinualSchedule(arrivals, spec, seed=seed)
    W, S, R = spec.retention, spec.storage, spec.replay
    cap = None if S is None else S - R
    prev_store = [set() for _ in arrivals]
    prev_replay = [set() for _ in arrivals]
    ever_deleted = [set() for _ in arrivals]
    brute = [_brute_force_fifo(a.tolist(), spec.periods, W, cap) for a in arrivals]
    for t in range(spec.periods):
        held, rep, arr, dele = sched.held(t), sched.replay(t), sched.arrived(t), sched.deleted(t)
        assert np.array_equal(sched.activity(t), [len(h) for h in held])
        st_ = sched.stats(t)
        assert st_["held"] == sum(map(len, held)) and st_["deleted"] == sum(map(len, dele))
        for c, a in enumerate(arrivals):
            h, r, new, d = held[c], set(rep[c].tolist()), arr[c].tolist(), set(dele[c].tolist())
            assert np.all(np.diff(h) > 0)  # sorted, unique
            hs = set(h.tolist())
            store = hs - r
            assert new == sorted(np.flatnonzero(a == t).tolist())
            if S is not None:
                assert len(h) <= S
            assert all(a[j] <= t for j in hs)  # nothing held before it arrives (store or replay)
            assert all(W is None or a[j] > t - W for j in store)  # only replay holds expired examples
            assert r <= hs and len(r) <= R
            assert r <= ever_deleted[c] | d and r <= prev_replay[c] | d  # evicted from replay = gone for good
            assert len(r) == min(R, len(ever_deleted[c] | d))  # the reservoir fills up first
            pool = prev_store[c] | set(new)
            assert d <= pool and not d & ever_deleted[c]  # deleted from the store, once
            assert store == pool - d  # conservation
            kept = {j for j in pool if W is None or a[j] > t - W}
            assert len(d) == (len(pool) - len(kept)) + max(0, len(kept) - cap if cap is not None else 0)
            assert pool - kept <= d  # every expired example goes
            prev_store[c], prev_replay[c] = store, r
            ever_deleted[c] |= d
        if spec.deletion == "fifo":  # the store part of fifo is deterministic: compare with the brute force
            for c, (stores, deletions) in enumerate(brute):
                assert sched.store(t)[c].tolist() == stores[t]
                assert dele[c].tolist() == deletions[t]


@pytest.mark.parametrize("retention", [None, 1, 3])
def test_fifo_without_replay_matches_the_brute_force_exactly(retention) -> None:
    rng = np.random.default_rng(7)
    arrivals = [rng.integers(0, 8, size=n) for n in rng.integers(0, 40, size=25)]
    spec = ContinualSpec(periods=8, retention=retention, storage=9)
    sched = ContinualSchedule(arrivals, spec, seed=1)
    for c, a in enumerate(arrivals):
        stores, deletions = _brute_force_fifo(a.tolist(), 8, retention, 9)
        for t in range(8):
            assert sched.held(t)[c].tolist() == stores[t]
            assert sched.deleted(t)[c].tolist() == deletions[t]


def test_fifo_ties_by_local_index_and_arrivals_in_the_same_period_can_be_deleted() -> None:
    sched = ContinualSchedule([np.array([1, 0, 1, 0, 1])], ContinualSpec(periods=2, storage=2), seed=0)
    assert sched.held(0)[0].tolist() == [1, 3] and sched.deleted(0)[0].tolist() == []
    assert sched.held(1)[0].tolist() == [2, 4]  # the period-0 pair first, then the smaller index 0 of period 1
    assert sched.deleted(1)[0].tolist() == [0, 1, 3]


def test_random_deletion_is_uniform_over_the_held_examples() -> None:
    # 5 examples arrive in period 0, 5 in period 1, the device keeps 6: in period 1 it deletes 4 of the 10
    # uniformly, so each example is deleted with probability 0.4 and the deleted set is uniform over C(10, 4).
    k = 3000
    sched = ContinualSchedule([np.repeat([0, 1], 5)] * k, ContinualSpec(periods=2, storage=6, deletion="random"), seed=3)
    assert all(len(d) == 0 for d in sched.deleted(0))
    dele = sched.deleted(1)
    assert all(len(d) == 4 for d in dele)
    assert all(len(h) == 6 and not set(h) & set(d) for h, d in zip(sched.held(1), dele))
    counts = np.bincount(np.concatenate(dele), minlength=10)
    pv = min(stats.binomtest(int(x), k, 0.4).pvalue for x in counts) * 10
    assert pv > ALPHA, counts
    subsets = Counter(tuple(d.tolist()) for d in dele)
    observed = np.array([subsets.get(s, 0) for s in itertools.combinations(range(10), 4)])
    assert observed.sum() == k
    assert stats.chisquare(observed).pvalue > ALPHA


@pytest.mark.parametrize("case", ["retention stream", "one batch"])
def test_replay_buffer_is_a_uniform_sample_of_the_deleted(case) -> None:
    k, R = 3000, 3
    if case == "retention stream":  # one example a period, kept one period: examples 0..8 deleted one at a time
        arrivals, spec, pool = [np.arange(10)] * k, ContinualSpec(periods=10, retention=1, replay=R), 9
    else:  # 9 examples at once, store cap S - R = 1: examples 0..7 deleted together (fifo keeps index 8)
        arrivals, spec, pool = [np.zeros(9, dtype=np.int64)] * k, ContinualSpec(periods=1, storage=4, replay=R), 8
    sched = ContinualSchedule(arrivals, spec, seed=11)
    last = spec.periods - 1
    rep = sched.replay(last)
    assert all(len(r) == R and set(r.tolist()) <= set(range(pool)) for r in rep)
    assert all(len(h) == R + 1 for h in sched.held(last))
    counts = np.bincount(np.concatenate(rep), minlength=pool)
    assert min(stats.binomtest(int(x), k, R / pool).pvalue for x in counts) * pool > ALPHA / 2, counts
    subsets = Counter(tuple(r.tolist()) for r in rep)
    observed = np.array([subsets.get(s, 0) for s in itertools.combinations(range(pool), R)])
    assert observed.sum() == k
    assert stats.chisquare(observed).pvalue > ALPHA / 2


def test_timestamp_bins_at_the_edges() -> None:
    ts = np.array([0.0, 25.0, 24.999, 50.0, 74.9, 75.0, 100.0, 99.99])
    assert arrival_periods_from_timestamps(ts, 4).tolist() == [0, 1, 0, 2, 2, 3, 3, 3]
    assert arrival_periods_from_timestamps(ts - 1e3, 4).tolist() == [0, 1, 0, 2, 2, 3, 3, 3]
    assert arrival_periods_from_timestamps(ts, 1).tolist() == [0] * 8
    assert arrival_periods_from_timestamps(np.array([5, 5, 5]), 3).tolist() == [0, 0, 0]
    assert arrival_periods_from_timestamps(np.array([3, 9]), 5).tolist() == [0, 4]
    days = np.array(["2024-01-01", "2024-01-03", "2024-01-05", "2024-01-02T23:59"], dtype="datetime64[m]")
    assert arrival_periods_from_timestamps(days, 2).tolist() == [0, 1, 1, 0]


@settings(max_examples=60, deadline=None)
@given(ts=st.lists(st.integers(-(10**9), 10**9), min_size=1, max_size=50), periods=st.integers(1, 40))
def test_integer_timestamp_bins_match_exact_arithmetic(ts, periods) -> None:
    lo, hi = min(ts), max(ts)
    want = [0 if hi == lo else min(periods - 1, (t - lo) * periods // (hi - lo)) for t in ts]
    assert arrival_periods_from_timestamps(np.array(ts, dtype=np.int64), periods).tolist() == want


@pytest.mark.parametrize("bad", [np.array([]), np.array([1.0, np.nan]), np.array([0.0, np.inf]),
                                 np.array(["2024-01-01", "NaT"], dtype="datetime64[D]"), np.array(["a", "b"])])
def test_bad_timestamps_raise_data_error(bad) -> None:
    with pytest.raises(DataError, match="timestamps"):
        arrival_periods_from_timestamps(bad, 3)
    with pytest.raises(ConfigError, match="periods"):
        arrival_periods_from_timestamps(np.array([1.0, 2.0]), 0)


def test_poisson_arrivals_are_binomial_per_period_and_sorted() -> None:
    k, n, P = 2000, 12, 3
    per = poisson_arrival_periods([n] * k, P, seed=5)
    assert all(len(a) == n and a.dtype == np.int64 and np.all(np.diff(a) >= 0) for a in per)
    assert all(a.min() >= 0 and a.max() < P for a in per)
    counts = np.stack([np.bincount(a, minlength=P) for a in per])  # [k, P]
    pvalues = []
    for p in range(P):  # chi-square goodness of fit of the count distribution against Binomial(n, 1/P)
        expected = stats.binom.pmf(np.arange(n + 1), n, 1 / P) * k
        observed = np.bincount(counts[:, p], minlength=n + 1).astype(float)
        lo, hi = np.flatnonzero(expected >= 5)[[0, -1]]  # pool the tails where expected < 5
        e = np.concatenate([[expected[:lo + 1].sum()], expected[lo + 1:hi], [expected[hi:].sum()]])
        o = np.concatenate([[observed[:lo + 1].sum()], observed[lo + 1:hi], [observed[hi:].sum()]])
        pvalues.append(stats.chisquare(o, e * o.sum() / e.sum()).pvalue)
    assert min(pvalues) * P > ALPHA, pvalues
    pooled = counts.sum(axis=0)
    assert stats.chisquare(pooled).pvalue > ALPHA


def test_poisson_arrivals_are_seeded_per_client() -> None:
    a = poisson_arrival_periods([5, 40, 0], 6, seed=9)
    b = poisson_arrival_periods([7, 40, 0], 6, seed=9)
    assert np.array_equal(a[1], b[1]) and len(a[2]) == 0
    assert not np.array_equal(a[1], poisson_arrival_periods([5, 40, 0], 6, seed=10)[1])
    with pytest.raises(ConfigError, match="sizes"):
        poisson_arrival_periods([3, -1], 2, seed=0)


def test_same_seed_same_schedule_and_clients_independent() -> None:
    rng = np.random.default_rng(0)
    arrivals = [rng.integers(0, 6, size=30) for _ in range(20)]
    spec = ContinualSpec(periods=6, retention=4, storage=8, deletion="random", replay=3)
    a, b = ContinualSchedule(arrivals, spec, seed=4), ContinualSchedule(arrivals, spec, seed=4)
    other = ContinualSchedule(arrivals, spec, seed=5)
    swapped = ContinualSchedule([arrivals[0][::-1].copy()] + arrivals[1:], spec, seed=4)
    differs = False
    for t in range(6):
        for get in ("held", "deleted", "replay", "arrived"):
            x, y, z, w = (getattr(s, get)(t) for s in (a, b, other, swapped))
            assert all(np.array_equal(u, v) for u, v in zip(x, y))
            assert all(np.array_equal(u, v) for u, v in zip(x[1:], w[1:]))  # client 0's data does not move the rest
            differs |= any(not np.array_equal(u, v) for u, v in zip(x, z))
    assert differs
    assert a.to_dict() == b.to_dict()


def test_static_setting() -> None:
    sched = ContinualSchedule.static([3, 0, 5])
    assert sched.periods == 1 and sched.num_clients == 3
    assert [h.tolist() for h in sched.held(0)] == [[0, 1, 2], [], [0, 1, 2, 3, 4]]
    assert all(len(d) == 0 for d in sched.deleted(0))
    assert sched.activity(0).tolist() == [3, 0, 5] and sched.activity(0).dtype == np.int64
    assert all(len(f) == 0 for f in sched.future_indices(0))
    assert sched.stats(0)["clients_with_data"] == 2


def test_future_indices_summary_and_views() -> None:
    arrivals = [np.array([0, 1, 1, 2]), np.array([2, 2, 0])]
    sched = ContinualSchedule(arrivals, ContinualSpec(periods=3, retention=2), seed=0)
    for t in range(2):
        assert [f.tolist() for f in sched.future_indices(t)] == [a.tolist() for a in sched.arrived(t + 1)]
    assert [f.tolist() for f in sched.future_indices(2)] == [[], []]
    assert [f.tolist() for f in sched.future_indices(5)] == [[], []]
    assert [h.tolist() for h in sched.held(2)] == [[1, 2, 3], [0, 1]]  # client 1's example 2 expires at 2
    with pytest.raises(ValueError):
        sched.held(0)[0][0] = 9  # read-only views of the schedule
    summary = json.loads(json.dumps(sched.to_dict()))
    assert summary["periods"] == 3 and summary["spec"]["retention"] == 2
    assert [r["held"] for r in summary["per_period"]] == [2, 4, 5]
    assert [r["arrived"] for r in summary["per_period"]] == [2, 2, 3]
    assert [r["deleted"] for r in summary["per_period"]] == [0, 0, 2]
    for bad in (-1, 3, 1.0, True):
        with pytest.raises(ConfigError, match="period"):
            sched.held(bad)


def test_from_spec_bins_timestamps_globally_and_poisson_matches() -> None:
    spec = ContinualSpec(periods=2)
    arr = client_arrival_periods(spec, [2, 2], seed=0, timestamps=[np.array([0.0, 10.0]), np.array([5.0, 20.0])])
    assert [a.tolist() for a in arr] == [[0, 1], [0, 1]]
    sched = ContinualSchedule.from_spec(spec, [2, 2], seed=0, timestamps=[np.array([0.0, 10.0]), np.array([5.0, 20.0])])
    assert [h.tolist() for h in sched.held(0)] == [[0], [0]]
    with pytest.raises(ConfigError, match="timestamps"):
        ContinualSchedule.from_spec(spec, [2, 2], seed=0)
    with pytest.raises(DataError, match=r"timestamps\[1\]"):
        client_arrival_periods(spec, [2, 2], seed=0, timestamps=[np.zeros(2), np.zeros(3)])
    pois = ContinualSpec(periods=4, arrival="poisson")
    got = ContinualSchedule.from_spec(pois, [6, 9], seed=2).arrivals
    assert all(np.array_equal(x, y) for x, y in zip(got, poisson_arrival_periods([6, 9], 4, seed=2)))


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"periods": 0}, "periods"), ({"periods": True}, "periods"), ({"periods": 2.0}, "periods"),
    ({"retention": 0}, "retention"), ({"storage": 0}, "storage"), ({"storage": 3, "replay": 3}, "replay"),
    ({"storage": 3, "replay": 5}, "replay"), ({"replay": -1}, "replay"), ({"deletion": "lifo"}, "deletion"),
    ({"arrival": "uniform"}, "arrival"),
])
def test_bad_specs_raise_config_error_naming_the_field(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=f"Expected `{field}`"):
        ContinualSpec(**kwargs)


@pytest.mark.parametrize("bad", [[np.array([0, 3])], [np.array([-1])], [np.array([0.5])], [np.zeros((2, 2))]])
def test_bad_arrivals_raise_data_error(bad) -> None:
    with pytest.raises(DataError, match="arrivals"):
        ContinualSchedule(bad, ContinualSpec(periods=3), seed=0)
