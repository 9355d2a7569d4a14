"""The federated study: data -> partition -> clients -> simulation -> ``results.json`` + model.

``run_federated(config, out)`` loads the data set the config names (as central training does,
:func:`trustnlp.pipeline.load_splits`), tokenises it (:func:`trustnlp.pipeline.make_tokenizer`),
partitions the training split across clients (:mod:`trustnlp.data.partition`), holds out part of
each client's data for federated evaluation, trains with :func:`trustnlp.federated.engine.simulate`
and writes

- ``out/results.json`` (kind ``federate``): per-round metrics under ``rows``; final metrics under
  ``metrics``: the central test set (``test_accuracy``, ``test_macro_f1``, ``test_slot_f1``,
  ``test_perplexity``, ...), the clients' held-out data (``clients_accuracy`` (weighted mean),
  ``clients_accuracy_p10``, ``clients_accuracy_worst_decile``, ...), partition statistics
  (``partition_*``), the local-training path and timings;
- ``out/model/`` (safetensors + JSON, :func:`trustnlp.models.io.save_model`);
- ``out/partition.json``: sizes, statistics and the partition figure's data;
- ``out/checkpoint/``: the last round's checkpoint (a rerun with the same config resumes).

Example:
    >>> from trustnlp.federated.config import FederatedConfig
    >>> cfg = FederatedConfig(partition="dirichlet:0.1", num_clients=50, rounds=5)
    >>> result = run_federated(cfg, "runs/fed")  # doctest: +SKIP
    >>> result.metrics["test_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustnlp.data.partition import EmbedFn, Partition, partition_dataset
from trustnlp.errors import ConfigError, expected
from trustnlp.federated.client import Client, subset
from trustnlp.federated.config import FederatedConfig
from trustnlp.federated.engine import simulate
from trustnlp.federated.selection import make_selector
from trustnlp.results import Result, atomic_write_json, write_result
from trustnlp.tasks import EncodedData, make_task

__all__ = ["run_federated", "make_clients", "build_federated_model", "DEFAULT_NUM_CLIENTS"]

DEFAULT_NUM_CLIENTS = 100
NON_PRIVATE_REASON = "non-private run: no differential-privacy guarantee (epsilon is infinite)"


def _split_client(idx: np.ndarray, *, client: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` example indices of a client (a seeded ``floor(holdout * n_c)`` held out; both sorted)."""
    perm = np.random.default_rng(np.random.SeedSequence([int(seed) % (2**63), client, 11])).permutation(idx)
    n_test = int(np.floor(holdout * len(idx)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def make_clients(data: EncodedData, partition: Partition, *, holdout: float, seed: int,
                 availability: float = 1.0) -> list[Client]:
    """One :class:`Client` per part of ``partition``: a seeded ``floor(holdout * n_c)`` of its examples
    held out for federated evaluation, the rest its training data."""
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(expected("holdout", "a fraction in [0, 1)", holdout))
    if partition.num_examples != len(data):
        raise ConfigError(f"The partition covers {partition.num_examples} examples but the data has {len(data)}.")
    clients = []
    for c, idx in enumerate(partition.clients):
        train_idx, test_idx = _split_client(idx, client=c, holdout=holdout, seed=seed)
        test = subset(data, test_idx) if len(test_idx) else None
        clients.append(Client(c, subset(data, train_idx), test, availability, partition.client_names[c]))
    return clients


def client_train_indices(partition: Partition, *, holdout: float, seed: int) -> list[np.ndarray]:
    """Each client's training examples as indices into the partitioned data (in the order of its ``train``)."""
    return [_split_client(idx, client=c, holdout=holdout, seed=seed)[0] for c, idx in enumerate(partition.clients)]


def make_schedule(config: FederatedConfig, train: Any, train_indices: list[np.ndarray]) -> tuple[Any, str]:
    """The continual data setting of ``config`` (``None`` for static) and how arrivals were made."""
    if config.setting == "static":
        return None, "static"
    from trustnlp.federated.settings import (
        ContinualSchedule,
        ContinualSpec,
        arrival_periods_from_timestamps,
        poisson_arrival_periods,
    )

    spec = ContinualSpec(periods=config.periods, retention=config.retention, storage=config.storage,
                         deletion=config.deletion, replay=config.replay,
                         arrival="poisson" if config.arrival == "poisson" else "timestamp")
    column = next((c for c in _TIME_COLUMNS if c in train.columns), None)
    if config.arrival == "timestamp" and column is None:
        raise ConfigError(f"arrival 'timestamp' needs a time column ({' or '.join(_TIME_COLUMNS)}) in the data; "
                          f"{train.meta.name!r} has {sorted(train.columns)}. Use --arrival poisson.")
    if config.arrival == "poisson" or column is None:
        arrivals = poisson_arrival_periods([len(i) for i in train_indices], config.periods, seed=config.seed)
        how = "poisson"
    else:
        periods = arrival_periods_from_timestamps(np.asarray(train.column(column), dtype=np.float64), config.periods)
        arrivals = [periods[i] for i in train_indices]
        how = f"timestamp ({column})"
    return ContinualSchedule(arrivals, spec, seed=config.seed), how


#: Columns whose values order examples in time (the built-in corpus's unix times; tinyshakespeare's line numbers).
_TIME_COLUMNS = ("timestamp", "line")


def client_offsets(train: Any, partition: Partition) -> np.ndarray | None:
    """Each client's UTC offset (hours) from the data's ``timezone`` column (its first example's), or ``None``."""
    if "timezone" not in train.columns:
        return None
    from trustnlp.data.assistant import TIMEZONES

    table = dict(TIMEZONES)
    zones = train.column("timezone")
    out = []
    for idx in partition.clients:
        z = zones[int(idx[0])] if len(idx) else None
        if z not in table:
            raise ConfigError(expected("timezone", f"one of {sorted(table)}", z))
        out.append(float(table[z]))
    return np.asarray(out)


def build_federated_model(config: FederatedConfig, tokenizer: Any, *, num_labels: int, num_tags: int) -> torch.nn.Module:
    """The global model for ``config`` (``tag`` wraps the architecture in a ``joint`` tagger, as central training does)."""
    from trustnlp.models import build_model

    options = dict(config.model_options)
    arch = config.resolved_model()
    if config.task == "tag" and arch != "joint":
        options.setdefault("encoder", arch)
        arch = "joint"
    elif config.task == "lm" and arch != "lm":
        raise ConfigError(expected("model", "'lm' for the `lm` task", arch))
    return build_model(arch, vocab_size=tokenizer.vocab_size, num_labels=num_labels if config.task != "lm" else 0,
                       num_tags=num_tags if config.task == "tag" else 0, pad_id=tokenizer.pad_id, **options)


def selection_summary(rows: Any, clients: list[Client], schedule: Any) -> dict[str, Any]:
    """How often each client was selected, against its activity (mean examples held over the rounds)."""
    counts = np.zeros(len(clients), dtype=np.int64)
    for r in rows:
        for c in r.get("selected", ()):
            counts[int(c)] += 1
    if schedule is None:
        activity = np.array([c.num_examples for c in clients], dtype=np.float64)
    else:
        periods = [int(r.get("period", 0)) for r in rows] or [0]
        activity = np.mean([schedule.activity(p) for p in periods], axis=0).astype(np.float64)
    from scipy.stats import spearmanr

    rho = float(spearmanr(activity, counts).statistic) if len(clients) > 2 and counts.std() > 0 and activity.std() > 0 else None
    return {"activity": activity.tolist(), "times_selected": counts.tolist(), "rounds": len(rows),
            "spearman_activity_frequency": rho, "never_selected": int((counts == 0).sum())}


def future_summary(rows: Any) -> dict[str, float]:
    """Mean over the evaluated period ends of each ``future_*`` metric (the model on the next period's data)."""
    out: dict[str, float] = {}
    keys = sorted({k for r in rows for k in r if k.startswith("future_") and k != "future_examples"})
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float))]
        if vals:
            out[f"{k}_mean_over_periods"] = float(np.mean(vals))
    return out


