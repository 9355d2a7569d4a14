"""Association test specifications: SEAT/WEAT files, the project's own tests, sentence templates.

An :class:`AssociationTest` holds two target sets ``X``, ``Y`` and two attribute sets ``A``, ``B``
(each a :class:`WordSet`: a category name and its examples, words or sentences). Sources:

* the SEAT specifications of May et al. (2019) in ``../shared/data/seat`` (:func:`load_seat_tests`):
  each file is one JSON object ``{"targ1": {"category": ..., "examples": [...]}, "targ2": ...,
  "attr1": ..., "attr2": ...}``. ``weatN`` files hold Caliskan et al.'s word lists; ``sent-weatN``
  files the same concepts already put into bleached sentence templates (SEAT);
* the project's own small tests, shipped in ``resources/association_tests.json``
  (:func:`builtin_tests`): common words and names for flowers/insects, instruments/weapons,
  gender and career/family, math/arts, science/arts and stereotyped occupations, so demos need no
  shared data;
* :func:`sentence_version` turns any word-level test into a SEAT-style sentence test with
  semantically bleached templates in the style of May et al. ("This is a nurse.",
  "Emily is here."), chosen per set by its ``kind`` (``name``, ``noun`` or ``term``).

Example:
    >>> t = builtin_tests()["gender-career"]
    >>> t.X.category, t.X.examples[:2], sentence_version(t).X.examples[:2]
    ('MaleNames', ('John', 'James'), ('This is John.', 'That is John.'))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from trustnlp.errors import DataError

__all__ = [
    "KINDS",
    "SET_KEYS",
    "TEMPLATES",
    "AssociationTest",
    "WordSet",
    "builtin_tests",
    "find_seat_dir",
    "load_seat_test",
    "load_seat_tests",
    "sentence_version",
]

SET_KEYS = ("targ1", "targ2", "attr1", "attr2")
KINDS = ("name", "noun", "term")
TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "name": ("This is {x}.", "That is {x}.", "There is {x}.", "Here is {x}.", "{x} is here.", "{x} is there.",
             "{x} is a person.", "The person's name is {x}."),
    "noun": ("This is {a} {x}.", "That is {a} {x}.", "There is {a} {x}.", "Here is {a} {x}.", "The {x} is here.",
             "The {x} is there.", "It is {a} {x}."),
    "term": ("This is {x}.", "That is {x}.", "There is {x}.", "It is {x}."),
}
"""Bleached sentence templates by set kind (``{x}``: the word, ``{a}``: its indefinite article)."""


@dataclass(frozen=True)
class WordSet:
    """One set of an association test: ``category`` and its ``examples`` (words or sentences)."""

    category: str
    examples: tuple[str, ...]
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "examples": list(self.examples), "kind": self.kind}


@dataclass(frozen=True)
class AssociationTest:
    """Targets ``X``, ``Y`` and attributes ``A``, ``B`` of a WEAT-style test.

    Attributes:
        name: e.g. ``"weat6"``, ``"sent-weat6"``, ``"gender-career"``.
        X, Y, A, B: the four :class:`WordSet` (``targ1``, ``targ2``, ``attr1``, ``attr2``).
        level: ``"word"`` (examples are words or short phrases) or ``"sentence"``.
        source: where the specification came from (a file path, or ``trustnlp`` resources).
    """

    name: str
    X: WordSet
    Y: WordSet
    A: WordSet
    B: WordSet
    level: str = "word"
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sets(self) -> dict[str, WordSet]:
        """``{"X": ..., "Y": ..., "A": ..., "B": ...}``."""
        return {"X": self.X, "Y": self.Y, "A": self.A, "B": self.B}

    def categories(self) -> dict[str, str]:
        return {k: v.category for k, v in self.sets.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "level": self.level, "source": self.source,
                **{k: v.to_dict() for k, v in self.sets.items()}}


def _word_set(obj: Any, key: str, where: str) -> WordSet:
    if not isinstance(obj, Mapping):
        raise DataError(f"{where}: expected `{key}` to be an object with `category` and `examples`, but got "
                        f"{type(obj).__name__}.")
    cat, ex, kind = obj.get("category"), obj.get("examples"), obj.get("kind")
    if not isinstance(cat, str) or not cat:
        raise DataError(f"{where}: expected `{key}.category` to be a non-empty string, but got {cat!r}.")
    if not isinstance(ex, list) or not ex or not all(isinstance(e, str) and e.strip() for e in ex):
        raise DataError(f"{where}: expected `{key}.examples` to be a non-empty list of non-empty strings.")
    if kind is not None and kind not in KINDS:
        raise DataError(f"{where}: expected `{key}.kind` to be one of {list(KINDS)}, but got {kind!r}.")
    return WordSet(cat, tuple(e.strip() for e in ex), kind)


def _from_spec(name: str, spec: Any, *, where: str, level: str | None = None) -> AssociationTest:
    if not isinstance(spec, Mapping):
        raise DataError(f"{where}: expected a JSON object with keys {list(SET_KEYS)}, but got {type(spec).__name__}.")
    missing = [k for k in SET_KEYS if k not in spec]
    if missing:
        raise DataError(f"{where}: missing key(s) {missing}; an association test has {list(SET_KEYS)}.")
    sets = [_word_set(spec[k], k, where) for k in SET_KEYS]
    if level is None:
        level = "sentence" if name.startswith("sent-") else "word"
    return AssociationTest(name, X=sets[0], Y=sets[1], A=sets[2], B=sets[3], level=level, source=where)


def load_seat_test(path: str | Path) -> AssociationTest:
    """One SEAT/WEAT specification file (one JSON object despite the ``.jsonl`` suffix)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"Association test file {path} does not exist.") from None
    except json.JSONDecodeError as e:
        raise DataError(f"Association test file {path} is not valid JSON: line {e.lineno}: {e.msg}.") from None
    return _from_spec(path.name.removesuffix(".jsonl").removesuffix(".json"), spec, where=str(path))


