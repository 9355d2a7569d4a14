"""The main job (`trustnlp demo`) end to end on a small generated corpus."""

import json

from rich.console import Console

from trustnlp.demo import DEMO_STAGES, run_demo
from trustnlp.results import read_result


def test_demo_trains_every_stage_and_reports(tmp_path):
    console = Console(record=True, width=120)
    html = run_demo(tmp_path, seed=1, progress=False, console=console, corpus_size=600)
    assert html.exists() and html.read_text().count("<img") >= len(DEMO_STAGES)
    stages = json.loads((tmp_path / "stages.json").read_text())
    assert [s["stage"] for s in stages["stages"]] == [name for name, _, _ in DEMO_STAGES]
    for name, overrides, _ in DEMO_STAGES:
        res = read_result(tmp_path / name / "results.json")
        assert res.metrics["private"] is bool(overrides.get("dp"))
        if overrides.get("dp"):
            assert res.metrics["epsilon"] <= overrides["epsilon"]
    text = console.export_text()
    assert "bag-dp-eps1" in text and "Report:" in text