@dataclass(frozen=True)
class Population:
    """What a federated run builds from its config before training: splits, tokenizer, task, the fixed input
    length, the encoded test set, the partition and the clients."""

    splits: Any
    tokenizer: Any
    task: Any
    max_length: int
    test: EncodedData
    partition: Partition
    clients: list[Client]


def prepare_population(config: FederatedConfig, *, embed: EmbedFn | None = None,
                       embeddings: np.ndarray | None = None) -> Population:
    """Load, tokenise, encode and partition the data of ``config`` into clients (shared by :func:`run_federated`
    and the Flower bridge, so every process builds identical clients)."""
    from trustnlp.pipeline import MAX_LENGTH_CAP, load_splits, make_tokenizer

    splits = load_splits(config, seed=config.seed)
    train = splits.train
    tokenizer = make_tokenizer(config.tokenizer, splits, model=config.resolved_model())
    task = make_task(config.task, num_labels=train.num_labels, tag_names=train.tag_names)
    max_length = config.max_length or min(MAX_LENGTH_CAP, task.longest(train, tokenizer))
    train_enc = task.encode(train, tokenizer, max_length=max_length)
    test_enc = task.encode(splits.test, tokenizer, max_length=max_length)
    num_clients = config.num_clients if config.num_clients is not None or config.partition == "user" else DEFAULT_NUM_CLIENTS
    partition = partition_dataset(train, config.partition, num_clients=num_clients, seed=config.seed,
                                  user_column=config.user_column, embed=embed, embeddings=embeddings)
    clients = make_clients(train_enc, partition, holdout=config.holdout, seed=config.seed, availability=1.0)
    if config.clients_per_round > len(clients):
        raise ConfigError(expected("clients_per_round", f"<= the number of clients ({len(clients)})", config.clients_per_round))
    return Population(splits, tokenizer, task, max_length, test_enc, partition, clients)


