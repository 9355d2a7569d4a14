"""`trustnlp demo`: the main job on the built-in assistant corpus, every pillar end to end.

Stages (:data:`DEMO_STAGES`, run in order, each into ``OUT/<stage>/results.json``):

* ``bag``, ``cnn``: intent classifiers (bag of embeddings; CNN of Kim 2014), evaluated on held-out templates;
* ``bag-dp-eps8``, ``bag-dp-eps1``: the bag model trained with DP-SGD (Abadi et al. 2016) at epsilon 8 and 1;
* ``audit``: membership inference (LiRA online, Carlini et al. 2022) against the bag recipe, non-private and
  at epsilon 8, with empirical epsilon lower bounds (:mod:`trustnlp.privacy.audit_study`);
* ``extract``: canary insertion and extraction from a CNN (Carlini et al. 2019, "The Secret Sharer"),
  non-private and at epsilon 8 (:mod:`trustnlp.privacy.extraction_study`);
* ``federate-uniform``, ``federate-activity``: FedAvg (McMahan et al. 2017) over a per-user partition, with
  uniform and activity-weighted client selection (:mod:`trustnlp.federated.study`);
* ``fairness``: the project's own WEAT/SEAT association tests (Caliskan et al. 2017; May et al. 2019) on the
  non-private bag model, and extrinsic group metrics on the assistant test split (:mod:`trustnlp.fairness.study`);
* ``cda``: counterfactual data augmentation (Lu et al. 2020) of the training split, and the bag model
  retrained on it and evaluated on the original validation/test splits (:mod:`trustnlp.fairness.mitigation`).

Each stage is ``(name, kind, options, budget)``: ``kind`` picks a small runner, ``options`` are the
study's configuration overrides and ``budget`` the wall-clock budget in seconds on 2 CPU cores.
``stages.json`` records each stage's seconds, budget and whether it went over; a rich table sums up
the headline number of each stage; one HTML report (:func:`trustnlp.report.render_report`) covers all.
``--full`` (:data:`FULL_OVERRIDES`) uses the studies' larger settings; a small ``corpus_size`` (tests)
shrinks every stage further (:func:`_shrink`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from trustnlp.errors import ConfigError, expected
from trustnlp.results import Result, atomic_write_json

__all__ = ["DEMO_STAGES", "FULL_OVERRIDES", "Stage", "load_demo_config", "run_demo", "select_stages"]


class Stage(NamedTuple):
    """One demo stage: ``name`` (its output folder), ``kind`` (its runner), ``options`` (the study's
    configuration overrides) and ``budget`` (wall-clock seconds on 2 CPU cores)."""

    name: str
    kind: str
    options: dict[str, Any]
    budget: float


_DP = {"model": "bag", "dp": True, "batch_size": 1024, "epochs": 30, "lr": 0.05, "max_grad_norm": 0.1}
_FED = {"data": "assistant", "partition": "user", "clients_per_round": 10, "rounds": 100, "tokenizer": "word",
        "eval_every": 10}
DEMO_STAGES: tuple[Stage, ...] = (
    Stage("bag", "train", {"model": "bag", "epochs": 5}, 60.0),
    Stage("cnn", "train", {"model": "cnn", "epochs": 3}, 240.0),
    Stage("bag-dp-eps8", "train", {**_DP, "epsilon": 8.0}, 90.0),
    Stage("bag-dp-eps1", "train", {**_DP, "epsilon": 1.0}, 90.0),
    Stage("audit", "audit", {"model": "bag", "epsilons": [8.0, None], "shadows": 8, "attack": "lira-online",
                             "population_size": 2000, "epochs": 5}, 120.0),
    Stage("extract", "extract", {"models": ["cnn"], "repetitions": [10], "epsilons": [8.0, math.inf],
                                 "n_canaries": 20, "tokenizer": "word", "corpus_size": 2000, "epochs": 2}, 120.0),
    Stage("federate-uniform", "federate", {**_FED, "selection": "uniform"}, 60.0),
    Stage("federate-activity", "federate", {**_FED, "selection": "activity:1"}, 60.0),
    Stage("fairness", "fairness", {"model_stage": "bag", "tests": ["weat", "seat"], "n_permutations": 2000,
                                   "n_bootstrap": 200, "dp_stages": ["bag-dp-eps8", "bag-dp-eps1"]}, 60.0),
    Stage("cda", "cda", {"mode": "two-sided", "train": {"model": "bag", "epochs": 1}}, 60.0),
)
"""The default stages (the first four are the original train stages)."""

FULL_OVERRIDES: dict[str, tuple[dict[str, Any], float]] = {
    "bag": ({"epochs": 10}, 400.0),
    "cnn": ({"epochs": 5}, 400.0),
    "audit": ({"epsilons": [1.0, 8.0, None], "shadows": 16, "population_size": None, "epochs": 5}, 1200.0),
    "extract": ({"repetitions": [1, 10, 100], "epsilons": [1.0, 8.0, math.inf], "n_canaries": 100,
                 "corpus_size": None, "epochs": 5}, 1800.0),
    "federate-uniform": ({"rounds": 100}, 200.0),
    "federate-activity": ({"rounds": 100}, 200.0),
    "fairness": ({"n_permutations": 10000, "n_bootstrap": 1000}, 180.0),
    "cda": ({"train": {"model": "bag", "epochs": 10}}, 600.0),
}
"""``--full``: per stage, option overrides and the larger budget."""

_SMALL = 5000  # a corpus_size below this shrinks every stage (tests)


@dataclass
class _Ctx:
    out: Path
    seed: int
    corpus_size: int | None
    progress: bool
    done: dict[str, Path] = field(default_factory=dict)  # stage name -> its output folder

    @property
    def small(self) -> bool:
        return self.corpus_size is not None and self.corpus_size < _SMALL


class _Outcome(NamedTuple):
    result: Result
    headline: str  # the stage's headline number, for the terminal table
    extra: dict[str, Any]  # the headline numbers, for stages.json


def _validate(model: type[BaseModel], stage: str, values: Mapping[str, Any]) -> Any:
    try:
        return model(**values)
    except ValidationError as e:
        from trustnlp.config import format_validation_error

        raise ConfigError(format_validation_error(e, f"options of demo stage {stage!r}")) from None


def _eps(v: float | None, spec: str = "g") -> str:
    return "∞" if v is None or not math.isfinite(v) else format(v, spec)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


# -- runners: (stage, context) -> outcome ------------------------------------------------------------
def _run_train(stage: Stage, ctx: _Ctx) -> _Outcome:
    from trustnlp.config import TrainConfig
    from trustnlp.pipeline import run_train

    opts = {"data": "assistant", "seed": ctx.seed, "corpus_size": ctx.corpus_size, **stage.options}
    if ctx.small and not opts.get("dp"):
        opts["epochs"] = min(int(opts.get("epochs", 1)), 2)
    res = run_train(_validate(TrainConfig, stage.name, opts), ctx.out / stage.name, progress=ctx.progress)
    m = res.metrics
    eps = m.get("epsilon")
    return _Outcome(res, f"test acc {m['test_accuracy']:.3f}, ε {_eps(eps, '.2f')}",
                    {"test_accuracy": m["test_accuracy"], "epsilon": eps})


def _run_audit(stage: Stage, ctx: _Ctx) -> _Outcome:
    from trustnlp.privacy.audit_study import AuditConfig, run_audit

    opts: dict[str, Any] = {"data": "assistant", "seed": ctx.seed, "corpus_size": ctx.corpus_size, **stage.options}
    if ctx.small:
        opts.update(epochs=1, population_size=None)
    res = run_audit(_validate(AuditConfig, stage.name, opts), ctx.out / stage.name, progress=ctx.progress)
    aucs = {_eps(r["epsilon"]): r["mia_auc"] for r in res.rows}
    return _Outcome(res, "LiRA AUC " + ", ".join(f"ε {k}: {_fmt(v)}" for k, v in aucs.items()),
                    {"mia_auc": aucs})


def _run_extract(stage: Stage, ctx: _Ctx) -> _Outcome:
    from trustnlp.privacy.extraction_study import ExtractConfig, run_extract

    opts: dict[str, Any] = {"data": "assistant", "seed": ctx.seed, **stage.options}
    if ctx.corpus_size is not None:
        opts["corpus_size"] = ctx.corpus_size
    if ctx.small:
        opts.update(n_canaries=min(int(opts.get("n_canaries", 5)), 5), epochs=1,
                    attack={"steps": 20, "top_k": 10})
    res = run_extract(_validate(ExtractConfig, stage.name, opts), ctx.out / stage.name, progress=ctx.progress)
    rates = {f"{r['model']} r={r['repetitions']} ε {_eps(r['epsilon'])}": r["extraction_rate"] for r in res.rows}
    return _Outcome(res, "extraction " + ", ".join(f"{k}: {v:.2f}" for k, v in rates.items()),
                    {"extraction_rate": rates})


def _run_federate(stage: Stage, ctx: _Ctx) -> _Outcome:
    from trustnlp.federated.config import FederatedConfig
    from trustnlp.federated.study import run_federated

    opts: dict[str, Any] = {"seed": ctx.seed, "corpus_size": ctx.corpus_size, **stage.options}
    if ctx.small:
        opts.update(rounds=4, eval_every=2, clients_per_round=min(int(opts.get("clients_per_round", 5)), 5))
    cfg = _validate(FederatedConfig, stage.name, opts)
    res = run_federated(cfg, ctx.out / stage.name, progress=ctx.progress)
    acc = res.metrics.get("test_accuracy")
    return _Outcome(res, f"test acc {_fmt(acc)} ({cfg.selection})", {"test_accuracy": acc,
                                                                      "selection": cfg.selection})


def _model_of(stage: Stage, ctx: _Ctx) -> Path:
    opts = stage.options
    if opts.get("model"):
        return Path(opts["model"])
    src = str(opts.get("model_stage", "bag"))
    model = ctx.done.get(src, ctx.out / src) / "model"
    if not (model / "model.json").is_file():
        raise ConfigError(expected(f"{stage.name}.model_stage", f"a train stage run before {stage.name!r} "
                                   f"(its saved model {model})", src))
    return model


def _run_fairness(stage: Stage, ctx: _Ctx) -> _Outcome:
    from trustnlp.config import DataConfig
    from trustnlp.fairness.association_tests import builtin_tests
    from trustnlp.fairness.study import run_fairness

    opts = {k: v for k, v in stage.options.items() if k not in ("model", "model_stage", "dp_stages")}
    tests = list(opts.pop("tests", ["weat", "seat"]))
    # the project's own tests only (never ../shared): their names, and no SEAT folder
    names = opts.pop("names", None) or list(builtin_tests())
    if ctx.small:
        opts.update(n_permutations=min(int(opts.get("n_permutations", 200)), 200),
                    n_bootstrap=min(int(opts.get("n_bootstrap", 50)), 50))
    data = _validate(DataConfig, stage.name, {"data": "assistant", "corpus_size": ctx.corpus_size})
    res = run_fairness(_model_of(stage, ctx), ctx.out / stage.name, tests=tests, names=names, extrinsic=True,
                       data=data, seat_dir=ctx.out / stage.name / "no-seat", seed=ctx.seed, **opts)
    ex = res.metrics.get("extrinsic") or {}
    gap = (ex.get("group_metrics") or {}).get("difference", {}).get("accuracy")
    weat = res.metrics.get("weat_mean_abs_effect_size")
    dp_rows = _dp_disparate_impact(stage, ctx, data, int(opts.get("n_bootstrap", 200)))
    if dp_rows:
        res = _with_dp_rows(res, dp_rows, ctx.out / stage.name / "results.json")
    gaps = ", ".join(f"ε {_eps(r['epsilon'])} {_fmt(r['accuracy_gap'])}" for r in dp_rows)
    return _Outcome(res, f"accuracy gap by {ex.get('protected', '?')} {_fmt(gap)}, mean |WEAT d| {_fmt(weat, '.2f')}"
                    + (f"; gender accuracy gap {gaps}" if gaps else ""),
                    {"accuracy_gap": gap, "protected": ex.get("protected"), "weat_mean_abs_effect_size": weat,
                     "dp_accuracy_gap": {_eps(r["epsilon"]): r["accuracy_gap"] for r in dp_rows}})


def _report_summary(report_json: Path) -> dict[Path, str]:
    """Results file -> one line of its headline numbers, from the report's ``report.json`` index."""
    import json

    from trustnlp.report import headline_summary

    index = json.loads(Path(report_json).read_text(encoding="utf-8"))
    # the association tests (a dozen rows) stay in the report; at most 4 rows per result in the terminal
    headlines = [e for e in index.get("headlines", []) if e.get("table") != "association"]
    rows: dict[str, list[str]] = {}
    for e in headlines:
        rows.setdefault(e["result"], [])
        if e["row"] not in rows[e["result"]]:
            rows[e["result"]].append(e["row"])
    lines = headline_summary([e for e in headlines if e["row"] in rows[e["result"]][:4]])
    lines = {k: v + (f"; … {len(rows[k]) - 4} more rows in the report" if len(rows[k]) > 4 else "")
             for k, v in lines.items()}
    return {Path(r["path"]).resolve(): lines[r["name"]] for r in index.get("results", []) if r["name"] in lines}


