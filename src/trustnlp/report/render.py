"""Render results files into one self-contained HTML report.

``render_report(paths, out)`` finds every results file under ``paths``, reads them, redacts
secrets, draws the figures registered for each kind and writes, atomically:

- ``out/report.html``: one page, CSS inline, figures embedded as base64 PNG, no JavaScript and no
  external resources;
- ``out/figures/<result>-<plot>.png`` and ``.svg``: the same figures as files;
- ``out/report.json``: an index of the results (path, kind, headline metrics, figure files).

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
    "HEADLINE",
    "MAX_TABLE_ROWS",
    "MISSING",
    "REDACTED",
    "Report",
    "find_results",
    "format_value",
    "redact",
    "render_report",
]

REDACTED = "[redacted]"
MISSING = "—"
NON_PRIVATE = "∞ (non-private)"
MAX_TABLE_ROWS = 200
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


def _section(path: Path, name: str, slug: str, result: Result, out: Path, show_secrets: bool,
             stems: set[str]) -> dict[str, Any]:
    secret_fields = result.config.get("secret_fields", ()) if isinstance(result.config, Mapping) else ()
    if isinstance(secret_fields, str):
        secret_fields = [secret_fields]
    env: dict[str, Any] = {
        "config": result.config, "data": result.data, "metrics": result.metrics, "rows": list(result.rows),
        "versions": result.versions, "artifacts": result.artifacts,
    }
    if not show_secrets:
        env = redact(env, secret_fields)
    shown = replace(result, **env)
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
        "model": shown.config.get("model") if isinstance(shown.config.get("model"), (str, int, float)) else (
            json.dumps(shown.config["model"], ensure_ascii=False) if "model" in shown.config else None),
        "metrics": _scalar_table(metrics, reasons, "metrics"),
        "structured": json.dumps(structured, indent=2, ensure_ascii=False) if structured else "",
        "figures": figures, "figure_files": files, "errors": errors,
        "rows_table": _rows_table(shown.rows, reasons) if not figures else None,
        "config": json.dumps(shown.config, indent=2, ensure_ascii=False),
        "versions": [{"key": k, "value": format_value(v)} for k, v in shown.versions.items()],
        "datasets": _datasets(shown.data),
        "artifacts": [{"key": k, "value": format_value(v)} for k, v in shown.artifacts.items()],
        "null_reasons": [{"key": k, "value": v} for k, v in reasons.items()],
    }


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
    stems: set[str] = set()
    sections = [
        _section(f, n, s, r, out, show_secrets, stems) for f, n, s, r in zip(files, names, _slugs(names), results)
    ]
    overview, overview_files = [], []
    with plots.style():
        for p in plots.overview_plots(results, names):
            fig, written = _embed(p, "overview", out, stems)
            overview.append(fig)
            overview_files += written
    html = _ENV.get_template("report.html.j2").render(
        title=title, sections=sections, overview=overview, show_secrets=show_secrets, version=__version__,
        schema_version=SCHEMA_VERSION, missing=MISSING,
    )
    html_path = atomic_write_text(out / "report.html", html)
    index = {
        "schema_version": SCHEMA_VERSION,
        "title": title,
        "overview_figures": [f[k] for f in overview for k in ("png", "svg")],
        "show_secrets": show_secrets,
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
