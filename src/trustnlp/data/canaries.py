"""Canaries: secrets planted in training data to measure what a trained model gives away.

A canary is a known **template** with an unknown secret slot, e.g. ``"my pin code is {secret}"``,
filled with a secret drawn uniformly from a public **secret space** ``R`` and labelled with an
intent of the data set; it is inserted ``r`` times (``repetitions``) into the training split
(Carlini et al. 2019, "The Secret Sharer"; Parikh et al. 2022, "Canary extraction in natural
language understanding models"). Two secret spaces:

- ``digits``: 4 digits ``0-9`` written with spaces (``"4 7 1 9"``), ``|R| = 10^4``: small enough to
  enumerate, so the exhaustive search is the attack's oracle;
- ``words``: 6 words from the public list ``resources/canary_words.txt`` (1000 common English words,
  each a single token of the MiniLM WordPiece vocabulary), ``|R| = 10^18``: only the relaxed attack
  applies, and ranks are estimated by sampling.

Every canary gets its own **context**, a (template, label) pair: the templates are shared between
labels, so only the secret tells the canaries of one template apart and a model can fit them only
by memorising secrets. ``n_canaries`` must not exceed ``templates x labels``.

:func:`insert_canaries` appends the ``r`` copies of each canary to a training split and returns a
:class:`CanaryManifest`: plain JSON data recording exactly what was inserted, and where.

Vocabulary: a word-level tokenizer must contain every token of the secret space (or a secret would
be ``[UNK]``). :func:`canary_vocabulary` lists the template words and the whole secret space, both
public, so a vocabulary built from a public lexicon plus it reveals nothing about which secrets were
drawn; :func:`secret_token_ids` checks that every secret token is one known token of a tokenizer.

Example:
    >>> cs = make_canaries(CanarySpec(kind="digits", n_canaries=3, repetitions=2), ["play", "stop"], seed=0)
    >>> [c.text.startswith(("my", "the")) for c in cs.canaries]
    [True, True, True]
    >>> cs.space.size
    10000
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from trustnlp.data.dataset import DataMeta, TextDataset
from trustnlp.errors import ConfigError, DataError, expected

__all__ = [
    "DEFAULT_TEMPLATES",
    "SECRET_KINDS",
    "SECRET_SLOT",
    "Canary",
    "CanaryManifest",
    "CanarySet",
    "CanarySpec",
    "SecretSpace",
    "canary_vocabulary",
    "canary_words",
    "insert_canaries",
    "make_canaries",
    "secret_space",
    "secret_token_ids",
]

SECRET_KINDS = ("digits", "words")
SECRET_SLOT = "{secret}"
_DEFAULT_LENGTH = {"digits": 4, "words": 6}
DEFAULT_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "digits": (
        "my pin code is {secret}",
        "the door code is {secret}",
        "my bank card pin is {secret}",
        "the safe combination is {secret}",
        "my phone passcode is {secret}",
    ),
    "words": (
        "my secret passphrase is {secret}",
        "the recovery words are {secret}",
        "my password is {secret}",
        "remember these words {secret}",
        "the vault phrase is {secret}",
    ),
}
_WORD_RE = re.compile(r"\w+|[^\w\s]")


@functools.cache
def canary_words() -> tuple[str, ...]:
    """The public word list of the ``words`` secret space (1000 words, in file order)."""
    text = resources.files("trustnlp.data").joinpath("resources/canary_words.txt").read_text(encoding="utf-8")
    words = tuple(w.strip() for w in text.splitlines() if w.strip() and not w.startswith("#"))
    if len(set(words)) != len(words):  # pragma: no cover - guards the shipped resource
        raise DataError("The canary word list has duplicate words.")
    return words


@dataclass(frozen=True)
class SecretSpace:
    """A secret space ``R = tokens^length``: ``length`` slots, each one of ``tokens``.

    A secret is a tuple of token indices (into ``tokens``); its **index** in ``R`` is the base-``V``
    number of those indices (``V = len(tokens)``, first slot most significant), which is also its
    position in :meth:`enumerate`.
    """

    kind: str
    tokens: tuple[str, ...]
    length: int

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or isinstance(self.length, bool) or self.length < 1:
            raise ConfigError(expected("length", "an integer >= 1", self.length))
        if len(self.tokens) < 2 or len(set(self.tokens)) != len(self.tokens):
            raise ConfigError(expected("tokens", "at least 2 distinct tokens", self.tokens[:5]))
        for t in self.tokens:
            if not isinstance(t, str) or _WORD_RE.findall(t) != [t.lower()]:
                raise ConfigError(expected("secret token", "one lower-case word or digit", t))

    @property
    def size(self) -> int:
        """``|R| = V^length``."""
        return len(self.tokens) ** self.length

    def sample(self, n: int, rng: np.random.Generator, *, distinct: bool = True) -> np.ndarray:
        """``n`` secrets drawn uniformly from ``R`` (``[n, length]`` token indices), all different when ``distinct``."""
        if distinct and n > self.size:
            raise ConfigError(expected("n_canaries", f"<= the secret space size ({self.size})", n))
        out = rng.integers(0, len(self.tokens), size=(n, self.length))
        if distinct:
            seen: set[tuple[int, ...]] = set()
            for i in range(n):
                while tuple(out[i]) in seen:  # redraw duplicates (rare: n << |R|)
                    out[i] = rng.integers(0, len(self.tokens), size=self.length)
                seen.add(tuple(out[i]))
        return out.astype(np.int64)

    def enumerate(self, *, limit: int = 10**6) -> np.ndarray:
        """Every secret, ``[|R|, length]``, in index order (refused above ``limit`` secrets)."""
        if self.size > limit:
            raise ConfigError(f"The `{self.kind}` secret space has {self.size} secrets; it cannot be enumerated "
                              f"(limit {limit}).")
        v = len(self.tokens)
        idx = np.arange(self.size, dtype=np.int64)
        powers = v ** np.arange(self.length - 1, -1, -1, dtype=np.int64)
        return (idx[:, None] // powers[None, :]) % v

    def index_of(self, secrets: np.ndarray) -> np.ndarray:
        """The index in ``R`` of each secret ``[n, length]`` -> ``[n]``."""
        s = np.asarray(secrets, dtype=np.int64)
        powers = len(self.tokens) ** np.arange(self.length - 1, -1, -1, dtype=np.int64)
        return s @ powers

    def render(self, secret: Sequence[int]) -> str:
        """The secret's text: its tokens joined by single spaces."""
        return " ".join(self.tokens[int(i)] for i in secret)

    def to_dict(self) -> dict[str, Any]:
        words = self.kind == "words"
        return {"kind": self.kind, "length": self.length, "alphabet_size": len(self.tokens), "size": self.size,
                "tokens": "resources/canary_words.txt" if words else list(self.tokens)}


