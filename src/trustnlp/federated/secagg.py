r"""Secure aggregation for the federated simulator (Bonawitz et al. 2017), simulated in one process.

Reference: K. Bonawitz, V. Ivanov, B. Kreuter, A. Marcedone, H. B. McMahan, S. Patel, D. Ramage,
A. Segal, K. Seth, "Practical Secure Aggregation for Privacy-Preserving Machine Learning", ACM CCS 2017.
This module implements the paper's *honest-but-curious* protocol with a single server. Clients and the
server are separate objects (:class:`SecAggClient`, :class:`SecAggServer`) that talk only through the
message objects below, so everything the server ever holds is in its :class:`ServerView`: public keys,
ciphertexts it relays but cannot open, masked vectors, and the unmasking shares addressed to it.

**Encoding.** A float vector is mapped to the ring :math:`\mathbb{Z}_{2^{64}}` by fixed point with ``f``
fractional bits (default **f = 24**): :math:`\bar x = \mathrm{round}(x \cdot 2^f) \bmod 2^{64}`
(``numpy.rint``, half to even). All arithmetic is on ``numpy.uint64``, whose wrap-around *is* arithmetic
mod :math:`2^{64}`. Decoding reads the ring value as a signed int64 and divides by :math:`2^f`. A sum of
``n`` inputs decodes correctly when :math:`|x| \cdot n < 2^{63-f}` for every input (checked by
:func:`secure_sum`); the decoded sum differs from the float sum by at most :math:`n \cdot 2^{-f-1}`
(rounding of each input) plus float64 rounding.

**Primitives** (``cryptography``): X25519 key agreement; HKDF-SHA256 to derive 32-byte seeds and keys from
shared secrets; masks are the AES-256-CTR keystream of a 32-byte seed (zero nonce, each seed used once),
read as little-endian uint64 words (:func:`mask_stream`); shares travel client to client under AES-256-GCM.
Shamir secret sharing is over the Mersenne prime field :math:`p = 2^{521} - 1` with Python integers,
client ``v``'s share point being ``1 +`` its index in the sorted list of clients that advertised keys.

**Protocol rounds** (the paper's numbering; ``U1 ⊇ U2 ⊇ U3 ⊇ U5`` are the clients still alive after each
round, ``t`` the threshold; every round aborts with :class:`SecAggError` when fewer than ``t`` survive):

0. *AdvertiseKeys.* Client ``u`` draws two X25519 key pairs, :math:`(c_u^{PK}, c_u^{SK})` (share
   encryption) and :math:`(s_u^{PK}, s_u^{SK})` (pairwise masks), and sends both public keys. The
   server broadcasts the roster ``U1`` with all public keys.
1. *ShareKeys.* ``u`` draws a 32-byte self-mask seed :math:`b_u`, splits the integers :math:`s_u^{SK}`
   and :math:`b_u` into ``t``-of-``|U1|`` Shamir shares, and for each ``v`` in ``U1 \ {u}`` sends
   :math:`\mathrm{AES\text{-}GCM}_{k_{u,v}}(u \| v \| s^{SK}_{u \to v} \| b_{u \to v})` with
   :math:`k_{u,v} = \mathrm{HKDF}(\mathrm{X25519}(c_u^{SK}, c_v^{PK}))` through the server, which
   forwards to each ``v`` in ``U2`` the ciphertexts addressed to it.
2. *MaskedInputCollection.* With :math:`s_{u,v} = \mathrm{HKDF}(\mathrm{X25519}(s_u^{SK}, s_v^{PK}))`
   (the same for ``u`` and ``v``), ``u`` sends
   :math:`y_u = \bar x_u + \mathrm{PRG}(b_u) + \sum_{v \in U_2, v > u} \mathrm{PRG}(s_{u,v})
   - \sum_{v \in U_2, v < u} \mathrm{PRG}(s_{u,v}) \pmod{2^{64}}`.
3. *ConsistencyCheck* belongs to the paper's active-adversary variant and is omitted, as in its
   honest-but-curious protocol.
4. *Unmasking.* The server sends ``U3`` (who sent a masked input). Each surviving ``u`` in ``U3`` sends
   its share of :math:`s_v^{SK}` for every ``v`` in ``U2 \ U3`` (dropped before masking) and its share
   of :math:`b_v` for every ``v`` in ``U3`` (its own included); a client never reveals both kinds of
   share for the same peer, and refuses a second, different unmasking request. With ``|U5| >= t`` the
   server reconstructs those secrets (checking a reconstructed :math:`s_v^{SK}` against the advertised
   :math:`s_v^{PK}`, and any shares beyond ``t`` against the interpolating polynomial) and outputs
   :math:`z = \sum_{u \in U_3} y_u - \sum_{u \in U_3} \mathrm{PRG}(b_u) + \sum_{v \in U_2 \setminus U_3}
   \sum_{u \in U_3} \pm \mathrm{PRG}(s_{u,v}) = \sum_{u \in U_3} \bar x_u`.

Clients that drop after masking (``U3 \ U5``) stay in the sum: their input was sent, and the others'
shares of their :math:`b_u` remove its self mask. Clients that drop before masking are not in the sum.

**What the server learns**: the ids surviving each round, all public keys, ciphertexts it cannot
decrypt, each masked :math:`y_u` (uniform on :math:`\mathbb{Z}_{2^{64}}^m` by itself, being one-time
padded by :math:`\mathrm{PRG}(b_u)`), the sum over ``U3``, the reconstructed :math:`s_v^{SK}` of clients
whose :math:`y_v` it never received, and the :math:`b_u` of contributors, whose :math:`y_u` are still
hidden by pairwise masks whose keys are never revealed. Per the paper, the view of the server together
with fewer than ``t`` honest-but-curious clients reveals nothing about the honest clients' inputs
beyond the sum (computationally: X25519/HKDF/AES are assumed secure). A small ``U3`` makes the *sum*
itself revealing; choose ``t`` accordingly (``t > n / 2`` is the usual choice).

**Randomness.** For reproducible simulations every client's keys, seeds and Shamir coefficients come
from a numpy Generator seeded by ``(seed, client id)``. A real deployment must draw them from the OS
CSPRNG (``os.urandom`` / ``secrets``), and must use fresh keys for every aggregation.

Example:
    >>> import numpy as np
    >>> xs = {k: np.full(4, 0.25 * k) for k in range(5)}
    >>> res = secure_sum(xs, SecAggConfig(threshold=3), seed=0, drop_before_masking=[4])
    >>> res.contributors, res.sum.tolist()
    ((0, 1, 2, 3), [1.5, 1.5, 1.5, 1.5])
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trustnlp.errors import ConfigError, DataError, TrustNLPError, expected

__all__ = [
    "SHAMIR_PRIME",
    "AdvertiseKeys",
    "EncryptedShare",
    "MaskedInput",
    "Roster",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggResult",
    "SecAggServer",
    "SecAggStats",
    "ServerView",
    "ShareDelivery",
    "ShareKeys",
    "UnmaskRequest",
    "UnmaskingShares",
    "decode",
    "encode",
    "mask_stream",
    "secure_sum",
    "shamir_reconstruct",
    "shamir_shares",
    "shamir_split",
]

SHAMIR_PRIME = 2**521 - 1
"""The Mersenne prime field of the Shamir shares (secrets are 256-bit integers)."""

_SECRET_BYTES = 32
_FIELD_BYTES = (SHAMIR_PRIME.bit_length() + 7) // 8  # 66
_ID_BYTES = 8
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SEED_TAG = 0x5EC466  # separates these generators from other uses of the same seed
_GCM_NONCE = bytes(12)  # every share-encryption key encrypts exactly one message


class SecAggError(TrustNLPError, RuntimeError):
    """The secure aggregation protocol aborted (too few survivors, or inconsistent messages); no sum."""


# --------------------------------------------------------------------------------------------------
# Configuration, fixed-point encoding
# --------------------------------------------------------------------------------------------------


def _check_bits(f: object) -> int:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or not 0 <= int(f) <= 62:
        raise ConfigError(expected("fractional_bits", "an integer in [0, 62]", f))
    return int(f)


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation settings.

    Attributes:
        threshold: ``t``, the Shamir threshold and the minimum number of surviving clients at every
            round; ``2 <= t <= n`` (the upper bound is checked when ``n`` is known).
        fractional_bits: ``f``, fixed-point fractional bits (default 24): inputs need
            ``|x| * n < 2^(63 - f)``, and the sum is exact to ``n * 2^-(f+1)``.
    """

    threshold: int
    fractional_bits: int = 24

    def __post_init__(self) -> None:
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int | np.integer) or int(t) < 2:
            raise ConfigError(expected("threshold", "an integer >= 2", t))
        _check_bits(self.fractional_bits)

    def check_clients(self, n: int) -> None:
        """Raise :class:`ConfigError` unless ``threshold <= n``."""
        if int(self.threshold) > n:
            raise ConfigError(expected("threshold", f"<= the number of clients ({n})", self.threshold))