def _dp_disparate_impact(stage: Stage, ctx: _Ctx, data: Any, n_bootstrap: int) -> list[dict[str, Any]]:
    """DP's disparate impact (Bagdasaryan et al. 2019): per-gender test accuracy of the non-private model
    and of the DP models of the earlier train stages named in ``dp_stages`` (those not run are left out)."""
    from trustnlp.fairness.graded_study import disparate_impact_row
    from trustnlp.results import read_result

    names = [str(stage.options.get("model_stage", "bag")), *stage.options.get("dp_stages", ())]
    rows = []
    for name in dict.fromkeys(names):
        folder = ctx.done.get(name)
        if folder is None or not (folder / "model" / "model.json").is_file():
            continue
        m = read_result(folder / "results.json").metrics
        target = m.get("target_epsilon", m.get("epsilon")) if m.get("private") else None
        rows.append({"stage": name, **disparate_impact_row(
            folder / "model", data, epsilon=target, seed=ctx.seed, n_bootstrap=n_bootstrap,
            test_accuracy=m.get("test_accuracy"), achieved_epsilon=m.get("epsilon") if m.get("private") else None)})
    return rows


def _with_dp_rows(res: Result, rows: list[dict[str, Any]], path: Path) -> Result:
    from trustnlp.results import write_result

    reasons = dict(res.null_reasons)
    for i, r in enumerate(rows):
        if r["epsilon"] is None:
            reasons[f"metrics.dp_disparate_impact[{i}].epsilon"] = "non-private model (epsilon is infinite)"
            reasons[f"metrics.dp_disparate_impact[{i}].achieved_epsilon"] = "non-private model"
    res = dataclasses.replace(res, metrics={**res.metrics, "dp_disparate_impact": rows}, null_reasons=reasons)
    write_result(res, path)
    return res


