"""Client (device) selection: small seeded selectors behind one interface, and availability.

A selector picks a round's clients among the available ones. It can use what the server knows
(:class:`SelectionContext`: every device's *activity* ``n_k`` = the training examples it holds now,
the round's hour of day, past feedback) and can *query* candidates for a statistic (their local
loss under the current global model) before the final choice. It returns a :class:`Selection`:
who was picked, each one's inclusion probability ``pi_k`` where it is known exactly, and why.

Selectors (:func:`make_selector` parses the ``--selection`` spec):

- ``uniform`` (:class:`UniformSelector`): ``m`` clients uniformly without replacement,
  ``pi_k = m / |A|`` over the available set ``A``.
- ``activity[:BETA]`` (:class:`ActivitySelector`): **Poisson sampling** with
  ``pi_k = min(1, c n_k^BETA)``, ``c`` calibrated (water-filling over the capped ones) so that
  ``sum_k pi_k = m``; each device is included independently with probability ``pi_k``, so the
  round size is random with mean ``m`` and ``pi_k`` is exact. ``BETA = 0`` is uniform Poisson
  sampling, ``BETA = 1`` (the default) probability proportional to activity.
- ``power-of-choice[:D]`` (:class:`PowerOfChoiceSelector`, Cho, Wang and Joshi 2022, "Towards
  Understanding Biased Client Selection in Federated Learning"): ``d`` candidates sampled without
  replacement with probability proportional to data size, queried for their local loss, the ``m``
  highest kept.
- ``availability[:HOURS]`` (:class:`AvailabilitySelector`): each device is online ``HOURS`` hours
  a day (default 8), in a night-time window of its local time (charging, idle, on Wi-Fi: the
  usual cross-device eligibility), shifted by its time zone; a round is an hour of the day
  (``rounds_per_day``); only online devices can be picked, uniformly among them.
- ``oort`` (:class:`OortSelector`, Lai et al. 2021, "Oort: Efficient Federated Learning via Guided
  Participant Selection", Algorithm 1): statistical utility ``|B_i| sqrt(mean loss^2)`` from the
  losses participants report, an uncertainty bonus ``sqrt(0.1 log R / L_i)`` for clients not seen
  for a while, a system penalty ``(T / t_i)^alpha`` for devices slower than the preferred round
  duration ``T``; exploitation samples ``(1 - eps) m`` clients with probability proportional to
  utility among those above ``0.95`` of the cut-off utility, exploration picks ``eps m`` unexplored
  clients (faster ones first), ``eps`` decays from 0.9 by 0.98 a round to 0.2.

Aggregation conventions (``--aggregation``): ``sample`` weights the selected updates by ``n_k``
and normalises (FedAvg); ``horvitz-thompson`` weights update ``k`` by ``n_k / (N pi_k)`` with
``N = sum_{k in A} n_k``, without normalising, so that the expected aggregate equals full
participation of the available clients (needs known ``pi_k``).

Every selector is a function of ``(seed, round, available, context)`` and its own state
(``state_dict`` / ``load_state_dict``, JSON-able, checkpointed), so a resumed run selects exactly
what an uninterrupted one would.

Availability (independent of the selector): client ``c`` is online in round ``t`` with probability
``a_c`` independently of everything else (:func:`available_clients`, seeded by ``(seed, round)``).

Example:
    >>> sel = UniformSelector(3, seed=0)
    >>> sel.select(1, np.arange(10)).clients.tolist() == sel.select(1, np.arange(10)).clients.tolist()
    True
    >>> inclusion_probabilities(np.array([1, 1, 2, 100]), beta=1.0, num=2).round(3).tolist()
    [0.25, 0.25, 0.5, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from trustnlp.errors import ConfigError, expected

__all__ = [
    "Selection",
    "SelectionContext",
    "Selector",
    "UniformSelector",
    "ActivitySelector",
    "PowerOfChoiceSelector",
    "AvailabilitySelector",
    "OortSelector",
    "SELECTION_KINDS",
    "make_selector",
    "parse_selection_spec",
    "inclusion_probabilities",
    "diurnal_online",
    "available_clients",
    "round_rng",
]

_SELECT, _AVAILABLE, _CANDIDATES, _SPEED, _WINDOW = 1, 2, 4, 5, 6  # independent stream tags
SELECTION_KINDS = ("uniform", "activity", "power-of-choice", "availability", "oort")

#: Loss query: client ids -> (mean per-example loss, root-mean-square per-example loss) of the
#: current global model on each client's training data.
LossQuery = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def round_rng(seed: int, round: int, stream: int, *extra: int) -> np.random.Generator:  # noqa: A002
    """A generator for ``(seed, round, stream, *extra)`` (independent streams via ``SeedSequence``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (2**63), int(round), int(stream), *map(int, extra)]))