def secret_space(kind: str, *, length: int | None = None) -> SecretSpace:
    """The ``digits`` (``0-9``, 4 slots) or ``words`` (the public word list, 6 slots) space."""
    if kind not in SECRET_KINDS:
        raise ConfigError(expected("secret", f"one of {list(SECRET_KINDS)}", kind))
    tokens = tuple(str(d) for d in range(10)) if kind == "digits" else canary_words()
    return SecretSpace(kind=kind, tokens=tokens, length=_DEFAULT_LENGTH[kind] if length is None else length)


@dataclass(frozen=True)
class CanarySpec:
    """What to plant.

    Attributes:
        kind: the secret space, ``digits`` or ``words``.
        n_canaries: how many different canaries (>= 100 for usable intervals on rates).
        repetitions: copies of each canary inserted (``r``; ``r`` copies of one secret are protected
            by example-level DP only at the group level, ``r * epsilon``).
        templates: texts with one ``{secret}`` slot (default: :data:`DEFAULT_TEMPLATES` of ``kind``).
        labels: the label names canaries may take (``None``: every label of the data).
        length: slots per secret (``None``: 4 for digits, 6 for words).
    """

    kind: str = "digits"
    n_canaries: int = 100
    repetitions: int = 1
    templates: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    length: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SECRET_KINDS:
            raise ConfigError(expected("secret", f"one of {list(SECRET_KINDS)}", self.kind))
        for name in ("n_canaries", "repetitions"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(expected(name, "an integer >= 1", v))
        if self.templates is not None:
            object.__setattr__(self, "templates", tuple(self.templates))
            if not self.templates:
                raise ConfigError(expected("templates", "a non-empty list", self.templates))
            for t in self.templates:
                if not isinstance(t, str) or t.count(SECRET_SLOT) != 1:
                    raise ConfigError(expected("template", f"a text with exactly one {SECRET_SLOT} slot", t))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def resolved_templates(self) -> tuple[str, ...]:
        return self.templates if self.templates is not None else DEFAULT_TEMPLATES[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_canaries": self.n_canaries, "repetitions": self.repetitions,
                "templates": list(self.resolved_templates), "labels": None if self.labels is None else list(self.labels),
                "length": self.length}


@dataclass(frozen=True)
class Canary:
    """One canary: its context (template, label) and its secret.

    Attributes:
        id: index of the canary in its set.
        template: the text with the ``{secret}`` slot (known to the attacker).
        label / label_name: the intent it is labelled with (known to the attacker).
        secret: token indices into the secret space's tokens (unknown to the attacker).
        text: the inserted utterance.
    """

    id: int
    template: str
    label: int
    label_name: str
    secret: tuple[int, ...]
    text: str

    @property
    def prefix(self) -> str:
        return self.template.split(SECRET_SLOT)[0].strip()

    @property
    def suffix(self) -> str:
        return self.template.split(SECRET_SLOT)[1].strip()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "template": self.template, "label": self.label, "label_name": self.label_name,
                "secret": list(self.secret), "text": self.text}


