"""Poisson samplers and the DP data loader.

Statistical tests use fixed seeds and significance level ALPHA = 1e-3 (Bonferroni-corrected where
many units are tested at once): each asserts the test does *not* reject "inclusion is Bernoulli(q)"
/ "batch size is Binomial(N, q)". With fixed seeds the outcome is deterministic (never flaky).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from scipy import stats
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from trustnlp.checkpoint import join_tensors, split_tensors
from trustnlp.errors import ConfigError, DataError
from trustnlp.privacy.sampling import DPDataLoader, PoissonSampler, UserBatch, UserPoissonSampler

ALPHA = 1e-3


def _roundtrip(state: dict, tmp_path) -> dict:
    plain, tensors = split_tensors(state)
    save_file(tensors, str(tmp_path / "s.safetensors"))
    return join_tensors(json.loads(json.dumps(plain)), load_file(str(tmp_path / "s.safetensors")))


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# -- PoissonSampler --------------------------------------------------------------------------------


def test_inclusion_frequency_and_batch_size_distribution() -> None:
    """Per-example inclusion ~ Binomial(T, q) (binomial test, ALPHA/N each); batch size ~ Binomial(N, q)
    (chi-square goodness of fit, tails pooled to expected counts >= 5); ALPHA = 1e-3."""
    n, q, steps = 60, 0.1, 5000
    sampler = PoissonSampler(n, sampling_rate=q, steps_per_epoch=steps, seed=11)
    batches = list(sampler.epoch(0))
    assert len(batches) == steps
    counts = torch.zeros(n, dtype=torch.long)
    sizes = []
    for b in batches:
        assert b.dtype == torch.long and b.ndim == 1
        assert torch.equal(b, torch.unique(b))  # sorted, no duplicates
        counts[b] += 1
        sizes.append(len(b))
    for c in counts.tolist():
        assert stats.binomtest(c, steps, q).pvalue > ALPHA / n
    observed = np.bincount(sizes, minlength=n + 1)
    expected = stats.binom.pmf(np.arange(n + 1), n, q) * steps
    big = np.flatnonzero(expected >= 5)
    lo, hi = big[0], big[-1]  # pool each tail into its neighbouring bin
    obs = np.r_[observed[: lo + 1].sum(), observed[lo + 1 : hi], observed[hi:].sum()]
    exp = np.r_[expected[: lo + 1].sum(), expected[lo + 1 : hi], expected[hi:].sum()]
    assert stats.chisquare(obs, exp * steps / exp.sum()).pvalue > ALPHA
    assert np.mean(sizes) == pytest.approx(q * n, abs=4 * np.sqrt(n * q * (1 - q) / steps))
    assert sampler.expected_batch_size == pytest.approx(q * n)


def test_empty_batches_are_yielded_when_qn_is_small() -> None:
    sampler = PoissonSampler(10, sampling_rate=0.05, seed=0)  # P(empty) = 0.95**10 ≈ 0.60
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20  # round(1 / q)
    empty = [b for b in batches if b.numel() == 0]
    assert 3 <= len(empty) < 20
    assert all(b.shape == (0,) and b.dtype == torch.long for b in empty)


def test_full_sampling_rate_and_defaults() -> None:
    sampler = PoissonSampler(7, sampling_rate=1.0, seed=0)
    assert len(sampler) == 1 and torch.equal(next(iter(sampler)), torch.arange(7))
    assert PoissonSampler(100, sampling_rate=0.3, seed=0).steps_per_epoch == 3
    assert PoissonSampler(100, sampling_rate=0.01, steps_per_epoch=5, seed=0).steps_per_epoch == 5


def test_determinism_from_seed_and_epoch() -> None:
    a = PoissonSampler(50, sampling_rate=0.2, seed=5)
    b = PoissonSampler(50, sampling_rate=0.2, seed=5)
    c = PoissonSampler(50, sampling_rate=0.2, seed=6)
    assert _same(list(a.epoch(3)), list(b.epoch(3)))
    assert not _same(list(a.epoch(3)), list(c.epoch(3)))
    assert not _same(list(a.epoch(3)), list(a.epoch(4)))


def test_epoch_e_equals_the_iterations_eth_epoch() -> None:
    sampler = PoissonSampler(30, sampling_rate=0.25, seed=2)
    iterated = [list(sampler) for _ in range(3)]
    assert sampler.position == (3, 0)
    for e in range(3):
        assert _same(iterated[e], list(sampler.epoch(e)))


@pytest.mark.parametrize("taken", [0, 7, 20])
def test_resume_mid_epoch_reproduces_the_remaining_batches(taken: int, tmp_path) -> None:
    make = lambda: PoissonSampler(40, sampling_rate=0.05, seed=9)  # noqa: E731
    reference = [list(make().epoch(e)) for e in range(2)]
    sampler = make()
    it = iter(sampler)
    head = [next(it) for _ in range(taken)]
    state = _roundtrip(sampler.state_dict(), tmp_path)
    assert state["step"] == taken
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert _same(head + rest, reference[0])
    assert _same(list(resumed), reference[1])  # and the next epoch


def test_load_state_from_a_different_sampler_is_refused() -> None:
    state = PoissonSampler(40, sampling_rate=0.05, seed=9).state_dict()
    with pytest.raises(ConfigError, match="`sampling_rate`"):
        PoissonSampler(40, sampling_rate=0.1, seed=9).load_state_dict(state)
    with pytest.raises(ConfigError, match="`num_units`"):
        PoissonSampler(41, sampling_rate=0.05, seed=9).load_state_dict(state)


@pytest.mark.parametrize("rate", [0, 0.0, -0.1, 1.5, float("nan"), True])
def test_sampling_rate_validation(rate) -> None:
    with pytest.raises(ConfigError, match=r"Expected `sampling_rate` to be in \(0, 1\], but got"):
        PoissonSampler(10, sampling_rate=rate, seed=0)


def test_other_validation_messages() -> None:
    with pytest.raises(ConfigError, match=r"Expected `num_examples` to be an int >= 1, but got 0"):
        PoissonSampler(0, sampling_rate=0.5, seed=0)
    with pytest.raises(ConfigError, match="Expected `steps_per_epoch` to be an int >= 1"):
        PoissonSampler(10, sampling_rate=0.5, steps_per_epoch=0, seed=0)
    with pytest.raises(ConfigError, match="Expected `seed`"):
        PoissonSampler(10, sampling_rate=0.5, seed=-3)
    with pytest.raises(DataError, match="Expected `user_ids` to be non-empty"):
        UserPoissonSampler([], sampling_rate=0.5, seed=0)
    with pytest.raises(ConfigError, match="Expected `max_examples_per_user` to be an int >= 1"):
        UserPoissonSampler(["a"], sampling_rate=0.5, seed=0, max_examples_per_user=0)
    with pytest.raises(DataError, match="hashable"):
        UserPoissonSampler([["a"]], sampling_rate=0.5, seed=0)


# -- UserPoissonSampler ----------------------------------------------------------------------------


def _user_ids(num_users: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"u{int(u)}" for u in rng.integers(0, num_users, size=4 * num_users)]


def test_user_batches_hold_exactly_the_sampled_users_examples() -> None:
    ids = _user_ids(25)
    sampler = UserPoissonSampler(ids, sampling_rate=0.2, seed=4)
    owner = torch.tensor([sampler.users.index(u) for u in ids])
    for batch in sampler.epoch(0):
        assert isinstance(batch, UserBatch)
        assert torch.equal(owner[batch.indices], batch.users)
        sampled = set(batch.users.tolist())
        assert set(batch.indices.tolist()) == {i for i, o in enumerate(owner.tolist()) if o in sampled}
        group, k = batch.groups()
        assert k == len(sampled) and (group.numel() == 0 or int(group.max()) == k - 1)
        assert torch.equal(torch.unique(batch.users)[group], batch.users)
    assert sampler.num_users == len(set(ids)) and sampler.expected_batch_size == pytest.approx(0.2 * sampler.num_users)


def test_user_inclusion_frequency() -> None:
    """Per-user inclusion ~ Binomial(T, q): binomial test at ALPHA/U each, ALPHA = 1e-3."""
    ids = _user_ids(30, seed=1)
    q, steps = 0.15, 3000
    sampler = UserPoissonSampler(ids, sampling_rate=q, steps_per_epoch=steps, seed=3)
    counts = np.zeros(sampler.num_users, dtype=int)
    for batch in sampler.epoch(0):
        counts[torch.unique(batch.users).numpy()] += 1
    for c in counts:
        assert stats.binomtest(int(c), steps, q).pvalue > ALPHA / sampler.num_users


def test_user_cap_is_a_fixed_seeded_subset() -> None:
    ids = ["heavy"] * 20 + ["light"] * 2 + ["mid"] * 5
    sampler = UserPoissonSampler(ids, sampling_rate=1.0, seed=8, max_examples_per_user=3)
    assert sampler.num_examples == 27 and sampler.num_examples_used == 3 + 2 + 3
    (batch,) = list(sampler)
    per_user = {sampler.users[u]: batch.indices[batch.users == u].tolist() for u in range(3)}
    assert per_user["light"] == [20, 21]
    assert len(per_user["heavy"]) == 3 and set(per_user["heavy"]) <= set(range(20))
    assert len(per_user["mid"]) == 3 and set(per_user["mid"]) <= set(range(22, 27))
    again = UserPoissonSampler(ids, sampling_rate=1.0, seed=8, max_examples_per_user=3)
    assert torch.equal(next(iter(again)).indices, batch.indices)  # deterministic from the seed
    subsets = {tuple(UserPoissonSampler(ids, sampling_rate=1.0, seed=s, max_examples_per_user=3).epoch(0).__next__().indices.tolist()) for s in range(5)}
    assert len(subsets) > 1  # and the seed chooses it


def test_user_sampler_resume_and_empty_steps(tmp_path) -> None:
    ids = _user_ids(6)
    make = lambda: UserPoissonSampler(ids, sampling_rate=0.05, seed=1)  # noqa: E731
    reference = list(make().epoch(0))
    assert any(b.indices.numel() == 0 and b.users.numel() == 0 for b in reference)
    sampler = make()
    it = iter(sampler)
    head = [next(it) for _ in range(5)]
    resumed = make()
    resumed.load_state_dict(_roundtrip(sampler.state_dict(), tmp_path))
    got = head + list(resumed)
    assert len(got) == len(reference)
    assert all(torch.equal(a.indices, b.indices) and torch.equal(a.users, b.users) for a, b in zip(got, reference))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.integers(0, 2**31), st.sampled_from([None, 1, 2]))
def test_user_batches_property(ids: list[int], seed: int, cap: int | None) -> None:
    sampler = UserPoissonSampler(ids, sampling_rate=0.5, seed=seed, steps_per_epoch=4, max_examples_per_user=cap)
    for batch in sampler.epoch(0):
        assert batch.indices.numel() == batch.users.numel()
        assert all(ids[i] == sampler.users[u] for i, u in zip(batch.indices.tolist(), batch.users.tolist()))
        _, per_user = torch.unique(batch.users, return_counts=True)
        if cap is not None:
            assert per_user.numel() == 0 or int(per_user.max()) <= cap
        assert torch.equal(batch.users, batch.users.sort().values)


# -- DPDataLoader ----------------------------------------------------------------------------------


def _tensor_data(n: int = 12) -> TensorDataset:
    return TensorDataset(torch.arange(n * 3, dtype=torch.float32).view(n, 3), torch.arange(n))


def test_dp_data_loader_yields_poisson_batches_with_correct_empty_shapes() -> None:
    ds = _tensor_data()
    loader = DPDataLoader(ds, sampling_rate=0.05, seed=2)
    expected = list(PoissonSampler(12, sampling_rate=0.05, seed=2).epoch(0))
    batches = list(loader)
    assert len(batches) == len(loader) == 20 and loader.expected_batch_size == pytest.approx(0.6)
    assert any(len(idx) == 0 for idx in expected)
    for (x, y), idx in zip(batches, expected):
        assert x.shape == (len(idx), 3) and x.dtype == torch.float32
        assert y.shape == (len(idx),) and y.dtype == torch.long
        assert torch.equal(x, ds.tensors[0][idx]) and torch.equal(y, idx)
        if len(idx) == 0:  # nothing of example 0 is kept, not even in the storage
            assert x.untyped_storage().nbytes() == 0 and y.untyped_storage().nbytes() == 0


class _DictData(Dataset):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> dict:
        return {"ids": torch.full((4,), i), "mask": np.ones(4, dtype=np.int8), "text": f"t{i}", "meta": (i, torch.tensor([i, i]))}


def test_empty_batch_of_a_nested_structure() -> None:
    loader = DPDataLoader(_DictData(), sampling_rate=0.01, steps_per_epoch=3, seed=0)
    for batch in loader:  # P(non-empty) = 1 - 0.99**5 ≈ 5%: these three are empty
        assert batch["ids"].shape == (0, 4) and batch["ids"].dtype == torch.long
        assert batch["mask"].shape == (0, 4) and batch["mask"].dtype == torch.int8  # default_collate makes tensors
        assert batch["text"] == []
        assert batch["meta"][0].shape == (0,) and batch["meta"][1].shape == (0, 2)


def test_empty_batch_refuses_values_it_cannot_empty() -> None:
    loader = DPDataLoader(_tensor_data(), sampling_rate=0.01, steps_per_epoch=2, seed=0,
                          collate_fn=lambda b: {"x": torch.stack([t[0] for t in b]), "name": "example-0"})
    with pytest.raises(DataError, match=r"`batch\['name'\]` is a str"):
        list(loader)


def test_from_data_loader_keeps_options_and_collate() -> None:
    ds = _tensor_data(20)
    collate = lambda b: torch.stack([t[0] for t in b]) * 2  # noqa: E731
    original = DataLoader(ds, batch_size=5, collate_fn=collate, num_workers=1, pin_memory=False)
    dp = DPDataLoader.from_data_loader(original, seed=4)
    assert dp.sampling_rate == pytest.approx(1 / 4) and len(dp) == 4 and dp.num_workers == 1
    want = [ds.tensors[0][idx] * 2 for idx in PoissonSampler(20, sampling_rate=0.25, seed=4).epoch(0)]
    got = list(dp)  # through a worker process
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(got, want))
    rebuilt = DPDataLoader.from_data_loader(dp, sampling_rate=0.5, seed=4)
    assert rebuilt.sampling_rate == 0.5 and rebuilt.collate_fn.collate_fn is collate


def test_dp_data_loader_state_and_refusals(tmp_path) -> None:
    ds = _tensor_data()
    loader = DPDataLoader(ds, sampling_rate=0.2, seed=1)
    it = iter(loader)
    head = [next(it) for _ in range(2)]
    other = DPDataLoader(ds, sampling_rate=0.2, seed=1)
    other.load_state_dict(_roundtrip(loader.state_dict(), tmp_path))
    full = list(DPDataLoader(ds, sampling_rate=0.2, seed=1))
    got = head + list(other)
    assert len(got) == len(full) and all(torch.equal(a[0], b[0]) for a, b in zip(got, full))
    with pytest.raises(ConfigError, match="batch_size"):
        DPDataLoader(ds, sampling_rate=0.2, seed=1, batch_size=4)

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(1)

    with pytest.raises(DataError, match="map-style"):
        DPDataLoader(Stream(), sampling_rate=0.2, seed=1)
