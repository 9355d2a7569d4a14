"""`trustnlp demo`: the main job on the built-in assistant corpus.

For now: train a bag-of-embeddings and a CNN intent classifier on the generated assistant corpus,
and the bag model privately (DP-SGD) at epsilon 8 and 1; evaluate all on held-out templates and
render one report. Each later capability (audits, federated runs, fairness) adds its stage here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from trustnlp.config import TrainConfig
from trustnlp.results import atomic_write_json

__all__ = ["run_demo", "DEMO_STAGES"]

# (name, config, time budget in seconds on 2 CPU cores)
_DP = {"model": "bag", "dp": True, "batch_size": 1024, "epochs": 30, "lr": 0.05, "max_grad_norm": 0.1}
DEMO_STAGES: tuple[tuple[str, dict[str, Any], float], ...] = (
    ("bag", {"model": "bag", "epochs": 5}, 60.0),
    ("cnn", {"model": "cnn", "epochs": 3}, 240.0),
    ("bag-dp-eps8", {**_DP, "epsilon": 8.0}, 90.0),
    ("bag-dp-eps1", {**_DP, "epsilon": 1.0}, 90.0),
)


def run_demo(out: str | Path, *, seed: int = 0, progress: bool = True, console: Console | None = None,
             corpus_size: int | None = None) -> Path:
    """Run every demo stage into ``out`` and render ``out/report.html``; return the report path.

    ``corpus_size`` shrinks the generated corpus (tests); the default is the generator's 24k."""
    from trustnlp.pipeline import run_train
    from trustnlp.report import render_report

    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: list[dict[str, Any]] = []
    results = []
    for name, overrides, budget in DEMO_STAGES:
        console.print(f"[bold]stage[/] {name} (budget {budget:.0f} s)")
        t0 = time.perf_counter()
        cfg = TrainConfig(data="assistant", seed=seed, corpus_size=corpus_size, **overrides)
        results.append((name, run_train(cfg, out / name, progress=progress)))
        seconds = time.perf_counter() - t0
        timings.append({"stage": name, "seconds": seconds, "budget": budget, "over_budget": seconds > budget})
        if seconds > budget:
            console.print(f"[yellow]warning:[/] stage {name} took {seconds:.0f} s, over its {budget:.0f} s budget")
    atomic_write_json(out / "stages.json", {"seed": seed, "stages": timings})
    rep = render_report([out / name for name, _ in results], out, title="trustnlp demo: assistant corpus")
    table = Table(title="trustnlp demo — built-in assistant corpus")
    for col in ("stage", "model", "test accuracy", "macro-F1", "epsilon", "seconds"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for (name, res), t in zip(results, timings):
        m = res.metrics
        table.add_row(name, str(res.config["model"]), f"{m['test_accuracy']:.4f}", f"{m['test_macro_f1']:.4f}",
                      "∞" if m.get("epsilon") is None else f"{m['epsilon']:.2f}", f"{t['seconds']:.1f}")
    table.caption = "epsilon ∞ = non-private; test = held-out templates"
    console.print(table)
    console.print(f"Report: {rep.html_path}")
    return rep.html_path
