#!/usr/bin/env bash
# When does non-uniform device selection beat uniform selection? Static and continual settings, natural
# users (heavy-tailed activity), >= 3 seeds.
#
# usage: examples/federated/selection_study.sh [OUT]
#   settings (environment variables, defaults in brackets):
#     STUDIES ["assistant-classify assistant-lm shakespeare-lm"]  (data-task; shakespeare needs ../shared/data)
#     SELECTIONS_FULL ["uniform activity activity-ht power-of-choice availability oort"] (assistant-classify)
#     SELECTIONS ["uniform activity activity-ht"]  (the language-modelling studies)
#     SETTINGS ["static continual"]  SEEDS [0 1 2]  ROUNDS [100]  CLIENTS_PER_ROUND [10]  PERIODS [10]
#     RETENTION [3]  STORAGE [32]  EVAL_EVERY [10]  THREADS [1]  LOCAL_STEPS [unset: 1 local epoch]
#   a tiny check (about a minute):
#     STUDIES=assistant-classify SEEDS=0 ROUNDS=10 PERIODS=5 EVAL_EVERY=5 SELECTIONS_FULL="uniform activity" \
#       examples/federated/selection_study.sh runs/selection-tiny
#
# Every run partitions by user (`--partition user`: one device per user of the built-in corpus, one per
# speaker of tinyshakespeare), so device activity is the natural, heavy-tailed one. Selections:
# uniform; activity = Poisson sampling with pi_k ~ n_k (beta 1), sample-weighted aggregation;
# activity-ht = the same with Horvitz-Thompson weights; power-of-choice (d = 2m); availability (diurnal,
# 8 h a night in the device's time zone; 24 rounds a day); oort. Continual: PERIODS periods by the data's
# timestamps (line order for tinyshakespeare), retention RETENTION periods, at most STORAGE examples per
# device (FIFO). Then `summarise_selection.py` (curves and final metrics with 95% t-intervals; paired
# differences to uniform) and `trustnlp report`. A rerun skips runs whose results.json exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "${TRUSTNLP_SKIP_SETUP:-0}" = 1 ] || make setup
OUT=${1:-runs/selection-study}
STUDIES=${STUDIES:-"assistant-classify assistant-lm shakespeare-lm"}
SELECTIONS_FULL=${SELECTIONS_FULL:-"uniform activity activity-ht power-of-choice availability oort"}
SELECTIONS=${SELECTIONS:-"uniform activity activity-ht"}
SETTINGS=${SETTINGS:-"static continual"}
SEEDS=${SEEDS:-"0 1 2"}
ROUNDS=${ROUNDS:-100}
CLIENTS_PER_ROUND=${CLIENTS_PER_ROUND:-10}
PERIODS=${PERIODS:-10}
RETENTION=${RETENTION:-3}
STORAGE=${STORAGE:-32}
EVAL_EVERY=${EVAL_EVERY:-10}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS
BIN=.venv/bin
LM_MODEL='{"backbone": "transformer", "layers": 1, "dim": 64, "heads": 2, "max_len": 64, "dropout": 0.0}'

for study in $STUDIES; do
  data=${study%-*}; task=${study#*-}
  sels=$SELECTIONS; [ "$study" = assistant-classify ] && sels=$SELECTIONS_FULL
  for setting in $SETTINGS; do
    cont=(); [ "$setting" = continual ] && cont=(--periods "$PERIODS" --retention "$RETENTION" --storage "$STORAGE")
    for sel in $sels; do
      case $sel in
        activity-ht) spec=(--selection activity --aggregation horvitz-thompson) ;;
        *) spec=(--selection "$sel") ;;
      esac
      for seed in $SEEDS; do
        dir="$OUT/$study/$setting/$sel/seed-$seed"
        [ -f "$dir/results.json" ] && continue
        echo "== $study $setting $sel seed $seed"
        cfg="$dir.yaml"; mkdir -p "$(dirname "$cfg")"
        {
          echo "data: $data"; echo "task: $task"; echo "tokenizer: word"; echo "partition: user"
          echo "clients_per_round: $CLIENTS_PER_ROUND"; echo "rounds: $ROUNDS"; echo "eval_every: $EVAL_EVERY"
          echo "setting: $setting"; echo "threads: $THREADS"; echo "seed: $seed"
          if [ -n "${LOCAL_STEPS:-}" ]; then echo "local_steps: $LOCAL_STEPS"; fi
          if [ "$task" = lm ]; then echo "model_options: $LM_MODEL"; echo "max_length: 64"; fi
        } > "$cfg"
        "$BIN/trustnlp" federate --config "$cfg" "${spec[@]}" "${cont[@]}" --quiet --out "$dir"
      done
    done
  done
done
"$BIN/python" examples/federated/summarise_selection.py "$OUT"
"$BIN/trustnlp" report "$OUT" --out "$OUT/report" --title "trustnlp: device selection, static and continual"
