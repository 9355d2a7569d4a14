"""Secure aggregation (Bonawitz et al. 2017): the unmasked sum equals the plain ring sum exactly with every
kind of dropout, too few survivors abort, Shamir sharing (any t shares reconstruct; t - 1 shares are
perfectly secret, shown exhaustively over a small field), the server's view (masked vectors uniform and
uncorrelated with the inputs, never both shares of a peer), encoding and input validation.

Statistical tests use fixed seeds and significance level ALPHA = 1e-3.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from trustnlp.errors import ConfigError, DataError
from trustnlp.federated.secagg import (
    SHAMIR_PRIME,
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    ShareKeys,
    UnmaskingShares,
    UnmaskRequest,
    decode,
    encode,
    mask_stream,
    secure_sum,
    shamir_reconstruct,
    shamir_shares,
    shamir_split,
)

ALPHA = 1e-3
F = 24
IDS = (-3, 0, 2, 5, 11, 12, 40, 99)  # non-contiguous and negative ids exercise the id encoding


def _inputs(ids=IDS, m: int = 2000, seed: int = 0, scale: float = 10.0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    return {c: rng.normal(scale=scale, size=m) for c in ids}


def _ring_sum(vectors: list[np.ndarray], f: int = F) -> np.ndarray:
    """Independent reference: the int64 sum of round(x * 2^f) (no overflow within the bound), as ring elements."""
    ints = [np.rint(v * 2.0**f).astype(np.int64) for v in vectors]
    return np.sum(ints, axis=0, dtype=np.int64).view(np.uint64)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([2024, *key]))


# ------------------------------------------------------------------------------------------------
# Correctness with dropouts
# ------------------------------------------------------------------------------------------------

SCENARIOS = {
    "no dropouts": ((), (), ()),
    "before masking": ((), (2, 40), ()),
    "after masking": ((), (), (-3, 99)),
    "both": ((), (0, 12), (5,)),
    "every stage": ((11,), (2,), (40, -3)),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_sum_is_exact_in_the_ring(scenario: str) -> None:
    before_sharing, before, after = SCENARIOS[scenario]
    xs = _inputs()
    res = secure_sum(xs, SecAggConfig(threshold=4), seed=7, drop_before_sharing=before_sharing,
                     drop_before_masking=before, drop_after_masking=after)
    expected_contributors = tuple(c for c in sorted(IDS) if c not in before_sharing and c not in before)
    assert res.contributors == expected_contributors
    assert res.dropped_before == tuple(sorted(before))
    assert res.dropped_after == tuple(sorted(after))
    assert res.dropped_before_sharing == tuple(sorted(before_sharing))
    assert set(res.server_view.masked_inputs) == set(expected_contributors)

    vectors = [xs[c] for c in expected_contributors]
    # exact in Z_2^64: the unmasked result is the sum of the encodings, both by an int64 reference and by encode
    np.testing.assert_array_equal(res.sum_encoded, _ring_sum(vectors))
    by_encode = np.zeros(2000, dtype=np.uint64)
    for v in vectors:
        by_encode = by_encode + encode(v, F)
    np.testing.assert_array_equal(res.sum_encoded, by_encode)
    # decoded: within n * 2^-f of the float sum
    plain = np.sum(vectors, axis=0)
    assert np.max(np.abs(res.sum - plain)) <= len(vectors) * 2.0**-F
    # and the dropped clients' inputs are not in it (their values would be far outside that error)
    if before:
        assert np.max(np.abs(res.sum - (plain + xs[before[0]]))) > 1.0
    assert res.stats.masked_input_bytes == 8 * 2000 * len(expected_contributors)
    assert res.stats.pairwise_masks_removed == len(before) * len(expected_contributors)
    assert res.stats.self_masks_removed == len(expected_contributors)


def test_shape_is_kept_and_ring_bound_is_tight() -> None:
    n, f = 4, 24
    top = 2.0 ** (63 - f) / n * (1 - 2.0**-40)  # just inside |x| * n < 2^(63-f)
    xs = {c: np.full((3, 2), top, dtype=np.float64) for c in range(n)}
    res = secure_sum(xs, SecAggConfig(threshold=2, fractional_bits=f), seed=3)
    assert res.sum.shape == (3, 2)
    np.testing.assert_array_equal(res.sum, np.full((3, 2), n * top))  # no wrap-around
    assert res.sum_encoded.view(np.int64).min() > 0


def test_deterministic_given_seed_and_masks_change_with_it() -> None:
    xs = _inputs(m=500)
    config = SecAggConfig(threshold=3)
    a = secure_sum(xs, config, seed=11, drop_before_masking=[5])
    b = secure_sum(xs, config, seed=11, drop_before_masking=[5])
    c = secure_sum(xs, config, seed=12, drop_before_masking=[5])
    for cid in a.contributors:
        np.testing.assert_array_equal(a.server_view.masked_inputs[cid], b.server_view.masked_inputs[cid])
        assert np.mean(a.server_view.masked_inputs[cid] == c.server_view.masked_inputs[cid]) == 0.0
    assert a.server_view.ciphertexts == b.server_view.ciphertexts
    np.testing.assert_array_equal(a.sum_encoded, c.sum_encoded)


# ------------------------------------------------------------------------------------------------
# Too few survivors: an error, never a sum
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("drops", "pattern"), [
    ({"drop_before_sharing": [0, 1, 2]}, r"round 1 \(ShareKeys\): only 3 of 6 clients .* threshold t=4"),
    ({"drop_before_masking": [0, 1, 2]}, r"round 2 \(MaskedInputCollection\): only 3 of 6 .* t=4"),
    ({"drop_after_masking": [3, 4, 5]}, r"round 4 \(Unmasking\): only 3 of 6 .* t=4"),
    ({"drop_before_masking": [0, 1], "drop_after_masking": [2]}, r"round 4 \(Unmasking\): only 3 of 4 .* t=4"),
])
def test_fewer_than_threshold_survivors_abort(drops: dict[str, list[int]], pattern: str) -> None:
    xs = _inputs(ids=range(6), m=64)
    with pytest.raises(SecAggError, match=pattern):
        secure_sum(xs, SecAggConfig(threshold=4), seed=0, **drops)
    # exactly t survivors still work
    res = secure_sum(xs, SecAggConfig(threshold=3), seed=0, **drops)
    np.testing.assert_array_equal(res.sum_encoded, _ring_sum([xs[c] for c in res.contributors]))


# ------------------------------------------------------------------------------------------------
# Shamir secret sharing
# ------------------------------------------------------------------------------------------------


def test_shamir_any_t_shares_reconstruct() -> None:
    rng = _rng(1)
    secret = int.from_bytes(rng.bytes(32), "big")
    n, t = 6, 3
    shares = shamir_split(secret, n, t, rng)
    assert [x for x, _ in shares] == list(range(1, n + 1))
    for k in range(t, n + 1):
        for subset in itertools.combinations(shares, k):
            assert shamir_reconstruct(list(subset)) == secret


def test_shamir_t_minus_one_shares_do_not_reconstruct() -> None:
    rng = _rng(2)
    n, t = 5, 4
    for _ in range(200):
        secret = int.from_bytes(rng.bytes(32), "big")
        shares = shamir_split(secret, n, t, rng)
        for subset in itertools.combinations(shares, t - 1):
            assert shamir_reconstruct(list(subset)) != secret


def test_shamir_perfect_secrecy_exhaustive_small_field() -> None:
    """Over GF(13), t = 3: for every secret, the t - 1 shares at any two points take every value pair exactly once
    as the random coefficients range over the field, so their distribution does not depend on the secret."""
    p, n, t = 13, 4, 3
    everything = sorted(itertools.product(range(p), repeat=t - 1))
    for secret in range(p):
        shares = [shamir_shares([secret, *coeffs], n, prime=p) for coeffs in itertools.product(range(p), repeat=t - 1)]
        for i, j in itertools.combinations(range(n), t - 1):
            assert sorted((s[i][1], s[j][1]) for s in shares) == everything
        # and any t of them give the secret back
        assert all(shamir_reconstruct(s[:t], prime=p) == secret for s in shares)


def test_shamir_split_matches_coefficients_and_validates() -> None:
    rng = _rng(3)
    shares = shamir_split(5, 3, 2, rng, prime=101)
    slope = (shares[1][1] - shares[0][1]) % 101
    assert shares == shamir_shares([5, slope], 3, prime=101)
    with pytest.raises(ConfigError, match="`n`"):
        shamir_split(5, 2, 3, rng)
    with pytest.raises(DataError, match="`secret`"):
        shamir_split(SHAMIR_PRIME, 3, 2, rng)
    with pytest.raises(DataError, match="distinct x"):
        shamir_reconstruct([(1, 2), (1, 3)])


# ------------------------------------------------------------------------------------------------
# What the server sees
# ------------------------------------------------------------------------------------------------


def test_masked_vector_is_uniform_and_uncorrelated_with_input() -> None:
    m = 8192
    rng = _rng(4)
    x = rng.normal(scale=100.0, size=m)
    xs = {0: x, 1: np.ones(m), 2: np.zeros(m)}  # client 2's input is all zeros: y_2 is its masks alone
    res = secure_sum(xs, SecAggConfig(threshold=2), seed=5)
    for cid in (0, 2):
        y = res.server_view.masked_inputs[cid]
        top = (y >> np.uint64(56)).astype(np.int64)
        assert stats.chisquare(np.bincount(top, minlength=256)).pvalue > ALPHA
        ones = np.array([int(np.sum((y >> np.uint64(b)) & np.uint64(1))) for b in range(64)])
        statistic = float(np.sum((2 * ones - m) ** 2 / m))  # sum of 64 squared z-scores ~ chi2(64) if uniform
        assert stats.chi2.sf(statistic, 64) > ALPHA
    y0 = res.server_view.masked_inputs[0].view(np.int64).astype(np.float64)
    assert stats.pearsonr(x, y0).pvalue > ALPHA
    assert stats.pearsonr(x, (res.server_view.masked_inputs[0] >> np.uint64(63)).astype(float)).pvalue > ALPHA
    np.testing.assert_array_equal(res.sum_encoded, _ring_sum(list(xs.values())))


def test_server_view_holds_only_protocol_messages_and_never_both_shares() -> None:
    xs = _inputs(m=300)
    res = secure_sum(xs, SecAggConfig(threshold=4), seed=9, drop_before_masking=[0, 12], drop_after_masking=[5])
    view = res.server_view
    kinds = (AdvertiseKeys, ShareKeys, MaskedInput, UnmaskingShares)
    assert all(isinstance(msg, kinds) for msg in view.messages)
    assert view.survivors == {"U1": tuple(sorted(IDS)), "U2": tuple(sorted(IDS)),
                              "U3": res.contributors, "U5": tuple(c for c in res.contributors if c != 5)}
    for cid, y in view.masked_inputs.items():
        assert y.dtype == np.uint64 and np.mean(y == encode(xs[cid], F)) == 0.0
    for sender, msg in view.unmasking.items():
        assert sorted(msg.mask_key_shares) == [0, 12] and sorted(msg.self_seed_shares) == list(res.contributors)
        assert not set(msg.mask_key_shares) & set(msg.self_seed_shares)
        assert sender not in (0, 12, 5)
    # ciphertexts: every ordered pair of U2 once, and none contains a share in the clear
    assert set(view.ciphertexts) == {(a, b) for a in IDS for b in IDS if a != b}
    shares_seen = {y for m in view.unmasking.values() for _, y in [*m.mask_key_shares.values(),
                                                                   *m.self_seed_shares.values()]}
    blobs = b"".join(view.ciphertexts.values())
    assert not any(y.to_bytes(66, "big") in blobs for y in shares_seen)
    assert res.stats.ciphertext_bytes == len(blobs)
    assert res.stats.public_key_bytes == 64 * len(IDS)


def _run_rounds(n: int, t: int, before=(), after=()):
    config = SecAggConfig(threshold=t)
    xs = _inputs(ids=range(n), m=50)
    clients = {c: SecAggClient(c, xs[c], config, _rng(10, c)) for c in range(n)}
    server = SecAggServer(config)
    roster = server.collect_keys([clients[c].advertise_keys() for c in range(n)])
    deliveries = server.collect_shares([clients[c].share_keys(roster) for c in range(n)])
    request = server.collect_masked([clients[c].masked_input(deliveries[c]) for c in range(n) if c not in before])
    replies = [clients[c].unmask(request) for c in request.survivors if c not in after]
    return xs, clients, server, request, replies


def test_manual_rounds_give_the_sum() -> None:
    xs, _, server, request, replies = _run_rounds(5, 3, before=(1,), after=(4,))
    total = server.collect_unmasking(replies)
    np.testing.assert_array_equal(total, _ring_sum([xs[c] for c in request.survivors]))


def test_client_never_reveals_both_shares_of_a_peer() -> None:
    _, clients, _, request, _ = _run_rounds(5, 3, before=(1,))
    assert request.survivors == (0, 2, 3, 4)
    # a second request claiming client 2 dropped would reveal its mask key after its self-seed share
    with pytest.raises(SecAggError, match="both shares"):
        clients[0].unmask(UnmaskRequest((0, 3, 4)))
    # repeating the same request is harmless and gives the same shares
    first = clients[3].unmask(request)
    assert clients[3].unmask(request) == first
    with pytest.raises(SecAggError, match="not in U3"):
        clients[0].unmask(UnmaskRequest((2, 3, 4)))  # client 0 did send its input: a lying server
    with pytest.raises(SecAggError, match="threshold t=3"):
        clients[2].unmask(UnmaskRequest((0, 2)))


@pytest.mark.parametrize(("after", "field"), [((), "mask_key_shares"), ((), "self_seed_shares"),
                                              ((4,), "mask_key_shares")])
def test_corrupt_share_aborts_instead_of_a_wrong_sum(after: tuple[int, ...], field: str) -> None:
    _, _, server, _, replies = _run_rounds(5, 3, before=(1,), after=after)
    victim = replies[-1]
    peer = 1 if field == "mask_key_shares" else 2
    shares = dict(getattr(victim, field))
    x, y = shares[peer]
    shares[peer] = (x, (y + 1) % SHAMIR_PRIME)
    forged = UnmaskingShares(victim.sender, **{**{"mask_key_shares": victim.mask_key_shares,
                                                   "self_seed_shares": victim.self_seed_shares}, field: shares})
    with pytest.raises(SecAggError, match="inconsistent|does not match its public key|corrupt"):
        server.collect_unmasking([*replies[:-1], forged])


def test_forged_ciphertext_is_rejected() -> None:
    config = SecAggConfig(threshold=2)
    xs = _inputs(ids=range(3), m=10)
    clients = {c: SecAggClient(c, xs[c], config, _rng(11, c)) for c in range(3)}
    server = SecAggServer(config)
    roster = server.collect_keys([c.advertise_keys() for c in clients.values()])
    deliveries = server.collect_shares([c.share_keys(roster) for c in clients.values()])
    bad = deliveries[0]
    flipped = bytes([bad.shares[0].ciphertext[0] ^ 1]) + bad.shares[0].ciphertext[1:]
    forged = type(bad)(bad.recipient, bad.participants,
                       (EncryptedShare(bad.shares[0].sender, 0, flipped), *bad.shares[1:]))
    with pytest.raises(SecAggError, match="authenticate"):
        clients[0].masked_input(forged)


# ------------------------------------------------------------------------------------------------
# Encoding, masks and validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [0, 8, 24, 40])
def test_encode_decode_round_trip(f: int) -> None:
    rng = _rng(20, f)
    x = rng.uniform(-1000.0, 1000.0, size=4000)
    y = encode(x, f)
    assert y.dtype == np.uint64
    assert np.max(np.abs(decode(y, f) - x)) <= 2.0 ** -(f + 1)
    a, b = np.rint(x * 2.0**f) / 2.0**f, np.rint(x[::-1] * 2.0**f) / 2.0**f  # exactly representable
    np.testing.assert_array_equal(encode(a, f) + encode(b, f), encode(a + b, f))  # a ring homomorphism
    np.testing.assert_array_equal(decode(encode(a, f) - encode(b, f), f), a - b)


def test_encode_negative_wraps_and_errors() -> None:
    assert int(encode(np.array([-1.0]), 0)[0]) == 2**64 - 1
    assert int(encode(np.array([-0.5]), 1)[0]) == 2**64 - 1
    with pytest.raises(DataError, match="finite"):
        encode(np.array([np.nan]), F)
    with pytest.raises(DataError, match="2\\^\\(63-f\\)"):
        encode(np.array([2.0**40]), F)
    with pytest.raises(DataError, match="uint64"):
        decode(np.zeros(3, dtype=np.int64), F)
    with pytest.raises(ConfigError, match="fractional_bits"):
        encode(np.zeros(2), 63)


def test_mask_stream_is_aes_ctr_keystream() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(32))
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    reference = np.frombuffer(enc.update(bytes(80)), dtype="<u8")
    np.testing.assert_array_equal(mask_stream(seed, 10), reference)
    np.testing.assert_array_equal(mask_stream(seed, 4), reference[:4])


def test_input_validation_errors_name_the_client() -> None:
    config = SecAggConfig(threshold=2)
    with pytest.raises(DataError, match=r"inputs\[2\].*shape \(5,\) like client 0's.*shape \(4,\)"):
        secure_sum({0: np.zeros(5), 1: np.zeros(5), 2: np.zeros(4)}, config, seed=0)
    with pytest.raises(DataError, match=r"inputs\[1\].*finite"):
        secure_sum({0: np.zeros(5), 1: np.array([0, 1, np.inf, 0, 0])}, config, seed=0)
    with pytest.raises(DataError, match="non-empty"):
        secure_sum({0: np.zeros(0), 1: np.zeros(0)}, config, seed=0)
    n, bound = 3, 2.0 ** (63 - F)
    over = {0: np.zeros(4), 1: np.array([0.0, -bound / n, 0.0, 0.0]), 2: np.zeros(4)}
    with pytest.raises(DataError, match=r"Client 1's input would overflow.*n=3.*2\^\(63-f\)"):
        secure_sum(over, config, seed=0)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="`threshold`"):
        SecAggConfig(threshold=1)
    with pytest.raises(ConfigError, match="`fractional_bits`"):
        SecAggConfig(threshold=2, fractional_bits=63)
    xs = _inputs(ids=range(3), m=4)
    with pytest.raises(ConfigError, match=r"`threshold` to be <= the number of clients \(3\)"):
        secure_sum(xs, SecAggConfig(threshold=4), seed=0)
    with pytest.raises(ConfigError, match="drop_before_masking"):
        secure_sum(xs, SecAggConfig(threshold=2), seed=0, drop_before_masking=[7])
    with pytest.raises(ConfigError, match="disjoint"):
        secure_sum(xs, SecAggConfig(threshold=2), seed=0, drop_before_masking=[1], drop_after_masking=[1])
    with pytest.raises(ConfigError, match="`seed`"):
        secure_sum(xs, SecAggConfig(threshold=2), seed=-1)
