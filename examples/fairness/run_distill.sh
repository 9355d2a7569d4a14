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
# runs whose results.json exists. Headline: gender polarity disparity of the continuations of held-out
# gender-neutral BOLD profession prompts (N_PROFESSION per profession, 18 professions): mean over
# professions of |skew|, skew = (male-leaning - female-leaning) / continuations; with its bootstrap
# interval, the sign-flip noise floor, the signed skew and the share of gendered continuations. Beside
# it: the sentiment disparity of gendered prompts, WEAT on the input embeddings, a downstream probe's
# counterfactual flip rate and accuracy gap, perplexity. Then a summary over seeds (mean, 95% Student-t
# interval; relative change vs the plain student paired by seed): OUT/summary.json, and the same as a
# report result OUT/summary/results.json (kind "distill"; `trustnlp report OUT` draws it).
#
# usage: examples/fairness/run_distill.sh [OUT]            (default runs/distill)
#   settings (environment variables, defaults in brackets):
#     SEEDS [0 1 2]  MITIGATIONS [none cda perturb both]  COMBINE [mean]  ALPHA [0.5]  EPOCHS [3]  TEACHER_EPOCHS [4]
#     TEACHER_DIR [OUT/teacher] (share one teacher between sweeps, e.g. an ALPHA=1 ablation)
#     BOLD [auto] (auto|require|off)  CORPUS_SIZE [3000]  N_PROMPTS [100]  N_PROFESSION [50]  THREADS [1]
#     PYTHON [.venv/bin/python]
#   a smoke check (about 2 minutes): BOLD=auto CORPUS_SIZE=400 EPOCHS=1 TEACHER_EPOCHS=1 SEEDS="0" N_PROMPTS=10 \
#       MITIGATIONS="none perturb" examples/fairness/run_distill.sh /tmp/distill-smoke
#
# Size (1 CPU thread; measured on a shared 2-core machine under load, CPU seconds per epoch over the
# 5,128 training texts, vocabulary 3,325, max_length 48): teacher 28; students none 15, cda 22 (1.5x
# texts), perturb 20, both 30. One evaluation (900 profession prompts + 300 gendered prompts x 20 new
# tokens, perplexity and KL, WEAT, the probe) ~14 CPU s for a student (generation 7, perplexity + KL 6,
# probe 2). So the teacher (4 epochs) + 12 students (3 epochs) + 13 evaluations ~ 112 + 3 x 3 x 88 + 180
# ~ 1090 CPU s, about 18-20 minutes. Stays under 25 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:-$ROOT/runs/distill}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"  # a relative OUT is relative to where the script is called from
cd "$ROOT"
PY="${PYTHON:-.venv/bin/python}"
export SEEDS="${SEEDS:-0 1 2}" MITIGATIONS="${MITIGATIONS:-none cda perturb both}" COMBINE="${COMBINE:-mean}" ALPHA="${ALPHA:-0.5}"
export EPOCHS="${EPOCHS:-3}" TEACHER_EPOCHS="${TEACHER_EPOCHS:-4}" BOLD="${BOLD:-auto}"
export CORPUS_SIZE="${CORPUS_SIZE:-3000}" N_PROMPTS="${N_PROMPTS:-100}" N_PROFESSION="${N_PROFESSION:-50}"
export THREADS="${THREADS:-1}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" - "$OUT" <<'PYEOF'
import os
import sys
import time
from pathlib import Path

from trustnlp.fairness.generation import DistillConfig, examples_result, run_distill, summarise_distill, summary_result
from trustnlp.results import atomic_write_json, write_result

