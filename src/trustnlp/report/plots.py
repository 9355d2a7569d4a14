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

import io
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
    "register_plotter",
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