def find_seat_dir(data_dir: str | Path | None = None) -> Path | None:
    """``seat/`` under the first data directory that has it (see ``trustnlp.data.registry.data_dirs``)."""
    from trustnlp.data.registry import data_dirs

    for d in data_dirs(data_dir):
        if (d / "seat").is_dir():
            return d / "seat"
    return None


def load_seat_tests(directory: str | Path | None = None, names: Sequence[str] | None = None) -> dict[str, AssociationTest]:
    """The SEAT/WEAT tests of a directory (default: ``../shared/data/seat``), by name.

    Args:
        directory: a folder of ``*.jsonl`` specifications; ``None`` looks up ``seat/`` in the data
            directories.
        names: which tests (file names without suffix, e.g. ``["weat6", "sent-weat6"]``); all when
            ``None``. Unknown names raise :class:`DataError` listing the available ones.
    """
    folder = Path(directory) if directory is not None else find_seat_dir()
    if folder is None or not folder.is_dir():
        raise DataError(f"SEAT test directory {folder or '../shared/data/seat'} not found; pass the folder holding the "
                        "SEAT `*.jsonl` files, or use `builtin_tests()`.")
    files = {p.name.removesuffix(".jsonl"): p for p in sorted(folder.glob("*.jsonl"))}
    if names is None:
        wanted = list(files)
    else:
        wanted = list(names)
        unknown = [n for n in wanted if n not in files]
        if unknown:
            raise DataError(f"Unknown SEAT test(s) {unknown} in {folder}; available: {sorted(files)}.")
    return {n: load_seat_test(files[n]) for n in wanted}


def builtin_tests() -> dict[str, AssociationTest]:
    """The project's own word-level association tests (``resources/association_tests.json``)."""
    text = resources.files("trustnlp.fairness").joinpath("resources/association_tests.json").read_text("utf-8")
    spec = json.loads(text)
    where = "trustnlp/fairness/resources/association_tests.json"
    return {name: replace(_from_spec(name, t, where=f"{where}#{name}", level="word"), source=where)
            for name, t in spec["tests"].items()}


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def sentence_version(test: AssociationTest, *, templates: Mapping[str, Sequence[str]] | None = None) -> AssociationTest:
    """A SEAT-style sentence test: every example put into each bleached template of its set's kind.

    Sets without a ``kind`` use ``term`` templates. The new test is named ``sent-<name>``.
    """
    if test.level != "word":
        raise DataError(f"Test `{test.name}` is already a sentence test.")
    table = dict(TEMPLATES if templates is None else templates)

    def expand(ws: WordSet) -> WordSet:
        kind = ws.kind or "term"
        if kind not in table:
            raise DataError(f"No templates for set kind {kind!r} (have {sorted(table)}).")
        out = tuple(t.format(x=w, a=_article(w)) for w in ws.examples for t in table[kind])
        return WordSet(ws.category, out, kind)

    return AssociationTest(f"sent-{test.name}", expand(test.X), expand(test.Y), expand(test.A), expand(test.B),
                           level="sentence", source=test.source,
                           extra={"templates": {k: list(v) for k, v in table.items()}, "words_from": test.name})
