"""`trustnlp audit` end to end on the generated assistant corpus (tiny: K = 4 shadows, 2 epsilons, few steps),
run as a user runs it (separate processes, offline)."""

import json
import os
import subprocess
import sys

import pytest

from trustnlp.report import render_report
from trustnlp.results import read_result

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ROW_FIELDS = {"epsilon", "private", "delta", "accountant", "test_accuracy", "attack", "mia_auc", "tpr_at_1e-3_fpr",
              "tpr_at_1e-3_fpr_interval", "tpr_at_1e-2_fpr", "tpr_at_1e-2_fpr_interval", "empirical_epsilon_lower",
              "one_run_epsilon_lower", "confidence", "roc", "epsilon_spent", "noise_multiplier", "claim_holds"}
ARGS = ["audit", "--data", "assistant", "--corpus-size", "400", "--model", "bag", "--tokenizer", "word",
        "--epsilons", "2,inf", "--shadows", "4", "--epochs", "2", "--max-steps", "6", "--batch-size", "32",
        "--threads", "1", "--seed", "3", "--quiet"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trustnlp.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "run"
    proc = cli(*ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_audit_writes_one_row_per_epsilon_with_every_field(audited):
    out, stdout = audited
    res = read_result(out / "results.json")
    assert res.kind == "audit" and res.seed == 3 and res.config["shadows"] == 4
    assert [r["epsilon"] for r in res.rows] == [2.0, None]
    for row in res.rows:
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        assert row["attack"] == "lira-online" and row["confidence"] == 0.95 and row["models_reused"] == 0
        assert 0 <= row["mia_auc"] <= 1 and 0 <= row["test_accuracy"] <= 1
        for key in ("tpr_at_1e-3_fpr", "tpr_at_1e-2_fpr"):
            lo, hi = row[f"{key}_interval"]
            assert 0 <= lo <= row[key] <= hi <= 1
    dp, nonprivate = res.rows
    assert dp["private"] is True and dp["accountant"] == "rdp" and dp["delta"] == 1e-5
    assert dp["empirical_epsilon_lower"] <= dp["epsilon_spent"] <= 2.0 and dp["claim_holds"] is True
    assert dp["shadow_epsilon_spent_mean"] == pytest.approx(dp["epsilon_spent"], rel=0.2)
    assert nonprivate["private"] is False and nonprivate["accountant"] is None and nonprivate["claim_holds"] is None
    assert res.metrics["spearman_epsilon_mia_auc"] is None  # one finite epsilon: undefined, with its reason
    assert "at least 3" in res.null_reasons["metrics.spearman_epsilon_mia_auc"]
    assert len(res.metrics["seeds"]["shadows"]) == 4
    assert (out / "models" / "eps-2" / "shadow-3.safetensors").exists()
    assert (out / "scores" / "eps-inf.safetensors").exists()
    json.loads((out / "results.json").read_text())  # strict JSON
    assert "Spearman" in stdout and "eps lower" in stdout


def test_rerun_reuses_the_stored_models(audited):
    out, _ = audited
    before = read_result(out / "results.json")
    proc = cli(*ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = read_result(out / "results.json")
    assert [r["models_reused"] for r in after.rows] == [5, 5]  # target + 4 shadows, per epsilon
    assert [r["mia_auc"] for r in after.rows] == [r["mia_auc"] for r in before.rows]


def test_report_draws_roc_and_leakage(audited, tmp_path):
    out, _ = audited
    rep = render_report([out], tmp_path / "report")
    names = sorted(p.name for p in rep.figures)
    assert any(f.endswith("-roc.png") for f in names) and any(f.endswith("-leakage.png") for f in names)
    html = rep.html_path.read_text()
    assert "ROC curves" in html and "empirical epsilon lower bounds" in html


def test_bad_options_are_one_clear_error(tmp_path):
    proc = cli("audit", "--epsilons", "0,inf", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "Expected every epsilon to be > 0" in proc.stderr and "Traceback" not in proc.stderr
