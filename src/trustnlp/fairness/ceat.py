"""CEAT: the Contextualized Embedding Association Test (Guo & Caliskan, AIES 2021).

A contextual encoder gives a word a different embedding in every sentence, so one WEAT effect
size is one draw from a distribution. CEAT:

1. finds the sentences of a corpus that contain each target/attribute word (here: BOLD's
   Wikipedia sentences in ``../shared/data/bold`` or any list of sentences), keeps up to
   ``max_contexts`` of them per word (a seeded uniform sample) and embeds the word in each
   (:meth:`~trustnlp.fairness.encoders.TextEncoder.words_in_context`, sub-word pooling
   ``word_pooling``); the coverage (contexts found per word) is reported;
2. draws ``n_samples`` times one context per word (seeded), and computes the WEAT effect size
   ``ES_i`` and its in-sample variance ``v_i = var_{w in X u Y} s(w, A, B)`` (``ddof=1``, as in the
   reference implementation);
3. combines them with the random-effects model (DerSimonian & Laird 1986), :func:`random_effects`:

       w_i = 1 / v_i,   Q = sum w_i ES_i^2 - (sum w_i ES_i)^2 / sum w_i,   df = N - 1
       tau^2 = (Q - df) / (sum w_i - sum w_i^2 / sum w_i)  if Q > df, else 0
       w*_i = 1 / (v_i + tau^2),   CES = sum w*_i ES_i / sum w*_i,   Var(CES) = 1 / sum w*_i
       p = 1 - Phi(CES / sqrt(Var(CES)))          (one-sided, as in Guo & Caliskan's code)

Example:
    >>> m = random_effects([0.5, 0.7, 0.9], [0.04, 0.05, 0.06])
    >>> round(m.combined_effect_size, 4), m.tau2
    (0.673, 0.0)
"""

from __future__ import annotations

import json
import math
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trustnlp.errors import DataError
from trustnlp.fairness._common import check_choice, check_positive_int
from trustnlp.fairness.association_tests import AssociationTest
from trustnlp.fairness.encoders import TextEncoder, split_words

__all__ = [
    "BOLD_DOMAINS",
    "CEATResult",
    "Corpus",
    "MetaAnalysis",
    "ceat",
    "find_contexts",
    "load_bold_corpus",
    "random_effects",
]

BOLD_DOMAINS = ("gender", "race", "profession", "religious_ideology", "political_ideology")
ON_MISSING = ("error", "drop")


@dataclass(frozen=True)
class MetaAnalysis:
    """A random-effects (DerSimonian-Laird) combination of effect sizes."""

    combined_effect_size: float
    variance: float
    standard_error: float
    z: float
    p_value: float
    tau2: float
    q: float
    df: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def random_effects(effect_sizes: Any, variances: Any) -> MetaAnalysis:
    """Combine effect sizes with within-sample variances by the random-effects model (module docs).

    Raises:
        DataError: different lengths, fewer than 2 values, non-finite values or a variance <= 0.
    """
    from scipy import stats

    e = np.asarray(effect_sizes, dtype=np.float64).ravel()
    v = np.asarray(variances, dtype=np.float64).ravel()
    if e.shape != v.shape:
        raise DataError(f"Expected as many variances as effect sizes, but got {v.size} and {e.size}.")
    if e.size < 2:
        raise DataError(f"Expected at least 2 effect sizes to combine, but got {e.size}.")
    if not (np.isfinite(e).all() and np.isfinite(v).all()):
        raise DataError("Expected finite effect sizes and variances.")
    if (v <= 0).any():
        raise DataError(f"Expected every variance to be > 0, but {int((v <= 0).sum())} are not (weight 1/v undefined).")
    w = 1.0 / v
    sw = w.sum()
    q = float((w * e**2).sum() - (w * e).sum() ** 2 / sw)
    df = e.size - 1
    tau2 = float((q - df) / (sw - (w**2).sum() / sw)) if q > df else 0.0
    ws = 1.0 / (v + tau2)
    ces = float((ws * e).sum() / ws.sum())
    var = float(1.0 / ws.sum())
    z = ces / math.sqrt(var)
    return MetaAnalysis(ces, var, math.sqrt(var), z, float(stats.norm.sf(z)), tau2, q, df, int(e.size))


@dataclass(frozen=True)
class Corpus:
    """Sentences to draw contexts from, with provenance."""

    sentences: tuple[str, ...]
    name: str
    files: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n_sentences": len(self.sentences), "files": dict(self.files)}