@dataclass(frozen=True)
class SelectionContext:
    """What the server knows when it selects.

    Attributes:
        activity: ``n_k`` of every client (training examples it holds now; 0 = nothing to train on).
        loss: a query for candidates' local losses (see :data:`LossQuery`), or ``None``.
        steps: local steps each client would run this round (for system-speed models), or ``None``.
    """

    activity: np.ndarray
    loss: LossQuery | None = None
    steps: np.ndarray | None = None


@dataclass(frozen=True)
class Selection:
    """A round's choice.

    Attributes:
        clients: the selected ids (sorted).
        inclusion: each selected client's inclusion probability ``pi_k`` (``None`` when not known exactly).
        reasons: one short reason per selected client.
        info: selector-specific facts (candidates and their losses, ``eps``, ...).
    """

    clients: np.ndarray
    inclusion: np.ndarray | None = None
    reasons: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Selector(Protocol):
    """``select(round, available, context) -> Selection`` (deterministic in its seed, the round, the inputs
    and its own state)."""

    name: str

    def select(self, round: int, available: np.ndarray, context: SelectionContext | None = None) -> Selection: ...  # noqa: A002


def _check_num(num: Any) -> int:
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ConfigError(expected("clients_per_round", "an integer >= 1", num))
    return int(num)


def _activity(context: SelectionContext | None, available: np.ndarray, who: str) -> np.ndarray:
    if context is None:
        raise ConfigError(f"The {who} selector needs a SelectionContext with every client's activity; got none.")
    act = np.asarray(context.activity, dtype=np.float64)
    if available.size and available.max() >= act.size:
        raise ConfigError(expected("activity", f"a value for every client (>= {available.max() + 1})", act.size))
    return act


