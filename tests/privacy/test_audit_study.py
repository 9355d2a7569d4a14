"""The audit study end to end on a memorisation task: positive control, negative control, overfit model.

The population is random word sequences with random labels (4 classes): nothing generalises, so a
model that fits its training set has memorised its members, and membership is visible in its
confidences unless DP noise hides it.
"""

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from trustnlp.data.dataset import DataMeta, TextDataset
from trustnlp.data.tokenizers import WordTokenizer
from trustnlp.errors import PrivacyError
from trustnlp.privacy.audit_study import AuditConfig, run_audit, spearman_summary
from trustnlp.results import read_result

WORDS = [f"w{i}" for i in range(3000)]


def _random_text(n: int, seed: int) -> TextDataset:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, 4)) for _ in range(n)]
    return TextDataset(texts, rng.integers(0, 4, n), label_names=("a", "b", "c", "d"),
                       meta=DataMeta(name="random-words", source="generated in the test"))


POPULATION, TEST = _random_text(400, 0), _random_text(100, 1)
TOKENIZER = WordTokenizer.from_vocabulary(WORDS, provenance="generator")


def _audit(tmp_path, epsilons, **kw):
    cfg = AuditConfig(model="bag", model_options={"dim": 32}, epsilons=epsilons, shadows=4, epochs=30, batch_size=32,
                      lr=0.02, max_length=8, threads=1, **kw)
    return run_audit(cfg, tmp_path, progress=False, population=POPULATION, test=TEST, tokenizer=TOKENIZER)


def test_positive_control_noise_off_is_caught(tmp_path, monkeypatch):
    """DP-SGD with its noise switched off (the ledger still records sigma, so the claim is epsilon = 1) leaks
    like a non-private model: both lower bounds exceed 1 and the audit fails loudly."""
    from trustnlp.privacy import noise

    monkeypatch.setattr(noise.NoiseSource, "add_", lambda self, tensors, *, std: None)
    with pytest.raises(PrivacyError, match="exceeds the claimed epsilon"):
        _audit(tmp_path, [1.0])
    res = read_result(tmp_path / "results.json")  # written before the error
    (row,) = res.rows
    assert row["private"] is True and row["noise_multiplier"] > 1 and row["epsilon_spent"] <= 1.0
    assert row["empirical_epsilon_lower"] > 1.0 and row["one_run_epsilon_lower"] > 1.0
    assert row["claim_holds"] is False and res.metrics["claims_hold"] is False
    assert len(res.metrics["violations"]) == 2


def test_noise_on_keeps_the_claim(tmp_path):
    """The same recipe with the noise on: the lower bounds stay below epsilon = 1 (no error)."""
    res = _audit(tmp_path, [1.0])
    (row,) = res.rows
    assert row["claim_holds"] is True
    assert row["empirical_epsilon_lower"] <= row["epsilon_spent"] <= 1.0
    assert row["one_run_epsilon_lower"] <= row["epsilon_spent"]
    assert row["trained_by"] == ["plain"]  # DP shadows: the engine's own step


def test_overfit_nonprivate_model_leaks(tmp_path):
    res = _audit(tmp_path, [None])
    (row,) = res.rows
    assert row["private"] is False and row["epsilon"] is None and row["accountant"] is None
    assert "rows[0].epsilon" in res.null_reasons
    assert row["mia_auc"] > 0.9  # members memorised, non-members at chance (observed 1.0)
    assert row["tpr_at_1e-2_fpr_interval"][0] > 0.5
    assert row["empirical_epsilon_lower"] > 1.0
    assert row["trained_by"] == ["batched"]  # non-private small model: K + 1 models at once
    assert set(row["auc_by_attack"]) == {"lira-online", "lira-offline", "loss", "calibrated"}
    lo, hi = row["tpr_at_1e-3_fpr_interval"]
    assert lo <= row["tpr_at_1e-3_fpr"] <= hi


def test_spearman_matches_scipy_and_is_null_when_undefined():
    rows = [{"epsilon": e, "mia_auc": a, "tpr_at_1e-3_fpr": t, "empirical_epsilon_lower": 0.0}
            for e, a, t in [(0.5, 0.50, 0.001), (1, 0.52, 0.002), (4, 0.51, 0.004), (16, 0.60, 0.01)]]
    rows.append({"epsilon": None, "mia_auc": 0.7, "tpr_at_1e-3_fpr": 0.05, "empirical_epsilon_lower": 2.0})
    out, reasons = spearman_summary(rows)
    ref = spearmanr([0.5, 1, 4, 16], [0.50, 0.52, 0.51, 0.60])
    assert out["spearman_epsilon_mia_auc"] == pytest.approx(ref.statistic, rel=1e-12) == pytest.approx(0.8)
    assert out["spearman_epsilon_mia_auc_pvalue"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert out["spearman_epsilon_tpr_at_1e-3_fpr"] == pytest.approx(1.0) and out["spearman_n"] == 4
    assert out["spearman_epsilon_empirical_epsilon_lower"] is None  # constant column
    assert "same at every finite epsilon" in reasons["metrics.spearman_epsilon_empirical_epsilon_lower"]
    few, why = spearman_summary(rows[:2])
    assert few["spearman_epsilon_mia_auc"] is None and "at least 3" in why["metrics.spearman_epsilon_mia_auc"]


def test_config_parses_and_validates():
    cfg = AuditConfig(epsilons="0.5,1,inf")
    assert cfg.epsilons == [0.5, 1.0, None]
    assert AuditConfig(epsilons=[2, math.inf]).epsilons == [2.0, None]
    private = cfg.recipe(1.0, delta=1e-6)
    assert private.dp and private.epsilon == 1.0 and private.delta == 1e-6 and private.physical_batch_size == 64
    shadow = cfg.recipe(1.0, delta=1e-6, noise_multiplier=2.5)
    assert shadow.dp and shadow.epsilon is None and shadow.noise_multiplier == 2.5
    assert not cfg.recipe(None, delta=1e-6).dp
    for bad, match in [(dict(epsilons=[0, 1]), "> 0"), (dict(epsilons=[1, 1]), "distinct"), (dict(epsilons=[]), "at least"),
                       (dict(shadows=2), "shadows` >= 4"), (dict(attack="guess"), "attack")]:
        with pytest.raises(ValueError, match=match):
            AuditConfig(**bad)
    assert AuditConfig(attack="loss", shadows=0).shadows == 0


@pytest.mark.shared
def test_clinc150_subsample_audit_runs(shared_data, tmp_path):
    """A very small audit on real data: 600 of CLINC150's 18,000 in-scope train + validation examples."""
    cfg = AuditConfig(data="clinc150", data_dir=str(shared_data), model="bag", model_options={"dim": 16},
                      epsilons=[4.0, None], shadows=4, max_steps=20, batch_size=32, population_size=600, threads=1)
    res = run_audit(cfg, tmp_path, progress=False)
    assert res.metrics["n_population"] == 600 and res.data["name"] == "clinc150"
    assert res.data["details"]["population"] == "train + validation"
    assert [r["epsilon"] for r in res.rows] == [4.0, None]
    assert res.rows[0]["empirical_epsilon_lower"] <= res.rows[0]["epsilon_spent"] <= 4.0
