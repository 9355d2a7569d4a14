"""`trustnlp extract` end to end (a separate process, offline)."""

from trustnlp.results import read_result


def test_extract_cli_writes_one_row_per_setting(tmp_path, run_cli) -> None:
    out = tmp_path / "ext"
    proc = run_cli("extract", "--corpus-size", "1500", "--model", "bag", "--repetitions", "1,2", "--epsilons", "inf",
                "--n-canaries", "10", "--epochs", "1", "--seed", "4", "--threads", "1", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    res = read_result(out / "results.json")
    assert res.seed == 4
    assert sorted((r["model"], r["repetitions"]) for r in res.rows) == [("bag", 1), ("bag", 2)]
    for r in res.rows:
        for key in ("epsilon", "n_canaries", "extraction_rate", "chance", "token_accuracy", "mean_rank",
                    "group_epsilon"):
            assert key in r, key
        assert r["n_canaries"] == 10 and r["chance"] == 1e-4


def test_extract_cli_rejects_bad_repetitions(tmp_path, run_cli) -> None:
    proc = run_cli("extract", "--repetitions", "1,two", "--out", str(tmp_path))
    assert proc.returncode == 2 and "Expected `repetitions` to be comma-separated integers" in proc.stderr