class _Stateless:
    """Selectors without state across rounds."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None

    def feedback(self, round: int, reports: Sequence[Mapping[str, float]]) -> None:  # noqa: A002
        return None


class UniformSelector(_Stateless):
    """``num`` clients uniformly at random without replacement from the available ones (all of them when
    fewer are available); ``pi_k = min(1, num / |A|)``."""

    name = "uniform"

    def __init__(self, num: int, *, seed: int) -> None:
        self.num, self.seed = _check_num(num), int(seed)

    def select(self, round: int, available: np.ndarray, context: SelectionContext | None = None) -> Selection:  # noqa: A002
        avail = np.asarray(available, dtype=np.int64)
        pi = min(1.0, self.num / len(avail)) if len(avail) else 1.0
        chosen = avail if len(avail) <= self.num else round_rng(self.seed, round, _SELECT).choice(avail, size=self.num, replace=False)
        chosen = np.sort(chosen)
        return Selection(chosen, np.full(len(chosen), pi), tuple(f"uniform, pi={pi:.4g}" for _ in chosen))


def inclusion_probabilities(activity: np.ndarray, *, beta: float, num: int) -> np.ndarray:
    """``pi_k = min(1, c n_k^beta)`` with ``sum_k pi_k = min(num, #{n_k > 0})`` (0 for ``n_k = 0``).

    ``c`` by water-filling: devices whose ``c n_k^beta`` reaches 1 are capped at 1 and ``c`` is
    recomputed over the rest until no new device reaches the cap.
    """
    n = np.asarray(activity, dtype=np.float64)
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ConfigError(expected("activity", "finite counts >= 0", n[(n < 0) | ~np.isfinite(n)][0]))
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(expected("beta", "a number in [0, 1]", beta))
    w = np.where(n > 0, np.power(np.maximum(n, 1e-300), beta), 0.0)
    positive = w > 0
    target = float(min(num, int(positive.sum())))
    pi = np.zeros_like(w)
    if target == 0:
        return pi
    capped = np.zeros_like(positive)
    while True:
        free = positive & ~capped
        c = (target - capped.sum()) / w[free].sum() if free.any() else 0.0
        new = free & (c * w >= 1.0)
        if not new.any():
            break
        capped |= new
    pi[capped] = 1.0
    free = positive & ~capped
    pi[free] = np.minimum(1.0, c * w[free])
    return pi


class ActivitySelector(_Stateless):
    """Poisson sampling with ``pi_k = min(1, c n_k^beta)``, expected round size ``num`` (see the module docs)."""

    name = "activity"

    def __init__(self, num: int, *, beta: float = 1.0, seed: int) -> None:
        self.num, self.seed = _check_num(num), int(seed)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
            raise ConfigError(expected("activity beta", "a number in [0, 1]", beta))
        self.beta = float(beta)

    def probabilities(self, available: np.ndarray, context: SelectionContext | None) -> np.ndarray:
        """``pi_k`` of each available client (in the order of ``available``)."""
        avail = np.asarray(available, dtype=np.int64)
        act = _activity(context, avail, "activity")
        return inclusion_probabilities(act[avail], beta=self.beta, num=self.num)

    def select(self, round: int, available: np.ndarray, context: SelectionContext | None = None) -> Selection:  # noqa: A002
        avail = np.asarray(available, dtype=np.int64)
        pi = self.probabilities(avail, context)
        u = round_rng(self.seed, round, _SELECT).random(len(avail))
        keep = u < pi
        act = np.asarray(context.activity)[avail[keep]] if context is not None else np.zeros(0)
        order = np.argsort(avail[keep], kind="stable")
        chosen, p = avail[keep][order], pi[keep][order]
        reasons = tuple(f"Poisson draw, n={int(a)}, pi={q:.4g}" for a, q in zip(act[order], p))
        return Selection(chosen, p, reasons, {"expected_size": float(pi.sum())})


class PowerOfChoiceSelector(_Stateless):
    """Power-of-choice: ``d`` candidates (without replacement, probability proportional to ``n_k``), the
    ``num`` with the highest local loss kept (ties by id)."""

    name = "power-of-choice"

    def __init__(self, num: int, *, candidates: int | None = None, seed: int) -> None:
        self.num, self.seed = _check_num(num), int(seed)
        d = 2 * self.num if candidates is None else candidates
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < self.num:
            raise ConfigError(expected("power-of-choice candidates d", f"an integer >= clients_per_round ({self.num})", d))
        self.candidates = int(d)

    def select(self, round: int, available: np.ndarray, context: SelectionContext | None = None) -> Selection:  # noqa: A002
        avail = np.asarray(available, dtype=np.int64)
        act = _activity(context, avail, "power-of-choice")
        if context is None or context.loss is None:
            raise ConfigError("The power-of-choice selector queries candidates' local losses; the context has no loss query.")
        w = act[avail]
        pool = avail[w > 0]
        if len(pool) == 0:
            return Selection(np.zeros(0, dtype=np.int64), None, ())
        d = min(self.candidates, len(pool))
        p = act[pool] / act[pool].sum()
        cand = np.sort(round_rng(self.seed, round, _CANDIDATES).choice(pool, size=d, replace=False, p=p))
        losses, _ = context.loss(cand)
        losses = np.asarray(losses, dtype=np.float64)
        order = np.lexsort((cand, -losses))  # highest loss first, ties by id
        keep = order[: min(self.num, d)]
        rank = {int(cand[i]): r + 1 for r, i in enumerate(order)}
        chosen = np.sort(cand[keep])
        loss_of = dict(zip(cand.tolist(), losses.tolist()))
        reasons = tuple(f"loss {loss_of[int(c)]:.4g}, rank {rank[int(c)]} of {d} candidates" for c in chosen)
        return Selection(chosen, None, reasons, {"candidates": cand.tolist(), "candidate_losses": losses.tolist()})


def diurnal_online(offsets: np.ndarray, starts: np.ndarray, hours: float, utc_hour: float) -> np.ndarray:
    """Whether each device is online at ``utc_hour``: its local hour ``(utc_hour + offset) mod 24`` lies in
    ``[start, start + hours)`` (mod 24)."""
    local = np.mod(utc_hour + np.asarray(offsets, dtype=np.float64), 24.0)
    since = np.mod(local - np.asarray(starts, dtype=np.float64), 24.0)
    return since < hours


class AvailabilitySelector(_Stateless):
    """Availability-aware selection: only devices online in the round's hour (a diurnal window in their local
    time) can be picked; ``num`` uniformly among the online ones with data.

    Args:
        num: clients per round.
        offsets: every device's UTC offset in hours (its time zone).
        hours: hours a day each device is online.
        rounds_per_day: rounds in a day (round ``t`` is at UTC hour ``24 (t - 1) / rounds_per_day mod 24``).
        window_start: the mean local start of the online window (22:00); each device's start is drawn
            around it (normal, sd ``window_sd`` hours, seeded per device).
    """

    name = "availability"

    def __init__(self, num: int, *, offsets: Sequence[float] | np.ndarray, hours: float = 8.0, rounds_per_day: int = 24,
                 window_start: float = 22.0, window_sd: float = 1.5, seed: int) -> None:
        self.num, self.seed = _check_num(num), int(seed)
        if not 0.0 < hours <= 24.0:
            raise ConfigError(expected("availability hours", "a number in (0, 24]", hours))
        if isinstance(rounds_per_day, bool) or not isinstance(rounds_per_day, int) or rounds_per_day < 1:
            raise ConfigError(expected("rounds_per_day", "an integer >= 1", rounds_per_day))
        self.offsets = np.asarray(offsets, dtype=np.float64)
        if not np.all(np.isfinite(self.offsets)) or np.any(np.abs(self.offsets) > 14):
            raise ConfigError(expected("time-zone offsets", "hours in [-14, 14]", self.offsets[~(np.abs(self.offsets) <= 14)][0]))
        self.hours, self.rounds_per_day = float(hours), int(rounds_per_day)
        rng = round_rng(self.seed, 0, _WINDOW)
        self.starts = np.mod(window_start + window_sd * rng.standard_normal(len(self.offsets)), 24.0)

    def utc_hour(self, round: int) -> float:  # noqa: A002
        """The UTC hour of day of ``round``."""
        return float(np.mod(24.0 * (round - 1) / self.rounds_per_day, 24.0))

    def online(self, round: int) -> np.ndarray:  # noqa: A002
        """A boolean mask: which devices are online in ``round``."""
        return diurnal_online(self.offsets, self.starts, self.hours, self.utc_hour(round))

    def select(self, round: int, available: np.ndarray, context: SelectionContext | None = None) -> Selection:  # noqa: A002
        avail = np.asarray(available, dtype=np.int64)
        if avail.size and avail.max() >= len(self.offsets):
            raise ConfigError(expected("time-zone offsets", f"one per client (>= {avail.max() + 1})", len(self.offsets)))
        on = avail[self.online(round)[avail]]
        pi = min(1.0, self.num / len(on)) if len(on) else 1.0
        chosen = on if len(on) <= self.num else round_rng(self.seed, round, _SELECT).choice(on, size=self.num, replace=False)
        chosen = np.sort(chosen)
        hour = self.utc_hour(round)
        reasons = tuple(f"online at local {np.mod(hour + self.offsets[c], 24):.1f}h, pi={pi:.4g}" for c in chosen)
        return Selection(chosen, np.full(len(chosen), pi), reasons, {"utc_hour": hour, "online": int(len(on))})


class OortSelector:
    """Oort (Lai et al. 2021), Algorithm 1, on simulated device speeds (see the module docs).

    Device ``i`` takes ``t_i = steps_i / speed_i`` time units for its local work, ``speed_i ~ LogNormal(0,
    speed_sigma)`` (seeded per device); the server learns ``t_i`` and the statistical utility when the
    device reports. The preferred round duration ``T`` is the ``duration_quantile`` of the durations
    seen so far (Oort's pacer in its simplest form).
    """

    name = "oort"

    def __init__(self, num: int, *, num_clients: int, seed: int, alpha: float = 2.0, epsilon: float = 0.9,
                 epsilon_decay: float = 0.98, epsilon_min: float = 0.2, cutoff: float = 0.95,
                 duration_quantile: float = 0.5, speed_sigma: float = 0.5) -> None:
        self.num, self.seed = _check_num(num), int(seed)
        if not 0.0 <= epsilon_min <= epsilon <= 1.0:
            raise ConfigError(expected("oort epsilon", "0 <= epsilon_min <= epsilon <= 1", (epsilon_min, epsilon)))
        self.alpha, self.eps0, self.decay, self.eps_min = float(alpha), float(epsilon), float(epsilon_decay), float(epsilon_min)
        self.cutoff, self.quantile = float(cutoff), float(duration_quantile)
        self.speed = np.exp(speed_sigma * round_rng(self.seed, 0, _SPEED).standard_normal(int(num_clients)))
        self.utility: dict[int, float] = {}
        self.last_round: dict[int, int] = {}
        self.duration: dict[int, float] = {}
        self.epsilon = self.eps0

    def state_dict(self) -> dict[str, Any]:
        return {"utility": {str(k): v for k, v in self.utility.items()},
                "last_round": {str(k): v for k, v in self.last_round.items()},
                "duration": {str(k): v for k, v in self.duration.items()}, "epsilon": self.epsilon}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.utility = {int(k): float(v) for k, v in state.get("utility", {}).items()}
        self.last_round = {int(k): int(v) for k, v in state.get("last_round", {}).items()}
        self.duration = {int(k): float(v) for k, v in state.get("duration", {}).items()}
        self.epsilon = float(state.get("epsilon", self.eps0))

    def feedback(self, round: int, reports: Sequence[Mapping[str, float]]) -> None:  # noqa: A002
        """Participants' reports: ``client``, ``num_examples``, ``loss_rms`` (root mean square of their
        per-example losses) and ``steps``; sets their statistical utility and duration."""
        for r in reports:
            c = int(r["client"])
            self.utility[c] = float(r["num_examples"]) * float(r["loss_rms"])
            self.last_round[c] = int(round)
            self.duration[c] = float(r["steps"]) / float(self.speed[c])

    def scores(self, round: int, explored: np.ndarray) -> np.ndarray:  # noqa: A002
        """Oort's utility of explored clients at ``round``: statistical utility + uncertainty bonus, times the
        system penalty for devices slower than ``T``."""
        util = np.array([self.utility[int(c)] for c in explored], dtype=np.float64)
        last = np.array([self.last_round[int(c)] for c in explored], dtype=np.float64)
        util = util + np.sqrt(0.1 * math.log(max(round, 2)) / np.maximum(last, 1.0))
        dur = np.array([self.duration[int(c)] for c in explored], dtype=np.float64)
        T = float(np.quantile(np.array(list(self.duration.values())), self.quantile))
        slow = dur > T
        util[slow] *= (T / dur[slow]) ** self.alpha
        return util

    def select(self, round: int, available: np.ndarray, context: SelectionContext | None = None) -> Selection:  # noqa: A002
        avail = np.asarray(available, dtype=np.int64)
        act = _activity(context, avail, "oort")
        pool = avail[act[avail] > 0]
        rng = round_rng(self.seed, round, _SELECT)
        m = min(self.num, len(pool))
        explored = np.array([c for c in pool if int(c) in self.utility], dtype=np.int64)
        fresh = np.array([c for c in pool if int(c) not in self.utility], dtype=np.int64)
        n_exploit = min(len(explored), int(round_half_up((1.0 - self.epsilon) * m)))
        n_explore = min(len(fresh), m - n_exploit)
        n_exploit = min(len(explored), m - n_explore)  # too few unexplored: exploit more
        reasons: dict[int, str] = {}
        if n_exploit:
            util = self.scores(round, explored)
            order = np.lexsort((explored, -util))
            cut = self.cutoff * util[order[n_exploit - 1]]
            admitted = explored[util >= cut]
            p = util[util >= cut] / util[util >= cut].sum()
            pick = rng.choice(admitted, size=n_exploit, replace=False, p=p)
            score = dict(zip(explored.tolist(), util.tolist()))
            for c in pick:
                reasons[int(c)] = f"exploit: utility {score[int(c)]:.4g} (cut-off {cut:.4g})"
        if n_explore:
            # unexplored clients, faster devices first (Oort explores by speed when it is known)
            p = self.speed[fresh] / self.speed[fresh].sum()
            pick = rng.choice(fresh, size=n_explore, replace=False, p=p)
            for c in pick:
                reasons[int(c)] = f"explore: unseen, speed {self.speed[int(c)]:.3g}"
        chosen = np.array(sorted(reasons), dtype=np.int64)
        info = {"epsilon": self.epsilon, "exploit": int(n_exploit), "explore": int(n_explore)}
        self.epsilon = max(self.eps_min, self.epsilon * self.decay)
        if len(chosen) and context is not None and context.loss is not None:
            # participants report their loss with their update (Oort's feedback); the server keeps it
            _, rms = context.loss(chosen)
            steps = context.steps[chosen] if context.steps is not None else act[chosen]
            self.feedback(round, [{"client": int(c), "num_examples": float(act[c]), "loss_rms": float(r), "steps": float(s)}
                                  for c, r, s in zip(chosen, rms, steps)])
        return Selection(chosen, None, tuple(reasons[int(c)] for c in chosen), info)


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)`` (Python's ``round`` rounds halves to even)."""
    return int(math.floor(x + 0.5))


