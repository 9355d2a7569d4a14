"""Federated evaluation: weighted means against pooled evaluation, distribution statistics by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fed_fixtures import LABELS, bag, population, synthetic

from trustnlp.data.partition import quantity_skew_partition
from trustnlp.federated import evaluate_clients
from trustnlp.federated.evaluation import summarise
from trustnlp.tasks import ClassifyTask, EncodedData

TASK = ClassifyTask(LABELS)


def _concat(parts: list[EncodedData]) -> EncodedData:
    t = max(p.input_ids.shape[1] for p in parts)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, t - x.shape[1]))

    return EncodedData(torch.cat([pad(p.input_ids) for p in parts]), torch.cat([pad(p.attention_mask) for p in parts]),
                       torch.cat([p.labels for p in parts]))


def test_weighted_mean_equals_pooled_evaluation() -> None:
    # Example-weighted mean of per-client accuracy / mean loss == accuracy / mean loss of the pooled held-out data.
    data = synthetic(120, seed=2)
    clients = population(data, quantity_skew_partition(120, 7, beta=0.5, seed=0), holdout=0.4)
    model = bag(seed=3)
    ev = evaluate_clients(model, TASK, clients, central_test=synthetic(30, seed=5))
    with_test = [c for c in clients if c.test is not None]
    assert list(ev.client_ids) == [c.id for c in with_test] and len(with_test) < len(clients)
    pooled = TASK.evaluate(model, _concat([c.test for c in with_test]))
    assert ev.summary["accuracy"]["mean"] == pytest.approx(pooled["accuracy"], rel=1e-12)
    assert ev.summary["loss"]["mean"] == pytest.approx(pooled["loss"], rel=1e-10)
    assert ev.central == TASK.evaluate(model, synthetic(30, seed=5))
    flat = ev.flat()
    assert flat["clients_accuracy"] == ev.summary["accuracy"]["mean"] and "test_accuracy" in flat
    assert flat["clients_evaluated"] == len(with_test)


def test_distribution_statistics_by_hand() -> None:
    acc = [0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.2, 0.8, 0.4, 1.0, 0.55, 0.65]  # 12 clients: worst decile = 2 clients
    loss = [float(i) for i in range(12)]
    s = summarise({"accuracy": acc, "loss": loss, "macro_f1": [float("nan")] * 11 + [0.5]}, [1] * 11 + [13])
    a = s["accuracy"]
    assert a["worst_decile"] == pytest.approx((0.1 + 0.2) / 2)
    assert s["loss"]["worst_decile"] == pytest.approx((11 + 10) / 2)  # loss: higher is worse
    srt = sorted(acc)
    h = 0.1 * (len(acc) - 1)  # linear interpolation at rank 1.1
    assert a["p10"] == pytest.approx(srt[1] + (h - 1) * (srt[2] - srt[1]))
    assert a["mean"] == pytest.approx((sum(acc[:11]) + 13 * acc[11]) / 24)
    assert a["min"] == 0.1 and a["max"] == 1.0 and a["clients"] == 12
    assert s["macro_f1"]["clients"] == 1 and s["macro_f1"]["mean"] == 0.5  # non-finite values left out
    one = summarise({"accuracy": [0.3]}, [5])["accuracy"]
    assert one["worst_decile"] == one["p10"] == 0.3
    assert math.isnan(summarise({"accuracy": [float("nan")]}, [1])["accuracy"]["mean"])


def test_clients_without_heldout_data_are_skipped() -> None:
    data = synthetic(12, seed=0)
    clients = population(data, num_clients=4, holdout=0.0)
    ev = evaluate_clients(bag(), TASK, clients)
    assert ev.client_ids == () and ev.summary == {} and ev.central == {}
    assert np.isfinite(evaluate_clients(bag(), TASK, population(data, num_clients=2, holdout=0.5)).summary["accuracy"]["mean"])
