"""The in-process federated simulator: rounds of selection, local training, aggregation, evaluation.

Each round ``t``:

0. the data setting gives each client what it holds in the round's period
   (:class:`~trustnlp.federated.settings.ContinualSchedule`: everything in the static setting;
   what has arrived and not been deleted in the continual one); a client holding nothing is not
   available; its holding is its *activity* ``n_k``;
1. availability: client ``c`` is online with probability ``a_c`` (seeded by ``(seed, t)``);
2. ``strategy.configure_round`` picks the clients (the selector, uniform by default, seeded by
   ``(seed, t)``, knowing every activity and able to query candidates' local losses) and their
   instructions; who was picked, with what inclusion probability and why, goes into the round's row;
3. each selected client trains from the global model on its own data
   (:func:`~trustnlp.federated.client.local_update`, seeded by ``(seed, t, client)``), or all of them
   at once (:func:`~trustnlp.federated.vectorized.train_vectorized`);
4. ``strategy.aggregate`` forms the example-weighted mean (or, with ``aggregation:
   horvitz-thompson``, the unnormalised sum with weights ``n_k / (N pi_k)``) and takes the server
   optimiser step;
5. every ``eval_every`` rounds (and after the last; in the continual setting also at the end of every
   period) the global model is evaluated on each client's held-out data and on the central test set;
   at the end of period ``p`` also on the data that arrives in period ``p + 1`` (``future_*``);
6. a checkpoint is written (:mod:`trustnlp.federated._state`), with the selector's state.

Every random choice is a function of ``(seed, round, client)``, the server state and the model are
checkpointed bitwise, and the local-training path chosen at the start is recorded, so a resumed run
ends bitwise equal to an uninterrupted one.

Path choice (``vectorize="auto"``): if the model can be batched
(:func:`~trustnlp.federated.vectorized.vectorization_blocker`), a probe times round 1's clients'
first local steps one after another (after a warm-up, on a throw-away copy) and estimates a round
(``per-client step x total local steps``). If the whole run's sequential training is estimated
below :data:`BATCHED_SETUP_SECONDS` (the batched path's one-off set-up), it stays sequential;
otherwise one batched step of the same clients is timed too (``batched step x max local steps``) and
the faster path is kept for the whole run. The estimates and the choice are in the results. On the
2-core CPU the sequential path was the faster one for every model measured (bag, CNN, transformer:
batched 1.6-2x slower); batching pays off where kernel launches, not arithmetic, dominate (GPUs).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from trustnlp.errors import ConfigError, expected
from trustnlp.federated._state import load_round, save_round
from trustnlp.federated.client import (
    Client,
    LocalTraining,
    client_seed,
    default_local_lr,
    load_params,
    local_update,
    subset,
    trainable_params,
)
from trustnlp.federated.config import FederatedConfig
from trustnlp.federated.evaluation import ClientEvaluation, evaluate_clients
from trustnlp.federated.selection import SelectionContext, Selector, UniformSelector, available_clients
from trustnlp.federated.server import RoundAggregator
from trustnlp.federated.strategy import ClientUpdate, FitInstruction, ServerState, Strategy, make_strategy
from trustnlp.federated.vectorized import train_vectorized, vectorization_blocker
from trustnlp.runtime import tune_allocator
from trustnlp.tasks import IGNORE_INDEX, EncodedData, Task

if TYPE_CHECKING:
    from trustnlp.federated.settings import ContinualSchedule

__all__ = ["simulate", "SimulationResult", "local_training", "train_round", "client_losses", "concat_encoded",
           "BATCHED_SETUP_SECONDS"]

#: One-off cost of the batched path: ``torch.func.grad`` imports ``torch._dynamo`` on first use
#: (1-4 s measured on the 2-core machine). Runs whose whole sequential training is estimated below it
#: are not probed for batching (it could not pay off).
BATCHED_SETUP_SECONDS = 3.0
PROBE_REPEATS = 3


@dataclass(frozen=True)
class SimulationResult:
    """What a simulation did.

    Attributes:
        rows: one per round (``round``, ``num_clients``, ``num_examples``, ``train_loss``,
            ``pseudo_grad_norm``, ``seconds``, and on evaluation rounds ``clients_*`` / ``test_*``).
        rounds: rounds completed.
        state: the final server state.
        path / path_reason: ``vectorized`` or ``sequential``, and why.
        probe: the speed probe's estimates (seconds per round for each path), if it ran.
        evaluation: the last evaluation (``None`` if none ran in this process).
        client_updates: client updates done in this process.
        setup_seconds: from the call to the start of the first round (incl. the probe).
        train_seconds: time in rounds (local training + aggregation), excluding evaluation.
        first_round_seconds: the first round run in this process.
        updates_per_second: steady-state client updates per second (rounds after the first).
        resumed_from_round / interrupted: resume facts.
    """

    rows: tuple[dict[str, Any], ...]
    rounds: int
    state: ServerState
    path: str
    path_reason: str
    probe: dict[str, float] | None
    evaluation: ClientEvaluation | None
    client_updates: int
    setup_seconds: float
    train_seconds: float
    first_round_seconds: float
    updates_per_second: float
    resumed_from_round: int | None = None
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the server state's tensors (JSON-able through ``trustnlp.results.to_jsonable``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("state", "evaluation")}
        out["evaluation"] = self.evaluation.to_dict() if self.evaluation is not None else None
        return out


def local_training(config: FederatedConfig, model: torch.nn.Module) -> LocalTraining:
    """The local-training settings of ``config`` (default lr: :func:`~trustnlp.federated.client.default_local_lr`)."""
    lr = config.lr or default_local_lr(model, config.local_optimizer)
    return LocalTraining(epochs=config.local_epochs, steps=config.local_steps, batch_size=config.batch_size, lr=lr,
                         optimizer=config.local_optimizer, weight_decay=config.weight_decay)


def train_round(path: str, worker: torch.nn.Module, task: Task, clients: Sequence[Client], instructions: Sequence[FitInstruction],
                params: dict[str, torch.Tensor], local: LocalTraining, *, seed: int, round: int) -> list[ClientUpdate]:  # noqa: A002
    """Local training of a round's clients on ``path`` (``vectorized`` or ``sequential``)."""
    chosen = [clients[i.client_id] for i in instructions]
    seeds = [client_seed(seed, round, c.id) for c in chosen]
    if not chosen:
        return []
    if path == "vectorized":
        return train_vectorized(worker, task, chosen, params, local, seeds=seeds, configs=[i.config for i in instructions])
    return [local_update(worker, task, c, params, local, seed=s, config=i.config) for c, s, i in zip(chosen, seeds, instructions)]


