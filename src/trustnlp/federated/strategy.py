"""Federated strategies in Flower's message-API shape: ``configure_round`` and ``aggregate``.

A :class:`Strategy` is what the server does: ``initialize(params)`` makes the server state,
``configure_round(round, state, selector, available=...)`` picks the round's clients and says how
they train (:class:`FitInstruction`), and ``aggregate(round, state, results)`` turns their
:class:`ClientUpdate` s into the next state (the state is passed in and returned, so a strategy
holds no mutable state and a checkpoint is just the state).

Aggregation is example-weighted (McMahan et al. 2017): ``xbar = sum_k n_k x^k / sum_k n_k`` with
``n_k`` the client's local training examples; the pseudo-gradient ``g = x - xbar`` goes through the
strategy's server optimiser (:mod:`trustnlp.federated.server_opt`): ``x <- x + update(g)``.

Algorithms (defaults in :data:`trustnlp.federated.config.ALGORITHM_DEFAULTS`): :class:`FedAvg`,
:class:`FedAvgM`, :class:`FedProx` (FedAvg's aggregation; clients minimise
``f_k(w) + mu/2 ||w - x||^2``, Li et al. 2020), :class:`FedAdam`, :class:`FedYogi`,
:class:`FedAdagrad` (Reddi et al. 2021).

Example:
    >>> s = FedAvg()
    >>> state = s.initialize({"w": torch.zeros(1)})
    >>> ups = [ClientUpdate(0, {"w": torch.tensor([1.0])}, 1), ClientUpdate(1, {"w": torch.tensor([4.0])}, 2)]
    >>> state, metrics = s.aggregate(1, state, ups)
    >>> float(state.params["w"][0]), metrics["num_examples"]
    (3.0, 3)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trustnlp.errors import ConfigError, expected
from trustnlp.federated import server_opt
from trustnlp.federated.selection import SelectionContext, Selector

__all__ = ["ServerState", "FitInstruction", "ClientUpdate", "Strategy", "FedAvg", "FedAvgM", "FedProx", "FedAdam",
           "FedYogi", "FedAdagrad", "make_strategy", "weighted_mean"]


@dataclass
class ServerState:
    """The server's state after ``round`` rounds: global (trainable) parameters and optimiser state."""

    round: int
    params: dict[str, torch.Tensor]
    opt_state: dict[str, Any]


