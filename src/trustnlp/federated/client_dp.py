"""Client-level differential privacy for federated averaging: DP-FedAvg with fixed or adaptive clipping.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private Recurrent
Language Models", ICLR): every sampled client's model delta ``Δ_k = x_k - x`` is clipped to L2 norm
at most ``C`` (:func:`clip_update`), the server sums the clipped deltas, adds ``N(0, (z C)² I)`` and
divides by the FIXED denominator ``expected_clients`` (``q K`` under Poisson sampling, ``m`` for a
fixed-size sample), not by the realised number of clients: the realised count depends on who is in
the data set, so dividing by it would leak (:func:`dp_fedavg_aggregate`). Clients are weighted
equally (the "flat" estimator of Andrew et al.). The unit of privacy is a client: all of its data.

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private Learning
with Adaptive Clipping", NeurIPS, Algorithm 1): ``C`` tracks the ``γ`` quantile of the pre-clip
update norms by a geometric step ``C <- C · exp(-η_C (b̄ - γ))`` with ``b̄`` the noisy fraction of
clients whose norm was at most ``C`` (:func:`adaptive_clip_update`). The bits are centred,
``b_k - 1/2`` (sensitivity 1/2 under add/remove), so with count noise ``σ_b`` the pair (delta sum,
count) is one Gaussian mechanism with multiplier ``(z_Δ⁻² + (2σ_b)⁻²)^(-1/2)`` (Andrew et al.,
Theorem 1; :func:`trustnlp.privacy.quantile.joint_noise_multiplier` with count multiplier
``2σ_b``). :func:`effective_noise_multiplier` raises ``z_Δ`` so that the combined multiplier is the
configured ``z``; the accounting then only needs ``z``.

Accounting (:func:`client_dp_epsilon`, :func:`calibrate_client_noise`), through ``dp_accounting``:

- ``sampling="poisson"``: each client joins a round independently with probability ``q = m / K``;
  add/remove-one-client neighbouring; the L2 sensitivity of the clipped sum is ``C``, so a round is
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` (RDP or PLD), composed over the rounds, exactly
  as :mod:`trustnlp.privacy.accounting` treats DP-SGD steps.
- ``sampling="uniform"``: ``m`` of ``K`` clients uniformly without replacement each round; the
  amplification theorem (Wang, Balle and Kasiviswanathan 2019, "Subsampled Rényi Differential
  Privacy and Analytical Moments Accountant", Thm. 27) holds for **replace-one (substitution)**
  neighbouring: ``K`` is public and one client's data is replaced by arbitrary other data. Replacing
  a clipped delta ``a`` by ``b`` moves the sum by ``‖a - b‖ <= 2C``, so the Gaussian has multiplier
  ``z C / (2C) = z / 2`` relative to its sensitivity. ``dp_accounting`` (0.6.0) feeds the
  ``GaussianDpEvent`` multiplier to that theorem as ``std / sensitivity`` (google/differential-privacy
  issue #378), so the event built here is
  ``SampledWithoutReplacementDpEvent(K, m, GaussianDpEvent(z / 2))`` with
  ``RdpAccountant(neighboring_relation=REPLACE_ONE)``. (Which convention the installed version uses
  is probed once, see :func:`_replace_one_multiplier`; at ``m = K`` the result is checked in the
  tests against the plain Gaussian's RDP ``α (2C)² / (2 z² C²)``.) dp-accounting's PLD accountant has
  no without-replacement event: ``accountant="pld"`` with uniform sampling is refused. A replace-one
  epsilon is not directly comparable with an add/remove one (replace-one = remove + add, so its
  epsilon is roughly that of add/remove with half the noise).

Selection (:func:`check_selection_for_client_dp`): amplification by sampling assumes the sample is
drawn independently of the private data. ``uniform``, ``activity:0`` (Poisson at a constant rate)
and ``availability`` (see below) qualify; ``activity:BETA`` with ``BETA > 0``, ``power-of-choice``
and ``oort`` do not.

Example:
    >>> cfg = ClientDPConfig(noise_multiplier=0.0, clip_norm=1.0)
    >>> agg, info = dp_fedavg_aggregate([{"w": torch.tensor([3.0, 4.0])}], config=cfg, clip_norm=1.0,
    ...                                 expected_clients=2.0, generator=torch.Generator().manual_seed(0))
    >>> [round(x, 6) for x in agg["w"].tolist()], info["norms"], info["clipped_fraction"]
    ([0.3, 0.4], [5.0], 1.0)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dp_accounting
import numpy as np
import torch
from dp_accounting import rdp
from dp_accounting.privacy_accountant import NeighboringRelation

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.federated.selection import parse_selection_spec
from trustnlp.privacy import accounting as acc
from trustnlp.privacy.budget import calibrate_noise
from trustnlp.privacy.quantile import joint_noise_multiplier

__all__ = [
    "ClientDPConfig",
    "clip_update",
    "dp_fedavg_aggregate",
    "adaptive_clip_update",
    "effective_noise_multiplier",
    "count_noise_std",
    "client_dp_epsilon",
    "calibrate_client_noise",
    "SAMPLINGS",
    "SELECTIONS_ALLOWED_WITH_CLIENT_DP",
    "check_selection_for_client_dp",
]

SAMPLINGS = ("poisson", "uniform")
#: Selection specs whose sample is independent of the clients' private data (``activity:0`` is Poisson
#: sampling at a constant rate; ``availability[:HOURS]`` depends only on public time zones, see
#: :func:`check_selection_for_client_dp`).
SELECTIONS_ALLOWED_WITH_CLIENT_DP = ("uniform", "activity:0", "availability")
DEFAULT_COUNT_NOISE_FRACTION = 1.0 / 20.0  # sigma_b = expected_clients / 20 (Andrew et al. 2021)
CALIBRATION_RTOL = 1e-4  # the uniform-sampling search also stops when its bracket is this narrow (relative)


# -- configuration --------------------------------------------------------------------------------


def _check_positive(x: object, name: str) -> float:
    if not acc._is_number(x) or not math.isfinite(x) or x <= 0:
        raise ConfigError(expected(name, "a finite number > 0", x))
    return float(x)


@dataclass(frozen=True)
class ClientDPConfig:
    """Client-level DP settings of a federated run.

    Attributes:
        noise_multiplier: ``z``; the noise std on the SUM of clipped deltas is ``z C``. With adaptive
            clipping ``z`` is the multiplier of the combined (delta, count) mechanism and the delta noise
            uses :func:`effective_noise_multiplier`. 0 = no noise (no privacy; for debugging).
        clip_norm: ``C``, the L2 bound of a client's delta (the initial ``C`` when adaptive).
        adaptive: track the ``target_quantile`` of the update norms (Andrew et al. 2021).
        target_quantile: ``γ`` in (0, 1).
        clip_lr: ``η_C`` of the geometric update ``C <- C exp(-η_C (b̄ - γ))``.
        count_noise_multiplier: ``σ_b``, the noise std on the (centred) count of clients with norm <= C;
            ``None``: ``expected_clients / 20`` (Andrew et al.).
    """

    noise_multiplier: float
    clip_norm: float
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", acc._check_sigma(self.noise_multiplier))
        object.__setattr__(self, "clip_norm", _check_positive(self.clip_norm, "clip_norm"))
        if not isinstance(self.adaptive, bool):
            raise ConfigError(expected("adaptive", "a bool", self.adaptive))
        q = self.target_quantile
        if not acc._is_number(q) or not 0 < q < 1:
            raise ConfigError(expected("target_quantile", "in (0, 1)", q))
        object.__setattr__(self, "target_quantile", float(q))
        object.__setattr__(self, "clip_lr", _check_positive(self.clip_lr, "clip_lr"))
        if self.count_noise_multiplier is not None:
            object.__setattr__(self, "count_noise_multiplier",
                               acc._check_sigma(self.count_noise_multiplier, "count_noise_multiplier"))


# -- clipping and aggregation ---------------------------------------------------------------------


def _l2_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of all entries together, accumulated in float64."""
    return math.sqrt(sum(float(v.detach().double().pow(2).sum()) for v in tensors.values()))