def _probe_sequential(worker: torch.nn.Module, task: Task, chosen: Sequence[Client], params: dict[str, torch.Tensor],
                      local: LocalTraining, seeds: Sequence[int]) -> dict[str, float]:
    """Seconds per client step of the sequential path (one step per client, after a warm-up; the
    fastest of :data:`PROBE_REPEATS` passes, so that a busy machine disturbs the estimate less)."""
    one = dataclasses.replace(local, steps=1)
    local_update(worker, task, chosen[0], params, one, seed=seeds[0])
    times = []
    for _ in range(PROBE_REPEATS):
        t0 = time.perf_counter()
        for c, s in zip(chosen, seeds):
            local_update(worker, task, c, params, one, seed=s)
        times.append(time.perf_counter() - t0)
    seq_step = min(times) / len(chosen)
    steps = [local.num_steps(c.num_examples) for c in chosen]
    return {"sequential_client_step_seconds": seq_step, "sequential_round_seconds": seq_step * sum(steps)}


def _probe_vectorized(worker: torch.nn.Module, task: Task, chosen: Sequence[Client], params: dict[str, torch.Tensor],
                      local: LocalTraining, seeds: Sequence[int]) -> dict[str, float]:
    """Seconds per round of the batched path (one batched step, after a warm-up; fastest of
    :data:`PROBE_REPEATS`)."""
    one = dataclasses.replace(local, steps=1)
    train_vectorized(worker, task, chosen, params, one, seeds=seeds)
    times = []
    for _ in range(PROBE_REPEATS):
        t0 = time.perf_counter()
        train_vectorized(worker, task, chosen, params, one, seeds=seeds)
        times.append(time.perf_counter() - t0)
    vec_step = min(times)
    steps = [local.num_steps(c.num_examples) for c in chosen]
    return {"vectorized_step_seconds": vec_step, "vectorized_round_seconds": vec_step * max(steps)}


