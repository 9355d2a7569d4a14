#!/usr/bin/env bash
# Reproduce the foundation figures (CLINC150 and SNIPS accuracies, time per epoch) on CPU.
# Usage: examples/foundation/run_all.sh [OUT_DIR]   (needs ../shared/data or --data-dir)
set -euo pipefail
cd "$(dirname "$0")/../.."
make setup
OUT=${1:-runs/foundation}
for cfg in examples/foundation/*.yaml; do
  name=$(basename "$cfg" .yaml)
  .venv/bin/trustnlp train --config "$cfg" --out "$OUT/$name" --quiet
done
.venv/bin/trustnlp report "$OUT" --out "$OUT/report"
