"""Federated simulation: our engine against Flower's simulation runtime, one fixed workload, CPU.

Usage:
    python benchmarks/fl_simulation.py [--quick] [--rounds 20] [--runs ours,flower] [--noise-seeds 9] [--json PATH]

Workload (fixed): the built-in assistant corpus, natural users (partition ``user``, 100 clients),
the bag-of-embeddings classifier over the ``word`` tokenizer (the generator's public vocabulary),
FedAvg (server lr 1), 10 clients per round, 1 local epoch of plain SGD (batch 32, the engine's
default local lr), 20 rounds, seed 0, evaluation on the central test split after the last round.

Both runs use the same data pipeline (:func:`_workload`: ``load_splits`` -> word tokenizer ->
``partition_dataset`` -> ``make_clients``, as ``run_federated`` does) and the same local training,
:func:`trustnlp.federated.client.local_update` seeded by ``client_seed(seed, round, client)``:

  ours    :func:`trustnlp.federated.engine.simulate` (sequential/batched path chosen by
          ``vectorize=auto``, a checkpoint every round, as ``trustnlp federate`` runs it);
  flower  ``flwr.simulation.run_simulation`` (flwr 1.41, Ray backend): a ``ServerApp`` running
          ``flwr.serverapp.strategy.FedAvg(fraction_train=0.1)`` and a ``ClientApp`` whose train
          handler calls ``local_update`` on its partition; ``client_resources`` one CPU per client
          (two Ray actors on the two cores), telemetry and Ray usage stats off.

Flower samples its own clients each round, so the two runs select different clients: final test
accuracies agree within noise, not bitwise. The noise band is measured too (untimed, its own
subprocess): our engine's final accuracy under ``--noise-seeds`` other selection seeds.

Each run is its own subprocess (launch time taken by the parent). Reported per run:

  start-up       seconds from launch to the end of round 1, minus one steady-state round
                 (imports, data, Ray/actors, the first call's warm-up: the fixed cost);
  updates/s      steady-state client-updates per second over rounds 2..R (a client-update = one
                 client's local training plus handing its update to the server; rounds end when the
                 server has aggregated);
  end-to-end     launch to process exit (everything, incl. the final evaluation and shutdown).

The last line is ``fl_simulation ours/flower=<x>``: Flower's end-to-end time / ours.

Threads: both runs use 1 torch thread (Ray sets ``OMP_NUM_THREADS=1`` in a one-CPU actor anyway).
On this 2-core machine 2 OpenMP threads per process make every small op of the bag model wait for
the other, busy core (two Flower actors would also oversubscribe the cores with 2 threads each),
which is contention, not the simulators' cost.

``--quick`` runs 5 rounds (development only; Flower's fixed cost dominates).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

NUM_CLIENTS, PER_ROUND, LOCAL_EPOCHS, ROUNDS, SEED = 100, 10, 1, 20, 0
ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def _config(rounds: int) -> Any:
    from trustnlp.federated.config import FederatedConfig

    return FederatedConfig(data="assistant", task="classify", model="bag", tokenizer="word", algorithm="fedavg",
                           partition="user", num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND,
                           local_epochs=LOCAL_EPOCHS, rounds=rounds, eval_every=0, seed=SEED, threads=1,
                           device="cpu", vectorize="auto")


def _workload(rounds: int) -> dict[str, Any]:
    """The fixed workload's data, clients, task and initial model (as ``run_federated`` builds them)."""
    import torch

    from trustnlp.data.partition import partition_dataset
    from trustnlp.federated.study import build_federated_model, make_clients
    from trustnlp.pipeline import MAX_LENGTH_CAP, load_splits, make_tokenizer
    from trustnlp.tasks import make_task

    cfg = _config(rounds)
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg, seed=cfg.seed)
    train = splits.train
    tokenizer = make_tokenizer(cfg.tokenizer, splits, model=cfg.resolved_model())
    task = make_task(cfg.task, num_labels=train.num_labels, tag_names=train.tag_names)
    max_length = min(MAX_LENGTH_CAP, task.longest(train, tokenizer))
    train_enc = task.encode(train, tokenizer, max_length=max_length)
    test_enc = task.encode(splits.test, tokenizer, max_length=max_length)
    partition = partition_dataset(train, cfg.partition, num_clients=cfg.num_clients, seed=cfg.seed)
    clients = make_clients(train_enc, partition, holdout=cfg.holdout, seed=cfg.seed)
    model = build_federated_model(cfg, tokenizer, num_labels=train.num_labels, num_tags=0)
    return {"config": cfg, "task": task, "clients": clients, "test": test_enc, "model": model}


