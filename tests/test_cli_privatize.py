"""`trustnlp privatize` end to end (a separate process, offline, real MiniLM embeddings)."""

import os
import subprocess
import sys

from trustnlp.results import read_result

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_privatize_cli_writes_a_row_per_mechanism_and_epsilon(tmp_path) -> None:
    out = tmp_path / "priv"
    args = ["privatize", "--corpus-size", "400", "--epsilons", "30,500", "--mechanisms", "euclidean",
            "--epochs", "1", "--seed", "3", "--out", str(out), "--quiet"]
    proc = subprocess.run([sys.executable, "-m", "trustnlp.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = read_result(out / "results.json")
    assert res.seed == 3
    rows = {(r["mechanism"], r["epsilon"]): r for r in res.rows}
    assert set(rows) == {("none", None), ("euclidean", 30.0), ("euclidean", 500.0)}
    # more privacy (smaller epsilon) rewrites more words
    assert rows[("euclidean", 30.0)]["words_unchanged"] < rows[("euclidean", 500.0)]["words_unchanged"]
    assert rows[("none", None)]["words_unchanged"] == 1.0


def test_privatize_cli_rejects_a_bad_epsilon_list(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "trustnlp.cli", "privatize", "--epsilons", "1,x", "--out",
                           str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 2
    assert "Expected `epsilons` to be comma-separated numbers" in proc.stderr
