"""The built-in "assistant" corpus: a seeded, versioned generator of voice-assistant requests.

Everything here is written for trustnlp (templates and lexicons in ``_assistant_templates.py``);
no external data is read. ``generate_assistant(config, seed=...)`` returns train / validation /
test splits of lower-case utterances labelled with one of :data:`INTENTS` (22 intents), with
word ``tokens`` and BIO slot ``tags`` and per-example columns:

- ``user_id`` (``"u00042"``): users have heavy-tailed (lognormal) activity; every user has at least
  one utterance.
- ``timezone``: the user's IANA time zone, from a fixed list with standard-time offsets
  (daylight saving is ignored).
- ``timestamp``: int unix seconds (UTC) within ``[start, start + weeks)``, drawn with a diurnal
  pattern in the user's local time (plus per-intent tilts: alarms at night, traffic in the morning).
- ``template_id`` (``"set_alarm/03"``), ``gender`` (``"female"``/``"male"`` when the utterance
  mentions a gendered person, else ``"none"``; the protected attribute) and ``profession``
  (``"none"`` when absent).

Held-out evaluation: each intent has 12 templates; those at index ``i % 4 == 3`` (3 per intent)
produce the test split only, the other 9 produce train and validation. Test utterances also
draw fillers from held-out prefix/suffix lists that never occur in train or validation.

Example:
    >>> splits = generate_assistant(AssistantConfig(n_utterances=500, n_users=50), seed=0)
    >>> len(splits.train) + len(splits.validation) + len(splits.test)
    500
"""

from __future__ import annotations

import datetime as _dt
import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from trustnlp.data import _assistant_templates as T
from trustnlp.data.dataset import DataMeta, DatasetSplits, TextDataset
from trustnlp.errors import ConfigError, expected

__all__ = [
    "ASSISTANT_CORPUS_VERSION",
    "INTENTS",
    "PROFESSION_STEREOTYPES",
    "TIMEZONES",
    "AssistantConfig",
    "assistant_tag_names",
    "assistant_vocabulary",
    "generate_assistant",
]

ASSISTANT_CORPUS_VERSION = "1.0"
INTENTS: tuple[str, ...] = tuple(T.TEMPLATES)
TIMEZONES: tuple[tuple[str, float], ...] = tuple((name, off) for name, off, _ in T.TIMEZONES)
"""The fixed time zones: (IANA name, standard-time UTC offset in hours)."""
PROFESSION_STEREOTYPES: Mapping[str, str | None] = MappingProxyType(dict(T.PROFESSIONS))
"""Profession -> the gender stereotype that ``gender_skew`` pushes toward (``None``: no stereotype)."""
_WEEK = 7 * 86400


