"""The Flower bridge: trustnlp's federated algorithms as a Flower (``flwr`` 1.41) ServerApp and ClientApp.

The same run as :func:`trustnlp.federated.study.run_federated` / :func:`~trustnlp.federated.engine.simulate`,
with Flower carrying the messages, in Flower's simulation runtime (``flwr.simulation.run_simulation``,
Ray) or in a real deployment (a SuperLink and SuperNodes, ``flwr run``; see
:mod:`trustnlp.federated.flower_deploy`).

Both apps build the data, tokenizer, partition, clients and model from one
:class:`~trustnlp.federated.config.FederatedConfig` exactly as ``run_federated`` does
(:func:`build_workload`, which calls the study's own helpers), so the same seed gives the same model.

**ServerApp** (:data:`server_app`, or :func:`make_server_app` with the config given in Python). Its
loop (:func:`run_server`) is ``simulate``'s, with our :class:`~trustnlp.federated.strategy.Strategy`
(``make_strategy(config.algorithm, ...)``) and our selector (``make_selector(config.selection, ...)``,
uniform by default):

1. *node discovery*: every connected node is asked (a ``query`` message) for its
   ``node_config["partition-id"]``; node ``p`` then owns client ``p``. Nodes without a partition id are
   *shared* nodes: they may train any client (the server names the client in each message), clients
   without an owner are dealt to them round-robin. The server waits until ``min-nodes`` nodes are
   known and every client has a node;
2. each round: availability (``available_clients``, seeded by ``(seed, round)``),
   ``strategy.configure_round`` with the selector (activities = the clients' training-set sizes;
   selectors that query local losses, power-of-choice and Oort, get them from the owning nodes by
   ``query`` messages), one ``train`` message per selected client, sent with ``grid.send_and_receive``
   (in *waves* so that a node never holds two of a round's messages), Horvitz-Thompson weights if
   configured, ``strategy.aggregate``;
3. evaluation of the global model on the server's copy of the clients' held-out data and on the
   central test set (every ``eval_every`` rounds and after the last, as ``simulate``), plus once
   before round 1 (``metrics.initial_test_*``);
4. ``OUT/results.json`` (a results envelope of kind ``flower``; ``rows`` as ``simulate``'s) and
   ``OUT/model/`` (:func:`trustnlp.models.io.save_model`).

**ClientApp** (:data:`client_app`): a ``train`` message carries the global parameters (``arrays``, an
``ArrayRecord``) and a ``config`` ``ConfigRecord`` with the FederatedConfig as a JSON string
(``trustnlp-config``), the round (``server-round``), the client (``client-id``) and the strategy's
instruction as a JSON string (``instruction``, e.g. FedProx's ``{"mu": 0.01}``). The node builds (and
caches, per config) the workload, runs :func:`trustnlp.federated.client.local_update` with the
simulator's seed ``client_seed(seed, round, client)`` and replies with the trained parameters
(``arrays``) and ``metrics`` (``num-examples``, ``train_loss``, ``steps``, ``client-id``). A node with
a ``partition-id`` refuses to train another client. Nothing is pickled: parameters travel as
``ArrayRecord`` (numpy ``.npy`` bytes, ``allow_pickle=False``), configurations as JSON strings.

Where the ServerApp finds its configuration (first found wins):

- run config ``config-json`` (the FederatedConfig as JSON) or ``config-file`` (a JSON/YAML file);
- the environment variable ``TRUSTNLP_FLOWER_CONFIG`` (JSON text, or a path to a config file);
- output directory: run config ``out-dir``, else ``TRUSTNLP_FLOWER_OUT``, else ``runs/flower``.

Other run-config keys: ``min-nodes`` (default 1), ``node-timeout`` (s to wait for the nodes, default
120), ``round-timeout`` (s to wait for a wave's replies, default 600).

Equality with ``simulate``: the local-training path of the bridge is the sequential one (one
``local_update`` per client), so it matches ``simulate`` with ``vectorize="off"`` (or ``auto`` when the
probe keeps the sequential path), on CPU, with the same torch thread count; parameters then agree
bitwise (float32 round-trips through ``ArrayRecord`` exactly and the aggregation sums the updates in
the same order). The continual data setting is not bridged (``setting`` must be ``static``).

Importing this module sets ``FLWR_TELEMETRY_ENABLED=0``, ``FLWR_DISABLE_UPDATE_CHECK=1`` and
``RAY_USAGE_STATS_ENABLED=0`` unless they are already set (before ``flwr`` is imported; Flower reads
the telemetry switch once, at import).

Commands::

    # Flower's simulation runtime (Ray), from Python:
    from trustnlp.federated.flower import run_flower_simulation
    run_flower_simulation(FederatedConfig(...), "runs/flower-sim", ray_temp_dir="/tmp/tnray")

    # against a running SuperLink (see flower_deploy for one on loopback):
    flwr run APP_DIR CONNECTION --run-config run_config.toml   # config-file = "...", out-dir = "..."

References: Beutel et al. 2020, "Flower: A Friendly Federated Learning Research Framework"; the
algorithms' references are in :mod:`trustnlp.federated.strategy` and :mod:`trustnlp.federated.selection`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trustnlp.errors import ConfigError, DataError, MissingDependencyError, expected
from trustnlp.federated.config import FederatedConfig

#: Environment defaults set on import (unless already set): no telemetry, no update check, no Ray usage stats.
QUIET_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
for _k, _v in QUIET_ENV.items():
    os.environ.setdefault(_k, _v)

try:
    with warnings.catch_warnings():  # flwr's CLI dependencies (typer, click) warn about Click 9 on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp
        from flwr.serverapp import Grid, ServerApp
except ImportError as _err:  # pragma: no cover - exercised only without flwr
    raise MissingDependencyError("flwr", "flower", "the Flower bridge") from _err

__all__ = [
    "ENV_CONFIG",
    "ENV_OUT",
    "DEFAULT_OUT",
    "LOG",
    "QUIET_ENV",
    "Workload",
    "NodeMap",
    "FlowerRun",
    "build_workload",
    "parse_config",
    "config_from_run_config",
    "client_app",
    "server_app",
    "make_server_app",
    "run_server",
    "discover_nodes",
    "run_flower_simulation",
]

#: A child of Flower's logger: its records reach Flower's console and the run's log stream (``flwr log``).
LOG = logging.getLogger("flwr.trustnlp")

ENV_CONFIG = "TRUSTNLP_FLOWER_CONFIG"
ENV_OUT = "TRUSTNLP_FLOWER_OUT"
DEFAULT_OUT = "runs/flower"

# message keys
_CONFIG, _ARRAYS, _METRICS, _REPLY = "config", "arrays", "metrics", "reply"
_TRUSTNLP, _CLIENT, _ROUND, _INSTRUCTION, _QUERY = "trustnlp-config", "client-id", "server-round", "instruction", "query"
_PARTITION_ID = "partition-id"


# -- the workload ----------------------------------------------------------------------------------
@dataclass
class Workload:
    """Everything a run builds from its config (as :func:`~trustnlp.federated.study.run_federated` does).

    Attributes:
        config: the run's configuration.
        task / clients / test: the task, the population (``clients[i].id == i``) and the central test set.
        model: the global model, freshly initialised under ``torch.manual_seed(config.seed)``.
        local: the local-training settings (:func:`~trustnlp.federated.engine.local_training`).
        tokenizer / label_names / tag_names / max_length / data_meta: to save the model and describe the data.
        offsets: each client's UTC offset (the ``availability`` selector's clock), or ``None``.
        num_train / num_test: split sizes.
    """

    config: FederatedConfig
    task: Any
    clients: list[Any]
    test: Any
    model: Any
    local: Any
    tokenizer: Any
    label_names: tuple[str, ...]
    tag_names: tuple[str, ...]
    max_length: int
    data_meta: Any
    offsets: np.ndarray | None
    num_train: int
    num_test: int


def build_workload(config: FederatedConfig) -> Workload:
    """The data, tokenizer, task, partition, clients and initial model of ``config``, built in the same
    order and with the same seeds as ``run_federated`` (so every process builds identical ones)."""
    import torch

    from trustnlp.federated.engine import local_training
    from trustnlp.federated.study import build_federated_model, client_offsets, prepare_population

    if config.setting != "static":
        raise ConfigError(expected("setting", "'static' (the continual data setting is not bridged to Flower)",
                                   config.setting))
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    prep = prepare_population(config)
    splits, train, tokenizer, max_length = prep.splits, prep.splits.train, prep.tokenizer, prep.max_length
    task, test_enc, partition, clients = prep.task, prep.test, prep.partition, prep.clients
    model = build_federated_model(config, tokenizer, num_labels=train.num_labels, num_tags=len(train.tag_names))
    return Workload(config=config, task=task, clients=clients, test=test_enc, model=model,
                    local=local_training(config, model), tokenizer=tokenizer, label_names=tuple(train.label_names),
                    tag_names=tuple(train.tag_names), max_length=max_length, data_meta=splits.meta,
                    offsets=client_offsets(train, partition), num_train=len(train), num_test=len(splits.test))


def parse_config(text: str, *, source: str = "the Flower run's FederatedConfig") -> FederatedConfig:
    """A :class:`FederatedConfig` from its JSON text (``ConfigError`` naming the bad field)."""
    from pydantic import ValidationError

    from trustnlp.config import format_validation_error

    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source} is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object of option -> value, but got {type(raw).__name__}.")
    try:
        return FederatedConfig(**raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[FederatedConfig, Path]:
    """The ServerApp's ``(config, out)`` from Flower's run config or the environment (see the module docs)."""
    from trustnlp.config import load_config

    text = str(run_config.get("config-json", "") or "")
    path = str(run_config.get("config-file", "") or "")
    if not text and not path:
        env = os.environ.get(ENV_CONFIG, "").strip()
        text, path = (env, "") if env.startswith("{") else ("", env)
    if text:
        config = parse_config(text)
    elif path:
        config = load_config(path, FederatedConfig)
    else:
        raise ConfigError(f"The Flower ServerApp found no FederatedConfig: set the run config `config-file` (a JSON/YAML "
                          f"file) or `config-json`, or the environment variable {ENV_CONFIG} (JSON text or a file path).")
    out = str(run_config.get("out-dir", "") or "") or os.environ.get(ENV_OUT, "") or DEFAULT_OUT
    return config, Path(out)


# -- the ClientApp ---------------------------------------------------------------------------------
@dataclass
class _ClientSide:
    """A node's cached workload: the clients (on the device) and a worker model."""

    workload: Workload
    worker: Any
    clients: list[Any]
    device: Any