@dataclass(frozen=True)
class FitInstruction:
    """One selected client and its local-training settings for the round (e.g. ``{"mu": 0.01}``), with its
    inclusion probability (``None`` when the selector does not know it exactly) and why it was picked."""

    client_id: int
    config: Mapping[str, Any] = field(default_factory=dict)
    inclusion: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back: its model's (trainable) parameters after local training, its number
    of local training examples, and metrics (e.g. ``train_loss``, ``steps``). ``weight``: an explicit,
    unnormalised aggregation weight (Horvitz-Thompson ``n_k / (N pi_k)``); ``None`` = example-weighted mean."""

    client_id: int
    params: Mapping[str, torch.Tensor]
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    weight: float | None = None


def weighted_mean(results: Sequence[ClientUpdate]) -> dict[str, torch.Tensor]:
    """``sum_k n_k x^k / sum_k n_k`` per parameter (accumulated in the parameters' dtype)."""
    total = sum(int(r.num_examples) for r in results)
    if total <= 0:
        raise ConfigError(expected("total client examples", "> 0", total))
    out: dict[str, torch.Tensor] = {}
    for r in results:
        for k, v in r.params.items():
            if k in out:
                out[k].add_(v, alpha=float(r.num_examples))
            else:
                out[k] = v * float(r.num_examples)
    return {k: v.div_(float(total)) for k, v in out.items()}


class Strategy:
    """FedAvg-style aggregation followed by a server optimiser.

    Args:
        transform: the server optimiser (a :class:`~trustnlp.federated.server_opt.GradientTransform`).
        name: the algorithm's name (recorded in results).
        client_config: sent to every selected client (e.g. FedProx's ``mu``).
        options: the algorithm's options (recorded in results).
    """

    def __init__(self, transform: server_opt.GradientTransform, *, name: str, client_config: Mapping[str, Any] | None = None,
                 options: Mapping[str, float] | None = None) -> None:
        self.transform = transform
        self.name = name
        self.client_config = dict(client_config or {})
        self.options = dict(options or {})

    def initialize(self, params: Mapping[str, torch.Tensor]) -> ServerState:
        """Round-0 state from the initial global parameters (copied)."""
        p = {k: v.detach().clone() for k, v in params.items()}
        return ServerState(round=0, params=p, opt_state=self.transform.init(p))

    def configure_round(self, round: int, state: ServerState, selector: Selector, *,  # noqa: A002 - Flower's name
                        available: np.ndarray, context: SelectionContext | None = None) -> list[FitInstruction]:
        """The round's clients (``selector`` picks among ``available``, knowing ``context``) and their settings."""
        sel = selector.select(round, np.asarray(available, dtype=np.int64), context)
        pis = sel.inclusion if sel.inclusion is not None else [None] * len(sel.clients)
        reasons = sel.reasons or ("",) * len(sel.clients)
        return [FitInstruction(int(c), self.client_config, None if p is None else float(p), r)
                for c, p, r in zip(sel.clients, pis, reasons)]

    def aggregate(self, round: int, state: ServerState,  # noqa: A002
                  results: Sequence[ClientUpdate]) -> tuple[ServerState, dict[str, Any]]:
        """Weighted mean, pseudo-gradient, server step. No results: the state is kept (round advanced).

        With explicit weights (``ClientUpdate.weight``, all or none) the pseudo-gradient is the unnormalised
        ``g = sum_k w_k (x - x^k)`` (Horvitz-Thompson), else ``g = x - xbar`` with the example-weighted mean.
        """
        if not results:
            return ServerState(round, state.params, state.opt_state), {"num_clients": 0, "num_examples": 0}
        explicit = [r.weight is not None for r in results]
        if any(explicit) and not all(explicit):
            raise ConfigError("Expected either every client update to carry an aggregation weight or none, but got a mix.")
        for r in results:
            missing = set(state.params) - set(r.params)
            if missing:
                raise ConfigError(f"Client {r.client_id}'s update lacks parameters {sorted(missing)[:5]}; "
                                  "expected every global parameter.")
        if all(explicit):
            grads = {k: sum(float(r.weight) * (state.params[k] - r.params[k]) for r in results) for k in state.params}
        else:
            mean = weighted_mean(results)
            grads = {k: state.params[k] - mean[k] for k in state.params}
        n = sum(int(r.num_examples) for r in results)
        metrics: dict[str, Any] = {"num_clients": len(results), "num_examples": n}
        losses = [(r.metrics["train_loss"], r.num_examples) for r in results if "train_loss" in r.metrics]
        if losses:
            metrics["train_loss"] = sum(v * w for v, w in losses) / max(sum(w for _, w in losses), 1)
        return self.apply(round, state, grads, metrics)

    def apply(self, round: int, state: ServerState, grads: Mapping[str, torch.Tensor],  # noqa: A002
              metrics: Mapping[str, Any] | None = None) -> tuple[ServerState, dict[str, Any]]:
        """The server optimiser's step on a pseudo-gradient ``g`` (``x <- x + update(g)``), for aggregates formed
        elsewhere (robust rules, client-level DP, secure aggregation)."""
        missing = set(state.params) - set(grads)
        if missing:
            raise ConfigError(f"The aggregate lacks parameters {sorted(missing)[:5]}; expected every global parameter.")
        updates, opt_state = self.transform.update(dict(grads), state.opt_state)
        params = {k: state.params[k] + updates[k] for k in state.params}
        out = dict(metrics or {})
        out["pseudo_grad_norm"] = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
        return ServerState(round, params, opt_state), out


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data"): ``x <- x - server_lr (x - xbar)``."""

    def __init__(self, *, server_lr: float = 1.0) -> None:
        super().__init__(server_opt.sgd(server_lr), name="fedavg", options={"server_lr": server_lr})


class FedAvgM(Strategy):
    """FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification"): server momentum ``v <- beta v + g``; ``x <- x - server_lr v``."""

    def __init__(self, *, server_lr: float = 1.0, server_momentum: float = 0.9) -> None:
        super().__init__(server_opt.momentum(server_lr, server_momentum), name="fedavgm",
                         options={"server_lr": server_lr, "server_momentum": server_momentum})


class FedProx(Strategy):
    """FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): FedAvg's server
    step; each client minimises ``f_k(w) + (mu/2) ||w - x||^2`` (its gradient gains ``mu (w - x)``)."""

    def __init__(self, *, mu: float = 0.01, server_lr: float = 1.0) -> None:
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0 or mu == float("inf"):
            raise ConfigError(expected("mu", "a finite number >= 0", mu))
        super().__init__(server_opt.sgd(server_lr), name="fedprox", client_config={"mu": float(mu)},
                         options={"server_lr": server_lr, "mu": mu})


class FedAdam(Strategy):
    """FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization")."""

    def __init__(self, *, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 initial_accumulator: float | None = None) -> None:
        super().__init__(server_opt.adam(server_lr, b1=beta1, b2=beta2, tau=tau, initial_accumulator=initial_accumulator),
                         name="fedadam", options={"server_lr": server_lr, "beta1": beta1, "beta2": beta2, "tau": tau})


class FedYogi(Strategy):
    """FedYogi (Reddi et al. 2021)."""

    def __init__(self, *, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
                 initial_accumulator: float | None = None) -> None:
        super().__init__(server_opt.yogi(server_lr, b1=beta1, b2=beta2, tau=tau, initial_accumulator=initial_accumulator),
                         name="fedyogi", options={"server_lr": server_lr, "beta1": beta1, "beta2": beta2, "tau": tau})


class FedAdagrad(Strategy):
    """FedAdagrad (Reddi et al. 2021)."""

    def __init__(self, *, server_lr: float = 1e-1, beta1: float = 0.0, tau: float = 1e-3,
                 initial_accumulator: float | None = None) -> None:
        super().__init__(server_opt.adagrad(server_lr, b1=beta1, tau=tau, initial_accumulator=initial_accumulator),
                         name="fedadagrad", options={"server_lr": server_lr, "beta1": beta1, "tau": tau})


_CLASSES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedprox": FedProx, "fedadam": FedAdam,
                                       "fedyogi": FedYogi, "fedadagrad": FedAdagrad}


def make_strategy(algorithm: str, **options: float) -> Strategy:
    """The strategy for an algorithm name with its options (see ``FederatedConfig.algorithm_options``)."""
    if algorithm not in _CLASSES:
        raise ConfigError(expected("algorithm", f"one of {list(_CLASSES)}", algorithm))
    return _CLASSES[algorithm](**options)
