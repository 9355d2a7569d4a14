"""Summarise the device-selection study (``selection_study.sh``): curves and final metrics per selection.

Usage:
    python examples/federated/summarise_selection.py OUT

Reads ``OUT/<study>/<setting>/<selection>/seed-S/results.json`` and writes

- ``OUT/summary.json`` and ``OUT/summary.md``: per study (data-task), setting and selection, the mean over
  seeds and a 95% Student-t interval of the final central test metric (accuracy for intent classification,
  perplexity for language modelling), in the continual setting also of the next-period ("future") metric
  averaged over the periods, and the paired per-seed difference to uniform selection (same seed: same
  partition, initialisation and data schedule), with its interval;
- ``OUT/selection_study.png`` / ``.svg``: the central test metric against rounds, one panel per study and
  setting, one line per selection (mean over seeds, shaded 95% interval).

"Beats" below means the paired difference's 95% interval excludes 0 in the better direction.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from trustnlp.report.plots import figure_png, figure_svg, style
from trustnlp.results import read_result

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarise import interval  # noqa: E402  (the alpha sweep's 95% t-interval, one definition)

LOWER_BETTER = {"perplexity"}


def _metric(task: str) -> str:
    return "perplexity" if task == "lm" else "accuracy"


def _verdict(diff: dict[str, Any], metric: str) -> str:
    ci = diff.get("ci95")
    if ci is None:
        return "n/a"
    better = (ci[1] < 0) if metric in LOWER_BETTER else (ci[0] > 0)
    worse = (ci[0] > 0) if metric in LOWER_BETTER else (ci[1] < 0)
    return "beats uniform" if better else ("worse than uniform" if worse else "no significant difference")


def summarise(out: Path) -> dict[str, Any]:
    runs: dict[tuple[str, str, str], dict[int, Any]] = {}
    for p in sorted(out.glob("*/*/*/seed-*/results.json")):
        sel, setting, study = p.parent.parent.name, p.parent.parent.parent.name, p.parent.parent.parent.parent.name
        runs.setdefault((study, setting, sel), {})[int(p.parent.name.removeprefix("seed-"))] = read_result(p)
    if not runs:
        raise SystemExit(f"No runs under {out}/<study>/<setting>/<selection>/seed-*/results.json; run selection_study.sh first.")
    table = []
    for (study, setting, sel), by_seed in sorted(runs.items()):
        metric = _metric(study.rsplit("-", 1)[-1])
        final = {s: float(r.metrics[f"test_{metric}"]) for s, r in by_seed.items() if f"test_{metric}" in r.metrics}
        future_key = f"future_{metric}_mean_over_periods"
        future = {s: float(r.metrics[future_key]) for s, r in by_seed.items() if future_key in r.metrics}
        base = runs.get((study, setting, "uniform"), {})
        paired = [final[s] - float(base[s].metrics[f"test_{metric}"]) for s in sorted(final) if s in base and sel != "uniform"]
        paired_future = [future[s] - float(base[s].metrics[future_key]) for s in sorted(future)
                         if s in base and future_key in base[s].metrics and sel != "uniform"]
        rho = [r.metrics.get("selection_activity_correlation") for r in by_seed.values()]
        row = {"study": study, "setting": setting, "selection": sel, "metric": metric, "seeds": sorted(final),
               "final": interval(list(final.values())), "future": interval(list(future.values())) if future else None,
               "diff_vs_uniform": interval(paired) if paired else None,
               "future_diff_vs_uniform": interval(paired_future) if paired_future else None,
               "spearman_activity_frequency": float(np.mean([x for x in rho if x is not None])) if any(
                   x is not None for x in rho) else None}
        row["verdict"] = _verdict(row["diff_vs_uniform"], metric) if row["diff_vs_uniform"] else ""
        table.append(row)
    summary = {"runs": table}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(_markdown(table), encoding="utf-8")
    _figure(out, runs)
    return summary


def _fmt(iv: dict[str, Any] | None, digits: int = 3) -> str:
    if not iv:
        return "-"
    if iv["ci95"] is None:
        return f"{iv['mean']:.{digits}f}"
    return f"{iv['mean']:.{digits}f} [{iv['ci95'][0]:.{digits}f}, {iv['ci95'][1]:.{digits}f}]"


def _markdown(table: list[dict[str, Any]]) -> str:
    lines = ["# Device selection study", "",
             "Mean over seeds [95% t-interval]; difference = selection - uniform, paired by seed.", "",
             "| study | setting | selection | final test | diff vs uniform | future (next period) | future diff | "
             "Spearman(activity, times selected) | verdict |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in table:
        d = 2 if r["metric"] == "perplexity" else 3
        rho = f"{r['spearman_activity_frequency']:.2f}" if r["spearman_activity_frequency"] is not None else "-"
        lines.append(f"| {r['study']} ({r['metric']}) | {r['setting']} | {r['selection']} | {_fmt(r['final'], d)} | "
                     f"{_fmt(r['diff_vs_uniform'], d)} | {_fmt(r['future'], d)} | {_fmt(r['future_diff_vs_uniform'], d)} | "
                     f"{rho} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def _figure(out: Path, runs: dict[tuple[str, str, str], dict[int, Any]]) -> None:
    panels = sorted({(study, setting) for study, setting, _ in runs})
    with style():
        ncols = min(3, len(panels))
        nrows = -(-len(panels) // ncols)
        fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), dpi=100, layout="constrained")
        axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        for ax, (study, setting) in zip(axes, panels):
            metric = _metric(study.rsplit("-", 1)[-1])
            for j, sel in enumerate(sorted(s for st, se, s in runs if (st, se) == (study, setting))):
                curves = []
                for r in runs[(study, setting, sel)].values():
                    pts = {int(row["round"]): float(row[f"test_{metric}"]) for row in r.rows if f"test_{metric}" in row}
                    curves.append(pts)
                rounds = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
                if not rounds:
                    continue
                y = np.array([[c[t] for t in rounds] for c in curves])
                mean = y.mean(axis=0)
                ax.plot(rounds, mean, marker="o", markersize=2.5, linewidth=1.3, color=f"C{j}", label=sel)
                if len(curves) > 1:
                    half = stats.t.ppf(0.975, len(curves) - 1) * y.std(axis=0, ddof=1) / math.sqrt(len(curves))
                    ax.fill_between(rounds, mean - half, mean + half, color=f"C{j}", alpha=0.15, linewidth=0)
            ax.set_title(f"{study}, {setting}", fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylabel(f"test {metric}")
            if metric in LOWER_BETTER:
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        (out / "selection_study.png").write_bytes(figure_png(fig))
        (out / "selection_study.svg").write_text(figure_svg(fig), encoding="utf-8")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    out = Path(argv[1])
    summary = summarise(out)
    for r in summary["runs"]:
        if r["diff_vs_uniform"]:
            print(f"{r['study']:<20} {r['setting']:<10} {r['selection']:<16} {r['metric']}: "
                  f"{_fmt(r['diff_vs_uniform'])} vs uniform -> {r['verdict']}")


if __name__ == "__main__":
    main(sys.argv)