def _check_delta(delta: object, name: str = "delta") -> Mapping[str, torch.Tensor]:
    if not isinstance(delta, Mapping) or not delta:
        raise DataError(expected(name, "a non-empty mapping of parameter name to tensor", type(delta).__name__))
    for k, v in delta.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise DataError(expected(f"{name}[{k!r}]", "a floating-point tensor", type(v).__name__))
    return delta


def clip_update(delta: Mapping[str, torch.Tensor], clip_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """Scale a client's delta to L2 norm at most ``clip_norm`` (the norm over all parameters together).

    Returns the (new) scaled tensors and the pre-clip norm. A delta with norm <= ``clip_norm`` is
    returned unchanged (copied). A larger one is multiplied by ``C / norm``; if rounding in the
    tensors' dtype leaves the result's norm above ``C``, the factor is shrunk by a few ulps until it
    is not, so the sensitivity bound holds as computed.
    """
    delta = _check_delta(delta)
    c = _check_positive(clip_norm, "clip_norm")
    norm = _l2_norm(delta)
    if not math.isfinite(norm):
        raise DataError(expected("delta", "finite entries", f"a delta with L2 norm {norm}"))
    if norm <= c:
        return {k: v.detach().clone() for k, v in delta.items()}, norm
    factor = c / norm
    eps = max(torch.finfo(v.dtype).eps for v in delta.values())
    for _ in range(64):
        out = {k: v.detach() * factor for k, v in delta.items()}
        if _l2_norm(out) <= c:
            return out, norm
        factor *= 1.0 - 4.0 * eps
    raise DataError(f"Could not scale a delta of norm {norm} to clip_norm={c} in its dtype.")  # pragma: no cover


def dp_fedavg_aggregate(deltas: Sequence[Mapping[str, torch.Tensor]], *, config: ClientDPConfig, clip_norm: float,
                        expected_clients: float, generator: torch.Generator,
                        like: Mapping[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The DP-FedAvg aggregate ``(Σ_k clip(Δ_k) + N(0, (z_Δ C)² I)) / expected_clients``.

    Args:
        deltas: the sampled clients' deltas ``x_k - x`` (same names and shapes); may be empty under
            Poisson sampling, in which case ``like`` gives the names, shapes and dtypes (the noise is
            still released: an empty round must look like any other).
        config: the DP settings (``z``; the delta multiplier ``z_Δ`` is
            :func:`effective_noise_multiplier`, ``z`` itself without adaptive clipping).
        clip_norm: this round's ``C`` (``config.clip_norm`` when fixed; the adaptive one otherwise).
        expected_clients: the fixed denominator, ``q K`` (Poisson) or ``m`` (uniform).
        generator: the noise source (CPU ``torch.Generator``); one ``randn`` per parameter, in the key
            order of the first delta (or ``like``).
        like: a template of the parameters (e.g. the global model), needed only when ``deltas`` is empty.

    Returns:
        ``(aggregate, info)``: the noisy average delta (to apply as ``x <- x + server_lr * aggregate``; the
        pseudo-gradient of :meth:`~trustnlp.federated.strategy.Strategy.apply` is its negative) and
        ``info`` with ``norms`` (pre-clip, in order), ``clipped_fraction``, ``clip_norm``,
        ``noise_multiplier`` (``z_Δ``), ``noise_std`` (per coordinate of the average,
        ``z_Δ C / expected_clients``), ``sum_noise_std`` (``z_Δ C``), ``num_clients`` and ``expected_clients``.
    """
    c = _check_positive(clip_norm, "clip_norm")
    m = _check_positive(expected_clients, "expected_clients")
    if not isinstance(config, ClientDPConfig):
        raise ConfigError(expected("config", "a ClientDPConfig", type(config).__name__))
    deltas = list(deltas)
    template = _check_delta(deltas[0] if deltas else like, "deltas[0]" if deltas else "like")
    keys = list(template)
    shapes = {k: tuple(template[k].shape) for k in keys}
    total: dict[str, torch.Tensor] = {k: torch.zeros_like(template[k], memory_format=torch.contiguous_format).detach()
                                      for k in keys}
    norms: list[float] = []
    for i, d in enumerate(deltas):
        d = _check_delta(d, f"deltas[{i}]")
        if set(d) != set(keys):
            raise DataError(expected(f"deltas[{i}] parameter names", f"the names of deltas[0] {sorted(keys)[:5]}",
                                     sorted(d)[:5]))
        for k in keys:
            if tuple(d[k].shape) != shapes[k]:
                raise DataError(expected(f"deltas[{i}][{k!r}].shape", str(shapes[k]), tuple(d[k].shape)))
        clipped, norm = clip_update(d, c)
        norms.append(norm)
        for k in keys:
            total[k].add_(clipped[k].to(total[k].dtype))
    z_delta = effective_noise_multiplier(config, m)
    sum_std = z_delta * c
    if sum_std > 0:
        for k in keys:
            t = total[k]
            noise = torch.randn(t.shape, generator=generator, dtype=t.dtype, device=generator.device)
            t.add_(noise.to(t.device), alpha=sum_std)
    out = {k: v.div_(m) for k, v in total.items()}
    info = {"norms": norms, "clipped_fraction": (sum(n > c for n in norms) / len(norms)) if norms else 0.0,
            "clip_norm": c, "noise_multiplier": z_delta, "noise_std": sum_std / m, "sum_noise_std": sum_std,
            "num_clients": len(deltas), "expected_clients": m}
    return out, info


# -- adaptive clipping ----------------------------------------------------------------------------


def count_noise_std(config: ClientDPConfig, expected_clients: float) -> float:
    """``σ_b``: ``config.count_noise_multiplier``, or ``expected_clients / 20`` when it is ``None``."""
    m = _check_positive(expected_clients, "expected_clients")
    sb = config.count_noise_multiplier
    return m * DEFAULT_COUNT_NOISE_FRACTION if sb is None else float(sb)


def effective_noise_multiplier(config: ClientDPConfig, expected_clients: float) -> float:
    """The multiplier ``z_Δ`` of the delta noise so that the round's mechanism has multiplier ``z``.

    Fixed clipping: ``z``. Adaptive: the count of centred bits (sensitivity 1/2, noise ``σ_b``, i.e.
    multiplier ``2σ_b``) is released from the same sample, and the pair is one Gaussian with
    multiplier ``(z_Δ⁻² + (2σ_b)⁻²)^(-1/2)`` (Andrew et al. 2021, Thm. 1;
    :func:`~trustnlp.privacy.quantile.joint_noise_multiplier`), so
    ``z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2)``, which needs ``2σ_b > z``. ``z = 0``: 0 (no privacy).
    """
    z = config.noise_multiplier
    if not config.adaptive or z == 0:
        return z
    sb = count_noise_std(config, expected_clients)
    if not 2.0 * sb > z:
        raise ConfigError(
            f"Expected `count_noise_multiplier` (sigma_b = {sb:.6g}"
            f"{' = expected_clients / 20' if config.count_noise_multiplier is None else ''}) to be > "
            f"noise_multiplier / 2 = {z / 2:.6g}, but it is not: with adaptive clipping the clipped-count "
            "release uses part of the privacy budget, and the delta noise multiplier "
            "z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2 only exists when 2 sigma_b > z (Andrew et al. 2021, Thm. 1). "
            "Raise count_noise_multiplier or clients_per_round, or lower noise_multiplier.")
    z_delta = (z ** -2 - (2.0 * sb) ** -2) ** -0.5
    joint = joint_noise_multiplier(z_delta, 2.0 * sb)
    if not math.isclose(joint, z, rel_tol=1e-9):  # pragma: no cover - an identity
        raise ConfigError(f"Internal check failed: joint noise multiplier {joint} != {z}.")
    return z_delta


def adaptive_clip_update(clip_norm: float, norms: Sequence[float] | np.ndarray | torch.Tensor, *,
                         config: ClientDPConfig, expected_clients: float, generator: torch.Generator) -> float:
    """One geometric quantile step of Andrew et al. 2021 from the round's pre-clip norms.

    ``b̄ = 1/2 + (Σ_k (1[‖Δ_k‖ <= C] - 1/2) + N(0, σ_b²)) / expected_clients`` and
    ``C <- C · exp(-η_C (b̄ - γ))``. The centred bits give the count sensitivity 1/2 used by
    :func:`effective_noise_multiplier`; with exactly ``expected_clients`` clients ``b̄`` is the plain
    noisy fraction. Releasing ``b̄`` is accounted for together with the round's delta (one Gaussian of
    multiplier ``z``), so it must come from the same sample as the aggregate that used ``clip_norm``.
    One standard normal is drawn from ``generator`` (none when ``σ_b = 0``).
    """
    c = _check_positive(clip_norm, "clip_norm")
    m = _check_positive(expected_clients, "expected_clients")
    arr = np.asarray(norms.detach().cpu().double() if isinstance(norms, torch.Tensor) else norms, dtype=np.float64)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DataError(expected("norms", "a 1-D sequence of finite norms >= 0", norms))
    sb = count_noise_std(config, m)
    noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * sb if sb > 0 else 0.0
    centred = float(np.sum(arr <= c)) - 0.5 * arr.size
    b_bar = 0.5 + (centred + noise) / m
    return c * math.exp(-config.clip_lr * (b_bar - config.target_quantile))


# -- accounting -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _replace_one_multiplier() -> float:
    """The factor between our ``z`` and the ``GaussianDpEvent`` multiplier under REPLACE_ONE.

    Probes the installed dp-accounting: if a ``GaussianDpEvent(1)`` under replace-one has RDP ``α / 2``,
    its multiplier is read as ``std / L2-sensitivity`` (0.6.0) and our sum (sensitivity ``2C``) needs
    ``z / 2``; if it has RDP ``α / 8``, the library doubles the sensitivity itself and ``z`` is passed.
    """
    probe = rdp.RdpAccountant(orders=[2.0], neighboring_relation=NeighboringRelation.REPLACE_ONE)
    probe.compose(dp_accounting.GaussianDpEvent(1.0))
    value = float(probe.rdp[0])
    if math.isclose(value, 1.0, rel_tol=1e-9):
        return 0.5
    if math.isclose(value, 0.25, rel_tol=1e-9):
        return 1.0
    raise ConfigError(f"The installed dp_accounting gives RDP {value} at order 2 for GaussianDpEvent(1) under "
                      "REPLACE_ONE (expected 1.0 or 0.25); cannot tell its sensitivity convention.")


@functools.lru_cache(maxsize=64)
def _wor_rdp_vector(sigma: float, num_clients: int, clients_per_round: int) -> np.ndarray:
    """RDP (default orders) of one round: ``m`` of ``K`` without replacement, Gaussian ``sigma`` (replace-one)."""
    account = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    account.compose(dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, clients_per_round, dp_accounting.GaussianDpEvent(sigma)))
    vec = account.rdp
    vec.setflags(write=False)
    return vec


def _check_sampling(sampling: object, num_clients: object, clients_per_round: object, rounds: object,
                    delta: object, accountant: object) -> tuple[str, int, int, int, float, str]:
    if sampling not in SAMPLINGS:
        raise ConfigError(expected("sampling", "one of " + ", ".join(map(repr, SAMPLINGS)), sampling))
    k = acc._check_int(num_clients, "num_clients", 1)
    m = acc._check_int(clients_per_round, "clients_per_round", 1)
    if m > k:
        raise ConfigError(expected("clients_per_round", f"<= num_clients ({k})", m))
    t = acc._check_int(rounds, "rounds", 1)
    d, a = acc._check_delta(delta), acc._check_accountant(accountant)
    if sampling == "uniform" and a == "pld":
        raise ConfigError(expected("accountant", "'rdp' with sampling='uniform' (dp-accounting's PLD accountant has "
                                   "no fixed-size sampling without replacement; use sampling='poisson' for PLD)", a))
    return str(sampling), k, m, t, d, a


def _uniform_epsilon(z: float, k: int, m: int, rounds: int, delta: float) -> float:
    if z == 0:
        return math.inf
    vec = _wor_rdp_vector(z * _replace_one_multiplier(), k, m)
    return float(rdp.compute_epsilon(acc._rdp_orders(), rounds * vec, delta)[0])


def client_dp_epsilon(*, noise_multiplier: float, sampling: str, num_clients: int, clients_per_round: int,
                      rounds: int, delta: float, accountant: str = "rdp") -> float:
    """Client-level epsilon at ``delta`` after ``rounds`` DP-FedAvg rounds (see the module docs).

    ``noise_multiplier`` is ``z`` (with adaptive clipping: the combined multiplier, i.e.
    ``config.noise_multiplier``). ``poisson``: ``PoissonSampledDpEvent(m / K, GaussianDpEvent(z))``,
    add/remove-one-client, ``rdp`` or ``pld`` (the computation of :func:`trustnlp.privacy.accounting.compute_epsilon`).
    ``uniform``: ``SampledWithoutReplacementDpEvent(K, m, GaussianDpEvent(z / 2))`` under replace-one
    (the clipped sum's sensitivity is ``2C``), ``rdp`` only. ``num_clients`` is the population the ``m``
    are drawn from each round: with only part of the clients available, pass the smallest available
    population (a larger ``m / K`` gives a larger epsilon, so this is an upper bound). ``z = 0``: inf.
    """
    z = acc._check_sigma(noise_multiplier)
    sampling, k, m, t, d, a = _check_sampling(sampling, num_clients, clients_per_round, rounds, delta, accountant)
    if sampling == "poisson":
        return acc.compute_epsilon(noise_multiplier=z, sampling_rate=m / k, steps=t, delta=d, accountant=a)
    return _uniform_epsilon(z, k, m, t, d)


def _search(eps_of: Callable[[float], float], target: float, guess: float, factor: float) -> float:
    """The smallest feasible ``z`` (``eps_of`` decreasing in ``z``), up to ``0.999 target <= eps_of(z) <= target``.

    Brackets the boundary from ``guess`` (steps ``× factor``), then shrinks the bracket by the Illinois
    variant of regula falsi on ``(log z, log eps)`` (epsilon is smooth in ``z``, so a handful of
    evaluations suffice), falling back to bisection, until ``eps`` of the feasible end is within
    ``[0.999 target, target]`` or the bracket is ``CALIBRATION_RTOL`` narrow with ``eps >= 0.99 target``.
    """
    lo_bound, hi_bound = 1e-2, 1e4
    e = eps_of(guess)
    if e <= target:
        hi, e_hi, lo = guess, e, max(guess / factor, lo_bound)
        while (e_lo := eps_of(lo)) <= target:
            if lo == lo_bound:
                raise ConfigError(f"target_epsilon={target} is so large that noise_multiplier={lo_bound} already gives "
                                  f"epsilon={e_lo:.4g}; give noise_multiplier directly.")
            hi, e_hi, lo = lo, e_lo, max(lo / factor, lo_bound)
    else:
        lo, e_lo, hi = guess, e, min(guess * factor, hi_bound)
        while (e_hi := eps_of(hi)) > target:
            if hi == hi_bound:
                raise ConfigError(f"target_epsilon={target} is unreachable: even noise_multiplier={hi_bound} gives "
                                  f"epsilon={e_hi:.4g}; raise the target or delta, or run fewer rounds or sample fewer "
                                  "clients per round.")
            lo, e_lo, hi = hi, e_hi, min(hi * factor, hi_bound)
    aim = math.log(0.998 * target)
    w_lo = w_hi = 1.0  # Illinois weights on the ends' residuals
    last = ""
    for _ in range(200):
        if e_hi >= 0.999 * target or (hi - lo <= CALIBRATION_RTOL * hi and e_hi >= 0.99 * target):
            break
        mid = 0.5 * (lo + hi)
        if math.isfinite(e_lo) and e_lo > 0 and e_hi > 0:
            r_lo, r_hi = w_lo * (math.log(e_lo) - aim), w_hi * (math.log(e_hi) - aim)
            if r_lo > 0 > r_hi:
                x = math.log(lo) + (math.log(hi) - math.log(lo)) * r_lo / (r_lo - r_hi)
                mid = min(max(math.exp(x), lo + 0.01 * (hi - lo)), hi - 0.01 * (hi - lo))
        if mid in (lo, hi):
            break
        if (e := eps_of(mid)) <= target:
            hi, e_hi, w_hi = mid, e, 1.0
            w_lo, last = (0.5 * w_lo if last == "hi" else w_lo), "hi"
        else:
            lo, e_lo, w_lo = mid, e, 1.0
            w_hi, last = (0.5 * w_hi if last == "lo" else w_hi), "lo"
    return hi


def calibrate_client_noise(target_epsilon: float, delta: float, *, sampling: str, num_clients: int,
                           clients_per_round: int, rounds: int, accountant: str = "rdp") -> float:
    """The smallest ``z`` with ``0.99 target <= client_dp_epsilon(z) <= target``.

    ``poisson``: :func:`trustnlp.privacy.budget.calibrate_noise` with ``q = m / K`` and ``rounds`` steps
    (bracketing + bisection to a relative bracket of 1e-5). ``uniform``: each replace-one RDP evaluation
    costs ~0.2 s, so the search (:func:`_search`) starts from twice the Poisson answer and stops once
    ``0.999 target <= eps <= target`` (about 6 evaluations). With adaptive clipping the result is the
    combined ``z`` (``ClientDPConfig.noise_multiplier``).
    """
    target = acc._check_epsilon(target_epsilon)
    sampling, k, m, t, d, a = _check_sampling(sampling, num_clients, clients_per_round, rounds, delta, accountant)
    if sampling == "poisson":
        return calibrate_noise(target, d, m / k, t, accountant=a)
    try:
        guess = 2.0 * calibrate_noise(target, d, m / k, t, accountant="rdp")
    except ConfigError:  # outside calibrate_noise's bracket: start from 1
        guess = 1.0
    return _search(lambda z: _uniform_epsilon(z, k, m, t, d), target, guess, 1.5)


# -- selection ------------------------------------------------------------------------------------


def check_selection_for_client_dp(selection_spec: str) -> None:
    """Refuse a ``--selection`` whose sample depends on the clients' private data.

    The client-level guarantee rests on privacy amplification by sampling, which assumes the round's
    sample is drawn independently of the data: the private data set enters only through the clipped
    deltas of whoever was sampled. Allowed:

    - ``uniform``: ``m`` of the available clients uniformly without replacement (account with
      ``sampling="uniform"``).
    - ``activity:0``: Poisson sampling at the constant rate ``m / K`` (``sampling="poisson"``). The
      rate is constant only if every client stays eligible (clients without data must not be dropped
      from the population, or the rate ``m / #{n_k > 0}`` depends on the data).
    - ``availability[:HOURS]``: uniform among the devices online in the round's hour; being online is
      a function of the device's time zone and a seeded window start (public, not of the client's
      examples or losses), so the sample is data-independent under replace-one neighbouring (the client,
      and its time zone, stays; its data is replaced). Account with ``sampling="uniform"`` and
      ``num_clients`` = the smallest online population of any round (each round samples ``m`` of the
      online ones, a higher rate than ``m / K``).

    Refused (:class:`~trustnlp.errors.ConfigError` naming the reason): ``activity`` with ``BETA > 0``,
    ``power-of-choice`` and ``oort``.
    """
    kind, value = parse_selection_spec(selection_spec)
    if kind in ("uniform", "availability"):
        return
    if kind == "activity":
        beta = 1.0 if value is None else value
        if beta == 0:
            return
        raise ConfigError(
            f"Selection {selection_spec!r} cannot be used with client-level DP: activity-based sampling includes "
            f"client k with probability proportional to n_k^{beta:g}, and n_k (how many examples the client holds) "
            "is private data, so who is sampled reveals it and amplification by sampling (which assumes a "
            "data-independent sample) does not hold. Use 'uniform' or 'activity:0' (Poisson at a constant rate).")
    if kind == "power-of-choice":
        raise ConfigError(
            f"Selection {selection_spec!r} cannot be used with client-level DP: power-of-choice queries candidates' "
            "local losses (computed on their private data) and keeps the highest-loss ones, and draws candidates "
            "with probability proportional to n_k (private), so the sample is a non-private function of the data "
            "and amplification by sampling does not hold. Use 'uniform' or 'activity:0'.")
    raise ConfigError(
        f"Selection {selection_spec!r} cannot be used with client-level DP: Oort selects by a utility built from "
        "the losses and example counts that participants report (private loss feedback), so later samples depend "
        "on private data without noise and amplification by sampling does not hold. Use 'uniform' or 'activity:0'.")
