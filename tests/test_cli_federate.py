"""`trustnlp federate` end to end (a separate process, offline)."""

from trustnlp.results import read_result


def test_federate_cli_writes_rounds_metrics_and_model(tmp_path, run_cli) -> None:
    out = tmp_path / "fed"
    proc = run_cli("federate", "--corpus-size", "1500", "--model", "bag", "--tokenizer", "word", "--algorithm", "fedprox",
                "--mu", "0.01", "--partition", "dirichlet:0.5", "--num-clients", "8", "--clients-per-round", "4",
                "--rounds", "3", "--seed", "2", "--threads", "1", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    res = read_result(out / "results.json")
    assert res.seed == 2 and res.config["algorithm"] == "fedprox" and res.config["partition"] == "dirichlet:0.5"
    assert [r["round"] for r in res.rows] == [1, 2, 3]
    assert 0.0 <= res.metrics["test_accuracy"] <= 1.0
    assert (out / "model").is_dir()


def test_federate_cli_refuses_an_option_of_another_algorithm(tmp_path, run_cli) -> None:
    proc = run_cli("federate", "--algorithm", "fedavg", "--mu", "0.1", "--out", str(tmp_path))
    assert proc.returncode == 2 and "mu" in proc.stderr