def encode(x: np.ndarray, f: int) -> np.ndarray:
    """Fixed point into the ring: ``round(x * 2^f) mod 2^64`` as ``uint64`` (same shape as ``x``).

    Args:
        x: finite real values with ``|x| < 2^(63 - f)``.
        f: fractional bits, in ``[0, 62]``.

    Raises:
        DataError: non-finite or too large values.
    """
    f = _check_bits(f)
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise DataError(expected("x", "finite", "non-finite values"))
    scaled = np.rint(arr * 2.0**f)
    if scaled.size and float(np.max(np.abs(scaled))) >= 2.0**63:
        raise DataError(expected("x", f"|x| < 2^(63-f) = {2.0 ** (63 - f):.6g} (f={f})", float(np.max(np.abs(arr)))))
    return scaled.astype(np.int64).view(np.uint64)


def decode(y: np.ndarray, f: int) -> np.ndarray:
    """Ring to float: read ``uint64`` values as signed int64 and divide by ``2^f``.

    Raises:
        DataError: ``y`` is not a ``uint64`` array.
    """
    f = _check_bits(f)
    arr = np.asarray(y)
    if arr.dtype != np.uint64:
        raise DataError(expected("y", "a uint64 array (ring elements)", str(arr.dtype)))
    return arr.view(np.int64).astype(np.float64) / 2.0**f


# --------------------------------------------------------------------------------------------------
# Shamir secret sharing over GF(p)
# --------------------------------------------------------------------------------------------------


