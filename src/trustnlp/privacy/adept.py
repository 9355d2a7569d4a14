"""ADePT-style DP text rewriting with the sensitivity done right.

ADePT (Krishna, Gupta & Dupuy 2021, "ADePT: Auto-encoder based differentially private text
transformation", EACL) encodes an utterance to a latent vector ``r``, clips it to ``‖r‖₂ ≤ C``,
adds Laplace noise of scale ``2C/ε`` per coordinate and decodes. Habernal (2021, "When
differential privacy meets NLP: the devil is in the detail", EMNLP) showed this is not ε-DP: the
Laplace mechanism needs the **L1** sensitivity, and two vectors of the L2 ball differ by up to
``‖x − x'‖₁ = 2C√d`` (``x = C·1/√d``, ``x' = −x``), so the mechanism is only ``√d·ε``-DP.

Here the norm of the clip matches the noise (:func:`make_latent_mechanism`):

* ``laplace-l1``: ``r ← r·min(1, C/‖r‖₁)``; Laplace scale ``b = 2C/ε`` → ε-DP (L1 sensitivity 2C);
* ``gaussian-l2``: ``r ← r·min(1, C/‖r‖₂)``; Gaussian ``σ`` for L2 sensitivity ``2C`` from the
  analytic Gaussian mechanism (Balle & Wang 2018) or, for ε < 1, the classic bound
  ``σ = 2C√(2 ln(1.25/δ))/ε`` → (ε, δ)-DP;
* ``adept-published``: the published calibration (L2 clip, Laplace ``2C/ε``), kept to demonstrate
  the violation; its ``true_epsilon`` is ``√d·ε``.

The guarantee is local DP for a whole utterance (any two inputs), since the encoder is a fixed
function of the input and decoding is post-processing. That needs the autoencoder to be trained on
**public** data only (here the generated assistant corpus with a seed of its own), never on the
text being privatised. :func:`audit_event` and :func:`privacy_loss_samples` check the calibration
empirically (``tests/privacy/test_adept.py``).

Example:
    >>> mech = make_latent_mechanism("laplace-l1", epsilon=1.0, clip_bound=1.0)
    >>> mech.scale, mech.true_epsilon(dim=16)
    (2.0, 1.0)
    >>> make_latent_mechanism("adept-published", epsilon=1.0, clip_bound=1.0).true_epsilon(dim=16)
    4.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import special
from torch import nn
from torch.nn import functional as F

from trustnlp.errors import ConfigError, DataError, expected

__all__ = [
    "LATENT_MECHANISMS",
    "AutoencoderConfig",
    "DPRewriter",
    "EventAudit",
    "LatentMechanism",
    "TextAutoencoder",
    "analytic_gaussian_sigma",
    "audit_event",
    "classic_gaussian_sigma",
    "clip",
    "gaussian_delta",
    "hockey_stick_delta",
    "make_latent_mechanism",
    "privacy_loss_samples",
    "train_autoencoder",
    "worst_case_pair",
]

LATENT_MECHANISMS = ("laplace-l1", "gaussian-l2", "adept-published")


def _positive(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x <= 0:
        raise ConfigError(expected(name, "a finite number > 0", x))
    return float(x)


def _check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 < delta < 1.0:
        raise ConfigError(expected("delta", "a number in (0, 1)", delta))
    return float(delta)


def clip(z: torch.Tensor | np.ndarray, *, norm: str, bound: float) -> Any:
    """``z · min(1, C/‖z‖_p)`` row-wise, ``p`` = 1 (``norm="l1"``) or 2 (``"l2"``); torch or numpy."""
    bound = _positive(bound, "clip_bound")
    if norm not in ("l1", "l2"):
        raise ConfigError(expected("norm", "'l1' or 'l2'", norm))
    p = 1 if norm == "l1" else 2
    if isinstance(z, torch.Tensor):
        n = torch.linalg.vector_norm(z, ord=p, dim=-1, keepdim=True)
        return z * torch.clamp(bound / n.clamp_min(1e-30), max=1.0)
    z = np.asarray(z, dtype=np.float64)
    n = np.linalg.norm(z, ord=p, axis=-1, keepdims=True)
    return z * np.minimum(1.0, bound / np.maximum(n, 1e-30))


def gaussian_delta(sigma: float, *, epsilon: float, sensitivity: float) -> float:
    """Exact δ(ε) of the Gaussian mechanism (Balle & Wang 2018, Theorem 8):
    ``Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ)``."""
    s, eps, d = _positive(sigma, "sigma"), float(epsilon), _positive(sensitivity, "sensitivity")
    a, b = d / (2 * s), eps * s / d
    return float(special.ndtr(a - b) - math.exp(eps + special.log_ndtr(-a - b)))


def analytic_gaussian_sigma(epsilon: float, delta: float, *, sensitivity: float) -> float:
    """The smallest σ with ``gaussian_delta(σ) ≤ δ`` (analytic Gaussian mechanism, Balle & Wang 2018).

    δ(σ) decreases in σ; the root is bracketed by doubling/halving and bisected in log σ to a
    relative width of 1e-12; the upper end (the conservative side) is returned.
    """
    eps, dlt, sens = _positive(epsilon, "epsilon"), _check_delta(delta), _positive(sensitivity, "sensitivity")
    hi = sens
    while gaussian_delta(hi, epsilon=eps, sensitivity=sens) > dlt:
        hi *= 2.0
    lo = hi
    while gaussian_delta(lo, epsilon=eps, sensitivity=sens) <= dlt and lo > 1e-12 * sens:
        lo /= 2.0
    while hi / lo > 1.0 + 1e-12:
        mid = math.sqrt(lo * hi)
        if gaussian_delta(mid, epsilon=eps, sensitivity=sens) > dlt:
            lo = mid
        else:
            hi = mid
    return hi


def classic_gaussian_sigma(epsilon: float, delta: float, *, sensitivity: float) -> float:
    """``σ = Δ√(2 ln(1.25/δ))/ε`` (Dwork & Roth 2014, Theorem A.1), valid only for ε < 1."""
    eps, dlt, sens = _positive(epsilon, "epsilon"), _check_delta(delta), _positive(sensitivity, "sensitivity")
    if eps >= 1.0:
        raise ConfigError(expected("epsilon", "< 1 for the classic Gaussian bound (use calibration='analytic')", eps))
    return sens * math.sqrt(2.0 * math.log(1.25 / dlt)) / eps


@dataclass(frozen=True)
class LatentMechanism:
    """Clip a latent vector in ``clip_norm``, then add ``noise`` of ``scale`` per coordinate.

    Attributes:
        name: one of :data:`LATENT_MECHANISMS`.
        clip_norm / clip_bound: the clip ``‖r‖_p ≤ C``.
        noise: ``"laplace"`` (scale ``b``) or ``"gaussian"`` (standard deviation ``σ``).
        scale: ``b`` or ``σ``.
        epsilon / delta: the **claimed** guarantee (δ = 0 for Laplace).
    """

    name: str
    clip_norm: str
    clip_bound: float
    noise: str
    scale: float
    epsilon: float
    delta: float = 0.0

    def clip(self, z: Any) -> Any:
        return clip(z, norm=self.clip_norm, bound=self.clip_bound)

    def sample_noise(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if self.noise == "laplace":
            return rng.laplace(0.0, self.scale, size=shape)
        return rng.normal(0.0, self.scale, size=shape)

    def release(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``clip(z) + noise`` for each row of ``z`` (float64)."""
        c = self.clip(np.asarray(z, dtype=np.float64))
        return c + self.sample_noise(c.shape, rng)

    def privacy_loss(self, y: np.ndarray, x: np.ndarray, x_prime: np.ndarray) -> np.ndarray:
        """``log p(y | x) − log p(y | x')`` for each row of ``y`` (the clip is applied to ``x``, ``x'``)."""
        y = np.asarray(y, dtype=np.float64)
        cx, cxp = self.clip(np.asarray(x, dtype=np.float64)), self.clip(np.asarray(x_prime, dtype=np.float64))
        if self.noise == "laplace":
            return (np.abs(y - cxp).sum(axis=-1) - np.abs(y - cx).sum(axis=-1)) / self.scale
        return (((y - cxp) ** 2).sum(axis=-1) - ((y - cx) ** 2).sum(axis=-1)) / (2.0 * self.scale**2)

    def true_epsilon(self, *, dim: int) -> float:
        """The pure-DP ε the Laplace variants really have in ``dim`` dimensions: the largest L1
        distance between two clipped vectors (``2C`` for an L1 clip, ``2C√dim`` for an L2 clip)
        over ``b``. (For the Gaussian, see :func:`gaussian_delta`.)"""
        if self.noise != "laplace":
            raise ConfigError(f"Mechanism `{self.name}` is (epsilon, delta)-DP; use gaussian_delta for its curve.")
        l1 = 2.0 * self.clip_bound * (1.0 if self.clip_norm == "l1" else math.sqrt(dim))
        return l1 / self.scale

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.name, "clip_norm": self.clip_norm, "clip_bound": self.clip_bound,
                "noise": self.noise, "scale": self.scale, "epsilon": self.epsilon, "delta": self.delta}