@dataclass(frozen=True)
class AssistantConfig:
    """Knobs of the assistant corpus generator.

    Attributes:
        n_utterances: total utterances over all splits.
        n_users: number of users. Every user has at least one utterance, so at most
            ``n_utterances`` users are generated (a larger value is capped; the number used is
            recorded in the metadata as ``n_users_effective``).
        weeks: length of the time window, in weeks, starting at ``start`` (00:00 UTC).
        start: first day of the window, an ISO date (``"2026-01-05"``).
        activity_sigma: heavy tail of user activity. Each user gets a lognormal activity weight
            ``exp(activity_sigma * z)``, ``z ~ N(0, 1)`` clipped to [-3.5, 3.5]; every user has one
            utterance and the rest are spread multinomially in proportion to the weights
            (0 = uniform; the default 1.25 gives the top 10% of users ~45% of the utterances, the
            busiest user ~1.5%, the median user 5 of 24000).
        intent_concentration: each user's intent mix is Dirichlet(``intent_concentration`` x the
            global intent popularity); small values give very non-IID users, large values IID.
        gender_skew: ``s`` in [0, 1]. When a mentioned person is referred to by a profession with
            a gender stereotype (nurse, secretary, ... -> female; engineer, plumber, ... -> male),
            that person has the stereotyped gender with probability ``(1 + s) / 2``: 0 = balanced,
            1 = always stereotyped. Professions without a stereotype (dentist, lawyer, ...) follow
            the intent rule below.
        intent_gender_bias: intent -> ``b`` in [-1, 1]. Every other mentioned person in an
            utterance of that intent is female with probability ``(1 + b) / 2`` (missing intents:
            ``b = 0``, balanced). The gender fixes the name, relation word and pronouns used.
        filler_rate: probability of a filler prefix (``"hey"``, ``"can you"``, ...); a filler
            suffix (``"please"``, ``"thanks"``) has probability ``0.6 * filler_rate``.
        typo_rate: probability that one word with a known typo (``weather`` -> ``wether``) is
            misspelt.
        test_fraction / validation_fraction: share of each intent's utterances in test /
            validation (rounded down; train gets the rest, so train holds every intent that occurs).
    """

    n_utterances: int = 24000
    n_users: int = 2500
    weeks: int = 8
    start: str = "2026-01-05"
    activity_sigma: float = 1.25
    intent_concentration: float = 5.0
    gender_skew: float = 0.5
    intent_gender_bias: Mapping[str, float] = field(default_factory=dict, hash=False)
    filler_rate: float = 0.35
    typo_rate: float = 0.03
    test_fraction: float = 0.15
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("n_utterances", "n_users", "weeks"):
            v = getattr(self, name)
            _require(isinstance(v, int) and not isinstance(v, bool), name, "an integer", v)
            _require(v >= 1, name, ">= 1", v)
        try:
            _dt.date.fromisoformat(self.start)
        except (TypeError, ValueError):
            raise ConfigError(expected("start", "an ISO date like '2026-01-05'", self.start)) from None
        for name, lo, hi in (("gender_skew", 0, 1), ("filler_rate", 0, 1), ("typo_rate", 0, 1)):
            v = getattr(self, name)
            _require(_is_number(v) and lo <= v <= hi, name, f"in [{lo}, {hi}]", v)
        _require(_is_number(self.activity_sigma) and self.activity_sigma >= 0, "activity_sigma", ">= 0",
                 self.activity_sigma)
        _require(_is_number(self.intent_concentration) and self.intent_concentration > 0, "intent_concentration", "> 0",
                 self.intent_concentration)
        for name in ("test_fraction", "validation_fraction"):
            v = getattr(self, name)
            _require(_is_number(v) and 0 <= v < 1, name, "in [0, 1)", v)
        total = self.test_fraction + self.validation_fraction
        _require(total < 1, "test_fraction + validation_fraction", "< 1", total)
        if not isinstance(self.intent_gender_bias, Mapping):
            raise ConfigError(expected("intent_gender_bias", "a mapping intent -> float", self.intent_gender_bias))
        for k, v in self.intent_gender_bias.items():
            _require(k in INTENTS, "intent_gender_bias key", f"one of {list(INTENTS)}", k)
            _require(_is_number(v) and -1 <= v <= 1, f"intent_gender_bias[{k!r}]", "in [-1, 1]", v)
        object.__setattr__(self, "intent_gender_bias", {k: float(v) for k, v in sorted(self.intent_gender_bias.items())})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _require(ok: bool, name: str, requirement: str, got: Any) -> None:
    if not ok:
        raise ConfigError(expected(name, requirement, got))


# -- templates ----------------------------------------------------------------------------------
_LIT, _ALT, _SLOT = 0, 1, 2
_PART = re.compile(r"\(([^()]*)\)|\[([^\[\]]*)\]|\{(\w+)\}|(\S+)")


@dataclass(frozen=True)
class _Template:
    id: str
    intent: int
    parts: tuple[tuple[int, Any], ...]
    has_who: bool
    has_pronoun: bool