@dataclass(frozen=True)
class CanarySet:
    """The canaries of one setting, with the spec, space and seed that made them."""

    spec: CanarySpec
    space: SecretSpace
    seed: int
    canaries: tuple[Canary, ...]

    @property
    def secrets(self) -> np.ndarray:
        """``[n, length]`` token indices of every canary's secret."""
        return np.array([c.secret for c in self.canaries], dtype=np.int64).reshape(-1, self.space.length)

    def __len__(self) -> int:
        return len(self.canaries)


def make_canaries(spec: CanarySpec, label_names: Sequence[str], *, seed: int) -> CanarySet:
    """Draw ``spec.n_canaries`` canaries: distinct (template, label) contexts and distinct secrets.

    The contexts are a seeded random choice without replacement from ``templates x labels``; the
    secrets are uniform over the space (redrawn when two coincide). Same seed, same canaries.

    Raises:
        ConfigError: an unknown label, or more canaries than (template, label) contexts.
    """
    names = tuple(label_names)
    allowed = names if spec.labels is None else spec.labels
    for name in allowed:
        if name not in names:
            raise ConfigError(expected("canary label", f"one of the data's labels {list(names)[:10]}", name))
    templates = spec.resolved_templates
    contexts = [(t, names.index(lab)) for t in templates for lab in allowed]
    if spec.n_canaries > len(contexts):
        raise ConfigError(expected("n_canaries", f"<= templates x labels ({len(templates)} x {len(allowed)} = "
                                   f"{len(contexts)}) so that every canary has its own context", spec.n_canaries))
    space = secret_space(spec.kind, length=spec.length)
    rng = np.random.default_rng([seed, 0xCA4A])
    order = rng.permutation(len(contexts))[: spec.n_canaries]
    secrets = space.sample(spec.n_canaries, rng)
    canaries = []
    for i, (k, s) in enumerate(zip(order, secrets)):
        template, label = contexts[int(k)]
        text = " ".join(template.replace(SECRET_SLOT, space.render(s)).split())
        canaries.append(Canary(id=i, template=template, label=label, label_name=names[label],
                               secret=tuple(int(x) for x in s), text=text))
    return CanarySet(spec=spec, space=space, seed=seed, canaries=tuple(canaries))


@dataclass(frozen=True)
class CanaryManifest:
    """Exactly what :func:`insert_canaries` inserted (JSON via :meth:`to_dict`).

    Attributes:
        spec / space / seed: how the canaries were made.
        canaries: every canary (context, secret, text).
        indices: per canary, the positions of its ``r`` copies in the new training split.
        n_train_before / n_train_after: sizes of the training split.
        data: the name of the data set.
    """

    spec: CanarySpec
    space: SecretSpace
    seed: int
    canaries: tuple[Canary, ...]
    indices: tuple[tuple[int, ...], ...]
    n_train_before: int
    n_train_after: int
    data: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "seed": self.seed,
            "spec": self.spec.to_dict(),
            "space": self.space.to_dict(),
            "n_train_before": self.n_train_before,
            "n_train_after": self.n_train_after,
            "canaries": [{**c.to_dict(), "secret_text": self.space.render(c.secret), "indices": list(ix)}
                         for c, ix in zip(self.canaries, self.indices)],
            **dict(self.extra),
        }


