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


def test_federate_cli_selection_continual_and_client_dp(tmp_path, run_cli) -> None:
    out = tmp_path / "sel"
    proc = run_cli("federate", "--corpus-size", "600", "--tokenizer", "word", "--partition", "user", "--clients-per-round",
                   "5", "--rounds", "4", "--selection", "activity:1", "--aggregation", "horvitz-thompson", "--setting",
                   "continual", "--periods", "2", "--retention", "1", "--storage", "8", "--threads", "1", "--out", str(out),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    res = read_result(out / "results.json")
    assert res.metrics["setting"] == "continual" and res.metrics["selection"] == "activity:1"
    assert all("Poisson draw" in why for r in res.rows for why in r["selection_reasons"])
    assert (out / "selection.json").is_file()
    out = tmp_path / "dp"
    proc = run_cli("federate", "--corpus-size", "600", "--tokenizer", "word", "--partition", "user", "--clients-per-round",
                   "10", "--rounds", "2", "--selection", "activity:0", "--client-dp", "--epsilon", "4", "--threads", "1",
                   "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    m = read_result(out / "results.json").metrics
    assert m["private"] and 0.99 * 4 <= m["epsilon"] <= 4 and m["privacy_unit"] == "user"
    proc = run_cli("federate", "--client-dp", "--epsilon", "4", "--selection", "power-of-choice", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "power-of-choice" in proc.stderr


def test_cda_cli_writes_the_augmented_training_set(tmp_path, run_cli) -> None:
    import json

    out = tmp_path / "cda"
    proc = run_cli("cda", "--corpus-size", "600", "--mode", "two-sided", "--seed", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    m = read_result(out / "results.json").metrics
    lines = (out / "train_cda.jsonl").read_text().splitlines()
    assert len(lines) == m["n_after"] == m["n_before"] + m["n_gendered"]
    swapped = [json.loads(x) for x in lines if json.loads(x)["cda_swapped"]]
    assert len(swapped) == m["n_gendered"] and all("text" in r for r in swapped)