_CLIENT_CACHE: dict[str, _ClientSide] = {}


def _client_side(config_json: str) -> tuple[FederatedConfig, _ClientSide]:
    key = hashlib.sha256(config_json.encode()).hexdigest()
    config = parse_config(config_json, source="the `trustnlp-config` of a Flower message")
    side = _CLIENT_CACHE.get(key)
    if side is None:
        from trustnlp.devices import move_tensors, resolve_device

        w = build_workload(config)
        device = resolve_device(config.device)
        worker = copy.deepcopy(w.model).to(device)
        clients = w.clients if device.type == "cpu" else [dataclasses.replace(c, train=move_tensors(c.train, device))
                                                          for c in w.clients]
        _CLIENT_CACHE.clear()  # one run's workload at a time per process
        side = _CLIENT_CACHE[key] = _ClientSide(w, worker, clients, device)
    elif config.threads:
        import torch

        torch.set_num_threads(config.threads)
    return config, side


def _own_client(context: Context, cid: int, num_clients: int) -> None:
    """Refuse a client this node does not hold (a node with a ``partition-id`` holds that client only)."""
    if not 0 <= cid < num_clients:
        raise ConfigError(expected("client-id", f"a client of the population (0..{num_clients - 1})", cid))
    pid = context.node_config.get(_PARTITION_ID)
    if pid is not None and int(pid) != cid:
        raise ConfigError(f"This node holds partition {int(pid)} only; it was asked to train client {cid}.")


