#!/usr/bin/env bash
# The graded-bias study (docs/fairness.md, "The graded-bias study"): 10 classifiers with planted,
# graded gender bias (5 levels x bag/cnn) on the built-in corpus; intrinsic (WEAT, own gender
# tests) and extrinsic metrics per model, their Pearson/Spearman correlations, and DP's disparate
# impact (per-gender accuracy at epsilon 1, 8 and non-private). Then the HTML report.
# A few minutes on 2 CPU cores. Usage: examples/fairness/run_graded.sh [OUT]
set -euo pipefail
OUT="${1:-runs/fairness-graded}"
PY="${PYTHON:-python}"
"$PY" - "$OUT" <<'PYEOF'
import sys

from trustnlp.fairness.graded_study import run_graded_study

result = run_graded_study(sys.argv[1])
print(f"{result.metrics['n_models']} models, {result.metrics['seconds']:.0f} s")
for c in result.metrics["correlations"]:
    if c["pearson"] is not None:
        print(f"{c['intrinsic']:28s} {c['extrinsic']:26s} r={c['pearson']:+.2f} (p {c['pearson_p']:.2g}) "
              f"rho={c['spearman']:+.2f} (p {c['spearman_p']:.2g})")
for r in result.metrics["dp_disparate_impact"]:
    print("epsilon", r["epsilon"] or "inf", "accuracy by gender", r["accuracy_by_group"])
PYEOF
"$PY" -c 'import sys; from trustnlp.report import render_report; print(render_report([sys.argv[1]], sys.argv[2]).html_path)' "$OUT" "$OUT/report"