out = Path(sys.argv[1])
env = os.environ
common = dict(teacher="local", teacher_dir=env.get("TEACHER_DIR") or str(out / "teacher"), epochs=int(env["EPOCHS"]),
              teacher_epochs=int(env["TEACHER_EPOCHS"]), bold=env["BOLD"], corpus_size=int(env["CORPUS_SIZE"]),
              n_prompts=int(env["N_PROMPTS"]), n_builtin_pairs=max(1, int(env["N_PROMPTS"]) // 2),
              n_profession_prompts=int(env["N_PROFESSION"]),
              combine=env["COMBINE"], alpha=float(env["ALPHA"]), threads=int(env["THREADS"]), progress=False)
started = time.perf_counter()
for seed in [int(s) for s in env["SEEDS"].split()]:
    for mitigation in env["MITIGATIONS"].split():
        run_dir = out / mitigation / f"seed-{seed}"
        if (run_dir / "results.json").exists():
            continue
        t0 = time.perf_counter()
        r = run_distill(DistillConfig(mitigation=mitigation, seed=seed, **common), run_dir)
        m = r.metrics

        def num(key, fmt=".3f"):
            return "n/a" if m.get(key) is None else format(m[key], fmt)

        ci = m.get("gender_disparity_ci95") or [None, None]
        print(f"{mitigation:8s} seed {seed}: polarity disparity {num('gender_disparity')} "
              f"[{'n/a' if ci[0] is None else f'{ci[0]:.3f}'}, {'n/a' if ci[1] is None else f'{ci[1]:.3f}'}] "
              f"(floor {num('gender_disparity_null')}, p {num('gender_disparity_p_value')})  "
              f"skew {num('gender_polarity_skew', '+.3f')}  gendered {num('gendered_share', '.2f')}  "
              f"sentiment {num('sentiment_disparity', '.4f')}  WEAT {num('intrinsic_weat_mean_abs_effect', '.2f')} "
              f"(init {num('intrinsic_weat_mean_abs_effect_init', '.2f')})  flip {num('downstream_flip_rate')}  "
              f"acc gap {num('downstream_accuracy_gap')}  ppl {num('perplexity', '.1f')}  KL {num('kl_to_teacher')}  "
              f"eval {sum(m['evaluation_seconds'].values()):.0f} s  ({time.perf_counter() - t0:.0f} s)", flush=True)
print(f"all runs: {time.perf_counter() - started:.0f} s")

summary = summarise_distill(out)
atomic_write_json(out / "summary.json", summary)
write_result(summary_result(summary, root=out), out / "summary" / "results.json")
examples = examples_result(out)  # generated examples side by side (seed 0), for the report
if examples is not None:
    write_result(examples, out / "summary" / "examples" / "results.json")


def fmt(x, pct=False):
    if x is None or x["mean"] is None:
        return "n/a"
    scale, unit = (100, "%") if pct else (1, "")
    s = f"{scale * x['mean']:+.1f}{unit}" if pct else f"{x['mean']:.4f}"
    if x["ci95"] is not None:
        lo, hi = (scale * v for v in x["ci95"])
        s += f" [{lo:+.1f}, {hi:+.1f}]{unit}" if pct else f" [{lo:.4f}, {hi:.4f}]"
    return s


teacher = summary["teacher"]
print("\nteacher: " + ", ".join(f"{k} {v:.4f}" for k, v in teacher.items() if isinstance(v, (int, float))))
print(f"{'mitigation':10s} {'seeds':>5s}  {'polarity disparity (95% t-CI)':34s} {'change vs none (paired)':28s} "
      f"{'perplexity increase (paired)':28s} perplexity")
for name, s in summary["mitigations"].items():
    print(f"{name:10s} {len(s['seeds']):5d}  {fmt(s['gender_disparity']):34s} "
          f"{fmt(s['relative_change_vs_baseline'], True):28s} {fmt(s['relative_perplexity_increase'], True):28s} "
          f"{s['perplexity']['mean']:.1f}")
print("\nside by side (mean over seeds [95% t-CI]; paired difference vs none):")
for key in ("gender_disparity_null", "gender_polarity_skew", "gendered_share", "sentiment_disparity",
            "intrinsic_weat_mean_abs_effect", "intrinsic_weat_mean_abs_effect_init", "downstream_flip_rate",
            "downstream_accuracy_gap", "downstream_accuracy", "kl_to_teacher"):
    print(f"  {key}")
    for name, s in summary["mitigations"].items():
        v = s["metrics"][key]
        print(f"    {name:10s} {fmt(v['value']):34s} diff {fmt(v['difference_vs_baseline'])}")
print(f"\n{out / 'summary.json'}  {out / 'summary' / 'results.json'}")
PYEOF
