"""Extrinsic metrics: group metrics against fairlearn and per-group loops, AUC bias against
scikit-learn and the Mann-Whitney definition, the generalised mean, counterfactual swaps.

Bootstrap check: seed fixed; the percentile interval's half-width must be within 25% of the
binomial standard error x 1.96.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from fairlearn import metrics as flm
from sklearn.metrics import roc_auc_score

from trustnlp.errors import ConfigError, DataError
from trustnlp.fairness.extrinsic import (
    auc_bias,
    bnsp_auc,
    bpsn_auc,
    counterfactual_token_fairness,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    generalized_mean,
    group_metrics,
    load_gender_swaps,
    subgroup_auc,
    swap_text,
    tpr_gap_by_class,
)


@pytest.fixture(scope="module")
def binary_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 600
    sf = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    y = rng.integers(0, 2, n)
    flip = rng.random(n) < np.where(sf == "a", 0.1, np.where(sf == "b", 0.25, 0.4))
    return y, np.where(flip, 1 - y, y), sf


def test_group_metrics_equal_fairlearn(binary_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, p, sf = binary_data
    gm = group_metrics(y, p, sensitive_features=sf, n_bootstrap=0)
    ref = {"accuracy": None, "selection_rate": flm.selection_rate, "tpr": flm.true_positive_rate,
           "fpr": flm.false_positive_rate, "fnr": flm.false_negative_rate}
    for g in ("a", "b", "c"):
        m = sf == g
        assert gm.counts[g] == int(m.sum())
        assert gm.by_group[g]["accuracy"] == pytest.approx(float((y[m] == p[m]).mean()), rel=1e-12)
        for name, fn in ref.items():
            if fn is not None:
                assert gm.by_group[g][name] == pytest.approx(fn(y[m], p[m]), rel=1e-12)
    for name, fn in ref.items():
        if fn is not None:
            assert gm.overall[name] == pytest.approx(fn(y, p), rel=1e-12)
    rel = 1e-12
    assert gm.difference["selection_rate"] == pytest.approx(flm.demographic_parity_difference(y, p, sensitive_features=sf), rel=rel)
    assert gm.ratio["selection_rate"] == pytest.approx(flm.demographic_parity_ratio(y, p, sensitive_features=sf), rel=rel)
    assert demographic_parity_difference(y, p, sensitive_features=sf) == pytest.approx(
        flm.demographic_parity_difference(y, p, sensitive_features=sf), rel=rel)
    assert demographic_parity_ratio(y, p, sensitive_features=sf) == pytest.approx(
        flm.demographic_parity_ratio(y, p, sensitive_features=sf), rel=rel)
    assert equalized_odds_difference(y, p, sensitive_features=sf) == pytest.approx(
        flm.equalized_odds_difference(y, p, sensitive_features=sf), rel=rel)
    tprs = [gm.by_group[g]["tpr"] for g in ("a", "b", "c")]
    assert gm.difference["tpr"] == pytest.approx(max(tprs) - min(tprs), rel=rel)
    assert gm.ratio["tpr"] == pytest.approx(min(tprs) / max(tprs), rel=rel)
    assert gm.undefined == {}


def test_multiclass_one_vs_rest_matches_loop() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    sf = rng.choice(["f", "m"], 300)
    gm = group_metrics(y, p, sensitive_features=sf, pos_label=2, n_bootstrap=0)
    for g in ("f", "m"):
        m = sf == g
        tp = sum(1 for t, q in zip(y[m], p[m]) if t == 2 and q == 2)
        pos = sum(1 for t in y[m] if t == 2)
        neg_pred_pos = sum(1 for t, q in zip(y[m], p[m]) if t != 2 and q == 2)
        assert gm.by_group[g]["tpr"] == pytest.approx(tp / pos, rel=1e-12)
        assert gm.by_group[g]["fnr"] == pytest.approx(1 - tp / pos, rel=1e-12)
        assert gm.by_group[g]["fpr"] == pytest.approx(neg_pred_pos / (m.sum() - pos), rel=1e-12)


def test_undefined_values_are_flagged_not_nan() -> None:
    y = np.array([1, 0, 1, 0, 0, 0])
    p = np.array([1, 0, 0, 1, 0, 1])
    sf = np.array(["a", "a", "a", "b", "b", "b"])  # group b has no positive example
    gm = group_metrics(y, p, sensitive_features=sf, n_bootstrap=0)
    assert gm.by_group["b"]["tpr"] is None and gm.difference["tpr"] is None and gm.ratio["tpr"] is None
    assert gm.undefined["by_group.b.tpr"] == "group 'b' has no positive examples"
    assert "undefined for group(s) ['b']" in gm.undefined["difference.tpr"]
    # fairlearn's true_positive_rate gives 0 for a group without positives, hence a silent gap of 0.5
    assert flm.MetricFrame(metrics=flm.true_positive_rate, y_true=y, y_pred=p, sensitive_features=sf).difference() == 0.5
    assert gm.difference["fpr"] is not None  # both groups have negatives
    with pytest.raises(DataError, match="undefined"):
        equalized_odds_difference(y, p, sensitive_features=sf)
    d = gm.to_dict()
    assert d["by_group"]["b"]["tpr"] is None and all(v is None or np.isfinite(v) for v in d["difference"].values())


def test_bad_group_requests() -> None:
    y, p = np.array([1, 0, 1, 0]), np.array([1, 0, 0, 0])
    with pytest.raises(DataError, match=r"Group\(s\) \['c'\] have no examples"):
        group_metrics(y, p, sensitive_features=["a", "a", "b", "b"], groups=["a", "b", "c"])
    with pytest.raises(DataError, match="at least 2 groups"):
        group_metrics(y, p, sensitive_features=["a"] * 4)
    with pytest.raises(DataError, match="same length"):
        group_metrics(y, p, sensitive_features=["a", "b"])
    with pytest.raises(ConfigError, match="`metric`"):
        group_metrics(y, p, sensitive_features=["a", "a", "b", "b"], metrics=("auc",))
    with pytest.raises(DataError, match="pos_label"):
        group_metrics(y, p, sensitive_features=["a", "a", "b", "b"], pos_label=7)


def test_bootstrap_intervals_are_seeded_and_sized(binary_data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, p, sf = binary_data
    gm = group_metrics(y, p, sensitive_features=sf, n_bootstrap=2000, seed=0)
    again = group_metrics(y, p, sensitive_features=sf, n_bootstrap=2000, seed=0)
    assert gm.intervals == again.intervals
    assert group_metrics(y, p, sensitive_features=sf, n_bootstrap=2000, seed=1).intervals != gm.intervals
    for g in ("a", "b", "c"):
        lo, hi = gm.intervals["accuracy"][f"group:{g}"]
        acc, n = gm.by_group[g]["accuracy"], gm.counts[g]
        assert lo <= acc <= hi
        assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(acc * (1 - acc) / n), rel=0.25)
    lo, hi = gm.intervals["selection_rate"]["difference"]
    assert lo <= gm.difference["selection_rate"] <= hi


def _mann_whitney(t: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[t == 1], s[t == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_auc_bias_matches_sklearn_and_definition() -> None:
    rng = np.random.default_rng(2)
    n = 240
    grp = rng.choice(["x", "y", "z"], n)
    t = rng.integers(0, 2, n)
    s = np.round(t * 0.6 + rng.random(n) + np.where(grp == "x", 0.3, 0.0), 2)  # ties on purpose
    for g in ("x", "y", "z"):
        m = grp == g
        sub = m
        bpsn = (m & (t == 0)) | (~m & (t == 1))
        bnsp = (m & (t == 1)) | (~m & (t == 0))
        for fn, sel in ((subgroup_auc, sub), (bpsn_auc, bpsn), (bnsp_auc, bnsp)):
            v = fn(t, s, subgroup=m)
            assert v == pytest.approx(roc_auc_score(t[sel], s[sel]), rel=1e-12)
            assert v == pytest.approx(_mann_whitney(t[sel], s[sel]), rel=1e-12)
    ab = auc_bias(t, s, sensitive_features=grp)
    assert ab.overall_auc == pytest.approx(roc_auc_score(t, s), rel=1e-12)
    for metric in ("subgroup_auc", "bpsn_auc", "bnsp_auc"):
        vals = [ab.per_subgroup[g][metric] for g in ("x", "y", "z")]
        assert ab.generalized_mean[metric] == pytest.approx((sum(v**-5 for v in vals) / 3) ** (-1 / 5), rel=1e-12)
    assert ab.final_score == pytest.approx(0.25 * (ab.overall_auc + sum(ab.generalized_mean.values())), rel=1e-12)


def test_generalized_mean_worked_example() -> None:
    # ((0.9^-5 + 0.8^-5 + 0.6^-5) / 3)^(-1/5) = (17.6054... / 3)^(-0.2) = 0.70193...
    assert generalized_mean([0.9, 0.8, 0.6], p=-5) == pytest.approx(0.7019324558, rel=1e-9)
    assert generalized_mean([0.9, 0.8, 0.6], p=1) == pytest.approx(0.7666666666666667, rel=1e-12)
    assert generalized_mean([0.9, 0.8, 0.6], p=0) == pytest.approx((0.9 * 0.8 * 0.6) ** (1 / 3), rel=1e-12)
    assert generalized_mean([0.5, 0.0], p=-5) == 0.0
    assert min([0.9, 0.8, 0.6]) < generalized_mean([0.9, 0.8, 0.6]) < np.mean([0.9, 0.8, 0.6])
    with pytest.raises(DataError, match=">= 0"):
        generalized_mean([0.5, -0.1])


def test_single_class_subgroup_auc() -> None:
    t = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    s = np.linspace(0, 1, 8)
    grp = np.array(["only-pos", "only-pos", "m", "m", "m", "n", "n", "n"])
    with pytest.raises(DataError, match="Subgroup AUC is undefined: it has 2 positive and 0 negative"):
        subgroup_auc(t, s, subgroup=grp == "only-pos")
    ab = auc_bias(t, s, sensitive_features=grp)
    assert ab.per_subgroup["only-pos"]["subgroup_auc"] is None
    assert "undefined" in ab.undefined["per_subgroup.only-pos.subgroup_auc"]
    assert ab.excluded["subgroup_auc"] == ("only-pos",)
    assert ab.generalized_mean["subgroup_auc"] == pytest.approx(
        generalized_mean([ab.per_subgroup["m"]["subgroup_auc"], ab.per_subgroup["n"]["subgroup_auc"]]), rel=1e-12)
    with pytest.raises(DataError, match="no examples"):
        auc_bias(t, s, subgroups={"empty": np.zeros(8, dtype=bool)})


def test_tpr_gap_by_class() -> None:
    y = np.array([0, 0, 1, 1, 2, 0, 0, 1, 1])
    p = np.array([0, 1, 1, 1, 2, 0, 0, 0, 1])
    g = np.array(["f", "f", "f", "f", "f", "m", "m", "m", "m"])
    r = tpr_gap_by_class(y, p, sensitive_features=g, groups=("f", "m"))
    assert r["gaps"] == {"0": -0.5, "1": 0.5, "2": None}
    assert r["rms"] == pytest.approx(0.5) and "no example in group(s) ['m']" in r["undefined"]["2"]


def test_swaps_and_counterfactual_token_fairness() -> None:
    sw = load_gender_swaps(shared=False)
    assert swap_text("He called HER mom and her.", sw) == ("She called HIS dad and him.", 4)
    assert swap_text("John's sister", sw) == ("Mary's brother", 2)
    assert swap_text("play some jazz", sw) == ("play some jazz", 0)

    def proba(texts: list[str]) -> np.ndarray:  # a classifier that reacts to "she"
        return np.array([[0.2, 0.8] if " she " in f" {t.lower()} " else [0.7, 0.3] for t in texts])

    texts = ["he is late", "she is here", "play jazz", "my brother called"]
    r = counterfactual_token_fairness(proba, texts, swaps=sw, sensitive_features=["m", "f", "none", "m"])
    assert (r.n, r.n_changed, r.changed) == (4, 3, (0, 1, 3))
    assert r.flip_rate == pytest.approx(2 / 3) and r.mean_tv == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert r.mean_abs_change == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert r.by_group["m"] == {"n_changed": 2, "flip_rate": 0.5, "mean_tv": 0.25}
    assert r.by_group["none"]["flip_rate"] is None and "by_group.none" in r.undefined
    none = counterfactual_token_fairness(proba, ["play jazz"], swaps=sw)
    assert none.flip_rate is None and none.undefined["flip_rate"].startswith("no text")


@pytest.mark.shared
def test_shared_gender_pairs_merge(shared_data: Path) -> None:
    own = load_gender_swaps(shared=False)
    sw = load_gender_swaps(shared_data, shared=True)
    assert len(sw.mapping) >= len(own.mapping) + 250
    assert sw.mapping["countryman"] == "countrywoman" and sw.mapping["cowgirl"] == "cowboy"
    assert sw.mapping["actress"] == "actor" and "her" not in sw.mapping  # 'her' is resolved by rule
    folder = shared_data / "gender_pairs"
    males = (folder / "male_word_file.txt").read_text(encoding="utf-8").split()
    females = (folder / "female_word_file.txt").read_text(encoding="utf-8").split()
    simple = [(m, f) for m, f in zip(males, females) if m != f and m.isalpha() and f.isalpha()]
    assert len(simple) >= 200  # multi-word ("ballet_dancer") and punctuated ("mr.") entries are not swappable words
    assert {w for pair in simple for w in pair} - {"her"} <= set(sw.mapping)  # every other GN-GloVe word is
    assert [s.get("added", 0) > 0 for s in sw.sources[2:]] == [True, True, True]