def _params_from(record: ArrayRecord, device: Any = None) -> dict[str, Any]:
    sd = record.to_torch_state_dict()
    return {k: (v if device is None else v.to(device)) for k, v in sd.items()}


def _cpu_record(params: Mapping[str, Any]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in params.items()})


client_app = ClientApp()


@client_app.train()
def _client_train(msg: Message, context: Context) -> Message:
    """Local training of the client the message names (see the module docs)."""
    from trustnlp.federated.client import client_seed, local_update

    cfg = msg.content[_CONFIG]
    config, side = _client_side(str(cfg[_TRUSTNLP]))
    cid, rnd = int(cfg[_CLIENT]), int(cfg[_ROUND])
    _own_client(context, cid, len(side.clients))
    instruction = json.loads(str(cfg.get(_INSTRUCTION, "{}")))
    if not isinstance(instruction, dict):
        raise ConfigError(expected("instruction", "a JSON object (the strategy's client config)", instruction))
    upd = local_update(side.worker, side.workload.task, side.clients[cid], _params_from(msg.content[_ARRAYS], side.device),
                       side.workload.local, seed=client_seed(config.seed, rnd, cid), config=instruction)
    metrics = MetricRecord({"num-examples": int(upd.num_examples), "train_loss": float(upd.metrics["train_loss"]),
                            "steps": int(upd.metrics["steps"]), "client-id": cid})
    return Message(RecordDict({_ARRAYS: _cpu_record(upd.params), _METRICS: metrics}), reply_to=msg)