def _field_element(rng: np.random.Generator, prime: int) -> int:
    """A uniform element of GF(prime) by rejection sampling from ``rng.bytes``."""
    bits = prime.bit_length()
    nbytes = (bits + 7) // 8
    mask = (1 << bits) - 1
    while True:
        value = int.from_bytes(rng.bytes(nbytes), "big") & mask
        if value < prime:
            return value


def _check_prime(prime: object) -> int:
    if isinstance(prime, bool) or not isinstance(prime, int) or prime < 3:
        raise ConfigError(expected("prime", "a prime integer >= 3", prime))
    return prime


def shamir_shares(coefficients: Sequence[int], n: int, *, prime: int = SHAMIR_PRIME) -> list[tuple[int, int]]:
    """Evaluate :math:`q(x) = \\sum_j a_j x^j \\bmod p` at ``x = 1..n`` (``coefficients[0]`` is the secret).

    Returns:
        ``[(x, q(x)) for x in 1..n]``.
    """
    prime = _check_prime(prime)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < prime:
        raise ConfigError(expected("n", f"an integer in [1, {prime})", n))
    shares = []
    for x in range(1, n + 1):
        y = 0
        for a in reversed(coefficients):  # Horner
            y = (y * x + int(a)) % prime
        shares.append((x, y))
    return shares


def shamir_split(secret: int, n: int, t: int, rng: np.random.Generator, *,
                 prime: int = SHAMIR_PRIME) -> list[tuple[int, int]]:
    """Split ``secret`` into ``n`` Shamir shares, any ``t`` of which reconstruct it (Shamir 1979).

    The polynomial :math:`q(x) = s + a_1 x + \\dots + a_{t-1} x^{t-1}` over GF(``prime``) has
    coefficients uniform in the field, so any ``t - 1`` shares are uniformly distributed whatever the
    secret (perfect secrecy).

    Args:
        secret: an integer in ``[0, prime)``.
        n: number of shares (points ``x = 1..n``).
        t: threshold, ``1 <= t <= n``.
        rng: anything with ``bytes(k)`` (a numpy Generator here; ``secrets``-backed in a real deployment).
        prime: the field's prime (default :data:`SHAMIR_PRIME` = 2^521 - 1).

    Returns:
        ``[(x, q(x)) for x in 1..n]``.
    """
    prime = _check_prime(prime)
    if isinstance(secret, bool) or not isinstance(secret, int) or not 0 <= secret < prime:
        raise DataError(expected("secret", f"an integer in [0, prime) (prime has {prime.bit_length()} bits)",
                                 secret if isinstance(secret, int) and secret.bit_length() < 64 else type(secret)))
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ConfigError(expected("t", "an integer >= 1", t))
    if isinstance(n, bool) or not isinstance(n, int) or not t <= n < prime:
        raise ConfigError(expected("n", f"an integer in [t={t}, prime)", n))
    if not hasattr(rng, "bytes"):
        raise ConfigError(expected("rng", "a generator with a bytes(k) method (numpy Generator)", type(rng).__name__))
    coefficients = [secret] + [_field_element(rng, prime) for _ in range(t - 1)]
    return shamir_shares(coefficients, n, prime=prime)


def _lagrange_at(points: Sequence[tuple[int, int]], x: int, prime: int) -> int:
    """Value at ``x`` of the polynomial of degree < len(points) through ``points`` (mod prime)."""
    total = 0
    for j, (xj, yj) in enumerate(points):
        num, den = 1, 1
        for k, (xk, _) in enumerate(points):
            if k != j:
                num = num * (x - xk) % prime
                den = den * (xj - xk) % prime
        total = (total + yj * num * pow(den, -1, prime)) % prime
    return total


def _check_shares(shares: Sequence[tuple[int, int]], prime: int) -> list[tuple[int, int]]:
    points = [(int(x), int(y)) for x, y in shares]
    if not points:
        raise DataError(expected("shares", "at least one (x, y) share", "none"))
    xs = [x for x, _ in points]
    if len(set(xs)) != len(xs):
        raise DataError(expected("shares", "shares with distinct x", sorted(xs)))
    for x, y in points:
        if not (1 <= x < prime and 0 <= y < prime):
            raise DataError(expected("shares", "(x, y) with 1 <= x < prime and 0 <= y < prime", x))
    return points


def shamir_reconstruct(shares: Sequence[tuple[int, int]], *, prime: int = SHAMIR_PRIME) -> int:
    """Lagrange interpolation at 0 of the shares ``[(x, y), ...]``: the secret when ``>= t`` shares are given.

    With fewer than ``t`` shares the result is unrelated to the secret (a uniformly distributed value
    over the random polynomials consistent with the shares).
    """
    prime = _check_prime(prime)
    return _lagrange_at(_check_shares(shares, prime), 0, prime)


# --------------------------------------------------------------------------------------------------
# Key agreement, key derivation, masks, share encryption
# --------------------------------------------------------------------------------------------------


def mask_stream(seed: bytes, length: int) -> np.ndarray:
    """``length`` uint64 words of the AES-256-CTR keystream of the 32-byte ``seed`` (zero nonce), little-endian."""
    if not isinstance(seed, bytes | bytearray) or len(seed) != _SECRET_BYTES:
        raise ConfigError(expected("seed", f"{_SECRET_BYTES} bytes", type(seed).__name__))
    encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * int(length))) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def _id_bytes(client_id: int) -> bytes:
    return int(client_id).to_bytes(_ID_BYTES, "big", signed=True)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_SECRET_BYTES, salt=None, info=info).derive(secret)


