"""``run_fairness``: the results envelope (rows with test/effect_size/p_value/pooling), the
extrinsic part on the built-in corpus, and clear errors for invalid requests. Tiny saved models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trustnlp.data.tokenizers import WordTokenizer, minilm_tokenizer
from trustnlp.errors import ConfigError, DataError
from trustnlp.fairness.study import run_fairness
from trustnlp.results import read_result


@pytest.fixture(scope="module")
def bag_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small (untrained) bag classifier over MiniLM's WordPiece vocabulary with the assistant intents."""
    from trustnlp.data.assistant import INTENTS
    from trustnlp.models import build_model
    from trustnlp.models.io import save_model

    tok = minilm_tokenizer()
    torch.manual_seed(0)
    model = build_model("bag", vocab_size=tok.vocab_size, num_labels=len(INTENTS), dim=8, hidden=0)
    out = tmp_path_factory.mktemp("bag") / "model"
    save_model(model, out, tokenizer=tok, label_names=INTENTS, extra={"max_length": 32})
    return out


def test_intrinsic_rows_and_results_file(bag_dir: Path, tmp_path: Path) -> None:
    res = run_fairness(bag_dir, tmp_path, tests=("weat", "seat"), names=["gender-career"], n_permutations=500)
    assert [(r["test"], r["kind"]) for r in res.rows] == [("gender-career", "weat"), ("sent-gender-career", "seat")]
    for r in res.rows:
        assert {"test", "effect_size", "p_value", "pooling"} <= set(r) and r["pooling"] == "mean"
        assert r["encoder"] == str(bag_dir)
    assert res.rows[0]["representation"] == "pooled-word" and res.rows[1]["representation"] == "sentence"
    assert res.rows[1]["p_value_method"] == "sampled" and res.rows[0]["p_value_method"] == "sampled"
    back = read_result(tmp_path / "results.json")
    assert back.kind == "fairness" and back.rows[0]["effect_size"] == pytest.approx(res.rows[0]["effect_size"])
    assert back.metrics["weat_n_tests"] == 1


def test_ceat_row_with_a_corpus_file(bag_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    lines = [f"{n} went to the {w} today ." for n in ("John", "James", "Mary", "Linda")
             for w in ("office", "home", "wedding", "salary")]
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = run_fairness(bag_dir, None, tests=("ceat",), names=["gender-career"], corpus=corpus, ceat_samples=20,
                       ceat_contexts=2)
    (row,) = res.rows
    assert row["test"] == "ceat-gender-career" and row["kind"] == "ceat"
    assert row["coverage"]["X"]["John"] == 4 and row["coverage"]["X"]["Robert"] == 0
    assert row["coverage_fraction"] == pytest.approx(8 / 32) and row["on_missing"] == "drop"
    assert res.data["ceat_corpus"]["n_sentences"] == 16


def test_extrinsic_on_builtin_corpus(bag_dir: Path, tmp_path: Path) -> None:
    from trustnlp.config import DataConfig

    res = run_fairness(bag_dir, tmp_path, tests=(), extrinsic=True, data=DataConfig(data="assistant", corpus_size=300),
                       n_bootstrap=50)
    ex = res.metrics["extrinsic"]
    assert ex["protected"] == "gender"
    gm = ex["group_metrics"]
    assert set(gm["groups"]) == {"female", "male", "none"} and gm["metrics"] == ["accuracy"]
    assert sum(gm["counts"].values()) == ex["n_test"]
    assert ex["auc_bias"] is None and "metrics.extrinsic.auc_bias" in res.null_reasons
    assert ex["counterfactual"]["n_changed"] > 0 and ex["sensitivity"]["feature_space"] == "pooled input embeddings"
    assert ex["sensitivity"]["n"] == ex["n_test"] and sorted(ex["tpr_gap"]["groups"]) == ["female", "male"]
    json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))  # strictly valid JSON


def test_invalid_requests(bag_dir: Path) -> None:
    with pytest.raises(ConfigError, match="`tests`"):
        run_fairness(bag_dir, None, tests=("weat", "stereoset"))
    with pytest.raises(DataError, match="Unknown association test 'weat99'"):
        run_fairness(bag_dir, None, tests=("weat",), names=["weat99"])
    with pytest.raises(ConfigError, match="CrowS-Pairs needs a language model"):
        run_fairness("minilm", None, tests=("crows",))
    with pytest.raises(ConfigError, match="needs `data`"):
        run_fairness(bag_dir, None, tests=(), extrinsic=True)
    with pytest.raises(ConfigError, match="saved trustnlp classifier directory, but got 'minilm'"):
        run_fairness("minilm", None, tests=("weat",), extrinsic=True, data="assistant")


def test_missing_words_in_a_word_vocabulary(tmp_path: Path) -> None:
    from trustnlp.models import build_model
    from trustnlp.models.io import save_model

    tok = WordTokenizer.from_vocabulary(["john", "mary", "career", "home"], provenance="generator")
    model = build_model("bag", vocab_size=tok.vocab_size, num_labels=2, dim=4, hidden=0)
    save_model(model, tmp_path / "m", tokenizer=tok, label_names=["a", "b"])
    with pytest.raises(DataError, match="cannot represent"):
        run_fairness(tmp_path / "m", None, tests=("weat",), names=["gender-career"])


@pytest.mark.shared
def test_crows_row_for_a_saved_causal_lm(shared_data: Path, tmp_path: Path) -> None:
    from trustnlp.models import build_model
    from trustnlp.models.io import save_model

    tok = minilm_tokenizer()
    torch.manual_seed(0)
    lm = build_model("lm", vocab_size=tok.vocab_size, backbone="transformer", layers=1, dim=16, heads=2, max_len=128,
                     bos_id=tok.cls_id, eos_id=tok.sep_id)
    save_model(lm, tmp_path / "lm", tokenizer=tok, task="lm", extra={"max_length": 128})
    res = run_fairness(tmp_path / "lm", tmp_path, tests=("crows",), crows_limit=4)
    (row,) = res.rows
    assert row["test"] == "crows-pairs" and row["n_pairs"] == 4 and row["tokens"] == "all" and row["lm"] == "causal"
    assert row["effect_size"] is None and "rows[0].effect_size" in res.null_reasons
    assert row["score"] in (0.0, 0.25, 0.5, 0.75, 1.0) and 0.0 < row["p_value"] <= 1.0
    with pytest.raises(ConfigError, match="no token encoder"):
        run_fairness(tmp_path / "lm", None, tests=("weat",))