@client_app.query()
def _client_query(msg: Message, context: Context) -> Message:
    """``partition-id``: this node's partition (-1: none, a shared node); ``losses``: mean and RMS of the
    per-example losses of the sent global model on the named client's training data."""
    cfg = msg.content[_CONFIG]
    what = str(cfg.get(_QUERY, ""))
    if what == _PARTITION_ID:
        pid = context.node_config.get(_PARTITION_ID)
        return Message(RecordDict({_REPLY: ConfigRecord({_PARTITION_ID: -1 if pid is None else int(pid)})}), reply_to=msg)
    if what == "losses":
        from trustnlp.federated.client import load_params
        from trustnlp.federated.engine import client_losses

        _, side = _client_side(str(cfg[_TRUSTNLP]))
        cid = int(cfg[_CLIENT])
        _own_client(context, cid, len(side.clients))
        load_params(side.worker, _params_from(msg.content[_ARRAYS], side.device))
        mean, rms = client_losses(side.worker, side.workload.task, side.clients[cid].train)
        return Message(RecordDict({_REPLY: MetricRecord({"loss-mean": mean, "loss-rms": rms, "client-id": cid})}),
                       reply_to=msg)
    raise ConfigError(expected("query", f"'{_PARTITION_ID}' or 'losses'", what))


# -- the ServerApp ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeMap:
    """Which Flower node trains which client.

    Attributes:
        owner: client id -> the node whose ``partition-id`` it is.
        shared: nodes without a partition id (they train any client the server names).
        partitions: node id -> its reported partition id (-1 for shared nodes).
    """

    owner: Mapping[int, int]
    shared: tuple[int, ...]
    partitions: Mapping[int, int]

    def assign(self, client_ids: Sequence[int]) -> list[int]:
        """The node of each client: its owner, else the shared nodes round-robin (in the given order)."""
        out, k = [], 0
        for c in client_ids:
            if c in self.owner:
                out.append(self.owner[c])
            elif self.shared:
                out.append(self.shared[k % len(self.shared)])
                k += 1
            else:
                raise ConfigError(f"No Flower node holds client {c}: no node reports partition-id {c} and no shared node "
                                  "(one without a partition-id) is connected.")
        return out


