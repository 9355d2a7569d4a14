"""Noise sources: distribution, independence, reproducibility and exact resume.

Statistical tests use fixed seeds/keys and significance level ALPHA = 1e-3: each asserts that the
test does *not* reject the null hypothesis (correct distribution / independence) at level ALPHA.
With fixed seeds the outcome is deterministic, so CI is never flaky; a broken generator fails.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from safetensors.torch import load_file, save_file
from scipy import stats

from trustnlp.checkpoint import join_tensors, split_tensors
from trustnlp.errors import ConfigError
from trustnlp.privacy.noise import NoiseSource, SecureNoise, TorchNoise, make_noise_source

ALPHA = 1e-3
N = 200_000
KEY = bytes(range(32))


def _sources() -> list[NoiseSource]:
    return [TorchNoise(seed=1234), SecureNoise(KEY)]


def _roundtrip(state: dict, tmp_path) -> dict:
    """Through the checkpoint format: tensors in safetensors, the rest in JSON."""
    plain, tensors = split_tensors(state)
    save_file(tensors, str(tmp_path / "s.safetensors"))
    return join_tensors(json.loads(json.dumps(plain)), load_file(str(tmp_path / "s.safetensors")))


@pytest.mark.parametrize("src", _sources(), ids=lambda s: s.kind)
@pytest.mark.parametrize("std", [0.7, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distribution_is_normal_with_given_std(src: NoiseSource, std: float, dtype: torch.dtype) -> None:
    """Mean (z-test), variance (chi-square: (n-1)s²/σ² ~ χ²(n-1)) and KS against N(0, σ²), at ALPHA = 1e-3."""
    x = src.normal((N // 4, 4), std=std, dtype=dtype)
    assert x.shape == (N // 4, 4) and x.dtype == dtype
    x = x.double().flatten().numpy()
    z = x.mean() / (std / math.sqrt(N))
    assert 2 * stats.norm.sf(abs(z)) > ALPHA
    chi2 = (N - 1) * x.var(ddof=1) / std**2
    p_var = 2 * min(stats.chi2.cdf(chi2, N - 1), stats.chi2.sf(chi2, N - 1))
    assert p_var > ALPHA
    assert stats.kstest(x, "norm", args=(0.0, std)).pvalue > ALPHA


def test_secure_draws_are_independent_across_calls() -> None:
    """Consecutive draws differ and are uncorrelated: √n·r ~ N(0, 1) under independence, ALPHA = 1e-3."""
    src = SecureNoise(KEY)
    a = src.normal(N, std=1.0, dtype=torch.float64).numpy()
    b = src.normal(N, std=1.0, dtype=torch.float64).numpy()
    assert not np.array_equal(a, b)
    assert len(np.intersect1d(a, b)) == 0  # no reused keystream: no value repeats
    r = np.corrcoef(a, b)[0, 1]
    assert 2 * stats.norm.sf(abs(r) * math.sqrt(N)) > ALPHA
    # the two Gaussians of one Box–Muller pair are uncorrelated too
    pairs = a.reshape(-1, 2)
    r_pair = np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]
    assert 2 * stats.norm.sf(abs(r_pair) * math.sqrt(len(pairs))) > ALPHA


def test_secure_matches_reference_construction() -> None:
    """Known-answer check of the documented construction, with AES-ECB of the counter blocks."""
    src = SecureNoise(KEY)
    src.normal(6, std=1.0)  # 3 blocks
    assert src.counter == 3
    got = src.normal(3, std=2.0, dtype=torch.float64).tolist()  # blocks 3, 4 (one value discarded)
    assert src.counter == 5
    ecb = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor()
    want = []
    for block in (3, 4):
        w1, w2 = struct.unpack("<QQ", ecb.update(block.to_bytes(16, "big")))
        u1, u2 = 1 - (w1 >> 11) * 2.0**-53, (w2 >> 11) * 2.0**-53
        r = 2.0 * math.sqrt(-2 * math.log(u1))
        want += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
    np.testing.assert_allclose(got, want[:3], rtol=1e-13, atol=1e-13)


def test_secure_is_reproducible_for_fixed_key_and_counter() -> None:
    a, b = SecureNoise(KEY), SecureNoise(KEY)
    assert torch.equal(a.normal(1001, std=1.0), b.normal(1001, std=1.0))
    b.counter = 0
    assert not torch.equal(a.normal(10, std=1.0), b.normal(10, std=1.0))  # a moved on
    assert not torch.equal(SecureNoise().normal(10, std=1.0), SecureNoise().normal(10, std=1.0))  # fresh keys


def test_secure_chunks_do_not_change_the_stream() -> None:
    """One large draw equals the same blocks drawn in pieces (chunking is invisible)."""
    big = SecureNoise(KEY).normal(300_000, std=1.0, dtype=torch.float64)
    src, parts = SecureNoise(KEY), []
    for n in (100_000, 131_072, 68_928):
        parts.append(src.normal(n, std=1.0, dtype=torch.float64))
    assert torch.equal(big, torch.cat(parts))


@pytest.mark.parametrize("make", [lambda: TorchNoise(seed=7), lambda: SecureNoise(KEY, key_in_state=True)], ids=["torch", "secure"])
def test_state_dict_round_trip_reproduces_next_draws_bitwise(make, tmp_path) -> None:
    src = make()
    src.normal(1234, std=1.0)
    state = _roundtrip(src.state_dict(), tmp_path)
    want = [src.normal((17, 3), std=0.5), src.normal(100_001, std=2.0, dtype=torch.float64)]
    other = make()
    other.normal(5, std=1.0)  # a different position, overwritten by the state
    other.load_state_dict(state)
    assert torch.equal(other.normal((17, 3), std=0.5), want[0])
    assert torch.equal(other.normal(100_001, std=2.0, dtype=torch.float64), want[1])


def test_secure_state_excludes_key_by_default_and_resume_rekeys(tmp_path) -> None:
    src = SecureNoise(KEY)
    src.normal(100, std=1.0)
    state = _roundtrip(src.state_dict(), tmp_path)
    assert set(state) == {"kind", "counter", "key_id"}
    assert KEY.hex() not in json.dumps({k: v for k, v in state.items()})
    nxt = src.normal(50, std=1.0)

    fresh = SecureNoise()  # resumed run with a new random key: private, but not the same stream
    fresh.load_state_dict(state)
    assert fresh.rekeyed_on_resume and fresh.counter == 50
    assert not torch.equal(fresh.normal(50, std=1.0), nxt)

    same = SecureNoise(KEY)  # the key supplied again from a secret store: exact
    same.load_state_dict(state)
    assert not same.rekeyed_on_resume
    assert torch.equal(same.normal(50, std=1.0), nxt)


def test_secure_key_in_state_is_adopted() -> None:
    src = SecureNoise(KEY, key_in_state=True)
    state = src.state_dict()
    assert torch.equal(state["key"], torch.tensor(list(KEY), dtype=torch.uint8))
    other = SecureNoise()
    other.load_state_dict(state)
    assert other.key_in_state and not other.rekeyed_on_resume and other.key_id == src.key_id
    assert KEY.hex() not in repr(other) and str(KEY) not in repr(other)


def test_add_noises_every_tensor_in_place() -> None:
    for src in _sources():
        grads = [torch.zeros(4, 5), torch.zeros(4, 5), torch.zeros(3, dtype=torch.float64), torch.zeros(2, dtype=torch.bfloat16)]
        ids = [id(g) for g in grads]
        src.add_(grads, std=1.5)
        assert [id(g) for g in grads] == ids
        assert [g.dtype for g in grads] == [torch.float32, torch.float32, torch.float64, torch.bfloat16]
        assert all(bool((g != 0).all()) for g in grads)
        assert not torch.equal(grads[0], grads[1])  # fresh noise per tensor


def test_add_with_std_zero_is_a_no_op_and_none_is_refused() -> None:
    src = TorchNoise(seed=0)
    state = src.state_dict()["generator"]
    g = torch.ones(3)
    src.add_([g], std=0.0)
    assert torch.equal(g, torch.ones(3)) and torch.equal(src.state_dict()["generator"], state)
    with pytest.raises(ConfigError, match=r"Expected `tensors\[1\]` to be a tensor"):
        src.add_([g, None], std=1.0)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="floating-point"):
        src.add_([torch.zeros(3, dtype=torch.long)], std=1.0)


def test_validation_messages() -> None:
    src = TorchNoise(seed=0)
    with pytest.raises(ConfigError, match=r"Expected `std` to be a finite number >= 0, but got -1\.0"):
        src.normal(3, std=-1.0)
    with pytest.raises(ConfigError, match="Expected `std`"):
        src.normal(3, std=float("nan"))
    with pytest.raises(ConfigError, match="Expected `dtype`"):
        src.normal(3, std=1.0, dtype=torch.int64)
    with pytest.raises(ConfigError, match="Expected `seed`"):
        TorchNoise(seed=-1)
    with pytest.raises(ConfigError, match=r"Expected `key` to be 32 bytes \(an AES-256 key\), but got '16 bytes'"):
        SecureNoise(b"x" * 16)
    with pytest.raises(ConfigError, match=r"Expected `state\[\"kind\"\]` to be 'torch'"):
        src.load_state_dict(SecureNoise(KEY).state_dict())


def test_make_noise_source_and_seed_separation() -> None:
    insecure, secure = make_noise_source(secure=False, seed=3), make_noise_source(secure=True, seed=3)
    assert isinstance(insecure, TorchNoise) and insecure.secure is False
    assert isinstance(secure, SecureNoise) and secure.secure is True
    assert secure.describe()["secure"] is True and insecure.describe()["kind"] == "torch"
    # the noise is not the stream torch.manual_seed(seed) gives the model's initialisation
    plain = torch.randn(10, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(insecure.normal(10, std=1.0), plain)
    assert torch.equal(TorchNoise(seed=3).normal(10, std=1.0), make_noise_source(secure=False, seed=3).normal(10, std=1.0))


def test_empty_and_shaped_draws() -> None:
    src = SecureNoise(KEY)
    assert src.normal((0, 3), std=1.0).shape == (0, 3) and src.counter == 0
    assert src.normal(torch.Size([2, 3]), std=1.0).shape == (2, 3)
    assert src.normal(5, std=0.0).abs().sum() == 0
