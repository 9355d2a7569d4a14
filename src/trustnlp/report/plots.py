"""Figures for the report, one plotter per result kind.

A plotter takes a :class:`~trustnlp.results.Result` (already redacted unless the report shows
secrets) and returns a list of :class:`Plot` objects. Plotters are registered by kind::

    from trustnlp.report.plots import Plot, make_figure, register_plotter

    @register_plotter("audit")
    def plot_audit(result):
        fig, (ax,) = make_figure()
        ...
        return [Plot("roc", fig, alt="ROC curve of the membership-inference audit")]

Figures are built with :class:`matplotlib.figure.Figure` directly (never pyplot's global state),
at fixed sizes, and saved deterministically: the SVG ``svg.hashsalt`` is fixed and its ``Date``
metadata is dropped, so rendering the same results twice gives the same bytes.
"""

from __future__ import annotations

import contextvars
import io
import json
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # never switch the backend under a user's open pyplot session
    matplotlib.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from trustnlp.results import Result

__all__ = [
    "DPI",
    "FIGSIZE",
    "PLOTTERS",
    "STYLE",
    "Plot",
    "Plotter",
    "figure_png",
    "figure_svg",
    "get_plotter",
    "make_figure",
    "numeric_columns",
    "plot_rows",
    "read_artifact_json",
    "register_plotter",
    "result_dir",
    "style",
]

FIGSIZE = (7.5, 3.2)  # inches, per figure; every report figure has this size
DPI = 100

# rcParams in force while figures are built and saved (deterministic, no external fonts).
STYLE: dict[str, Any] = {
    "svg.hashsalt": "trustnlp-report",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.grid": True,
    "axes.formatter.useoffset": False,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Plot:
    """One figure of the report.

    Attributes:
        name: file-name-safe name, unique within one result (``[a-z0-9_-]``, e.g. ``"curves"``).
        figure: the matplotlib figure (built with :func:`make_figure`).
        alt: alternative text for the ``<img>`` (what the figure shows, in words).
        caption: optional caption shown under the figure.
    """

    name: str
    figure: Figure
    alt: str
    caption: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"Expected `name` to match {_NAME.pattern}, but got {self.name!r}.")
        if not self.alt.strip():
            raise ValueError(f"Expected `alt` of plot {self.name!r} to be a non-empty description, but got {self.alt!r}.")


Plotter = Callable[[Result], list[Plot]]

PLOTTERS: dict[str, Plotter] = {}


def register_plotter(kind: str) -> Callable[[Plotter], Plotter]:
    """Decorator: register ``fn`` as the plotter of results of ``kind`` (a later registration replaces it)."""

    def deco(fn: Plotter) -> Plotter:
        PLOTTERS[kind] = fn
        return fn

    return deco


def get_plotter(kind: str) -> Plotter | None:
    """The plotter registered for ``kind``, or ``None``."""
    return PLOTTERS.get(kind)


@contextmanager
def style() -> Iterator[None]:
    """The report's rcParams (use around building *and* saving figures)."""
    with matplotlib.rc_context(cast(Any, STYLE)):
        yield


