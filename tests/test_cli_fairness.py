"""`trustnlp fairness` end to end (a separate process, offline, real MiniLM; the project's own tests)."""

from trustnlp.results import read_result


def test_fairness_cli_writes_weat_rows(tmp_path, run_cli) -> None:
    out = tmp_path / "fair"
    proc = run_cli("fairness", "--tests", "weat", "--names",
                           "flowers-insects", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    res = read_result(out / "results.json")
    (row,) = res.rows
    assert row["test"] == "flowers-insects" and row["pooling"] == "mean"
    assert row["effect_size"] > 0.5 and 0 <= row["p_value"] < 0.05  # flowers are pleasant for MiniLM too


def test_fairness_cli_names_an_unknown_test(tmp_path, run_cli) -> None:
    proc = run_cli("fairness", "--tests", "weat,nope", "--out",
                           str(tmp_path))
    assert proc.returncode == 2 and "nope" in proc.stderr