def run_federated(config: FederatedConfig, out: str | Path, *, progress: bool = True, stop_after_rounds: int | None = None,
                  embed: EmbedFn | None = None, embeddings: np.ndarray | None = None) -> Result:
    """Run the federated study ``config`` describes and write its results under ``out`` (see the module docs).

    Args:
        config: data, task, model, algorithm, partition, clients, local training, rounds, seed.
        out: output directory.
        progress: show progress bars.
        stop_after_rounds: stop early (after checkpointing), for tests of resuming.
        embed / embeddings: sentence embeddings for ``cluster:K`` (default: MiniLM).
    """
    from trustnlp.models.io import save_model

    out = Path(out)
    torch.manual_seed(config.seed)
    t_load = time.perf_counter()
    prep = prepare_population(config, embed=embed, embeddings=embeddings)
    splits, train, tokenizer, task, max_length = prep.splits, prep.splits.train, prep.tokenizer, prep.task, prep.max_length
    test_enc, partition, clients = prep.test, prep.partition, prep.clients
    schedule, arrival = make_schedule(config, train, client_train_indices(partition, holdout=config.holdout, seed=config.seed))
    selector = make_selector(config.selection, num=config.clients_per_round, num_clients=len(clients), seed=config.seed,
                             offsets=client_offsets(train, partition), rounds_per_day=config.rounds_per_day)
    load_seconds = time.perf_counter() - t_load
    model = build_federated_model(config, tokenizer, num_labels=train.num_labels, num_tags=len(train.tag_names))
    sim = simulate(model, task, clients, config=config, selector=selector, schedule=schedule, central_test=test_enc,
                   checkpoint_dir=out, progress=progress, stop_after_rounds=stop_after_rounds, pad_id=tokenizer.pad_id)
    model.to("cpu")
    selection = selection_summary(sim.rows, clients, schedule)
    atomic_write_json(out / "selection.json", {"selection": config.selection, "aggregation": config.aggregation,
                                               "setting": config.setting, "arrival": arrival, **selection,
                                               "schedule": schedule.to_dict() if schedule is not None else None})

    labels = train.labels
    part_dict = partition.to_dict(labels, train.label_names if labels is not None else ())
    atomic_write_json(out / "partition.json", part_dict)
    stats = part_dict["stats"]
    metrics: dict[str, Any] = {}
    if sim.rows and not sim.interrupted:
        last = sim.rows[-1]
        metrics.update({k: v for k, v in last.items() if k.startswith(("test_", "clients_"))})
    held_out = [len(c.test) for c in clients if c.test is not None]
    metrics.update({
        "rounds": sim.rounds,
        "algorithm": config.algorithm,
        **config.algorithm_options(),
        "local_lr": sim.extra["local_lr"],
        "local_optimizer": sim.extra["local_optimizer"],
        "num_clients": len(clients),
        "clients_per_round": config.clients_per_round,
        "clients_with_holdout": len(held_out),
        "holdout_examples": int(sum(held_out)),
        "num_train": len(train),
        "num_test": len(splits.test),
        "max_length": max_length,
        **{f"partition_{k}": v for k, v in stats.items() if k not in ("num_clients", "num_examples")},
        "selection": config.selection,
        "aggregation": config.aggregation,
        "setting": config.setting,
        "arrival": arrival,
        "selection_activity_correlation": selection["spearman_activity_frequency"],
        "clients_never_selected": selection["never_selected"],
        **future_summary(sim.rows),
        "local_training_path": sim.path,
        "local_training_path_reason": sim.path_reason,
        "client_updates": sim.client_updates,
        "setup_seconds": sim.setup_seconds,
        "data_seconds": load_seconds,
        "train_seconds": sim.train_seconds,
        "first_round_seconds": sim.first_round_seconds,
        "client_updates_per_second": sim.updates_per_second,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "private": False, "epsilon": None, "delta": None, "privacy_unit": None,
    })
    if sim.probe is not None:
        metrics.update({f"probe_{k}": v for k, v in sim.probe.items()})
    metrics.update({"robust": config.robust, "secure_aggregation": config.secure_aggregation,
                    "faulty_fraction": config.faulty_fraction, "fault": config.fault if config.faulty_fraction else None,
                    "rejected_updates": sum(len(r.get("rejected", ())) for r in sim.rows),
                    "dropped_updates": sum(len(r.get("dropped", ())) + len(r.get("dropped_before_masking", ()))
                                           for r in sim.rows)})
    dp = sim.extra.get("client_dp")
    null_reasons = {}
    if dp:
        metrics.update({"private": True, "epsilon": dp["epsilon"], "delta": dp["delta"],
                        "privacy_unit": "user" if config.partition == "user" else "client",
                        "target_epsilon": dp["target_epsilon"], "noise_multiplier": dp["noise_multiplier"],
                        "client_sampling": dp["sampling"], "sampling_rate": config.clients_per_round / len(clients),
                        "clip_norm": dp["clip_norm"], "final_clip_norm": dp["final_clip_norm"],
                        "adaptive_clip": dp["adaptive_clip"], "accountant": dp["accountant"]})
    else:
        null_reasons = {"metrics.epsilon": NON_PRIVATE_REASON, "metrics.delta": NON_PRIVATE_REASON,
                        "metrics.privacy_unit": NON_PRIVATE_REASON}
    artifacts = {"partition": "partition.json", "selection": "selection.json"}
    if not sim.interrupted:
        save_model(model, out / "model", tokenizer=tokenizer, label_names=train.label_names, tag_names=train.tag_names,
                   task=config.task, extra={"data": splits.meta.name, "max_length": max_length, "seed": config.seed,
                                            "federated": True})
        artifacts["model"] = "model"
    result = Result(
        kind="federate",
        config={**config.model_dump(), "resolved_model": config.resolved_model(), "resolved_num_clients": len(clients),
                "resolved_device": sim.extra["device"]},
        seed=config.seed,
        data=splits.meta.to_dict(),
        metrics=metrics,
        rows=sim.rows,
        null_reasons=null_reasons,
        artifacts=artifacts,
    )
    write_result(result, out / "results.json")
    return result