def _run_cda(stage: Stage, ctx: _Ctx) -> _Outcome:
    import shutil

    from trustnlp.config import DataConfig, TrainConfig
    from trustnlp.fairness.mitigation import CDAConfig, _jsonl_lines, run_cda
    from trustnlp.pipeline import load_splits, run_train
    from trustnlp.results import atomic_write_text

    opts = dict(stage.options)
    train_opts = opts.pop("train", None)
    base = {"data": "assistant", "seed": ctx.seed, "corpus_size": ctx.corpus_size}
    cfg = _validate(CDAConfig, stage.name, {**base, **opts})
    out = ctx.out / stage.name
    res = run_cda(cfg, out)
    m = res.metrics
    added = int(m["n_after"] - m["n_before"])
    extra: dict[str, Any] = {"examples_added": added, "n_swapped_rows": m["n_swapped_rows"]}
    headline = f"{added} examples added ({m['n_swapped_rows']} swapped)"
    if train_opts:
        # augmented train split + the original validation/test splits: evaluated like the `bag` stage
        data_dir = out / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "train_cda.jsonl", data_dir / "train.jsonl")
        splits = load_splits(_validate(DataConfig, stage.name, {k: base[k] for k in ("data", "corpus_size")}),
                             seed=ctx.seed)
        for split in ("validation", "test"):
            atomic_write_text(data_dir / f"{split}.jsonl", _jsonl_lines(getattr(splits, split)))
        tcfg = _validate(TrainConfig, stage.name, {"seed": ctx.seed, **train_opts, "data": str(data_dir)})
        trained = run_train(tcfg, out / "train", progress=ctx.progress)
        acc = trained.metrics["test_accuracy"]
        extra["cda_test_accuracy"] = acc
        headline += f"; retrained test acc {acc:.3f}"
    return _Outcome(res, headline, extra)


