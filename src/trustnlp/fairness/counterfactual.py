"""Counterfactual token fairness (Garg et al. 2019): does a prediction change when identity terms
are swapped?

For each text ``x`` with at least one identity term, ``x'`` swaps every such term for its
counterpart (``he -> she``, ``actor -> actress``, ``John -> Mary``, case kept). Over the changed
texts, with predicted class distributions ``p = f(x)`` and ``p' = f(x')``:

* ``flip_rate`` = share with ``argmax p != argmax p'``;
* ``mean_abs_change`` = mean of ``|p_c(x) - p_c(x')|`` for the originally predicted class ``c``;
* ``mean_tv`` = mean total variation distance ``(1/2) ||p - p'||_1`` (the per-example
  *counterfactual gap* compared with prediction sensitivity).

Gender swaps (:func:`load_gender_swaps`) merge, first listed wins: pronoun rules (``he <-> she``,
``him -> her``, ``his -> her``, ``hers -> his``, ``himself <-> herself``; ``her`` becomes ``his``
before a word that is not a function word, else ``him``: a heuristic for the possessive/objective
ambiguity), the project's own list (``resources/gender_pairs.tsv``: family and person words,
titles, occupations and given-name pairs), then the shared lists in ``../shared/data/gender_pairs``:
WinoBias ``generalized_swaps.txt`` and ``extra_gendered_words.txt`` (Zhao et al. 2018, MIT) and
GN-GloVe ``male_word_file.txt``/``female_word_file.txt`` (line-paired, Zhao et al. 2018, Apache-2.0).

Example:
    >>> sw = load_gender_swaps(shared=False)
    >>> swap_text("Remind her that his brother John called.", sw)
    ('Remind him that her sister Mary called.', 4)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from trustnlp.errors import DataError

__all__ = [
    "PRONOUN_SWAPS",
    "CounterfactualResult",
    "SwapList",
    "counterfactual_texts",
    "counterfactual_token_fairness",
    "load_gender_swaps",
    "swap_text",
]

PRONOUN_SWAPS: Mapping[str, str] = {"he": "she", "she": "he", "him": "her", "his": "her", "hers": "his",
                                    "himself": "herself", "herself": "himself"}
_FUNCTION_WORDS = frozenset(
    "a an the to that this these those and or but nor so if as at by for from in into of off on onto out over up "
    "down with about after before again back is are was were be been am will would can could should shall may might "
    "must do does did not now then today tonight tomorrow yesterday later soon here there please thanks know it me "
    "you him her them us we i my your our their what when where why how who which too very all".split())
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class SwapList:
    """A bidirectional word map (lower case) and where its pairs came from."""

    mapping: Mapping[str, str]
    sources: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"n_words": len(self.mapping), "sources": [dict(s) for s in self.sources]}


def _add(mapping: dict[str, str], a: str, b: str) -> int:
    a, b = a.strip().lower(), b.strip().lower()
    if not a or not b or a == b or not _WORD.fullmatch(a) or not _WORD.fullmatch(b):
        return 0
    added = 0
    for x, y in ((a, b), (b, a)):
        if x not in mapping and x != "her":
            mapping[x] = y
            added += 1
    return added


def _pairs_file(path: Path) -> list[tuple[str, str]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{path}, line {i + 1}: expected tab-separated word pairs, but got {line!r}.")
        out.append((parts[0], parts[1]))
    return out


def load_gender_swaps(data_dir: str | Path | None = None, *, shared: bool | None = None) -> SwapList:
    """Gender swap pairs: pronoun rules, the project's list, then the shared lists (module docs).

    Args:
        data_dir: a data directory holding ``gender_pairs/`` (default: the usual data directories).
        shared: ``None`` uses the shared lists when found (recorded in ``sources``), ``True``
            requires them (:class:`DataError` when absent), ``False`` uses only the project's list.
    """
    from trustnlp.data.dataset import file_sha256
    from trustnlp.data.registry import data_dirs

    mapping: dict[str, str] = dict(PRONOUN_SWAPS)
    sources: list[dict[str, Any]] = [{"name": "pronoun rules", "pairs": len(PRONOUN_SWAPS)}]
    own = resources.files("trustnlp.fairness").joinpath("resources/gender_pairs.tsv").read_text("utf-8")
    rows = [ln.split("\t") for ln in own.splitlines() if ln.strip() and not ln.startswith("#")]
    sources.append({"name": "trustnlp/fairness/resources/gender_pairs.tsv",
                    "added": sum(_add(mapping, r[0], r[1]) for r in rows)})
    if shared is False:
        return SwapList(mapping, tuple(sources))
    folder = next((d / "gender_pairs" for d in data_dirs(data_dir) if (d / "gender_pairs").is_dir()), None)
    if folder is None:
        if shared:
            raise DataError("Shared gender pairs not found: expected gender_pairs/ under ../shared/data (or data_dir).")
        sources.append({"name": "gender_pairs (shared)", "found": False})
        return SwapList(mapping, tuple(sources))
    for fname in ("generalized_swaps.txt", "extra_gendered_words.txt"):
        path = folder / fname
        pairs = _pairs_file(path)
        sources.append({"name": str(path), "sha256": file_sha256(path), "added": sum(_add(mapping, a, b) for a, b in pairs)})
    male, female = folder / "male_word_file.txt", folder / "female_word_file.txt"
    ms = [w for w in male.read_text(encoding="utf-8").splitlines() if w.strip()]
    fs = [w for w in female.read_text(encoding="utf-8").splitlines() if w.strip()]
    if len(ms) != len(fs):
        raise DataError(f"{male} and {female} must have the same number of lines, but have {len(ms)} and {len(fs)}.")
    sources.append({"name": f"{male} + {female}", "sha256": [file_sha256(male), file_sha256(female)],
                    "added": sum(_add(mapping, a, b) for a, b in zip(ms, fs))})
    return SwapList(mapping, tuple(sources))


def _cased(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def swap_text(text: str, swaps: SwapList) -> tuple[str, int]:
    """``text`` with every listed word swapped (case kept), and the number of swaps."""
    matches = list(_WORD.finditer(text))
    out, last, n = [], 0, 0
    for k, m in enumerate(matches):
        w = m.group(0)
        low = w.lower()
        new: str | None
        if low == "her":
            nxt = matches[k + 1] if k + 1 < len(matches) else None
            adjacent = nxt is not None and text[m.end() : nxt.start()].strip() == ""
            new = "his" if adjacent and nxt is not None and nxt.group(0).lower() not in _FUNCTION_WORDS else "him"
        else:
            new = swaps.mapping.get(low)
        if new is None:
            continue
        out.append(text[last : m.start()])
        out.append(_cased(new, w))
        last, n = m.end(), n + 1
    out.append(text[last:])
    return "".join(out), n


def counterfactual_texts(texts: Sequence[str], swaps: SwapList) -> tuple[list[str], np.ndarray]:
    """Swapped texts and the number of swaps in each."""
    if isinstance(texts, str):
        raise DataError("Expected a sequence of texts, but got a single string.")
    done = [swap_text(t, swaps) for t in texts]
    return [d[0] for d in done], np.asarray([d[1] for d in done], dtype=np.int64)


@dataclass(frozen=True)
class CounterfactualResult:
    """Counterfactual token fairness over the texts that contain an identity term.

    Attributes:
        n / n_changed: texts given / texts with at least one swap.
        flip_rate / mean_abs_change / mean_tv: see the module docs (``None`` when no text changed).
        changed: indices of the changed texts; tv / flipped: per changed text.
        by_group: group -> ``{"n_changed", "flip_rate", "mean_tv"}`` when ``sensitive_features`` given.
        undefined: path -> reason. swaps: the swap list's provenance.
    """

    n: int
    n_changed: int
    flip_rate: float | None
    mean_abs_change: float | None
    mean_tv: float | None
    changed: tuple[int, ...]
    tv: tuple[float, ...]
    flipped: tuple[bool, ...]
    by_group: Mapping[str, Mapping[str, float | int | None]] = field(default_factory=dict)
    undefined: Mapping[str, str] = field(default_factory=dict)
    swaps: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "n_changed": self.n_changed, "flip_rate": self.flip_rate,
                "mean_abs_change": self.mean_abs_change, "mean_tv": self.mean_tv,
                "by_group": {k: dict(v) for k, v in self.by_group.items()}, "undefined": dict(self.undefined),
                "swaps": dict(self.swaps)}


def counterfactual_token_fairness(
    predict_proba: Callable[[Sequence[str]], Any],
    texts: Sequence[str],
    *,
    swaps: SwapList | None = None,
    sensitive_features: Any = None,
) -> CounterfactualResult:
    """Prediction change under identity-term swaps (see the module docs).

    Args:
        predict_proba: ``texts -> [N, K]`` class probabilities.
        texts: the texts. swaps: the swap list (default :func:`load_gender_swaps`).
        sensitive_features: optional group per text, for per-group summaries.
    """
    swaps = load_gender_swaps() if swaps is None else swaps
    texts = list(texts)
    cf, n_swaps = counterfactual_texts(texts, swaps)
    idx = np.flatnonzero(n_swaps > 0)
    undefined: dict[str, str] = {}
    meta = swaps.to_dict()
    if idx.size == 0:
        why = "no text contains a swappable identity term"
        undefined.update({k: why for k in ("flip_rate", "mean_abs_change", "mean_tv")})
        return CounterfactualResult(len(texts), 0, None, None, None, (), (), (), {}, undefined, meta)
    p = np.asarray(predict_proba([texts[i] for i in idx]), dtype=np.float64)
    q = np.asarray(predict_proba([cf[i] for i in idx]), dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2 or p.shape[0] != idx.size:
        raise DataError(f"Expected `predict_proba` to return [n, classes] probabilities, but got shape {p.shape}.")
    c = p.argmax(1)
    tv = 0.5 * np.abs(p - q).sum(1)
    flipped = c != q.argmax(1)
    change = np.abs(p[np.arange(len(c)), c] - q[np.arange(len(c)), c])
    by_group: dict[str, dict[str, float | int | None]] = {}
    if sensitive_features is not None:
        sf = np.asarray([str(v) for v in np.asarray(sensitive_features)])
        if sf.size != len(texts):
            raise DataError(f"Expected `sensitive_features` of length {len(texts)}, but got {sf.size}.")
        for g in sorted(set(sf.tolist())):
            sel = sf[idx] == g
            by_group[g] = {"n_changed": int(sel.sum()),
                           "flip_rate": float(flipped[sel].mean()) if sel.any() else None,
                           "mean_tv": float(tv[sel].mean()) if sel.any() else None}
            if not sel.any():
                undefined[f"by_group.{g}"] = f"no text of group {g!r} contains a swappable identity term"
    return CounterfactualResult(len(texts), int(idx.size), float(flipped.mean()), float(change.mean()), float(tv.mean()),
                                tuple(int(i) for i in idx), tuple(float(v) for v in tv),
                                tuple(bool(v) for v in flipped), by_group, undefined, meta)
