"""Render results files into one self-contained HTML report.

``render_report(paths, out)`` finds every results file under ``paths``, reads them, redacts
secrets, draws the figures registered for each kind and writes, atomically:

- ``out/report.html``: one page, CSS inline, figures embedded as base64 PNG, no JavaScript and no
  external resources;
- ``out/figures/<result>-<plot>.png`` and ``.svg``: the same figures as files;
- ``out/report.json``: an index: the overview's headline numbers (``headlines``, see
  :func:`headline_numbers`), the figure count, and per result its path, kind, headline metrics and figure files.

The page opens with an overview: the headline numbers of every pillar (utility and ε of training runs,
attack AUC and empirical ε bounds of audits, extraction rates, federated accuracy per client selection,
fairness gaps and effect sizes, mitigation), every result's generic headline, the data sets with their
licences, and the figures across results. One section per result follows: metrics, figures, then its
provenance (seed, configuration, versions, data sources and licences, artifacts, null reasons).

The output depends only on the results files (no render time is recorded), so rendering the same
results twice gives the same bytes.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jinja2

from trustnlp import __version__
from trustnlp.errors import DataError
from trustnlp.report import plots
from trustnlp.results import (
    SCHEMA_VERSION,
    Result,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_result,
)

__all__ = [
    "DEFAULT_SECRET_FIELDS",
    "HEADLINE",
    "HEADLINE_TABLES",
    "MAX_TABLE_ROWS",
    "MISSING",
    "NOT_RECORDED",
    "REDACTED",
    "Report",
    "find_results",
    "format_value",
    "headline_numbers",
    "headline_summary",
    "headline_tables",
    "redact",
    "render_report",
    "shown_result",
]

REDACTED = "[redacted]"
DEFAULT_SECRET_FIELDS: frozenset[str] = frozenset({
    "canary", "canary_text", "canary_texts", "excerpt", "excerpts", "rows.examples", "rows.text", "rows.texts",
    "training_text", "training_texts",
})
"""Fields redacted in every result (training text and canaries), besides those its ``config.secret_fields``
names and every key starting with ``secret``."""
MISSING = "—"
NON_PRIVATE = "∞ (non-private)"
MAX_TABLE_ROWS = 200
ROWS_OPEN = frozenset({"distill"})  # kinds whose rows (generated examples) are shown unfolded next to figures
MAX_CELL_CHARS = 160  # longer cells of the rows table are cut (full text in the tooltip when short enough)
RESULTS_NAME = "results.json"
# headline column -> metric keys tried in order
HEADLINE: dict[str, tuple[str, ...]] = {
    "test_accuracy": ("test_accuracy",),
    "test_macro_f1": ("test_macro_f1",),
    "epsilon": ("epsilon",),
    "seconds": ("seconds", "train_seconds", "total_seconds", "wall_seconds"),
}


@dataclass(frozen=True)
class Report:
    """What :func:`render_report` wrote."""

    html_path: Path
    json_path: Path
    figures: tuple[Path, ...]
    results: tuple[Path, ...]


def find_results(paths: Sequence[str | Path]) -> list[Path]:
    """Results files under ``paths``: each a results JSON file, or a folder searched recursively for
    ``results.json`` (sorted). Duplicates are dropped; raises :class:`DataError` when nothing is found."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            hits = sorted(p.rglob(RESULTS_NAME), key=lambda q: q.relative_to(p).parts)
            hits = [h for h in hits if h.is_file()]
        elif p.is_file():
            hits = [p]
        else:
            raise DataError(f"Results path {p} does not exist; expected a results JSON file or a folder.")
        for h in hits:
            key = h.resolve()
            if key not in seen:
                seen.add(key)
                found.append(h)
    if not found:
        searched = ", ".join(str(p) for p in paths) or "(no paths given)"
        raise DataError(f"No results found: searched {searched} for `{RESULTS_NAME}` files.")
    return found


def redact(obj: Any, secret_fields: Iterable[str] = (), *, _path: str = "") -> Any:
    """A copy of ``obj`` with secret values replaced by ``"[redacted]"``.

    A value is secret when its key starts with ``secret`` (any case; the ``secret_fields`` list
    itself excepted) or when its key or its dotted path (list indices left out, e.g.
    ``rows.text`` or ``config.canaries``) is in ``secret_fields``.
    """
    fields = secret_fields if isinstance(secret_fields, (set, frozenset)) else frozenset(secret_fields)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            key = str(k)
            path = f"{_path}.{key}" if _path else key
            secret = key != "secret_fields" and (key.lower().startswith("secret") or key in fields or path in fields)
            out[key] = REDACTED if secret else redact(v, fields, _path=path)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v, fields, _path=_path) for v in obj]
    return obj