def make_latent_mechanism(name: str, *, epsilon: float, clip_bound: float, delta: float | None = None,
                          calibration: str = "analytic") -> LatentMechanism:
    """A latent mechanism by name (:data:`LATENT_MECHANISMS`), calibrated to the claimed (ε, δ).

    ``gaussian-l2`` needs ``delta``; ``calibration`` is ``"analytic"`` (Balle & Wang 2018) or
    ``"classic"`` (ε < 1 only). The sensitivity is ``2C`` in the clip's norm (replace-one: the
    two inputs are any two utterances).
    """
    eps, c = _positive(epsilon, "epsilon"), _positive(clip_bound, "clip_bound")
    if name == "laplace-l1":
        return LatentMechanism(name, "l1", c, "laplace", 2.0 * c / eps, eps)
    if name == "adept-published":
        return LatentMechanism(name, "l2", c, "laplace", 2.0 * c / eps, eps)
    if name == "gaussian-l2":
        if delta is None:
            raise ConfigError("Expected `delta` for the Gaussian mechanism, but got None.")
        if calibration == "analytic":
            sigma = analytic_gaussian_sigma(eps, delta, sensitivity=2.0 * c)
        elif calibration == "classic":
            sigma = classic_gaussian_sigma(eps, delta, sensitivity=2.0 * c)
        else:
            raise ConfigError(expected("calibration", "'analytic' or 'classic'", calibration))
        return LatentMechanism(name, "l2", c, "gaussian", sigma, eps, _check_delta(delta))
    raise ConfigError(expected("mechanism", f"one of {list(LATENT_MECHANISMS)}", name))


