"""Gaussian noise sources for DP-SGD: a seeded torch generator and a cryptographically secure one.

DP-SGD adds ``N(0, σ² C² I)`` noise to the clipped gradient sum. The privacy proof assumes that the
noise is *unpredictable* to the adversary. A seeded pseudo-random generator (:class:`TorchNoise`,
Mersenne Twister) is fine for experiments and exact reproducibility, but whoever knows or recovers
the seed can subtract the noise and read the un-noised gradient sums, so it is **not** a secure
source: results record ``secure: false``. :class:`SecureNoise` draws its randomness from AES-256 in
counter mode keyed with 32 bytes from ``os.urandom`` and is the source to use for a release.

Both sources are deterministic functions of a small state (generator state / key and counter), so
``state_dict()`` + ``load_state_dict()`` continue the same noise stream after a checkpoint resume.
The states hold tensors, ints and strings only (checkpointed via safetensors + JSON).

Example:
    >>> src = make_noise_source(secure=False, seed=0)
    >>> grads = [torch.zeros(3), torch.zeros(2, 2)]
    >>> src.add_(grads, std=1.0)   # in place: every tensor gets fresh N(0, 1) noise
    >>> bool(grads[0].abs().sum() > 0)
    True
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from trustnlp.errors import ConfigError, MissingDependencyError, expected

__all__ = ["NoiseSource", "TorchNoise", "SecureNoise", "make_noise_source"]

Shape = int | Sequence[int] | torch.Size
State = dict[str, torch.Tensor | int | str]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# TorchNoise splits draws of at least _SPLIT_MIN values into _STREAMS parallel streams (fixed, so the
# numbers do not depend on the machine's thread count).
_SPLIT_MIN = 1 << 16
_STREAMS = 2
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=_STREAMS - 1, thread_name_prefix="trustnlp-noise")
        return _POOL


def _check_std(std: float) -> float:
    if isinstance(std, bool) or not isinstance(std, int | float) or not math.isfinite(std) or std < 0:
        raise ConfigError(expected("std", "a finite number >= 0", std))
    return float(std)


def _check_shape(shape: Shape) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in dims):
        raise ConfigError(expected("shape", "a sequence of non-negative ints", shape))
    return dims


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _FLOAT_DTYPES:
        raise ConfigError(expected("dtype", "a floating-point dtype (float16, bfloat16, float32, float64)", dtype))


class NoiseSource(ABC):
    """A stream of Gaussian noise with a checkpointable state.

    Attributes:
        secure: whether the stream is cryptographically unpredictable (record it in results).
        kind: short name of the source (``"torch"`` or ``"secure"``), also stored in the state.
        algorithm: what produces the numbers, for the results file.
    """

    secure: bool
    kind: str
    algorithm: str

    def normal(self, shape: Shape, *, std: float, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
        """A fresh tensor of i.i.d. ``N(0, std²)`` draws.

        Args:
            shape: the shape of the result.
            std: the standard deviation σ ≥ 0. ``std == 0`` returns zeros and consumes nothing.
            dtype: a floating-point dtype (half precision is drawn in float32, then rounded).
            device: where the result lives (numbers are drawn on the CPU, then moved).

        Returns:
            The noise tensor.
        """
        dims = _check_shape(shape)
        std = _check_std(std)
        _check_dtype(dtype)
        if std == 0.0 or math.prod(dims) == 0:
            return torch.zeros(dims, dtype=dtype, device=device)
        draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        out = self._standard_normal(math.prod(dims), std=std, dtype=draw_dtype).view(dims)
        return out.to(dtype=dtype, device=device)

    def add_(self, tensors: Sequence[torch.Tensor], *, std: float) -> None:
        """Add fresh ``N(0, std²)`` noise to every tensor, in place (e.g. every trainable parameter's grad).

        Each tensor gets its own draw, in order, in its own dtype and on its own device. A ``None``
        entry is an error: for an empty Poisson batch the caller must still noise a zero gradient,
        otherwise an un-noised "no update" would reveal that the batch was empty.

        Args:
            tensors: the tensors to noise (modified in place).
            std: the standard deviation σ ≥ 0 (``σ = noise_multiplier · max_grad_norm``).
        """
        std = _check_std(std)
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise ConfigError(
                    expected(f"tensors[{i}]", "a tensor (set missing gradients to zeros before noising them)", t)
                )
            if t.dtype not in _FLOAT_DTYPES:
                raise ConfigError(expected(f"tensors[{i}].dtype", "a floating-point dtype", t.dtype))
        if std == 0.0:
            return
        with torch.no_grad():
            for t in tensors:
                self._add_to(t, std)

    def _add_to(self, t: torch.Tensor, std: float) -> None:
        """``t += N(0, std²)`` (``std > 0``); sources with a faster in-place path override this."""
        t.add_(self.normal(t.shape, std=std, dtype=t.dtype, device=t.device))

    @abstractmethod
    def _standard_normal(self, n: int, *, std: float, dtype: torch.dtype) -> torch.Tensor:
        """``n`` i.i.d. ``N(0, std²)`` values as a flat CPU tensor of ``dtype`` (float32 or float64); ``n > 0``."""

    @abstractmethod
    def state_dict(self) -> State:
        """The state that determines all future draws (tensors, ints and strings only)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`."""

    def describe(self) -> dict[str, Any]:
        """What to record in a results file: ``{"kind", "secure", "algorithm"}``."""
        return {"kind": self.kind, "secure": self.secure, "algorithm": self.algorithm}

    def _check_kind(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ConfigError(expected('state["kind"]', repr(self.kind), state.get("kind")))


def _derive_seed(label: str, seed: int) -> int:
    """A 64-bit seed from ``seed`` and a domain label (so equal user seeds give unrelated streams)."""
    return int.from_bytes(hashlib.sha256(f"trustnlp.{label}:{seed}".encode()).digest()[:8], "little")


class TorchNoise(NoiseSource):
    """Noise from a seeded ``torch.Generator`` (Mersenne Twister): reproducible, **not secure**.

    The generator is seeded with ``sha256("trustnlp.noise:<seed>")`` rather than ``seed`` itself, so
    that the noise is not the very stream that ``torch.manual_seed(seed)`` gives the model's
    initialisation or a sampler seeded with the same number.

    Args:
        seed: a non-negative integer.
    """

    secure = False
    kind = "torch"
    algorithm = "torch.Generator (mt19937) normal_; draws of >= 65536 values in 2 streams seeded from it"

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(expected("seed", "a non-negative int", seed))
        self.seed = seed
        self._gen = torch.Generator(device="cpu").manual_seed(_derive_seed("noise", seed))
        self._scratch: dict[torch.dtype, torch.Tensor] = {}

    def _fill(self, out: torch.Tensor, std: float) -> None:
        """Fill the flat CPU tensor ``out`` with ``N(0, std²)`` draws.

        A draw of at least ``_SPLIT_MIN`` values is cut into ``_STREAMS`` contiguous parts, each
        from its own generator seeded by the main one, and the parts are drawn on parallel threads
        (``torch``'s Gaussian kernel is single-threaded: 1.3M values take ~4 ms on one core). The
        split is fixed, so the numbers do not depend on how many threads there are.
        """
        n = out.numel()
        if n < _SPLIT_MIN:
            out.normal_(0.0, std, generator=self._gen)
            return
        seeds = torch.randint(0, 2**62, (_STREAMS,), generator=self._gen).tolist()
        parts = out.tensor_split(_STREAMS)
        gens = [torch.Generator(device="cpu").manual_seed(int(sd)) for sd in seeds]
        if torch.get_num_threads() < 2:
            for part, gen in zip(parts, gens, strict=True):
                part.normal_(0.0, std, generator=gen)
            return
        futures = [_pool().submit(part.normal_, 0.0, std, generator=gen) for part, gen in zip(parts[1:], gens[1:], strict=True)]
        parts[0].normal_(0.0, std, generator=gens[0])
        for f in futures:
            f.result()

    def _standard_normal(self, n: int, *, std: float, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(n, dtype=dtype)
        self._fill(out, std)
        return out

    def _add_to(self, t: torch.Tensor, std: float) -> None:
        if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64) or not t.is_contiguous():
            super()._add_to(t, std)
            return
        n = t.numel()
        buf = self._scratch.get(t.dtype)
        if buf is None or buf.numel() < n:  # reused across steps: no fresh pages to fault in per step
            buf = self._scratch[t.dtype] = torch.empty(n, dtype=t.dtype)
        part = buf[:n]
        self._fill(part, std)
        t.view(-1).add_(part)

    def state_dict(self) -> State:
        return {"kind": self.kind, "seed": self.seed, "generator": self._gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_kind(state)
        gen = state.get("generator")
        if not isinstance(gen, torch.Tensor) or gen.dtype != torch.uint8:
            raise ConfigError(expected('state["generator"]', "a uint8 tensor (torch.Generator state)", type(gen).__name__))
        self._gen.set_state(gen.detach().cpu().clone())
        self.seed = int(state.get("seed", self.seed))

    def __repr__(self) -> str:
        return f"TorchNoise(seed={self.seed})"


_KEY_BYTES = 32  # AES-256
_BLOCK = 16  # bytes per AES block = two 64-bit words = one Box–Muller pair
_CHUNK_PAIRS = 1 << 16  # pairs per keystream chunk (1 MiB): vectorised, and fits in cache


def _key_id(key: bytes) -> str:
    """A non-secret identifier of a key: 64 bits of ``sha256(label || key)``.

    Learning it does not help to recover a 256-bit random key (pre-image resistance); it lets
    :meth:`SecureNoise.load_state_dict` tell whether it continues the saved stream.
    """
    return hashlib.sha256(b"trustnlp.securenoise.key-id:" + key).hexdigest()[:16]


class SecureNoise(NoiseSource):
    r"""Cryptographically secure Gaussian noise: AES-256-CTR keystream → uniforms → Box–Muller.

    **Construction.** Block ``i`` of the keystream is :math:`\mathrm{AES}_k(i)` (the 128-bit counter
    ``i`` big-endian, as ``cryptography``'s ``modes.CTR`` increments it). Each 16-byte block is read
    as two little-endian 64-bit words :math:`w_1, w_2`, whose top 53 bits
    :math:`a = \lfloor w_1 / 2^{11} \rfloor`, :math:`b = \lfloor w_2 / 2^{11} \rfloor` give the
    exactly representable float64 uniforms

    .. math:: u_1 = 1 - a\,2^{-53} \in (0, 1], \qquad u_2 = b\,2^{-53} \in [0, 1),

    and the Box–Muller transform turns each pair into two independent standard normals

    .. math:: z_1 = \sqrt{-2\ln u_1}\,\cos(2\pi u_2), \qquad z_2 = \sqrt{-2\ln u_1}\,\sin(2\pi u_2).

    So one AES block gives two Gaussians; a draw of ``n`` values uses ``ceil(n / 2)`` blocks (the
    spare value of an odd draw is discarded) and advances the counter by as many: the keystream is
    never reused across draws. As long as AES-256 is a pseudo-random permutation, the output is
    computationally indistinguishable from i.i.d. Gaussians rounded to float64 (to the output
    dtype), truncated at :math:`|z| \le \sqrt{106 \ln 2} \approx 8.57`. The math runs in float64
    with torch on ~1 MiB chunks of keystream.

    **Scope.** This removes the *predictable generator* weakness (a leaked or guessed seed reveals all
    the noise). It does not address floating-point side channels of sampling continuous Gaussians
    (the gaps in the set of representable values; see Mironov, CCS 2012); closing those needs a
    discrete Gaussian over a fixed grid, which this class does not implement.

    **State and resume.** The state holds the counter (blocks consumed) and a non-secret key id; the
    key itself is stored only when ``key_in_state=True``. The trade-off:

    - ``key_in_state=False`` (default): a checkpoint does not contain the key. A resumed run built
      with a fresh random key (``key=None``) continues with *fresh* noise from a new key, which is
      just as private but not bitwise equal to the uninterrupted run; :attr:`rekeyed_on_resume`
      says so (record it). Passing the same ``key`` again (from your own secret store) resumes
      exactly.
    - ``key_in_state=True``: the checkpoint holds the key, so resume is exact, but **the
      checkpoint is then a secret**: anyone who reads it can regenerate every noise draw and undo
      the privacy of every model trained with this key. Protect or delete it like a private key.

    Never reuse a key across different runs except to reproduce one: two runs with the same key and
    counter get the same noise.

    Args:
        key: 32 bytes (AES-256 key); ``None`` draws one from ``os.urandom``.
        key_in_state: include the key in :meth:`state_dict` (see the trade-off above).
    """

    secure = True
    kind = "secure"
    algorithm = "AES-256-CTR (cryptography/OpenSSL) + Box-Muller, float64"

    def __init__(self, key: bytes | None = None, *, key_in_state: bool = False) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        except ImportError as err:  # pragma: no cover - cryptography is a dependency
            raise MissingDependencyError("cryptography", purpose="the secure noise source") from err
        self._cipher_parts = (Cipher, algorithms, modes)
        if key is None:
            key = os.urandom(_KEY_BYTES)
        if not isinstance(key, bytes | bytearray) or len(key) != _KEY_BYTES:
            got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
            raise ConfigError(expected("key", f"{_KEY_BYTES} bytes (an AES-256 key)", got))
        self._key = bytes(key)
        self.key_in_state = bool(key_in_state)
        self.counter = 0
        self.rekeyed_on_resume = False

    @property
    def key_id(self) -> str:
        """A non-secret identifier of the key (for logs and to detect a key change on resume)."""
        return _key_id(self._key)

    def _keystream_words(self, start: int, blocks: int, buf: bytearray, zeros: bytes) -> torch.Tensor:
        """Keystream blocks ``start .. start + blocks - 1`` as a ``[blocks, 2]`` int64 view of ``buf``."""
        cipher, algorithms, modes = self._cipher_parts
        nonce = (start % (1 << 128)).to_bytes(16, "big")
        enc = cipher(algorithms.AES(self._key), modes.CTR(nonce)).encryptor()
        enc.update_into(memoryview(zeros)[: blocks * _BLOCK], buf)  # keystream = AES-CTR encryption of zeros
        return torch.frombuffer(buf, dtype=torch.int64, count=2 * blocks).view(blocks, 2)

    def _standard_normal(self, n: int, *, std: float, dtype: torch.dtype) -> torch.Tensor:
        pairs = (n + 1) // 2
        out = torch.empty(2 * pairs, dtype=dtype)
        chunk = min(pairs, _CHUNK_PAIRS)
        buf = bytearray(chunk * _BLOCK + _BLOCK - 1)  # update_into needs block_size - 1 bytes spare
        zeros = bytes(chunk * _BLOCK)
        mask53 = (1 << 53) - 1
        for s in range(0, pairs, chunk):
            m = min(chunk, pairs - s)
            words = self._keystream_words(self.counter + s, m, buf, zeros)
            a = ((words[:, 0] >> 11) & mask53).to(torch.float64)  # logical shift: top 53 bits
            b = ((words[:, 1] >> 11) & mask53).to(torch.float64)
            r = a.mul_(-(2.0**-53)).add_(1.0).log_().mul_(-2.0).sqrt_().mul_(std)  # std·sqrt(-2 ln u1)
            theta = b.mul_(2.0 * math.pi * 2.0**-53)
            pair = out[2 * s : 2 * (s + m)].view(m, 2)
            pair[:, 0].copy_(r * torch.cos(theta))
            pair[:, 1].copy_(r * theta.sin_())
        self.counter += pairs
        return out[:n]

    def state_dict(self) -> State:
        """``{"kind", "counter", "key_id"}`` plus ``"key"`` (uint8 tensor) when ``key_in_state``."""
        state: State = {"kind": self.kind, "counter": self.counter, "key_id": self.key_id}
        if self.key_in_state:
            state["key"] = torch.tensor(list(self._key), dtype=torch.uint8)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a saved stream.

        With the key in ``state`` (or the same key passed to the constructor) the stream continues
        exactly; otherwise this source keeps its own (fresh) key, continues from the saved counter and
        sets :attr:`rekeyed_on_resume` to ``True``.
        """
        self._check_kind(state)
        counter = state.get("counter")
        if isinstance(counter, torch.Tensor):
            counter = int(counter.item())
        if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
            raise ConfigError(expected('state["counter"]', "a non-negative int", counter))
        key = state.get("key")
        if key is not None:
            if not isinstance(key, torch.Tensor) or key.dtype != torch.uint8 or key.numel() != _KEY_BYTES:
                raise ConfigError(expected('state["key"]', f"a uint8 tensor of {_KEY_BYTES} bytes", key))
            self._key = bytes(key.detach().cpu().flatten().tolist())
            self.key_in_state = True
        self.rekeyed_on_resume = state.get("key_id") != self.key_id
        self.counter = counter

    def __repr__(self) -> str:  # never shows the key
        return f"SecureNoise(key_id={self.key_id!r}, counter={self.counter}, key_in_state={self.key_in_state})"


def make_noise_source(*, secure: bool, seed: int) -> NoiseSource:
    """The noise source a run asks for.

    Args:
        secure: ``True`` → :class:`SecureNoise` with a fresh ``os.urandom`` key (``seed`` is then
            not used: secure noise is deliberately not reproducible from the run's seed);
            ``False`` → :class:`TorchNoise` seeded from ``seed`` (record ``secure: false``).
        seed: the run's seed.
    """
    return SecureNoise() if secure else TorchNoise(seed)