@dataclass(frozen=True)
class FlowerRun:
    """What :func:`run_server` did: the final server state, ``simulate``-style rows, the node map and the
    path of the results file."""

    state: Any
    rows: tuple[dict[str, Any], ...]
    nodes: NodeMap
    initial: dict[str, float]
    results: Path
    extra: dict[str, Any] = field(default_factory=dict)


def _exchange(grid: Grid, jobs: Sequence[tuple[int, int, RecordDict]], *, message_type: str, group: str,
              timeout: float) -> dict[int, Message]:
    """Send ``(client, node, content)`` jobs in waves (a node gets at most one message per wave) and
    return each client's reply; a missing or failed reply raises ``RuntimeError`` naming the node."""
    waves: list[list[tuple[int, int, RecordDict]]] = []
    for job in jobs:
        wave = next((w for w in waves if all(j[1] != job[1] for j in w)), None)
        if wave is None:
            waves.append(wave := [])
        wave.append(job)
    out: dict[int, Message] = {}
    for wave in waves:
        msgs = [Message(content, dst_node_id=int(node), message_type=message_type, group_id=group)
                for _, node, content in wave]
        replies = {int(r.metadata.src_node_id): r for r in grid.send_and_receive(msgs, timeout=timeout)}
        for cid, node, _ in wave:
            reply = replies.get(int(node))
            if reply is None:
                raise RuntimeError(f"No reply from Flower node {node} (client {cid}, {message_type}, {group}) "
                                   f"within {timeout:g} s.")
            if reply.has_error():
                raise RuntimeError(f"Flower node {node} failed on client {cid} ({message_type}, {group}): "
                                   f"error {reply.error.code}: {reply.error.reason}")
            out[cid] = reply
    return out


def discover_nodes(grid: Grid, num_clients: int, *, min_nodes: int = 1, timeout: float = 120.0,
                   poll: float = 0.2) -> NodeMap:
    """Ask every connected node for its ``partition-id`` until ``min_nodes`` are known and every client
    has a node (its owner or a shared node); ``RuntimeError`` after ``timeout`` seconds."""
    if isinstance(min_nodes, bool) or not isinstance(min_nodes, int) or min_nodes < 1:
        raise ConfigError(expected("min-nodes", "an integer >= 1", min_nodes))
    partitions: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while True:
        new = sorted(int(n) for n in grid.get_node_ids() if int(n) not in partitions)
        if new:
            content = {n: RecordDict({_CONFIG: ConfigRecord({_QUERY: _PARTITION_ID})}) for n in new}
            replies = _exchange(grid, [(n, n, content[n]) for n in new], message_type=MessageType.QUERY,
                                group="discovery", timeout=max(1.0, deadline - time.monotonic()))
            for n, r in replies.items():
                pid = int(r.content[_REPLY][_PARTITION_ID])
                if pid >= num_clients:
                    raise ConfigError(expected(f"partition-id of Flower node {n}",
                                               f"< the number of clients ({num_clients})", pid))
                taken = [m for m, p in partitions.items() if p == pid and pid >= 0]
                if taken:
                    raise ConfigError(f"Flower nodes {taken[0]} and {n} both report partition-id {pid}; "
                                      "expected one node per partition.")
                partitions[n] = pid
        owner = {p: n for n, p in partitions.items() if p >= 0}
        shared = tuple(sorted(n for n, p in partitions.items() if p < 0))
        if len(partitions) >= min_nodes and (shared or len(owner) == num_clients):
            return NodeMap(owner, shared, dict(partitions))
        if time.monotonic() > deadline:
            missing = [c for c in range(num_clients) if c not in owner]
            raise RuntimeError(f"Waited {timeout:g} s for Flower nodes: {len(partitions)} connected (expected >= {min_nodes}); "
                               f"clients without a node: {missing[:10]}{' ...' if len(missing) > 10 else ''}.")
        time.sleep(poll)


