"""Federated algorithms against independent references: central gradient descent, hand-computed
FedProx / FedAdam / FedYogi / FedAdagrad / FedAvgM steps (numpy), and Flower's own aggregation."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from fed_fixtures import bag, config, one_thread, params_of, population, synthetic

from trustnlp.data.partition import quantity_skew_partition
from trustnlp.errors import ConfigError
from trustnlp.federated import (
    ClientUpdate,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FederatedConfig,
    FedProx,
    FedYogi,
    LocalTraining,
    local_update,
    make_strategy,
    simulate,
)
from trustnlp.federated.vectorized import train_vectorized
from trustnlp.tasks import ClassifyTask

TASK = ClassifyTask(3)


def _grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradient of the mean loss, by plain autograd (independent of the training step)."""
    named = dict(model.named_parameters())
    loss = TASK.loss(model(batch["input_ids"], batch["attention_mask"]), batch, reduction="mean")
    gs = torch.autograd.grad(loss, list(named.values()))
    return dict(zip(named, gs))


@pytest.mark.parametrize("vectorize", ["off", "on"])
def test_fedavg_full_batch_equals_central_gradient_descent(vectorize: str) -> None:
    # K clients of unequal sizes, all selected, one full-batch SGD step each, server lr 1:
    # sum_k n_k/N (w - lr g_k) = w - lr * grad of the mean loss on the union (exact identity).
    data = synthetic(37, seed=1)
    part = quantity_skew_partition(len(data), 5, beta=1.0, seed=3)
    clients = population(data, part)
    assert len({c.num_examples for c in clients}) > 1
    model = bag(seed=2)
    central = copy.deepcopy(model)
    lr = 0.7
    cfg = config(rounds=1, clients_per_round=5, local_steps=1, batch_size=1000, lr=lr, server_lr=1.0, vectorize=vectorize)
    with one_thread():
        simulate(model, TASK, clients, config=cfg, progress=False)
    assert sum(c.num_examples for c in clients) == len(data)  # the clients hold the union, nothing held out
    g = _grads(central, data.batch(slice(None)))
    expected = {k: p.detach() - lr * g[k] for k, p in central.named_parameters()}
    got = params_of(model)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-13)
    assert max(float((got[k] - central.state_dict()[k]).abs().max()) for k in got) > 1e-3  # it moved