_RUNNERS: dict[str, Callable[[Stage, _Ctx], _Outcome]] = {
    "train": _run_train, "audit": _run_audit, "extract": _run_extract, "federate": _run_federate,
    "fairness": _run_fairness, "cda": _run_cda,
}


# -- stage selection ------------------------------------------------------------------------------------
def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    return {**base, **over}


def select_stages(spec: Sequence[str | Mapping[str, Any]] | None = None, *, full: bool = False) -> tuple[Stage, ...]:
    """The stages to run: all of :data:`DEMO_STAGES` (``spec=None``), or those ``spec`` names, in its order.

    Each item of ``spec`` is a stage name or a mapping ``{name, options?, budget?}`` whose options
    override the stage's. ``full`` applies :data:`FULL_OVERRIDES` first.

    Raises:
        ConfigError: an unknown stage name, a repeated one, or a malformed item.
    """
    by_name = {s.name: s for s in DEMO_STAGES}
    if full:
        by_name = {n: Stage(s.name, s.kind, _merge(s.options, FULL_OVERRIDES.get(n, ({}, s.budget))[0]),
                            FULL_OVERRIDES.get(n, ({}, s.budget))[1]) for n, s in by_name.items()}
    if spec is None:
        return tuple(by_name.values())
    chosen: list[Stage] = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ConfigError(expected(f"stages[{i}]", "a stage name or a mapping with `name`", item))
        unknown = set(item) - {"name", "options", "budget"}
        if unknown:
            raise ConfigError(expected(f"stages[{i}]", "only the keys name, options, budget", sorted(unknown)))
        name = item["name"]
        if name not in by_name:
            raise ConfigError(expected(f"stages[{i}].name", f"one of {list(by_name)}", name))
        if any(s.name == name for s in chosen):
            raise ConfigError(expected(f"stages[{i}].name", "each stage at most once", name))
        options = item.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(expected(f"stages[{i}].options", "a mapping of option -> value", options))
        budget = item.get("budget", by_name[name].budget)
        if not isinstance(budget, int | float) or isinstance(budget, bool) or not budget > 0:
            raise ConfigError(expected(f"stages[{i}].budget", "a positive number of seconds", budget))
        s = by_name[name]
        chosen.append(Stage(s.name, s.kind, _merge(s.options, options), float(budget)))
    if not chosen:
        raise ConfigError(expected("stages", "at least one stage", []))
    return tuple(chosen)


