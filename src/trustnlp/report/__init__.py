"""The report: ``trustnlp report DIR...`` renders every result found into one self-contained HTML page.

Example:
    >>> from trustnlp.report import render_report
    >>> rep = render_report(["runs/"], "runs/report")  # doctest: +SKIP
    >>> rep.html_path  # doctest: +SKIP
    PosixPath('runs/report/report.html')

The overview's headline numbers per pillar (also in ``report.json`` under ``headlines``) come from
:func:`headline_numbers`; :func:`headline_summary` turns them into one line per result for a terminal.

Kinds add figures by registering a plotter (see :mod:`trustnlp.report.plots`)::

    from trustnlp.report import Plot, make_figure, register_plotter

    @register_plotter("audit")
    def plot_audit(result): ...
"""

from __future__ import annotations

from trustnlp.report.plots import PLOTTERS, Plot, get_plotter, make_figure, plot_rows, register_plotter
from trustnlp.report.render import (
    DEFAULT_SECRET_FIELDS,
    HEADLINE_TABLES,
    Report,
    find_results,
    format_value,
    headline_numbers,
    headline_summary,
    headline_tables,
    redact,
    render_report,
    shown_result,
)

__all__ = [
    "DEFAULT_SECRET_FIELDS",
    "HEADLINE_TABLES",
    "PLOTTERS",
    "Plot",
    "Report",
    "find_results",
    "format_value",
    "get_plotter",
    "headline_numbers",
    "headline_summary",
    "headline_tables",
    "make_figure",
    "plot_rows",
    "redact",
    "register_plotter",
    "render_report",
    "shown_result",
]
