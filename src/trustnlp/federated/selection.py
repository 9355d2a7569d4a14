"""Client selection and availability: small seeded, stateless objects.

A :class:`Selector` picks a round's clients among the available ones. It is a pure function of
``(seed, round, available)``, so a resumed run selects exactly what an uninterrupted one would
(nothing to checkpoint). :class:`UniformSelector` samples ``num`` clients uniformly without
replacement (all of them when fewer are available). Other selectors (e.g. by activity) implement
the same protocol.

Availability: client ``c`` is online in round ``t`` with probability ``a_c`` independently of
everything else (:func:`available_clients`, seeded by ``(seed, round)``).

Example:
    >>> sel = UniformSelector(3, seed=0)
    >>> sel.select(1, np.arange(10)).tolist() == sel.select(1, np.arange(10)).tolist()
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from trustnlp.errors import ConfigError, expected

__all__ = ["Selector", "UniformSelector", "available_clients", "round_rng"]

_SELECT, _AVAILABLE = 1, 2  # stream tags, so that selection and availability draws are independent


def round_rng(seed: int, round: int, stream: int) -> np.random.Generator:  # noqa: A002
    """A generator for ``(seed, round, stream)`` (independent streams via ``SeedSequence``)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (2**63), int(round), int(stream)]))


@runtime_checkable
class Selector(Protocol):
    """``select(round, available) -> client ids`` (deterministic in its seed, the round and ``available``)."""

    def select(self, round: int, available: np.ndarray) -> np.ndarray: ...  # noqa: A002


class UniformSelector:
    """``num`` clients uniformly at random without replacement from the available ones (sorted ids)."""

    def __init__(self, num: int, *, seed: int) -> None:
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
            raise ConfigError(expected("clients_per_round", "an integer >= 1", num))
        self.num, self.seed = int(num), int(seed)

    def select(self, round: int, available: np.ndarray) -> np.ndarray:  # noqa: A002
        avail = np.asarray(available, dtype=np.int64)
        if len(avail) <= self.num:
            return np.sort(avail)
        return np.sort(round_rng(self.seed, round, _SELECT).choice(avail, size=self.num, replace=False))


def available_clients(availability: Sequence[float] | np.ndarray, *, seed: int, round: int) -> np.ndarray:  # noqa: A002
    """Ids of the clients online in ``round``: client ``c`` with probability ``availability[c]``."""
    a = np.asarray(availability, dtype=np.float64)
    if a.size and (np.any(a < 0) or np.any(a > 1) or not np.all(np.isfinite(a))):
        raise ConfigError(expected("availability", "probabilities in [0, 1]", a[(a < 0) | (a > 1) | ~np.isfinite(a)][0]))
    if np.all(a >= 1.0):
        return np.arange(len(a), dtype=np.int64)
    u = round_rng(seed, round, _AVAILABLE).random(len(a))
    return np.flatnonzero(u < a).astype(np.int64)