def _parse(template_id: str, intent: int, text: str) -> _Template:
    parts: list[tuple[int, Any]] = []
    for alt, opt, slot, word in _PART.findall(text):
        if slot:
            if slot not in T.LEXICONS and slot != "who" and slot not in T.PRONOUNS:
                raise ValueError(f"template {template_id}: unknown slot {{{slot}}}")
            parts.append((_SLOT, slot))
        elif word:
            if parts and parts[-1][0] == _LIT:
                parts[-1] = (_LIT, parts[-1][1] + (word,))
            else:
                parts.append((_LIT, (word,)))
        else:
            options = alt.split("|") if alt else [opt, ""]
            if any(c in o for o in options for c in "{}()[]"):
                raise ValueError(f"template {template_id}: alternatives must be literal words")
            parts.append((_ALT, tuple(tuple(o.split()) for o in options)))
    slots = {v for k, v in parts if k == _SLOT}
    if "who" in slots and slots & {"provider", "profession"}:
        raise ValueError(f"template {template_id}: {{who}} and a profession slot would describe two people")
    return _Template(template_id, intent, tuple(parts), "who" in slots, bool(slots & set(T.PRONOUNS)))


def _build_templates() -> tuple[list[list[_Template]], list[list[_Template]]]:
    train: list[list[_Template]] = []
    test: list[list[_Template]] = []
    for k, intent in enumerate(INTENTS):
        lines = [ln.strip() for ln in T.TEMPLATES[intent].strip().splitlines() if ln.strip()]
        tpls = [_parse(f"{intent}/{i:02d}", k, ln) for i, ln in enumerate(lines)]
        train.append([t for i, t in enumerate(tpls) if i % T.HELD_OUT_EVERY != T.HELD_OUT_EVERY - 1])
        test.append([t for i, t in enumerate(tpls) if i % T.HELD_OUT_EVERY == T.HELD_OUT_EVERY - 1])
    return train, test


_TRAIN_TEMPLATES, _TEST_TEMPLATES = _build_templates()
_LEX: dict[str, tuple[str, tuple[tuple[str, ...], ...]]] = {
    slot: (tag, tuple(tuple(v.split()) for v in values)) for slot, (tag, values) in T.LEXICONS.items()
}
_SLOT_TAGS = sorted({tag for tag, _ in T.LEXICONS.values()} | {"person", "relation", "profession", "contact"})


def _split_all(*groups: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(p.split()) for g in groups for p in g)


# (train/validation, test) filler lists; held-out fillers are listed twice in test to weigh them up
_PREFIXES = (_split_all(T.PREFIXES), _split_all(T.PREFIXES, T.PREFIXES_HELD_OUT, T.PREFIXES_HELD_OUT))
_PREFIXES_IMP = (_split_all(T.PREFIXES, T.REQUEST_PREFIXES),
                 _split_all(T.PREFIXES, T.REQUEST_PREFIXES, *(T.PREFIXES_HELD_OUT, T.REQUEST_PREFIXES_HELD_OUT) * 2))
_SUFFIXES = (_split_all(T.SUFFIXES), _split_all(T.SUFFIXES, T.SUFFIXES_HELD_OUT, T.SUFFIXES_HELD_OUT))


def assistant_tag_names() -> tuple[str, ...]:
    """The tag vocabulary: ``"O"`` first, then every ``B-``/``I-`` slot tag, sorted."""
    return ("O", *sorted(f"{p}-{t}" for t in _SLOT_TAGS for p in "BI"))


def assistant_vocabulary() -> list[str]:
    """Every word the generator can emit, sorted.

    Built from the templates and lexicons only, never from sampled data, so a word-level tokenizer
    built from it is public: it reveals nothing about which examples were generated or used.
    """
    return list(_VOCABULARY)