def test_fedprox_local_steps_match_hand_computation() -> None:
    # Two full-batch steps: w1 = w0 - lr g(w0); w2 = w1 - lr (g(w1) + mu (w1 - w0)).
    data = synthetic(9, seed=4)
    client = population(data, num_clients=1)[0]
    model = bag(seed=5)
    w0 = params_of(model)
    lr, mu = 0.4, 0.8
    local = LocalTraining(steps=2, batch_size=100, lr=lr)
    batch = data.batch(slice(None))
    ref = copy.deepcopy(model)
    g0 = _grads(ref, batch)
    with torch.no_grad():
        for k, p in ref.named_parameters():
            p -= lr * g0[k]
    w1 = params_of(ref)
    g1 = _grads(ref, batch)
    w2 = {k: w1[k] - lr * (g1[k] + mu * (w1[k] - w0[k])) for k in w0}
    with one_thread():
        upd = local_update(copy.deepcopy(model), TASK, client, w0, local, seed=0, config={"mu": mu})
        plain = local_update(copy.deepcopy(model), TASK, client, w0, local, seed=0, config={"mu": 0.0})
        vec = train_vectorized(model, TASK, [client], w0, local, seeds=[0], configs=[{"mu": mu}])[0]
    for k in w0:
        torch.testing.assert_close(upd.params[k], w2[k], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(vec.params[k], w2[k], rtol=1e-10, atol=1e-13)
    diff = max(float((upd.params[k] - plain.params[k]).abs().max()) for k in w0)
    assert diff > 1e-6  # the proximal term changed the second step


def _updates(rng: np.random.Generator, x: dict[str, np.ndarray], n: list[int]) -> list[ClientUpdate]:
    return [ClientUpdate(i, {k: torch.from_numpy(v + rng.normal(0, 0.3, v.shape)) for k, v in x.items()}, ni)
            for i, ni in enumerate(n)]


def _np(params: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in params.items()}


def _mean(updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
    total = sum(u.num_examples for u in updates)
    return {k: sum(u.params[k].numpy() * u.num_examples for u in updates) / total for k in updates[0].params}


@pytest.mark.parametrize("rule", ["adam", "yogi", "adagrad", "avgm"])
def test_server_optimisers_match_hand_computation(rule: str) -> None:
    rng = np.random.default_rng(0)
    x0 = {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=4)}
    lr, b1, b2, tau, beta = 0.05, 0.8, 0.95, 1e-3, 0.7
    strategy = {"adam": FedAdam(server_lr=lr, beta1=b1, beta2=b2, tau=tau),
                "yogi": FedYogi(server_lr=lr, beta1=b1, beta2=b2, tau=tau),
                "adagrad": FedAdagrad(server_lr=lr, beta1=b1, tau=tau),
                "avgm": FedAvgM(server_lr=lr, server_momentum=beta)}[rule]
    state = strategy.initialize({k: torch.from_numpy(v) for k, v in x0.items()})
    x = {k: v.copy() for k, v in x0.items()}
    m = {k: np.zeros_like(v) for k, v in x0.items()}
    v = {k: np.full_like(val, tau**2) for k, val in x0.items()}  # Reddi et al.: v_{-1} = tau^2
    mom = {k: np.zeros_like(val) for k, val in x0.items()}
    for rnd in (1, 2, 3):
        ups = _updates(rng, x, [3, 5, 2])
        delta = {k: _mean(ups)[k] - x[k] for k in x}  # Reddi's Delta_t = -pseudo-gradient
        for k in x:
            if rule == "avgm":
                mom[k] = beta * mom[k] + (-delta[k])
                x[k] = x[k] - lr * mom[k]
                continue
            m[k] = b1 * m[k] + (1 - b1) * delta[k]
            d2 = delta[k] ** 2
            if rule == "adam":
                v[k] = b2 * v[k] + (1 - b2) * d2
            elif rule == "yogi":
                v[k] = v[k] - (1 - b2) * d2 * np.sign(v[k] - d2)
            else:
                v[k] = v[k] + d2
            x[k] = x[k] + lr * m[k] / (np.sqrt(v[k]) + tau)
        state, metrics = strategy.aggregate(rnd, state, ups)
        for k in x:
            np.testing.assert_allclose(state.params[k].numpy(), x[k], rtol=1e-10, atol=1e-14)
        assert metrics["num_examples"] == 10 and state.round == rnd


def _flower() -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # click/typer deprecations raised while flwr imports
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server.strategy import FedAdagrad as FlAdagrad
        from flwr.server.strategy import FedAvg as FlAvg
        from flwr.server.strategy import FedAvgM as FlAvgM
        from flwr.server.strategy import FedYogi as FlYogi
        from flwr.server.strategy.aggregate import aggregate
    return Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays, FlAdagrad, FlAvg, FlAvgM, FlYogi, aggregate


def _fit_results(ups: list[ClientUpdate], keys: list[str]) -> list:
    Code, FitRes, Status, to_params, *_ = _flower()
    return [(None, FitRes(Status(Code.OK, ""), to_params([u.params[k].numpy() for k in keys]), u.num_examples, {}))
            for u in ups]


def test_fedavg_aggregate_equals_flower() -> None:
    *_, to_nd, _, FlAvg, _, _, aggregate = _flower()
    rng = np.random.default_rng(1)
    x = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    ups = _updates(rng, x, [7, 1, 12, 3])
    ups = [ClientUpdate(u.client_id, {k: t.float() for k, t in u.params.items()}, u.num_examples) for u in ups]
    keys = list(x)
    ours, _ = FedAvg().aggregate(1, FedAvg().initialize({k: torch.from_numpy(v) for k, v in x.items()}), ups)
    flower = aggregate([([u.params[k].numpy() for k in keys], u.num_examples) for u in ups])
    fit, _ = FlAvg().aggregate_fit(1, _fit_results(ups, keys), [])
    for k, ref, ref2 in zip(keys, flower, to_nd(fit)):
        np.testing.assert_allclose(ours.params[k].numpy(), ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ours.params[k].numpy(), ref2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", ["yogi", "adagrad", "avgm"])
def test_server_optimisers_equal_flower(rule: str) -> None:
    # Flower starts v at 0 (initial_accumulator=0 here); its FedAdam adds a bias correction that
    # Reddi et al.'s Algorithm 2 does not have, so FedAdam is checked by hand above only.
    _, _, _, to_params, to_nd, FlAdagrad, _, FlAvgM, FlYogi, _ = _flower()
    rng = np.random.default_rng(2)
    x = {"w": rng.normal(size=(3, 3)), "b": rng.normal(size=3)}
    keys = list(x)
    lr, b1, b2, tau = 0.05, 0.9, 0.99, 1e-3
    init = to_params([x[k] for k in keys])
    if rule == "yogi":
        ours, theirs = FedYogi(server_lr=lr, beta1=b1, beta2=b2, tau=tau, initial_accumulator=0.0), \
            FlYogi(initial_parameters=init, eta=lr, beta_1=b1, beta_2=b2, tau=tau)
    elif rule == "adagrad":
        ours, theirs = FedAdagrad(server_lr=lr, beta1=0.0, tau=tau, initial_accumulator=0.0), \
            FlAdagrad(initial_parameters=init, eta=lr, tau=tau)
    else:
        ours, theirs = FedAvgM(server_lr=lr, server_momentum=0.8), \
            FlAvgM(initial_parameters=init, server_learning_rate=lr, server_momentum=0.8)
    state = ours.initialize({k: torch.from_numpy(v) for k, v in x.items()})
    cur = dict(x)
    for rnd in (1, 2, 3):
        ups = _updates(rng, cur, [4, 9, 2])
        state, _ = ours.aggregate(rnd, state, ups)
        params, _ = theirs.aggregate_fit(rnd, _fit_results(ups, keys), [])
        if rule == "avgm":  # Flower's FedAvgM keeps its own copy of the current weights
            theirs.initial_parameters = params
        for k, ref in zip(keys, to_nd(params)):
            np.testing.assert_allclose(state.params[k].numpy(), ref, rtol=1e-6, atol=1e-9)
        cur = {k: state.params[k].numpy() for k in keys}


def test_algorithm_defaults_and_errors() -> None:
    assert make_strategy("fedavg").options == {"server_lr": 1.0}
    assert make_strategy("fedprox", mu=0.1).client_config == {"mu": 0.1}
    cfg = FederatedConfig(algorithm="fedyogi", tau=1e-4)
    assert cfg.algorithm_options() == {"server_lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "tau": 1e-4}
    with pytest.raises(ValueError, match="mu"):
        FederatedConfig(algorithm="fedavg", mu=0.1)
    with pytest.raises(ConfigError, match="algorithm"):
        make_strategy("fedsgd")
    with pytest.raises(ConfigError, match="server_lr"):
        FedAvg(server_lr=-1.0)
    with pytest.raises(ConfigError, match="mu"):
        FedProx(mu=-0.5)
    with pytest.raises(ConfigError, match="beta1"):
        FedAdam(beta1=1.0)


@pytest.mark.parametrize("kind,wd", [("sgd", 0.0), ("sgd", 0.1), ("sgdm", 0.05), ("adam", 0.1), ("adamw", 0.1)])
def test_local_optimizer_matches_torch_optim(kind: str, wd: float) -> None:
    from trustnlp.federated.client import LocalOptimizer

    gen = torch.Generator().manual_seed(0)
    ours = {"a": torch.randn(4, 3, generator=gen, dtype=torch.float64), "b": torch.randn(5, generator=gen, dtype=torch.float64)}
    theirs = [t.clone().requires_grad_(True) for t in ours.values()]
    lr = 0.03
    ref = {"sgd": lambda: torch.optim.SGD(theirs, lr=lr, weight_decay=wd, foreach=False),
           "sgdm": lambda: torch.optim.SGD(theirs, lr=lr, momentum=0.9, weight_decay=wd, foreach=False),
           "adam": lambda: torch.optim.Adam(theirs, lr=lr, weight_decay=wd, foreach=False),
           "adamw": lambda: torch.optim.AdamW(theirs, lr=lr, weight_decay=wd, foreach=False)}[kind]()
    opt = LocalOptimizer(LocalTraining(lr=lr, optimizer=kind, weight_decay=wd))
    for _ in range(4):
        for p, q in zip(ours.values(), theirs):
            q.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.grad = q.grad.clone()
        opt.step(ours)
        ref.step()
    for p, q in zip(ours.values(), theirs):
        torch.testing.assert_close(p, q.detach(), rtol=1e-13, atol=0)