def worst_case_pair(mechanism: LatentMechanism, *, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Two clipped latents at the largest distance in the norm the noise is sensitive to.

    Laplace noise (L1 distance): an L1 clip gives ``±C e₁`` (distance 2C); an L2 clip gives
    ``±C·1/√d`` (L1 distance ``2C√d``, Habernal's counter-example). Gaussian: ``±C e₁`` (L2 distance 2C).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(expected("dim", "an integer >= 1", dim))
    c = mechanism.clip_bound
    if mechanism.noise == "laplace" and mechanism.clip_norm == "l2":
        x = np.full(dim, c / math.sqrt(dim))
    else:
        x = np.zeros(dim)
        x[0] = c
    return x, -x


def privacy_loss_samples(mechanism: LatentMechanism, x: np.ndarray, x_prime: np.ndarray, *, n: int,
                         seed: int) -> np.ndarray:
    """``n`` draws of the privacy loss ``L(y) = log p(y|x)/p(y|x')`` with ``y ~ M(x)``."""
    rng = np.random.default_rng(seed)
    y = mechanism.release(np.repeat(np.asarray(x, dtype=np.float64)[None], n, axis=0), rng)
    return mechanism.privacy_loss(y, x, x_prime)


def hockey_stick_delta(losses: np.ndarray, epsilon: float) -> float:
    """Monte-Carlo ``δ(ε) = E_{y~M(x)}[(1 − e^{ε − L(y)})₊]`` from privacy-loss draws."""
    losses = np.asarray(losses, dtype=np.float64)
    return float(np.maximum(0.0, 1.0 - np.exp(epsilon - losses)).mean())


@dataclass(frozen=True)
class EventAudit:
    """A distinguishing-event estimate of ε from samples of ``M(x)`` and ``M(x')``.

    Attributes:
        hits / hits_prime: how many of the ``n`` draws of ``M(x)`` / ``M(x')`` fell in the event.
        epsilon_hat: ``log(p̂ / p̂')``.
        epsilon_lower: ``log((lo(p) − δ) / hi(p'))`` with one-sided Clopper-Pearson bounds at
            ``confidence`` each: a lower bound on the true ε that holds with probability ≥
            ``1 − 2(1 − confidence)``.
    """

    n: int
    hits: int
    hits_prime: int
    epsilon_hat: float
    epsilon_lower: float


def audit_event(mechanism: LatentMechanism, x: np.ndarray, x_prime: np.ndarray, *, threshold: float, n: int,
                seed: int, confidence: float = 0.95) -> EventAudit:
    """Estimate ``P[S|x]`` and ``P[S|x']`` for the event ``S = {y : L(y) ≥ threshold}`` by sampling.

    The event is fixed before sampling (``threshold`` is an argument); counts are exact binomials,
    so :attr:`EventAudit.epsilon_lower` is a valid statistical lower bound on the mechanism's ε.
    """
    from scipy import stats

    rng = np.random.default_rng(seed)
    x, x_prime = np.asarray(x, dtype=np.float64), np.asarray(x_prime, dtype=np.float64)
    y = mechanism.release(np.repeat(x[None], n, axis=0), rng)
    yp = mechanism.release(np.repeat(x_prime[None], n, axis=0), rng)
    k = int((mechanism.privacy_loss(y, x, x_prime) >= threshold).sum())
    kp = int((mechanism.privacy_loss(yp, x, x_prime) >= threshold).sum())
    a = 1.0 - confidence
    lo = stats.beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1.0 - a, kp + 1, n - kp) if kp < n else 1.0
    num = lo - mechanism.delta
    lower = math.log(num / hi) if num > 0 else -math.inf
    hat = math.log(k / kp) if k > 0 and kp > 0 else (math.inf if k > 0 else -math.inf)
    return EventAudit(n, k, kp, hat, lower)


# -- the autoencoder --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoencoderConfig:
    """Size and training of the GRU autoencoder (defaults run in seconds on a CPU)."""

    embed_dim: int = 32
    hidden: int = 64
    latent_dim: int = 16
    max_length: int = 24
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-3

    def __post_init__(self) -> None:
        for name in ("embed_dim", "hidden", "latent_dim", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(expected(name, "an integer >= 1", v))
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 3:
            raise ConfigError(expected("max_length", "an integer >= 3", self.max_length))
        _positive(self.lr, "lr")


class TextAutoencoder(nn.Module):
    """GRU encoder → latent ``r ∈ R^k`` → GRU decoder (greedy), as in ADePT.

    The latent is the encoder's last hidden state mapped to ``k`` dimensions; the decoder starts
    from a linear map of the (clipped, noised) latent and emits tokens until ``[SEP]``.
    """

    def __init__(self, vocab_size: int, *, pad_id: int, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or AutoencoderConfig()
        c = self.config
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, c.embed_dim, padding_idx=pad_id)
        self.encoder = nn.GRU(c.embed_dim, c.hidden, batch_first=True)
        self.to_latent = nn.Linear(c.hidden, c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim, c.hidden)
        self.decoder = nn.GRU(c.embed_dim, c.hidden, batch_first=True)
        self.out = nn.Linear(c.hidden, vocab_size)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The (unclipped) latent ``[B, k]`` of right-padded ``ids``."""
        states, _ = self.encoder(self.embed(ids))
        last = (mask.sum(dim=1) - 1).clamp_min(0)
        return self.to_latent(states[torch.arange(len(ids)), last])

    def logits(self, latent: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder logits ``[B, T, V]``."""
        h0 = torch.tanh(self.from_latent(latent))[None]
        states, _ = self.decoder(self.embed(inputs), h0.contiguous())
        return self.out(states)

    @torch.no_grad()
    def generate(self, latent: torch.Tensor, *, bos: int, eos: int, max_length: int) -> list[list[int]]:
        """Greedy decoding; the first token cannot be ``eos``/``pad``/``bos`` (outputs are never empty)."""
        h = torch.tanh(self.from_latent(latent))[None].contiguous()
        tok = torch.full((len(latent), 1), bos, dtype=torch.long)
        out: list[list[int]] = [[] for _ in range(len(latent))]
        done = torch.zeros(len(latent), dtype=torch.bool)
        for step in range(max_length):
            states, h = self.decoder(self.embed(tok), h)
            logit = self.out(states[:, -1])
            if step == 0:
                logit[:, [eos, self.pad_id, bos]] = -math.inf
            tok = logit.argmax(dim=1, keepdim=True)
            for i, t in enumerate(tok[:, 0].tolist()):
                if not done[i]:
                    if t == eos:
                        done[i] = True
                    else:
                        out[i].append(t)
            if bool(done.all()):
                break
        return out


def _special(tokenizer: Any) -> tuple[int, int]:
    if tokenizer.cls_id is None or tokenizer.sep_id is None:
        raise ConfigError("Expected a tokenizer with [CLS]/[SEP] ids (used as BOS/EOS), but it has none.")
    return int(tokenizer.cls_id), int(tokenizer.sep_id)


def train_autoencoder(public_texts: Sequence[str], tokenizer: Any, *, config: AutoencoderConfig | None = None,
                      clip_norm: str = "l2", clip_bound: float = 1.0, seed: int = 0) -> TextAutoencoder:
    """Train the autoencoder on **public** texts (reconstruction cross-entropy, Adam).

    The latent is clipped (``clip_norm``, ``clip_bound``) during training, so the decoder learns
    from the set the mechanism releases from. The tokenizer's vocabulary must be public or a
    generator's (a vocabulary built from private text is refused).
    """
    from trustnlp.data.tokenizers import check_tokenizer_privacy

    check_tokenizer_privacy(tokenizer, private=True)
    texts = list(public_texts)
    if not texts:
        raise DataError("Expected public training texts for the autoencoder, but got none.")
    cfg = config or AutoencoderConfig()
    _special(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TextAutoencoder(tokenizer.vocab_size, pad_id=tokenizer.pad_id, config=cfg)
    enc = tokenizer.encode(texts, max_length=cfg.max_length)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(texts), generator=gen).split(cfg.batch_size):
            ids, mask = enc.input_ids[idx], enc.attention_mask[idx]
            latent = clip(model.encode(ids, mask), norm=clip_norm, bound=clip_bound)
            logits = model.logits(latent, ids[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                   ignore_index=tokenizer.pad_id)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class DPRewriter:
    """Rewrite texts: encode → clip → noise (:class:`LatentMechanism`) → greedy decode.

    Args:
        model: a :class:`TextAutoencoder` trained on public data (:func:`train_autoencoder`).
        tokenizer: its tokenizer.
        mechanism: the latent mechanism; its guarantee is per utterance (local DP).
    """

    def __init__(self, model: TextAutoencoder, tokenizer: Any, mechanism: LatentMechanism) -> None:
        if not isinstance(mechanism, LatentMechanism):
            raise ConfigError(expected("mechanism", "a LatentMechanism", type(mechanism).__name__))
        self.model, self.tokenizer, self.mechanism = model.eval(), tokenizer, mechanism
        self.bos, self.eos = _special(tokenizer)

    @torch.no_grad()
    def latents(self, texts: Sequence[str]) -> np.ndarray:
        """The unclipped latents ``[n, k]`` (float64) of ``texts``."""
        enc = self.tokenizer.encode(list(texts), max_length=self.model.config.max_length)
        return self.model.encode(enc.input_ids, enc.attention_mask).double().numpy()

    @torch.no_grad()
    def rewrite(self, texts: Sequence[str], *, seed: int) -> list[str]:
        """One private rewrite per text (seeded noise)."""
        released = self.mechanism.release(self.latents(texts), np.random.default_rng(seed))
        ids = self.model.generate(torch.as_tensor(released, dtype=torch.float32), bos=self.bos, eos=self.eos,
                                  max_length=self.model.config.max_length)
        return [self.tokenizer.decode(row) for row in ids]
