"""Tests of trustnlp.federated.robust: robust aggregation rules against independent references (numpy, scipy,
a brute-force Krum), their robustness to Byzantine outliers, update validation, fault injection and the
seeded choice of faulty clients. All random data come from fixed seeds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from trustnlp.errors import ConfigError, DataError
from trustnlp.federated.robust import (
    aggregate_robust,
    coordinate_median,
    faulty_clients,
    flatten,
    inject_fault,
    krum,
    krum_scores,
    mean,
    parse_fault_spec,
    parse_robust_spec,
    trimmed_mean,
    unflatten,
    validate_update,
)

RTOL = 1e-10


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([20240611, *keys]))


def _vectors(n: int, d: int, *keys: int) -> list[torch.Tensor]:
    x = _rng(*keys).normal(size=(n, d))
    return [torch.from_numpy(row.copy()) for row in x]


def _np(vs: list[torch.Tensor]) -> np.ndarray:
    return torch.stack(vs).numpy()


# ------------------------------------------------------------------------------------------ flatten / unflatten


def test_flatten_unflatten_roundtrip_and_key_order():
    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([7.0, 8.0], dtype=torch.float64)}
    b = {"b": a["b"].clone(), "w": a["w"].clone()}  # same parameters, other insertion order
    va, vb = flatten(a), flatten(b)
    assert va.dtype == torch.float64 and va.shape == (8,)
    assert torch.equal(va, vb)
    assert va.tolist() == [7.0, 8.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # sorted keys: b then w
    back = unflatten(va * 2, a)
    assert list(back) == ["w", "b"]  # like's key order
    assert back["w"].dtype == torch.float32 and back["w"].shape == (2, 3)
    assert torch.equal(back["w"], a["w"] * 2) and torch.equal(back["b"], a["b"] * 2)
    with pytest.raises(DataError, match="length 8"):
        unflatten(torch.zeros(7), a)
    with pytest.raises(DataError, match="1-D"):
        unflatten(torch.zeros(2, 4), a)


def test_dict_inputs_aggregate_like_their_flattening():
    rng = _rng(1)
    ds = [{"w": torch.from_numpy(rng.normal(size=(3, 2))), "b": torch.from_numpy(rng.normal(size=3))}
          for _ in range(7)]
    flat = [flatten(d) for d in ds]
    for spec in ("mean", "median", "trimmed-mean:0.2", "krum:1", "multi-krum:2:3"):
        got, _ = aggregate_robust(spec, ds)
        want, _ = aggregate_robust(spec, flat)
        assert torch.equal(got, want), spec
    bad = [dict(ds[0]), {"w": ds[1]["w"]}]
    with pytest.raises(DataError, match="same parameters"):
        coordinate_median(bad)
    with pytest.raises(DataError, match="shape of w"):
        coordinate_median([ds[0], {"w": ds[1]["w"].reshape(2, 3), "b": ds[1]["b"]}])


def test_bad_vectors_are_refused():
    with pytest.raises(DataError, match="non-empty"):
        coordinate_median([])
    with pytest.raises(DataError, match="length of vectors\\[1\\]"):
        coordinate_median([torch.zeros(3), torch.zeros(4)])
    with pytest.raises(DataError, match="1-D"):
        coordinate_median([torch.zeros(2, 2)])
    with pytest.raises(DataError, match="NaN or Inf"):
        trimmed_mean([torch.zeros(3), torch.tensor([0.0, float("nan"), 1.0]), torch.ones(3)], 0.0)
    with pytest.raises(DataError, match="floating-point"):
        coordinate_median([torch.zeros(3, dtype=torch.int64)])


# ------------------------------------------------------------------------------------------ rules vs references


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 15])
def test_coordinate_median_matches_numpy(n):
    vs = _vectors(n, 33, 2, n)
    got = coordinate_median(vs)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), np.median(_np(vs), axis=0), rtol=RTOL, atol=0)


def test_even_count_median_is_mean_of_the_two_middle_values():
    vs = [torch.tensor([1.0]), torch.tensor([10.0]), torch.tensor([2.0]), torch.tensor([4.0])]
    assert coordinate_median(vs).tolist() == [3.0]  # torch.median would give 2.0


@pytest.mark.parametrize(("n", "beta"), list(itertools.product([1, 2, 5, 8, 11, 20], [0.0, 0.1, 0.2, 0.25, 0.3, 0.45])))
def test_trimmed_mean_matches_scipy(n, beta):
    vs = _vectors(n, 17, 3, n)
    got = trimmed_mean(vs, beta)
    np.testing.assert_allclose(got.numpy(), stats.trim_mean(_np(vs), beta, axis=0), rtol=RTOL, atol=1e-15)


def test_trimmed_mean_count_is_floor_beta_n_without_float_artefacts():
    # 0.29 * 100 = 28.999999999999996 in floating point; floor(beta n) = 29 values go at each end
    vs = _vectors(100, 5, 4)
    x = np.sort(_np(vs), axis=0)
    np.testing.assert_allclose(trimmed_mean(vs, 0.29).numpy(), x[29:71].mean(axis=0), rtol=RTOL)
    assert aggregate_robust("trimmed-mean:0.29", vs)[1]["trimmed"] == 29
    # beta = 0 is the plain mean
    np.testing.assert_allclose(trimmed_mean(vs, 0).numpy(), _np(vs).mean(axis=0), rtol=RTOL)


def test_weighted_mean_matches_numpy_average():
    vs = _vectors(6, 9, 5)
    w = _rng(6).integers(1, 50, size=6).astype(float)
    np.testing.assert_allclose(mean(vs, w).numpy(), np.average(_np(vs), axis=0, weights=w), rtol=RTOL)
    got, info = aggregate_robust("mean", vs, weights=torch.tensor(w))
    np.testing.assert_allclose(got.numpy(), np.average(_np(vs), axis=0, weights=w), rtol=RTOL)
    assert info == {"rule": "mean", "num_clients": 6, "weighted": True}
    np.testing.assert_allclose(aggregate_robust("mean", vs)[0].numpy(), _np(vs).mean(axis=0), rtol=RTOL)
    with pytest.raises(ConfigError, match="weights"):
        mean(vs, [1.0] * 5)
    with pytest.raises(ConfigError, match="weights"):
        mean(vs, [1.0, -1.0, 1.0, 1.0, 1.0, 1.0])


def _krum_brute_force(x: np.ndarray, f: int, m: int) -> tuple[np.ndarray, list[int], list[float]]:
    """Blanchard et al. (2017) written out with explicit loops (independent of the module's vectorised code)."""
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(float(sum((x[i][c] - x[j][c]) ** 2 for c in range(x.shape[1]))) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    order = sorted(range(n), key=lambda i: (scores[i], i))[:m]
    return x[order].mean(axis=0), order, scores


@pytest.mark.parametrize(("n", "f", "m"), [(5, 1, 1), (7, 2, 1), (9, 3, 1), (10, 2, 4), (12, 1, 9), (9, 0, 9)])
def test_krum_matches_brute_force(n, f, m):
    vs = _vectors(n, 6, 7, n, f)
    want_vec, want_sel, want_scores = _krum_brute_force(_np(vs), f, m)
    vec, sel = krum(vs, f, m)
    assert sel == want_sel
    np.testing.assert_allclose(vec.numpy(), want_vec, rtol=RTOL)
    np.testing.assert_allclose(krum_scores(vs, f).numpy(), want_scores, rtol=RTOL)
    spec = f"krum:{f}" if m == 1 else f"multi-krum:{f}:{m}"
    got, info = aggregate_robust(spec, vs)
    assert info["selected"] == want_sel and torch.equal(got, vec)


def test_krum_hand_example():
    # 1-D points 0, 1, 2, 3, 100 with f = 1: each score sums the n - f - 2 = 2 nearest squared distances:
    # 0: 1 + 4 = 5; 1: 1 + 1 = 2; 2: 1 + 1 = 2; 3: 1 + 4 = 5; 100: 97^2 + 98^2 = 19013. The tie goes to index 1.
    vs = [torch.tensor([v], dtype=torch.float64) for v in (0.0, 1.0, 2.0, 3.0, 100.0)]
    assert krum_scores(vs, 1).tolist() == [5.0, 2.0, 2.0, 5.0, 19013.0]
    vec, sel = krum(vs, 1)
    assert sel == [1] and vec.tolist() == [1.0]
    vec, sel = krum(vs, 1, m=2)
    assert sel == [1, 2] and vec.tolist() == [1.5]


@pytest.mark.parametrize("spec", ["mean", "median", "trimmed-mean:0.3", "krum:2", "multi-krum:2:4"])
def test_rules_are_translation_equivariant_and_permutation_invariant(spec):
    # the rules commute with a shift, so aggregating models or deltas (models minus the global model) agree
    vs = _vectors(11, 8, 8)
    shift = torch.from_numpy(_rng(9).normal(size=8) * 3)
    base, info = aggregate_robust(spec, vs)
    shifted, _ = aggregate_robust(spec, [v + shift for v in vs])
    np.testing.assert_allclose(shifted.numpy(), (base + shift).numpy(), rtol=RTOL, atol=1e-12)
    perm = _rng(10).permutation(11)
    permuted, _ = aggregate_robust(spec, [vs[i] for i in perm])
    np.testing.assert_allclose(permuted.numpy(), base.numpy(), rtol=RTOL, atol=1e-12)


# ------------------------------------------------------------------------------------------ robustness


def _attacked(attack: str, n_honest: int = 12, f: int = 3, d: int = 20):
    """Honest vectors ~ N(mu, 0.1^2 I) and f Byzantine ones, at random positions."""
    rng = _rng(11, n_honest, f, d)
    mu = rng.normal(size=d)
    honest = mu + 0.1 * rng.normal(size=(n_honest, d))
    src = honest[:f]
    if attack == "scale":
        bad = 1e6 * src
    elif attack == "signflip":
        bad = -10.0 * src
    elif attack == "gaussian":
        bad = 1e6 * rng.normal(size=(f, d))
    else:  # "collude": every Byzantine client sends the same far point
        bad = np.tile(-1e6 * np.sign(mu), (f, 1))
    allv = np.concatenate([honest, bad])
    perm = rng.permutation(len(allv))
    byzantine = {int(np.where(perm == n_honest + i)[0][0]) for i in range(f)}
    vs = [torch.from_numpy(allv[p].copy()) for p in perm]
    return vs, honest.mean(axis=0), byzantine


@pytest.mark.parametrize("attack", ["scale", "signflip", "gaussian", "collude"])
def test_robust_rules_resist_byzantine_outliers(attack):
    vs, honest_mean, byzantine = _attacked(attack)
    spread = 0.1 * np.sqrt(20)  # the typical distance of one honest vector from mu
    plain = np.linalg.norm(aggregate_robust("mean", vs)[0].numpy() - honest_mean)
    assert plain > 10 * spread  # the plain mean is dragged far off
    for spec in ("median", "trimmed-mean:0.2", "krum:3", "multi-krum:3:9"):
        agg, info = aggregate_robust(spec, vs)
        dist = np.linalg.norm(agg.numpy() - honest_mean)
        assert dist < 2 * spread, (spec, dist)
        if "selected" in info:
            assert not set(info["selected"]) & byzantine, spec


def test_krum_needs_n_at_least_2f_plus_3():
    vs = _vectors(6, 3, 12)
    with pytest.raises(ConfigError, match=r"n >= 2f \+ 3 = 7.*n=6"):
        krum(vs, 2)
    with pytest.raises(ConfigError, match=r"n >= 2f \+ 3 = 7"):
        aggregate_robust("multi-krum:2:2", vs)
    with pytest.raises(ConfigError, match=r"n >= 2f \+ 3 = 3"):
        krum(vs[:2], 0)
    with pytest.raises(ConfigError, match="m .*\\[1, 6\\]"):
        krum(vs, 1, m=7)
    with pytest.raises(ConfigError, match="f "):
        krum(vs, -1)
    krum(vs, 1)  # n = 6 >= 5 is fine


# ------------------------------------------------------------------------------------------ specs


def test_parse_robust_spec_accepts_the_forms():
    assert parse_robust_spec("mean") == ("mean", {})
    assert parse_robust_spec(" Median ") == ("median", {})
    assert parse_robust_spec("trimmed-mean:0.1") == ("trimmed-mean", {"beta": 0.1})
    assert parse_robust_spec("trimmed-mean:0") == ("trimmed-mean", {"beta": 0.0})
    assert parse_robust_spec("krum:2") == ("krum", {"f": 2})
    assert parse_robust_spec("multi-krum:1:5") == ("multi-krum", {"f": 1, "m": 5})


@pytest.mark.parametrize(("spec", "match"), [
    ("", "robust aggregation spec"),
    ("avg", "robust aggregation rule.*mean \\| median"),
    ("mean:1", "of the form mean"),
    ("median:0.1", "of the form median"),
    ("trimmed-mean", "of the form trimmed-mean:BETA"),
    ("trimmed-mean:0.5", "BETA.*\\[0, 0.5\\)"),
    ("trimmed-mean:-0.1", "BETA.*\\[0, 0.5\\)"),
    ("trimmed-mean:nan", "BETA.*\\[0, 0.5\\)"),
    ("trimmed-mean:abc", "BETA.*'abc'"),
    ("krum", "of the form krum:F"),
    ("krum:-1", "krum F.*>= 0"),
    ("krum:1.5", "krum F.*integer"),
    ("multi-krum:1", "of the form multi-krum:F:M"),
    ("multi-krum:1:0", "multi-krum M.*>= 1"),
])
def test_parse_robust_spec_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_robust_spec(spec)


def test_direct_calls_check_their_parameters():
    vs = _vectors(5, 3, 13)
    for beta in (0.5, -0.01, True, float("nan")):
        with pytest.raises(ConfigError, match="beta"):
            trimmed_mean(vs, beta)


# ------------------------------------------------------------------------------------------ validation


def _model() -> dict[str, torch.Tensor]:
    return {"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64)}


def test_validate_update_accepts_a_sane_update():
    g = _model()
    p = {"w": torch.full((2, 3), 0.1, dtype=torch.float64), "b": torch.zeros(3, dtype=torch.float64),
         "extra": torch.ones(1)}  # parameters outside the reference are ignored
    assert validate_update(p, g, max_norm=None) is None
    assert validate_update(p, g, max_norm=1.0, global_params=g) is None


@pytest.mark.parametrize(("bad", "value"), [("nan", float("nan")), ("inf", float("inf")), ("-inf", float("-inf"))])
def test_validate_update_catches_non_finite(bad, value):
    p = _model()
    p["b"][1] = value
    assert validate_update(p, _model(), max_norm=None) == "non-finite values in b"


def test_validate_update_catches_shape_and_missing():
    p = _model()
    p["w"] = torch.zeros(3, 2, dtype=torch.float64)
    assert validate_update(p, _model(), max_norm=None) == "shape of w is (3, 2) but expected (2, 3)"
    p = _model()
    del p["b"]
    assert validate_update(p, _model(), max_norm=10.0) == "missing parameter b"


def test_validate_update_norm_bound_on_the_delta():
    g = {"w": torch.tensor([100.0, 100.0], dtype=torch.float64)}
    p = {"w": torch.tensor([130.0, 140.0], dtype=torch.float64)}  # delta (30, 40), norm 50
    assert validate_update(p, g, max_norm=1.0, global_params=g) == "update norm 50 exceeds the bound 1"
    assert validate_update(p, g, max_norm=50.0, global_params=g) is None  # equal to the bound is fine
    # without global_params the norm is of the parameters themselves: sqrt(130^2 + 140^2)
    assert validate_update(p, g, max_norm=100.0) == f"update norm {np.hypot(130, 140):.6g} exceeds the bound 100"
    absurd = {"w": torch.tensor([1e30, 0.0], dtype=torch.float64)}
    assert validate_update(absurd, g, max_norm=1e3, global_params=g) == "update norm 1e+30 exceeds the bound 1000"
    with pytest.raises(ConfigError, match="max_norm"):
        validate_update(p, g, max_norm=0.0)


# ------------------------------------------------------------------------------------------ fault injection


def _dyadic_pair():
    rng = _rng(14)
    g = {"w": torch.from_numpy(rng.integers(-64, 64, size=(3, 4)) / 8.0), "step": torch.tensor([5])}
    p = {"w": torch.from_numpy(rng.integers(-64, 64, size=(3, 4)) / 4.0), "step": torch.tensor([6])}
    return p, g


def test_signflip_negates_the_delta_exactly():
    p, g = _dyadic_pair()
    before = {k: v.clone() for k, v in p.items()}
    out = inject_fault(p, g, *parse_fault_spec("signflip"))
    assert torch.equal(out["w"] - g["w"], -(p["w"] - g["w"]))
    assert torch.equal(out["step"], p["step"])  # integer buffers untouched
    assert all(torch.equal(p[k], before[k]) for k in p)  # inputs not modified
    x = _vectors(2, 50, 15)
    out = inject_fault({"w": x[0]}, {"w": x[1]}, "signflip")
    np.testing.assert_allclose((out["w"] - x[1]).numpy(), -(x[0] - x[1]).numpy(), rtol=1e-10, atol=1e-14)


def test_scale_multiplies_the_delta():
    p, g = _dyadic_pair()
    kind, k = parse_fault_spec("scale:-8")
    assert (kind, k) == ("scale", -8.0)
    out = inject_fault(p, g, kind, k)
    assert torch.equal(out["w"] - g["w"], -8.0 * (p["w"] - g["w"]))
    out = inject_fault(p, g, "scale", 1.0)
    assert torch.equal(out["w"], p["w"])


def test_nan_and_dropout():
    p, g = _dyadic_pair()
    out = inject_fault(p, g, *parse_fault_spec("nan"))
    assert bool(torch.isnan(out["w"]).all()) and torch.equal(out["step"], p["step"])
    assert validate_update(out, g, max_norm=None) == "non-finite values in w"
    assert inject_fault(p, None, "nan") is not None  # needs no global parameters
    assert inject_fault(p, g, *parse_fault_spec("dropout")) is None


@pytest.mark.parametrize(("spec", "match"), [
    ("", "fault spec"), ("boom", "fault kind.*nan \\| scale:K"), ("scale", "scale:K"), ("scale:x", "'x'"),
    ("scale:inf", "finite"), ("nan:1", "no parameters"), ("dropout:0.5", "no parameters"),
])
def test_parse_fault_spec_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_fault_spec(spec)


def test_inject_fault_errors():
    p, g = _dyadic_pair()
    with pytest.raises(ConfigError, match="global"):
        inject_fault(p, None, "signflip")
    with pytest.raises(ConfigError, match="scale factor"):
        inject_fault(p, g, "scale", None)
    with pytest.raises(ConfigError, match="fault kind"):
        inject_fault(p, g, "flip")


# ------------------------------------------------------------------------------------------ faulty clients


@pytest.mark.parametrize(("n", "fraction"), [(10, 0.0), (10, 0.1), (10, 0.3), (7, 0.5), (8, 0.25), (5, 1.0), (3, 0.6)])
def test_faulty_clients_exact_count_and_determinism(n, fraction):
    selected = list(range(100, 100 + 3 * n, 3))
    got = faulty_clients(selected, fraction, seed=7, round=4)
    assert len(got) == round(fraction * n) and got <= set(selected)
    assert faulty_clients(selected[::-1], fraction, seed=7, round=4) == got  # order of the ids does not matter
    assert faulty_clients(np.array(selected), fraction, seed=7, round=4) == got
    # the stream is SeedSequence([seed, round, 21]) on the sorted ids
    rng = np.random.default_rng(np.random.SeedSequence([7, 4, 21]))
    k = round(fraction * n)
    assert got == ({int(c) for c in rng.choice(np.array(sorted(selected)), size=k, replace=False)} if k else set())


def test_faulty_clients_vary_with_round_and_seed():
    selected = list(range(20))
    by_round = [frozenset(faulty_clients(selected, 0.25, seed=1, round=r)) for r in range(10)]
    by_seed = [frozenset(faulty_clients(selected, 0.25, seed=s, round=1)) for s in range(10)]
    assert len(set(by_round)) > 5 and len(set(by_seed)) > 5  # C(20, 5) = 15504 possible sets


def test_faulty_clients_are_uniform():
    # each id's count over R independent rounds is Binomial(R, k / n); two-sided exact tests, Bonferroni alpha 1e-3
    n, fraction, rounds = 10, 0.3, 3000
    counts = np.zeros(n, dtype=int)
    for r in range(rounds):
        for c in faulty_clients(range(n), fraction, seed=3, round=r):
            counts[c] += 1
    assert counts.sum() == 3 * rounds
    for c in range(n):
        assert stats.binomtest(int(counts[c]), rounds, 0.3).pvalue > 1e-3 / n, (c, counts[c])


def test_faulty_clients_bad_fraction():
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ConfigError, match="faulty fraction"):
            faulty_clients([1, 2, 3], bad, seed=0, round=0)
