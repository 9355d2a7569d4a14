"""Fit a run into a privacy budget: the noise for a target epsilon, and a guard that stops in time.

:func:`calibrate_noise` finds the smallest noise multiplier whose epsilon after the planned steps
is within the target. :class:`BudgetGuard` is asked before every DP-SGD step
(:meth:`BudgetGuard.allow_step`) and says no before a step that would exceed the target. Asking is
cheap: the guard computes once how many more steps of its mechanism ``(noise_multiplier,
sampling_rate)`` fit given what the ledger holds (:meth:`BudgetGuard.max_steps`, an exponential
search + bisection over the step count), then only counts the steps the ledger gains. It searches
again only when the ledger changes in another way (another release recorded, a checkpoint
restored, :meth:`BudgetGuard.sync`).

- RDP: epsilon of ``base + k * step`` from cached RDP vectors (microseconds per probe).
- PLD: the search runs at ``PLD_SEARCH_INTERVAL`` (1e-3), then the boundary is searched again at
  the reporting interval (default 1e-4) starting from the coarse answer with steps 1, 2, 4, ...,
  so the guard allows exactly the steps whose reported epsilon stays within the target. The
  single-step PLD is cached; about 2 s once for ~2,700 DP-SGD steps on the project machine.

Both are re-exported by :mod:`trustnlp.privacy.accounting`.

Example:
    >>> from trustnlp.privacy.accounting import PrivacyLedger
    >>> ledger = PrivacyLedger()
    >>> guard = BudgetGuard(target_epsilon=1.0, delta=1e-5, noise_multiplier=1.1,
    ...                     sampling_rate=256 / 60000, ledger=ledger)
    >>> guard.remaining_steps()
    1709
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from trustnlp.errors import ConfigError, PrivacyError
from trustnlp.privacy import accounting as acc

__all__ = ["calibrate_noise", "BudgetGuard"]

MAX_STEPS_LIMIT = 10**7  # max_steps answers at most this (e.g. when the noise is huge)
SIGMA_MIN, SIGMA_MAX = 0.1, 1e3  # the bracket calibrate_noise searches
SIGMA_RTOL = 1e-5  # calibrate_noise stops when the bracket is this narrow (relative)


# -- calibration ----------------------------------------------------------------------------------


def _smallest_sigma(eps_of: Any, target: float, guess: float, factor: float) -> tuple[float, float]:
    """Bracket the boundary of ``eps_of(sigma) <= target`` (decreasing in sigma), then bisect it.

    Returns ``(sigma, eps_of(sigma))`` with sigma feasible and within ``SIGMA_RTOL`` (relative) of
    an infeasible sigma, and ``eps >= 0.99 * target``.
    """
    e = eps_of(guess)
    if e <= target:  # feasible: walk down until infeasible
        hi, e_hi, lo = guess, e, max(guess / factor, SIGMA_MIN)
        while (e_lo := eps_of(lo)) <= target:
            if lo == SIGMA_MIN:
                raise ConfigError(
                    f"target_epsilon={target} is so large that noise_multiplier={SIGMA_MIN} (the smallest "
                    f"calibrate_noise considers) already gives epsilon={e_lo:.4g}; give noise_multiplier directly.")
            hi, e_hi, lo = lo, e_lo, max(lo / factor, SIGMA_MIN)
    else:  # infeasible: walk up until feasible
        lo, hi = guess, min(guess * factor, SIGMA_MAX)
        while (e_hi := eps_of(hi)) > target:
            if hi == SIGMA_MAX:
                raise ConfigError(
                    f"target_epsilon={target} is unreachable: even noise_multiplier={SIGMA_MAX} (the largest "
                    f"calibrate_noise considers) gives epsilon={e_hi:.4g}; raise the target or delta, or take "
                    "fewer steps or a smaller sampling rate.")
            lo, hi = hi, min(hi * factor, SIGMA_MAX)
    for _ in range(200):
        if hi - lo <= SIGMA_RTOL * hi and e_hi >= 0.99 * target:
            break
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if (e := eps_of(mid)) <= target:
            hi, e_hi = mid, e
        else:
            lo = mid
    return hi, e_hi


def calibrate_noise(target_epsilon: float, delta: float, sampling_rate: float, steps: int, *,
                    accountant: str = "rdp", schedule: Sequence[float] | None = None,
                    steps_per_epoch: int | None = None, pld_interval: float | None = None) -> float:
    """The smallest noise multiplier sigma with ``epsilon(sigma) <= target_epsilon`` for ``steps`` steps.

    Bracketing (factor 2 from sigma = 1, within ``[SIGMA_MIN, SIGMA_MAX]``) then bisection until
    the bracket is narrower than ``SIGMA_RTOL * sigma`` (1e-5) and
    ``0.99 * target <= epsilon(sigma) <= target``. With ``schedule`` (per-epoch multipliers, e.g.
    ``[1.0, 0.9, 0.8]``), epoch ``e`` uses ``sigma * schedule[e]`` and the epochs are composed exactly.

    PLD: the bisection runs at ``PLD_SEARCH_INTERVAL`` (1e-3); its sigma is then evaluated at
    ``pld_interval`` (default ``PLD_INTERVAL`` = 1e-4) and returned if epsilon there is within
    ``[0.99 * target, target]``; otherwise the bracketing + bisection is redone at ``pld_interval``
    from that sigma with factor 1.01. (Coarse epsilons are ~1e-3 larger, so the returned sigma is
    at most ~1e-4 relative above the fine boundary.)
    """
    target = acc._check_epsilon(target_epsilon)
    q, steps, delta, accountant = acc._check_common(sampling_rate, steps, delta, accountant)
    interval = acc._check_interval(pld_interval)
    base: float | Sequence[float] = 1.0 if schedule is None else list(schedule)
    acc._schedule_pairs(base, q, steps, steps_per_epoch)  # validate the schedule once

    def eps_at(interval_: float) -> Any:
        return lambda s: acc._epsilon(acc._schedule_pairs(base, q, steps, steps_per_epoch, scale=s), delta,
                                      accountant, interval_)

    if accountant == "rdp":
        return _smallest_sigma(eps_at(interval), target, 1.0, 2.0)[0]
    sigma, _ = _smallest_sigma(eps_at(max(interval, acc.PLD_SEARCH_INTERVAL)), target, 1.0, 2.0)
    fine = eps_at(interval)
    if interval < acc.PLD_SEARCH_INTERVAL and not 0.99 * target <= fine(sigma) <= target:
        sigma, _ = _smallest_sigma(fine, target, sigma, 1.01)
    return sigma


def _largest_feasible(ok: Callable[[int], bool], start: int, step: int, limit: int) -> int:
    """The largest k in [0, limit] with ``ok(k)``, for ``ok`` true at 0 and monotone (true, then false).

    Probes ``start``, then ``start ± step, ± 2 step, ...`` until the boundary is bracketed, then bisects.
    """
    k = min(max(start, 1), limit)
    if ok(k):
        lo, hi = k, None
        while lo < limit:
            k = min(lo + step, limit)
            if not ok(k):
                hi = k
                break
            lo, step = k, 2 * step
        if hi is None:
            return limit
    else:
        lo, hi = 0, k
        while hi > 1:
            k = max(hi - step, 0)
            if k == 0 or ok(k):
                lo = k
                break
            hi, step = k, 2 * step
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


class BudgetGuard:
    """Knows the ledger, delta, target epsilon and accountant; says whether another step fits.

    Args:
        target_epsilon / delta: the budget.
        noise_multiplier / sampling_rate: the mechanism of one step.
        accountant: ``rdp`` or ``pld`` (the one the results report).
        ledger: the run's ledger (a new one if omitted); steps are recorded by the caller.
        planned_steps: where the search starts (the run's planned number of steps); only a hint.
        purpose: the purpose of the step records (``training``).
        pld_interval: PLD discretisation for decisions (default ``PLD_INTERVAL``, as reported).
    """

    def __init__(self, *, target_epsilon: float, delta: float, noise_multiplier: float, sampling_rate: float,
                 accountant: str = "rdp", ledger: acc.PrivacyLedger | None = None, planned_steps: int | None = None,
                 purpose: str = "training", pld_interval: float | None = None) -> None:
        self.target_epsilon = acc._check_epsilon(target_epsilon)
        self.delta = acc._check_delta(delta)
        self.noise_multiplier = acc._check_sigma(noise_multiplier)
        self.sampling_rate = acc._check_rate(sampling_rate)
        self.accountant = acc._check_accountant(accountant)
        self.ledger = acc.PrivacyLedger() if ledger is None else ledger
        self.planned_steps = None if planned_steps is None else acc._check_int(planned_steps, "planned_steps", 1)
        self.pld_interval = acc._check_interval(pld_interval)
        kind = "gaussian" if self.sampling_rate == 1.0 else "poisson_gaussian"
        self._step = acc.DPEventRecord(kind, self.noise_multiplier, self.sampling_rate, 1, purpose)
        self._snapshot: tuple[int, int] | None = None  # (ledger total, ledger count of the step key)
        self._capacity = 0  # steps that fit after the snapshot

    # -- the search -------------------------------------------------------------------------------

    @staticmethod
    def max_steps(*, target_epsilon: float, delta: float, noise_multiplier: float, sampling_rate: float,
                  accountant: str = "rdp", records: Sequence[acc.DPEventRecord] = (), hint: int | None = None,
                  limit: int = MAX_STEPS_LIMIT, pld_interval: float | None = None) -> int:
        """The largest k such that ``records`` plus k steps of the mechanism stay within ``target_epsilon``.

        0 when even one more step exceeds it; ``limit`` when ``limit`` steps fit.
        """
        target, delta = acc._check_epsilon(target_epsilon), acc._check_delta(delta)
        step = ((acc._check_sigma(noise_multiplier), acc._check_rate(sampling_rate)), 1)
        accountant, interval = acc._check_accountant(accountant), acc._check_interval(pld_interval)
        limit = acc._check_int(limit, "limit", 1)
        start = max(1, min(hint or 1, limit))
        base = acc._pairs(records)
        if accountant == "rdp":
            total, vec = acc._rdp_total(base), acc._rdp_vector(*step[0])
            return _largest_feasible(lambda k: acc._rdp_epsilon(total + k * vec, delta) <= target, start, start, limit)

        def ok_at(interval_: float) -> Callable[[int], bool]:
            return lambda k: acc._epsilon(base + [(step[0], k)], delta, "pld", interval_) <= target

        coarse = max(interval, acc.PLD_SEARCH_INTERVAL)
        k = _largest_feasible(ok_at(coarse), start, start, limit)
        if interval < coarse:
            k = _largest_feasible(ok_at(interval), max(k, 1), 1, limit)
        return k

    def remaining_steps(self) -> int:
        """How many more steps fit in the budget (searched once, then counted down)."""
        total, mine = self.ledger.total_count, self.ledger.count_of(self._step.key)
        taken = None
        if self._snapshot is not None:
            t0, m0 = self._snapshot
            if mine - m0 == total - t0 >= 0:  # the ledger only gained our steps (it is append-only)
                taken = mine - m0
        if taken is None:
            hint = self.planned_steps if self.planned_steps is not None and not self.ledger.records else None
            self._capacity = self.max_steps(
                target_epsilon=self.target_epsilon, delta=self.delta, noise_multiplier=self.noise_multiplier,
                sampling_rate=self.sampling_rate, accountant=self.accountant, records=self.ledger.records,
                hint=hint, pld_interval=self.pld_interval)
            self._snapshot, taken = (total, mine), 0
        return max(0, self._capacity - taken)

    # -- what the training loop asks --------------------------------------------------------------

    def allow_step(self) -> bool:
        """True when one more step keeps epsilon within the target."""
        return self.remaining_steps() >= 1

    def would_exceed(self, next_records: acc.DPEventRecord | Iterable[acc.DPEventRecord] | None = None) -> bool:
        """Whether recording ``next_records`` (default: one step of the guard's mechanism) exceeds the target."""
        if next_records is None:
            return not self.allow_step()
        recs = [next_records] if isinstance(next_records, acc.DPEventRecord) else list(next_records)
        if all(r.key == self._step.key for r in recs):
            return sum(r.count for r in recs) > self.remaining_steps()
        pairs = acc._pairs(self.ledger.records) + acc._pairs(recs)
        return acc._epsilon(pairs, self.delta, self.accountant, self.pld_interval) > self.target_epsilon

    def check(self) -> None:
        """Raise :class:`~trustnlp.errors.PrivacyError` when another step would exceed the target."""
        if not self.allow_step():
            after = acc._epsilon(acc._pairs(self.ledger.records) + [((self.noise_multiplier, self.sampling_rate), 1)],
                                 self.delta, self.accountant, self.pld_interval)
            raise PrivacyError(
                f"Privacy budget exhausted: one more step (noise_multiplier={self.noise_multiplier}, "
                f"sampling_rate={self.sampling_rate}) would bring epsilon to {after:.4f} > target_epsilon="
                f"{self.target_epsilon} at delta={self.delta} ({self.accountant}); "
                f"{self.ledger.count_of(self._step.key)} steps taken.")

    def spent(self) -> float:
        """Epsilon spent so far (the ledger's, at the guard's delta and accountant)."""
        return self.ledger.epsilon(self.delta, accountant=self.accountant, pld_interval=self.pld_interval)

    def sync(self, ledger: acc.PrivacyLedger | None = None) -> None:
        """Follow ``ledger`` (or the current one after it was replaced in place) and search again."""
        if ledger is not None:
            self.ledger = ledger
        self._snapshot = None
