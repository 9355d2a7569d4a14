"""The data setting of a federated run: static, or continual with arrival, retention, storage and replay.

In the *static* setting every device holds all of its examples from round 0 on. In the *continual*
setting time runs in ``P`` periods; each example of client ``c`` (local index ``j``) arrives in a
period ``a_cj`` in ``[0, P)``, and the device keeps it under a data-retention policy:

- **retention** ``W``: an example arrived in period ``a`` is kept in periods ``a .. a+W-1``;
- **storage** ``S``: the device holds at most ``S`` examples (store + replay buffer); over the cap it
  deletes from its store, the oldest first (``fifo``: smallest arrival period, ties by local index)
  or uniformly at random (``random``);
- **replay** ``R < S``: a replay buffer that keeps a uniform random sample of size ``R`` of every
  example the device has deleted so far, by reservoir sampling (Vitter 1985, "Random Sampling with a
  Reservoir", Algorithm R); an example evicted from the buffer is gone for good. With a replay
  buffer the store's cap is ``S - R``, so that store and buffer together never exceed ``S``.

At period ``t``, per client, in this order: (1) the examples arriving in ``t`` join the store;
(2) retention deletes store examples with arrival ``<= t - W``; (3) storage deletes store examples
by the policy while the store holds more than ``S - R``; (4) every example deleted at ``t`` is offered
to the replay buffer (retention deletions first, then storage deletions, each in store order:
arrival period, then local index). The device trains at ``t`` on its *held* set, store ``∪`` replay.

Arrival periods come from the examples' timestamps (:func:`arrival_periods_from_timestamps`:
equal-width bins over the global time range) or from a homogeneous Poisson arrival process
(:func:`poisson_arrival_periods`: given a client's count ``n``, its arrival times are ``n`` sorted
iid ``Uniform(0, P)``, the order-statistics property of the Poisson process, e.g. Ross, *Stochastic
Processes*, Thm. 2.3.1).

:class:`ContinualSchedule` computes everything up front from ``(arrivals, spec, seed)``; it is pure
numpy index bookkeeping, deterministic in its seed: random deletions are seeded by
``(seed, client, period)``, the replay buffer's draws likewise (independent streams), so a client's
schedule does not depend on the other clients. The static setting is
:meth:`ContinualSchedule.static` (one period, everything held, nothing deleted), so the engine treats
both settings alike.

Example:
    >>> spec = ContinualSpec(periods=3, retention=2)
    >>> s = ContinualSchedule([np.array([0, 0, 1, 2])], spec, seed=0)
    >>> [h[0].tolist() for h in (s.held(0), s.held(1), s.held(2))]
    [[0, 1], [0, 1, 2], [2, 3]]
    >>> s.deleted(2)[0].tolist(), s.future_indices(1)[0].tolist()
    ([0, 1], [3])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from trustnlp.errors import ConfigError, DataError, expected

__all__ = [
    "ContinualSpec",
    "ContinualSchedule",
    "arrival_periods_from_timestamps",
    "poisson_arrival_periods",
    "client_arrival_periods",
    "DELETION_POLICIES",
    "ARRIVAL_KINDS",
]

DELETION_POLICIES = ("fifo", "random")
ARRIVAL_KINDS = ("timestamp", "poisson")
_POISSON, _DELETE, _REPLAY = 11, 12, 13  # independent stream tags


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (2**63), *map(int, keys)]))


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


@dataclass(frozen=True)
class ContinualSpec:
    """How data arrives and is kept in the continual setting.

    Attributes:
        periods: ``P >= 1`` time periods.
        retention: ``W >= 1``: an example arrived in period ``a`` is held in ``a .. a+W-1``; ``None`` = forever.
        storage: ``S >= 1``: a device holds at most ``S`` examples (store + replay); ``None`` = unlimited.
        deletion: which store examples go when over the cap: ``fifo`` (oldest first, ties by local index)
            or ``random`` (uniformly at random, seeded).
        replay: ``R >= 0``: size of the replay buffer (a reservoir sample of the deleted examples);
            ``R < S`` when ``S`` is given, the store's cap is then ``S - R``.
        arrival: where arrival periods come from: ``timestamp`` (the examples' timestamps) or ``poisson``.
    """

    periods: int = 10
    retention: int | None = None
    storage: int | None = None
    deletion: Literal["fifo", "random"] = "fifo"
    replay: int = 0
    arrival: Literal["timestamp", "poisson"] = "timestamp"

    def __post_init__(self) -> None:
        if not _is_int(self.periods) or self.periods < 1:
            raise ConfigError(expected("periods", "an integer >= 1", self.periods))
        if self.retention is not None and (not _is_int(self.retention) or self.retention < 1):
            raise ConfigError(expected("retention", "an integer >= 1 (periods an example is kept) or None", self.retention))
        if self.storage is not None and (not _is_int(self.storage) or self.storage < 1):
            raise ConfigError(expected("storage", "an integer >= 1 (examples a device holds) or None", self.storage))
        if self.deletion not in DELETION_POLICIES:
            raise ConfigError(expected("deletion", f"one of {list(DELETION_POLICIES)}", self.deletion))
        if not _is_int(self.replay) or self.replay < 0:
            raise ConfigError(expected("replay", "an integer >= 0", self.replay))
        if self.storage is not None and self.replay >= self.storage:
            raise ConfigError(expected("replay", f"< storage ({self.storage}), the replay buffer is part of the storage",
                                       self.replay))
        if self.arrival not in ARRIVAL_KINDS:
            raise ConfigError(expected("arrival", f"one of {list(ARRIVAL_KINDS)}", self.arrival))

    @property
    def store_cap(self) -> int | None:
        """The most examples the store (outside the replay buffer) holds: ``S - R``, or ``None``."""
        return None if self.storage is None else self.storage - self.replay


def _check_periods(periods: Any) -> int:
    if not _is_int(periods) or periods < 1:
        raise ConfigError(expected("periods", "an integer >= 1", periods))
    return int(periods)


def arrival_periods_from_timestamps(timestamps: np.ndarray, periods: int) -> np.ndarray:
    """Period of each example: equal-width bins over ``[min, max]`` of the given timestamps.

    Period ``p`` holds the timestamps with ``p <= P (t - min) / (max - min) < p + 1``, i.e. the bin
    ``[min + p w, min + (p+1) w)`` with ``w = (max - min) / P``; the last bin is closed, so the max falls
    in period ``P - 1``. Integer and ``datetime64`` timestamps are differenced exactly (in int64) before
    the division. All timestamps equal: everything in period 0. Pass the timestamps of every client
    together (global bins; :func:`client_arrival_periods` does).

    Args:
        timestamps: 1-D numbers (or ``datetime64``).
        periods: ``P >= 1``.

    Returns:
        int64 periods in ``[0, P)``, one per timestamp.

    Raises:
        DataError: empty input or non-finite values (NaN, inf, NaT).
    """
    p = _check_periods(periods)
    ts = np.asarray(timestamps)
    if ts.ndim != 1 or ts.size == 0:
        raise DataError(expected("timestamps", "a non-empty 1-D array", f"shape {ts.shape}"))
    if ts.dtype.kind == "M":
        bad = np.isnat(ts)
        if bad.any():
            raise DataError(expected("timestamps", "finite times", ts[bad][0]))
        ts = ts.astype("datetime64[ns]").astype(np.int64)
    if ts.dtype.kind in "biu":
        i = ts.astype(np.int64)
        d, span = (i - i.min()).astype(np.float64), float(i.max() - i.min())
    elif ts.dtype.kind == "f":
        t = ts.astype(np.float64)
        bad = ~np.isfinite(t)
        if bad.any():
            raise DataError(expected("timestamps", "finite numbers", float(t[bad][0])))
        d, span = t - t.min(), float(t.max() - t.min())
    else:
        raise DataError(expected("timestamps", "numbers or datetime64", f"dtype {ts.dtype}"))
    if span == 0:
        return np.zeros(len(d), dtype=np.int64)
    return np.clip(np.floor(d * p / span), 0, p - 1).astype(np.int64)


def poisson_arrival_periods(sizes: Sequence[int], periods: int, *, seed: int) -> list[np.ndarray]:
    """Per client, the arrival period of each of its examples under a homogeneous Poisson process on ``[0, P)``.

    Given client ``c``'s count ``n_c``, its arrival times are ``n_c`` sorted iid ``Uniform(0, P)`` draws
    (order statistics); local example ``j`` gets the ``j``-th smallest, its period is ``floor(time)``.
    Client ``c`` draws from ``SeedSequence([seed, c, tag])``, independently of the other clients.

    Args:
        sizes: examples per client.
        periods: ``P >= 1``.
        seed: the seed.

    Returns:
        One non-decreasing int64 array per client, in local order.
    """
    p = _check_periods(periods)
    out = []
    for c, n in enumerate(sizes):
        if not _is_int(n) or n < 0:
            raise ConfigError(expected(f"sizes[{c}]", "an integer >= 0", n))
        times = np.sort(_rng(seed, c, _POISSON).uniform(0.0, float(p), size=int(n)))
        out.append(np.minimum(np.floor(times).astype(np.int64), p - 1))
    return out


def client_arrival_periods(spec: ContinualSpec, sizes: Sequence[int], *, seed: int,
                           timestamps: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """The arrival periods of every client's examples as ``spec.arrival`` says.

    Args:
        spec: the continual setting.
        sizes: examples per client.
        seed: the seed (``poisson``).
        timestamps: per client, the timestamps of its examples in local order (``timestamp``); binned
            globally, over every client's timestamps together.

    Returns:
        One int64 array per client.
    """
    if spec.arrival == "poisson":
        return poisson_arrival_periods(sizes, spec.periods, seed=seed)
    if timestamps is None:
        raise ConfigError("The continual setting with arrival='timestamp' needs the examples' timestamps; got none "
                          "(use arrival='poisson' for data without timestamps).")
    if len(timestamps) != len(sizes):
        raise DataError(expected("timestamps", f"one array per client ({len(sizes)})", len(timestamps)))
    for c, (ts, n) in enumerate(zip(timestamps, sizes)):
        if len(ts) != n:
            raise DataError(expected(f"timestamps[{c}]", f"one timestamp per example ({n})", len(ts)))
    flat = np.concatenate([np.asarray(ts) for ts in timestamps]) if len(timestamps) else np.zeros(0)
    if flat.size == 0:
        return [np.zeros(0, dtype=np.int64) for _ in sizes]
    periods = arrival_periods_from_timestamps(flat, spec.periods)
    return np.split(periods, np.cumsum([int(n) for n in sizes])[:-1])


class _Ragged:
    """Per-client int64 arrays of one period, stored flat (values + offsets), handed out as read-only views."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(a) for a in parts])
        self.values = np.concatenate(parts).astype(np.int64) if len(parts) else np.zeros(0, dtype=np.int64)
        self.values.setflags(write=False)

    def lists(self) -> list[np.ndarray]:
        o = self.offsets
        return [self.values[o[c]:o[c + 1]] for c in range(len(o) - 1)]

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


class ContinualSchedule:
    """Which examples each device holds, receives and deletes in every period (see the module docs).

    Args:
        arrivals: ``arrivals[c][j]`` = the period in ``[0, P)`` when client ``c``'s local example ``j`` arrives.
        spec: the continual setting.
        seed: seeds random deletion and the replay buffer.
    """

    def __init__(self, arrivals: Sequence[np.ndarray], spec: ContinualSpec, *, seed: int) -> None:
        if not isinstance(spec, ContinualSpec):
            raise ConfigError(expected("spec", "a ContinualSpec", type(spec).__name__))
        self.spec, self.seed = spec, int(seed)
        P = spec.periods
        arr = []
        for c, a in enumerate(arrivals):
            a = np.asarray(a)
            if a.ndim != 1:
                raise DataError(expected(f"arrivals[{c}]", "a 1-D array of periods", f"shape {a.shape}"))
            if a.size and (a.dtype.kind not in "biuf" or not np.all(np.isfinite(a)) or np.any(a != np.floor(a))):
                raise DataError(expected(f"arrivals[{c}]", "integer periods", a[:5].tolist()))
            a = a.astype(np.int64)
            if a.size and (a.min() < 0 or a.max() >= P):
                raise DataError(expected(f"arrivals[{c}]", f"periods in [0, {P})", int(a[(a < 0) | (a >= P)][0])))
            arr.append(a)
        self._arrivals = arr
        self._held: list[_Ragged] = []
        self._arrived: list[_Ragged] = []
        self._deleted: list[_Ragged] = []
        self._replay: list[_Ragged] = []
        self._simulate()

    @classmethod
    def static(cls, sizes: Sequence[int]) -> ContinualSchedule:
        """The static setting: one period, every client holds all its ``sizes[c]`` examples, nothing is deleted."""
        for c, n in enumerate(sizes):
            if not _is_int(n) or n < 0:
                raise ConfigError(expected(f"sizes[{c}]", "an integer >= 0", n))
        return cls([np.zeros(int(n), dtype=np.int64) for n in sizes], ContinualSpec(periods=1), seed=0)

    @classmethod
    def from_spec(cls, spec: ContinualSpec, sizes: Sequence[int], *, seed: int,
                  timestamps: Sequence[np.ndarray] | None = None) -> ContinualSchedule:
        """The schedule with arrivals from :func:`client_arrival_periods` (``timestamp`` or ``poisson``)."""
        return cls(client_arrival_periods(spec, sizes, seed=seed, timestamps=timestamps), spec, seed=seed)

    # -- the simulation ------------------------------------------------------------------------------

    def _simulate(self) -> None:
        spec, K, P = self.spec, len(self._arrivals), self.spec.periods
        W, cap, R = spec.retention, spec.store_cap, spec.replay
        empty = np.zeros(0, dtype=np.int64)
        # arrivals grouped by period: local indices sorted by (arrival, index)
        by_period = []
        for a in self._arrivals:
            order = np.argsort(a, kind="stable")
            bounds = np.searchsorted(a[order], np.arange(P + 1), side="left")
            by_period.append([order[bounds[t]:bounds[t + 1]] for t in range(P)])
        store = [empty] * K  # kept in (arrival, index) order
        replay = [empty] * K
        offered = [0] * K  # examples offered to the replay buffer so far (reservoir stream length)
        for t in range(P):
            held_t, arrived_t, deleted_t, replay_t = [], [], [], []
            for c in range(K):
                a = self._arrivals[c]
                new = by_period[c][t]
                s = np.concatenate([store[c], new]) if len(new) else store[c]
                gone = []
                if W is not None and len(s):
                    old = int(np.searchsorted(a[s], t - W, side="right"))  # arrival <= t - W, a prefix
                    if old:
                        gone.append(s[:old])
                        s = s[old:]
                if cap is not None and len(s) > cap:
                    excess = len(s) - cap
                    if spec.deletion == "fifo":
                        gone.append(s[:excess])
                        s = s[excess:]
                    else:
                        pick = _rng(self.seed, c, t, _DELETE).choice(len(s), size=excess, replace=False)
                        drop = np.zeros(len(s), dtype=bool)
                        drop[pick] = True
                        gone.append(s[drop])
                        s = s[~drop]
                dead = np.concatenate(gone) if gone else empty
                if R and len(dead):
                    replay[c], offered[c] = _reservoir(replay[c], offered[c], dead, R, _rng(self.seed, c, t, _REPLAY))
                store[c] = s
                held_t.append(np.sort(np.concatenate([s, replay[c]])))
                arrived_t.append(new)
                deleted_t.append(np.sort(dead))
                replay_t.append(np.sort(replay[c]))
            self._held.append(_Ragged(held_t))
            self._arrived.append(_Ragged(arrived_t))
            self._deleted.append(_Ragged(deleted_t))
            self._replay.append(_Ragged(replay_t))

    # -- queries -------------------------------------------------------------------------------------

    @property
    def num_clients(self) -> int:
        return len(self._arrivals)

    @property
    def periods(self) -> int:
        return self.spec.periods

    @property
    def arrivals(self) -> list[np.ndarray]:
        """``arrivals[c][j]``: the arrival period of client ``c``'s local example ``j``."""
        return [a.copy() for a in self._arrivals]

    def _period(self, period: int) -> int:
        if not _is_int(period) or not 0 <= period < self.periods:
            raise ConfigError(expected("period", f"an integer in [0, {self.periods})", period))
        return int(period)

    def held(self, period: int) -> list[np.ndarray]:
        """Per client, the sorted local indices it can train on at ``period`` (store ``∪`` replay buffer)."""
        return self._held[self._period(period)].lists()

    def arrived(self, period: int) -> list[np.ndarray]:
        """Per client, the sorted local indices arriving in ``period``."""
        return self._arrived[self._period(period)].lists()

    def deleted(self, period: int) -> list[np.ndarray]:
        """Per client, the sorted local indices deleted from the store at ``period`` (by retention or storage;
        some may live on in the replay buffer)."""
        return self._deleted[self._period(period)].lists()

    def replay(self, period: int) -> list[np.ndarray]:
        """Per client, the sorted local indices in the replay buffer at the end of ``period``."""
        return self._replay[self._period(period)].lists()

    def store(self, period: int) -> list[np.ndarray]:
        """Per client, the sorted local indices in the store (held, outside the replay buffer) at ``period``."""
        return [np.setdiff1d(h, r, assume_unique=True) for h, r in zip(self.held(period), self.replay(period))]

    def future_indices(self, period: int) -> list[np.ndarray]:
        """``arrived(period + 1)``: the next period's data, to evaluate on; empty arrays past the last period."""
        if not _is_int(period) or period < 0:
            raise ConfigError(expected("period", "an integer >= 0", period))
        if period + 1 >= self.periods:
            return [np.zeros(0, dtype=np.int64) for _ in range(self.num_clients)]
        return self.arrived(period + 1)

    def activity(self, period: int) -> np.ndarray:
        """int64 ``[num_clients]``: how many examples each client holds at ``period``."""
        return self._held[self._period(period)].sizes().astype(np.int64)

    def stats(self, period: int) -> dict[str, float | int]:
        """Totals at ``period``: ``held``, ``max_held``, ``mean_held``, ``clients_with_data``, ``arrived``,
        ``deleted``, ``replay`` (examples in replay buffers)."""
        t = self._period(period)
        held = self._held[t].sizes()
        return {
            "period": t,
            "held": int(held.sum()),
            "max_held": int(held.max()) if held.size else 0,
            "mean_held": float(held.mean()) if held.size else 0.0,
            "clients_with_data": int((held > 0).sum()),
            "arrived": int(self._arrived[t].sizes().sum()),
            "deleted": int(self._deleted[t].sizes().sum()),
            "replay": int(self._replay[t].sizes().sum()),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: the spec, the seed and :meth:`stats` of every period."""
        return {
            "spec": asdict(self.spec),
            "seed": self.seed,
            "num_clients": self.num_clients,
            "periods": self.periods,
            "per_period": [self.stats(t) for t in range(self.periods)],
        }


def _reservoir(buffer: np.ndarray, seen: int, stream: np.ndarray, size: int,
               rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Algorithm R (Vitter 1985): offer ``stream`` in order to a reservoir of ``size`` that has seen ``seen`` items.

    The ``k``-th item offered (1-based) fills a free slot while ``k <= size``; later, it replaces the item in
    slot ``j ~ Uniform{0..k-1}`` if ``j < size`` and is dropped otherwise. The buffer is then a uniform random
    ``size``-subset of everything offered.
    """
    buf = buffer.tolist()
    for x in stream.tolist():
        seen += 1
        if len(buf) < size:
            buf.append(x)
        else:
            j = int(rng.integers(seen))
            if j < size:
                buf[j] = x
    return np.asarray(buf, dtype=np.int64), seen