def _fingerprint(config: FederatedConfig, strategy: Strategy, clients: Sequence[Client]) -> str:
    keep = config.model_dump(exclude={"rounds", "eval_every", "threads", "device"})
    keep.update({"strategy": strategy.name, "strategy_options": strategy.options,
                 "clients": [c.num_examples for c in clients]})
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _to(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to(v, device) for k, v in tree.items()}
    return tree


def concat_encoded(parts: Sequence[EncodedData], *, pad_id: int = 0) -> EncodedData:
    """The examples of ``parts`` in order, padded to the longest (attention mask 0 on padding)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ConfigError("Expected at least one example to concatenate, but got none.")
    t = max(p.input_ids.shape[1] for p in parts)

    def pad(x: torch.Tensor, fill: int) -> torch.Tensor:
        return x if x.shape[1] == t else torch.cat([x, x.new_full((x.shape[0], t - x.shape[1]), fill)], dim=1)

    labels = None if parts[0].labels is None else torch.cat([p.labels for p in parts])
    tags = None if parts[0].tag_ids is None else torch.cat([pad(p.tag_ids, IGNORE_INDEX) for p in parts])
    return EncodedData(torch.cat([pad(p.input_ids, pad_id) for p in parts]), torch.cat([pad(p.attention_mask, 0) for p in parts]),
                       labels, tags, 0)


@torch.no_grad()
def client_losses(model: torch.nn.Module, task: Task, data: EncodedData, *, batch_size: int = 256) -> tuple[float, float]:
    """Mean and root mean square of the per-example losses of ``model`` (eval mode) on ``data``."""
    was = model.training
    model.eval()
    try:
        total, sq, n = 0.0, 0.0, 0
        for b in data.batches(batch_size):
            per = task.loss(model(b["input_ids"], b["attention_mask"]), b, reduction="none").double()
            total, sq, n = total + float(per.sum()), sq + float(per.pow(2).sum()), n + per.numel()
    finally:
        model.train(was)
    return (total / n, math.sqrt(sq / n)) if n else (float("nan"), float("nan"))


class _Population:
    """The clients as they are in each period of the data setting (views cached per period)."""

    def __init__(self, clients: Sequence[Client], schedule: ContinualSchedule | None, rounds: int) -> None:
        self.clients, self.schedule, self.rounds = list(clients), schedule, rounds
        self._period, self._views = -1, self.clients

    @property
    def periods(self) -> int:
        return 1 if self.schedule is None else self.schedule.periods

    def period(self, rnd: int) -> int:
        """The period of round ``rnd`` (rounds spread evenly over the periods)."""
        return min(self.periods - 1, (rnd - 1) * self.periods // self.rounds)

    def views(self, period: int) -> list[Client]:
        if self.schedule is None:
            return self.clients
        if period != self._period:
            held = self.schedule.held(period)
            self._views = [dataclasses.replace(c, train=subset(c.train, held[c.id])) if len(held[c.id]) else
                           dataclasses.replace(c, train=_EMPTY) for c in self.clients]
            self._period = period
        return self._views

    def future(self, period: int, pad_id: int) -> EncodedData | None:
        """The data arriving in ``period + 1`` on every client (``None`` past the last period or if none)."""
        if self.schedule is None or period + 1 >= self.periods:
            return None
        idx = self.schedule.future_indices(period)
        parts = [subset(c.train, idx[c.id]) for c in self.clients if len(idx[c.id])]
        return concat_encoded(parts, pad_id=pad_id) if parts else None


_EMPTY = EncodedData(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long), None, None, 0)


def _context(model: torch.nn.Module, task: Task, views: Sequence[Client], local: LocalTraining) -> SelectionContext:
    activity = np.array([v.num_examples for v in views], dtype=np.int64)

    def query(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = [client_losses(model, task, views[int(i)].train) for i in ids]
        return np.array([o[0] for o in out]), np.array([o[1] for o in out])

    steps = np.array([local.num_steps(int(n)) if n else 0 for n in activity], dtype=np.int64)
    return SelectionContext(activity, query, steps)


def _instruct(strategy: Strategy, selector: Selector, rnd: int, state: ServerState, avail: np.ndarray,
              context: SelectionContext) -> list[FitInstruction]:
    return strategy.configure_round(rnd, state, selector, available=avail, context=context)


def _ht_weights(updates: list[ClientUpdate], instructions: Sequence[FitInstruction], total: int) -> list[ClientUpdate]:
    """Horvitz-Thompson weights ``n_k / (N pi_k)``."""
    out = []
    for u, ins in zip(updates, instructions):
        if ins.inclusion is None or not ins.inclusion > 0:
            raise ConfigError(f"Horvitz-Thompson aggregation needs each selected client's inclusion probability; client "
                              f"{ins.client_id} has {ins.inclusion!r} (use a selector that knows it: uniform, activity, availability).")
        out.append(dataclasses.replace(u, weight=u.num_examples / (total * ins.inclusion)))
    return out


def simulate(
    model: torch.nn.Module,
    task: Task,
    clients: Sequence[Client],
    *,
    config: FederatedConfig,
    strategy: Strategy | None = None,
    selector: Selector | None = None,
    schedule: ContinualSchedule | None = None,
    central_test: EncodedData | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    stop_after_rounds: int | None = None,
    pad_id: int = 0,
) -> SimulationResult:
    """Run ``config.rounds`` rounds of federated training of ``model`` (updated in place).

    Args:
        model: the global model (any module the task understands); its trainable parameters are federated.
        task: loss and metrics.
        clients: the population (``clients[i].id == i``), each with all the training data it will ever have.
        config: rounds, clients per round, local training, algorithm, aggregation, evaluation, seed, vectorize.
        strategy: the server's strategy (default: ``config.algorithm`` with its options).
        selector: who is picked each round (default: uniform, ``config.clients_per_round``).
        schedule: the continual data setting (``None`` = static: every client holds all its data from round 1);
            ``schedule.arrived``/``held`` index each client's ``train``.
        central_test: a central test set, evaluated with the clients.
        checkpoint_dir: a checkpoint is written under it after every round; if it holds one of the
            same configuration, the run resumes from it.
        progress: show a progress bar.
        stop_after_rounds: stop (after checkpointing) once this many rounds are done (tests).
        pad_id: the tokenizer's padding id (to pool the next period's data for ``future_*``).

    Raises:
        ConfigError: bad population, or ``vectorize="on"`` for a model that cannot be batched.
    """
    from trustnlp.devices import DeviceModel, move_tensors, resolve_device

    started = time.perf_counter()
    if not clients:
        raise ConfigError("Expected at least one client, but got none.")
    for i, c in enumerate(clients):
        if c.id != i:
            raise ConfigError(expected(f"clients[{i}].id", f"{i} (clients are numbered in order)", c.id))
        if c.num_examples < 1:
            raise ConfigError(f"Client {i} has no training examples; expected every client to have at least one.")
    if config.clients_per_round > len(clients):
        raise ConfigError(expected("clients_per_round", f"<= the number of clients ({len(clients)})", config.clients_per_round))
    if schedule is not None:
        if schedule.num_clients != len(clients):
            raise ConfigError(expected("schedule", f"one entry per client ({len(clients)})", schedule.num_clients))
        if config.rounds < schedule.periods:
            raise ConfigError(expected("rounds", f">= the number of periods ({schedule.periods}) in the continual setting",
                                       config.rounds))
    if config.threads:
        torch.set_num_threads(config.threads)
    tune_allocator()  # keep freed tensor memory: no per-step page faults (trustnlp.runtime)
    device = resolve_device(config.device)
    model.to(device)
    if device.type != "cpu":
        clients = [dataclasses.replace(c, train=move_tensors(c.train, device)) for c in clients]
    strategy = strategy or make_strategy(config.algorithm, **config.algorithm_options())
    selector = selector or UniformSelector(config.clients_per_round, seed=config.seed)
    local = local_training(config, model)
    worker = copy.deepcopy(model)
    runner = DeviceModel(model, device=device)
    fingerprint = _fingerprint(config, strategy, clients)
    population = _Population(clients, schedule, config.rounds)
    ht = getattr(config, "aggregation", "sample") == "horvitz-thompson"
    privacy = _client_dp_plan(config, len(clients))
    aggregator = RoundAggregator(config, num_clients=len(clients), noise_multiplier=privacy.get("noise_multiplier"))

    ckpt = Path(checkpoint_dir) / "checkpoint" if checkpoint_dir is not None else None
    state = strategy.initialize(trainable_params(model))
    rows: list[dict[str, Any]] = []
    path, reason, probe, resumed = "", "", None, None
    if ckpt is not None and (ckpt / "state.json").exists():
        saved, opt_state = load_round(ckpt, model=model)
        if saved.get("fingerprint") != fingerprint:
            raise ConfigError(f"The checkpoint in {ckpt} was written by a different configuration (fingerprint "
                              f"{saved.get('fingerprint')} != {fingerprint}). Use a new --out directory or delete it.")
        state = ServerState(int(saved["round"]), {k: v.detach().clone() for k, v in trainable_params(model).items()},
                            _to(opt_state, device))
        rows, path, reason, probe = list(saved["rows"]), saved["path"], saved["path_reason"], saved.get("probe")
        if hasattr(selector, "load_state_dict"):
            selector.load_state_dict(saved.get("selector_state") or {})
        aggregator.load_state_dict(saved.get("aggregator_state") or {})
        resumed = state.round

    def round_inputs(rnd: int, sel: Selector) -> tuple[list[Client], np.ndarray, SelectionContext, list[FitInstruction]]:
        views = population.views(population.period(rnd))
        context = _context(runner, task, views, local)
        online = available_clients([c.availability * config.availability for c in clients], seed=config.seed, round=rnd)
        avail = online[context.activity[online] > 0]
        return views, avail, context, _instruct(strategy, sel, rnd, state, avail, context)

    if not path:
        views0, _, _, first = round_inputs(state.round + 1, copy.deepcopy(selector))  # the probe must not move the selector
        path, reason, probe = _choose_path(config, worker, task, views0, first, state, local)

    eval_result: ClientEvaluation | None = None
    seconds: list[float] = []
    updates_done: list[int] = []
    setup = time.perf_counter() - started
    bar = tqdm(total=config.rounds, initial=state.round, desc=f"federated {strategy.name}", unit="round",
               disable=None if progress else True, leave=False)
    interrupted = False
    try:
        while state.round < config.rounds:
            rnd = state.round + 1
            t0 = time.perf_counter()
            views, avail, context, instructions = round_inputs(rnd, selector)
            updates = train_round(path, worker, task, views, instructions, state.params, local, seed=config.seed, round=rnd)
            if ht and updates:
                updates = _ht_weights(updates, instructions, int(context.activity[avail].sum()))
            if aggregator.plain:
                state, agg = strategy.aggregate(rnd, state, updates)
            else:
                state, agg = aggregator.aggregate(rnd, strategy, state, updates, instructions,
                                                  steps={int(i): int(context.steps[i]) for i in avail})
            load_params(model, state.params)
            seconds.append(time.perf_counter() - t0)
            updates_done.append(len(updates))
            row: dict[str, Any] = {"round": rnd, "available": int(len(avail)), **agg, "seconds": seconds[-1],
                                   "client_updates_per_second": len(updates) / seconds[-1] if seconds[-1] > 0 else None,
                                   "path": path, "selected": [i.client_id for i in instructions],
                                   "inclusion": [i.inclusion for i in instructions],
                                   "selection_reasons": [i.reason for i in instructions]}
            period = population.period(rnd)
            period_end = schedule is not None and (rnd == config.rounds or population.period(rnd + 1) != period)
            if schedule is not None:
                row.update({"period": period, "held_examples": int(context.activity.sum()),
                            "clients_with_data": int((context.activity > 0).sum())})
            if config.eval_every and rnd % config.eval_every == 0 or rnd == config.rounds or period_end:
                t1 = time.perf_counter()
                eval_result = evaluate_clients(runner, task, clients, central_test=central_test)
                row.update(eval_result.flat())
                future = population.future(period, pad_id) if period_end else None
                if future is not None:
                    row.update({f"future_{k}": v for k, v in task.evaluate(runner, future).items()})
                    row["future_examples"] = len(future)
                row["eval_seconds"] = time.perf_counter() - t1
            rows.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("train_loss", "test_accuracy", "test_perplexity")
                             if isinstance(row.get(k), float)})
            if ckpt is not None:
                save_round(ckpt, model=model, opt_state=state.opt_state,
                           state={"round": state.round, "rows": rows, "fingerprint": fingerprint, "path": path,
                                  "path_reason": reason, "probe": probe,
                                  "selector_state": selector.state_dict() if hasattr(selector, "state_dict") else {},
                                  "aggregator_state": aggregator.state_dict()})
            if stop_after_rounds is not None and state.round >= stop_after_rounds and state.round < config.rounds:
                interrupted = True
                break
    finally:
        bar.close()
    steady = sum(seconds[1:])
    return SimulationResult(
        rows=tuple(rows), rounds=state.round, state=state, path=path, path_reason=reason, probe=probe,
        evaluation=eval_result, client_updates=sum(updates_done), setup_seconds=setup, train_seconds=sum(seconds),
        first_round_seconds=seconds[0] if seconds else float("nan"),
        updates_per_second=sum(updates_done[1:]) / steady if steady > 0 else float("nan"),
        resumed_from_round=resumed, interrupted=interrupted,
        extra={"local_lr": local.lr, "local_optimizer": local.optimizer, "device": str(device), "selector": selector.name
               if hasattr(selector, "name") else type(selector).__name__,
               "client_dp": {**privacy, **_client_dp_spent(config, privacy, len(clients), state.round),
                             "final_clip_norm": aggregator.clip_norm} if privacy else None},
    )


def _client_dp_plan(config: FederatedConfig, num_clients: int) -> dict[str, Any]:
    """Client DP's noise multiplier (calibrated to ``config.epsilon`` when given), delta and sampling."""
    if not config.client_dp:
        return {}
    from trustnlp.federated.client_dp import calibrate_client_noise
    from trustnlp.privacy.accounting import default_delta

    sampling = "poisson" if config.selection.startswith("activity") else "uniform"
    delta = config.delta if config.delta is not None else default_delta(num_clients)
    if config.noise_multiplier is not None:
        z = float(config.noise_multiplier)
    else:
        z = calibrate_client_noise(float(config.epsilon), delta, sampling=sampling, num_clients=num_clients,
                                   clients_per_round=config.clients_per_round, rounds=config.rounds, accountant=config.accountant)
    return {"noise_multiplier": z, "delta": delta, "sampling": sampling, "target_epsilon": config.epsilon,
            "accountant": config.accountant, "clip_norm": config.clip_norm, "adaptive_clip": config.adaptive_clip}


