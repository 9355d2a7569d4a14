#!/usr/bin/env bash
# Robust aggregation under faulty devices, and client-level DP (DP-FedAvg) on the built-in corpus.
#
# usage: examples/federated/robust_dp_study.sh [OUT]
#   settings (environment variables, defaults in brackets):
#     PARTS ["robust dp"]  SEEDS ["0 1 2"]  THREADS [1]
#     robust: RULES ["mean median trimmed-mean:0.2 krum:4 multi-krum:4:10"]  FAULTS ["none signflip scale:10 nan"]
#             ROUNDS [50]  NUM_CLIENTS [40]  CLIENTS_PER_ROUND [20]  FAULTY_FRACTION [0.2]
#     dp:     EPSILONS ["1 8 inf"]  DP_ROUNDS [100]  DP_CLIENTS_PER_ROUND [100]  (partition user: one device per
#             user, 2,411 users in the default corpus; Poisson client sampling (activity:0), adaptive clipping)
#   a tiny check: PARTS=robust RULES="mean median" FAULTS="none signflip" ROUNDS=3 \
#       examples/federated/robust_dp_study.sh runs/robust-tiny
#
# Robust part: IID partition, 20% of each round's clients faulty (signflip: the update pushed the other way;
# scale:10: a boosted update; nan: a diverged client), server-side validation always on (NaN/Inf and misshapen
# updates rejected). Then `summarise_robust_dp.py` (OUT/summary.md) and `trustnlp report`.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "${TRUSTNLP_SKIP_SETUP:-0}" = 1 ] || make setup
OUT=${1:-runs/robust-dp}
PARTS=${PARTS:-"robust dp"}
SEEDS=${SEEDS:-"0 1 2"}
THREADS=${THREADS:-1}
RULES=${RULES:-"mean median trimmed-mean:0.2 krum:4 multi-krum:4:10"}
FAULTS=${FAULTS:-"none signflip scale:10 nan"}
ROUNDS=${ROUNDS:-50}
NUM_CLIENTS=${NUM_CLIENTS:-40}  # ~450 utterances per device (README: why not 100)
CLIENTS_PER_ROUND=${CLIENTS_PER_ROUND:-20}
FAULTY_FRACTION=${FAULTY_FRACTION:-0.2}
EPSILONS=${EPSILONS:-"1 8 inf"}
DP_ROUNDS=${DP_ROUNDS:-100}
DP_CLIENTS_PER_ROUND=${DP_CLIENTS_PER_ROUND:-100}
export OMP_NUM_THREADS=$THREADS
BIN=.venv/bin
COMMON=(--data assistant --model bag --tokenizer word --threads "$THREADS" --quiet)

for seed in $SEEDS; do
  if [[ " $PARTS " == *" robust "* ]]; then
    for fault in $FAULTS; do
      for rule in $RULES; do
        dir="$OUT/robust/${fault//:/-}/${rule//:/-}/seed-$seed"
        [ -f "$dir/results.json" ] && continue
        echo "== robust: fault $fault, rule $rule, seed $seed"
        extra=(); [ "$fault" != none ] && extra=(--faulty-fraction "$FAULTY_FRACTION" --fault "$fault")
        "$BIN/trustnlp" federate "${COMMON[@]}" --partition iid --num-clients "$NUM_CLIENTS" \
          --clients-per-round "$CLIENTS_PER_ROUND" --rounds "$ROUNDS" --robust "$rule" "${extra[@]}" \
          --seed "$seed" --out "$dir"
      done
    done
  fi
  if [[ " $PARTS " == *" dp "* ]]; then
    for eps in $EPSILONS; do
      dir="$OUT/dp/eps-$eps/seed-$seed"
      [ -f "$dir/results.json" ] && continue
      echo "== DP-FedAvg: epsilon $eps, seed $seed"
      extra=(); [ "$eps" != inf ] && extra=(--client-dp --epsilon "$eps" --adaptive-clip)
      "$BIN/trustnlp" federate "${COMMON[@]}" --partition user --selection activity:0 \
        --clients-per-round "$DP_CLIENTS_PER_ROUND" --rounds "$DP_ROUNDS" "${extra[@]}" --seed "$seed" --out "$dir"
    done
  fi
done
"$BIN/python" examples/federated/summarise_robust_dp.py "$OUT"
"$BIN/trustnlp" report "$OUT" --out "$OUT/report" --title "trustnlp: robust and private federated learning"