def _pairwise_seed(private: X25519PrivateKey, peer_public: bytes, u: int, v: int) -> bytes:
    """:math:`s_{u,v}`: HKDF of the X25519 secret, bound to the unordered pair (the same for u and v)."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    a, b = sorted((u, v))
    return _hkdf(shared, b"trustnlp/secagg/pairwise-mask/" + _id_bytes(a) + _id_bytes(b))


def _share_key(private: X25519PrivateKey, peer_public: bytes, sender: int, recipient: int) -> bytes:
    """AES-256-GCM key for the one message ``sender -> recipient`` (a distinct key per direction)."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return _hkdf(shared, b"trustnlp/secagg/share-encryption/" + _id_bytes(sender) + _id_bytes(recipient))


def _signed_sum(base: np.ndarray, mask: np.ndarray, add: bool) -> np.ndarray:
    return base + mask if add else base - mask


def _int_secret(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _secret_bytes(value: int, what: str) -> bytes:
    if value >= 1 << (8 * _SECRET_BYTES):
        raise SecAggError(f"The reconstructed {what} is not a {_SECRET_BYTES}-byte value: the shares are corrupt.")
    return value.to_bytes(_SECRET_BYTES, "big")


# --------------------------------------------------------------------------------------------------
# Messages (the only things that pass between clients and the server)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client -> server: the two X25519 public keys (32 raw bytes each)."""

    sender: int
    cipher_public_key: bytes
    mask_public_key: bytes


@dataclass(frozen=True)
class Roster:
    """Round 0, server -> clients: ``U1`` (sorted) and each client's public keys ``(cipher, mask)``."""

    participants: tuple[int, ...]
    public_keys: Mapping[int, tuple[bytes, bytes]]

    def point(self, client_id: int) -> int:
        """The Shamir share point of ``client_id``: 1 + its index in ``participants``."""
        return self.participants.index(client_id) + 1


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1: ``sender``'s shares for ``recipient``, AES-256-GCM encrypted (opaque to the server)."""

    sender: int
    recipient: int
    ciphertext: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Round 1, client -> server: one :class:`EncryptedShare` per other client of ``U1``."""

    sender: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class ShareDelivery:
    """Round 1, server -> client: ``U2`` and the ciphertexts addressed to ``recipient``."""

    recipient: int
    participants: tuple[int, ...]
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2, client -> server: :math:`y_u` (read-only uint64 vector)."""

    sender: int
    masked: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4, server -> clients: ``U3``, the clients whose masked input arrived."""

    survivors: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskingShares:
    """Round 4, client -> server: shares ``(x, y)`` of :math:`s_v^{SK}` (v dropped) and of :math:`b_v` (v in U3)."""

    sender: int
    mask_key_shares: Mapping[int, tuple[int, int]]
    self_seed_shares: Mapping[int, tuple[int, int]]


@dataclass
class ServerView:
    """Everything the server received, in order (``messages``) and indexed by kind."""

    messages: list[object] = field(default_factory=list)
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    ciphertexts: dict[tuple[int, int], bytes] = field(default_factory=dict)
    masked_inputs: dict[int, np.ndarray] = field(default_factory=dict)
    unmasking: dict[int, UnmaskingShares] = field(default_factory=dict)
    survivors: dict[str, tuple[int, ...]] = field(default_factory=dict)  # "U1", "U2", "U3", "U5"


# --------------------------------------------------------------------------------------------------
# Parties
# --------------------------------------------------------------------------------------------------


def _abort(round_name: str, survivors: int, total: int, t: int, what: str) -> SecAggError:
    return SecAggError(
        f"Secure aggregation aborted at {round_name}: only {survivors} of {total} clients {what}, below the "
        f"threshold t={t}; no sum is returned.")


class SecAggClient:
    """One honest-but-curious client: holds its input and secrets, answers the server's messages.

    Args:
        client_id: the client's id (an int64).
        vector: its input, already validated (finite, 1-D, within the ring bound).
        config: the protocol settings.
        rng: source of its keys, self-mask seed and Shamir coefficients (``os.urandom`` in a real deployment).
    """

    def __init__(self, client_id: int, vector: np.ndarray, config: SecAggConfig, rng: np.random.Generator) -> None:
        self.client_id = int(client_id)
        self._config = config
        self._x = encode(np.asarray(vector, dtype=np.float64).ravel(), config.fractional_bits)
        self._rng = rng
        self._cipher_key = X25519PrivateKey.from_private_bytes(rng.bytes(_SECRET_BYTES))
        self._mask_key = X25519PrivateKey.from_private_bytes(rng.bytes(_SECRET_BYTES))
        self._self_seed: bytes | None = None
        self._roster: Roster | None = None
        self._u2: tuple[int, ...] | None = None
        self._held: dict[int, tuple[int, int]] = {}  # peer -> (share of s_peer^SK, share of b_peer) at my point
        self._point = 0
        self._revealed: dict[int, str] = {}  # peer -> "mask_key" | "self_seed"
        self._answered: tuple[int, ...] | None = None

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            raise SecAggError(f"Client {self.client_id} refuses: {what}.")

    def advertise_keys(self) -> AdvertiseKeys:
        """Round 0: the public keys."""
        return AdvertiseKeys(self.client_id, self._cipher_key.public_key().public_bytes_raw(),
                             self._mask_key.public_key().public_bytes_raw())

    def share_keys(self, roster: Roster) -> ShareKeys:
        """Round 1: Shamir-share :math:`s_u^{SK}` and a fresh :math:`b_u`; encrypt each peer's pair of shares."""
        t = int(self._config.threshold)
        u = self.client_id
        if len(roster.participants) < t:
            raise _abort("round 0 (AdvertiseKeys), seen by client", len(roster.participants),
                         len(roster.participants), t, "advertised keys")
        own = (self._cipher_key.public_key().public_bytes_raw(), self._mask_key.public_key().public_bytes_raw())
        self._check(roster.public_keys.get(u) == own, "the roster does not carry its own public keys")
        self._check(len(set(roster.participants)) == len(roster.participants), "the roster repeats a client")
        self._roster = roster
        self._point = roster.point(u)
        self._self_seed = self._rng.bytes(_SECRET_BYTES)
        n = len(roster.participants)
        key_shares = shamir_split(_int_secret(self._mask_key.private_bytes_raw()), n, t, self._rng)
        seed_shares = shamir_split(_int_secret(self._self_seed), n, t, self._rng)
        out = []
        for v, (_point, sy), (_, by) in zip(roster.participants, key_shares, seed_shares, strict=True):
            if v == u:
                self._held[u] = (sy, by)
                continue
            header = _id_bytes(u) + _id_bytes(v)
            plain = header + sy.to_bytes(_FIELD_BYTES, "big") + by.to_bytes(_FIELD_BYTES, "big")
            key = _share_key(self._cipher_key, roster.public_keys[v][0], u, v)
            out.append(EncryptedShare(u, v, AESGCM(key).encrypt(_GCM_NONCE, plain, header)))
        return ShareKeys(u, tuple(out))

    def masked_input(self, delivery: ShareDelivery) -> MaskedInput:
        """Round 2: decrypt the shares received, then send :math:`y_u` (self mask + pairwise masks over ``U2``)."""
        t = int(self._config.threshold)
        u = self.client_id
        roster = self._roster
        self._check(roster is not None and self._self_seed is not None, "round 2 came before round 1")
        assert roster is not None and self._self_seed is not None
        u2 = tuple(delivery.participants)
        if len(u2) < t:
            raise _abort("round 1 (ShareKeys), seen by client", len(u2), len(roster.participants), t, "shared keys")
        self._check(delivery.recipient == u and u in u2, "the delivery is not addressed to a member of U2")
        self._check(set(u2) <= set(roster.participants), "U2 names clients outside U1")
        for message in delivery.shares:
            v = message.sender
            self._check(message.recipient == u and v in u2 and v != u, f"unexpected share from client {v}")
            header = _id_bytes(v) + _id_bytes(u)
            key = _share_key(self._cipher_key, roster.public_keys[v][0], v, u)
            try:
                plain = AESGCM(key).decrypt(_GCM_NONCE, message.ciphertext, header)
            except InvalidTag as err:
                raise SecAggError(f"Client {u} could not authenticate the shares from client {v}.") from err
            self._check(plain[: 2 * _ID_BYTES] == header, f"the shares from client {v} name other parties")
            body = plain[2 * _ID_BYTES:]
            self._held[v] = (int.from_bytes(body[:_FIELD_BYTES], "big"), int.from_bytes(body[_FIELD_BYTES:], "big"))
        missing = sorted(set(u2) - set(self._held))
        self._check(not missing, f"no shares from clients {missing} of U2")
        self._u2 = u2
        y = self._x + mask_stream(self._self_seed, self._x.size)
        for v in u2:
            if v != u:
                seed = _pairwise_seed(self._mask_key, roster.public_keys[v][1], u, v)
                y = _signed_sum(y, mask_stream(seed, self._x.size), add=u < v)
        y.setflags(write=False)
        return MaskedInput(u, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskingShares:
        """Round 4: shares of :math:`s_v^{SK}` for ``v`` in ``U2 \\ U3``, of :math:`b_v` for ``v`` in ``U3``.

        Raises:
            SecAggError: ``U3`` is too small or inconsistent, this client sent no masked input, or the
                request would make it reveal both shares of some peer (a second, different request).
        """
        t = int(self._config.threshold)
        u = self.client_id
        self._check(self._u2 is not None, "round 4 came before round 2")
        assert self._u2 is not None
        u3 = tuple(sorted(set(request.survivors)))
        if len(u3) < t:
            raise _abort("round 2 (MaskedInputCollection), seen by client", len(u3), len(self._u2), t,
                         "sent masked input")
        self._check(set(u3) <= set(self._u2), "U3 names clients outside U2")
        self._check(u in u3, "it is not in U3 although it sent its masked input")
        self._check(self._answered is None or self._answered == u3,
                    "a second unmasking request with a different U3 would reveal both shares of a peer")
        dropped = [v for v in self._u2 if v not in u3]
        for v in dropped:
            self._check(self._revealed.get(v, "mask_key") == "mask_key", f"it revealed client {v}'s self-seed share")
        for v in u3:
            self._check(self._revealed.get(v, "self_seed") == "self_seed", f"it revealed client {v}'s mask-key share")
        self._answered = u3
        self._revealed.update({v: "mask_key" for v in dropped})
        self._revealed.update({v: "self_seed" for v in u3})
        return UnmaskingShares(
            u,
            mask_key_shares={v: (self._point, self._held[v][0]) for v in dropped},
            self_seed_shares={v: (self._point, self._held[v][1]) for v in u3},
        )


class SecAggServer:
    """The honest-but-curious server: relays, checks survivor counts, unmasks the sum.

    It only ever receives the message objects of the protocol; :attr:`view` records all of them.
    """

    def __init__(self, config: SecAggConfig) -> None:
        self._config = config
        self.view = ServerView()
        self._roster: Roster | None = None
        self._length: int | None = None
        self.pairwise_masks_removed = 0
        self.self_masks_removed = 0

    def _senders(self, messages: Sequence[object], allowed: Collection[int], round_name: str) -> list[int]:
        senders = [int(m.sender) for m in messages]  # type: ignore[attr-defined]
        if len(set(senders)) != len(senders):
            raise SecAggError(f"Duplicate senders at {round_name}: {sorted(senders)}.")
        outside = sorted(set(senders) - set(allowed))
        if outside:
            raise SecAggError(f"Clients {outside} sent a message at {round_name} without being in the previous round.")
        self.view.messages.extend(messages)
        return sorted(senders)

    def _require(self, survivors: Sequence[int], total: int, round_name: str, what: str) -> None:
        t = int(self._config.threshold)
        if len(survivors) < t:
            raise _abort(round_name, len(survivors), total, t, what)

    def collect_keys(self, messages: Sequence[AdvertiseKeys]) -> Roster:
        """Round 0: record the public keys; broadcast ``U1``."""
        ids = self._senders(messages, [m.sender for m in messages], "round 0 (AdvertiseKeys)")
        for m in messages:
            self.view.public_keys[m.sender] = (bytes(m.cipher_public_key), bytes(m.mask_public_key))
        self.view.survivors["U1"] = tuple(ids)
        self._require(ids, len(ids), "round 0 (AdvertiseKeys)", "advertised keys")
        self._roster = Roster(tuple(ids), dict(self.view.public_keys))
        return self._roster

    def collect_shares(self, messages: Sequence[ShareKeys]) -> dict[int, ShareDelivery]:
        """Round 1: relay each ciphertext to its recipient; deliveries go to ``U2`` only."""
        assert self._roster is not None, "round 1 before round 0"
        u1 = self._roster.participants
        u2 = self._senders(messages, u1, "round 1 (ShareKeys)")
        for m in messages:
            recipients = sorted(s.recipient for s in m.shares)
            if recipients != sorted(v for v in u1 if v != m.sender) or any(s.sender != m.sender for s in m.shares):
                raise SecAggError(f"Client {m.sender}'s ShareKeys message does not address every other client of U1 once.")
            for s in m.shares:
                self.view.ciphertexts[(s.sender, s.recipient)] = s.ciphertext
        self.view.survivors["U2"] = tuple(u2)
        self._require(u2, len(u1), "round 1 (ShareKeys)", "shared their keys")
        return {v: ShareDelivery(v, tuple(u2), tuple(EncryptedShare(w, v, self.view.ciphertexts[(w, v)])
                                                      for w in u2 if w != v)) for v in u2}

    def collect_masked(self, messages: Sequence[MaskedInput]) -> UnmaskRequest:
        """Round 2: record the masked vectors; ask ``U3`` for the unmasking shares."""
        u2 = self.view.survivors.get("U2")
        assert u2 is not None, "round 2 before round 1"
        u3 = self._senders(messages, u2, "round 2 (MaskedInputCollection)")
        for m in messages:
            y = np.asarray(m.masked)
            if y.dtype != np.uint64 or y.ndim != 1 or (self._length is not None and y.size != self._length):
                raise SecAggError(f"Client {m.sender}'s masked input is not a uint64 vector of the common length.")
            self._length = y.size
            self.view.masked_inputs[m.sender] = y
        self.view.survivors["U3"] = tuple(u3)
        self._require(u3, len(u2), "round 2 (MaskedInputCollection)", "sent their masked input")
        return UnmaskRequest(tuple(u3))

    def _reconstruct(self, shares: list[tuple[int, int]], what: str) -> int:
        """The secret from ``t`` shares; any further shares must lie on the same polynomial."""
        t = int(self._config.threshold)
        if len(shares) < t:
            raise SecAggError(f"Only {len(shares)} shares of {what}, below the threshold t={t}.")
        base = shares[:t]
        for x, y in shares[t:]:
            if _lagrange_at(base, x, SHAMIR_PRIME) != y:
                raise SecAggError(f"The shares of {what} are inconsistent (corrupt or forged); no sum is returned.")
        return _lagrange_at(base, 0, SHAMIR_PRIME)

    def collect_unmasking(self, messages: Sequence[UnmaskingShares]) -> np.ndarray:
        """Round 4: reconstruct the dropped clients' mask keys and the contributors' self seeds; return the sum.

        Returns:
            :math:`\\sum_{u \\in U_3} \\bar x_u` as a uint64 vector.
        """
        u2, u3 = self.view.survivors.get("U2"), self.view.survivors.get("U3")
        assert u2 is not None and u3 is not None and self._length is not None, "round 4 before round 2"
        u5 = self._senders(messages, u3, "round 4 (Unmasking)")
        dropped = [v for v in u2 if v not in u3]
        for m in messages:
            if sorted(m.mask_key_shares) != dropped or sorted(m.self_seed_shares) != list(u3):
                raise SecAggError(f"Client {m.sender}'s unmasking shares do not match U2 \\ U3 and U3.")
            self.view.unmasking[m.sender] = m
        self.view.survivors["U5"] = tuple(u5)
        self._require(u5, len(u3), "round 4 (Unmasking)", "sent their unmasking shares")
        responders = [self.view.unmasking[w] for w in u5]
        total = np.zeros(self._length, dtype=np.uint64)
        for u in u3:
            total = total + self.view.masked_inputs[u]
        for u in u3:
            seed = _secret_bytes(self._reconstruct([r.self_seed_shares[u] for r in responders],
                                                   f"client {u}'s self-mask seed"), "self-mask seed")
            total = total - mask_stream(seed, self._length)
            self.self_masks_removed += 1
        for v in dropped:
            secret = self._reconstruct([r.mask_key_shares[v] for r in responders], f"client {v}'s mask key")
            key = X25519PrivateKey.from_private_bytes(_secret_bytes(secret, "mask key"))
            if key.public_key().public_bytes_raw() != self.view.public_keys[v][1]:
                raise SecAggError(f"The reconstructed mask key of client {v} does not match its public key.")
            for u in u3:
                seed = _pairwise_seed(key, self.view.public_keys[u][1], u, v)
                # y_u carries +PRG(s_uv) when u < v and -PRG(s_uv) when u > v: undo it.
                total = _signed_sum(total, mask_stream(seed, self._length), add=u > v)
                self.pairwise_masks_removed += 1
        return total


# --------------------------------------------------------------------------------------------------
# One aggregation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecAggStats:
    """Transcript sizes, as received by the server (bytes), and its unmasking work."""

    n_clients: int
    vector_length: int
    messages_received: int
    public_key_bytes: int
    ciphertext_bytes: int
    masked_input_bytes: int
    unmasking_share_bytes: int
    pairwise_masks_removed: int
    self_masks_removed: int

    @property
    def total_bytes(self) -> int:
        """All bytes the server received."""
        return self.public_key_bytes + self.ciphertext_bytes + self.masked_input_bytes + self.unmasking_share_bytes


@dataclass(frozen=True, eq=False)
class SecAggResult:
    """The outcome of :func:`secure_sum`.

    Attributes:
        sum: the decoded sum (float64, the inputs' shape) over ``contributors``.
        sum_encoded: the same sum in the ring (uint64), exactly :math:`\\sum \\bar x_u \\bmod 2^{64}`.
        contributors: ids whose input is in the sum (``U3``: they sent their masked input).
        dropped_before_sharing: ids that advertised keys but sent no shares (in no one's masks).
        dropped_before: ids that shared keys but sent no masked input (their pairwise masks were removed).
        dropped_after: ids that sent a masked input but no unmasking shares (still in the sum).
        stats: transcript sizes.
        server_view: everything the server received.
    """

    sum: np.ndarray
    sum_encoded: np.ndarray
    contributors: tuple[int, ...]
    dropped_before_sharing: tuple[int, ...]
    dropped_before: tuple[int, ...]
    dropped_after: tuple[int, ...]
    stats: SecAggStats
    server_view: ServerView


def _client_ids(ids: Collection[object], name: str, known: Collection[int]) -> set[int]:
    out = set()
    for cid in ids:
        if isinstance(cid, bool):
            raise ConfigError(expected(name, "client ids (ints)", cid))
        try:
            value = operator.index(cid)  # type: ignore[arg-type]
        except TypeError as err:
            raise ConfigError(expected(name, "client ids (ints)", cid)) from err
        if value not in known:
            raise ConfigError(expected(name, f"ids of clients in `inputs` ({sorted(known)})", value))
        out.add(value)
    return out


def _validate_inputs(inputs: Mapping[int, np.ndarray], f: int) -> tuple[dict[int, np.ndarray], tuple[int, ...]]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise DataError(expected("inputs", "a non-empty mapping client id -> vector", type(inputs).__name__))
    n = len(inputs)
    bound = 2.0 ** (63 - f)
    vectors: dict[int, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    first = None
    for cid, vec in inputs.items():
        if isinstance(cid, bool) or not isinstance(cid, int | np.integer) or not _INT64_MIN <= int(cid) <= _INT64_MAX:
            raise DataError(expected("inputs", "keyed by int64 client ids", cid))
        cid = int(cid)
        try:
            arr = np.asarray(vec, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(expected(f"inputs[{cid}]", "a real-valued array", type(vec).__name__)) from err
        if arr.ndim == 0 or arr.size == 0:
            raise DataError(expected(f"inputs[{cid}]", "a non-empty vector", f"shape {arr.shape}"))
        if shape is None:
            shape, first = arr.shape, cid
        elif arr.shape != shape:
            raise DataError(expected(f"inputs[{cid}]", f"of shape {shape} like client {first}'s", f"shape {arr.shape}"))
        if not np.all(np.isfinite(arr)):
            raise DataError(expected(f"inputs[{cid}]", "finite", f"{int(np.sum(~np.isfinite(arr)))} non-finite values"))
        biggest = float(np.max(np.abs(arr)))
        if biggest * n >= bound:
            raise DataError(
                f"Client {cid}'s input would overflow the ring Z_2^64: max |x| = {biggest:.6g}, but summing n={n} "
                f"clients with f={f} fractional bits needs |x| * n < 2^(63-f) = {bound:.6g}, i.e. |x| < "
                f"{bound / n:.6g}. Scale the inputs down or lower `fractional_bits`.")
        vectors[cid] = arr
    assert shape is not None
    return vectors, shape


def secure_sum(inputs: Mapping[int, np.ndarray], config: SecAggConfig, *, seed: int,
               drop_before_sharing: Collection[int] = (), drop_before_masking: Collection[int] = (),
               drop_after_masking: Collection[int] = ()) -> SecAggResult:
    """Sum the clients' vectors with secure aggregation, simulating the protocol rounds and dropouts.

    Every client advertises keys (round 0). Clients in ``drop_before_sharing`` then vanish (no shares,
    in no one's masks); those in ``drop_before_masking`` vanish after sharing their keys (round 1), so
    their pairwise masks must be removed from the others' inputs; those in ``drop_after_masking``
    vanish after sending their masked input (round 2), which stays in the sum.

    Args:
        inputs: client id (int64) -> vector; all of the same shape, finite, ``|x| * n < 2^(63 - f)``.
        config: threshold ``t`` (``2 <= t <= n``) and fractional bits ``f``.
        seed: non-negative int; all keys, seeds and Shamir coefficients derive from ``(seed, client id)``.
        drop_before_sharing: ids dropping between rounds 0 and 1.
        drop_before_masking: ids dropping between rounds 1 and 2.
        drop_after_masking: ids dropping between rounds 2 and 4.

    Returns:
        The :class:`SecAggResult`: the sum over the clients that sent a masked input.

    Raises:
        ConfigError: bad ``config``/``seed``/dropout ids (unknown, or in two lists).
        DataError: bad inputs (shape, non-finite, ring overflow; the message names the client).
        SecAggError: fewer than ``t`` clients survived some round (the message says which and how many).
    """
    if not isinstance(config, SecAggConfig):
        raise ConfigError(expected("config", "a SecAggConfig", type(config).__name__))
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise ConfigError(expected("seed", "a non-negative integer", seed))
    f = int(config.fractional_bits)
    vectors, shape = _validate_inputs(inputs, f)
    ids = sorted(vectors)
    config.check_clients(len(ids))
    before_sharing = _client_ids(drop_before_sharing, "drop_before_sharing", ids)
    before = _client_ids(drop_before_masking, "drop_before_masking", ids)
    after = _client_ids(drop_after_masking, "drop_after_masking", ids)
    for (name_a, a), (name_b, b) in [(("drop_before_sharing", before_sharing), ("drop_before_masking", before)),
                                     (("drop_before_sharing", before_sharing), ("drop_after_masking", after)),
                                     (("drop_before_masking", before), ("drop_after_masking", after))]:
        if a & b:
            raise ConfigError(expected(name_b, f"disjoint from `{name_a}`", sorted(a & b)))

    def rng_for(cid: int) -> np.random.Generator:
        zigzag = 2 * cid if cid >= 0 else -2 * cid - 1
        return np.random.default_rng(np.random.SeedSequence([int(seed), _SEED_TAG, zigzag]))

    clients = {cid: SecAggClient(cid, vectors[cid], config, rng_for(cid)) for cid in ids}
    server = SecAggServer(config)
    # Round 0: AdvertiseKeys.
    roster = server.collect_keys([clients[c].advertise_keys() for c in ids])
    # Round 1: ShareKeys.
    deliveries = server.collect_shares([clients[c].share_keys(roster) for c in roster.participants
                                        if c not in before_sharing])
    # Round 2: MaskedInputCollection.
    request = server.collect_masked([clients[c].masked_input(deliveries[c]) for c in sorted(deliveries)
                                     if c not in before])
    # Round 4: Unmasking.
    total = server.collect_unmasking([clients[c].unmask(request) for c in request.survivors if c not in after])

    view = server.view
    length = int(total.size)
    share_bytes = _ID_BYTES + _FIELD_BYTES
    stats = SecAggStats(
        n_clients=len(ids),
        vector_length=length,
        messages_received=len(view.messages),
        public_key_bytes=sum(len(a) + len(b) for a, b in view.public_keys.values()),
        ciphertext_bytes=sum(len(c) for c in view.ciphertexts.values()),
        masked_input_bytes=sum(int(y.nbytes) for y in view.masked_inputs.values()),
        unmasking_share_bytes=sum(share_bytes * (len(m.mask_key_shares) + len(m.self_seed_shares))
                                  for m in view.unmasking.values()),
        pairwise_masks_removed=server.pairwise_masks_removed,
        self_masks_removed=server.self_masks_removed,
    )
    u2, u3, u5 = view.survivors["U2"], view.survivors["U3"], view.survivors["U5"]
    total.setflags(write=False)
    return SecAggResult(
        sum=decode(total, f).reshape(shape),
        sum_encoded=total.reshape(shape),
        contributors=tuple(u3),
        dropped_before_sharing=tuple(c for c in ids if c not in u2),
        dropped_before=tuple(c for c in u2 if c not in u3),
        dropped_after=tuple(c for c in u3 if c not in u5),
        stats=stats,
        server_view=view,
    )
