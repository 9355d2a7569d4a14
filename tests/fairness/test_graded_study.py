"""The graded-bias study: planting (exact counts), the correlations against an independent
computation (numpy Pearson, Spearman as Pearson of ranks), and a tiny end-to-end run (3 models,
2 DP runs) checked for its rows, correlation fields and results file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trustnlp.errors import ConfigError
from trustnlp.fairness.graded_study import EXTRINSIC_KEYS, correlate, plant_bias, run_graded_study


def test_plant_bias_relabels_the_planted_share_of_gendered_examples() -> None:
    gender = np.array(["female", "male", "none"] * 40)
    y = np.tile([0, 1, 1, 0, 1, 0], 20)
    assert np.array_equal(plant_bias(y, gender, 0.0, seed=1), y)
    full = plant_bias(y, gender, 1.0, seed=1)
    gendered = gender != "none"
    assert np.array_equal(full[gendered], (gender[gendered] == "female").astype(int))
    assert np.array_equal(full[~gendered], y[~gendered])
    # every gendered label starts against its gender's direction: exactly round(0.5 * 80) = 40 change
    anti = np.where(gendered, (gender == "male").astype(int), y)
    half = plant_bias(anti, gender, 0.5, seed=1)
    assert (half != anti).sum() == 40 and np.array_equal(half[~gendered], y[~gendered])
    assert np.array_equal(half[half != anti], (gender[half != anti] == "female").astype(int))
    assert np.array_equal(half, plant_bias(anti, gender, 0.5, seed=1))  # seeded
    assert not np.array_equal(half, plant_bias(anti, gender, 0.5, seed=2))
    with pytest.raises(ConfigError, match="Expected `q` to be in"):
        plant_bias(y, gender, 1.5, seed=0)


def test_correlate_matches_an_independent_computation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = 0.6 * x + rng.normal(size=12)
    c = correlate(list(x), list(y))
    assert c["n"] == 12 and c["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-10)
    ranks = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731 (no ties in continuous draws)
    assert c["spearman"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1], rel=1e-10)
    # Pearson's two-sided p from the t statistic with n - 2 degrees of freedom (scipy.special, not scipy.stats)
    from scipy.special import stdtr

    r = c["pearson"]
    t = r * math.sqrt(10 / (1 - r * r))
    assert c["pearson_p"] == pytest.approx(2 * stdtr(10, -abs(t)), rel=1e-8)
    undefined = correlate([1.0, None, 2.0], [1.0, 2.0, None])
    assert undefined["pearson"] is None and "need at least 3" in undefined["reason"]
    assert "constant" in correlate([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["reason"]


def test_tiny_graded_study(tmp_path: Path) -> None:
    res = run_graded_study(tmp_path, levels=(0.0, 0.5, 1.0), architectures=("bag",), n_utterances=300, epochs=1,
                           tests=("gender-career", "gender-occupations"), n_permutations=100, n_bootstrap=20,
                           dp_epsilons=(8.0, math.inf), dp_epochs=1, dp_batch_size=64)
    assert [r["model"] for r in res.rows] == ["bag-q0", "bag-q0.5", "bag-q1"]
    for r in res.rows:
        assert set(EXTRINSIC_KEYS) <= set(r) and -2 <= r["weat_gender-career"] <= 2
        assert 0 <= r["weat_gender-occupations_p"] <= 1 and r["aps"] > 0
    assert len(res.metrics["correlations"]) == 3 * len(EXTRINSIC_KEYS)
    for c in res.metrics["correlations"]:
        assert c["n"] <= 3 and (c["pearson"] is None) == ("reason" in c)
        if c["pearson"] is not None:
            assert -1 <= c["spearman"] <= 1 and 0 <= c["pearson_p"] <= 1
    dp = res.metrics["dp_disparate_impact"]
    assert [d["epsilon"] for d in dp] == [8.0, None] and dp[0]["achieved_epsilon"] <= 8.0 + 1e-9
    assert set(dp[0]["accuracy_by_group"]) == {"female", "male", "none"}
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert saved["kind"] == "fairness-graded" and len(saved["rows"]) == 3
    with pytest.raises(ConfigError, match="Expected `levels`"):
        run_graded_study(None, levels=(2.0,))
    with pytest.raises(ConfigError, match="Expected `tests`"):
        run_graded_study(None, tests=("weat6",))