def _vocabulary() -> tuple[str, ...]:
    words: set[str] = set()
    for pools in (_TRAIN_TEMPLATES, _TEST_TEMPLATES):
        for tpls in pools:
            for t in tpls:
                for kind, val in t.parts:
                    if kind == _LIT:
                        words.update(val)
                    elif kind == _ALT:
                        words.update(w for o in val for w in o)
    for _, values in T.LEXICONS.values():
        words.update(w for v in values for w in v.split())
    for group in (T.FEMALE_NAMES, T.MALE_NAMES, T.FEMALE_RELATIONS, T.MALE_RELATIONS, T.NEUTRAL_RELATIONS,
                  tuple(T.PROFESSIONS), T.PREFIXES, T.PREFIXES_HELD_OUT, T.REQUEST_PREFIXES,
                  T.REQUEST_PREFIXES_HELD_OUT, T.SUFFIXES, T.SUFFIXES_HELD_OUT):
        words.update(w for v in group for w in v.split())
    words.update(w for forms in T.PRONOUNS.values() for w in forms.values())
    words.update(w for typos in T.TYPOS.values() for w in typos)
    words.update(("my", "the"))
    return tuple(sorted({w.lower() for w in words}))


_VOCABULARY = _vocabulary()


# -- people ---------------------------------------------------------------------------------------
_OTHER = {"female": "male", "male": "female"}
_NAMES = {"female": T.FEMALE_NAMES, "male": T.MALE_NAMES}
_RELATIONS = {"female": T.FEMALE_RELATIONS, "male": T.MALE_RELATIONS}
_PROFESSION_LIST = tuple(T.PROFESSIONS)
# Mention kinds (weights); "prof"/"nrel" need a pronoun in the template to show the gender.
_KINDS_PRON = (("prof", 0.3), ("nrel", 0.15), ("name", 0.15), ("rel", 0.15), ("rel_name", 0.1), ("prof_name", 0.15))
_KINDS_PLAIN = (("name", 0.3), ("rel", 0.25), ("rel_name", 0.2), ("prof_name", 0.25))


def _mention(rng: random.Random, tpl: _Template, cfg: AssistantConfig, intent: str
             ) -> tuple[list[str], list[str], str, str]:
    """A person mention: (tokens, tags, gender, profession)."""
    if intent in ("call_contact", "send_message") and not tpl.has_pronoun and rng.random() < 0.15:
        _, values = _LEX["contact"]
        words = rng.choice(values)
        return list(words), ["B-contact"] + ["I-contact"] * (len(words) - 1), "none", "none"
    kinds = _KINDS_PRON if tpl.has_pronoun else _KINDS_PLAIN
    kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
    profession = "none"
    stereotype = None
    if kind.startswith("prof"):
        profession = rng.choice(_PROFESSION_LIST)
        stereotype = T.PROFESSIONS[profession]
    if stereotype is not None:
        gender = stereotype if rng.random() < (1 + cfg.gender_skew) / 2 else _OTHER[stereotype]
    else:
        gender = "female" if rng.random() < (1 + cfg.intent_gender_bias.get(intent, 0.0)) / 2 else "male"
    if kind == "name":
        return [rng.choice(_NAMES[gender])], ["B-person"], gender, profession
    if kind == "rel":
        return ["my", rng.choice(_RELATIONS[gender])], ["O", "B-relation"], gender, profession
    if kind == "nrel":
        return ["my", rng.choice(T.NEUTRAL_RELATIONS)], ["O", "B-relation"], gender, profession
    if kind == "rel_name":
        rel = rng.choice(_RELATIONS[gender] if rng.random() < 0.5 else T.NEUTRAL_RELATIONS)
        return ["my", rel, rng.choice(_NAMES[gender])], ["O", "B-relation", "B-person"], gender, profession
    det = rng.choice(("the", "my"))
    if kind == "prof":
        return [det, profession], ["O", "B-profession"], gender, profession
    return [det, profession, rng.choice(_NAMES[gender])], ["O", "B-profession", "B-person"], gender, profession


