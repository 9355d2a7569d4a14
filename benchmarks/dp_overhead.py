"""DP-SGD overhead: our DPStep vs a non-private step vs Opacus 1.6 (hooks, ghost), CPU, 2 threads.

Usage:
    python benchmarks/dp_overhead.py [--workloads a,b,c] [--modes nonprivate,ours,opacus-hooks,opacus-ghost]
        [--repeats 3] [--steps 5] [--warmup 2] [--seed 0] [--json PATH] [--quick]

Workloads (sequence length 32, random token ids, 150 labels; time per LOGICAL batch):
  (a) MiniLM-L6 + head, full fine-tuning, logical 256 = 8 physical batches of 32;
  (b) small transformer (vocab 30522, d 128, 2 layers), logical 1024 = 4 x 256;
  (c) bag of embeddings (vocab 10k, d 128), logical 1024 = 1 x 1024.
Each (mode, workload, repeat) runs in its own process (``--worker``, one JSON line on stdout);
repeats are interleaved round-robin across modes. Before any timing, a sigma = 0 float64 gradient
check compares our DPStep (and the selected Opacus modes) with a per-example loop and aborts if
ours mismatches. ``--quick``: tiny dims for development (all code paths, about a minute or two).
The last stdout line is ``dp_overhead ours/nonprivate=<x> opacus/ours=<y>`` for workload (a) (or
the first workload run), opacus being its fastest mode. Targets are printed, not enforced.
See benchmarks/_dp_workloads.py for how each mode is driven.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _dp_workloads as W  # noqa: E402

OPACUS_TARGET = "ours faster than Opacus's fastest mode (opacus-best/ours > 1)"


def _worker(args: argparse.Namespace) -> None:
    wl = W.workload(args.worker[1], args.quick)
    mode = args.worker[0]
    if mode == "check":
        out: dict[str, Any] = W.grad_check(wl, args.modes.split(","), seed=args.seed)
    else:
        try:
            if mode in W.OPACUS_MODES:
                import opacus  # noqa: F401
            out = W.time_mode(mode, wl, steps=args.steps, warmup=args.warmup, seed=args.seed)
        except Exception as e:
            if mode not in W.OPACUS_MODES:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            out = {"mode": mode, "workload": wl.key, "skipped": f"{type(e).__name__}: {first}"}
    print(json.dumps(out), flush=True)


def _spawn(kind: str, wl: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, wl, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--modes", args.modes]
    if args.quick:
        cmd.append("--quick")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"worker timed out after {args.worker_timeout} s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
    return {"failed": f"{why}: {tail}"}


def _stats(reps: list[dict[str, Any]]) -> dict[str, Any]:
    times = [t for r in reps for t in r["times_s"]]
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    rep_medians = [statistics.median(r["times_s"]) for r in reps]
    return {"median_s": statistics.median(times), "iqr_s": [q[0], q[2]], "min_s": min(times), "max_s": max(times),
            "rep_medians_s": rep_medians, "n_steps": len(times), "params": reps[0]["params"],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in reps), "reps": reps}


def _fmt(x: float | None, nd: int = 2) -> str:
    return "nan" if x is None or x != x else f"{x:.{nd}f}"


def _sec(x: float) -> str:
    return f"{x:.4f}" if x < 1 else f"{x:.3f}"


def _print_check(key: str, chk: dict[str, Any]) -> None:
    norms = ", ".join(f"{v:.3g}" for v in chk["norms"])
    print(f"[check {key}] sigma=0, {chk['dtype']}, {chk['examples']} examples in physical batches of "
          f"{chk['physical']}, C=median norm={chk['clip']:.4g} (norms {norms}; {chk['clipped']} clipped), "
          f"tol {chk['tol']:g}")
    for mode, r in chk.items():
        if isinstance(r, dict):
            status = (f"skipped ({r['skipped']})" if "skipped" in r
                      else f"rel err {r['rel_err']:.2e} {'ok' if r['ok'] else 'MISMATCH'}")
            print(f"    {mode:<13} {status}")


def _table(wl: W.Workload, res: dict[str, Any], modes: list[str]) -> dict[str, float | None]:
    timed = res["modes"]
    base = timed.get("nonprivate", {}).get("median_s")
    print(f"\n== ({wl.key}) {wl.title}: logical {wl.logical} = {wl.logical // wl.physical} x {wl.physical}, "
          f"T={wl.seq_len}, {W.LABELS} labels, SGD lr {W.LR}, C={W.CLIP}, sigma={W.SIGMA} ==")
    print(f"{'mode':<14}{'median s/step':>14}{'IQR s':>20}{'min-max s':>20}{'x nonprivate':>14}"
          f"{'peak RSS MiB':>14}{'grad check':>12}")
    for mode in modes:
        r = timed.get(mode)
        if r is None:
            print(f"{mode:<14}  skipped: {res['skipped'].get(mode, 'not run')}")
            continue
        chk = res["check"].get(mode, {})
        check = f"{chk['rel_err']:.1e}" if "rel_err" in chk else "-"
        ratio = r["median_s"] / base if base else float("nan")
        r["x_nonprivate"] = ratio
        iqr = f"{_sec(r['iqr_s'][0])}-{_sec(r['iqr_s'][1])}"
        print(f"{mode:<14}{_sec(r['median_s']):>14}{iqr:>20}{_sec(r['min_s']) + '-' + _sec(r['max_s']):>20}"
              f"{_fmt(ratio):>14}{r['peak_rss_mib']:>14.0f}{check:>12}")
    ours = timed.get("ours", {}).get("median_s")
    peers = {m: timed[m]["median_s"] for m in W.OPACUS_MODES if m in timed}
    best = min(peers, key=peers.get) if peers else None
    ours_np = ours / base if ours and base else None
    opacus_ours = peers[best] / ours if best and ours else None
    met = "n/a" if ours_np is None else ("met" if ours_np <= wl.target else "NOT met")
    print(f"ours/nonprivate = {_fmt(ours_np)}   (target <= {wl.target}: {met})")
    met = "n/a" if opacus_ours is None else ("met" if opacus_ours > 1 else "NOT met")
    print(f"opacus-best/ours = {_fmt(opacus_ours)} ({best or 'no Opacus mode ran'})   (target: {OPACUS_TARGET}: {met})")
    return {"ours/nonprivate": ours_np, "opacus/ours": opacus_ours, "opacus_best": best,
            "target_ours/nonprivate": wl.target, "params": next(iter(timed.values()))["params"] if timed else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="a,b,c")
    p.add_argument("--modes", default=",".join(W.MODES))
    p.add_argument("--repeats", type=int, default=None, help="processes per mode (default 3; --quick 2)")
    p.add_argument("--steps", type=int, default=None, help="timed logical steps per process (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed logical steps first (default 2; --quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the full results here (atomic)")
    p.add_argument("--quick", action="store_true", help="tiny dims for development")
    p.add_argument("--worker-timeout", type=float, default=3600.0, help="seconds per worker process")
    p.add_argument("--worker", nargs=2, metavar=("MODE", "WORKLOAD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.steps = args.steps or (2 if args.quick else 5)
    args.warmup = (1 if args.quick else 2) if args.warmup is None else args.warmup
    if args.worker:
        _worker(args)
        return 0
    keys, modes = args.workloads.split(","), args.modes.split(",")
    bad = [k for k in keys if k not in W.FULL] + [m for m in modes if m not in W.MODES]
    if bad or not keys or not modes:
        p.error(f"unknown workload(s)/mode(s) {bad}; workloads: {sorted(W.FULL)}, modes: {list(W.MODES)}")
    t_start = time.perf_counter()
    print(f"dp_overhead: workloads {keys}, modes {modes}, {args.repeats} repeats x ({args.warmup} warm-up + "
          f"{args.steps} timed logical steps), 2 threads{', QUICK (tiny dims)' if args.quick else ''}", flush=True)
    results: dict[str, Any] = {}
    for k in keys:  # all gradient checks first: abort before any timing
        chk = _spawn("check", k, args)
        if "failed" in chk or "skipped" in chk:
            print(f"[check {k}] could not run: {chk.get('failed') or chk.get('skipped')}", file=sys.stderr)
            return 2
        _print_check(k, chk)
        if not chk["ours"]["ok"]:
            print(f"ABORT: our DPStep's gradient does not match the per-example loop on workload ({k}).",
                  file=sys.stderr)
            return 1
        results[k] = {"workload": W.describe(W.workload(k, args.quick)), "check": chk, "modes": {}, "skipped": {}}
    summary: dict[str, Any] = {}
    for k in keys:
        wl, res = W.workload(k, args.quick), results[k]
        reps: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for m in modes:
            if "skipped" in res["check"].get(m, {}):
                res["skipped"][m] = res["check"][m]["skipped"]
        for rep in range(args.repeats):  # round-robin: every mode's rep r before any rep r+1
            for m in modes:
                if m in res["skipped"]:
                    continue
                out = _spawn(m, k, args)
                if "times_s" not in out:
                    res["skipped"][m] = out.get("skipped") or out.get("failed") or "no result"
                    print(f"[{k}] {m}: skipped: {res['skipped'][m]}", flush=True)
                    if m in ("nonprivate", "ours") and "failed" in out:
                        print(f"ERROR: mode {m} failed on workload ({k}).", file=sys.stderr)
                        return 3
                    continue
                reps[m].append(out)
                print(f"[{k}] rep {rep + 1}/{args.repeats} {m:<13} median {statistics.median(out['times_s']):.4f} "
                      f"s/step", flush=True)
        res["modes"] = {m: _stats(r) for m, r in reps.items() if r and m not in res["skipped"]}
        res["ratios"] = _table(wl, res, modes)
        if not summary:
            summary = {"workload": k, **res["ratios"]}
        if k == "a":
            summary = {"workload": k, **res["ratios"]}
    if args.json:
        from trustnlp.results import atomic_write_json

        settings = {k: v for k, v in vars(args).items() if k != "worker"}
        atomic_write_json(args.json, {"benchmark": "dp_overhead", "settings": settings, "sigma": W.SIGMA,
                                      "max_grad_norm": W.CLIP, "lr": W.LR, "workloads": results, "summary": summary,
                                      "wall_s": time.perf_counter() - t_start})
        print(f"\nwrote {args.json}")
    print(f"\n(total wall time {time.perf_counter() - t_start:.0f} s)")
    print(f"dp_overhead ours/nonprivate={_fmt(summary.get('ours/nonprivate'))} "
          f"opacus/ours={_fmt(summary.get('opacus/ours'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
