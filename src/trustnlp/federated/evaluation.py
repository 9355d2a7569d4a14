"""Federated evaluation: every client scores the global model on its own held-out data.

For each metric of the task (accuracy, macro-F1, slot F1, loss, perplexity) it reports

- the example-weighted mean over clients, ``sum_c n_c m_c / sum_c n_c`` (``n_c`` the client's
  held-out examples; for accuracy this equals the accuracy on the pooled held-out data);
- the distribution across clients (unweighted, one value per client): 10th and 90th percentiles
  (linear interpolation, ``numpy.percentile``), min, median, max, standard deviation, and the
  *worst decile*: the mean of the ``ceil(0.1 C)`` worst clients (lowest for accuracy/F1, highest
  for loss and perplexity), the fairness-across-devices view of Li et al. 2020 ("Fair Resource
  Allocation in Federated Learning") and of FedNLP.

A central test set, when given, is scored as in central training (``test_*`` metrics).

Example:
    >>> summarise({"accuracy": [0.5, 1.0]}, [2, 2])["accuracy"]["mean"]
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trustnlp.federated.client import Client
from trustnlp.tasks import EncodedData, Task

__all__ = ["ClientEvaluation", "evaluate_clients", "summarise", "LOWER_IS_BETTER", "flatten"]

LOWER_IS_BETTER = frozenset({"loss", "perplexity"})


def summarise(values: Mapping[str, Sequence[float]], weights: Sequence[float]) -> dict[str, dict[str, float]]:
    """Weighted mean and distribution statistics of each metric across clients (non-finite values,
    e.g. a macro-F1 with no examples, are left out of that metric)."""
    w_all = np.asarray(weights, dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for name, vals in values.items():
        v = np.asarray(vals, dtype=np.float64)
        keep = np.isfinite(v)
        v, w = v[keep], w_all[keep]
        if not v.size:
            out[name] = {"mean": float("nan"), "clients": 0}
            continue
        worst = np.sort(v)[::-1] if name in LOWER_IS_BETTER else np.sort(v)
        n_worst = max(1, math.ceil(0.1 * v.size))
        out[name] = {
            "mean": float((v * w).sum() / w.sum()) if w.sum() > 0 else float(v.mean()),
            "p10": float(np.percentile(v, 10)),
            "p90": float(np.percentile(v, 90)),
            "min": float(v.min()),
            "median": float(np.median(v)),
            "max": float(v.max()),
            "std": float(v.std()),
            "worst_decile": float(worst[:n_worst].mean()),
            "clients": int(v.size),
        }
    return out


@dataclass(frozen=True)
class ClientEvaluation:
    """Per-client metrics and their summary.

    Attributes:
        client_ids / num_examples: the evaluated clients and their held-out sizes.
        per_client: metric -> one value per evaluated client.
        summary: metric -> ``{mean, p10, p90, min, median, max, std, worst_decile, clients}``.
        central: the central test set's metrics (or empty).
    """

    client_ids: tuple[int, ...]
    num_examples: tuple[int, ...]
    per_client: Mapping[str, tuple[float, ...]]
    summary: Mapping[str, Mapping[str, float]]
    central: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"client_ids": list(self.client_ids), "num_examples": list(self.num_examples),
                "per_client": {k: list(v) for k, v in self.per_client.items()},
                "summary": {k: dict(v) for k, v in self.summary.items()}, "central": dict(self.central)}

    def flat(self) -> dict[str, float]:
        """``clients_<metric>`` (weighted mean), ``clients_<metric>_<stat>`` and ``test_<metric>``."""
        return flatten(self.summary, self.central)


def flatten(summary: Mapping[str, Mapping[str, float]], central: Mapping[str, float]) -> dict[str, float]:
    """Row/metric names of an evaluation (see :meth:`ClientEvaluation.flat`)."""
    out: dict[str, float] = {}
    for name, s in summary.items():
        out[f"clients_{name}"] = s["mean"]
        for stat in ("p10", "p90", "worst_decile", "min", "median", "std"):
            if stat in s:
                out[f"clients_{name}_{stat}"] = s[stat]
    if summary:
        out["clients_evaluated"] = max(int(s.get("clients", 0)) for s in summary.values())
    out.update({f"test_{k}": v for k, v in central.items()})
    return out


@torch.no_grad()
def evaluate_clients(model: torch.nn.Module, task: Task, clients: Sequence[Client], *,
                     central_test: EncodedData | None = None, batch_size: int = 256) -> ClientEvaluation:
    """Evaluate ``model`` on each client's held-out data (clients without any are skipped) and on
    ``central_test``."""
    ids: list[int] = []
    sizes: list[int] = []
    per: dict[str, list[float]] = {}
    for c in clients:
        if c.test is None or len(c.test) == 0:
            continue
        m = task.evaluate(model, c.test, batch_size=batch_size)
        ids.append(c.id)
        sizes.append(len(c.test))
        for k, v in m.items():
            per.setdefault(k, []).append(float(v))
    central = dict(task.evaluate(model, central_test, batch_size=batch_size)) if central_test is not None and len(central_test) else {}
    return ClientEvaluation(tuple(ids), tuple(sizes), {k: tuple(v) for k, v in per.items()},
                            summarise(per, sizes) if ids else {}, central)