# -- rendering ------------------------------------------------------------------------------------
def _render(rng: random.Random, tpl: _Template, cfg: AssistantConfig, held_out: bool
            ) -> tuple[list[str], list[str], str, str]:
    intent = INTENTS[tpl.intent]
    gender, profession = "none", "none"
    if tpl.has_who:
        m_tokens, m_tags, gender, profession = _mention(rng, tpl, cfg, intent)
    toks: list[str] = []
    tags: list[str] = []
    for kind, val in tpl.parts:
        if kind == _LIT:
            words: tuple[str, ...] | list[str] = val
        elif kind == _ALT:
            words = rng.choice(val)
        elif val == "who":
            toks += m_tokens
            tags += m_tags
            continue
        elif val in T.PRONOUNS:
            words = (T.PRONOUNS[val][gender],)
        else:
            tag, values = _LEX[val]
            words = rng.choice(values)
            toks += words
            tags += [f"B-{tag}"] + [f"I-{tag}"] * (len(words) - 1)
            if tag == "profession":
                profession = " ".join(words)
            continue
        toks += words
        tags += ["O"] * len(words)
    # paraphrase operations: front a trailing date, fillers, one typo
    if tags and tags[-1].endswith("-date") and rng.random() < 0.15:
        b = max(i for i, t in enumerate(tags) if t == "B-date")
        if b > 0:
            toks = toks[b:] + toks[:b]
            tags = tags[b:] + tags[:b]
    if rng.random() < cfg.filler_rate:
        imperative = tags[0] == "O" and toks[0] not in T.NON_IMPERATIVE
        pre = rng.choice((_PREFIXES_IMP if imperative else _PREFIXES)[held_out])
        toks = list(pre) + toks
        tags = ["O"] * len(pre) + tags
    if rng.random() < 0.6 * cfg.filler_rate:
        suf = rng.choice(_SUFFIXES[held_out])
        if suf != tuple(toks[-len(suf):]):
            toks += suf
            tags += ["O"] * len(suf)
    if cfg.typo_rate and rng.random() < cfg.typo_rate:
        cands = [i for i, (w, t) in enumerate(zip(toks, tags)) if t == "O" and w in T.TYPOS]
        if cands:
            i = rng.choice(cands)
            toks[i] = rng.choice(T.TYPOS[toks[i]])
    return toks, tags, gender, profession


# -- sampling -------------------------------------------------------------------------------------
def _start_epoch(start: str) -> int:
    d = _dt.date.fromisoformat(start)
    return int(_dt.datetime(d.year, d.month, d.day, tzinfo=_dt.UTC).timestamp())


def _hour_cdf() -> np.ndarray:
    base = np.asarray(T.DIURNAL, dtype=np.float64)
    rows = []
    for intent in INTENTS:
        w = base.copy()
        for hours, factor in T.HOUR_TILTS.get(intent, ()):
            w[list(hours)] *= factor
        rows.append(np.cumsum(w / w.sum()))
    return np.stack(rows)