def format_value(v: Any) -> str:
    """How a value appears in the report: floats to 4 significant digits, ``—`` for null."""
    if v is None:
        return MISSING
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False, sort_keys=False)


def _cell(v: Any, reason: str | None = None, *, absent: bool = False, limit: int = 0) -> dict[str, Any]:
    if v is None:
        return {"text": MISSING, "title": reason or ("not recorded" if absent else "null"), "cls": "missing"}
    text = format_value(v)
    title: str | None = None
    if limit and len(text) > limit:
        text, title = text[:limit] + "…", (text if len(text) <= 4 * limit else None)
    num = isinstance(v, (int, float)) and not isinstance(v, bool)
    return {"text": text, "title": title, "cls": "num" if num else ""}


# -- the overview's headline numbers, per pillar ------------------------------------------------------
HEADLINE_TABLES: dict[str, str] = {
    "train": "Training: utility and privacy",
    "audit": "Membership-inference audit",
    "extract": "Canary extraction",
    "federate": "Federated learning",
    "fairness": "Fairness: group gaps and mean association effect sizes",
    "association": "Fairness: association tests",
    "disparate-impact": "Fairness: disparate impact of differential privacy",
    "mitigation": "Bias mitigation",
    "privatize": "Text privatisation",
    "other": "Other results",
}
"""Overview table id -> title, in display order (see :func:`headline_numbers`)."""

NOT_RECORDED = "not recorded in the results file"
_TPR_KEY = re.compile(r"^tpr_at_(.+)_fpr$")
_MEAN_D_KEY = re.compile(r"^([a-z0-9]+)_mean_abs_effect_size$")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _eps_text(v: Any) -> str:
    return "∞" if v is None else format_value(v)


class _Row:
    """One row of an overview table: cells of one result (and one setting of it)."""

    def __init__(self, out: list[dict[str, Any]], table: str, name: str, result: Result, label: str) -> None:
        self.out, self.table, self.name, self.result, self.label = out, table, name, result, label

    def add(self, column: str, metric: str, container: Any, key: str, *, epsilon: bool = False,
            private: Any = None, note: str | None = None, absent: str = NOT_RECORDED,
            source: tuple[str, Result] | None = None) -> None:
        """A cell from ``container[key]`` (``metric``: its dotted path, as in ``null_reasons``)."""
        found = isinstance(container, Mapping) and key in container
        value = container.get(key) if found else None
        res = source[1] if source else self.result
        reason = None if value is not None else (res.null_reasons.get(metric) or (
            "null (no reason recorded)" if found else absent))
        self.value(column, metric, value, reason, epsilon=epsilon, private=private, note=note,
                   source=source[0] if source else None)

    def value(self, column: str, metric: str, value: Any, reason: str | None, *, epsilon: bool = False,
              private: Any = None, note: str | None = None, source: str | None = None) -> None:
        """A cell holding ``value`` (``reason``: why it is null)."""
        if value is None:
            nonprivate = epsilon and (private is False or "non-private" in (reason or ""))
            text = NON_PRIVATE if nonprivate else MISSING
        else:
            text = format_value(value)
        self.out.append({
            "table": self.table, "result": self.name, "source": source or self.name, "kind": self.result.kind,
            "row": self.label, "column": column, "metric": metric, "value": value, "text": text,
            "null_reason": reason if value is None else None, "note": note if value is not None else None,
        })


class _Collector:
    def __init__(self, out: list[dict[str, Any]], name: str, result: Result) -> None:
        self.out, self.name, self.result = out, name, result
        self.labels: set[tuple[str, str]] = set()

    def row(self, table: str, label: str) -> _Row:
        """A new row of ``table``; ``label`` (the setting) is made unique within this result."""
        unique, i = label, 2
        while (table, unique) in self.labels:
            unique, i = f"{label} ({i})", i + 1
        self.labels.add((table, unique))
        return _Row(self.out, table, self.name, self.result, unique)


def _interval_note(v: Any, what: str = "interval") -> str | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v):
        return f"{what} [{format_value(v[0])}, {format_value(v[1])}]"
    return None


