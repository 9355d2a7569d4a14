"""The server side of a round after local training: faults, deadlines, validation, and one of plain,
robust, client-level-DP or secure aggregation, then the strategy's server optimiser step.

:class:`RoundAggregator` runs, for the round's client updates:

1. **Fault injection** (``faulty_fraction``, ``fault``): exactly ``round(F m)`` of the round's clients
   (seeded by ``(seed, round)``) report a faulty update instead (:mod:`trustnlp.federated.robust`:
   ``nan``, ``scale:K``, ``signflip``, or ``dropout`` = never report).
2. **Deadline** (``deadline``): device ``k`` needs ``steps_k / speed_k`` time units (``speed_k ~
   LogNormal(0, 0.5)``, seeded per device); later than the deadline, its update is dropped.
3. **Aggregation**, one of:

   - *secure aggregation* (``secure_aggregation``): each client validates its own update (a non-finite
     one is not sent: the client drops out before masking) and clips its delta to ``max_update_norm``
     (or the client-DP clip norm) before masking; the server learns only the sum
     (:func:`trustnlp.federated.secagg.secure_sum`; ``secagg_dropout`` of the senders vanish after
     masking, their inputs stay in the sum). The summed vector is ``n_k Δ_k`` with ``n_k`` appended
     (sample weighting), ``w_k Δ_k`` (Horvitz-Thompson), or the clipped ``Δ_k`` (client DP);
   - otherwise **server-side validation** rejects (and records, with the reason) updates with
     missing or misshapen parameters, NaN/Inf, or a delta norm over ``max_update_norm``; then
     *client-level DP* (DP-FedAvg, :mod:`trustnlp.federated.client_dp`), or a *robust rule*
     (``robust``: coordinate median, trimmed mean, Krum, multi-Krum over the client models), or the
     strategy's own aggregation (sample-weighted or Horvitz-Thompson).
4. The pseudo-gradient goes through the strategy's server optimiser (``Strategy.apply``).

What can be combined (``FederatedConfig`` refuses the rest, with the reason):

| | validation | robust rules | client DP | secure aggregation |
|---|---|---|---|---|
| validation | - | yes (validated first) | yes (validated first) | client-side only |
| robust rules | yes | - | no: DP-FedAvg's noise is calibrated to the clipped *sum* | no: the server never sees individual updates |
| client DP | yes | no | - | yes: the server adds the noise to the secure sum (trusted to do so) |
| secure aggregation | client-side | no | yes | - |

Client DP also needs a selection independent of private data (``uniform`` or ``activity:0``), the
static setting, and sample weighting.

The adaptive clip norm is the aggregator's only state (``state_dict``), checkpointed with the round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from trustnlp.errors import ConfigError
from trustnlp.federated.selection import round_rng
from trustnlp.federated.strategy import ClientUpdate, FitInstruction, ServerState, Strategy

__all__ = ["RoundAggregator", "device_speeds"]

_SPEED, _NOISE, _SECAGG_DROP = 41, 42, 43


def device_speeds(num_clients: int, *, seed: int, sigma: float = 0.5) -> np.ndarray:
    """Each device's relative speed, ``LogNormal(0, sigma)`` (seeded)."""
    return np.exp(sigma * round_rng(seed, 0, _SPEED).standard_normal(num_clients))


def _delta(params: Mapping[str, torch.Tensor], global_params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: params[k] - global_params[k] for k in global_params}


