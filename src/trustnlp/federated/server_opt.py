"""Server optimisers as small gradient transforms (optax in PyTorch form).

A transform has ``init(params) -> state`` and ``update(grads, state) -> (updates, state)``; the
server applies ``x <- x + updates``. Transforms chain (:func:`chain`). The server's "gradient" is the
*pseudo-gradient* ``g_t = x_t - sum_k (n_k / n) x_t^k``: the global model minus the example-weighted
mean of the clients' models (``Delta_t = -g_t`` in Reddi et al. 2021). State is a dict of tensors
and numbers, so it checkpoints with ``trustnlp.checkpoint.split_tensors`` (safetensors + JSON).

The optimisers (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2; no bias
correction, as there):

- :func:`sgd` (FedAvg): ``x <- x - eta g``.
- :func:`momentum` (FedAvgM, Hsu et al. 2019): ``v <- beta v + g``; ``x <- x - eta v`` (``v_0 = 0``).
- :func:`adagrad`: ``m <- b1 m + (1 - b1) g``; ``v <- v + g^2``; ``x <- x - eta m / (sqrt(v) + tau)``.
- :func:`adam`: as adagrad with ``v <- b2 v + (1 - b2) g^2``.
- :func:`yogi`: as adagrad with ``v <- v - (1 - b2) g^2 sign(v - g^2)``.

The adaptive optimisers start from ``m_0 = 0`` and ``v_0 = initial_accumulator`` (default ``tau^2``,
the paper's ``v_{-1} >= tau^2``; Flower starts from 0).

Example:
    >>> t = adam(lr=0.1, b1=0.9, b2=0.99, tau=1e-3)
    >>> state = t.init({"w": torch.zeros(2)})
    >>> updates, state = t.update({"w": torch.tensor([1.0, -2.0])}, state)
    >>> [round(float(u), 4) for u in updates["w"]]
    [-0.099, 0.0995]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from trustnlp.errors import ConfigError, expected

__all__ = ["GradientTransform", "Params", "State", "scale", "trace", "scale_by_adaptive", "chain", "sgd", "momentum",
           "adagrad", "adam", "yogi"]

Params = dict[str, torch.Tensor]
State = dict[str, Any]


class GradientTransform(Protocol):
    """``init(params) -> state``; ``update(grads, state) -> (updates, state)``."""

    def init(self, params: Mapping[str, torch.Tensor]) -> State: ...

    def update(self, grads: Mapping[str, torch.Tensor], state: State) -> tuple[Params, State]: ...


def _rate(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ConfigError(expected(name, f"in [{low}, {high})", value))
    return float(value)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigError(expected(name, "a finite number > 0", value))
    return float(value)


class scale:  # noqa: N801 - lower-case like the optax transform it mirrors
    """``updates = factor * grads``."""

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def init(self, params: Mapping[str, torch.Tensor]) -> State:
        return {}

    def update(self, grads: Mapping[str, torch.Tensor], state: State) -> tuple[Params, State]:
        return {k: g * self.factor for k, g in grads.items()}, state


class trace:  # noqa: N801
    """Heavy-ball momentum: ``v <- decay * v + g``; ``updates = v``."""

    def __init__(self, decay: float) -> None:
        self.decay = _rate("server_momentum", decay)

    def init(self, params: Mapping[str, torch.Tensor]) -> State:
        return {"v": {k: torch.zeros_like(p) for k, p in params.items()}}

    def update(self, grads: Mapping[str, torch.Tensor], state: State) -> tuple[Params, State]:
        v = {k: self.decay * state["v"][k] + g for k, g in grads.items()}
        return dict(v), {"v": v}


class scale_by_adaptive:  # noqa: N801
    """Reddi et al.'s adaptive direction ``m / (sqrt(v) + tau)`` with first moment ``m`` and second
    moment ``v`` updated by ``rule`` (``adagrad``, ``adam`` or ``yogi``; see the module docs)."""

    RULES = ("adagrad", "adam", "yogi")

    def __init__(self, rule: str, *, b1: float, b2: float, tau: float, initial_accumulator: float | None = None) -> None:
        if rule not in self.RULES:
            raise ConfigError(expected("rule", f"one of {list(self.RULES)}", rule))
        self.rule = rule
        self.b1 = _rate("beta1", b1)
        self.b2 = _rate("beta2", b2)
        self.tau = _positive("tau", tau)
        v0 = self.tau**2 if initial_accumulator is None else initial_accumulator
        if isinstance(v0, bool) or not isinstance(v0, (int, float)) or v0 < 0:
            raise ConfigError(expected("initial_accumulator", ">= 0", initial_accumulator))
        self.v0 = float(v0)

    def init(self, params: Mapping[str, torch.Tensor]) -> State:
        return {"m": {k: torch.zeros_like(p) for k, p in params.items()},
                "v": {k: torch.full_like(p, self.v0) for k, p in params.items()}}

    def update(self, grads: Mapping[str, torch.Tensor], state: State) -> tuple[Params, State]:
        m_new, v_new, out = {}, {}, {}
        for k, g in grads.items():
            m = self.b1 * state["m"][k] + (1.0 - self.b1) * g
            g2 = g * g
            v = state["v"][k]
            if self.rule == "adagrad":
                v = v + g2
            elif self.rule == "adam":
                v = self.b2 * v + (1.0 - self.b2) * g2
            else:
                v = v - (1.0 - self.b2) * g2 * torch.sign(v - g2)
            m_new[k], v_new[k] = m, v
            out[k] = m / (torch.sqrt(v) + self.tau)
        return out, {"m": m_new, "v": v_new}


class chain:  # noqa: N801
    """Apply transforms in order; the state is one entry per transform (``"0"``, ``"1"``, ...)."""

    def __init__(self, *transforms: GradientTransform) -> None:
        self.transforms = transforms

    def init(self, params: Mapping[str, torch.Tensor]) -> State:
        return {str(i): t.init(params) for i, t in enumerate(self.transforms)}

    def update(self, grads: Mapping[str, torch.Tensor], state: State) -> tuple[Params, State]:
        out: Params = dict(grads)
        new: State = {}
        for i, t in enumerate(self.transforms):
            out, new[str(i)] = t.update(out, state[str(i)])
        return out, new


def sgd(lr: float) -> GradientTransform:
    """FedAvg's server step ``x <- x - lr * g`` (``lr = 1``: the weighted mean of the clients' models)."""
    return chain(scale(-_positive("server_lr", lr)))


def momentum(lr: float, beta: float) -> GradientTransform:
    """FedAvgM: ``v <- beta v + g``; ``x <- x - lr v``."""
    return chain(trace(beta), scale(-_positive("server_lr", lr)))


def adagrad(lr: float, *, b1: float = 0.0, tau: float = 1e-3, initial_accumulator: float | None = None) -> GradientTransform:
    """FedAdagrad (Reddi et al. 2021)."""
    return chain(scale_by_adaptive("adagrad", b1=b1, b2=0.0, tau=tau, initial_accumulator=initial_accumulator),
                 scale(-_positive("server_lr", lr)))


def adam(lr: float, *, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3,
         initial_accumulator: float | None = None) -> GradientTransform:
    """FedAdam (Reddi et al. 2021)."""
    return chain(scale_by_adaptive("adam", b1=b1, b2=b2, tau=tau, initial_accumulator=initial_accumulator),
                 scale(-_positive("server_lr", lr)))


def yogi(lr: float, *, b1: float = 0.9, b2: float = 0.99, tau: float = 1e-3,
         initial_accumulator: float | None = None) -> GradientTransform:
    """FedYogi (Reddi et al. 2021)."""
    return chain(scale_by_adaptive("yogi", b1=b1, b2=b2, tau=tau, initial_accumulator=initial_accumulator),
                 scale(-_positive("server_lr", lr)))
