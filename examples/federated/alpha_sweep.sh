#!/usr/bin/env bash
# The FedNLP finding on the built-in assistant corpus: the gap between centralised and federated
# accuracy grows as the label skew grows (Dirichlet alpha 100 -> 1 -> 0.1), 3 seeds each.
#
# usage: examples/federated/alpha_sweep.sh [OUT]
#   settings (environment variables, defaults in brackets):
#     ALPHAS [100 1 0.1]  SEEDS [0 1 2]  ALGORITHM [fedavg]  ROUNDS [100]  NUM_CLIENTS [100]
#     CLIENTS_PER_ROUND [10]  LOCAL_EPOCHS [1]  EPOCHS [5] (central)  CORPUS_SIZE [generator default]
#     THREADS [1]
#   a tiny check (about a minute):
#     ALPHAS="100 0.1" SEEDS="0" ROUNDS=3 NUM_CLIENTS=20 CLIENTS_PER_ROUND=4 EPOCHS=1 CORPUS_SIZE=600 \
#       examples/federated/alpha_sweep.sh runs/alpha-sweep-tiny
#
# Per seed: one central run (`trustnlp train`, the same model, tokenizer, data splits and seed) and
# one federated run per alpha (`trustnlp federate --partition dirichlet:ALPHA`: equal client sizes,
# label mixes ~ Dir(alpha p)). Then `summarise.py` (mean and 95% t-interval over seeds of the
# accuracies and of the per-seed gap central - federated; OUT/summary.md, OUT/alpha_sweep.png/.svg)
# and `trustnlp report` (per-run learning curves). A rerun skips runs whose results.json exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "${TRUSTNLP_SKIP_SETUP:-0}" = 1 ] || make setup
OUT=${1:-runs/alpha-sweep}
ALPHAS=${ALPHAS:-"100 1 0.1"}
SEEDS=${SEEDS:-"0 1 2"}
ALGORITHM=${ALGORITHM:-fedavg}
ROUNDS=${ROUNDS:-100}
NUM_CLIENTS=${NUM_CLIENTS:-100}
CLIENTS_PER_ROUND=${CLIENTS_PER_ROUND:-10}
LOCAL_EPOCHS=${LOCAL_EPOCHS:-1}
EPOCHS=${EPOCHS:-5}
THREADS=${THREADS:-1}
export FLWR_TELEMETRY_ENABLED=0 OMP_NUM_THREADS=$THREADS
COMMON=(--data assistant --model bag --tokenizer word --quiet)  # `train` takes its threads from OMP_NUM_THREADS
[ -n "${CORPUS_SIZE:-}" ] && COMMON+=(--corpus-size "$CORPUS_SIZE")
BIN=.venv/bin

for seed in $SEEDS; do
  dir="$OUT/central/seed-$seed"
  if [ ! -f "$dir/results.json" ]; then
    echo "== central, seed $seed"
    "$BIN/trustnlp" train "${COMMON[@]}" --epochs "$EPOCHS" --seed "$seed" --out "$dir"
  fi
  for alpha in $ALPHAS; do
    dir="$OUT/federated/alpha-$alpha/seed-$seed"
    if [ ! -f "$dir/results.json" ]; then
      echo "== federated $ALGORITHM, dirichlet:$alpha, seed $seed"
      "$BIN/trustnlp" federate "${COMMON[@]}" --algorithm "$ALGORITHM" --partition "dirichlet:$alpha" \
        --num-clients "$NUM_CLIENTS" --clients-per-round "$CLIENTS_PER_ROUND" --local-epochs "$LOCAL_EPOCHS" \
        --rounds "$ROUNDS" --threads "$THREADS" --seed "$seed" --out "$dir"
    fi
  done
done
"$BIN/python" examples/federated/summarise.py "$OUT"
"$BIN/trustnlp" report "$OUT" --out "$OUT/report" --title "trustnlp: centralised vs federated accuracy by label skew"
