"""Report figures for federated runs (kind ``federate``): learning curves and the partition."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from trustnlp.report import plots, render_report
from trustnlp.results import Result, read_result


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory) -> Path:
    """A tiny federated run: 6 clients with label skew, 3 per round, 4 rounds evaluated every 2."""
    from trustnlp.federated import FederatedConfig, run_federated

    out = tmp_path_factory.mktemp("fed") / "run"
    cfg = FederatedConfig(data="assistant", corpus_size=300, corpus_users=10, tokenizer="word", partition="dirichlet:0.5",
                          num_clients=6, clients_per_round=3, rounds=4, eval_every=2, batch_size=16, device="cpu",
                          vectorize="off", seed=3, threads=1)
    threads = torch.get_num_threads()
    try:
        run_federated(cfg, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _lines(fig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {ln.get_label(): (np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float))
            for ax in fig.axes for ln in ax.get_lines()}


def test_curves_follow_the_rows(fed_run: Path) -> None:
    result = read_result(fed_run / "results.json")
    made = {p.name: p for p in plots.plot_federate(result)}
    assert set(made) == {"curves"}  # no result folder set: the partition artifact cannot be resolved
    lines = _lines(made["curves"].figure)
    rows = result.rows
    x, y = lines["train_loss"]
    np.testing.assert_array_equal(x, [r["round"] for r in rows])
    np.testing.assert_allclose(y, [r["train_loss"] for r in rows], rtol=1e-12)
    # evaluated on rounds 2 and 4 only: the curve joins those points, no NaN gaps
    for col in ("test_accuracy", "clients_accuracy", "clients_accuracy_p10", "clients_accuracy_worst_decile"):
        x, y = lines[col]
        np.testing.assert_array_equal(x, [2, 4])
        np.testing.assert_allclose(y, [r[col] for r in rows if col in r], rtol=1e-12)
    assert lines["test_accuracy"][1][-1] == pytest.approx(result.metrics["test_accuracy"], rel=1e-12)
    assert "clients_accuracy_p90" not in lines and "clients_evaluated" not in lines


def test_partition_figure_from_the_artifact(fed_run: Path) -> None:
    result = read_result(fed_run / "results.json")
    part = json.loads((fed_run / "partition.json").read_text())
    with plots.result_dir(fed_run):
        made = {p.name: p for p in plots.plot_federate(result)}
    assert set(made) == {"curves", "partition", "selection"}
    sizes_ax, mix_ax = made["partition"].figure.axes
    heights = [b.get_height() for b in sizes_ax.patches]
    assert heights == sorted(part["sizes"], reverse=True) and sum(heights) == result.metrics["num_train"]
    counts = np.asarray(part["plot"]["label_counts"], float)
    k = counts.shape[1]
    bars = np.asarray([b.get_height() for b in mix_ax.patches], float).reshape(k, len(counts))  # label-major
    np.testing.assert_allclose(bars.T, counts / counts.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(bars.sum(axis=0), 1.0, rtol=1e-12)
    assert "6 clients" in made["partition"].alt


def test_render_report_writes_federated_figures(fed_run: Path, tmp_path: Path) -> None:
    report = render_report([fed_run], tmp_path / "report", title="federated")  # finds partition.json itself
    names = sorted(p.name for p in report.figures)
    assert names == ["run-curves.png", "run-curves.svg", "run-partition.png", "run-partition.svg",
                     "run-selection.png", "run-selection.svg"]
    for p in report.figures:
        assert p.is_file() and p.stat().st_size > 1000
    png = (tmp_path / "report" / "figures" / "run-curves.png").read_bytes()
    assert struct.unpack(">II", png[16:24]) == (750, 320)  # the report's fixed figure size
    html = report.html_path.read_text()
    assert "Learning curves of fedavg over 4 round(s)" in html and "failed" not in html


def test_plotter_without_rows_or_artifact(tmp_path: Path) -> None:
    empty = Result(kind="federate", config={}, seed=0, data={}, metrics={}, rows=(), artifacts={"partition": "missing.json"})
    with plots.result_dir(tmp_path):
        assert plots.plot_federate(empty) == []
    assert plots.get_plotter("federate") is plots.plot_federate


def test_selection_figure_plots_times_selected_against_activity(fed_run: Path) -> None:
    result = read_result(fed_run / "results.json")
    sel = json.loads((fed_run / "selection.json").read_text())
    with plots.result_dir(fed_run):
        made = {p.name: p for p in plots.plot_federate(result)}
    offsets = made["selection"].figure.axes[0].collections[0].get_offsets()
    np.testing.assert_array_equal(np.asarray(offsets)[:, 0], sel["activity"])
    np.testing.assert_array_equal(np.asarray(offsets)[:, 1], sel["times_selected"])
    assert sum(sel["times_selected"]) == sum(r["num_clients"] for r in result.rows)  # 4 rounds x 3 clients
    assert "Spearman" in made["selection"].alt or sel["spearman_activity_frequency"] is None


def test_privacy_utility_overview_across_train_results() -> None:
    def run(model: str, eps: float | None, acc: float, trainable: str | None = None) -> Result:
        cfg = {"model": model, "model_options": {"trainable": trainable} if trainable else {}}
        return Result(kind="train", config=cfg, seed=0, data={}, rows=(),
                      metrics={"test_accuracy": acc, "private": eps is not None, "epsilon": eps})

    results = [run("bag", 1.0, 0.4), run("bag", 8.0, 0.8), run("bag", None, 0.9), run("minilm", 3.0, 0.7, "frozen"),
               run("minilm", 8.0, 0.75, "frozen")]
    p = plots.plot_privacy_utility(results)
    assert p is not None and "bag: eps 1 -> 0.400, eps 8 -> 0.800, non-private 0.900" in p.alt
    lines = {ln.get_label(): ln for ln in p.figure.axes[0].get_lines()}
    np.testing.assert_array_equal(lines["bag"].get_xdata(), [1.0, 8.0])
    np.testing.assert_array_equal(lines["minilm (frozen)"].get_ydata(), [0.7, 0.75])
    assert plots.plot_privacy_utility([run("bag", None, 0.9)]) is None  # nothing private: no trade-off to show


def test_extraction_plotter_draws_rate_and_token_accuracy_against_repetitions() -> None:
    def row(r: int, eps: float | None, rate: float, tok: float) -> dict:
        return {"model": "cnn", "repetitions": r, "epsilon": eps, "extraction_rate": rate,
                "extraction_interval": [max(rate - 0.05, 0.0), min(rate + 0.05, 1.0)], "token_accuracy": tok,
                "chance": 1e-4, "token_chance": 0.1, "defence": "none"}

    rows = [row(1, 8.0, 0.0, 0.1), row(10, 8.0, 0.01, 0.14), row(1, None, 0.0, 0.2), row(10, None, 0.93, 0.95)]
    result = Result(kind="extract", config={}, seed=0, data={}, rows=tuple(rows), metrics={"secret": "digits"})
    (p,) = plots.get_plotter("extract")(result)
    left, right = p.figure.axes
    bars = {c.get_label(): c for c in left.containers}  # errorbar containers: (line, caps, bars)
    np.testing.assert_array_equal(bars["cnn, non-private"].lines[0].get_ydata(), [0.0, 0.93])
    np.testing.assert_array_equal(bars["cnn, eps 8"].lines[0].get_xdata(), [1, 10])
    lines = {ln.get_label(): ln for ln in right.get_lines()}
    np.testing.assert_array_equal(lines["cnn, non-private"].get_ydata(), [0.2, 0.95])
    assert "cnn, non-private: r=1 -> 0.00, r=10 -> 0.93" in p.alt
    assert left.get_xscale() == "log" and right.get_ylabel() == "token accuracy"