def load_bold_corpus(directory: str | Path | None = None, *, domains: Sequence[str] = BOLD_DOMAINS) -> Corpus:
    """BOLD's Wikipedia sentences (``wikipedia/<domain>_wiki.json``: ``{group: {entity: [sentence, ...]}}``).

    ``directory`` is the BOLD folder (default: ``bold/`` in the data directories, e.g. ``../shared/data``).
    """
    from trustnlp.data.dataset import file_sha256
    from trustnlp.data.registry import data_dirs

    if directory is None:
        found = [d / "bold" for d in data_dirs() if (d / "bold" / "wikipedia").is_dir()]
        if not found:
            raise DataError("BOLD not found: expected `bold/wikipedia/*.json` under ../shared/data (or $TRUSTNLP_DATA_DIR); "
                            "pass `directory` or give CEAT your own sentences.")
        directory = found[0]
    folder = Path(directory) / "wikipedia"
    sentences: list[str] = []
    files: dict[str, str] = {}
    for dom in domains:
        check_choice("domain", dom, BOLD_DOMAINS)
        path = folder / f"{dom}_wiki.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"BOLD file {path} does not exist.") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a JSON object {{group: {{entity: [sentences]}}}}.")
        for group in data.values():
            for sents in group.values():
                sentences.extend(s for s in sents if isinstance(s, str) and s.strip())
        files[str(path)] = file_sha256(path)
    return Corpus(tuple(sentences), name=f"bold-wikipedia:{','.join(domains)}", files=files)


def _as_corpus(corpus: Corpus | Sequence[str]) -> Corpus:
    if isinstance(corpus, Corpus):
        return corpus
    if isinstance(corpus, str):
        raise DataError("Expected `corpus` to be a Corpus or a sequence of sentences, but got a single string.")
    return Corpus(tuple(corpus), name="user-corpus")


class _Index:
    """Lower-cased word -> [(sentence, position)] over a corpus (built once per corpus)."""

    def __init__(self, corpus: Corpus) -> None:
        self.words: list[list[str]] = [split_words(s) for s in corpus.sentences]
        self.lower: list[list[str]] = [[w.lower() for w in ws] for ws in self.words]
        self.where: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, ws in enumerate(self.lower):
            for j, w in enumerate(ws):
                self.where[w].append((i, j))

    def find(self, phrase: str) -> list[tuple[int, int, int]]:
        parts = [p.lower() for p in split_words(phrase)]
        if not parts:
            return []
        out = []
        for i, j in self.where.get(parts[0], ()):
            if self.lower[i][j : j + len(parts)] == parts:
                out.append((i, j, j + len(parts)))
        return out


_INDEX_CACHE: dict[int, tuple[Corpus, _Index]] = {}


def _index(corpus: Corpus) -> _Index:
    hit = _INDEX_CACHE.get(id(corpus))
    if hit is not None and hit[0] is corpus:
        return hit[1]
    idx = _Index(corpus)
    _INDEX_CACHE.clear()
    _INDEX_CACHE[id(corpus)] = (corpus, idx)
    return idx


def find_contexts(corpus: Corpus | Sequence[str], words: Sequence[str]) -> dict[str, list[tuple[int, int, int]]]:
    """Every occurrence ``(sentence index, start word, end word)`` of each word or phrase, matched
    case-insensitively on whole words."""
    idx = _index(_as_corpus(corpus))
    return {w: idx.find(w) for w in words}


@dataclass(frozen=True)
class CEATResult:
    """A CEAT result: the combined effect size of ``n_samples`` sampled WEAT effect sizes.

    Attributes:
        test: e.g. ``"ceat-weat6"``. meta: the random-effects combination (CES, variance, p-value).
        effect_sizes: summary of the sampled effect sizes (mean, std, 2.5/50/97.5 percentiles).
        coverage: set -> word -> number of contexts found in the corpus.
        missing: set -> words with no context (dropped when ``on_missing="drop"``).
        coverage_fraction: share of the test's words with at least one context.
        options: encoder options, corpus, ``n_samples``, ``max_contexts``, ``seed``, ``on_missing``.
    """

    test: str
    meta: MetaAnalysis
    effect_sizes: Mapping[str, float]
    coverage: Mapping[str, Mapping[str, int]]
    missing: Mapping[str, tuple[str, ...]]
    coverage_fraction: float
    options: Mapping[str, Any]

    @property
    def effect_size(self) -> float:
        return self.meta.combined_effect_size

    @property
    def p_value(self) -> float:
        return self.meta.p_value

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "effect_size": self.meta.combined_effect_size,
            "p_value": self.meta.p_value,
            "variance": self.meta.variance,
            "meta": self.meta.to_dict(),
            "sampled_effect_sizes": dict(self.effect_sizes),
            "coverage": {k: dict(v) for k, v in self.coverage.items()},
            "missing": {k: list(v) for k, v in self.missing.items()},
            "coverage_fraction": self.coverage_fraction,
            **dict(self.options),
        }


def _window(words: list[str], s: int, e: int, width: int) -> tuple[list[str], int, int]:
    lo, hi = max(0, s - width), min(len(words), e + width)
    return words[lo:hi], s - lo, e - lo


