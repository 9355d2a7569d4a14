#!/usr/bin/env bash
# Canary extraction study on CLINC150 (CNN, digits, r = 1/10/100, epsilon 8/inf), then the report.
# usage: examples/extraction/run_clinc150.sh [OUT] [CONFIG] [extra `trustnlp extract` options...]
#   e.g. words instead of digits: examples/extraction/run_clinc150.sh runs/extract-words \
#          examples/extraction/clinc150-cnn-digits.yaml --secret words
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "${TRUSTNLP_SKIP_SETUP:-0}" = 1 ] || make setup
OUT=${1:-runs/extract-clinc150}
CONFIG=${2:-examples/extraction/clinc150-cnn-digits.yaml}
shift $(( $# < 2 ? $# : 2 ))
.venv/bin/trustnlp extract --config "$CONFIG" --out "$OUT" "$@"
.venv/bin/trustnlp report "$OUT" --out "$OUT/report" --title "trustnlp: canary extraction on CLINC150"