def _flwr_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("flwr")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def run_server(grid: Grid, config: FederatedConfig, out: str | Path, *, min_nodes: int = 1, node_timeout: float = 120.0,
               round_timeout: float = 600.0, runtime: str = "flower") -> FlowerRun:
    """The ServerApp's main loop (see the module docs): ``config.rounds`` rounds over the Grid, results
    under ``out``.

    Args:
        grid: Flower's Grid (the simulation's or a SuperLink's).
        config: the run.
        out: output directory (``results.json``, ``model/``).
        min_nodes: wait for at least this many nodes.
        node_timeout: seconds to wait for the nodes.
        round_timeout: seconds to wait for one wave of replies.
        runtime: recorded in the results (``simulation`` or ``deployment``).
    """
    from trustnlp.federated.client import load_params, trainable_params
    from trustnlp.federated.engine import _ht_weights
    from trustnlp.federated.evaluation import evaluate_clients
    from trustnlp.federated.selection import SelectionContext, available_clients, make_selector
    from trustnlp.federated.strategy import ClientUpdate, make_strategy
    from trustnlp.models.io import save_model
    from trustnlp.results import Result, write_result

    started = time.perf_counter()
    out = Path(out)
    w = build_workload(config)
    model, task, clients = w.model, w.task, w.clients
    config_json = config.model_dump_json()
    nodes = discover_nodes(grid, len(clients), min_nodes=min_nodes, timeout=node_timeout)
    LOG.info("trustnlp: %d clients on %d Flower nodes (%d shared); %s, %d rounds", len(clients), len(nodes.partitions),
             len(nodes.shared), config.algorithm, config.rounds)
    strategy = make_strategy(config.algorithm, **config.algorithm_options())
    selector = make_selector(config.selection, num=config.clients_per_round, num_clients=len(clients), seed=config.seed,
                             offsets=w.offsets, rounds_per_day=config.rounds_per_day)
    state = strategy.initialize(trainable_params(model))
    initial = {f"initial_{k}": v for k, v in evaluate_clients(model, task, clients, central_test=w.test).flat().items()
               if k.startswith("test_")}
    activity = np.array([c.num_examples for c in clients], dtype=np.int64)
    steps = np.array([w.local.num_steps(int(n)) for n in activity], dtype=np.int64)

    def loss_query(rnd: int) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        def query(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            ids_list = [int(i) for i in ids]
            jobs = [(c, n, RecordDict({_ARRAYS: _cpu_record(state.params),
                                       _CONFIG: ConfigRecord({_QUERY: "losses", _CLIENT: c, _TRUSTNLP: config_json})}))
                    for c, n in zip(ids_list, nodes.assign(ids_list))]
            replies = _exchange(grid, jobs, message_type=MessageType.QUERY, group=f"round {rnd} losses", timeout=round_timeout)
            return (np.array([float(replies[c].content[_REPLY]["loss-mean"]) for c in ids_list]),
                    np.array([float(replies[c].content[_REPLY]["loss-rms"]) for c in ids_list]))
        return query

    rows: list[dict[str, Any]] = []
    first_round = None
    while state.round < config.rounds:
        rnd = state.round + 1
        t0 = time.perf_counter()
        context = SelectionContext(activity, loss_query(rnd), steps)
        online = available_clients([c.availability * config.availability for c in clients], seed=config.seed, round=rnd)
        avail = online[activity[online] > 0]
        instructions = strategy.configure_round(rnd, state, selector, available=avail, context=context)
        ids = [i.client_id for i in instructions]
        assigned = nodes.assign(ids)
        jobs = [(i.client_id, n, RecordDict({
            _ARRAYS: _cpu_record(state.params),
            _CONFIG: ConfigRecord({_TRUSTNLP: config_json, _CLIENT: i.client_id, _ROUND: rnd,
                                   _INSTRUCTION: json.dumps(dict(i.config), sort_keys=True)})}))
            for i, n in zip(instructions, assigned)]
        replies = _exchange(grid, jobs, message_type=MessageType.TRAIN, group=f"round {rnd}", timeout=round_timeout)
        updates = []
        for i in instructions:
            content = replies[i.client_id].content
            m = content[_METRICS]
            n_ex = int(m["num-examples"])
            if n_ex != clients[i.client_id].num_examples or int(m["client-id"]) != i.client_id:
                raise RuntimeError(f"Client {i.client_id}'s node reports client {int(m['client-id'])} with {n_ex} examples; the "
                                   f"server's copy has {clients[i.client_id].num_examples}: the node built different data.")
            updates.append(ClientUpdate(i.client_id, _params_from(content[_ARRAYS]), n_ex,
                                        {"train_loss": float(m["train_loss"]), "steps": int(m["steps"])}))
        if config.aggregation == "horvitz-thompson" and updates:
            updates = _ht_weights(updates, instructions, int(activity[avail].sum()))
        state, agg = strategy.aggregate(rnd, state, updates)
        load_params(model, state.params)
        seconds = time.perf_counter() - t0
        first_round = seconds if first_round is None else first_round
        row: dict[str, Any] = {"round": rnd, "available": int(len(avail)), **agg, "seconds": seconds,
                               "client_updates_per_second": len(updates) / seconds if seconds > 0 else None,
                               "path": "flower", "selected": ids, "nodes": [int(n) for n in assigned],
                               "inclusion": [i.inclusion for i in instructions],
                               "selection_reasons": [i.reason for i in instructions]}
        if config.eval_every and rnd % config.eval_every == 0 or rnd == config.rounds:
            t1 = time.perf_counter()
            row.update(evaluate_clients(model, task, clients, central_test=w.test).flat())
            row["eval_seconds"] = time.perf_counter() - t1
        rows.append(row)
        acc = row.get("test_accuracy")
        LOG.info("trustnlp: round %d/%d: clients %s, train_loss %.4f%s", rnd, config.rounds, ids,
                 float(agg.get("train_loss", float("nan"))), f", test_accuracy {acc:.4f}" if isinstance(acc, float) else "")

    save_model(model, out / "model", tokenizer=w.tokenizer, label_names=w.label_names, tag_names=w.tag_names,
               task=config.task, extra={"data": w.data_meta.name, "max_length": w.max_length, "seed": config.seed,
                                        "federated": True, "flower": True})
    last = rows[-1] if rows else {}
    reason = "non-private run: no differential-privacy guarantee (epsilon is infinite)"
    metrics: dict[str, Any] = {
        **{k: v for k, v in last.items() if k.startswith(("test_", "clients_"))},
        **initial,
        "rounds": state.round, "algorithm": config.algorithm, **config.algorithm_options(),
        "local_lr": w.local.lr, "local_optimizer": w.local.optimizer, "num_clients": len(clients),
        "clients_per_round": config.clients_per_round, "num_train": w.num_train, "num_test": w.num_test,
        "max_length": w.max_length, "selection": config.selection, "aggregation": config.aggregation,
        "runtime": runtime, "flwr_version": _flwr_version(), "num_nodes": len(nodes.partitions),
        "shared_nodes": len(nodes.shared), "node_partitions": {str(k): v for k, v in nodes.partitions.items()},
        "client_updates": sum(int(r["num_clients"]) for r in rows), "first_round_seconds": first_round,
        "total_seconds": time.perf_counter() - started,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "private": False, "epsilon": None, "delta": None, "privacy_unit": None,
    }
    result = Result(kind="flower", config={**config.model_dump(), "resolved_model": config.resolved_model(),
                                           "resolved_num_clients": len(clients)},
                    seed=config.seed, data=w.data_meta.to_dict(), metrics=metrics, rows=rows,
                    null_reasons={f"metrics.{k}": reason for k in ("epsilon", "delta", "privacy_unit")},
                    artifacts={"model": "model"})
    path = write_result(result, out / "results.json")
    LOG.info("trustnlp: results in %s", path)
    return FlowerRun(state=state, rows=tuple(rows), nodes=nodes, initial=initial, results=path,
                     extra={"selector": getattr(selector, "name", type(selector).__name__)})


def _run_config_number(run_config: Mapping[str, Any], key: str, default: float, kind: type) -> Any:
    value = run_config.get(key, default)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(expected(key, f"a {kind.__name__}", value)) from None


def make_server_app(config: FederatedConfig | None = None, out: str | Path | None = None, *, min_nodes: int | None = None,
                    runtime: str = "simulation") -> ServerApp:
    """A ServerApp running :func:`run_server`; ``config`` / ``out`` / ``min_nodes`` given here override the
    run config and the environment."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        rc = dict(context.run_config)
        if config is None:
            cfg, default_out = config_from_run_config(rc)
        else:
            cfg, default_out = config, Path(str(rc.get("out-dir", "") or os.environ.get(ENV_OUT, "") or DEFAULT_OUT))
        run_server(grid, cfg, Path(out) if out is not None else default_out,
                   min_nodes=min_nodes if min_nodes is not None else _run_config_number(rc, "min-nodes", 1, int),
                   node_timeout=_run_config_number(rc, "node-timeout", 120.0, float),
                   round_timeout=_run_config_number(rc, "round-timeout", 600.0, float),
                   runtime=str(rc.get("runtime", runtime)))

    return app


#: The ServerApp for ``flwr run`` (configuration from the run config / environment; see the module docs).
server_app = make_server_app(runtime="deployment")


def run_flower_simulation(config: FederatedConfig, out: str | Path, *, num_supernodes: int | None = None,
                          num_cpus: int | None = None, cpus_per_client: float = 1.0, ray_temp_dir: str | Path | None = None,
                          verbose: bool = False) -> Any:
    """Run ``config`` in Flower's simulation runtime (``flwr.simulation.run_simulation``, Ray backend) with
    one virtual SuperNode per client (``partition-id`` = client id) and return the results envelope.

    Args:
        config: the run.
        out: output directory of the ServerApp.
        num_supernodes: virtual nodes (default: the number of clients).
        num_cpus: CPUs Ray may use (default: all).
        cpus_per_client: CPUs per ClientApp actor (1: as many actors as CPUs).
        ray_temp_dir: Ray's session directory (keep it short: Ray's socket paths must fit 107 bytes).
        verbose: Flower's debug logging.
    """
    from flwr.simulation import run_simulation

    from trustnlp.results import read_result

    if num_supernodes is None:
        num_supernodes = len(build_workload(config).clients)
    init_args: dict[str, Any] = {"num_cpus": int(num_cpus or os.cpu_count() or 1), "include_dashboard": False,
                                 "logging_level": "ERROR", "log_to_driver": verbose}
    if ray_temp_dir is not None:
        init_args["_temp_dir"] = str(Path(ray_temp_dir).absolute())
    backend_config: dict[str, Any] = {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                                      "init_args": init_args}
    app = make_server_app(config, out, min_nodes=num_supernodes, runtime="simulation")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # run_simulation is deprecated in favour of `flwr run`
        run_simulation(server_app=app, client_app=client_app, num_supernodes=num_supernodes,
                       backend_config=backend_config, verbose_logging=verbose)
    path = Path(out) / "results.json"
    if not path.is_file():
        raise DataError(f"The Flower simulation ended without writing {path}; see Flower's log above.")
    return read_result(path)
