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


def test_distill_cli_runs_a_mitigated_student_from_a_config(tmp_path, run_cli) -> None:
    import yaml

    from trustnlp.results import read_result

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"bold": "off", "shared_swaps": False, "corpus_size": 150, "teacher_layers": 1,
                                   "teacher_dim": 16, "teacher_heads": 2, "teacher_epochs": 1, "epochs": 1,
                                   "batch_size": 32, "max_length": 24, "vocab_size": 300, "min_count": 1,
                                   "n_builtin_pairs": 4, "max_new_tokens": 4, "n_bootstrap": 50}))
    out = tmp_path / "d"
    proc = run_cli("distill", "--config", str(cfg), "--mitigation", "perturb", "--student-config", "tiny", "--seed", "3",
                   "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    res = read_result(out / "results.json")
    assert res.kind == "distill" and res.seed == 3 and res.config["mitigation"] == "perturb"
    assert res.config["student"] == "tiny" and res.metrics["perplexity"] > 1
    out_text = " ".join(proc.stdout.split())  # the summary prints every headline metric the run has
    shown = [k for k in ("gender_disparity", "gender_disparity_null", "sentiment_disparity", "perplexity")
             if res.metrics.get(k) is not None]
    assert "perplexity" in shown and all(k in out_text for k in shown)
    if res.metrics.get("gender_disparity") is None:
        assert res.null_reasons["metrics.gender_disparity"]  # no profession prompts in this tiny corpus: said why
    proc = run_cli("distill", "--mitigation", "bogus", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "mitigation" in proc.stderr
    proc = run_cli("distill", "--scorer", "toxicity", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "--scorer" in proc.stderr and "NAME=package.module:function" in proc.stderr
    proc = run_cli("distill", "--scorer", "toxicity=no_such_module_xyz:score", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "importable" in proc.stderr and not (tmp_path / "x").exists()
