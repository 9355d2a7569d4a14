"""The server pipeline in the engine: faults and validation (a NaN never reaches the model), robust rules,
secure aggregation equal to plain aggregation (fixed-point tolerance), client-level DP equal to DP-FedAvg by a
loop at zero noise, its accounting, and the refused combinations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fed_fixtures import LABELS, bag, config, one_thread, params_of, population, synthetic

from trustnlp.federated import FederatedConfig, simulate
from trustnlp.federated.client import client_seed, local_update
from trustnlp.federated.engine import local_training
from trustnlp.federated.selection import UniformSelector
from trustnlp.tasks import ClassifyTask

TASK = ClassifyTask(LABELS)


def _run(cfg: FederatedConfig, clients: list, seed: int = 1) -> tuple[torch.nn.Module, object]:
    model = bag(seed=seed)
    with one_thread():
        res = simulate(model, TASK, clients, config=cfg, progress=False)
    return model, res


@pytest.mark.parametrize("robust", ["mean", "median", "trimmed-mean:0.2", "krum:1", "multi-krum:1:3"])
def test_nan_faults_never_reach_the_model(robust: str) -> None:
    clients = population(synthetic(120, seed=1), num_clients=10)
    cfg = config(rounds=3, clients_per_round=8, faulty_fraction=0.34, fault="nan", robust=robust)
    model, res = _run(cfg, clients)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for r in res.rows:
        assert len(r["faulty"]) == 3  # round(0.34 * 8)
        assert sorted(x["client"] for x in r["rejected"]) == r["faulty"]
        assert all("non-finite" in x["reason"] for x in r["rejected"])
        assert r["num_clients"] == 5
    # Krum with too few valid updates skips the round instead of failing or aggregating garbage
    if robust.startswith("krum"):
        _, res = _run(config(rounds=1, clients_per_round=6, faulty_fraction=0.34, fault="nan", robust=robust), clients)
        assert "skipped" in res.rows[0]["robust"]


def test_robust_rules_resist_sign_flipping_where_the_mean_does_not() -> None:
    clients = population(synthetic(200, seed=2), num_clients=10)
    honest, _ = _run(config(rounds=4, clients_per_round=10, lr=0.5), clients)
    ref = params_of(honest)

    def dist(m: torch.nn.Module) -> float:
        return float(sum((p - ref[k]).pow(2).sum() for k, p in params_of(m).items()).sqrt())

    attacked = {rule: dist(_run(config(rounds=4, clients_per_round=10, lr=0.5, faulty_fraction=0.2, fault="scale:-20",
                                       robust=rule), clients)[0]) for rule in ("mean", "median", "krum:2")}
    assert attacked["median"] < attacked["mean"] / 3 and attacked["krum:2"] < attacked["mean"] / 3


def test_validation_bound_and_dropouts_and_deadline_are_recorded() -> None:
    clients = population(synthetic(120, seed=3), num_clients=8)
    _, res = _run(config(rounds=2, clients_per_round=4, faulty_fraction=0.5, fault="scale:1000", max_update_norm=5.0), clients)
    for r in res.rows:
        assert sorted(x["client"] for x in r["rejected"]) == r["faulty"]
        assert all("exceeds the bound 5" in x["reason"] for x in r["rejected"])
    _, res = _run(config(rounds=2, clients_per_round=4, faulty_fraction=0.5, fault="dropout"), clients)
    assert all(len(r["dropped"]) == 2 and r["num_clients"] == 2 for r in res.rows)
    _, res = _run(config(rounds=2, clients_per_round=4, deadline=1e-9), clients)
    assert all(r["num_clients"] == 0 and len(r["dropped"]) == 4 for r in res.rows)  # everyone too slow


@pytest.mark.parametrize("aggregation,selection", [("sample", "uniform"), ("horvitz-thompson", "activity:1")])
def test_secure_aggregation_equals_plain_aggregation(aggregation: str, selection: str) -> None:
    from trustnlp.federated.selection import make_selector

    clients = population(synthetic(120, seed=4), num_clients=8)
    common = {"rounds": 2, "clients_per_round": 4, "selection": selection, "aggregation": aggregation}
    models = []
    for secure in (False, True):
        cfg = config(**common, secure_aggregation=secure, secagg_dropout=0.25 if secure else 0.0)
        model = bag(seed=1)
        with one_thread():
            res = simulate(model, TASK, clients, config=cfg, selector=make_selector(selection, num=4, num_clients=8, seed=0),
                           progress=False)
        models.append(model)
        if secure:
            assert all(r["secagg"]["contributors"] == r["num_clients"] for r in res.rows if r["num_clients"] >= 2)
    for (k, a), b in zip(params_of(models[0]).items(), params_of(models[1]).values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=k)  # fixed point: 24 fractional bits


def test_secure_aggregation_drops_a_nan_client_before_masking() -> None:
    clients = population(synthetic(120, seed=5), num_clients=6)
    model, res = _run(config(rounds=2, clients_per_round=5, secure_aggregation=True, faulty_fraction=0.2, fault="nan"), clients)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(len(r["dropped_before_masking"]) == 1 for r in res.rows)


def test_client_dp_at_zero_noise_is_dp_fedavg_by_a_loop() -> None:
    clients = population(synthetic(120, seed=6), num_clients=6)
    cfg = config(rounds=1, clients_per_round=3, client_dp=True, noise_multiplier=0.0, clip_norm=0.05)
    model, res = _run(cfg, clients)
    start = params_of(bag(seed=1))
    chosen = UniformSelector(3, seed=0).select(1, np.arange(6)).clients
    assert res.rows[0]["selected"] == chosen.tolist()
    local = local_training(cfg, bag(seed=1))
    expect = {k: v.clone() for k, v in start.items()}
    for c in chosen:
        up = local_update(bag(seed=1), TASK, clients[int(c)], start, local, seed=client_seed(0, 1, int(c)))
        delta = {k: up.params[k] - start[k] for k in start}
        norm = float(torch.sqrt(sum(d.pow(2).sum() for d in delta.values())))
        scale = min(1.0, 0.05 / norm)
        for k in start:
            expect[k] += delta[k] * scale / 3  # fixed denominator m = 3
    for k, v in params_of(model).items():
        torch.testing.assert_close(v, expect[k], rtol=1e-10, atol=1e-12)
    assert res.rows[0]["client_dp"]["clipped_fraction"] == 1.0
    assert res.extra["client_dp"]["epsilon"] == float("inf")


def test_client_dp_study_reports_a_calibrated_user_level_epsilon(tmp_path) -> None:
    from trustnlp.federated import run_federated
    from trustnlp.federated.client_dp import client_dp_epsilon

    cfg = FederatedConfig(data="assistant", corpus_size=400, corpus_users=30, tokenizer="word", partition="user",
                          clients_per_round=10, rounds=3, batch_size=16, device="cpu", seed=1, client_dp=True, epsilon=8.0,
                          selection="activity:0", adaptive_clip=True, eval_every=0)
    with one_thread():
        m = run_federated(cfg, tmp_path, progress=False).metrics
    assert m["private"] and m["privacy_unit"] == "user" and m["client_sampling"] == "poisson"
    assert 0.99 * 8 <= m["epsilon"] <= 8.0
    assert m["epsilon"] == pytest.approx(client_dp_epsilon(noise_multiplier=m["noise_multiplier"], sampling="poisson",
                                                           num_clients=m["num_clients"], clients_per_round=10, rounds=3,
                                                           delta=m["delta"]), rel=1e-12)
    assert m["delta"] < 1 / m["num_clients"] and m["final_clip_norm"] != 1.0  # adaptive clipping moved C


@pytest.mark.parametrize("kwargs,match", [
    ({"secure_aggregation": True, "robust": "median"}, "secure aggregation"),
    ({"client_dp": True, "epsilon": 1.0, "selection": "power-of-choice"}, "power-of-choice"),
    ({"client_dp": True, "epsilon": 1.0, "selection": "activity:1"}, "activity"),
    ({"client_dp": True, "epsilon": 1.0, "selection": "oort"}, "oort"),
    ({"client_dp": True, "epsilon": 1.0, "robust": "krum:1"}, "robust"),
    ({"client_dp": True}, "exactly one"),
    ({"epsilon": 1.0}, "client_dp"),
    ({"robust": "krum"}, "krum"),
    ({"fault": "explode"}, "fault"),
])
def test_unsound_or_bad_combinations_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FederatedConfig(**kwargs)


def test_checkpoint_keeps_the_adaptive_clip_norm(tmp_path) -> None:
    clients = population(synthetic(90, seed=7), num_clients=6)
    cfg = config(rounds=3, clients_per_round=3, client_dp=True, noise_multiplier=0.2, adaptive_clip=True)
    full, res_full = _run(cfg, clients)
    with one_thread():
        simulate(bag(seed=1), TASK, clients, config=cfg, progress=False, checkpoint_dir=tmp_path, stop_after_rounds=1)
        resumed = bag(seed=1)
        res = simulate(resumed, TASK, clients, config=cfg, progress=False, checkpoint_dir=tmp_path)
    assert res.extra["client_dp"]["final_clip_norm"] == res_full.extra["client_dp"]["final_clip_norm"]
    for k, v in params_of(full).items():
        assert torch.equal(params_of(resumed)[k], v), k
