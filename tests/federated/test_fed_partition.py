"""Partitions: every example in exactly one client (property test), the label-skew sampler's
statistics against the Dirichlet-multinomial, quantity skew, natural users, clusters, specs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustnlp.data.dataset import DataMeta, TextDataset
from trustnlp.data.partition import (
    ClusterPartitioner,
    cluster_partition,
    dirichlet_label_partition,
    iid_partition,
    kmeans_labels,
    parse_partition_spec,
    partition_dataset,
    quantity_skew_partition,
    user_partition,
)
from trustnlp.errors import ConfigError, DataError


def _covers_once(part, n: int) -> None:
    allidx = np.concatenate(part.clients) if part.clients else np.array([], dtype=np.int64)
    assert len(allidx) == n
    assert np.array_equal(np.sort(allidx), np.arange(n))
    assert np.array_equal(part.assignment() >= 0, np.ones(n, dtype=bool))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), k_frac=st.floats(0.0, 1.0), num_labels=st.integers(1, 12), seed=st.integers(0, 2**31),
       alpha=st.sampled_from([1e-3, 0.05, 0.5, 5.0, 1e3]), beta=st.sampled_from([0.01, 0.5, 10.0]),
       label_skew=st.floats(0.0, 3.0))
def test_every_example_in_exactly_one_client(n, k_frac, num_labels, seed, alpha, beta, label_skew) -> None:
    rng = np.random.default_rng(seed)
    k = 1 + int(k_frac * (n - 1))
    p = np.exp(-label_skew * np.arange(num_labels))
    labels = rng.choice(num_labels, size=n, p=p / p.sum())
    users = rng.integers(0, max(1, n // 3), size=n)
    parts = [
        iid_partition(n, k, seed=seed),
        dirichlet_label_partition(labels, k, alpha=alpha, seed=seed),
        quantity_skew_partition(n, k, beta=beta, seed=seed),
        user_partition(users, seed=seed),
        user_partition(users, num_clients=min(k, len(np.unique(users))), seed=seed),
    ]
    for part in parts:
        _covers_once(part, n)
        assert part.sizes().min() >= 1
    sizes = parts[1].sizes()
    assert sizes.max() - sizes.min() <= 1  # label skew keeps equal sizes


@settings(max_examples=8, deadline=None)  # k-means costs ~0.2 s a call here
@given(n=st.integers(1, 200), k_frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**31), alpha=st.sampled_from([1e-3, 1.0, 1e3]))
def test_cluster_partition_covers_every_example_once(n, k_frac, seed, alpha) -> None:
    k = 1 + int(k_frac * (n - 1))
    emb = np.random.default_rng(seed).normal(size=(n, 3))
    part = cluster_partition(emb, k, k=min(4, n), alpha=alpha, seed=seed)
    _covers_once(part, n)
    assert part.sizes().max() - part.sizes().min() <= 1


def test_label_skew_statistics_move_with_alpha() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(10, size=6000, p=np.linspace(1, 3, 10) / np.linspace(1, 3, 10).sum())
    tv, eff = [], []
    for alpha in (0.1, 1.0, 100.0):
        s = dirichlet_label_partition(labels, 60, alpha=alpha, seed=1).stats(labels, 10)
        tv.append(s.mean_tv_distance)
        eff.append(s.mean_effective_labels)
    assert tv[0] > tv[1] > tv[2] and tv[2] < 0.2 and tv[0] > 0.6
    assert eff[0] < eff[1] < eff[2] and eff[2] > 8.0
    iid = iid_partition(6000, 60, seed=1).stats(labels, 10)
    assert iid.mean_tv_distance < tv[2] + 0.05


def test_label_skew_matches_dirichlet_multinomial_variance() -> None:
    # Clients filled first (before pools run low) have label fractions f_k with variance
    # p_k (1 - p_k) (1 + alpha/n) / (alpha + 1). Statistic: ratio of sample to theoretical variance,
    # averaged over 10 seeds and the two largest labels; its spread (sd ~0.04) puts 0.85..1.15 at ~3.5 sd.
    labels = np.repeat(np.arange(4), [8000, 6000, 4000, 2000])
    p = np.bincount(labels) / len(labels)
    n_c, alpha = 50, 2.0
    ratios = []
    for seed in range(10):
        part = dirichlet_label_partition(labels, 400, alpha=alpha, seed=seed)
        first = np.asarray(part.details["fill_order"][:100])
        f = part.label_counts(labels, 4)[first] / n_c
        ratios.append(f.var(axis=0, ddof=1)[:2] / (p * (1 - p) * (1 + alpha / n_c) / (alpha + 1))[:2])
    assert 0.85 < float(np.mean(ratios)) < 1.15


def test_label_skew_never_runs_out_with_extreme_alpha() -> None:
    labels = np.array([0] * 500 + [1] * 3 + [2] * 40 + [3])
    part = dirichlet_label_partition(labels, 37, alpha=1e-4, seed=2)
    _covers_once(part, len(labels))
    assert part.details["sampler"] == "pooled Dirichlet with capped redraws"
    assert part.details["redraws"] > 0


def test_quantity_skew_every_client_has_one_and_spread_shrinks_with_beta() -> None:
    cv = []
    for beta in (0.1, 1.0, 100.0):
        part = quantity_skew_partition(5000, 50, beta=beta, seed=3)
        assert part.sizes().min() >= 1
        cv.append(part.stats().size_cv)
    assert cv[0] > cv[1] > cv[2]
    assert quantity_skew_partition(50, 50, beta=0.01, seed=0).sizes().tolist() == [1] * 50


def test_user_partition_keeps_users_whole() -> None:
    users = ["u3", "u1", "u3", "u2", "u1", "u3", "u9"]
    part = user_partition(users, seed=0)
    assert part.client_names == ("u1", "u2", "u3", "u9")
    assert [c.tolist() for c in part.clients] == [[1, 4], [3], [0, 2, 5], [6]]
    grouped = user_partition(users, num_clients=2, seed=0)
    owner = grouped.assignment()
    for u in set(users):
        assert len({owner[i] for i, x in enumerate(users) if x == u}) == 1
    with pytest.raises(ConfigError, match="num_clients"):
        user_partition(users, num_clients=5, seed=0)


def test_user_partition_of_a_dataset_finds_the_column() -> None:
    ds = TextDataset(["a b", "c d", "e f"], columns={"speaker": ["X", "Y", "X"]}, meta=DataMeta(name="toy"))
    part = partition_dataset(ds, "user", num_clients=None, seed=0)
    assert part.details["column"] == "speaker" and part.sizes().tolist() == [2, 1]
    with pytest.raises(DataError, match="user column"):
        partition_dataset(TextDataset(["a"], meta=DataMeta(name="toy")), "user", num_clients=None, seed=0)
    with pytest.raises(DataError, match="no labels"):
        partition_dataset(ds, "dirichlet:1", num_clients=2, seed=0)


def test_cluster_partition_recovers_blobs_and_skews() -> None:
    rng = np.random.default_rng(0)
    blob = np.repeat(np.arange(3), 100)
    emb = rng.normal(size=(300, 5)) * 0.1 + np.eye(5)[blob] * 5
    clusters = kmeans_labels(emb, 3, seed=0)
    assert all(len(np.unique(clusters[blob == b])) == 1 for b in range(3))
    ds = TextDataset([f"text {i}" for i in range(300)], meta=DataMeta(name="toy"))
    skewed = ClusterPartitioner(30, k=3, alpha=0.05, seed=0, embed=lambda texts: emb).partition(ds)
    mixed = ClusterPartitioner(30, k=3, alpha=1000.0, seed=0, embeddings=emb).partition(ds)
    _covers_once(skewed, 300)
    iid_tv = iid_partition(300, 30, seed=0).stats(blob, 3).mean_tv_distance  # multinomial noise of 10 examples: ~0.15
    assert skewed.stats(blob, 3).mean_tv_distance > 0.4 > iid_tv + 0.1 > mixed.stats(blob, 3).mean_tv_distance
    assert skewed.details["cluster_sizes"] == [100, 100, 100] and skewed.spec == "cluster:3:0.05"


def test_seeds_specs_and_plot_data() -> None:
    labels = np.arange(200) % 5
    a = dirichlet_label_partition(labels, 10, alpha=0.3, seed=4)
    b = dirichlet_label_partition(labels, 10, alpha=0.3, seed=4)
    c = dirichlet_label_partition(labels, 10, alpha=0.3, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a.clients, b.clients))
    assert not all(np.array_equal(x, y) for x, y in zip(a.clients, c.clients))
    plot = quantity_skew_partition(200, 8, beta=0.5, seed=0).plot_data(labels, [f"l{i}" for i in range(5)], max_clients=5)
    assert list(plot.sizes) == sorted(plot.sizes, reverse=True) and len(plot.sizes) == 5
    assert [sum(r) for r in plot.label_counts] == list(plot.sizes) and plot.num_clients_total == 8
    d = a.to_dict(labels, [f"l{i}" for i in range(5)])
    assert d["stats"]["num_clients"] == 10 and d["plot"]["kind"] == "partition"
    assert parse_partition_spec("dirichlet:0.5").alpha == 0.5
    assert str(parse_partition_spec("cluster:8")) == "cluster:8:1"
    assert parse_partition_spec(" IID ").kind == "iid"
    for bad in ("dirichlet", "dirichlet:-1", "quantity:abc", "cluster:0", "users", "dirichlet:nan"):
        with pytest.raises(ConfigError, match="partition|alpha|beta"):
            parse_partition_spec(bad)
    with pytest.raises(ConfigError, match="num_clients"):
        iid_partition(3, 4, seed=0)


def test_minilm_embeddings_are_sentence_embeddings() -> None:
    from trustnlp.data.partition import minilm_embeddings

    emb = minilm_embeddings(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell."])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert emb[0] @ emb[1] > 0.5 > emb[0] @ emb[2]