# -- ours ----------------------------------------------------------------------------------------------
class _TimedStrategy:
    """Wraps a strategy; records the wall time at which each round's aggregate is done."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.marks: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def aggregate(self, rnd: int, state: Any, updates: Any) -> Any:
        out = self._inner.aggregate(rnd, state, updates)
        self.marks.append(time.time())
        return out


def run_ours(rounds: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from trustnlp.federated.engine import simulate
    from trustnlp.federated.strategy import make_strategy

    w = _workload(rounds)
    cfg = w["config"]
    strategy = _TimedStrategy(make_strategy(cfg.algorithm, **cfg.algorithm_options()))
    with tempfile.TemporaryDirectory(prefix="fl_sim_ours_") as tmp:
        sim = simulate(w["model"], w["task"], w["clients"], config=cfg, strategy=strategy,  # type: ignore[arg-type]
                       central_test=w["test"], checkpoint_dir=tmp, progress=False)
    last = sim.rows[-1]
    return {"marks": strategy.marks, "updates": [r["num_clients"] for r in sim.rows],
            "test_accuracy": last["test_accuracy"], "path": sim.path, "path_reason": sim.path_reason,
            "local_lr": sim.extra["local_lr"]}


def run_noise(rounds: int, seeds: int) -> dict[str, Any]:
    """Our engine's final test accuracy under other client selections (selection seeds 1..``seeds``; the
    same data, partition, initial model and local seeds): the noise band for comparing with Flower,
    whose own sampler picks other clients. Not timed."""
    import copy

    import torch

    torch.set_num_threads(1)
    from trustnlp.federated.engine import simulate
    from trustnlp.federated.selection import UniformSelector

    w = _workload(rounds)
    accs = []
    for s in range(1, seeds + 1):
        model = copy.deepcopy(w["model"])
        sim = simulate(model, w["task"], w["clients"], config=w["config"], central_test=w["test"],
                       selector=UniformSelector(PER_ROUND, seed=s), progress=False)
        accs.append(sim.rows[-1]["test_accuracy"])
    return {"test_accuracy": accs}


# -- flower --------------------------------------------------------------------------------------------
def _actor_cache(rounds: int) -> dict[str, Any]:
    """The workload, built once per process (a Ray actor), kept on a stable module: the ClientApp's
    functions are pickled by value from ``__main__``, so their own globals do not persist."""
    import copy

    import torch

    torch.set_num_threads(1)
    cache = sys.modules.setdefault("_fl_simulation_cache", types.ModuleType("_fl_simulation_cache"))
    if not hasattr(cache, "w"):
        w = _workload(rounds)
        from trustnlp.federated.engine import local_training

        w["local"] = local_training(w["config"], w["model"])
        w["worker"] = copy.deepcopy(w["model"])
        cache.w = w
    return cache.w


def run_flower(rounds: int) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    torch.set_num_threads(1)
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        from trustnlp.federated.client import client_seed, local_update

        w = _actor_cache(rounds)
        cid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        glob = msg.content["arrays"].to_torch_state_dict()
        upd = local_update(w["worker"], w["task"], w["clients"][cid], glob, w["local"],
                           seed=client_seed(w["config"].seed, rnd, cid))
        content = RecordDict({"arrays": ArrayRecord(upd.params),
                              "metrics": MetricRecord({"num-examples": upd.num_examples,
                                                       "train_loss": float(upd.metrics["train_loss"])})})
        return Message(content=content, reply_to=msg)

    marks: list[float] = []
    result: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        from trustnlp.federated.client import load_params, trainable_params

        w = _actor_cache(rounds)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            marks.append(time.time())
            if server_round < rounds:
                return MetricRecord({})
            model = w["model"]
            load_params(model, arrays.to_torch_state_dict())
            acc = w["task"].evaluate(model, w["test"])["accuracy"]
            result["test_accuracy"] = acc
            return MetricRecord({"test_accuracy": acc})

        strategy = FedAvg(fraction_train=PER_ROUND / NUM_CLIENTS, fraction_evaluate=0.0, min_train_nodes=PER_ROUND,
                          min_evaluate_nodes=0, min_available_nodes=NUM_CLIENTS)
        init = {k: v.detach().clone() for k, v in trainable_params(w["model"]).items()}
        strategy.start(grid=grid, initial_arrays=ArrayRecord(init), num_rounds=rounds, train_config=ConfigRecord({}),
                       evaluate_fn=evaluate)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=NUM_CLIENTS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                    "init_args": {"num_cpus": 2, "include_dashboard": False,
                                                  "logging_level": "ERROR", "log_to_driver": False}})
    # evaluate_fn runs before round 1 (round 0) and after every round: marks[1:] end rounds 1..R.
    return {"marks": marks[1:], "updates": [PER_ROUND] * rounds, "test_accuracy": result.get("test_accuracy")}


# -- driver --------------------------------------------------------------------------------------------
def _summarise(name: str, out: dict[str, Any], launch: float, wall: float) -> dict[str, Any]:
    marks = out["marks"]
    rounds = len(marks)
    steady = marks[-1] - marks[0] if rounds > 1 else float("nan")
    per_round = steady / (rounds - 1) if rounds > 1 else float("nan")
    updates = sum(out["updates"][1:])
    return {"run": name, "rounds": rounds, "round1_end_s": marks[0] - launch,
            "startup_s": marks[0] - launch - per_round, "steady_round_s": per_round,
            "updates_per_s": updates / steady if steady > 0 else float("nan"), "end_to_end_s": wall,
            "test_accuracy": out["test_accuracy"],
            **{k: out[k] for k in ("path", "path_reason", "local_lr") if k in out}}


def _spawn(which: str, rounds: int, *extra: str) -> tuple[dict[str, Any], float, float]:
    env = {**os.environ, **ENV}
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        result_file = f.name
    launch = time.time()
    proc = subprocess.run([sys.executable, __file__, "--worker", which, "--rounds", str(rounds),
                           "--result-file", result_file, *extra], env=env, capture_output=True, text=True)
    wall = time.time() - launch
    try:
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"the {which} run failed (exit code {proc.returncode})")
        out = json.loads(Path(result_file).read_text())
    finally:
        Path(result_file).unlink(missing_ok=True)
    return out, launch, wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 rounds (development only)")
    ap.add_argument("--rounds", type=int, default=None, help=f"rounds (default {ROUNDS}; 5 with --quick)")
    ap.add_argument("--runs", default="ours,flower", help="which runs, comma-separated (ours, flower)")
    ap.add_argument("--noise-seeds", type=int, default=9,
                    help="also run ours (untimed) with this many other selection seeds: the accuracy noise band (0: skip)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", choices=("ours", "flower", "noise"), help=argparse.SUPPRESS)
    ap.add_argument("--result-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    rounds = args.rounds or (5 if args.quick else ROUNDS)
    if rounds < 2:
        raise SystemExit(f"Expected --rounds to be >= 2 (steady state is rounds 2..R), but got {rounds}.")
    if args.worker:
        out = {"ours": lambda: run_ours(rounds), "flower": lambda: run_flower(rounds),
               "noise": lambda: run_noise(rounds, args.noise_seeds)}[args.worker]()
        Path(args.result_file).write_text(json.dumps(out))
        return

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in ("ours", "flower")]
    if bad:
        raise SystemExit(f"Expected --runs to name ours and/or flower, but got {bad}.")
    print(f"workload: assistant corpus, partition=user, {NUM_CLIENTS} clients, {PER_ROUND}/round, "
          f"{LOCAL_EPOCHS} local epoch, bag model (word tokenizer), FedAvg, {rounds} rounds, 1 torch thread", flush=True)
    results = []
    for r in runs:
        results.append(_summarise(r, *_spawn(r, rounds)))
        print(f"  {r}: done in {results[-1]['end_to_end_s']:.1f} s", flush=True)
    noise: list[float] = []
    if args.noise_seeds > 0 and "ours" in runs:
        noise = _spawn("noise", rounds, "--noise-seeds", str(args.noise_seeds))[0]["test_accuracy"]
        print(f"  ours with selection seeds 1..{args.noise_seeds} (untimed): done", flush=True)

    head = f"{'run':<8}{'start-up s':>12}{'round1 end s':>14}{'s/round':>10}{'updates/s':>11}{'end-to-end s':>14}{'test acc':>10}"
    print(head)
    print("-" * len(head))
    for s in results:
        print(f"{s['run']:<8}{s['startup_s']:>12.2f}{s['round1_end_s']:>14.2f}{s['steady_round_s']:>10.3f}"
              f"{s['updates_per_s']:>11.1f}{s['end_to_end_s']:>14.2f}{s['test_accuracy']:>10.4f}")
    by = {s["run"]: s for s in results}
    if "ours" in by:
        print(f"ours: local-training path {by['ours'].get('path')} ({by['ours'].get('path_reason')}), "
              f"local lr {by['ours'].get('local_lr')}")
    if noise:
        band = [by["ours"]["test_accuracy"], *noise]
        mean = sum(band) / len(band)
        sd = (sum((a - mean) ** 2 for a in band) / (len(band) - 1)) ** 0.5
        line = f"noise band (ours, {len(band)} client selections): test acc {min(band):.4f} .. {max(band):.4f}, mean {mean:.4f}, sd {sd:.4f}"
        if "flower" in by and sd > 0:
            line += f"; flower {by['flower']['test_accuracy']:.4f} (z = {(by['flower']['test_accuracy'] - mean) / sd:+.2f})"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "results": results, "noise_test_accuracy": noise},
                                              indent=2))
    if "ours" in by and "flower" in by:
        o, f = by["ours"], by["flower"]
        print(f"steady-state updates/s ours/flower = {o['updates_per_s'] / f['updates_per_s']:.2f}; "
              f"start-up flower-ours = {f['startup_s'] - o['startup_s']:.2f} s; "
              f"|test acc difference| = {abs(o['test_accuracy'] - f['test_accuracy']):.4f}")
        print(f"fl_simulation ours/flower={f['end_to_end_s'] / o['end_to_end_s']:.2f}")


if __name__ == "__main__":
    main()
