"""The extraction study end to end on the generated assistant corpus (tiny), its rows and files,
defence parsing, early stopping, group privacy and config errors."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from trustnlp.errors import ConfigError
from trustnlp.privacy.attacks.inversion import InversionConfig
from trustnlp.privacy.extraction_study import (
    NON_PRIVATE,
    ExtractConfig,
    _EarlyStopping,
    _group_privacy,
    parse_defence,
    run_extract,
)
from trustnlp.results import read_result
from trustnlp.train import StopTraining

ROW_FIELDS = {
    "model", "secret", "repetitions", "epsilon", "epsilon_spent", "delta", "group_epsilon", "group_delta",
    "defence", "dropout", "early_stopping_patience", "stopped_early", "epochs_trained", "n_canaries", "space_size",
    "extraction_rate", "extraction_interval", "chance", "token_accuracy", "token_accuracy_interval", "token_chance",
    "per_position_accuracy", "set_recovery", "set_recovery_chance", "mean_rank", "median_rank", "rank_chance",
    "mean_exposure", "rank_kind", "rank_test_p_value", "rank_test_significant", "rank_test_alpha",
    "argmax_extraction_rate", "oracle_extraction_rate", "oracle_extraction_interval", "attack_seconds",
    "seconds_per_canary", "test_accuracy",
}
TINY = {"data": "assistant", "corpus_size": 300, "corpus_users": 30, "tokenizer": "word", "epochs": 1,
        "n_canaries": 4, "model_options": {"dim": 8}, "device": "cpu", "threads": 2,
        "attack": InversionConfig(steps=10, top_k=3)}


def test_run_extract_writes_every_row_field(tmp_path) -> None:
    cfg = ExtractConfig(**TINY, models=["bag"], repetitions=[3], epsilons=[math.inf, 8.0], secret="digits",
                        templates=["my pin code is {secret}"])
    result = run_extract(cfg, tmp_path)
    on_disk = read_result(tmp_path / "results.json")
    assert on_disk.kind == "extract" and len(on_disk.rows) == 2 == len(result.rows)
    assert on_disk.metrics["space_size"] == 10**4 and on_disk.metrics["rank_kind"] == "exact"
    settings = [(r["repetitions"], r["epsilon"]) for r in on_disk.rows]
    assert settings == [(3, None), (3, 8.0)]
    for i, row in enumerate(on_disk.rows):
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        assert row["model"] == "bag" and row["n_canaries"] == 4 and row["chance"] == 1e-4
        lo, hi = row["extraction_interval"]
        assert 0 <= lo <= row["extraction_rate"] <= hi <= 1
        assert row["oracle_extraction_rate"] is not None and 1 <= row["mean_rank"] <= 10**4
        if row["epsilon"] is None:  # non-private: every privacy field is null, with the reason
            for k in ("epsilon", "group_epsilon", "epsilon_spent", "delta"):
                assert row[k] is None and on_disk.null_reasons[f"rows[{i}].{k}"] == NON_PRIVATE
        else:
            assert row["group_epsilon"] == pytest.approx(row["repetitions"] * 8.0)
            assert 0.99 * 8.0 <= row["epsilon_spent"] <= 8.0 and row["delta"] > 0
    # the manifests: exactly n * r copies appended; one details file per setting
    man = json.loads((tmp_path / "canaries_r3.json").read_text())
    assert man["n_train_after"] - man["n_train_before"] == 4 * 3
    assert [len(c["indices"]) for c in man["canaries"]] == [3] * 4
    assert on_disk.artifacts["canaries_r3"] == "canaries_r3.json"
    details = json.loads((tmp_path / "settings" / "bag_r3_eps8_none.json").read_text())
    truth = [c["secret_text"] for c in man["canaries"]]
    assert [c["secret"] for c in details["canaries"]] == truth
    assert on_disk.null_reasons["config.epsilons[0]"] == NON_PRIVATE


def test_run_extract_words_with_defences(tmp_path) -> None:
    cfg = ExtractConfig(**{**TINY, "n_canaries": 3}, models=["cnn"], repetitions=[1], epsilons=[math.inf],
                        secret="words", rank_samples=12, defences=["dropout:0.5+early-stopping:1"],
                        templates=["my password is {secret}"])
    result = run_extract(cfg, tmp_path)
    (row,) = result.rows
    assert row["rank_kind"] == "sampled" and row["rank_samples"] == 12 and row["space_size"] == 1000**6
    assert row["oracle_extraction_rate"] is None and row["dropout"] == 0.5 and row["early_stopping_patience"] == 1
    d = read_result(tmp_path / "results.json")
    assert "cannot be enumerated" in d.null_reasons["rows[0].oracle_extraction_rate"]
    assert row["defence"] == "dropout:0.5+early-stopping:1"


def test_defence_parsing() -> None:
    assert parse_defence("none").dropout is None and parse_defence("none").patience is None
    assert parse_defence("dropout:0.3").dropout == 0.3
    assert parse_defence("early-stopping").patience == 1
    both = parse_defence("dropout:0.5+early-stopping:3")
    assert (both.dropout, both.patience) == (0.5, 3)
    for bad in ("dropout", "dropout:1.5", "early-stopping:0", "pruning", ""):
        with pytest.raises(ConfigError, match="Expected `defence`"):
            parse_defence(bad)


def test_early_stopping_stops_after_patience_epochs_without_improvement() -> None:
    calls = []
    step = _EarlyStopping(lambda *a: calls.append(a) or 0.5, patience=2)
    step.clipper = None  # attributes of the wrapper itself still work
    for epoch, loss in enumerate([1.0, 0.8, 0.81, 0.79, 0.80, 0.85], start=1):
        step.on_epoch_end(epoch, {"val_loss": loss})
        if step.stopped_at is not None:
            break
    assert step.stopped_at == 6
    with pytest.raises(StopTraining, match="after epoch 6"):
        step(None, None, {}, 1, 1)
    assert calls == []


def test_group_privacy() -> None:
    assert _group_privacy(10, 8.0, 1e-5)[0] == 80.0
    assert _group_privacy(1, 8.0, 1e-5) == (8.0, pytest.approx(1e-5))
    assert _group_privacy(2, 1.0, 1e-5)[1] == pytest.approx(2 * math.e * 1e-5)
    assert _group_privacy(100, 8.0, 1e-5)[1] == 1.0  # vacuous
    assert _group_privacy(3, math.inf, None) == (math.inf, None)


def test_config_errors(tmp_path) -> None:
    with pytest.raises(ValidationError, match="epsilon must be > 0"):
        ExtractConfig(epsilons=[0.0])
    with pytest.raises(ValidationError, match="repetition"):
        ExtractConfig(repetitions=[0])
    with pytest.raises(ValidationError, match="defence"):
        ExtractConfig(defences=["pruning"])
    with pytest.raises(ValidationError):
        ExtractConfig(secret="emoji")
    csv = tmp_path / "data.csv"
    csv.write_text("text,label\n" + "".join(f"utterance number {i},{'ab'[i % 2]}\n" for i in range(40)))
    with pytest.raises(ConfigError, match="`tokenizer` to be 'wordpiece' for data"):
        run_extract(ExtractConfig(data=str(csv), tokenizer="word", models=["bag"], n_canaries=2), tmp_path / "out")
