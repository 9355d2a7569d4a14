#!/usr/bin/env bash
# CLINC150 privacy audit (epsilon 0.5 ... 16 and non-private, 16 shadows), then the report.
# usage: examples/audit/run_clinc150.sh [OUT] [CONFIG] [extra `trustnlp audit` options...]
#   e.g. a tiny check: examples/audit/run_clinc150.sh runs/audit-tiny examples/audit/clinc150-bag.yaml \
#          --population-size 400 --shadows 4 --epsilons 4,inf --max-steps 5
# A rerun with the same OUT skips every model already trained (they are stored under OUT/<config>/models/).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "${TRUSTNLP_SKIP_SETUP:-0}" = 1 ] || make setup
OUT=${1:-runs/audit-clinc150}
CONFIG=${2:-examples/audit/clinc150-bag.yaml}
shift $(( $# < 2 ? $# : 2 ))
.venv/bin/trustnlp audit --config "$CONFIG" --out "$OUT/$(basename "$CONFIG" .yaml)" "$@"
.venv/bin/trustnlp report "$OUT" --out "$OUT/report" --title "trustnlp: privacy audit on CLINC150"