class RoundAggregator:
    """The server's aggregation pipeline for a :class:`~trustnlp.federated.config.FederatedConfig` (see the module docs).

    Args:
        config: the run's configuration (fault, deadline, validation, robust, client DP, secure aggregation).
        num_clients: the population size ``K``.
        noise_multiplier: client DP's ``z`` (calibrated by the caller), or ``None`` without client DP.
    """

    def __init__(self, config: Any, *, num_clients: int, noise_multiplier: float | None = None) -> None:
        self.config = config
        self.num_clients = int(num_clients)
        self.speeds = device_speeds(num_clients, seed=config.seed)
        self.dp = None
        self.clip_norm = float(config.clip_norm)
        if config.client_dp:
            from trustnlp.federated.client_dp import ClientDPConfig

            if noise_multiplier is None:
                raise ConfigError("Client-level DP needs a noise multiplier (give --epsilon or --noise-multiplier).")
            self.dp = ClientDPConfig(noise_multiplier=float(noise_multiplier), clip_norm=float(config.clip_norm),
                                     adaptive=bool(config.adaptive_clip), target_quantile=float(config.target_quantile))

    @property
    def plain(self) -> bool:
        """Nothing beyond the strategy's own aggregation (the engine's fast path)."""
        c = self.config
        return (not c.client_dp and not c.secure_aggregation and c.robust == "mean" and not c.faulty_fraction
                and c.deadline is None and c.max_update_norm is None)

    def state_dict(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clip_norm = float(state.get("clip_norm", self.config.clip_norm))

    # ----------------------------------------------------------------------------------------------
    def aggregate(self, rnd: int, strategy: Strategy, state: ServerState, updates: list[ClientUpdate],
                  instructions: Sequence[FitInstruction], *, steps: Mapping[int, int]) -> tuple[ServerState, dict[str, Any]]:
        """Faults, deadline, validation and aggregation of the round's ``updates``; the new state and the row facts."""
        from trustnlp.federated.robust import faulty_clients, inject_fault, parse_fault_spec

        c = self.config
        info: dict[str, Any] = {}
        dropped: list[dict[str, Any]] = []
        if c.faulty_fraction:
            kind, param = parse_fault_spec(c.fault)
            faulty = faulty_clients([u.client_id for u in updates], c.faulty_fraction, c.seed, rnd)
            info["faulty"] = sorted(int(i) for i in faulty)
            kept = []
            for u in updates:
                if u.client_id in faulty:
                    bad = inject_fault(u.params, state.params, kind, param)
                    if bad is None:
                        dropped.append({"client": u.client_id, "reason": "fault: dropout (never reported)"})
                        continue
                    u = replace(u, params=bad)
                kept.append(u)
            updates = kept
        if c.deadline is not None:
            kept = []
            for u in updates:
                t = steps.get(u.client_id, 0) / float(self.speeds[u.client_id])
                if t > c.deadline:
                    dropped.append({"client": u.client_id, "reason": f"missed the deadline ({t:.3g} > {c.deadline:g})"})
                else:
                    kept.append(u)
            updates = kept
        if dropped:
            info["dropped"] = dropped
        if c.secure_aggregation:
            new, more = self._secure(rnd, strategy, state, updates)
        else:
            new, more = self._validated(rnd, strategy, state, updates)
        info.update(more)
        return new, info

    # ----------------------------------------------------------------------------------------------
    def _noise_generator(self, rnd: int) -> torch.Generator:
        seed = int(np.random.SeedSequence([int(self.config.seed) % (2**63), int(rnd), _NOISE]).generate_state(1)[0])
        return torch.Generator().manual_seed(seed)

    def _validated(self, rnd: int, strategy: Strategy, state: ServerState,
                   updates: list[ClientUpdate]) -> tuple[ServerState, dict[str, Any]]:
        from trustnlp.federated.robust import aggregate_robust, flatten, unflatten, validate_update

        c = self.config
        info: dict[str, Any] = {}
        rejected, ok = [], []
        for u in updates:
            why = validate_update(u.params, state.params, max_norm=c.max_update_norm, global_params=state.params)
            if why is None:
                ok.append(u)
            else:
                rejected.append({"client": u.client_id, "reason": why})
        if rejected:
            info["rejected"] = rejected
        base = {"num_clients": len(ok), "num_examples": sum(int(u.num_examples) for u in ok)}
        losses = [(u.metrics["train_loss"], u.num_examples) for u in ok if "train_loss" in u.metrics]
        if losses:
            base["train_loss"] = sum(v * w for v, w in losses) / max(sum(w for _, w in losses), 1)
        if self.dp is not None:
            return self._dp(rnd, strategy, state, [_delta(u.params, state.params) for u in ok], base, info)
        if not ok:
            new, m = strategy.aggregate(rnd, state, [])
            return new, {**m, **info}
        if c.robust != "mean":
            from trustnlp.federated.robust import parse_robust_spec

            kind, opts = parse_robust_spec(c.robust)
            if kind in ("krum", "multi-krum") and len(ok) < 2 * opts["f"] + 3:
                info["robust"] = {"rule": kind, "skipped": f"{len(ok)} valid update(s) < 2f + 3 = {2 * opts['f'] + 3}: "
                                                           "the round is skipped, the model kept"}
                new, m = strategy.aggregate(rnd, state, [])
                return new, {**m, **info}
            vec, rule = aggregate_robust(c.robust, [flatten({k: u.params[k] for k in state.params}) for u in ok])
            agg = unflatten(vec, state.params)
            info["robust"] = {k: v for k, v in rule.items() if k != "scores"}
            new, m = strategy.apply(rnd, state, {k: state.params[k] - agg[k] for k in state.params}, base)
            return new, {**m, **info}
        new, m = strategy.aggregate(rnd, state, ok)
        return new, {**m, **info}

    def _dp(self, rnd: int, strategy: Strategy, state: ServerState, deltas: list[dict[str, torch.Tensor]],
            base: dict[str, Any], info: dict[str, Any], *, summed: dict[str, torch.Tensor] | None = None,
            norms: list[float] | None = None) -> tuple[ServerState, dict[str, Any]]:
        """DP-FedAvg: clipped deltas (or their secure sum) + Gaussian noise, over the fixed denominator."""
        from trustnlp.federated.client_dp import adaptive_clip_update, dp_fedavg_aggregate

        assert self.dp is not None
        gen = self._noise_generator(rnd)
        expected = float(self.config.clients_per_round)
        if summed is None:
            agg, dp_info = dp_fedavg_aggregate(deltas, config=self.dp, clip_norm=self.clip_norm, expected_clients=expected,
                                               generator=gen, like=state.params)
            norms = dp_info["norms"]
        else:  # the secure sum of clipped deltas: the server adds the noise
            from trustnlp.federated.client_dp import effective_noise_multiplier

            z = effective_noise_multiplier(self.dp, expected)
            agg = {k: (v + torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.dtype) * z * self.clip_norm) / expected
                   for k, v in summed.items()}
            dp_info = {"noise_multiplier": z, "noise_std": z * self.clip_norm / expected}
        info["client_dp"] = {"clip_norm": self.clip_norm, "noise_std": dp_info.get("noise_std"),
                             "clipped_fraction": float(np.mean([n > self.clip_norm for n in norms])) if norms else None}
        if self.dp.adaptive and norms is not None:
            self.clip_norm = adaptive_clip_update(self.clip_norm, norms, config=self.dp, expected_clients=expected,
                                                  generator=gen)
        new, m = strategy.apply(rnd, state, {k: -agg[k] for k in state.params}, base)
        return new, {**m, **info}

    def _secure(self, rnd: int, strategy: Strategy, state: ServerState,
                updates: list[ClientUpdate]) -> tuple[ServerState, dict[str, Any]]:
        from trustnlp.federated.robust import flatten, unflatten
        from trustnlp.federated.secagg import SecAggConfig, secure_sum

        c = self.config
        info: dict[str, Any] = {}
        bound = self.clip_norm if self.dp is not None else c.max_update_norm
        inputs: dict[int, np.ndarray] = {}
        refused, norms = [], []
        weights = [u.weight for u in updates]
        ht = any(w is not None for w in weights)
        for u in updates:  # client side: validate and clip its own update, then mask it
            d = flatten(_delta({k: u.params[k] for k in state.params}, state.params)).double()
            if not torch.isfinite(d).all():
                refused.append({"client": u.client_id, "reason": "client-side validation: non-finite update, not sent"})
                continue
            norm = float(d.norm())
            norms.append(norm)
            if bound is not None and norm > bound:
                d = d * (bound / norm)
            if self.dp is not None:
                vec = d
            elif ht:
                vec = d * float(u.weight)
            else:
                vec = torch.cat([d * float(u.num_examples), torch.tensor([float(u.num_examples)], dtype=torch.float64)])
            inputs[u.client_id] = vec.numpy()
        if refused:
            info["dropped_before_masking"] = refused
        base = {"num_clients": len(inputs), "num_examples": sum(int(u.num_examples) for u in updates if u.client_id in inputs)}
        if len(inputs) < 2:
            if self.dp is not None:
                return self._dp(rnd, strategy, state, [], base, info)
            new, m = strategy.aggregate(rnd, state, [])
            return new, {**m, **info, "secagg": "skipped: fewer than 2 clients"}
        t = max(2, math.ceil(c.secagg_threshold * len(inputs)))
        ids = sorted(inputs)
        after = set()
        if c.secagg_dropout:
            k = int(round(c.secagg_dropout * len(ids)))
            after = set(round_rng(c.seed, rnd, _SECAGG_DROP).choice(ids, size=k, replace=False).tolist()) if k else set()
        res = secure_sum(inputs, SecAggConfig(threshold=t, fractional_bits=c.fractional_bits), seed=int(c.seed) * 100003 + rnd,
                         drop_after_masking=sorted(after))
        info["secagg"] = {"threshold": t, "contributors": len(res.contributors), "dropped_after_masking": sorted(after),
                          "bytes": res.stats.total_bytes}
        total = torch.from_numpy(res.sum)
        if self.dp is not None:
            summed = unflatten(total, {k: v.double() for k, v in state.params.items()})
            return self._dp(rnd, strategy, state, [], base, info, summed={k: v.to(state.params[k].dtype) for k, v in summed.items()},
                            norms=norms)
        if ht:
            mean_delta = unflatten(total, state.params)
        else:
            mean_delta = unflatten(total[:-1] / float(total[-1]), state.params)
        new, m = strategy.apply(rnd, state, {k: -mean_delta[k].to(state.params[k].dtype) for k in state.params}, base)
        return new, {**m, **info}