def parse_selection_spec(spec: str) -> tuple[str, float | None]:
    """``uniform | activity[:BETA] | power-of-choice[:D] | availability[:HOURS] | oort`` -> ``(kind, parameter)``."""
    text = str(spec).strip().lower()
    kind, _, arg = text.partition(":")
    if kind not in SELECTION_KINDS:
        raise ConfigError(expected("selection", f"one of {list(SELECTION_KINDS)} (e.g. 'activity:0.5', 'power-of-choice:20')", spec))
    if not arg:
        return kind, None
    if kind in ("uniform", "oort"):
        raise ConfigError(expected("selection", f"'{kind}' without a parameter", spec))
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(expected("selection", f"'{kind}:<number>'", spec)) from None
    if kind == "activity" and not 0.0 <= value <= 1.0:
        raise ConfigError(expected("selection", "activity:BETA with BETA in [0, 1]", spec))
    if kind == "power-of-choice" and (value != int(value) or value < 1):
        raise ConfigError(expected("selection", "power-of-choice:D with D an integer >= 1", spec))
    if kind == "availability" and not 0.0 < value <= 24.0:
        raise ConfigError(expected("selection", "availability:HOURS with HOURS in (0, 24]", spec))
    return kind, value


def make_selector(spec: str, *, num: int, num_clients: int, seed: int, offsets: Sequence[float] | np.ndarray | None = None,
                  rounds_per_day: int = 24) -> Any:
    """The selector for a ``--selection`` spec (see :func:`parse_selection_spec`)."""
    kind, value = parse_selection_spec(spec)
    if kind == "uniform":
        return UniformSelector(num, seed=seed)
    if kind == "activity":
        return ActivitySelector(num, beta=1.0 if value is None else value, seed=seed)
    if kind == "power-of-choice":
        return PowerOfChoiceSelector(num, candidates=None if value is None else int(value), seed=seed)
    if kind == "availability":
        if offsets is None:
            offsets = round_rng(seed, 0, _WINDOW, 1).integers(-10, 11, size=num_clients).astype(np.float64)
        return AvailabilitySelector(num, offsets=offsets, hours=8.0 if value is None else value,
                                    rounds_per_day=rounds_per_day, seed=seed)
    return OortSelector(num, num_clients=num_clients, seed=seed)


def available_clients(availability: Sequence[float] | np.ndarray, *, seed: int, round: int) -> np.ndarray:  # noqa: A002
    """Ids of the clients online in ``round``: client ``c`` with probability ``availability[c]``."""
    a = np.asarray(availability, dtype=np.float64)
    if a.size and (np.any(a < 0) or np.any(a > 1) or not np.all(np.isfinite(a))):
        raise ConfigError(expected("availability", "probabilities in [0, 1]", a[(a < 0) | (a > 1) | ~np.isfinite(a)][0]))
    if np.all(a >= 1.0):
        return np.arange(len(a), dtype=np.int64)
    u = round_rng(seed, round, _AVAILABLE).random(len(a))
    return np.flatnonzero(u < a).astype(np.int64)
