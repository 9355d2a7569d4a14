"""The simulation engine: bitwise resume, batched == sequential local training, selection and
availability statistics, path choice, errors, and the study writing results.json + the model."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from fed_fixtures import LABELS, VOCAB, bag, config, one_thread, params_of, population, synthetic
from scipy import stats

from trustnlp.data.partition import quantity_skew_partition
from trustnlp.errors import ConfigError
from trustnlp.federated import (
    FitInstruction,
    LocalTraining,
    UniformSelector,
    available_clients,
    client_seed,
    run_federated,
    simulate,
    train_vectorized,
)
from trustnlp.federated.engine import train_round
from trustnlp.federated.strategy import weighted_mean
from trustnlp.models import build_model
from trustnlp.tasks import ClassifyTask, EncodedData, LMTask, TagTask

TASK = ClassifyTask(LABELS)
TIMING = {"seconds", "client_updates_per_second", "eval_seconds"}


def _rows(rows: tuple) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.parametrize("algorithm,dropout,vectorize", [("fedadam", 0.3, "auto"), ("fedavgm", 0.0, "on")])
def test_resume_is_bitwise_equal(tmp_path, algorithm: str, dropout: float, vectorize: str) -> None:
    # (with dropout, "auto" is always the sequential path: the probe's timing cannot pick differently)
    data = synthetic(60, seed=3)
    clients = population(data, num_clients=6, holdout=0.2)
    cfg = config(rounds=4, algorithm=algorithm, eval_every=2, vectorize=vectorize)
    central = synthetic(20, seed=9)
    with one_thread():
        full_model = bag(seed=1, dropout=dropout)
        full = simulate(full_model, TASK, clients, config=cfg, central_test=central, progress=False)
        part_model = bag(seed=1, dropout=dropout)
        first = simulate(part_model, TASK, clients, config=cfg, central_test=central, progress=False,
                         checkpoint_dir=tmp_path, stop_after_rounds=2)
        assert first.interrupted and first.rounds == 2
        resumed_model = bag(seed=1, dropout=dropout)
        torch.manual_seed(12345)  # the global RNG is restored from the checkpoint
        second = simulate(resumed_model, TASK, clients, config=cfg, central_test=central, progress=False,
                          checkpoint_dir=tmp_path)
    assert second.resumed_from_round == 2 and second.rounds == 4 and not second.interrupted
    assert second.path == full.path == first.path == ("sequential" if dropout else "vectorized")
    for k, v in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[k], v), k
    for key, sub in full.state.opt_state.items():
        for name, t in _leaves(sub):
            assert torch.equal(_leaf(second.state.opt_state[key], name), t), (key, name)
    assert _rows(second.rows) == _rows(full.rows)
    assert any("test_accuracy" in r for r in second.rows)
    with pytest.raises(ConfigError, match="different configuration"):
        simulate(bag(seed=1, dropout=dropout), TASK, clients, config=config(rounds=5, algorithm=algorithm, lr=0.1, vectorize=vectorize),
                 progress=False, checkpoint_dir=tmp_path)


def _leaves(tree: dict, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _leaves(v, f"{prefix}{k}/")
        elif isinstance(v, torch.Tensor):
            out.append((f"{prefix}{k}", v))
    return out


def _leaf(tree: dict, name: str) -> torch.Tensor:
    for part in name.split("/"):
        tree = tree[part]
    return tree  # type: ignore[return-value]


@pytest.mark.parametrize("optimizer,mu", [("sgd", 0.0), ("sgd", 0.3), ("sgdm", 0.0), ("adam", 0.0), ("adamw", 0.1)])
def test_batched_equals_sequential(optimizer: str, mu: float) -> None:
    # Unequal client sizes (so padding, early-finishing clients and unequal batch counts all occur);
    # float64: the same updates and aggregate within rtol 1e-10 (only summation order differs).
    data = synthetic(53, seed=5)
    clients = population(data, quantity_skew_partition(len(data), 5, beta=0.7, seed=1))
    sizes = [c.num_examples for c in clients]
    assert len(set(sizes)) > 2
    model = bag(seed=4)
    params = params_of(model)
    local = LocalTraining(epochs=2, batch_size=4, lr=0.3, optimizer=optimizer, weight_decay=0.01 if optimizer == "adamw" else 0.0)
    seeds = [client_seed(7, 1, c.id) for c in clients]
    cfgs = [{"mu": mu}] * len(clients)
    instructions = [FitInstruction(c.id, {"mu": mu}) for c in clients]
    with one_thread():
        vec = train_vectorized(copy.deepcopy(model), TASK, clients, params, local, seeds=seeds, configs=cfgs)
        seq = train_round("sequential", copy.deepcopy(model), TASK, clients, instructions, params, local, seed=7, round=1)
    for a, b in zip(vec, seq):
        assert a.client_id == b.client_id and a.num_examples == b.num_examples and a.metrics["steps"] == b.metrics["steps"]
        assert a.metrics["train_loss"] == pytest.approx(b.metrics["train_loss"], rel=1e-10)
        for k in params:
            torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-10, atol=1e-12)
    agg_v, agg_s = weighted_mean(vec), weighted_mean(seq)
    for k in params:
        torch.testing.assert_close(agg_v[k], agg_s[k], rtol=1e-10, atol=1e-12)
        assert not torch.equal(agg_s[k], params[k]) or k == "encoder.embedding.weight"


def _tag_data(n: int) -> EncodedData:
    base = synthetic(n, seed=8)
    tags = torch.where(base.attention_mask.bool(), base.input_ids % 4, torch.full_like(base.input_ids, -100))
    return EncodedData(base.input_ids, base.attention_mask, base.labels, tags)


@pytest.mark.parametrize("kind", ["tag", "lm"])
def test_batched_equals_sequential_other_tasks(kind: str) -> None:
    # float32 models here: rtol 1e-5.
    torch.manual_seed(0)
    if kind == "tag":
        data, task = _tag_data(30), TagTask(LABELS, ("O", "B-a", "I-a", "B-b"))
        model = build_model("joint", vocab_size=VOCAB, num_labels=LABELS, num_tags=4, encoder="cnn",
                            encoder_options={"dim": 8, "filters": 4, "kernel_sizes": [3]}, dropout=0.0)
    else:
        data, task = synthetic(30, seed=2), LMTask()
        model = build_model("lm", vocab_size=VOCAB, backbone="transformer", layers=1, dim=16, heads=2, max_len=16, dropout=0.0)
    clients = population(data, quantity_skew_partition(len(data), 3, beta=1.0, seed=0))
    params = params_of(model)
    local = LocalTraining(epochs=1, batch_size=4, lr=0.1)
    seeds = [client_seed(0, 1, c.id) for c in clients]
    with one_thread():
        vec = train_vectorized(copy.deepcopy(model), task, clients, params, local, seeds=seeds)
        seq = train_round("sequential", copy.deepcopy(model), task, clients, [FitInstruction(c.id) for c in clients],
                          params, local, seed=0, round=1)
    for a, b in zip(vec, seq):
        for k in params:
            torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-5, atol=1e-6)


def test_uniform_selection_and_availability_statistics() -> None:
    # Over 3000 rounds each of 20 clients is picked ~ 3000 * 5/20 times: chi-square test at alpha = 0.001.
    sel = UniformSelector(5, seed=3)
    counts = np.zeros(20)
    for rnd in range(1, 3001):
        chosen = sel.select(rnd, np.arange(20)).clients
        assert len(set(chosen.tolist())) == 5
        counts[chosen] += 1
    assert stats.chisquare(counts).pvalue > 1e-3
    assert np.array_equal(sel.select(7, np.arange(20)).clients, UniformSelector(5, seed=3).select(7, np.arange(20)).clients)
    assert not np.array_equal(sel.select(7, np.arange(20)).clients, sel.select(8, np.arange(20)).clients)
    assert sel.select(1, np.array([4, 2])).clients.tolist() == [2, 4]  # fewer available than asked: all of them
    # availability 0.3 over 50 clients x 400 rounds: the online fraction is Binomial(20000, 0.3), |z| < 4
    online = sum(len(available_clients(np.full(50, 0.3), seed=1, round=r)) for r in range(1, 401))
    assert abs(online - 6000) / np.sqrt(20000 * 0.3 * 0.7) < 4


def test_availability_limits_selection_and_rounds_without_clients() -> None:
    data = synthetic(40, seed=1)
    clients = population(data, num_clients=8)
    with one_thread():
        res = simulate(bag(), TASK, clients, config=config(rounds=6, clients_per_round=4, availability=0.2), progress=False)
    assert all(r["num_clients"] == min(4, r["available"]) for r in res.rows)
    assert any(r["available"] < 4 for r in res.rows)


def test_path_choice_and_errors(tmp_path, monkeypatch) -> None:
    from trustnlp.federated import engine

    data = synthetic(40, seed=1)
    clients = population(data, num_clients=4)
    with one_thread():
        res = simulate(bag(dropout=0.5), TASK, clients, config=config(rounds=1, vectorize="auto"), progress=False)
        assert res.path == "sequential" and "dropout" in res.path_reason and res.probe is None
        res = simulate(bag(), TASK, clients, config=config(rounds=1, vectorize="auto"), progress=False)
        assert res.path == "sequential" and "set-up" in res.path_reason  # a tiny run: batching cannot pay off
        assert res.probe is not None and "vectorized_round_seconds" not in res.probe
        monkeypatch.setattr(engine, "BATCHED_SETUP_SECONDS", 0.0)
        cfg = config(rounds=2, vectorize="auto")
        first = simulate(bag(), TASK, clients, config=cfg, progress=False, checkpoint_dir=tmp_path, stop_after_rounds=1)
        assert "probe" in first.path_reason and {"vectorized_round_seconds", "sequential_round_seconds"} <= set(first.probe)

        def no_probe(*_: object, **__: object) -> None:
            raise AssertionError("a resumed run must reuse the recorded path, not probe again")

        monkeypatch.setattr(engine, "_probe_sequential", no_probe)
        second = simulate(bag(), TASK, clients, config=cfg, progress=False, checkpoint_dir=tmp_path)
        assert (second.path, second.path_reason, second.probe) == (first.path, first.path_reason, first.probe)
        assert all(r["path"] == first.path for r in second.rows)
        with pytest.raises(ConfigError, match="dropout"):
            simulate(bag(dropout=0.5), TASK, clients, config=config(rounds=1, vectorize="on"), progress=False)
        with pytest.raises(ConfigError, match="clients_per_round"):
            simulate(bag(), TASK, clients, config=config(clients_per_round=5), progress=False)


def test_study_writes_results_and_model(tmp_path) -> None:
    from trustnlp.federated import FederatedConfig
    from trustnlp.models.io import load_model
    from trustnlp.results import read_result

    cfg = FederatedConfig(data="assistant", corpus_size=400, corpus_users=20, tokenizer="word", partition="user",
                          clients_per_round=4, rounds=2, batch_size=16, holdout=0.25, device="cpu", seed=1)
    with one_thread():
        result = run_federated(cfg, tmp_path, progress=False)
    on_disk = read_result(tmp_path / "results.json")
    assert on_disk.kind == "federate" and len(on_disk.rows) == 2
    m = on_disk.metrics
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["num_clients"] == result.metrics["num_clients"] <= 20
    assert {"clients_accuracy", "clients_accuracy_p10", "clients_accuracy_worst_decile", "partition_size_cv"} <= set(m)
    assert m["local_training_path"] in ("vectorized", "sequential")
    saved = load_model(tmp_path / "model")
    assert saved.task == "classify"
    part = json.loads((tmp_path / "partition.json").read_text())
    assert sum(part["sizes"]) == m["num_train"] and part["spec"] == "user"
    # interrupted after round 1, then rerun: resumes and ends bitwise equal to the uninterrupted run
    with one_thread():
        cut = run_federated(cfg, tmp_path / "resumed", progress=False, stop_after_rounds=1)
        assert "model" not in cut.artifacts and len(cut.rows) == 1
        run_federated(cfg, tmp_path / "resumed", progress=False)
    again = load_model(tmp_path / "resumed" / "model")
    for k, v in saved.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k


@pytest.mark.parametrize("task,metric", [("tag", "test_slot_f1"), ("lm", "test_perplexity")])
def test_study_tag_and_lm_tasks(tmp_path, task: str, metric: str) -> None:
    from trustnlp.federated import FederatedConfig

    options = {"lm": {"backbone": "transformer", "layers": 1, "dim": 16, "heads": 2, "max_len": 64, "dropout": 0.0},
               "tag": {"encoder_options": {"dim": 16, "filters": 8}}}[task]
    cfg = FederatedConfig(data="assistant", corpus_size=300, corpus_users=15, tokenizer="word", task=task,
                          partition="iid", num_clients=6, clients_per_round=3, rounds=1, batch_size=16, device="cpu",
                          model_options=options)
    with one_thread():
        m = run_federated(cfg, tmp_path, progress=False).metrics
    assert np.isfinite(m[metric]) and f"clients_{metric.removeprefix('test_')}_worst_decile" in m


@pytest.mark.shared
def test_study_shakespeare_next_word_by_speaker(tmp_path, shared_data) -> None:
    from trustnlp.federated import FederatedConfig

    assert (shared_data / "tinyshakespeare").is_dir()
    cfg = FederatedConfig(data="tinyshakespeare", task="lm", tokenizer="word", partition="user", clients_per_round=3,
                          rounds=2, eval_every=0, local_steps=2, batch_size=16, max_length=32, device="cpu",
                          model_options={"backbone": "transformer", "layers": 1, "dim": 32, "heads": 2, "max_len": 32,
                                         "dropout": 0.0})
    with one_thread():
        result = run_federated(cfg, tmp_path, progress=False)
    m = result.metrics
    assert m["num_clients"] > 200 and result.config["user_column"] is None  # one client per speaker
    part = json.loads((tmp_path / "partition.json").read_text())
    assert part["details"]["column"] == "speaker" and "MENENIUS" in part["client_names"]
    assert 1.0 < m["test_perplexity"] < float(m["num_parameters"]) and np.isfinite(m["clients_perplexity_p10"])
