"""TorchNoise's large draws (split into parallel streams): right distribution, halves independent,
same numbers whatever the thread count, resumable, and ``add_`` equal to adding ``normal``."""

from __future__ import annotations

import torch
from scipy import stats

from trustnlp.privacy.noise import _SPLIT_MIN, TorchNoise

ALPHA = 1e-3  # fixed seeds: these tests are deterministic; alpha bounds the chance the seed is unlucky


def test_large_draw_is_normal_with_std_and_halves_are_independent() -> None:
    n = 4 * _SPLIT_MIN
    x = TorchNoise(5).normal((n,), std=2.5, dtype=torch.float64)
    assert stats.kstest(x.numpy() / 2.5, "norm").pvalue > ALPHA
    lo, hi = x[: n // 2], x[n // 2 :]
    r, p = stats.pearsonr(lo.numpy(), hi.numpy())
    assert p > ALPHA, f"halves correlated: r={r}"
    assert not torch.equal(lo, hi)


def test_large_draws_do_not_depend_on_thread_count_and_resume_bitwise() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = TorchNoise(3).normal((3 * _SPLIT_MIN,), std=1.0)
        torch.set_num_threads(2)
        src = TorchNoise(3)
        two = src.normal((3 * _SPLIT_MIN,), std=1.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    state = src.state_dict()
    nxt = src.normal((_SPLIT_MIN + 7,), std=1.0)
    other = TorchNoise(99)
    other.load_state_dict(state)
    assert torch.equal(other.normal((_SPLIT_MIN + 7,), std=1.0), nxt)


def test_add_equals_adding_a_fresh_draw() -> None:
    a, b = TorchNoise(1), TorchNoise(1)
    big = torch.ones(3, _SPLIT_MIN)  # split path
    small = torch.ones(5, 2)
    a.add_([big, small], std=0.5)
    assert torch.equal(big, 1 + b.normal(big.shape, std=0.5))
    assert torch.equal(small, 1 + b.normal(small.shape, std=0.5))
