"""Summarise the alpha sweep (``alpha_sweep.sh``): centralised vs federated test accuracy by alpha.

Usage:
    python examples/federated/summarise.py OUT

Reads ``OUT/central/seed-S/results.json`` and ``OUT/federated/alpha-A/seed-S/results.json``
(``metrics.test_accuracy``) and writes

- ``OUT/summary.md`` and ``OUT/summary.json``: per alpha, the mean over seeds and a 95% Student-t
  interval ``mean +- t_{0.975, n-1} s / sqrt(n)`` of the federated accuracy and of the per-seed gap
  ``central(seed) - federated(alpha, seed)`` (paired by seed: same data splits and initialisation
  seed), and the central accuracy;
- ``OUT/alpha_sweep.png`` / ``.svg``: accuracy against alpha (log axis), central as a band.

The FedNLP finding (Lin et al. 2022, *FedNLP: Benchmarking Federated Learning Methods for Natural
Language Processing Tasks*) holds when the mean gap grows as alpha falls; the last line says whether
it does here.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from trustnlp.report.plots import figure_png, figure_svg, make_figure, style
from trustnlp.results import read_result


def interval(values: list[float]) -> dict[str, Any]:
    """Mean, sample std and the 95% Student-t interval (half-width ``None`` for a single value)."""
    x = np.asarray(values, float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None, "values": x.tolist()}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
    return {"n": n, "mean": mean, "std": sd, "ci95": [mean - half, mean + half], "values": x.tolist()}


def _acc(path: Path) -> float:
    return float(read_result(path).metrics["test_accuracy"])


def summarise(out: Path) -> dict[str, Any]:
    central = {int(p.parent.name.removeprefix("seed-")): _acc(p) for p in sorted(out.glob("central/seed-*/results.json"))}
    if not central:
        raise SystemExit(f"No central runs under {out}/central/seed-*/results.json; run alpha_sweep.sh first.")
    alphas: dict[float, dict[int, float]] = {}
    for p in sorted(out.glob("federated/alpha-*/seed-*/results.json")):
        alpha = float(p.parent.parent.name.removeprefix("alpha-"))
        alphas.setdefault(alpha, {})[int(p.parent.name.removeprefix("seed-"))] = _acc(p)
    rows = []
    for alpha in sorted(alphas, reverse=True):  # least skewed first
        fed = alphas[alpha]
        paired = sorted(set(fed) & set(central))
        rows.append({"alpha": alpha, "federated": interval([fed[s] for s in sorted(fed)]),
                     "gap": interval([central[s] - fed[s] for s in paired]), "seeds": paired})
    gaps = [r["gap"]["mean"] for r in rows]
    grows = len(gaps) >= 2 and all(b > a for a, b in zip(gaps, gaps[1:]))
    return {"central": interval([central[s] for s in sorted(central)]), "rows": rows, "gap_grows_as_alpha_falls": grows}


def _fmt(iv: dict[str, Any]) -> str:
    if iv["ci95"] is None:
        return f"{iv['mean']:.3f} (n={iv['n']})"
    return f"{iv['mean']:.3f} [{iv['ci95'][0]:.3f}, {iv['ci95'][1]:.3f}] (n={iv['n']})"


def write(out: Path, summary: dict[str, Any]) -> None:
    lines = ["| alpha | federated test accuracy | central - federated (paired by seed) |", "|---:|---|---|"]
    lines += [f"| {r['alpha']:g} | {_fmt(r['federated'])} | {_fmt(r['gap'])} |" for r in summary["rows"]]
    lines += ["", f"Central test accuracy: {_fmt(summary['central'])}. Mean and 95% Student-t interval over seeds.",
              f"Gap grows as alpha falls: {'yes' if summary['gap_grows_as_alpha_falls'] else 'no'}."]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    with style():
        fig, (ax,) = make_figure()
        xs = [r["alpha"] for r in summary["rows"]]
        ys = [r["federated"]["mean"] for r in summary["rows"]]
        err = [[0.0, 0.0] if r["federated"]["ci95"] is None else
               [r["federated"]["mean"] - r["federated"]["ci95"][0], r["federated"]["ci95"][1] - r["federated"]["mean"]]
               for r in summary["rows"]]
        ax.errorbar(xs, ys, yerr=np.asarray(err).T, marker="o", capsize=3, label="federated (mean, 95% CI)")
        c = summary["central"]
        ax.axhline(c["mean"], color="C1", label="central (mean)")
        if c["ci95"] is not None:
            ax.axhspan(*c["ci95"], color="C1", alpha=0.2, label="central 95% CI")
        ax.set_xscale("log")
        ax.invert_xaxis()  # more skew to the right
        ax.set_xlabel("Dirichlet alpha (label skew grows to the right)")
        ax.set_ylabel("test accuracy")
        ax.legend(loc="best", fontsize=7)
        (out / "alpha_sweep.png").write_bytes(figure_png(fig))
        (out / "alpha_sweep.svg").write_text(figure_svg(fig), encoding="utf-8")


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python examples/federated/summarise.py OUT")
    out = Path(argv[0])
    summary = summarise(out)
    write(out, summary)
    print((out / "summary.md").read_text(encoding="utf-8"), end="")


if __name__ == "__main__":
    main(sys.argv[1:])
