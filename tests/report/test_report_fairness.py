"""The report's fairness section: a small ``run_fairness`` (own word/sentence tests, CEAT on a tiny
corpus, extrinsic metrics on the built-in corpus) with a tiny stand-in classifier, rendered to HTML
with the effect-size, group-gap and APS figures; and the graded-study plotter on a hand-made result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trustnlp.report import render_report
from trustnlp.report.plots import get_plotter
from trustnlp.results import Result, write_result


@pytest.fixture(scope="module")
def fairness_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trustnlp.config import DataConfig
    from trustnlp.data.assistant import INTENTS
    from trustnlp.data.tokenizers import minilm_tokenizer
    from trustnlp.fairness.study import run_fairness
    from trustnlp.models import build_model
    from trustnlp.models.io import save_model

    root = tmp_path_factory.mktemp("fair")
    tok = minilm_tokenizer()
    torch.manual_seed(0)
    model = build_model("bag", vocab_size=tok.vocab_size, num_labels=len(INTENTS), dim=8, hidden=0)
    save_model(model, root / "model", tokenizer=tok, label_names=INTENTS, extra={"max_length": 32})
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"{n} went to the {w} today ." for n in ("John", "James", "Mary", "Linda")
                                for w in ("office", "home", "wedding", "salary")) + "\n", encoding="utf-8")
    run_fairness(root / "model", root / "runs" / "fair", tests=("weat", "seat", "ceat"),
                 names=["gender-career", "flowers-insects"], corpus=corpus, ceat_samples=20, ceat_contexts=2,
                 n_permutations=200, extrinsic=True, data=DataConfig(data="assistant", corpus_size=300), n_bootstrap=50)
    return root / "runs"


def test_fairness_section_has_effect_sizes_group_gaps_and_aps(fairness_run: Path, tmp_path: Path) -> None:
    rep = render_report([fairness_run], tmp_path / "report")
    names = sorted(p.name for p in rep.figures)
    assert names == sorted(f"fair-{n}.{ext}" for n in ("effect-sizes", "group-gaps", "aps") for ext in ("png", "svg"))
    assert all(p.stat().st_size > 0 for p in rep.figures)
    html = rep.html_path.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3
    # the alt text names every test with its effect size
    for test in ("gender-career", "sent-gender-career", "ceat-gender-career", "flowers-insects"):
        assert f"{test} d=" in html


def test_fairness_plotter_without_extrinsic_metrics_draws_only_effect_sizes() -> None:
    res = Result(kind="fairness", config={}, seed=0, data={}, metrics={},
                 rows=[{"kind": "weat", "test": "t1", "effect_size": 0.5, "p_value": 0.01},
                       {"kind": "crows", "test": "crows-pairs", "effect_size": None, "p_value": 0.2}])
    plots = get_plotter("fairness")(res)  # type: ignore[misc]
    assert [p.name for p in plots] == ["effect-sizes"]
    assert "t1 d=+0.50 p=0.01" in plots[0].alt and "crows" not in plots[0].alt


def test_graded_plotter_draws_study_and_dp_figures(tmp_path: Path) -> None:
    rows = [{"model": f"bag-q{q}", "architecture": "bag", "planted_bias": q, "tpr_gap": q, "fpr_gap": q / 2,
             "counterfactual_flip_rate": q, "aps": 0.1 + q, "weat_mean_abs": 0.3 + q} for q in (0.0, 0.5, 1.0)]
    dp = [{"epsilon": e, "accuracy_by_group": {"female": 0.8, "male": 0.7},
           "accuracy_interval_by_group": {"female": [0.7, 0.9], "male": None}} for e in (1.0, 8.0, None)]
    res = Result(kind="fairness-graded", config={}, seed=0, data={}, rows=rows,
                 metrics={"dp_disparate_impact": dp, "correlations": [
                     {"intrinsic": "weat_mean_abs", "extrinsic": "counterfactual_flip_rate", "spearman": 1.0,
                      "spearman_p": 0.0}]})
    write_result(res, tmp_path / "g" / "results.json")
    rep = render_report([tmp_path / "g"], tmp_path / "report")
    assert sorted(p.name for p in rep.figures if p.suffix == ".png") == ["g-dp-disparate-impact.png", "g-graded.png"]
    html = rep.html_path.read_text(encoding="utf-8")
    assert "Spearman +1.00" in html and "non-private: female 0.800, male 0.700" in html