def _train_headlines(c: _Collector) -> None:
    r = c.result
    m = r.metrics
    model = r.config.get("model") if isinstance(r.config, Mapping) else None
    label = (str(model) if isinstance(model, (str, int, float)) else r.kind) + (" (DP)" if m.get("private") else "")
    row = c.row("train", label)
    row.add("test accuracy", "metrics.test_accuracy", m, "test_accuracy")
    row.add("ε", "metrics.epsilon", m, "epsilon", epsilon=True, private=m.get("private"))
    row.add("δ", "metrics.delta", m, "delta")
    row.add("privacy unit", "metrics.privacy_unit", m, "privacy_unit",
            absent="no privacy unit recorded in the results file")


def _audit_headlines(c: _Collector) -> None:
    r = c.result
    rows = [(i, x) for i, x in enumerate(r.rows) if isinstance(x, Mapping) and "mia_auc" in x]
    tpr_keys = sorted({k for _, x in rows for k in x if _TPR_KEY.match(k)},
                      key=lambda k: (_fpr_level(k), k))
    bounds = []
    for i, x in rows:
        private = x.get("private")
        row = c.row("audit", f"{x.get('attack', r.metrics.get('attack', 'attack'))}, "
                             f"{'non-private' if x.get('epsilon') is None else 'ε ' + _eps_text(x.get('epsilon'))}")
        row.add("target ε", f"rows[{i}].epsilon", x, "epsilon", epsilon=True, private=private)
        row.add("AUC", f"rows[{i}].mia_auc", x, "mia_auc")
        for k in tpr_keys:
            row.add(f"TPR at FPR {_TPR_KEY.match(k).group(1)}", f"rows[{i}].{k}", x, k,  # type: ignore[union-attr]
                    note=_interval_note(x.get(f"{k}_interval")))
        row.add("empirical ε lower bound", f"rows[{i}].empirical_epsilon_lower", x, "empirical_epsilon_lower")
        if _is_number(x.get("empirical_epsilon_lower")):
            bounds.append((x["empirical_epsilon_lower"], x.get("epsilon")))
    if not rows:
        return
    row = c.row("audit", "all rows")
    best = max(bounds, key=lambda b: b[0]) if bounds else None
    row.value("largest empirical ε lower bound", "max(rows[].empirical_epsilon_lower)",
              best[0] if best else None, None if best else "no row records an empirical epsilon lower bound",
              note=f"at target ε {_eps_text(best[1])}" if best else None)
    if "claims_hold" in r.metrics:
        row.add("claims hold", "metrics.claims_hold", r.metrics, "claims_hold")


def _fpr_level(key: str) -> float:
    try:
        return float(_TPR_KEY.match(key).group(1))  # type: ignore[union-attr]
    except ValueError:
        return math.inf


def _extract_headlines(c: _Collector) -> None:
    for i, x in enumerate(c.result.rows):
        if not isinstance(x, Mapping) or "repetitions" not in x:
            continue
        label = f"{x.get('model', '?')}, r = {format_value(x.get('repetitions'))}, " + (
            "non-private" if x.get("epsilon") is None else f"ε {_eps_text(x.get('epsilon'))}")
        if x.get("defence") not in (None, "none"):
            label += f", {x['defence']}"
        row = c.row("extract", label)
        row.add("repetitions", f"rows[{i}].repetitions", x, "repetitions")
        row.add("ε", f"rows[{i}].epsilon", x, "epsilon", epsilon=True, private=x.get("private"))
        row.add("extraction rate", f"rows[{i}].extraction_rate", x, "extraction_rate",
                note=_interval_note(x.get("extraction_interval")))
        row.add("mean exposure (bits)", f"rows[{i}].mean_exposure", x, "mean_exposure")


