"""Bias mitigation by gender swapping: a context-aware swap, its measured accuracy, and counterfactual
data augmentation (CDA) of any training set.

**Swapping** (:func:`swap_gender`) builds on :mod:`trustnlp.fairness.counterfactual`: the word pairs
are those of :func:`~trustnlp.fairness.counterfactual.load_gender_swaps` (pronoun rules, the
project's list, the shared WinoBias / GN-GloVe lists), with these additions, all documented here:

* **Only words are touched.** A word is a maximal run of word characters (``\\w+``) made only of
  ASCII letters; it is looked up in lower case and written back in the case of the original
  (``he -> she``, ``He -> She``, ``HE -> SHE``). Everything else (whitespace, punctuation,
  digits, words with digits or underscores such as ``he2``, words with non-ASCII letters such as
  ``José``) is copied byte for byte. Clitics after an apostrophe (the ``s`` of ``he's``, the ``ll``
  of ``she'll``) are never swapped; the word before them is (``he's -> she's``, ``John's -> Mary's``).
* **"her"** (objective ``him`` or possessive ``his``), with ``her_rule="heuristic"`` (the default),
  by the words around it; ``prev``/``next`` are the neighbouring words when only whitespace
  separates them from ``her``. In order, the first rule that applies:

  1. no ``next`` (end of text, or punctuation follows: ``"It was her."``) -> ``him``;
  2. ``next`` is ``own``, or ``and``/``or`` before a possessive determiner (``"her or his child"``)
     -> ``his``;
  3. ``next`` is a function word (determiner, pronoun, preposition, particle, conjunction,
     auxiliary, time or place adverb: ``"give her a minute"``, ``"call her back"``) -> ``him``;
  4. ``next`` is a given name of the project's list (``"tell her John called"``) -> ``him``;
  5. ``next`` is a base-form verb that is rarely a noun (``know``, ``go``, ``sing``, ...:
     ``"let her know"``) -> ``him``;
  6. ``prev`` is a causative or perception verb (``make``, ``keep``, ``find``, ...) and ``next`` a
     predicative adjective (``"made her happy"``) -> ``him``;
  7. ``prev`` is a verb of motion (``take``, ``bring``, ``drive``, ...) and ``next`` is ``home``
     (``"bring her home"``) -> ``him``;
  8. otherwise -> ``his`` (``"her car"``, ``"her new boss"``). This default is recorded as
     **ambiguous** when ``prev`` is a verb that takes two objects or a complement (``give``,
     ``buy``, ``tell``, ``make``, ...) and ``next`` is not a noun usually possessed (family and
     person words, belongings): ``"bought her flowers"`` may be either.

  ``her_rule="pos"`` tags the text with a part-of-speech tagger (nltk's averaged perceptron, else
  spaCy's ``en_core_web_sm``): ``PRP$`` -> ``his``, ``PRP`` -> ``him``; any other tag falls back
  to the heuristic and is recorded as ambiguous. Neither package is a dependency of trustnlp:
  without them ``"pos"`` raises :class:`~trustnlp.errors.MissingDependencyError`.
* **"his"** (determiner ``her`` or pronoun ``hers``), in both modes:

  1. ``hers`` when no word follows (``"the book is his."``), or the next word is an auxiliary,
     adverb or conjunction that follows a pronoun subject (``"his was the best"``) or a preposition
     (``"a friend of his from school"``), unless a hyphen joins it to a compound (``"his in-laws"``);
  2. before ``and``/``or``: ``her`` when the word after that is a determiner (``"his or her
     child"``), else ``hers`` (``"his or hers?"``), recorded as ambiguous when a content word
     follows (the attributive ``"his and hers towels"``);
  3. otherwise ``her`` (``"his car"``), recorded as ambiguous in a double genitive before a word
     that is not a known noun (``"a friend of his owns"`` wants ``hers``, ``"a photo of his new
     car"`` wants ``her``).

  ``him -> her``, ``hers -> his``, ``himself <-> herself``, ``he <-> she`` are one-to-one.
* **Word senses.** ``miss`` is swapped only as a title before a capitalised word (``Miss Lee ->
  Mr Lee``) or as a form of address between a comma and punctuation (``", miss," -> ", sir,"``),
  never as the verb (``"don't miss the train"``). ``host(s)``, ``tailor``, ``master(s)`` are not
  swapped as verbs (after ``to`` or a modal, or before a determiner: ``"will host the party"``),
  nor ``master``/``bachelor`` as degrees and compounds (``"master's degree"``, ``"master
  bedroom"``), nor ``host`` in compounds (``"host country"``). Given names that are also common
  words (``grace``, ``lily``, ``jack``, ``mason``) are swapped when capitalised; in text without
  any capital letter (lower-cased corpora such as the built-in one) they are swapped and recorded
  as ambiguous.
* **Added pairs and fixes.** ``Mrs -> Mr`` (no list has ``mrs``), ``ma'am -> sir``; the WinoBias
  misspellings ``godess(es)`` and ``barnoesses`` are written ``goddess(es)``, ``baronesses``
  (and those spellings swap back).
* **Ambiguity.** Besides the cases above, a swap is recorded as ambiguous when it is not invertible
  in the list: its target's own counterpart is a different word (``Mrs -> Mr -> Ms``, ``lord ->
  lady -> gentleman``, ``ma'am -> sir -> madam``). Swapping twice returns the original text
  whenever neither pass recorded an ambiguity (tested on the gold set and the built-in corpus).

**Accuracy** (:func:`swap_accuracy`) is measured on ``resources/swap_gold.tsv``: hand-labelled
English sentences and their expected swap, by category (``her`` possessive/objective, ``his``,
``hers``, pronouns, possessives, titles, family and person words, occupations, names, case,
punctuation and contractions, word senses, and sentences with no gendered word that must come back
byte-identical).

**CDA** (:func:`counterfactual_augment`; Zmigrod et al. 2019, "Counterfactual Data Augmentation for
Mitigating Gender Stereotypes in Languages with Rich Morphology"; Lu et al. 2020, "Gender Bias in
Neural Natural Language Processing"): *two-sided* CDA keeps every example and appends the swapped
copy of every text with at least one gendered word; *one-sided* CDA replaces each such text by its
swap with probability 1/2 (seeded), keeping the size. Texts without a gendered word are never
touched. Labels, columns and tagging tokens (swapped alongside the text, tags unchanged) are
copied; the column ``cda_source`` holds the index of the original example, ``cda_swapped`` whether
the row is a swap. A protected-attribute column (by default any column named ``gender`` or ``sex``)
has its values swapped too: ``female <-> male``, ``woman <-> man``, ``f <-> m`` (case kept; other
values such as ``none`` or ``nonbinary`` unchanged).

:func:`run_cda` (for ``trustnlp cda``) augments the train split of a :class:`CDAConfig` data set and
writes ``train_cda.jsonl`` (readable by :func:`trustnlp.data.files.load_jsonl`) and ``results.json``.

Example:
    >>> sw = load_gender_swaps(shared=False)
    >>> swap_gender("Remind her that his brother John called.", sw).text
    'Remind him that her sister Mary called.'
    >>> swap_gender("The book is his; HER car is red.", sw).text
    'The book is hers; HIS car is red.'
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trustnlp.config import DataConfig
from trustnlp.data.dataset import TextDataset, file_sha256
from trustnlp.errors import ConfigError, DataError, MissingDependencyError, expected
from trustnlp.fairness.counterfactual import SwapList, load_gender_swaps
from trustnlp.results import Result, atomic_write_text, to_jsonable, write_result

__all__ = [
    "ATTRIBUTE_SWAPS",
    "CDAConfig",
    "CDAStats",
    "GoldSwap",
    "SwapOutcome",
    "counterfactual_augment",
    "load_swap_gold",
    "run_cda",
    "swap_accuracy",
    "swap_gender",
]

HerRule = Literal["heuristic", "pos"]
CDAMode = Literal["two-sided", "one-sided"]

ATTRIBUTE_SWAPS: Mapping[str, str] = {"female": "male", "male": "female", "woman": "man", "man": "woman",
                                      "f": "m", "m": "f"}
"""Values of a protected-attribute column swapped by CDA (matched in lower case, case kept)."""

_ATTRIBUTE_COLUMNS = ("gender", "sex")
_CDA_STREAM = 0xCDA  # second entry of the seed sequence of one-sided CDA's coin flips

# -- word classes for the "her" / "his" rules (lower case) --------------------------------------------
_OBJECT_NEXT = frozenset(
    # determiners and pronouns
    "a an the this that these those some any no my your our their his its me you him them us it i we they he she "
    "someone something anyone anything everyone everything nothing nobody "
    # prepositions and particles
    "to at by for from in into of off on onto out over up down with without about after before around across along "
    "through toward towards against among under behind beside near past since until till via back away again "
    # conjunctions
    "and or but nor so if as than because when while where why how who whom which what whether though although "
    "unless once "
    # auxiliaries and modals
    "is are was were be been being am will would can could should shall may might must do does did has have had not "
    # time, place and other adverbs
    "now then today tonight tomorrow yesterday later soon here there too also just already yet still ever never "
    "always often sometimes please anyway either enough".split())
_BARE_VERBS = frozenset(
    "know go come be feel think see tell get give make eat sit try speak understand believe realize realise remember "
    "forget bring keep put meet sing decide choose explain wait hear listen".split())
_PREDICATIVE = frozenset(
    "happy sad angry upset mad crazy nervous anxious safe comfortable uncomfortable welcome sick tired ready alone "
    "calm warm busy worried jealous proud afraid scared laugh cry smile".split())
_CAUSATIVE = frozenset(
    "make makes made making keep keeps kept keeping leave leaves left leaving find finds found driving drive drives "
    "drove get gets got getting want wants wanted consider considers considered".split())
_MOTION = frozenset(
    "take takes took taken taking bring brings brought bringing drive drives drove driven driving walk walks walked "
    "walking send sends sent sending get gets got getting see saw seen escort escorted carry carries carried fly "
    "flew flown rush rushed ride rode".split())
_TWO_OBJECT = frozenset(
    "give gives gave given giving tell tells told telling show shows showed shown send sends sent buy buys bought "
    "bring brings brought offer offers offered ask asks asked teach teaches taught pay pays paid lend lends lent "
    "hand hands handed owe owes owed promise promises promised wish wishes wished get gets got find finds found "
    "cook cooks cooked make makes made call calls called name names named leave leaves left sell sells sold read "
    "write writes wrote email emails emailed text texts texted remind reminds reminded save saves saved order "
    "orders ordered fetch fetched pour poured serve served".split())
_POSSESSED = frozenset(
    "friend friends family parents parent children child kids kid baby babies partner partners boss colleague "
    "colleagues coworker coworkers team teammate teammates classmate classmates neighbor neighbour neighbors "
    "neighbours cousin cousins roommate doctor dentist lawyer name life job work career car phone house room office "
    "desk bag keys key wallet purse hand hands hair eyes eye face head arm arms leg legs birthday wedding dog cat "
    "book books laptop computer email number address appointment meeting flight ticket tickets passport coat jacket "
    "shoes umbrella glasses money account password schedule calendar shift project report proposal cell mobile "
    "best own".split())
_HIS_STANDALONE_NEXT = frozenset(
    # auxiliaries, adverbs and conjunctions that follow a subject, prepositions that follow a noun phrase
    "is was are were will would can could should shall may might must has had does did isn wasn too also either "
    "than then though however anyway if because when while where who which that from to at by for in into of on "
    "onto with without about after before since until".split())
_POSSESSIVE_PRONOUNS = frozenset("his hers mine yours ours theirs".split())
_POSSESSIVE_DETERMINERS = frozenset("his her my your our their its".split())
_INDEFINITE = frozenset("a an this that these those some no any another".split())
_DETERMINERS = frozenset("a an the this that these those his her their our my your its every some".split())
_MODALS = frozenset("to will would can could should shall may might must did does do don didn doesn won cannot".split())
_VERB_SENSE = frozenset({"host", "hosts", "tailor", "tailors", "master", "masters"})
_COMPOUND_SENSE: Mapping[str, re.Pattern[str]] = {
    w: re.compile(r"(?:['’]s|s['’])?\s+(?:" + alts + r")\b", re.IGNORECASE)
    for ws, alts in (
        (("master", "masters", "bachelor", "bachelors"),
         r"degrees?|programmes?|programs?|students?|thesis|theses|course|courses|level|"
         r"of\s+(?:arts|science|sciences|business|laws|engineering|education|fine|music|philosophy|technology|"
         r"medicine|public)|bedroom|bedrooms|key|keys|plan|copy|copies|class|classes|list|file|files|branch|"
         r"switch|card|suite|record|records|data|volume|chef|chefs"),
        (("host", "hosts"),
         r"countr(?:y|ies)|cit(?:y|ies)|nations?|famil(?:y|ies)|servers?|names?|computers?|machines?|cells?|"
         r"plants?|organisms?|species|institutions?|university|universities|school|schools"),
    )
    for w in ws
}
_NAME_WORDS = frozenset({"grace", "lily", "jack", "mason", "will", "mark", "rose", "hope", "joy", "faith", "ruby",
                         "amber", "bill", "pat", "sue"})
_SPELLING_FIXES = {"godess": "goddess", "godesses": "goddesses", "barnoesses": "baronesses"}
_ADDED = {"mrs": "mr", "goddesses": "gods", "baronesses": "barons"}
_CONTEXT_TARGETS = frozenset({"her", "his"})  # reversed by the her/his rules, not by the list

_TOKEN = re.compile(r"\w+")
_ASCII_WORD = re.compile(r"[A-Za-z]+")
_APOSTROPHES = "'’"


# -- results ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwapOutcome:
    """One swapped text.

    Attributes:
        text: the swapped text (identical to the input when ``n_swapped == 0``).
        n_swapped: how many words were replaced.
        ambiguous: ``(character offset in the input, word as written)`` of each replacement the rules
            could not decide with confidence or that is not invertible (module docs), in text order.
    """

    text: str
    n_swapped: int
    ambiguous: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class _Lexicon:
    mapping: Mapping[str, str]
    names: frozenset[str]
    nouns: frozenset[str]


_LEXICONS: dict[int, tuple[SwapList, _Lexicon]] = {}


@lru_cache(maxsize=1)
def _default_swaps() -> SwapList:
    return load_gender_swaps()


@lru_cache(maxsize=1)
def _project_names() -> frozenset[str]:
    own = resources.files("trustnlp.fairness").joinpath("resources/gender_pairs.tsv").read_text("utf-8")
    rows = [ln.split("\t") for ln in own.splitlines() if ln.strip() and not ln.startswith("#")]
    return frozenset(w.strip().lower() for r in rows if len(r) >= 3 and r[2].strip() == "name" for w in r[:2])


def _lexicon(swaps: SwapList) -> _Lexicon:
    hit = _LEXICONS.get(id(swaps))
    if hit is not None and hit[0] is swaps:
        return hit[1]
    mapping = {k: _SPELLING_FIXES.get(v, v) for k, v in swaps.mapping.items()}
    for k, v in _ADDED.items():
        if k not in mapping and v in mapping:
            mapping[k] = v
    names = frozenset(w for w in _project_names() if w in mapping)
    pronouns = {"he", "she", "him", "his", "hers", "himself", "herself"}
    nouns = frozenset(w for w in mapping if w not in names and w not in pronouns) | _POSSESSED
    lex = _Lexicon(mapping, names, nouns)
    if len(_LEXICONS) > 32:
        _LEXICONS.clear()
    _LEXICONS[id(swaps)] = (swaps, lex)
    return lex


def _match_case(new: str, like: str) -> str:
    if len(like) > 1 and like.isupper():
        return new.upper()
    if like[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


# -- part-of-speech taggers (optional) ----------------------------------------------------------------
Tagger = Callable[[str], Mapping[int, str]]


@lru_cache(maxsize=1)
def _pos_tagger() -> Tagger:
    """``text -> {character offset: Penn Treebank tag}`` from nltk, else spaCy (module docs)."""
    try:
        import nltk  # type: ignore[import-not-found]
    except ImportError:
        nltk = None
    if nltk is not None:
        try:
            nltk.pos_tag(["her"])
        except LookupError:
            raise ConfigError(
                "her_rule='pos' uses nltk's tagger, but its data is not installed; run "
                "`python -m nltk.downloader averaged_perceptron_tagger_eng` or use her_rule='heuristic'."
            ) from None
        split = re.compile(r"\w+|[^\w\s]")

        def tag_nltk(text: str) -> Mapping[int, str]:
            toks = [(m.start(), m.group(0)) for m in split.finditer(text)]
            tags = nltk.pos_tag([t for _, t in toks])
            return {s: tg for (s, _), (_, tg) in zip(toks, tags)}

        return tag_nltk
    try:
        import spacy  # type: ignore[import-not-found]
    except ImportError:
        raise MissingDependencyError(
            "nltk", purpose="her_rule='pos' (tagging 'her' as possessive PRP$ or objective PRP); spaCy with "
            "en_core_web_sm works too, and her_rule='heuristic' needs neither") from None
    try:
        nlp = spacy.load("en_core_web_sm")
    except OSError:
        raise ConfigError("her_rule='pos' uses spaCy, but its model `en_core_web_sm` is not installed; run "
                          "`python -m spacy download en_core_web_sm` or use her_rule='heuristic'.") from None

    def tag_spacy(text: str) -> Mapping[int, str]:
        return {tok.idx: tok.tag_ for tok in nlp(text)}

    return tag_spacy


# -- the swap -----------------------------------------------------------------------------------------
def _her_heuristic(prev: str | None, nxt: str | None, after: str | None, lex: _Lexicon) -> tuple[str, bool]:
    """``(him|his, ambiguous)`` for "her" between the lower-case words ``prev`` and ``nxt`` (then ``after``)."""
    if nxt is None:
        return "him", False
    if nxt == "own" or (nxt in ("and", "or") and after in _POSSESSIVE_DETERMINERS):
        return "his", False
    if nxt in _OBJECT_NEXT or nxt in lex.names or nxt in _BARE_VERBS:
        return "him", False
    if prev is not None and prev in _CAUSATIVE and nxt in _PREDICATIVE:
        return "him", False
    if prev is not None and prev in _MOTION and nxt == "home":
        return "him", False
    ambiguous = prev is not None and prev in _TWO_OBJECT and nxt not in lex.nouns
    return "his", ambiguous


def _his_rule(nxt: str | None, after: str | None, then: str | None, genitive: bool,
              lex: _Lexicon) -> tuple[str, bool]:
    """``(her|hers, ambiguous)`` for "his" before the words ``nxt``, ``after``, ``then`` (module docs).

    ``genitive``: "his" ends ``<a|this|...> <noun> of his``, the double genitive (``"a friend of his"``).
    """
    if nxt is None or nxt in _HIS_STANDALONE_NEXT:
        return "hers", False
    if nxt in ("and", "or"):
        if after in _DETERMINERS:
            return "her", False
        if after in _POSSESSIVE_PRONOUNS:  # "his or hers?" vs the attributive "his and hers towels"
            return "hers", then is not None and then not in _OBJECT_NEXT
        return "hers", not (after is None or after in _OBJECT_NEXT)
    return "her", genitive and nxt not in lex.nouns


def swap_gender(text: str, swaps: SwapList | None = None, *, her_rule: HerRule = "heuristic") -> SwapOutcome:
    """Swap every gendered word of ``text`` for its counterpart, leaving everything else byte-identical.

    Args:
        text: the text.
        swaps: the word pairs (default: :func:`~trustnlp.fairness.counterfactual.load_gender_swaps`,
            with the shared lists when found).
        her_rule: ``"heuristic"`` (default; no dependency) or ``"pos"`` (a part-of-speech tagger
            decides "her"; needs nltk or spaCy). See the module docs for every rule.

    Returns:
        The swapped text, the number of replaced words, and where a replacement was ambiguous.
    """
    if not isinstance(text, str):
        raise DataError(f"Expected `text` to be a string, but got {type(text).__name__}.")
    if her_rule not in ("heuristic", "pos"):
        raise ConfigError(expected("her_rule", "'heuristic' or 'pos'", her_rule))
    lex = _lexicon(_default_swaps() if swaps is None else swaps)
    mapping = lex.mapping
    toks = [(m.start(), m.end(), m.group(0)) for m in _TOKEN.finditer(text)]
    tags: Mapping[int, str] | None = None
    lowercase_text = not any(ch.isupper() for ch in text)
    edits: list[tuple[int, int, str]] = []
    ambiguous: list[tuple[int, str]] = []

    def neighbour(k: int, step: int) -> str | None:
        j = k + step
        if not 0 <= j < len(toks):
            return None
        gap = text[toks[k][1] : toks[j][0]] if step > 0 else text[toks[j][1] : toks[k][0]]
        return toks[j][2].lower() if gap.strip() == "" else None

    for k, (start, end, word) in enumerate(toks):
        if not _ASCII_WORD.fullmatch(word):
            continue
        if start >= 2 and text[start - 1] in _APOSTROPHES and text[start - 2].isalnum():
            continue  # a clitic: the s of he's, the ll of she'll
        low = word.lower()
        new: str | None
        unsure = False
        stop = end
        if low == "ma" and text[end : end + 3].lower() in ("'am", "’am") and "sir" in mapping:
            new, stop, unsure = "sir", end + 3, True  # ma'am -> sir -> madam: not invertible
        elif low == "her":
            nxt, prev = neighbour(k, 1), neighbour(k, -1)
            after = neighbour(k + 1, 1) if nxt is not None else None
            if her_rule == "pos":
                if tags is None:
                    tags = _pos_tagger()(text)
                tag = tags.get(start)
                if tag in ("PRP$", "PRP"):
                    new = "his" if tag == "PRP$" else "him"
                else:
                    new, unsure = _her_heuristic(prev, nxt, after, lex)[0], True
            else:
                new, unsure = _her_heuristic(prev, nxt, after, lex)
        elif low == "his":
            nxt = neighbour(k, 1)
            if nxt is not None and text[toks[k + 1][1] : toks[k + 1][1] + 1] == "-":
                nxt = "-"  # a hyphenated compound follows (his in-laws): a determiner
            genitive = (k >= 3 and neighbour(k, -1) == "of" and neighbour(k - 1, -1) is not None
                        and neighbour(k - 2, -1) in _INDEFINITE)
            after = neighbour(k + 1, 1) if nxt is not None else None
            then = neighbour(k + 2, 1) if after is not None else None
            new, unsure = _his_rule(nxt, after, then, genitive, lex)
        elif low == "miss":
            nxt = neighbour(k, 1)
            gap_before = text[toks[k - 1][1] : start] if k > 0 else ""
            follows = text[end:].lstrip()[:1]
            if word[:1].isupper() and nxt is not None and toks[k + 1][2][:1].isupper() and "mr" in mapping:
                new, unsure = "mr", True  # Miss Lee -> Mr Lee (-> Ms Lee)
            elif gap_before.strip() == "," and (follows == "" or follows in ",.!?;:") and "miss" in mapping:
                new = mapping["miss"]
                unsure = mapping.get(new) != "miss"
            else:
                continue
        else:
            new = mapping.get(low)
            if new is None:
                continue
            if low in _VERB_SENSE:
                prev, nxt = neighbour(k, -1), neighbour(k, 1)
                if (prev is not None and prev in _MODALS) or (nxt is not None and nxt in _DETERMINERS):
                    continue
            guard = _COMPOUND_SENSE.get(low)
            if guard is not None and guard.match(text, end):
                continue
            if low in _NAME_WORDS and low in lex.names:
                if not word[:1].isupper() and not lowercase_text:
                    continue
                unsure = lowercase_text
            if new not in _CONTEXT_TARGETS and mapping.get(new) != low:
                unsure = True
        edits.append((start, stop, _match_case(new, text[start:stop])))
        if unsure:
            ambiguous.append((start, text[start:stop]))
    if not edits:
        return SwapOutcome(text, 0, ())
    out, last = [], 0
    for s, e, rep in edits:
        out.append(text[last:s])
        out.append(rep)
        last = e
    out.append(text[last:])
    return SwapOutcome("".join(out), len(edits), tuple(ambiguous))


# -- accuracy on the hand-labelled set ------------------------------------------------------------------
@dataclass(frozen=True)
class GoldSwap:
    """One hand-labelled sentence: its expected swap, its category and its line in the file."""

    original: str
    expected: str
    category: str
    line: int


def _gold_path(gold_path: str | Path | None) -> Path:
    if gold_path is not None:
        return Path(gold_path)
    return Path(str(resources.files("trustnlp.fairness").joinpath("resources/swap_gold.tsv")))


def load_swap_gold(gold_path: str | Path | None = None) -> list[GoldSwap]:
    """The hand-labelled swaps: ``original<TAB>expected_swap[<TAB>category]`` per line.

    Lines starting with ``#`` and blank lines are skipped, as is a header row whose first field is
    ``original``. Default: the packaged ``resources/swap_gold.tsv``.
    """
    path = _gold_path(gold_path)
    if not path.is_file():
        raise DataError(f"Gold swap file not found: {path} (expected a TSV of original<TAB>expected_swap).")
    rows: list[GoldSwap] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if parts[0] == "original":
            continue
        if len(parts) not in (2, 3) or not parts[0].strip() or not parts[1].strip():
            raise DataError(f"{path}, line {i}: expected original<TAB>expected_swap[<TAB>category], but got {line!r}.")
        rows.append(GoldSwap(parts[0], parts[1], parts[2].strip() if len(parts) == 3 else "uncategorised", i))
    if not rows:
        raise DataError(f"{path}: expected at least one gold swap, but the file has none.")
    return rows


def swap_accuracy(gold_path: str | Path | None = None, *, swaps: SwapList | None = None,
                  her_rule: HerRule = "heuristic") -> dict[str, Any]:
    """Exact-sentence accuracy of :func:`swap_gender` on the hand-labelled set.

    Returns:
        ``{"n", "n_correct", "accuracy", "by_category": {category: {"n", "n_correct", "accuracy"}},
        "failures": [{"line", "category", "original", "expected", "got"}], "gold": {"path", "sha256"},
        "her_rule"}``; a sentence counts as correct only when the output equals the expected swap
        byte for byte.
    """
    path = _gold_path(gold_path)
    gold = load_swap_gold(path)
    swaps = _default_swaps() if swaps is None else swaps
    by_cat: dict[str, list[int]] = {}
    failures = []
    for g in gold:
        got = swap_gender(g.original, swaps, her_rule=her_rule).text
        ok = got == g.expected
        by_cat.setdefault(g.category, [0, 0])
        by_cat[g.category][0] += 1
        by_cat[g.category][1] += int(ok)
        if not ok:
            failures.append({"line": g.line, "category": g.category, "original": g.original, "expected": g.expected,
                             "got": got})
    n_correct = len(gold) - len(failures)
    return {
        "n": len(gold),
        "n_correct": n_correct,
        "accuracy": n_correct / len(gold),
        "by_category": {c: {"n": n, "n_correct": k, "accuracy": k / n} for c, (n, k) in by_cat.items()},
        "failures": failures,
        "gold": {"path": str(path), "sha256": file_sha256(path)},
        "her_rule": her_rule,
    }


# -- counterfactual data augmentation -----------------------------------------------------------------
@dataclass(frozen=True)
class CDAStats:
    """What :func:`counterfactual_augment` did.

    Attributes:
        mode / seed: as given.
        n_before / n_after: examples before and after.
        n_gendered: texts with at least one gendered word; ``gendered_share`` = ``n_gendered / n_before``.
        n_swapped_rows: swapped rows in the output (copies added, or texts replaced).
        swaps_total: words replaced over the gendered texts; ``swaps_per_gendered_text`` its mean
            (``None`` without gendered texts); ``swaps_per_text`` = ``swaps_total / n_before``.
        n_ambiguous / ambiguous_texts: ambiguous replacements, and texts with at least one.
        attribute_columns: the protected-attribute columns whose values were swapped;
            ``attribute_changes`` how many values changed in the swapped rows.
        swaps: provenance of the swap list.
    """

    mode: str
    seed: int
    n_before: int
    n_after: int
    n_gendered: int
    gendered_share: float | None
    n_swapped_rows: int
    swaps_total: int
    swaps_per_gendered_text: float | None
    swaps_per_text: float | None
    n_ambiguous: int
    ambiguous_texts: int
    attribute_columns: tuple[str, ...] = ()
    attribute_changes: int = 0
    swaps: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "seed": self.seed, "n_before": self.n_before, "n_after": self.n_after,
                "n_gendered": self.n_gendered, "gendered_share": self.gendered_share,
                "n_swapped_rows": self.n_swapped_rows, "swaps_total": self.swaps_total,
                "swaps_per_gendered_text": self.swaps_per_gendered_text, "swaps_per_text": self.swaps_per_text,
                "n_ambiguous": self.n_ambiguous, "ambiguous_texts": self.ambiguous_texts,
                "attribute_columns": list(self.attribute_columns), "attribute_changes": self.attribute_changes,
                "swaps": dict(self.swaps)}


def _swap_attribute(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    new = ATTRIBUTE_SWAPS.get(value.strip().lower())
    if new is None:
        return value
    core = value.strip()
    i = value.index(core)
    return value[:i] + _match_case(new, core) + value[i + len(core) :]


def counterfactual_augment(
    data: TextDataset,
    *,
    mode: CDAMode = "two-sided",
    swaps: SwapList | None = None,
    seed: int = 0,
    her_rule: HerRule = "heuristic",
    attribute_columns: Sequence[str] | None = None,
) -> tuple[TextDataset, CDAStats]:
    """Counterfactual data augmentation of a (labelled or unlabelled) data set (module docs).

    Args:
        data: the training set.
        mode: ``"two-sided"`` (keep every example, append the swapped copy of each gendered text) or
            ``"one-sided"`` (replace each gendered text by its swap with probability 1/2).
        swaps: the word pairs (default :func:`~trustnlp.fairness.counterfactual.load_gender_swaps`).
        seed: seeds one-sided CDA's coin flips (``SeedSequence([seed, 0xCDA])``).
        her_rule: as for :func:`swap_gender`.
        attribute_columns: protected-attribute columns whose values are swapped in swapped rows
            (default: the columns named ``gender`` or ``sex``, case-insensitively).

    Returns:
        The augmented data set (originals first, in order; two-sided copies appended in the order
        of their originals; columns ``cda_source`` and ``cda_swapped`` added) and :class:`CDAStats`.
    """
    if mode not in ("two-sided", "one-sided"):
        raise ConfigError(expected("mode", "'two-sided' or 'one-sided'", mode))
    if not isinstance(data, TextDataset):
        raise DataError(f"Expected `data` to be a TextDataset, but got {type(data).__name__}.")
    for reserved in ("cda_source", "cda_swapped"):
        if reserved in data.columns:
            raise DataError(f"Data set `{data.meta.name}` already has a column `{reserved}`; was it augmented already?")
    swaps = _default_swaps() if swaps is None else swaps
    if attribute_columns is None:
        attr = tuple(c for c in data.columns if c.lower() in _ATTRIBUTE_COLUMNS)
    else:
        attr = tuple(attribute_columns)
        for c in attr:
            data.column(c)  # a clear error when absent
    n = len(data)
    outcomes = [swap_gender(t, swaps, her_rule=her_rule) for t in data.texts]
    gendered = np.asarray([o.n_swapped > 0 for o in outcomes], dtype=bool)
    g_idx = np.flatnonzero(gendered)

    def swapped_tokens(i: int) -> tuple[str, ...]:
        assert data.tokens is not None
        toks = data.tokens[i]
        new = swap_gender(" ".join(toks), swaps, her_rule=her_rule).text.split(" ")
        if len(new) != len(toks):  # a token with a space inside: swap one by one
            new = [swap_gender(t, swaps, her_rule=her_rule).text for t in toks]
        return tuple(new)

    def row(i: int, swapped: bool) -> dict[str, Any]:
        cols = {c: v[i] for c, v in data.columns.items()}
        if swapped:
            for c in attr:
                cols[c] = _swap_attribute(cols[c])
        return {"text": outcomes[i].text if swapped else data.texts[i], "label": None if data.labels is None
                else int(data.labels[i]), "cols": cols, "source": i, "swapped": swapped,
                "tokens": None if data.tokens is None else (swapped_tokens(i) if swapped else data.tokens[i]),
                "tags": None if data.tags is None else data.tags[i]}

    if mode == "two-sided":
        rows = [row(i, False) for i in range(n)] + [row(int(i), True) for i in g_idx]
    else:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _CDA_STREAM]))
        flips = rng.random(g_idx.size) < 0.5
        replace_at = set(g_idx[flips].tolist())
        rows = [row(i, i in replace_at) for i in range(n)]
    columns: dict[str, list[Any]] = {c: [r["cols"][c] for r in rows] for c in data.columns}
    columns["cda_source"] = [r["source"] for r in rows]
    columns["cda_swapped"] = [r["swapped"] for r in rows]
    meta = replace(data.meta, details={**dict(data.meta.details), "cda": {
        "mode": mode, "seed": seed, "her_rule": her_rule, "attribute_columns": list(attr), "swaps": swaps.to_dict()}})
    out = TextDataset(
        [r["text"] for r in rows],
        None if data.labels is None else [r["label"] for r in rows],
        label_names=data.label_names, columns=columns, protected=data.protected,
        tokens=None if data.tokens is None else [r["tokens"] for r in rows],
        tags=None if data.tags is None else [r["tags"] for r in rows],
        tag_names=data.tag_names, meta=meta,
    )
    swapped_rows = [r for r in rows if r["swapped"]]
    counts = [outcomes[i].n_swapped for i in g_idx]
    changes = sum(1 for r in swapped_rows for c in attr if r["cols"][c] != data.columns[c][r["source"]])
    stats = CDAStats(
        mode=mode, seed=seed, n_before=n, n_after=len(out), n_gendered=int(g_idx.size),
        gendered_share=g_idx.size / n if n else None, n_swapped_rows=len(swapped_rows),
        swaps_total=int(sum(counts)), swaps_per_gendered_text=float(np.mean(counts)) if counts else None,
        swaps_per_text=sum(counts) / n if n else None,
        n_ambiguous=sum(len(outcomes[i].ambiguous) for i in g_idx),
        ambiguous_texts=sum(1 for i in g_idx if outcomes[i].ambiguous),
        attribute_columns=attr, attribute_changes=changes, swaps=swaps.to_dict(),
    )
    return out, stats


# -- the `trustnlp cda` run -----------------------------------------------------------------------------
class CDAConfig(DataConfig):
    """Counterfactual data augmentation of a data set's train split (the data fields are
    :class:`~trustnlp.config.DataConfig`'s).

    Attributes:
        mode: ``two-sided`` or ``one-sided`` (see :func:`counterfactual_augment`).
        seed: seeds the split and one-sided CDA.
        her_rule: ``heuristic`` or ``pos`` (see :func:`swap_gender`).
        shared_swaps: use the shared word lists (``None``: when found; ``True``: required;
            ``False``: the project's list only).
        attribute_columns: protected-attribute columns to swap (``None``: ``gender``/``sex``).
        gold: a hand-labelled swap file to measure the swap accuracy on (``None``: the packaged one).
    """

    mode: CDAMode = "two-sided"
    seed: int = 0
    her_rule: HerRule = "heuristic"
    shared_swaps: bool | None = None
    attribute_columns: list[str] | None = None
    gold: str | None = None


def _jsonl_lines(ds: TextDataset) -> str:
    for key in ("text", "label"):
        if key in ds.columns:
            raise DataError(f"Data set `{ds.meta.name}` has a column named `{key}`, which would clash with the "
                            f"`{key}` field of the JSON-lines file; rename the column.")
    lines = []
    for i, text in enumerate(ds.texts):
        obj: dict[str, Any] = {"text": text}
        if ds.labels is not None:
            obj["label"] = ds.label_names[int(ds.labels[i])]
        for c, v in ds.columns.items():
            obj[c] = to_jsonable(v[i], path=c)
        lines.append(json.dumps(obj, ensure_ascii=False, allow_nan=False))
    return "\n".join(lines) + "\n"


def run_cda(config: CDAConfig, out: str | Path) -> Result:
    """Augment the train split ``config`` names; write ``out/train_cda.jsonl`` and ``out/results.json``.

    ``train_cda.jsonl`` holds one JSON object per line: ``text``, ``label`` (the label's name; absent
    for unlabelled data) and every column (including ``cda_source`` and ``cda_swapped``); tagging
    tokens are not written. Read it back with
    ``load_jsonl(path, columns={c: c for c in ...})``. Validation and test splits are not changed
    (and not written): evaluate on the original ones.
    """
    from trustnlp.pipeline import load_splits

    out = Path(out)
    splits = load_splits(config, seed=config.seed)
    swaps = load_gender_swaps(config.data_dir, shared=config.shared_swaps)
    augmented, stats = counterfactual_augment(
        splits.train, mode=config.mode, swaps=swaps, seed=config.seed, her_rule=config.her_rule,
        attribute_columns=config.attribute_columns)
    atomic_write_text(out / "train_cda.jsonl", _jsonl_lines(augmented))
    acc = swap_accuracy(config.gold, swaps=swaps, her_rule=config.her_rule)
    null_reasons: dict[str, str] = {}
    if stats.swaps_per_gendered_text is None:
        null_reasons["metrics.swaps_per_gendered_text"] = "no training text contains a gendered word"
    labels = Counter(augmented.label_names[int(y)] for y in augmented.labels) if augmented.labels is not None else None
    metrics = {
        **stats.to_dict(),
        "label_counts_after": dict(sorted(labels.items())) if labels is not None else None,
        "swap_accuracy": acc["accuracy"],
        "swap_accuracy_by_category": {c: v["accuracy"] for c, v in acc["by_category"].items()},
        "swap_gold": {"n": acc["n"], "n_correct": acc["n_correct"], **acc["gold"]},
        "swap_gold_failures": acc["failures"],
    }
    if labels is None:
        null_reasons["metrics.label_counts_after"] = "unlabelled data"
    result = Result(kind="cda", config=config.model_dump(), seed=config.seed, data=splits.meta.to_dict(),
                    metrics=metrics, null_reasons=null_reasons, artifacts={"train_cda": "train_cda.jsonl"})
    write_result(result, out / "results.json")
    return result
