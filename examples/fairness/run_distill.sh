#!/usr/bin/env bash
# Counterfactual role-reversal distillation (Gupta et al., Findings of ACL 2022) on BOLD's gender
# domain + the built-in corpus (trustnlp.fairness.generation; docs in its module docstring).
#
# One local teacher (a 2-layer d=128 word-level transformer LM, trained once and cached in OUT/teacher),
# then students (1 layer, d=64) distilled with each mitigation in MITIGATIONS for each seed in SEEDS:
#   none     plain distillation (alpha T^2 KL + (1 - alpha) LM loss)
#   cda      + counterfactual data augmentation (gendered sequences also gender-swapped)
#   perturb  + role-reversed teacher targets (teacher on the original and swapped context, mapped back, mean)
#   both     cda data and perturb targets
# Each run writes OUT/<mitigation>/seed-<s>/results.json (kind "distill") and its student; a rerun skips
# runs whose results.json exists. Then a summary over seeds: gender disparity of the continuations'
# sentiment (mean, 95% Student-t interval over seeds), its relative change vs the plain student paired
# by seed, and the relative perplexity increase (held-out BOLD people's sentences); OUT/summary.json.
#
# usage: examples/fairness/run_distill.sh [OUT]            (default runs/distill)
#   settings (environment variables, defaults in brackets):
#     SEEDS [0 1 2]  MITIGATIONS [none cda perturb both]  COMBINE [mean]  EPOCHS [3]  TEACHER_EPOCHS [4]
#     BOLD [auto] (auto|require|off)  CORPUS_SIZE [3000]  N_PROMPTS [100]  THREADS [1]  PYTHON [.venv/bin/python]
#   a smoke check (seconds): BOLD=off CORPUS_SIZE=400 EPOCHS=1 TEACHER_EPOCHS=1 SEEDS="0 1" N_PROMPTS=10 \
#       examples/fairness/run_distill.sh runs/distill-smoke
#
# Size (1 CPU thread; measured on a shared 2-core machine under load, CPU seconds per epoch over the
# 5,128 training texts, vocabulary 3,325, max_length 48): teacher 28; students none 15, cda 22 (1.5x
# texts), perturb 20, both 30; one evaluation (300 prompts x 20 new tokens, perplexity, KL) ~5. So the
# teacher (4 epochs) + 12 students (3 epochs) + 13 evaluations ~ 112 + 3 x 3 x 88 + 65 ~ 970 CPU s,
# about 17 minutes (a 1-epoch smoke of teacher + none + perturb took 89 s wall). Stays under 25 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/runs/distill}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # a relative OUT is relative to where the script is called from
cd "$ROOT"
PY="${PYTHON:-.venv/bin/python}"
export SEEDS="${SEEDS:-0 1 2}" MITIGATIONS="${MITIGATIONS:-none cda perturb both}" COMBINE="${COMBINE:-mean}"
export EPOCHS="${EPOCHS:-3}" TEACHER_EPOCHS="${TEACHER_EPOCHS:-4}" BOLD="${BOLD:-auto}"
export CORPUS_SIZE="${CORPUS_SIZE:-3000}" N_PROMPTS="${N_PROMPTS:-100}" THREADS="${THREADS:-1}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" - "$OUT" <<'PYEOF'
import os
import sys
import time
from pathlib import Path

from trustnlp.fairness.generation import DistillConfig, run_distill, summarise_distill
from trustnlp.results import atomic_write_json

out = Path(sys.argv[1])
env = os.environ
common = dict(teacher="local", teacher_dir=str(out / "teacher"), epochs=int(env["EPOCHS"]),
              teacher_epochs=int(env["TEACHER_EPOCHS"]), bold=env["BOLD"], corpus_size=int(env["CORPUS_SIZE"]),
              n_prompts=int(env["N_PROMPTS"]), n_builtin_pairs=max(1, int(env["N_PROMPTS"]) // 2),
              combine=env["COMBINE"], threads=int(env["THREADS"]), progress=False)
started = time.perf_counter()
for seed in [int(s) for s in env["SEEDS"].split()]:
    for mitigation in env["MITIGATIONS"].split():
        run_dir = out / mitigation / f"seed-{seed}"
        if (run_dir / "results.json").exists():
            continue
        t0 = time.perf_counter()
        r = run_distill(DistillConfig(mitigation=mitigation, seed=seed, **common), run_dir)
        m = r.metrics
        print(f"{mitigation:8s} seed {seed}: disparity {m['gender_disparity']:.4f} "
              f"[{m['gender_disparity_ci95'][0]:.4f}, {m['gender_disparity_ci95'][1]:.4f}]  "
              f"ppl {m['perplexity']:.1f}  KL {m['kl_to_teacher']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
print(f"all runs: {time.perf_counter() - started:.0f} s")

summary = summarise_distill(out)
atomic_write_json(out / "summary.json", summary)


def fmt(x, pct=False):
    if x is None or x["mean"] is None:
        return "n/a"
    scale, unit = (100, "%") if pct else (1, "")
    s = f"{scale * x['mean']:+.1f}{unit}" if pct else f"{x['mean']:.4f}"
    if x["ci95"] is not None:
        lo, hi = (scale * v for v in x["ci95"])
        s += f" [{lo:+.1f}, {hi:+.1f}]{unit}" if pct else f" [{lo:.4f}, {hi:.4f}]"
    return s


first = next(iter(summary["mitigations"].values()))
print(f"\nteacher gender disparity: {first['teacher_gender_disparity']}")
print(f"{'mitigation':10s} {'seeds':>5s}  {'disparity (95% t-CI over seeds)':34s} {'change vs none (paired)':28s} "
      f"{'difference vs none (paired)':34s} {'perplexity increase (paired)':28s} perplexity")
for name, s in summary["mitigations"].items():
    print(f"{name:10s} {len(s['seeds']):5d}  {fmt(s['gender_disparity']):34s} "
          f"{fmt(s['relative_change_vs_baseline'], True):28s} {fmt(s['difference_vs_baseline']):34s} "
          f"{fmt(s['relative_perplexity_increase'], True):28s} {s['perplexity']['mean']:.1f}")
print(f"\n{out / 'summary.json'}")
PYEOF