def _federate_headlines(c: _Collector, path: Path | None) -> None:
    r = c.result
    m, cfg = r.metrics, r.config if isinstance(r.config, Mapping) else {}
    row = c.row("federate", str(cfg.get("algorithm") or m.get("algorithm") or r.kind))
    sel_file = None
    if path is not None:
        rel = r.artifacts.get("selection", "selection.json")
        sel_file = path.parent / rel
    sel = _read_json(sel_file) if sel_file is not None else None
    if isinstance(sel, Mapping) and "selection" in sel:
        row.add("selection", f"{sel_file.name}:selection", sel, "selection")  # type: ignore[union-attr]
    elif "selection" in cfg:
        row.add("selection", "config.selection", cfg, "selection")
    else:
        row.add("selection", "metrics.selection", m, "selection")
    row.add("rounds", "metrics.rounds", m, "rounds")
    row.add("test accuracy", "metrics.test_accuracy", m, "test_accuracy")
    row.add("ε", "metrics.epsilon", m, "epsilon", epsilon=True, private=m.get("private"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dp_impact_headlines(c: _Collector) -> None:
    dp = c.result.metrics.get("dp_disparate_impact")
    for i, x in enumerate(dp if isinstance(dp, list) else []):
        if not isinstance(x, Mapping):
            continue
        eps = "non-private" if x.get("epsilon") is None else f"ε {_eps_text(x.get('epsilon'))}"
        row = c.row("disparate-impact", f"{x['stage']} ({eps})" if "stage" in x else eps)
        base = f"metrics.dp_disparate_impact[{i}]"
        row.add("ε", f"{base}.epsilon", x, "epsilon", epsilon=True, private=x.get("private"))
        row.add("test accuracy", f"{base}.test_accuracy", x, "test_accuracy")
        row.add("accuracy gap", f"{base}.accuracy_gap", x, "accuracy_gap")


def _sub(d: Any, key: str) -> Mapping[str, Any]:
    """``d[key]`` when both are mappings, else an empty mapping."""
    v = d.get(key) if isinstance(d, Mapping) else None
    return v if isinstance(v, Mapping) else {}


def _fairness_headlines(c: _Collector) -> None:
    r = c.result
    m = r.metrics
    ex = m.get("extrinsic") if isinstance(m.get("extrinsic"), Mapping) else None
    means = [k for k in m if _MEAN_D_KEY.match(k)]
    if ex is not None or means:
        protected = ex.get("protected") if ex is not None else None
        row = c.row("fairness", f"by {protected}" if protected else "intrinsic")
        gm = _sub(ex, "group_metrics")
        diff, intervals = _sub(gm, "difference"), _sub(gm, "intervals")
        for metric in diff:
            iv = _sub(intervals, metric)
            row.add(f"{metric} gap", f"metrics.extrinsic.group_metrics.difference.{metric}", diff, metric,
                    note=_interval_note(iv.get("difference"), "bootstrap interval"))
        cf = ex.get("counterfactual") if ex is not None else None
        if isinstance(cf, Mapping) and "flip_rate" in cf:
            row.add("counterfactual flip rate", "metrics.extrinsic.counterfactual.flip_rate", cf, "flip_rate")
        for k in means:
            row.add(f"mean |d| {_MEAN_D_KEY.match(k).group(1).upper()}", f"metrics.{k}", m, k)  # type: ignore[union-attr]
    for i, x in enumerate(r.rows):
        if isinstance(x, Mapping) and "effect_size" in x:
            row = c.row("association", " ".join(str(x[k]) for k in ("kind", "test") if x.get(k) is not None)
                        or f"row {i}")
            row.add("effect size d", f"rows[{i}].effect_size", x, "effect_size")
            row.add("p-value", f"rows[{i}].p_value", x, "p_value")
    _dp_impact_headlines(c)


def _cda_headlines(c: _Collector, retrained: tuple[str, Result] | None) -> None:
    m = c.result.metrics
    row = c.row("mitigation", f"CDA ({m.get('mode', '?')})")
    for key, column in (("n_before", "train examples before"), ("n_after", "after"),
                        ("n_swapped_rows", "rows swapped"), ("swap_accuracy", "swap accuracy (gold)")):
        if key in m:
            row.add(column, f"metrics.{key}", m, key)
    if retrained is not None:
        row.add("retrained test accuracy", "metrics.test_accuracy", retrained[1].metrics, "test_accuracy",
                source=retrained)


def _distill_summary_headlines(c: _Collector) -> None:
    """A summary over seeds: one row per mitigation (mean over seeds with its t-interval, paired changes)."""
    for i, x in enumerate(c.result.rows):
        if not isinstance(x, Mapping) or "mitigation" not in x:
            continue
        row = c.row("mitigation", f"distillation ({x['mitigation']}, {x.get('n_seeds', '?')} seeds)")
        base = f"rows[{i}]"
        ci = [x.get("gender_disparity_ci_low"), x.get("gender_disparity_ci_high")]
        row.add("gender disparity", f"{base}.gender_disparity", x, "gender_disparity",
                note=_interval_note(ci if None not in ci else None, "95% t-interval over seeds"))
        ci = [x.get("relative_change_ci_low"), x.get("relative_change_ci_high")]
        row.add("change vs plain student", f"{base}.relative_change", x, "relative_change",
                note=_interval_note(ci if None not in ci else None, "95% t-interval, paired by seed"))
        row.add("perplexity increase", f"{base}.relative_perplexity_increase", x, "relative_perplexity_increase")
        row.add("perplexity", f"{base}.perplexity", x, "perplexity")


def _distill_headlines(c: _Collector) -> None:
    m = c.result.metrics
    if m.get("role") == "summary":
        _distill_summary_headlines(c)
        return
    row = c.row("mitigation", f"distillation ({m.get('mitigation', '?')})")
    row.add("gender disparity", "metrics.gender_disparity", m, "gender_disparity",
            note=_interval_note(m.get("gender_disparity_ci95"), "95% interval"))
    for key, column in (("perplexity", "perplexity"), ("kl_to_teacher", "KL to teacher")):
        if key in m:
            row.add(column, f"metrics.{key}", m, key)


def _privatize_headlines(c: _Collector) -> None:
    for i, x in enumerate(c.result.rows):
        if not isinstance(x, Mapping):
            continue
        eps = "clean" if x.get("epsilon") is None else f"ε {_eps_text(x.get('epsilon'))}"
        row = c.row("privatize", f"{x.get('mechanism', '?')}, {eps}")
        row.add("ε", f"rows[{i}].epsilon", x, "epsilon", epsilon=True)
        row.add("words unchanged", f"rows[{i}].words_unchanged", x, "words_unchanged")
        row.add("test accuracy", f"rows[{i}].test_accuracy", x, "test_accuracy")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def headline_numbers(results: Sequence[Result], names: Sequence[str],
                     paths: Sequence[Path | str] | None = None) -> list[dict[str, Any]]:
    """The overview's headline numbers of ``results`` (display ``names``; ``paths``: their results files).

    One entry per number, in the order of :data:`HEADLINE_TABLES` then of the results::

        {"table": "audit", "result": "audit", "source": "audit", "kind": "audit",
         "row": "lira-online, ε 8", "column": "AUC", "metric": "rows[0].mia_auc",
         "value": 0.46, "text": "0.4605", "null_reason": null, "note": null}

    ``metric`` is the value's dotted path in the results file of ``source`` (the convention of
    ``null_reasons``; ``max(rows[].KEY)`` for a maximum over rows, ``selection.json:selection`` for a
    field of the file beside it); ``text`` is the value as displayed (4 significant digits; ``—`` or
    ``∞ (non-private)`` for null); ``null_reason`` says why a value is null (from ``null_reasons``, or
    ``not recorded in the results file``); ``note`` is a tooltip (an interval) for a non-null value.

    By kind: ``train``/``evaluate``: test accuracy, ε, δ, privacy unit. ``audit``: per row the target
    ε, attack AUC, TPR at each low FPR and the empirical ε lower bound, then the largest bound (Jagielski
    et al. 2020; Nasr et al. 2021) and whether every claim holds. ``extract``: per (model, repetitions,
    ε) row the extraction rate and mean exposure (Carlini et al. 2019). ``federate``/``flower``: the
    client selection (``selection.json`` beside the results file, else the config), rounds, final test
    accuracy, ε. ``fairness``: extrinsic group-metric gaps (max − min over groups), the counterfactual
    flip rate and mean |effect size| per association test family (Caliskan et al. 2017), each test's
    effect size and p-value, and the disparate impact of DP (Bagdasaryan et al. 2019). ``cda``:
    augmentation counts, swap accuracy and, given ``paths``, the test accuracy of a ``train`` result
    inside its folder (the retrained model). ``distill``: gender disparity, perplexity, KL to the
    teacher. ``privatize``: per row ε, words unchanged, test accuracy. Other kinds: test accuracy.
    """
    if len(names) != len(results) or (paths is not None and len(paths) != len(results)):
        raise ValueError(f"Expected one name (and path) per result, but got {len(results)} results, "
                         f"{len(names)} names and {'no' if paths is None else len(paths)} paths.")
    files = [Path(p) for p in paths] if paths is not None else [None] * len(results)
    out: list[dict[str, Any]] = []
    for name, result, path in zip(names, results, files):
        c = _Collector(out, name, result)
        kind = result.kind
        if kind in ("train", "evaluate"):
            _train_headlines(c)
        elif kind == "audit":
            _audit_headlines(c)
        elif kind == "extract":
            _extract_headlines(c)
        elif kind in ("federate", "flower"):
            _federate_headlines(c, path)
        elif kind == "fairness":
            _fairness_headlines(c)
        elif kind == "fairness-graded":
            _dp_impact_headlines(c)
        elif kind == "cda":
            retrained = None
            if path is not None:
                retrained = next(((n, r) for n, r, p in zip(names, results, files)
                                  if r.kind == "train" and p is not None and p != path
                                  and _inside(p, path.parent)), None)
            _cda_headlines(c, retrained)
        elif kind == "distill":
            _distill_headlines(c)
        elif kind == "privatize":
            _privatize_headlines(c)
        elif "test_accuracy" in result.metrics:
            c.row("other", kind).add("test accuracy", "metrics.test_accuracy", result.metrics, "test_accuracy")
    order = {t: i for i, t in enumerate(HEADLINE_TABLES)}
    return sorted(out, key=lambda e: order[e["table"]])  # stable: results keep their order within a table


def headline_tables(headlines: Sequence[Mapping[str, Any]], slugs: Mapping[str, str] | None = None,
                    ) -> list[dict[str, Any]]:
    """:func:`headline_numbers` grouped for display: one table per :data:`HEADLINE_TABLES` entry present,
    with its columns (in order of appearance) and rows (one per result and setting; ``None`` where a
    row has no value for a column)."""
    tables: dict[str, dict[str, Any]] = {}
    for e in headlines:
        t = tables.setdefault(e["table"], {"id": e["table"], "title": HEADLINE_TABLES.get(e["table"], e["table"]),
                                           "columns": [], "rows": {}})
        if e["column"] not in t["columns"]:
            t["columns"].append(e["column"])
        row = t["rows"].setdefault((e["result"], e["row"]), {
            "result": e["result"], "slug": (slugs or {}).get(e["result"]), "label": e["row"], "cells": {}})
        row["cells"][e["column"]] = e
    return [
        {**t, "rows": [{**r, "cells": [r["cells"].get(col) for col in t["columns"]]} for r in t["rows"].values()]}
        for t in tables.values()
    ]


def headline_summary(headlines: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One line of text per result from its headline numbers (``column text``, rows separated by ``;``),
    e.g. for a terminal summary that reads the same numbers as the report."""
    per: dict[str, dict[str, list[str]]] = {}
    for e in headlines:
        per.setdefault(e["result"], {}).setdefault(e["row"], []).append(f"{e['column']} {e['text']}")
    return {name: "; ".join(f"{row}: " + ", ".join(cells) for row, cells in rows.items())
            for name, rows in per.items()}


def _names(files: Sequence[Path]) -> list[str]:
    """Display names: the result's folder name, with parent folders added until names are unique."""
    parts = [list((f.parent if f.name == RESULTS_NAME else f.with_suffix("")).resolve().parts) for f in files]
    depth = [1] * len(files)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        dupes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in dupes and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def _slugs(names: Sequence[str]) -> list[str]:
    out: list[str] = ["overview"]  # the overview section's id
    for n in names:
        base = re.sub(r"[^a-z0-9]+", "-", n.lower()).strip("-") or "result"
        slug, i = base, 2
        while slug in out:
            slug, i = f"{base}-{i}", i + 1
        out.append(slug)
    return out[1:]


def _headline(metrics: Mapping[str, Any], reasons: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(raw headline values for report.json, display cells for the HTML) of one result."""
    raw: dict[str, Any] = {}
    cells: dict[str, Any] = {}
    for col, keys in HEADLINE.items():
        key = next((k for k in keys if k in metrics), keys[0])
        value, reason = metrics.get(key), reasons.get(f"metrics.{key}")
        raw[col] = value
        if col == "epsilon" and value is None and (
            metrics.get("private") is False or ("epsilon" in metrics and metrics.get("private") is not True)
        ):
            cells[col] = {"text": NON_PRIVATE, "title": reason or "non-private run", "cls": "num"}
        else:
            cells[col] = _cell(value, reason, absent=key not in metrics)
    raw["private"] = metrics.get("private")
    return raw, cells


def _scalar_table(d: Mapping[str, Any], reasons: Mapping[str, str], prefix: str) -> list[dict[str, Any]]:
    return [
        {"key": k, "cell": _cell(v, reasons.get(f"{prefix}.{k}"))}
        for k, v in d.items()
        if not isinstance(v, (Mapping, list))
    ]


def _rows_table(rows: Sequence[Mapping[str, Any]], reasons: Mapping[str, str]) -> dict[str, Any] | None:
    if not rows or not plots.numeric_columns(rows):
        return None
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    shown = rows[:MAX_TABLE_ROWS]
    body = [
        [_cell(r.get(c), reasons.get(f"rows[{i}].{c}"), absent=c not in r, limit=MAX_CELL_CHARS) for c in cols]
        for i, r in enumerate(shown)
    ]
    note = f"showing {len(shown)} of {len(rows)} rows" if len(rows) > len(shown) else ""
    return {"columns": list(cols), "rows": body, "note": note, "total": len(rows)}


def _datasets(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "name" in data or not data:
        items = [data]
    elif all(isinstance(v, Mapping) for v in data.values()):
        items = [{"name": k, **v} if "name" not in v else v for k, v in data.items()]
    else:
        items = [data]
    out = []
    for d in items:
        files: Mapping[str, Any] = d["files"] if isinstance(d.get("files"), Mapping) else {}
        extra = {k: v for k, v in d.items() if k not in {"name", "source", "licence", "files", "version"}}
        out.append({
            "name": format_value(d.get("name")),
            "source": format_value(d.get("source")),
            "licence": format_value(d.get("licence")),
            "version": format_value(d.get("version")),
            "files": [
                {"path": p, "short": h[:12] if isinstance(h, str) else format_value(h),
                 "full": h if isinstance(h, str) else format_value(h)}
                for p, h in files.items()
            ],
            "extra": json.dumps(extra, indent=2, ensure_ascii=False) if any(v not in (None, {}, []) for v in extra.values()) else "",
        })
    return out


def _embed(p: plots.Plot, slug: str, out: Path, stems: set[str]) -> tuple[dict[str, Any], list[Path]]:
    """Write a figure's PNG and SVG under ``out/figures`` and return its template entry and the files."""
    png, svg = plots.figure_png(p.figure), plots.figure_svg(p.figure)
    stem, i = f"{slug}-{p.name}", 2
    while stem in stems:
        stem, i = f"{slug}-{p.name}-{i}", i + 1
    stems.add(stem)
    files = [atomic_write_bytes(out / "figures" / f"{stem}.png", png), atomic_write_text(out / "figures" / f"{stem}.svg", svg)]
    width, height = struct.unpack(">II", png[16:24])  # the PNG IHDR chunk
    return {"src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "width": width, "height": height,
            "alt": p.alt, "caption": p.caption, "png": f"figures/{stem}.png", "svg": f"figures/{stem}.svg"}, files


def shown_result(result: Result, show_secrets: bool = False) -> Result:
    """``result`` as the report shows it: secret values redacted (see :func:`redact`) unless ``show_secrets``.

    Secret are the fields the result's ``config.secret_fields`` names, those of
    :data:`DEFAULT_SECRET_FIELDS`, and every key starting with ``secret``."""
    if show_secrets:
        return result
    secret_fields = result.config.get("secret_fields", ()) if isinstance(result.config, Mapping) else ()
    if isinstance(secret_fields, str):
        secret_fields = [secret_fields]
    env: dict[str, Any] = {
        "config": result.config, "data": result.data, "metrics": result.metrics, "rows": list(result.rows),
        "versions": result.versions, "artifacts": result.artifacts,
    }
    return replace(result, **redact(env, {*DEFAULT_SECRET_FIELDS, *secret_fields}))


def _model_name(config: Mapping[str, Any]) -> str | None:
    """The model of a run's config (``resolved_model`` where ``model`` was left to the study), or ``None``."""
    model = config.get("model")
    if model is None:
        model = config.get("resolved_model")
    if model is None:
        return None
    return str(model) if isinstance(model, (str, int, float)) else json.dumps(model, ensure_ascii=False)


def _section(path: Path, name: str, slug: str, result: Result, out: Path, show_secrets: bool,
             stems: set[str]) -> dict[str, Any]:
    shown = shown_result(result, show_secrets)
    reasons = dict(result.null_reasons)
    metrics = dict(shown.metrics)

    figures, errors, files = [], [], []
    plotter = plots.get_plotter(result.kind)
    if plotter is not None:
        try:
            with plots.style(), plots.result_dir(path.parent):
                made = plotter(shown)
        except Exception as e:  # noqa: BLE001 -- a broken plotter must not hide the rest of the report
            made = []
            errors.append(f"The {result.kind!r} plotter failed: {type(e).__name__}: {e}")
        for p in made:
            fig, written = _embed(p, slug, out, stems)
            figures.append(fig)
            files += written
    raw, cells = _headline(metrics, reasons)
    structured = {k: v for k, v in metrics.items() if isinstance(v, (Mapping, list))}
    return {
        "name": name, "slug": slug, "path": str(path), "kind": result.kind, "created": result.created,
        "seed": result.seed, "headline_raw": raw, "headline": cells,
        "data_name": ", ".join(d["name"] for d in _datasets(shown.data)) if shown.data else None,
        "model": _model_name(shown.config),
        "metrics": _scalar_table(metrics, reasons, "metrics"),
        "structured": json.dumps(structured, indent=2, ensure_ascii=False) if structured else "",
        "figures": figures, "figure_files": files, "errors": errors,
        # rows always shown; folded when the figures above already plot them, open for example rows (distill)
        "rows_table": _rows_table(shown.rows, reasons),
        "rows_folded": bool(figures) and result.kind not in ROWS_OPEN,
        "config": json.dumps(shown.config, indent=2, ensure_ascii=False),
        "versions": [{"key": k, "value": format_value(v)} for k, v in shown.versions.items()],
        "datasets": _datasets(shown.data),
        "artifacts": [{"key": k, "value": format_value(v)} for k, v in shown.artifacts.items()],
        "null_reasons": [{"key": k, "value": v} for k, v in reasons.items()],
    }


def _licences(sections: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The data sets of all sections (name, source, licence, version), each with the results that used it."""
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for s in sections:
        for d in s["datasets"]:
            key = (d["name"], d["source"], d["licence"], d["version"])
            entry = out.setdefault(key, {"name": d["name"], "source": d["source"], "licence": d["licence"],
                                         "version": d["version"], "used_by": []})
            if not any(u["slug"] == s["slug"] for u in entry["used_by"]):
                entry["used_by"].append({"name": s["name"], "slug": s["slug"]})
    return list(out.values())


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("trustnlp.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def render_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    title: str = "trustnlp report",
    show_secrets: bool = False,
) -> Report:
    """Render every result found under ``paths`` into the folder ``out`` (see the module doc)."""
    files = find_results(paths)
    results = [read_result(f) for f in files]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"Report output {out} exists and is not a folder; expected a folder for report.html.")
    names = _names(files)
    slugs = _slugs(names)
    stems: set[str] = set()
    sections = [
        _section(f, n, s, r, out, show_secrets, stems) for f, n, s, r in zip(files, names, slugs, results)
    ]
    headlines = headline_numbers([shown_result(r, show_secrets) for r in results], names, files)
    overview, overview_files = [], []
    with plots.style():
        for p in plots.overview_plots(results, names):
            fig, written = _embed(p, "overview", out, stems)
            overview.append(fig)
            overview_files += written
    html = _ENV.get_template("report.html.j2").render(
        title=title, sections=sections, overview=overview, show_secrets=show_secrets, version=__version__,
        schema_version=SCHEMA_VERSION, missing=MISSING, non_private=NON_PRIVATE,
        headline_tables=headline_tables(headlines, dict(zip(names, slugs))), licences=_licences(sections),
    )
    html_path = atomic_write_text(out / "report.html", html)
    index = {
        "schema_version": SCHEMA_VERSION,
        "title": title,
        "overview_figures": [f[k] for f in overview for k in ("png", "svg")],
        "figure_count": len(overview) + sum(len(s["figures"]) for s in sections),
        "show_secrets": show_secrets,
        "headlines": headlines,
        "results": [
            {
                "path": s["path"], "name": s["name"], "kind": s["kind"], "created": s["created"],
                "headline": s["headline_raw"],
                "figures": [f[k] for f in s["figures"] for k in ("png", "svg")],
                "errors": s["errors"],
            }
            for s in sections
        ],
    }
    json_path = atomic_write_json(out / "report.json", index)
    return Report(
        html_path=html_path,
        json_path=json_path,
        figures=tuple(overview_files) + tuple(p for s in sections for p in s["figure_files"]),
        results=tuple(files),
    )