def make_figure(ncols: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of the report's fixed size with ``ncols`` axes side by side."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (deterministic)."""
    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def figure_svg(fig: Figure) -> str:
    """The figure as SVG text (deterministic: fixed hash salt, no date)."""
    buf = io.StringIO()
    with style():
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def numeric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Columns (in first-seen order) with at least one numeric value and no non-numeric, non-null value."""
    order: dict[str, None] = {}
    bad: set[str] = set()
    good: set[str] = set()
    for row in rows:
        for k, v in row.items():
            order.setdefault(k, None)
            if v is None:
                continue
            if _number(v) is None:
                bad.add(k)
            else:
                good.add(k)
    return [k for k in order if k in good and k not in bad]


def _series(rows: Sequence[Mapping[str, Any]], col: str) -> list[float]:
    out = []
    for r in rows:
        v = _number(r.get(col))
        out.append(math.nan if v is None else v)
    return out


def plot_rows(
    rows: Sequence[Mapping[str, Any]],
    x: str | None,
    groups: Sequence[tuple[str, Sequence[str]]],
    *,
    name: str,
    alt: str,
    caption: str = "",
) -> Plot | None:
    """Line plots of ``rows``: one axis per ``(ylabel, columns)`` group, ``x`` on the x axis.

    ``x`` is a column name or ``None`` (row index). Missing/null values are gaps. Groups with no
    columns are dropped; returns ``None`` when nothing is left to plot.
    """
    groups = [(label, list(cols)) for label, cols in groups if cols]
    if not rows or not groups:
        return None
    xs = _series(rows, x) if x else [float(i) for i in range(len(rows))]
    if x and all(math.isnan(v) for v in xs):
        x, xs = None, [float(i) for i in range(len(rows))]
    with style():
        fig, axes = make_figure(len(groups))
        for ax, (label, cols) in zip(axes, groups):
            for col in cols:
                ys = _series(rows, col)
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=col)
            ax.set_xlabel(x or "row")
            ax.set_ylabel(label)
            ax.legend(loc="best", fontsize=8)
    return Plot(name=name, figure=fig, alt=alt, caption=caption)


_LOSS = re.compile(r"(^|_)(loss|perplexity)$")
_QUALITY = re.compile(r"(^|_)(accuracy|acc|f1|macro_f1|slot_f1|precision|recall|auc)$")


@register_plotter("train")
def plot_train(result: Result) -> list[Plot]:
    """Training curves from the per-epoch rows: losses on one axis, accuracy/F1 on another."""
    rows = list(result.rows)
    cols = numeric_columns(rows)
    x = next((c for c in ("epoch", "step") if c in cols), None)
    losses = [c for c in cols if _LOSS.search(c)]
    quality = [c for c in cols if _QUALITY.search(c)]
    what = " and ".join(
        f"{label} ({', '.join(cs)})" for label, cs in (("loss", losses), ("accuracy/F1", quality)) if cs
    )
    plot = plot_rows(
        rows, x, [("loss", losses), ("score", quality)],
        name="curves",
        alt=f"Training curves by {x or 'row'}: {what}." if what else "Training curves.",
        caption=f"Training curves over {len(rows)} {x or 'row'}(s).",
    )
    return [plot] if plot is not None else []


def _eps_label(row: Mapping[str, Any]) -> str:
    eps = _number(row.get("epsilon"))
    return "non-private" if eps is None else f"ε = {eps:g}"


@register_plotter("audit")
def plot_audit(result: Result) -> list[Plot]:
    """Membership-inference audit: ROC curves per epsilon (log-log), and leakage against epsilon."""
    rows = [r for r in result.rows if isinstance(r, Mapping) and _number(r.get("mia_auc")) is not None]
    if not rows:
        return []
    attack = rows[0].get("attack", "attack")
    out: list[Plot] = []
    curves = [r for r in rows if isinstance(r.get("roc"), Mapping)]
    if curves:
        fig, (ax,) = make_figure()
        for r in curves:
            pts = [(f, t) for f, t in zip(r["roc"].get("fpr", []), r["roc"].get("tpr", [])) if f > 0 and t > 0]
            if pts:
                ax.plot(*zip(*pts), linewidth=1.3, label=f"{_eps_label(r)} (AUC {r['mia_auc']:.3f})")
        low = min([f for r in curves for f in r["roc"].get("fpr", []) if f > 0] or [1e-3])
        ax.plot([low, 1], [low, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(loc="lower right", fontsize=7)
        out.append(Plot("roc", fig, alt=f"ROC curves (log-log) of the {attack} membership attack, one per epsilon: "
                        + ", ".join(f"{_eps_label(r)} AUC {r['mia_auc']:.3f}" for r in curves) + ".",
                        caption="ROC curves on the evaluation examples (thresholds chosen on held-out calibration "
                                "examples); the dotted line is chance."))
    finite = sorted((r for r in rows if _number(r.get("epsilon")) is not None), key=lambda r: r["epsilon"])
    nonprivate = [r for r in rows if _number(r.get("epsilon")) is None]
    fig, (left, right) = make_figure(2)
    xs = [r["epsilon"] for r in finite]
    for ax, keys, label in ((left, ("mia_auc", "tpr_at_1e-2_fpr", "tpr_at_1e-3_fpr"), "attack success"),
                            (right, ("empirical_epsilon_lower", "one_run_epsilon_lower"), "empirical ε lower bound")):
        for i, key in enumerate(keys):
            color = f"C{i}"
            if finite:
                ax.plot(xs, _series(finite, key), marker="o", markersize=3, color=color, label=key)
            for r in nonprivate:
                v = _number(r.get(key))
                if v is not None:
                    ax.axhline(v, color=color, linestyle="--", linewidth=0.8, label=f"{key} (non-private)")
        ax.set_xlabel("target ε")
        ax.set_ylabel(label)
        if finite and min(xs) > 0:
            ax.set_xscale("log")
    if finite:
        right.plot(xs, xs, color="grey", linestyle=":", linewidth=1, label="claimed ε (bound must stay below)")
    left.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
    for ax in (left, right):
        ax.legend(loc="best", fontsize=6)
    rho = _number(result.metrics.get("spearman_epsilon_mia_auc"))
    out.append(Plot("leakage", fig, alt=f"Leakage against epsilon for {len(finite)} private model(s): AUC and TPR at "
                    "low FPR (left), empirical epsilon lower bounds against the claimed epsilon (right)"
                    + (f"; Spearman correlation of epsilon with AUC {rho:.3f}." if rho is not None else "."),
                    caption="Dashed: the non-private model. Right: every bound must stay below the dotted line."))
    return out


# -- canary extraction (kind ``extract``) -----------------------------------------------------------------
def _eps_name(eps: Any) -> str:
    v = _number(eps)
    return "non-private" if v is None else f"eps {v:g}"


@register_plotter("extract")
def plot_extract(result: Result) -> list[Plot]:
    """Canary extraction against repetitions, one line per (model, epsilon, defence): the exact extraction
    rate with its interval (left) and the token accuracy against its chance level (right)."""
    rows = [r for r in result.rows if isinstance(r, Mapping) and _number(r.get("repetitions")) is not None]
    if not rows:
        return []
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        label = f"{r.get('model', '?')}, {_eps_name(r.get('epsilon'))}"
        if r.get("defence") not in (None, "none"):
            label += f", {r['defence']}"
        groups.setdefault(label, []).append(r)
    fig, (left, right) = make_figure(2)
    desc = []
    for j, (label, rs) in enumerate(sorted(groups.items())):
        rs = sorted(rs, key=lambda r: float(r["repetitions"]))
        xs = [float(r["repetitions"]) for r in rs]
        ys = [_number(r.get("extraction_rate")) or 0.0 for r in rs]
        lo = [y - (_number((r.get("extraction_interval") or [y, y])[0]) or y) for r, y in zip(rs, ys)]
        hi = [(_number((r.get("extraction_interval") or [y, y])[1]) or y) - y for r, y in zip(rs, ys)]
        left.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, linewidth=1.5, color=f"C{j}", label=label)
        right.plot(xs, [_number(r.get("token_accuracy")) or 0.0 for r in rs], marker="o", color=f"C{j}", label=label)
        desc.append(f"{label}: " + ", ".join(f"r={x:g} -> {y:.2f}" for x, y in zip(xs, ys)))
    chance = _number(rows[0].get("chance"))
    token_chance = _number(rows[0].get("token_chance"))
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("repetitions r of each canary")
    if chance is not None:
        left.axhline(chance, color="grey", linestyle=":", linewidth=1.0, label="chance")
    if token_chance is not None:
        right.axhline(token_chance, color="grey", linestyle=":", linewidth=1.0, label="chance")
    left.set_ylabel("exact extraction rate")
    right.set_ylabel("token accuracy")
    left.legend(fontsize=7, loc="best")
    secret = result.metrics.get("secret", "?")
    return [Plot("extraction", fig, alt=f"Canary extraction ({secret}) against repetitions: " + "; ".join(desc) + ".",
                 caption="Exact extraction rate (95% interval) and token accuracy of the white-box inversion attack "
                         "against the number of copies of each canary, per model and epsilon; dotted: chance. "
                         "A secret repeated r times is protected only at group level (r x epsilon).")]


# -- federated learning (kind ``federate``) --------------------------------------------------------------
#: The folder of the results file being plotted, so a plotter can read the run's artifacts (paths in
#: ``Result.artifacts`` are relative to it). Set it with :func:`result_dir` around the plotter call.
RESULT_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("trustnlp_report_result_dir", default=None)


@contextmanager
def result_dir(path: str | Path | None) -> Iterator[None]:
    """Within the block, :func:`read_artifact_json` resolves artifacts relative to ``path``."""
    token = RESULT_DIR.set(None if path is None else Path(path))
    try:
        yield
    finally:
        RESULT_DIR.reset(token)


def read_artifact_json(result: Result, key: str) -> Any:
    """The JSON artifact ``result.artifacts[key]`` (relative to :data:`RESULT_DIR`), or ``None`` when the
    result names no such artifact, no result folder is set, or the file is missing."""
    base, rel = RESULT_DIR.get(), result.artifacts.get(key)
    if base is None or not isinstance(rel, str):
        return None
    path = base / rel
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


_FED_QUALITY = ("accuracy", "macro_f1", "slot_f1")


def _fed_curve_groups(cols: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Per-round curves worth showing: losses; the central and client-weighted scores with the clients'
    10th percentile and worst decile; perplexities (own axis)."""
    have = set(cols)
    losses = [c for c in ("train_loss", "test_loss", "clients_loss") if c in have]
    quality = [c for m in _FED_QUALITY  # the distribution across clients for the first (main) score only
               for c in (f"test_{m}", f"clients_{m}", f"clients_{m}_p10", f"clients_{m}_worst_decile")
               if c in have and (m == "accuracy" or not c.endswith(("_p10", "_worst_decile")))]
    quality += [c for c in ("future_accuracy", "future_macro_f1") if c in have]  # continual: the next period's data
    perplexity = [c for c in ("test_perplexity", "clients_perplexity", "clients_perplexity_worst_decile",
                              "future_perplexity") if c in have]
    return [(label, cs) for label, cs in (("loss", losses), ("score", quality), ("perplexity", perplexity)) if cs]


def _plot_fed_curves(result: Result) -> Plot | None:
    rows = [r for r in result.rows if isinstance(r, Mapping)]
    groups = _fed_curve_groups(numeric_columns(rows))
    if not rows or not groups:
        return None
    fig, axes = make_figure(len(groups))
    rounds = _series(rows, "round")
    if all(math.isnan(v) for v in rounds):
        rounds = [float(i + 1) for i in range(len(rows))]
    for ax, (label, cols) in zip(axes, groups):
        for col in cols:  # evaluation rounds only: connect the finite points (eval_every > 1 leaves gaps)
            pts = [(x, y) for x, y in zip(rounds, _series(rows, col)) if not (math.isnan(x) or math.isnan(y))]
            if pts:
                dashed = col.endswith(("_p10", "_worst_decile"))
                ax.plot(*zip(*pts), marker="o", markersize=2.5, linewidth=1.0 if dashed else 1.5,
                        linestyle="--" if dashed else "-", label=col)
        finite = [v for col in cols for v in _series(rows, col) if not math.isnan(v)]
        if label == "perplexity" or (label == "loss" and finite and min(finite) > 0 and max(finite) > 100 * min(finite)):
            ax.set_yscale("log")  # perplexities, and losses spanning orders of magnitude (a diverging run)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.legend(loc="best", fontsize=7)
    what = "; ".join(f"{label}: {', '.join(cs)}" for label, cs in groups)
    metrics = result.metrics
    algo = metrics.get("algorithm", "federated")
    part = result.config.get("partition") if isinstance(result.config, Mapping) else None
    return Plot("curves", fig, alt=f"Learning curves of {algo} over {len(rows)} round(s) ({what}).",
                caption=f"{algo}, partition {part}, {metrics.get('num_clients', '?')} clients, "
                        f"{metrics.get('clients_per_round', '?')} per round. test_*: the central test set; "
                        "clients_*: example-weighted mean over the clients' held-out data, with the 10th "
                        "percentile and the mean of the worst decile of clients (dashed).")


def _plot_partition(part: Mapping[str, Any]) -> Plot | None:
    """Client sizes (all clients, largest first) and the label mix of the largest clients (stacked
    fractions), from ``partition.json`` (:meth:`trustnlp.data.partition.Partition.to_dict`)."""
    sizes = sorted((int(s) for s in part.get("sizes") or ()), reverse=True)
    if not sizes:
        return None
    plot = part.get("plot") if isinstance(part.get("plot"), Mapping) else {}
    counts = plot.get("label_counts")
    fig, axes = make_figure(2 if counts else 1)
    ax = axes[0]
    ax.bar(range(len(sizes)), sizes, width=1.0, color="C0")
    ax.set_xlabel("client (largest first)")
    ax.set_ylabel("training examples")
    ax.set_yscale("log" if sizes[0] > 20 * max(sizes[-1], 1) else "linear")
    stats = part.get("stats") if isinstance(part.get("stats"), Mapping) else {}
    spec = part.get("spec", "?")
    alt = (f"Partition {spec}: {len(sizes)} clients, sizes {sizes[-1]} to {sizes[0]} examples"
           + (f" (CV {stats['size_cv']:.2f})" if _number(stats.get("size_cv")) is not None else ""))
    if counts:
        names = list(plot.get("label_names") or [])
        k = max(len(r) for r in counts)
        cmap = matplotlib.colormaps["tab20" if k <= 20 else "turbo"]
        bottoms = [0.0] * len(counts)
        totals = [max(sum(r), 1) for r in counts]
        right = axes[1]
        for j in range(k):
            fr = [(r[j] if j < len(r) else 0) / t for r, t in zip(counts, totals)]
            right.bar(range(len(counts)), fr, bottom=bottoms, width=0.9, color=cmap(j / max(k - 1, 1)),
                      label=names[j] if j < len(names) else str(j), linewidth=0)
            bottoms = [b + f for b, f in zip(bottoms, fr)]
        right.set_ylim(0, 1)
        right.set_xlabel(f"client ({len(counts)} largest)")
        right.set_ylabel("label fraction")
        if k <= 10:
            right.legend(loc="upper right", fontsize=6)
        tv = _number(stats.get("mean_tv_distance"))
        alt += (f"; label mix of the {len(counts)} largest clients over {k} labels"
                + (f", mean total-variation distance to the global mix {tv:.3f}" if tv is not None else ""))
    return Plot("partition", fig, alt=alt + ".",
                caption=f"Partition {spec}: client sizes (left)" + (", each client's label mix (right; one colour per "
                                                                   "label)." if counts else "."))


def _plot_selection(sel: Mapping[str, Any]) -> Plot | None:
    """Times each client was selected against its activity (examples held), from ``selection.json``."""
    act = [_number(a) for a in sel.get("activity") or ()]
    cnt = [_number(c) for c in sel.get("times_selected") or ()]
    pts = [(a, c) for a, c in zip(act, cnt) if a is not None and c is not None]
    if not pts:
        return None
    fig, axes = make_figure(1)
    ax = axes[0]
    xs, ys = zip(*pts)
    ax.scatter(xs, ys, s=8, alpha=0.6, color="C0", linewidths=0)
    if max(xs) > 20 * max(min(xs), 1e-9):
        ax.set_xscale("log")
    ax.set_xlabel("activity: training examples held" + (" (mean over rounds)" if sel.get("setting") == "continual" else ""))
    ax.set_ylabel(f"times selected in {sel.get('rounds', '?')} rounds")
    rho = _number(sel.get("spearman_activity_frequency"))
    never = sel.get("never_selected")
    what = f"selection {sel.get('selection', '?')}, aggregation {sel.get('aggregation', '?')}, setting {sel.get('setting', '?')}"
    return Plot("selection", fig,
                alt=f"Selection frequency against activity for {len(pts)} clients ({what})"
                    + (f"; Spearman correlation {rho:.3f}" if rho is not None else "")
                    + (f"; {never} client(s) never selected." if never is not None else "."),
                caption=f"Each dot a client: how often it was picked against how much data it held ({what}).")


@register_plotter("federate")
def plot_federate(result: Result) -> list[Plot]:
    """Federated run: learning curves per round, the partition (client sizes and label mix) and the
    selection frequency against activity, from the run's ``partition.json`` / ``selection.json``
    artifacts when :func:`result_dir` is set."""
    out = [p for p in (_plot_fed_curves(result),) if p is not None]
    part = read_artifact_json(result, "partition")
    if isinstance(part, Mapping):
        p = _plot_partition(part)
        if p is not None:
            out.append(p)
    sel = read_artifact_json(result, "selection")
    if isinstance(sel, Mapping):
        p = _plot_selection(sel)
        if p is not None:
            out.append(p)
    return out


def _p_label(p: Any) -> str:
    v = _number(p)
    return "" if v is None else (f"p={v:.2g}" if v >= 1e-4 else "p<1e-4")


def _plot_dp_disparate(result: Result) -> Plot | None:
    """Per-group test accuracy by privacy budget (``metrics.dp_disparate_impact``; Bagdasaryan et al. 2019)."""
    dp = [r for r in result.metrics.get("dp_disparate_impact", []) if isinstance(r, Mapping)]
    if not dp:
        return None
    fig, (ax,) = make_figure()
    labels = [_eps_label(r) for r in dp]
    groups = list(dict.fromkeys(g for r in dp for g in (r.get("accuracy_by_group") or {})))
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        vals, errs = [], [[], []]
        for r in dp:
            v = _number((r.get("accuracy_by_group") or {}).get(g))
            ci = (r.get("accuracy_interval_by_group") or {}).get(g)
            vals.append(math.nan if v is None else v)
            errs[0].append(v - ci[0] if ci and v is not None else 0.0)
            errs[1].append(ci[1] - v if ci and v is not None else 0.0)
        ax.bar([k + (i - (len(groups) - 1) / 2) * width for k in range(len(dp))], vals, width, yerr=errs,
               capsize=2, color=f"C{i}", label=g)
    ax.set_xticks(range(len(dp)), labels)
    ax.set_ylabel("test accuracy")
    ax.legend(loc="best", fontsize=7)
    return Plot("dp-disparate-impact", fig, alt="Per-group test accuracy by privacy budget: " + "; ".join(
        f"{lab}: " + ", ".join(f"{g} {v:.3f}" for g, v in (r.get("accuracy_by_group") or {}).items()
                               if _number(v) is not None) for lab, r in zip(labels, dp)) + ".",
        caption="Whiskers: percentile bootstrap intervals (resampled within groups).")


@register_plotter("fairness")
def plot_fairness(result: Result) -> list[Plot]:
    """Fairness study: intrinsic effect sizes per test (one axis per kind; CEAT rows with the 2.5-97.5
    percentile range of their sampled effect sizes; filled markers: p < 0.05), per-group rates with
    bootstrap intervals, and APS by group."""
    out: list[Plot] = []
    rows = [r for r in result.rows if isinstance(r, Mapping) and _number(r.get("effect_size")) is not None]
    kinds = list(dict.fromkeys(str(r.get("kind", "test")) for r in rows))[:3]
    if rows:
        fig, axes = make_figure(len(kinds))
        for ax, kind in zip(axes, kinds):
            sel = [r for r in rows if str(r.get("kind", "test")) == kind]
            ys = list(range(len(sel)))[::-1]
            for y, r in zip(ys, sel):
                d = float(r["effect_size"])
                spread = r.get("sampled_effect_sizes")
                if isinstance(spread, Mapping) and _number(spread.get("p2.5")) is not None:
                    ax.plot([spread["p2.5"], spread["p97.5"]], [y, y], color="C0", linewidth=1.2)
                p = _number(r.get("p_value"))
                sig = p is not None and p < 0.05
                ax.plot([d], [y], marker="o", markersize=4, color="C0", markerfacecolor="C0" if sig else "white")
            ax.set_yticks(ys, [str(r.get("test", "?")) for r in sel], fontsize=max(4, 8 - len(sel) // 8))
            ax.axvline(0, color="grey", linestyle=":", linewidth=0.8)
            ax.set_xlabel(f"{kind} effect size d")
        out.append(Plot("effect-sizes", fig, alt=f"Effect sizes of {len(rows)} intrinsic test(s) by kind ("
                        + ", ".join(kinds) + "): " + "; ".join(f"{r.get('test')} d={float(r['effect_size']):+.2f} "
                                                               f"{_p_label(r.get('p_value'))}" for r in rows[:20])
                        + ("; ..." if len(rows) > 20 else "."),
                        caption="Filled: p < 0.05 (one-sided permutation p-value; CEAT: random-effects p-value). "
                                "CEAT lines: 2.5-97.5 percentiles of the sampled effect sizes."))
    ex = result.metrics.get("extrinsic")
    if isinstance(ex, Mapping):
        gm = ex.get("group_metrics")
        if isinstance(gm, Mapping) and gm.get("by_group"):
            p = _plot_group_metrics(gm)
            if p is not None:
                out.append(p)
        sens = ex.get("sensitivity")
        if isinstance(sens, Mapping) and _number(sens.get("aps")) is not None:
            out.append(_plot_aps(sens, ex.get("counterfactual")))
    p = _plot_dp_disparate(result)
    if p is not None:
        out.append(p)
    return out


def _plot_group_metrics(gm: Mapping[str, Any]) -> Plot | None:
    metrics = [m for m in gm.get("metrics", []) if m in ("accuracy", "tpr", "fpr", "selection_rate")][:4]
    groups = list(gm.get("groups", gm["by_group"].keys()))
    if not metrics or not groups:
        return None
    fig, axes = make_figure(len(metrics))
    words = []
    for ax, m in zip(axes, metrics):
        iv = (gm.get("intervals") or {}).get(m) or {}
        for i, g in enumerate(groups):
            v = _number((gm["by_group"].get(g) or {}).get(m))
            if v is None:
                ax.text(i, 0.02, "undefined", rotation=90, fontsize=6, ha="center")
                continue
            ci = iv.get(f"group:{g}")
            err = [[v - ci[0]], [ci[1] - v]] if ci else None
            ax.bar(i, v, color=f"C{i}", yerr=err, capsize=3)
            words.append(f"{m} {g} {v:.3f}")
        ax.set_xticks(range(len(groups)), groups, fontsize=7)
        diff = _number((gm.get("difference") or {}).get(m))
        ax.set_title(f"{m}" + (f" (gap {diff:.3f})" if diff is not None else ""), fontsize=8)
        ax.set_ylim(0, 1.05)
    return Plot("group-gaps", fig, alt="Per-group rates with bootstrap intervals: " + ", ".join(words) + ".",
                caption=f"Bars: per-group value; whiskers: {gm.get('confidence', 0.95):.0%} percentile bootstrap "
                        f"intervals ({gm.get('n_bootstrap')} replicates, resampled within groups).")


def _plot_aps(sens: Mapping[str, Any], cf: Any) -> Plot:
    by = {g: v for g, v in (sens.get("by_group") or {}).items() if _number(v) is not None}
    fig, (left, right) = make_figure(2)
    left.bar(range(len(by)), list(by.values()), color=[f"C{i}" for i in range(len(by))])
    left.set_xticks(range(len(by)), list(by), fontsize=7)
    left.axhline(float(sens["aps"]), color="grey", linestyle="--", linewidth=1, label=f"APS {float(sens['aps']):.4f}")
    left.set_ylabel("mean prediction sensitivity")
    left.legend(loc="best", fontsize=7)
    flips = {}
    if isinstance(cf, Mapping):
        flips = {g: v.get("flip_rate") for g, v in (cf.get("by_group") or {}).items()
                 if isinstance(v, Mapping) and _number(v.get("flip_rate")) is not None}
    right.bar(range(len(flips)), list(flips.values()), color=[f"C{i}" for i in range(len(flips))])
    right.set_xticks(range(len(flips)), list(flips), fontsize=7)
    right.set_ylabel("counterfactual flip rate")
    return Plot("aps", fig, alt=f"Prediction sensitivity: APS {float(sens['aps']):.4f}; by group "
                + ", ".join(f"{g} {v:.4f}" for g, v in by.items())
                + (("; counterfactual flip rate by group " + ", ".join(f"{g} {v:.3f}" for g, v in flips.items()))
                   if flips else "") + ".",
                caption="Left: mean PS per group (dashed: APS over all examples). Right: share of predictions that "
                        "change when gender terms are swapped, per group.")


@register_plotter("fairness-graded")
def plot_fairness_graded(result: Result) -> list[Plot]:
    """Graded-bias study: extrinsic metrics against the planted bias per architecture, an intrinsic
    metric against an extrinsic one across models, and per-group accuracy against DP epsilon."""
    rows = [r for r in result.rows if isinstance(r, Mapping) and _number(r.get("planted_bias")) is not None]
    out: list[Plot] = []
    if rows:
        fig, (left, right) = make_figure(2)
        archs = list(dict.fromkeys(str(r.get("architecture")) for r in rows))
        styles = ["-", "--", ":", "-."]
        for j, arch in enumerate(archs):
            sel = sorted((r for r in rows if str(r.get("architecture")) == arch), key=lambda r: r["planted_bias"])
            xs = [r["planted_bias"] for r in sel]
            for i, key in enumerate(("tpr_gap", "fpr_gap", "counterfactual_flip_rate", "aps")):
                left.plot(xs, _series(sel, key), marker="o", markersize=3, color=f"C{i}",
                          linestyle=styles[j % len(styles)], label=f"{key} ({arch})")
            right.scatter(_series(sel, "weat_mean_abs"), _series(sel, "counterfactual_flip_rate"), s=14,
                          label=arch)
        left.set_xlabel("planted bias q")
        left.set_ylabel("extrinsic metric")
        left.legend(loc="best", fontsize=5)
        right.set_xlabel("mean |WEAT d| (own gender tests)")
        right.set_ylabel("counterfactual flip rate")
        right.legend(loc="best", fontsize=7)
        corr = next((c for c in result.metrics.get("correlations", []) if isinstance(c, Mapping)
                     and c.get("intrinsic") == "weat_mean_abs" and c.get("extrinsic") == "counterfactual_flip_rate"), {})
        rho = _number(corr.get("spearman"))
        out.append(Plot("graded", fig, alt=f"Extrinsic metrics against planted bias for {len(rows)} models "
                        f"({', '.join(archs)}), and mean absolute WEAT effect size against counterfactual flip rate"
                        + (f" (Spearman {rho:+.2f}, p {corr.get('spearman_p'):.2g})." if rho is not None else "."),
                        caption="Left: line style = architecture. Right: one dot per model."))
    p = _plot_dp_disparate(result)
    if p is not None:
        out.append(p)
    return out


# -- overview: figures across results ------------------------------------------------------------------
def _model_label(result: Result) -> str:
    cfg = result.config if isinstance(result.config, Mapping) else {}
    label = str(cfg.get("model") or "?")
    opts = cfg.get("model_options") if isinstance(cfg.get("model_options"), Mapping) else {}
    if opts.get("trainable"):
        label += f" ({opts['trainable']})"
    return label


def plot_privacy_utility(results: Sequence[Result], names: Sequence[str] = ()) -> Plot | None:
    """Test accuracy against epsilon, one line per model, over the ``train`` results (the privacy-utility
    trade-off of a study); the non-private run of each model is a dashed line. ``None`` unless at least one
    private and two results of one model are present."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        if r.kind != "train":
            continue
        acc = _number(r.metrics.get("test_accuracy"))
        if acc is None:
            continue
        eps = _number(r.metrics.get("epsilon")) if r.metrics.get("private") else math.inf
        if eps is None:
            continue
        groups.setdefault(_model_label(r), []).append((eps, acc))
    private = [p for pts in groups.values() for p in pts if math.isfinite(p[0])]
    if not private or not any(len(pts) >= 2 for pts in groups.values()):
        return None
    fig, axes = make_figure(1)
    ax = axes[0]
    for j, (label, pts) in enumerate(sorted(groups.items())):
        finite = sorted(p for p in pts if math.isfinite(p[0]))
        if finite:
            ax.plot(*zip(*finite), marker="o", linewidth=1.5, color=f"C{j}", label=label)
        for _, acc in (p for p in pts if not math.isfinite(p[0])):
            ax.axhline(acc, color=f"C{j}", linestyle="--", linewidth=1.0)
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (target, log scale)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="best")
    desc = "; ".join(f"{label}: " + ", ".join(f"eps {e:g} -> {a:.3f}" if math.isfinite(e) else f"non-private {a:.3f}"
                                               for e, a in sorted(pts)) for label, pts in sorted(groups.items()))
    return Plot("privacy-utility", fig, alt=f"Privacy-utility trade-off: test accuracy against epsilon ({desc}).",
                caption="Test accuracy against the privacy budget, one line per model; dashed: the same model "
                        "trained without DP.")


def overview_plots(results: Sequence[Result], names: Sequence[str] = ()) -> list[Plot]:
    """Figures across the results of a report (shown in its overview)."""
    return [p for p in (plot_privacy_utility(results, names),) if p is not None]


# -- distillation (trustnlp.fairness.generation) ------------------------------------------------------
def _distill_err(value: float, ci: Any) -> list[list[float]] | None:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(c) is not None for c in ci):
        return [[max(0.0, value - float(ci[0]))], [max(0.0, float(ci[1]) - value)]]
    return None


def _distill_profession_label(name: str) -> str:
    return re.sub(r"_(occupations|specialties|types|branches|personnel|titles)$", "", str(name)).replace("_", " ")


def _distill_skew_plot(series: Sequence[tuple[str, Mapping[str, Any]]], what: str) -> Plot | None:
    """Dots: each profession's signed skew, one colour per series (``[(label, {profession: skew})]``)."""
    professions = sorted({p for _, skews in series for p, v in skews.items() if _number(v) is not None})
    if not professions:
        return None
    fig, (ax,) = make_figure(1)
    width = 0.8 / max(1, len(series))
    words = []
    for j, (label, skews) in enumerate(series):
        xs = [i - 0.4 + width * (j + 0.5) for i, p in enumerate(professions) if _number(skews.get(p)) is not None]
        ys = [float(skews[p]) for p in professions if _number(skews.get(p)) is not None]
        ax.plot(xs, ys, linestyle="none", marker="o", markersize=3.5, color=f"C{j}", label=label)
        words.append(f"{label}: " + ", ".join(f"{_distill_profession_label(p)} {float(skews[p]):+.2f}"
                                              for p in professions if _number(skews.get(p)) is not None))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(professions)), [_distill_profession_label(p) for p in professions], rotation=60,
                  ha="right", fontsize=max(4, 8 - len(professions) // 6))
    ax.set_ylabel("skew (> 0: male-leaning)")
    top = max(abs(float(v)) for _, skews in series for v in skews.values() if _number(v) is not None)
    ax.set_ylim(-min(1.05, max(0.25, 1.2 * top)), min(1.05, max(0.25, 1.2 * top)))
    ax.legend(loc="best", fontsize=6, ncols=min(4, len(series)))
    return Plot("profession-skew", fig, alt=f"Gender polarity skew per profession ({what}); " + "; ".join(words) + ".",
                caption="Skew = (male-leaning - female-leaning continuations) / continuations, per profession "
                        "(gender-neutral prompts); 0 is balanced.")


def _plot_distill_summary(m: Mapping[str, Any]) -> list[Plot]:
    mits = m.get("mitigations") if isinstance(m.get("mitigations"), Mapping) else {}
    names = [n for n, v in mits.items() if isinstance(v, Mapping)]
    if not names:
        return []
    teacher = m.get("teacher") if isinstance(m.get("teacher"), Mapping) else {}
    fig, (left, right) = make_figure(2)
    words, change_words = [], []
    for i, n in enumerate(names):
        t = mits[n].get("gender_disparity") or {}
        v = _number(t.get("mean"))
        if v is None:
            continue
        left.bar(i, v, color=f"C{i}", yerr=_distill_err(v, t.get("ci95")), capsize=3)
        floor = ((mits[n].get("metrics") or {}).get("gender_disparity_null") or {}).get("value") or {}
        null = _number(floor.get("mean"))
        if null is not None:
            left.plot([i - 0.4, i + 0.4], [null, null], color="black", linestyle=":", linewidth=1)
        words.append(f"{n} {v:.3f}" + (f" [{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}]" if t.get("ci95") else ""))
        for j, (key, label) in enumerate((("relative_change_vs_baseline", "disparity"),
                                          ("relative_perplexity_increase", "perplexity"))):
            r = mits[n].get(key) or {}
            rv = _number(r.get("mean"))
            if rv is None:
                continue
            ci = [100 * c for c in r["ci95"]] if r.get("ci95") else None
            right.bar(i + (j - 0.5) * 0.4, 100 * rv, width=0.4, color=f"C{i}", alpha=1.0 if j == 0 else 0.45,
                      hatch="" if j == 0 else "//", yerr=_distill_err(100 * rv, ci), capsize=2)
            change_words.append(f"{n} {label} {100 * rv:+.1f}%")
    tv = _number(teacher.get("gender_disparity"))
    if tv is not None:
        left.axhline(tv, color="grey", linestyle="--", linewidth=1, label=f"teacher {tv:.3f}")
        left.legend(loc="best", fontsize=7)
    left.set_xticks(range(len(names)), names, fontsize=8)
    left.set_ylabel("gender polarity disparity")
    right.set_xticks(range(len(names)), names, fontsize=8)
    right.axhline(0, color="grey", linewidth=0.8)
    right.set_ylabel(f"change vs {m.get('baseline', 'none')} (%)")
    out = [Plot("disparity", fig, alt="Gender polarity disparity per mitigation (mean over seeds, 95% t-interval): "
                + ", ".join(words) + (f"; teacher {tv:.3f}" if tv is not None else "")
                + ". Paired change vs the baseline: " + (", ".join(change_words) or "none") + ".",
                caption="Left: mean over professions of |skew| on gender-neutral profession prompts; whiskers: 95% "
                        "Student-t interval over seeds; dotted: the sign-flip noise floor; dashed: the teacher. Right: "
                        "change vs the plain student paired by seed (solid: disparity, hatched: perplexity).")]
    skews = [(n, {p: (v or {}).get("mean") for p, v in (mits[n].get("profession_skew") or {}).items()}) for n in names]
    p = _distill_skew_plot(skews, "mean over seeds")
    if p is not None:
        out.append(p)
    return out


def _plot_distill_run(result: Result) -> list[Plot]:
    m = result.metrics
    cfg = result.config if isinstance(result.config, Mapping) else {}
    label = f"student ({m.get('mitigation') or cfg.get('mitigation', '?')})"
    sides = [(label, ""), ("teacher", "teacher_")]
    fig, (left, right) = make_figure(2)
    words = []
    for i, (name, pre) in enumerate(sides):
        for ax, key in ((left, "gender_disparity"), (right, "gender_polarity_skew")):
            v = _number(m.get(f"{pre}{key}"))
            if v is None:
                continue
            ax.bar(i, v, color=f"C{i}", yerr=_distill_err(v, m.get(f"{pre}{key}_ci95")), capsize=3)
            words.append(f"{name} {key} {v:+.3f}")
        null = _number(m.get(f"{pre}gender_disparity_null"))
        if null is not None:
            left.plot([i - 0.4, i + 0.4], [null, null], color="black", linestyle=":", linewidth=1)
    if not words:
        return []
    for ax, ylabel in ((left, "gender polarity disparity"), (right, "signed skew (> 0: male)")):
        ax.set_xticks(range(len(sides)), [s for s, _ in sides], fontsize=8)
        ax.set_ylabel(ylabel)
    right.axhline(0, color="grey", linewidth=0.8)
    out = [Plot("disparity", fig, alt="Gender polarity of continuations of gender-neutral profession prompts: "
                + ", ".join(words) + f"; gendered share {_number(m.get('gendered_share')) or 0:.2f}.",
                caption="Left: mean over professions of |skew|; right: mean signed skew; whiskers: 95% percentile "
                        "bootstrap intervals (continuations resampled within professions); dotted: the sign-flip "
                        "noise floor.")]
    series = []
    for name, pre in sides:
        pol = m.get(f"{pre}profession_polarity")
        if isinstance(pol, Mapping):
            series.append((name, {p: v.get("skew") for p, v in pol.items() if isinstance(v, Mapping)}))
    p = _distill_skew_plot(series, "one run")
    if p is not None:
        out.append(p)
    return out


@register_plotter("distill")
def plot_distill(result: Result) -> list[Plot]:
    """Counterfactual role-reversal distillation (:mod:`trustnlp.fairness.generation`). A sweep summary
    (``metrics.role == "summary"``, :func:`~trustnlp.fairness.generation.summary_result`): the gender
    polarity disparity per mitigation (mean over seeds, 95% t-interval, noise floor, teacher) with the
    paired change vs the plain student, and each profession's skew per mitigation. One run: the
    student's and the teacher's disparity and signed skew with bootstrap intervals, and their skew per
    profession."""
    if result.metrics.get("role") == "summary":
        return _plot_distill_summary(result.metrics)
    return _plot_distill_run(result)
