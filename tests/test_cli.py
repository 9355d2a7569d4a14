"""The `trustnlp` command end to end, as a user runs it (separate processes, offline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustnlp.results import read_result

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "trustnlp.cli", *args], capture_output=True, text=True, env=ENV, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"trustnlp {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "bag"
    cli("train", "--data", "assistant", "--corpus-size", "3000", "--model", "bag", "--epochs", "3",
        "--seed", "5", "--out", str(out), "--quiet")
    return out


def test_train_writes_results_and_model(trained):
    res = read_result(trained / "results.json")
    m = res.metrics
    assert res.kind == "train" and res.seed == 5 and res.config["model"] == "bag"
    for key in ("test_accuracy", "test_macro_f1", "train_seconds"):
        assert isinstance(m[key], float)
    assert m["private"] is False and m["epsilon"] is None and "metrics.epsilon" in res.null_reasons
    assert m["test_accuracy"] > 0.3  # 20+ intents: chance is < 0.05
    assert res.data["name"] == "assistant" and res.data["version"]
    assert {"torch", "numpy", "trustnlp"} <= set(res.versions)
    assert len(res.rows) == 3 and res.rows[-1]["epoch"] == 3
    assert (trained / "model" / "model.safetensors").exists() and (trained / "model" / "model.json").exists()
    assert not list((trained / "model").glob("*.pt")) and not list((trained / "model").glob("*.bin"))


def test_evaluate_and_predict_saved_model(trained, tmp_path):
    cli("evaluate", "--model", str(trained / "model"), "--data", "assistant", "--corpus-size", "3000",
        "--seed", "5", "--out", str(tmp_path / "ev"))
    ev = read_result(tmp_path / "ev" / "results.json")
    tr = read_result(trained / "results.json")
    assert ev.kind == "evaluate"
    assert ev.metrics["test_accuracy"] == pytest.approx(tr.metrics["test_accuracy"], abs=1e-12)
    proc = cli("predict", "--model", str(trained / "model"), "set an alarm for seven am", "what is the weather in paris")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2
    label, prob = lines[0].split("\t")[:2]
    names = json.loads((trained / "model" / "model.json").read_text())["label_names"]
    assert label in names and 0.0 < float(prob) <= 1.0


def test_report_renders_results(trained, tmp_path):
    cli("report", str(trained), "--out", str(tmp_path / "rep"))
    from trustnlp.report.render import format_value

    html = (tmp_path / "rep" / "report.html").read_text()
    acc = read_result(trained / "results.json").metrics["test_accuracy"]
    assert "<img" in html and f">{format_value(acc)}<" in html  # the headline number, as the results file says


def test_bad_input_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("utterance,intent\nhello,greet\n")
    proc = cli("train", "--data", str(bad), "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "bad.csv" in proc.stderr and "text" in proc.stderr
    proc = cli("train", "--data", "nosuchdataset", "--out", str(tmp_path / "y"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nosuchdataset" in proc.stderr
    proc = cli("train", "--model", "nosucharch", "--corpus-size", "500", "--out", str(tmp_path / "z"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "nosucharch" in proc.stderr
    proc = cli("train", "--epochs", "0", "--out", str(tmp_path / "w"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "epochs" in proc.stderr
    proc = cli("predict", "--model", str(tmp_path / "missing"), "hi", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing" in proc.stderr


def test_train_from_yaml_config_and_resume(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: assistant\ncorpus_size: 1500\nmodel: bag\nepochs: 2\nseed: 1\n")
    out = tmp_path / "run"
    cli("train", "--config", str(cfg), "--out", str(out), "--epochs", "1", "--quiet")
    res = read_result(out / "results.json")
    assert res.config["epochs"] == 1 and res.config["corpus_size"] == 1500
    # the same command again resumes from the finished checkpoint: no extra training steps
    cli("train", "--config", str(cfg), "--out", str(out), "--epochs", "1", "--quiet")
    again = read_result(out / "results.json")
    assert again.metrics["steps"] == res.metrics["steps"]
    assert again.metrics["test_accuracy"] == res.metrics["test_accuracy"]