def ceat(
    test: AssociationTest,
    encoder: TextEncoder,
    corpus: Corpus | Sequence[str],
    *,
    n_samples: int = 1000,
    max_contexts: int = 20,
    seed: int = 0,
    on_missing: str = "error",
    window: int = 40,
) -> CEATResult:
    """Run CEAT for a word-level association test (see the module docs).

    Args:
        test: a word-level test (e.g. ``weat6`` or a built-in test).
        encoder: gives contextual word embeddings (its ``word_pooling`` is recorded).
        corpus: a :class:`Corpus` (e.g. :func:`load_bold_corpus`) or a list of sentences.
        n_samples: number of sampled effect sizes ``N`` (Guo & Caliskan use 10,000).
        max_contexts: contexts embedded per word (a uniform sample of its occurrences, seeded by
            ``(seed, word)``); each of the ``N`` draws picks one of them per word.
        seed: seeds the context samples and the draws.
        on_missing: ``"error"`` (default): a word with no context raises :class:`DataError`;
            ``"drop"``: such words are dropped and listed in ``missing``.
        window: words kept on each side of the target (long sentences are cut around it).
    """
    check_positive_int("n_samples", n_samples, 2)
    check_positive_int("max_contexts", max_contexts)
    check_positive_int("window", window, 0)
    check_choice("on_missing", on_missing, ON_MISSING)
    if test.level != "word":
        raise DataError(f"CEAT needs a word-level test, but `{test.name}` is a sentence test.")
    corp = _as_corpus(corpus)
    idx = _index(corp)
    sets = test.sets
    coverage = {k: {w: len(idx.find(w)) for w in ws.examples} for k, ws in sets.items()}
    missing = {k: tuple(w for w, c in cov.items() if c == 0) for k, cov in coverage.items()}
    n_words = sum(len(c) for c in coverage.values())
    n_missing = sum(len(m) for m in missing.values())
    if n_missing and on_missing == "error":
        listed = {k: list(v) for k, v in missing.items() if v}
        raise DataError(f"CEAT `{test.name}`: {n_missing} word(s) have no context in corpus `{corp.name}`: {listed}. "
                        "Use on_missing='drop' to drop them (they are then reported in `missing`).")
    kept = {k: [w for w in ws.examples if coverage[k][w] > 0] for k, ws in sets.items()}
    for k, minimum in (("X", 2), ("Y", 2), ("A", 1), ("B", 1)):
        if len(kept[k]) < minimum:
            raise DataError(f"CEAT `{test.name}`: set {k} ({sets[k].category}) keeps {len(kept[k])} word(s) with contexts "
                            f"in `{corp.name}`; at least {minimum} needed.")
    # contexts per distinct word, embedded once; each word's sample depends only on (seed, word), so
    # tests sharing a word share its contexts (and the encoder's cache)
    distinct = list(dict.fromkeys(w for k in ("X", "Y", "A", "B") for w in kept[k]))
    contexts: list[tuple[list[str], int, int]] = []
    offsets: dict[str, int] = {}
    counts: dict[str, int] = {}
    for w in distinct:
        occ = idx.find(w)
        word_rng = np.random.default_rng([seed, zlib.crc32(w.lower().encode("utf-8"))])
        pick = word_rng.choice(len(occ), size=min(max_contexts, len(occ)), replace=False)
        offsets[w], counts[w] = len(contexts), len(pick)
        contexts += [_window(idx.words[occ[p][0]], occ[p][1], occ[p][2], window) for p in sorted(pick)]
    emb = encoder.words_in_context(contexts)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError("A contextual embedding is zero; cosine similarity is undefined.")
    gram = (emb / norms) @ (emb / norms).T
    rng = np.random.default_rng(seed)
    cols = {k: np.asarray([distinct.index(w) for w in kept[k]]) for k in kept}
    off = np.asarray([offsets[w] for w in distinct])
    cnt = np.asarray([counts[w] for w in distinct])
    nx = len(kept["X"])
    es, var = np.empty(n_samples), np.empty(n_samples)
    for start in range(0, n_samples, 512):
        m = min(512, n_samples - start)
        draw = off + np.floor(rng.random((m, len(distinct))) * cnt).astype(np.int64)
        xy = draw[:, np.concatenate([cols["X"], cols["Y"]])]
        a, b = draw[:, cols["A"]], draw[:, cols["B"]]
        s = gram[xy[:, :, None], a[:, None, :]].mean(2) - gram[xy[:, :, None], b[:, None, :]].mean(2)
        sd = s.std(axis=1, ddof=1)
        if (sd == 0).any():
            raise DataError(f"CEAT `{test.name}`: a sampled effect size is undefined (all associations equal).")
        es[start : start + m] = (s[:, :nx].mean(1) - s[:, nx:].mean(1)) / sd
        var[start : start + m] = sd**2
    meta = random_effects(es, var)
    summary = {"mean": float(es.mean()), "std": float(es.std(ddof=1)), "p2.5": float(np.percentile(es, 2.5)),
               "median": float(np.median(es)), "p97.5": float(np.percentile(es, 97.5))}
    options = {**encoder.describe(), "pooling": encoder.word_pooling, "representation": "contextual-word", "corpus": corp.name,
               "n_samples": n_samples, "max_contexts": max_contexts, "seed": seed, "on_missing": on_missing,
               "window": window, "contexts_embedded": len(contexts)}
    return CEATResult(f"ceat-{test.name}", meta, summary, coverage, missing,
                      (n_words - n_missing) / n_words, options)