def insert_canaries(train: TextDataset, canaries: CanarySet, *, user_column: str = "user_id") -> tuple[TextDataset, CanaryManifest]:
    """Append ``spec.repetitions`` copies of every canary to the training split.

    The copies go at the end, canary by canary (the training samplers shuffle, so the position does
    not matter). Per-example columns of the new rows: ``user_column`` (when present) gets a user of
    its own per canary (``"canary-0007"``: its ``r`` copies are one user), every other column
    ``None``. Tagged data gets the whitespace tokens of the text, all tagged ``O``.

    Raises:
        DataError: the data has no labels, its label names differ from the canaries', or it is
            tagged without an ``O`` tag.
    """
    if train.labels is None:
        raise DataError(f"Data set `{train.meta.name}` has no labels; canaries are labelled examples.")
    for c in canaries.canaries:
        if c.label >= train.num_labels or train.label_names[c.label] != c.label_name:
            raise DataError(expected("canary label", f"label {c.label} of `{train.meta.name}`", c.label_name))
    r = canaries.spec.repetitions
    n0 = len(train)
    texts = list(train.texts)
    labels = list(np.asarray(train.labels))
    new_cols: dict[str, list[Any]] = {k: list(v) for k, v in train.columns.items()}
    tokens = None if train.tokens is None else [list(t) for t in train.tokens]
    tags = None if train.tags is None else [list(t) for t in train.tags]
    if tags is not None and "O" not in train.tag_names:
        raise DataError(f"Data set `{train.meta.name}` is tagged but has no `O` tag for the canaries' words.")
    indices = []
    for c in canaries.canaries:
        start = len(texts)
        for _ in range(r):
            texts.append(c.text)
            labels.append(c.label)
            for name, col in new_cols.items():
                col.append(f"canary-{c.id:04d}" if name == user_column else None)
            if tokens is not None and tags is not None:
                words = c.text.split()
                tokens.append(words)
                tags.append(["O"] * len(words))
        indices.append(tuple(range(start, start + r)))
    meta = DataMeta(name=train.meta.name, source=train.meta.source, licence=train.meta.licence,
                    files=train.meta.files, version=train.meta.version,
                    details={**train.meta.details, "canaries": {"n": len(canaries), "repetitions": r,
                                                                "kind": canaries.space.kind, "seed": canaries.seed}})
    out = TextDataset(texts, labels, label_names=train.label_names, columns=new_cols, protected=train.protected,
                      tokens=tokens, tags=tags, tag_names=train.tag_names, meta=meta)
    manifest = CanaryManifest(spec=canaries.spec, space=canaries.space, seed=canaries.seed,
                              canaries=canaries.canaries, indices=tuple(indices), n_train_before=n0,
                              n_train_after=len(out), data=train.meta.name)
    return out, manifest


def canary_vocabulary(space: SecretSpace, templates: Iterable[str]) -> list[str]:
    """The words a word-level vocabulary needs for canaries: every template word, then every secret token.

    Both are public (the templates and the whole secret space, never the drawn secrets), so adding
    them to a public lexicon keeps the vocabulary public.
    """
    words: list[str] = []
    seen: set[str] = set()
    for t in templates:
        for w in _WORD_RE.findall(t.replace(SECRET_SLOT, " ").lower()):
            if w not in seen:
                seen.add(w)
                words.append(w)
    for w in space.tokens:
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def secret_token_ids(tokenizer: Any, space: SecretSpace) -> list[int]:
    """The tokenizer id of every secret token (in ``space.tokens`` order).

    Raises:
        DataError: a secret token is not exactly one token of the tokenizer, or is unknown to it
            (``[UNK]``): the model could not represent that secret.
    """
    ids = []
    for t in space.tokens:
        enc = tokenizer.encode([t], add_special_tokens=False, max_length=16)
        row = enc.input_ids[0][enc.attention_mask[0].bool()].tolist()
        if len(row) != 1 or row[0] == tokenizer.unk_id:
            what = "unknown ([UNK])" if row == [tokenizer.unk_id] else f"{len(row)} tokens {row}"
            raise DataError(f"Expected every `{space.kind}` secret token to be one known token of the tokenizer, "
                            f"but {t!r} is {what}. Build a word vocabulary with canary_vocabulary(...) added.")
        ids.append(int(row[0]))
    if len(set(ids)) != len(ids):
        raise DataError(f"Expected the `{space.kind}` secret tokens to have distinct ids, but some share one.")
    return ids
