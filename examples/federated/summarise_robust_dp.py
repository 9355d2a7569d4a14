"""Summarise ``robust_dp_study.sh``: accuracy per (fault, rule) against the fault-free run, and DP-FedAvg per epsilon.

Usage:
    python examples/federated/summarise_robust_dp.py OUT

Writes ``OUT/summary.md`` and ``OUT/summary.json``. Robust part: the final central test accuracy (mean over seeds)
of each aggregation rule under each fault, its difference (paired by seed) to the same rule without faults and to
plain FedAvg without faults, the updates rejected by validation, and whether every parameter stayed finite. DP part: accuracy,
epsilon (client level, at delta), noise multiplier and the final (adaptive) clip norm per epsilon.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from trustnlp.results import read_result


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else math.nan


def _t95(xs: list[float]) -> list[float] | None:
    """95% Student-t interval of the mean (None below two values)."""
    if len(xs) < 2:
        return None
    from scipy import stats

    m, se = float(np.mean(xs)), float(np.std(xs, ddof=1) / math.sqrt(len(xs)))
    h = float(stats.t.ppf(0.975, len(xs) - 1)) * se
    return [m - h, m + h]


def summarise(out: Path) -> dict[str, Any]:
    robust: dict[tuple[str, str], list[Any]] = {}
    for p in sorted(out.glob("robust/*/*/seed-*/results.json")):
        robust.setdefault((p.parent.parent.parent.name, p.parent.parent.name), []).append(read_result(p))
    rows = []

    def by_seed(rs: list[Any]) -> dict[int, float]:
        return {int(r.seed): float(r.metrics["test_accuracy"]) for r in rs}

    clean = {rule: by_seed(rs) for (fault, rule), rs in robust.items() if fault == "none"}
    for (fault, rule), rs in sorted(robust.items()):
        acc = by_seed(rs)
        same = clean.get(rule, {})
        fedavg = clean.get("mean", {})
        rows.append({"fault": fault, "rule": rule, "accuracy": _mean(list(acc.values())), "seeds": sorted(acc),
                     # differences paired by seed (same partition, initialisation and faulty clients)
                     "vs_same_rule_fault_free": _mean([acc[s] - same[s] for s in acc if s in same]),
                     "vs_same_rule_fault_free_ci95": _t95([acc[s] - same[s] for s in acc if s in same]),
                     "vs_same_rule_fault_free_worst": min([acc[s] - same[s] for s in acc if s in same], default=math.nan),
                     "vs_fedavg_fault_free": _mean([acc[s] - fedavg[s] for s in acc if s in fedavg]),
                     "rejected_updates": int(sum(r.metrics.get("rejected_updates", 0) for r in rs)),
                     "finite_model": all(isinstance(r.metrics.get("test_loss"), (int, float))
                                         and math.isfinite(r.metrics["test_loss"]) for r in rs)})
    dp = []
    for p in sorted(out.glob("dp/eps-*/seed-*/results.json")):
        r = read_result(p)
        m = r.metrics
        dp.append({"epsilon_target": p.parent.parent.name.removeprefix("eps-"), "accuracy": m["test_accuracy"],
                   "epsilon": m.get("epsilon"), "delta": m.get("delta"), "noise_multiplier": m.get("noise_multiplier"),
                   "final_clip_norm": m.get("final_clip_norm"), "num_clients": m["num_clients"],
                   "clients_per_round": m["clients_per_round"], "rounds": m["rounds"], "privacy_unit": m.get("privacy_unit")})
    summary = {"robust": rows, "dp": dp}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    lines = ["# Robust aggregation and client-level DP", ""]
    if rows:
        def ci(v: list[float] | None) -> str:
            return f" [{v[0]:+.3f}, {v[1]:+.3f}]" if v else ""

        lines += ["| fault (20% of clients) | rule | seeds | test accuracy | vs same rule, no faults (95% t-CI) | "
                  "worst seed | vs FedAvg, no faults | rejected updates | model finite |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['fault']} | {r['rule']} | {len(r['seeds'])} | {r['accuracy']:.3f} | "
                  f"{r['vs_same_rule_fault_free']:+.3f}{ci(r['vs_same_rule_fault_free_ci95'])} | "
                  f"{r['vs_same_rule_fault_free_worst']:+.3f} | "
                  f"{r['vs_fedavg_fault_free']:+.3f} | {r['rejected_updates']} | {r['finite_model']} |" for r in rows]
        lines.append("")
    if dp:
        lines += ["| target epsilon | test accuracy | epsilon spent | delta | noise multiplier | final clip norm | users | "
                  "clients per round | rounds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for d in dp:
            eps = f"{d['epsilon']:.3f}" if d["epsilon"] is not None else "inf (non-private)"
            lines.append(f"| {d['epsilon_target']} | {d['accuracy']:.3f} | {eps} | {d['delta'] if d['delta'] else '-'} | "
                         f"{d['noise_multiplier'] if d['noise_multiplier'] is not None else '-'} | "
                         f"{d['final_clip_norm'] if d['final_clip_norm'] is not None else '-'} | {d['num_clients']} | "
                         f"{d['clients_per_round']} | {d['rounds']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print((Path(sys.argv[1]) / "summary.md").read_text() if summarise(Path(sys.argv[1])) else "")
