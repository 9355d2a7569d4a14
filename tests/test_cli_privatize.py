"""`trustnlp privatize` end to end (a separate process, offline, real MiniLM embeddings)."""

from trustnlp.results import read_result


def test_privatize_cli_writes_a_row_per_mechanism_and_epsilon(tmp_path, run_cli) -> None:
    out = tmp_path / "priv"
    args = ["privatize", "--corpus-size", "400", "--epsilons", "30,500", "--mechanisms", "euclidean",
            "--epochs", "1", "--seed", "3", "--out", str(out), "--quiet"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    res = read_result(out / "results.json")
    assert res.seed == 3
    rows = {(r["mechanism"], r["epsilon"]): r for r in res.rows}
    assert set(rows) == {("none", None), ("euclidean", 30.0), ("euclidean", 500.0)}
    # more privacy (smaller epsilon) rewrites more words
    assert rows[("euclidean", 30.0)]["words_unchanged"] < rows[("euclidean", 500.0)]["words_unchanged"]
    assert rows[("none", None)]["words_unchanged"] == 1.0


def test_privatize_cli_rejects_a_bad_epsilon_list(tmp_path, run_cli) -> None:
    proc = run_cli("privatize", "--epsilons", "1,x", "--out",
                           str(tmp_path))
    assert proc.returncode == 2
    assert "Expected `epsilons` to be comma-separated numbers" in proc.stderr