def _pick(cdf_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: one index per row of ``cdf_rows`` for uniforms ``u``."""
    return np.minimum((u[:, None] > cdf_rows).sum(axis=1), cdf_rows.shape[1] - 1)


def generate_assistant(config: AssistantConfig | None = None, *, seed: int = 0) -> DatasetSplits:
    """Generate the assistant corpus: train / validation / test splits.

    Train and validation come from the 9 train templates of each intent; test from the 3 held-out
    templates (and held-out filler paraphrases). Within each intent, ``test_fraction`` and
    ``validation_fraction`` of its utterances (rounded down) go to test and validation. Each
    split is ordered by timestamp. The same config and seed always give identical output.
    """
    cfg = config if config is not None else AssistantConfig()
    if not isinstance(cfg, AssistantConfig):
        raise ConfigError(expected("config", "an AssistantConfig or None", cfg))
    _require(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0, "seed",
             "a non-negative integer", seed)
    n, n_users, K = cfg.n_utterances, min(cfg.n_users, cfg.n_utterances), len(INTENTS)
    r_users, r_intents, r_times, r_split, r_text = (np.random.default_rng(s)
                                                    for s in np.random.SeedSequence(int(seed)).spawn(5))
    # users: one utterance each plus a multinomial share of the rest, by lognormal activity
    w = np.exp(cfg.activity_sigma * np.clip(r_users.standard_normal(n_users), -3.5, 3.5))
    counts = 1 + r_users.multinomial(n - n_users, w / w.sum())
    user_of = np.repeat(np.arange(n_users), counts)
    tz_w = np.asarray([wt for _, _, wt in T.TIMEZONES])
    tz_of_user = r_users.choice(len(T.TIMEZONES), size=n_users, p=tz_w / tz_w.sum())
    # intents: per-user Dirichlet mix around the global popularity
    pop = np.asarray([T.INTENT_POPULARITY[i] for i in INTENTS], dtype=np.float64)
    g = r_intents.gamma(cfg.intent_concentration * pop / pop.sum(), size=(n_users, K)) + 1e-12
    user_cdf = np.cumsum(g / g.sum(axis=1, keepdims=True), axis=1)
    intent = _pick(user_cdf[user_of], r_intents.random(n))
    # timestamps: uniform day, diurnal local hour, shifted to UTC and wrapped into the window
    local = (r_times.integers(0, 7 * cfg.weeks, n) * 86400 + _pick(_hour_cdf()[intent], r_times.random(n)) * 3600
             + r_times.integers(0, 3600, n))
    offsets = np.rint(np.asarray([off for _, off, _ in T.TIMEZONES]) * 3600).astype(np.int64)
    t0 = _start_epoch(cfg.start)
    ts = t0 + local - offsets[tz_of_user[user_of]]
    ts = np.where(ts < t0, ts + _WEEK, ts)
    ts = np.where(ts >= t0 + cfg.weeks * _WEEK, ts - _WEEK, ts)
    # splits, stratified by intent: 0 train, 1 validation, 2 test
    split = np.zeros(n, dtype=np.int8)
    for k in range(K):
        idx = r_split.permutation(np.flatnonzero(intent == k))
        n_test, n_val = int(cfg.test_fraction * len(idx)), int(cfg.validation_fraction * len(idx))
        split[idx[:n_test]] = 2
        split[idx[n_test:n_test + n_val]] = 1
    # text
    rng = random.Random(int(r_text.integers(2**63)))
    rendered = []
    for k, s in zip(intent.tolist(), split.tolist()):
        tpl = rng.choice(_TEST_TEMPLATES[k] if s == 2 else _TRAIN_TEMPLATES[k])
        rendered.append((tpl.id, *_render(rng, tpl, cfg, s == 2)))
    width = max(5, len(str(n_users - 1)))
    tz_names = [name for name, _, _ in T.TIMEZONES]
    details = {**asdict(cfg), "seed": int(seed), "n_users_effective": n_users,
               "held_out_templates": f"index % {T.HELD_OUT_EVERY} == {T.HELD_OUT_EVERY - 1} within each intent"}
    meta = DataMeta(name="assistant", source="generated by trustnlp (trustnlp.data.assistant)", licence="Apache-2.0",
                    version=ASSISTANT_CORPUS_VERSION, details=details)
    tag_names = assistant_tag_names()

    def build(which: int) -> TextDataset:
        idx = np.flatnonzero(split == which)
        idx = idx[np.lexsort((idx, ts[idx]))].tolist()
        rows = [rendered[i] for i in idx]
        return TextDataset(
            [" ".join(r[1]) for r in rows],
            intent[idx],
            label_names=INTENTS,
            columns={
                "user_id": [f"u{user_of[i]:0{width}d}" for i in idx],
                "timestamp": [int(ts[i]) for i in idx],
                "timezone": [tz_names[tz_of_user[user_of[i]]] for i in idx],
                "template_id": [r[0] for r in rows],
                "gender": [r[3] for r in rows],
                "profession": [r[4] for r in rows],
            },
            protected=("gender",),
            tokens=[r[1] for r in rows],
            tags=[r[2] for r in rows],
            tag_names=tag_names,
            meta=meta,
        )

    return DatasetSplits(train=build(0), validation=build(1) if cfg.validation_fraction > 0 else None, test=build(2))
