#!/usr/bin/env bash
# CLINC150 privacy-utility study (epsilon in {1, 3, 8, inf}); usage: examples/privacy/run_study.sh [OUT] [PATTERN]
set -euo pipefail
cd "$(dirname "$0")/../.."
make setup
OUT=${1:-runs/privacy-study}
PATTERN=${2:-*}
for cfg in examples/privacy/$PATTERN.yaml; do
  .venv/bin/trustnlp train --config "$cfg" --out "$OUT/$(basename "$cfg" .yaml)" --quiet
done
.venv/bin/trustnlp report "$OUT" --out "$OUT/report" --title "trustnlp: privacy-utility study on CLINC150"