def _client_dp_spent(config: FederatedConfig, privacy: Mapping[str, Any], num_clients: int, rounds: int) -> dict[str, Any]:
    if not privacy:
        return {}
    from trustnlp.federated.client_dp import client_dp_epsilon

    eps = client_dp_epsilon(noise_multiplier=privacy["noise_multiplier"], sampling=privacy["sampling"],
                            num_clients=num_clients, clients_per_round=config.clients_per_round, rounds=max(rounds, 1),
                            delta=privacy["delta"], accountant=config.accountant) if rounds else 0.0
    return {"epsilon": eps, "rounds_accounted": rounds}


def _choose_path(config: FederatedConfig, worker: torch.nn.Module, task: Task, clients: Sequence[Client],
                 instructions: Sequence[FitInstruction], state: ServerState,
                 local: LocalTraining) -> tuple[str, str, dict[str, float] | None]:
    """``(path, reason, probe)`` for ``config.vectorize`` (``instructions``: the first round's choice)."""
    if config.vectorize == "off":
        return "sequential", "vectorize=off", None
    blocker = vectorization_blocker(worker, local)
    if blocker is not None:
        if config.vectorize == "on":
            raise ConfigError(f"Expected a model that can be trained batched for `vectorize: on`, but {blocker}.")
        return "sequential", f"not batched: {blocker}", None
    if config.vectorize == "on":
        return "vectorized", "vectorize=on", None
    chosen = [clients[i.client_id] for i in instructions]
    if len(chosen) < 2:
        return "sequential", "a single client per round: nothing to batch", None
    seeds = [client_seed(config.seed, state.round + 1, c.id) for c in chosen]
    probe = _probe_sequential(worker, task, chosen, state.params, local, seeds)
    total = probe["sequential_round_seconds"] * (config.rounds - state.round)
    if total < BATCHED_SETUP_SECONDS:
        return "sequential", (f"estimated sequential training {total:.2f} s < the batched path's one-off set-up "
                              f"(~{BATCHED_SETUP_SECONDS:g} s)"), probe
    try:
        probe.update(_probe_vectorized(worker, task, chosen, state.params, local, seeds))
    except (RuntimeError, NotImplementedError, ValueError) as err:  # an op torch.func cannot batch
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return "sequential", f"batched training failed in the probe ({type(err).__name__}: {first[:200]})", probe
    faster = probe["vectorized_round_seconds"] < probe["sequential_round_seconds"]
    ratio = probe["sequential_round_seconds"] / max(probe["vectorized_round_seconds"], 1e-12)
    return ("vectorized" if faster else "sequential"), f"probe: batched/sequential speed ratio {ratio:.2f}", probe
