"""The main job (`trustnlp demo`) end to end on a small generated corpus, and its stage selection."""

import json

import pytest
from rich.console import Console

from trustnlp.demo import DEMO_STAGES, FULL_OVERRIDES, load_demo_config, run_demo, select_stages
from trustnlp.errors import ConfigError
from trustnlp.results import read_result

PILLARS = {"train", "audit", "extract", "federate", "fairness", "cda"}


@pytest.fixture
def one_thread():
    """One torch thread (a loaded 2-core machine runs the small stages faster than with two contending)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_demo_runs_every_pillar_and_reports(tmp_path, one_thread):
    assert [s.name for s in DEMO_STAGES[:4]] == ["bag", "cnn", "bag-dp-eps8", "bag-dp-eps1"]
    assert {s.kind for s in DEMO_STAGES} == PILLARS
    console = Console(record=True, width=200)
    html = run_demo(tmp_path, seed=1, progress=False, console=console, corpus_size=600)
    assert html.exists() and html.read_text().count("<img") >= len(DEMO_STAGES)
    stages = json.loads((tmp_path / "stages.json").read_text())
    assert [s["stage"] for s in stages["stages"]] == [s.name for s in DEMO_STAGES]
    for rec, stage in zip(stages["stages"], DEMO_STAGES):
        assert rec["budget"] == stage.budget and rec["over_budget"] is (rec["seconds"] > rec["budget"])
    for stage in DEMO_STAGES:
        res = read_result(tmp_path / stage.name / "results.json")
        assert res.kind == stage.kind  # each runner writes its study's own result
        if stage.kind == "train":
            assert res.metrics["private"] is bool(stage.options.get("dp"))
            if stage.options.get("dp"):
                assert res.metrics["epsilon"] <= stage.options["epsilon"]
    audit = read_result(tmp_path / "audit" / "results.json")
    assert [r["epsilon"] for r in audit.rows] == [8.0, None]
    assert all(0.0 <= r["mia_auc"] <= 1.0 for r in audit.rows)
    extract = read_result(tmp_path / "extract" / "results.json")
    assert [(r["repetitions"], r["epsilon"]) for r in extract.rows] == [(10, 8.0), (10, None)]
    fed = {s: json.loads((tmp_path / s / "selection.json").read_text())["selection"]
           for s in ("federate-uniform", "federate-activity")}
    assert fed == {"federate-uniform": "uniform", "federate-activity": "activity:1"}
    fair = read_result(tmp_path / "fairness" / "results.json")
    assert fair.rows and {r["source"] for r in fair.rows} == {"trustnlp/fairness/resources/association_tests.json"}
    assert "group_metrics" in fair.metrics["extrinsic"]
    assert "seat" not in fair.data  # no SEAT file used: its licence is not claimed
    # DP's disparate impact: the non-private model and both DP models, per-gender accuracy on the same test split
    dpi = fair.metrics["dp_disparate_impact"]
    assert [(r["stage"], r["epsilon"]) for r in dpi] == [("bag", None), ("bag-dp-eps8", 8.0), ("bag-dp-eps1", 1.0)]
    for r in dpi:
        accs = [a for a in r["accuracy_by_group"].values() if a is not None]
        assert r["accuracy_gap"] == pytest.approx(max(accs) - min(accs), rel=1e-10)
        assert sum(r["counts"].values()) == fair.metrics["extrinsic"]["n_test"]
    assert "dp-disparate-impact" in (tmp_path / "report.html").read_text()
    cda = read_result(tmp_path / "cda" / "results.json")
    added = cda.metrics["n_after"] - cda.metrics["n_before"]
    headline = next(s["headline"] for s in stages["stages"] if s["stage"] == "cda")
    assert headline["examples_added"] == added > 0
    retrained = read_result(tmp_path / "cda" / "train" / "results.json")
    assert retrained.metrics["num_train"] == cda.metrics["n_after"]  # trained on the augmented split ...
    bag = read_result(tmp_path / "bag" / "results.json")
    assert retrained.metrics["num_test"] == bag.metrics["num_test"]  # ... evaluated on the original test split
    text = console.export_text()
    assert "bag-dp-eps1" in text and "federate-activity" in text and "LiRA AUC" in text and "Report:" in text
    # the summary table reads the report's headline numbers (the same results files as report.html)
    index = json.loads((tmp_path / "report.json").read_text())
    acc = next(e for e in index["headlines"] if e["result"] == "bag-dp-eps1" and e["metric"] == "metrics.test_accuracy")
    assert acc["value"] == read_result(tmp_path / "bag-dp-eps1" / "results.json").metrics["test_accuracy"]
    assert f"test accuracy {acc['text']}" in " ".join(text.split())


def test_select_stages_full_and_config_file(tmp_path):
    full = select_stages(full=True)
    assert [s.name for s in full] == [s.name for s in DEMO_STAGES]
    audit = next(s for s in full if s.name == "audit")
    assert audit.options["shadows"] == FULL_OVERRIDES["audit"][0]["shadows"] and audit.budget == FULL_OVERRIDES["audit"][1]
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("stages:\n  - bag\n  - name: audit\n    options: {shadows: 8}\n    budget: 30\n")
    chosen = load_demo_config(cfg)
    assert [(s.name, s.budget) for s in chosen] == [("bag", 60.0), ("audit", 30.0)]
    assert chosen[1].options["shadows"] == 8 and chosen[1].options["attack"] == "lira-online"
    for bad in (["nope"], ["bag", "bag"], [{"name": "bag", "budget": -1}], [{"name": "bag", "epochs": 2}], []):
        with pytest.raises(ConfigError):
            select_stages(bad)
    cfg.write_text("{stages: 3}\n")
    with pytest.raises(ConfigError, match="list of stages"):
        load_demo_config(cfg)


def test_demo_command_runs_the_stages_of_a_config_file(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def demo(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "trustnlp.cli", "demo", "--quiet", "--corpus-size", "600",
                               "--out", str(tmp_path / "out"), *args], capture_output=True, text=True, env=env,
                              timeout=300)

    cfg = tmp_path / "demo.yaml"
    cfg.write_text("- bag\n- name: fairness\n  options: {tests: [weat], n_permutations: 100}\n  budget: 45\n")
    proc = demo("--config", str(cfg))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = json.loads((tmp_path / "out" / "stages.json").read_text())
    assert [(s["stage"], s["budget"]) for s in stages["stages"]] == [("bag", 60.0), ("fairness", 45.0)]
    fair = read_result(tmp_path / "out" / "fairness" / "results.json")
    assert {r["kind"] for r in fair.rows} == {"weat"} and fair.config["n_permutations"] == 100
    assert "accuracy gap" in proc.stdout and "Report:" in proc.stdout
    cfg.write_text("- bag\n- nope\n")
    proc = demo("--config", str(cfg))
    assert proc.returncode == 2 and "stages[1].name" in proc.stderr