def load_demo_config(path: str | Path, *, full: bool = False) -> tuple[Stage, ...]:
    """Stages from a YAML (or JSON) file: a list of stage items, or a mapping with key ``stages``
    holding one (items as in :func:`select_stages`)."""
    from trustnlp.config import read_config_file

    path = Path(path)
    raw = read_config_file(path)
    if isinstance(raw, Mapping):
        extra = set(raw) - {"stages"}
        if extra:
            raise ConfigError(expected(f"{path}", "a mapping with only the key `stages`", sorted(extra)))
        raw = raw.get("stages")
    if not isinstance(raw, list):
        raise ConfigError(expected(f"{path}", "a list of stages (names or {name, options, budget})", type(raw).__name__))
    return select_stages(raw, full=full)


# -- the main job -------------------------------------------------------------------------------------
def run_demo(out: str | Path, *, seed: int = 0, progress: bool = True, console: Console | None = None,
             corpus_size: int | None = None, stages: Sequence[Stage] | None = None, full: bool = False) -> Path:
    """Run the demo stages into ``out`` and render ``out/report.html``; return the report path.

    Args:
        out: output folder; each stage writes ``out/<stage>/results.json``.
        seed: seed of every stage.
        progress: the studies' progress bars.
        console: where the stage headers and the summary table go.
        corpus_size: shrinks the generated corpus (tests); the default is the generator's 24k. Below
            5000 every stage is shrunk further (fewer epochs, rounds, canaries, permutations).
        stages: the stages (default: :func:`select_stages` with ``full``).
        full: the larger settings of :data:`FULL_OVERRIDES` (ignored when ``stages`` is given).
    """
    from trustnlp.report import render_report

    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = tuple(stages) if stages is not None else select_stages(full=full)
    ctx = _Ctx(out=out, seed=seed, corpus_size=corpus_size, progress=progress)
    timings: list[dict[str, Any]] = []
    outcomes: list[_Outcome] = []
    started = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        runner = _RUNNERS.get(stage.kind)
        if runner is None:
            raise ConfigError(expected(f"{stage.name}.kind", f"one of {list(_RUNNERS)}", stage.kind))
        console.rule(f"[bold]stage {i}/{len(stages)}[/] {stage.name} ({stage.kind}, budget {stage.budget:.0f} s)")
        t0 = time.perf_counter()
        outcome = runner(stage, ctx)
        seconds = time.perf_counter() - t0
        ctx.done[stage.name] = out / stage.name
        outcomes.append(outcome)
        timings.append({"stage": stage.name, "kind": stage.kind, "seconds": seconds, "budget": stage.budget,
                        "over_budget": seconds > stage.budget, "headline": outcome.extra})
        console.print(f"  {stage.name}: {outcome.headline} [dim]({seconds:.1f} s)[/]")
        if seconds > stage.budget:
            console.print(f"[yellow]warning:[/] stage {stage.name} took {seconds:.0f} s, over its "
                          f"{stage.budget:.0f} s budget")
        atomic_write_json(out / "stages.json", {"seed": seed, "corpus_size": corpus_size, "full": full,
                                                "stages": timings})
    total = time.perf_counter() - started
    atomic_write_json(out / "stages.json", {"seed": seed, "corpus_size": corpus_size, "full": full,
                                            "total_seconds": total, "stages": timings})
    rep = render_report([out / s.name for s in stages], out, title="trustnlp demo: assistant corpus")
    summary = _report_summary(rep.json_path)
    table = Table(title="trustnlp demo — built-in assistant corpus")
    table.add_column("stage")
    table.add_column("kind")
    table.add_column("seconds / budget", justify="right")
    table.add_column("headline")
    for stage, t, o in zip(stages, timings, outcomes):
        secs = f"{t['seconds']:.1f} / {t['budget']:.0f}"
        # the headline as the report shows it (read back from report.json, i.e. from the same results files);
        # the stage's own line when the report has no headline numbers for it
        line = summary.get((out / stage.name / "results.json").resolve(), o.headline)
        table.add_row(stage.name, stage.kind, f"[yellow]{secs}[/]" if t["over_budget"] else secs, line)
    table.caption = (f"total {total:.0f} s; ε ∞ = non-private; test = held-out templates; "
                     "AUC 0.5 = chance membership inference")
    console.print(table)
    console.print(f"Report: {rep.html_path}")
    return rep.html_path
