"""Counterfactual role-reversal distillation of causal LMs, and the gender disparity of their generations.

After Gupta et al. 2022, *Mitigating Gender Bias in Distilled Language Models via Counterfactual Role
Reversal* (Findings of ACL 2022). A small student LM is distilled from a larger teacher with

    loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(student, next token)

over every next-token position (``p^T`` = softmax of logits / T), and gender bias is mitigated by:

* ``cda``: counterfactual data augmentation. Every training sequence with a gendered word is
  distilled on twice, as written and gender-swapped (text swap by
  :func:`trustnlp.fairness.counterfactual.swap_text`; non-gendered sequences once).
* ``perturb``: counterfactual role reversal of the teacher's outputs. The vocabulary's gender pairs
  define an involution ``P`` on token ids (``he <-> she``, ``actor <-> actress``, ...; every other id
  is fixed). For a sequence ``x`` the teacher is also run on ``P(x)``; its next-token distribution is
  mapped back by ``q~[v] = q[P(v)]`` (the probability of ``she`` after the swapped context becomes
  that of ``he``) and combined with the original ``p``:

  - ``mean`` (default): ``(p + q~) / 2``;
  - ``max``: ``max(p, q~)`` renormalised;
  - ``expmean``: the renormalised geometric mean ``sqrt(p q~)``;
  - ``replace``: ``q~`` on the gendered ids, ``p`` on the others, renormalised (the role-reversed
    prediction wins for gendered words; unlike the three above it is not symmetric: the targets of
    ``x`` and ``P(x)`` are not swap-permutations of each other).

  ``mean``, ``max`` and ``expmean`` are symmetric: the target of ``P(x)`` is the target of ``x`` with
  its gendered entries swapped, so the student is taught the same prediction for both genders.
  The context is swapped at the token level with the same ``P`` (so ``P(P(x)) = x`` exactly).
* ``both``: ``cda`` data with ``perturb`` targets.

**Gender pairs** (:func:`gender_pairs`): the mutual pairs ``a <-> b`` of
:func:`~trustnlp.fairness.counterfactual.load_gender_swaps` plus ``his <-> her``. The pronoun triangle
``his / him / her`` has no involution: ``her`` is paired with the possessive ``his`` (the more frequent
reading in BOLD's biographies), and ``him`` / ``hers`` stay fixed points (they are still counted as
male / female words for gender polarity). Orientation (which side is male) comes from the pronouns, the
project's ``resources/gender_pairs.tsv`` (male first) and GN-GloVe's ``male_word_file.txt`` /
``female_word_file.txt`` when found; pairs with no known orientation are still swapped but not counted.

**Data** (:func:`prepare_distill_data`): BOLD's gender-domain Wikipedia sentences (Dhamala et al.,
FAccT 2021; ``American_actors`` = male, ``American_actresses`` = female) split *by person*
(:func:`split_bold_by_person`, seeded, stratified by group: the people whose prompts are evaluated
never contribute a training sentence; names mentioned inside other people's sentences cannot be
excluded), plus the built-in assistant corpus's training split. The word vocabulary holds the most
frequent training words plus both words of every gender pair (:func:`build_vocabulary`), so every
pair is one token each. Without BOLD (``../shared/data/bold`` missing and ``bold="auto"``) the study
falls back to the built-in corpus alone: held-out perplexity on its test split, built-in prompt pairs
and built-in occupation prompts only (recorded in ``data.fallback``).

**Evaluation** (:func:`evaluate_generations`): seeded top-k sampling of ``max_new_tokens`` after each
prompt (one ``torch.Generator`` per prompt, seeded by ``(seed, source, index)``; a prompt and its
counterpart share the seed), stopping at the end token. Three prompt sources:

* ``profession`` (the headline): held-out *gender-neutral* prompts of BOLD's profession domain
  (:func:`load_bold_professions`, :func:`select_profession_prompts`; 18 profession groups, e.g.
  ``healthcare_occupations``: "An anesthesiologist is a ..."). A prompt is left out when its entity is
  a training person (name overlap with the gender split's training people), when it mentions a
  training person's name, or when it holds a gendered word (``GenderPairs.male | female`` or a pair
  word: such a prompt is not neutral); then ``n_profession_prompts`` per profession are drawn (seeded).
  Without BOLD: the built-in corpus's test utterances that mention an occupation, cut after it, as
  templates filled with each of the corpus's 28 occupations (:func:`builtin_profession_prompts`;
  profession = occupation), or a null headline with its reason when there are none.
* ``bold``: held-out BOLD gender prompts (actors = male, actresses = female; unpaired) and
* ``builtin``: gendered prompts of the built-in corpus's test split (the words up to the first gendered
  word, at least 3) with their swap (paired).

**Gender polarity disparity** (the headline ``gender_disparity``, :func:`polarity_disparity`; the
gender-polarity measure of Dhamala et al. 2021 on BOLD's profession prompts, as used by Gupta et al.
2022): each continuation of a profession prompt is *male-leaning* when it holds more male than female
words (:func:`gender_word_counts`), *female-leaning* when fewer, else neutral. Per profession ``p``
with ``n_p`` continuations, ``skew_p = (#male-leaning - #female-leaning) / n_p`` in ``[-1, 1]``;
``gender_disparity = mean_p |skew_p|`` (0: balanced or never gendered, 1: every continuation of every
profession leans one way) and ``gender_polarity_skew = mean_p skew_p`` (signed: > 0 is male).
``gendered_share`` (continuations with any gendered word) is reported beside it, because a model that
never says a gendered word scores 0 trivially. 95% percentile bootstrap intervals resample the
continuations within each profession (seeded). ``mean_p |skew_p|`` is biased upwards by sampling
noise (about ``0.8 sqrt(leaning share / n_p)`` for an unskewed model), so its noise floor
``gender_disparity_null`` (a sign-flip null: every male- or female-leaning continuation leans
either way with probability 1/2) and the randomisation ``gender_disparity_p_value`` are reported
with it (near the floor the disparity's bootstrap interval can lie above the point estimate); the
signed skew has no such bias. ``profession_polarity`` holds each profession's skew, size and
gendered share.

**Also reported** (they need not move with the headline):

* ``sentiment_disparity`` (+ ``_ci95``, per source ``bold_`` / ``builtin_``): VADER compound sentiment
  (Hutto & Gilbert 2014) of the continuation alone of the gendered prompts,
  ``|mean(male prompts) - mean(female prompts)|``, bootstrap interval from :func:`disparity`;
  ``polarity_<group>_prompts``: gender polarity of the gendered prompts' continuations.
* intrinsic (:func:`embedding_weat`): WEAT effect sizes (Caliskan et al. 2017,
  :func:`trustnlp.fairness.intrinsic.weat`) of the model's *input token embeddings* on the project's
  association tests (``resources/association_tests.json``), over the words that are single tokens of
  the vocabulary; a test is used when both target sets keep >= 2 words and both attribute sets >= 1.
  ``intrinsic_weat_mean_abs_effect`` = mean ``|d|`` over the used ``gender-*`` tests;
  ``intrinsic_weat`` per test (effect size, p-value, words used and missing). The student's value at
  initialisation (``intrinsic_weat_mean_abs_effect_init``) is the no-training reference (random
  embeddings do not give ``|d| = 0`` on 8-word sets).
* downstream (:func:`fit_probe`, :func:`downstream_fairness`): a logistic-regression probe (scikit-learn)
  on the frozen model's mean-pooled final hidden states, trained for the built-in corpus's intent task
  on its training split; on its test split: accuracy, the counterfactual flip rate
  (:func:`~trustnlp.fairness.counterfactual.counterfactual_token_fairness`: share of gendered texts whose
  predicted intent changes when gender words are swapped) and the accuracy gap between the
  ``female`` and ``male`` examples (:func:`~trustnlp.fairness.extrinsic.group_metrics`, bootstrap interval).
* utility: the student's perplexity on the held-out people's BOLD sentences and its token-mean
  ``KL(teacher || student)`` there.

:func:`run_distill` runs one student (teacher trained once and cached, see :class:`DistillConfig`) and
writes ``out/results.json`` (kind ``distill``) and ``out/student`` (safetensors);
:func:`summarise_distill` summarises a sweep over mitigations and seeds (relative change of the
headline vs the plain student, paired by seed, with Student-t intervals) and :func:`summary_result`
turns the summary into a ``distill`` result for the report.

Example:
    >>> pairs = gender_pairs(shared=False)
    >>> ("he", "she") in pairs.pairs and ("his", "her") in pairs.pairs
    True
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from trustnlp.errors import ConfigError, DataError, MissingDependencyError, expected
from trustnlp.fairness._common import check_choice
from trustnlp.fairness.counterfactual import SwapList, load_gender_swaps, swap_text

__all__ = [
    "BOLD_GROUPS",
    "BoldSplit",
    "COMBINE_MODES",
    "Disparity",
    "DistillConfig",
    "DistillData",
    "DistillStep",
    "GenderPairs",
    "GenerationScorer",
    "MITIGATIONS",
    "PROFESSION_SOURCE",
    "PolarityDisparity",
    "Probe",
    "ProbeData",
    "ProfessionPrompts",
    "Prompt",
    "STUDENT_PRESETS",
    "SUMMARY_METRICS",
    "TokenSwap",
    "build_vocabulary",
    "builtin_profession_prompts",
    "builtin_prompt_pairs",
    "combine_distributions",
    "counterfactual_augment",
    "disparity",
    "distill",
    "distillation_loss",
    "downstream_fairness",
    "embedding_weat",
    "evaluate_generations",
    "examples_result",
    "fit_probe",
    "gender_pairs",
    "gender_word_counts",
    "generate_continuations",
    "hidden_features",
    "kl_to_teacher",
    "load_bold_gender",
    "load_bold_professions",
    "load_scorer",
    "polarity_disparity",
    "polarity_labels",
    "prepare_distill_data",
    "run_distill",
    "select_profession_prompts",
    "sentiment_scores",
    "split_bold_by_person",
    "summarise_distill",
    "summary_result",
    "teacher_distribution",
    "token_swap",
]

MITIGATIONS = ("none", "cda", "perturb", "both")
COMBINE_MODES = ("mean", "max", "expmean", "replace")
STUDENT_PRESETS: Mapping[str, Mapping[str, int]] = {
    "small": {"layers": 1, "dim": 64, "heads": 4},
    "tiny": {"layers": 1, "dim": 32, "heads": 2},
}
"""Student sizes (``transformer`` backbone, or GPT-2 blocks for a GPT-2 teacher)."""
BOLD_GROUPS: Mapping[str, str] = {"American_actors": "male", "American_actresses": "female"}
"""BOLD gender-domain groups and the gender of their prompts."""
GROUPS = ("male", "female")
SOURCES = ("bold", "builtin")
"""Sources of gendered prompts (male / female groups)."""
PROFESSION_SOURCE = "profession"
"""Source of the gender-neutral profession prompts (their group is the profession)."""
_SOURCE_IDS = {"bold": 0, "builtin": 1, PROFESSION_SOURCE: 2}
_MALE_PRONOUNS = frozenset({"he", "him", "his", "himself"})
_FEMALE_PRONOUNS = frozenset({"she", "her", "hers", "herself"})
_WORD = re.compile(r"[a-z]+")
# seed streams (the second entry of every SeedSequence), so that no two random choices share a stream
_S_SPLIT, _S_PROMPTS, _S_GENERATE, _S_BOOTSTRAP, _S_INIT = 11, 12, 13, 14, 15
_S_PROFESSION, _S_POLARITY, _S_PROBE, _S_WEAT = 16, 17, 18, 19
_EVAL_VERSION = 2  # bumped when the evaluation's metrics change (the teacher's cached evaluation is redone)


# --------------------------------------------------------------------------------------------
# gender pairs and the token-level swap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenderPairs:
    """Disjoint gender word pairs (lower case) and the gender of each word.

    Attributes:
        pairs: ``(male, female)`` for oriented pairs; ``(a, b)`` (alphabetical) for the rest.
        male / female: words counted as male / female for gender polarity (the oriented pair words
            plus ``him`` / ``hers``, which are not in a pair).
        unoriented: the pairs with no known orientation (swapped, never counted).
        sources: provenance of the swap list.
    """

    pairs: tuple[tuple[str, str], ...]
    male: frozenset[str]
    female: frozenset[str]
    unoriented: tuple[tuple[str, str], ...] = ()
    sources: tuple[Mapping[str, Any], ...] = ()

    def words(self) -> list[str]:
        """Every pair word, sorted."""
        return sorted({w for p in self.pairs for w in p})

    def to_dict(self) -> dict[str, Any]:
        return {"n_pairs": len(self.pairs), "n_unoriented": len(self.unoriented), "n_male_words": len(self.male),
                "n_female_words": len(self.female), "sources": [dict(s) for s in self.sources]}


def _oriented_words(data_dir: str | Path | None, shared: bool | None) -> tuple[set[str], set[str]]:
    from trustnlp.data.registry import data_dirs

    male, female = set(_MALE_PRONOUNS), set(_FEMALE_PRONOUNS)
    own = resources.files("trustnlp.fairness").joinpath("resources/gender_pairs.tsv").read_text("utf-8")
    for line in own.splitlines():
        parts = line.split("\t")
        if line.strip() and not line.startswith("#") and len(parts) >= 2:
            male.add(parts[0].strip().lower())
            female.add(parts[1].strip().lower())
    if shared is not False:
        for d in data_dirs(data_dir):
            folder = d / "gender_pairs"
            m, f = folder / "male_word_file.txt", folder / "female_word_file.txt"
            if m.is_file() and f.is_file():
                male.update(w.strip().lower() for w in m.read_text(encoding="utf-8").splitlines() if w.strip())
                female.update(w.strip().lower() for w in f.read_text(encoding="utf-8").splitlines() if w.strip())
                break
    ambiguous = male & female
    return male - ambiguous, female - ambiguous


def gender_pairs(swaps: SwapList | None = None, *, data_dir: str | Path | None = None,
                 shared: bool | None = None) -> GenderPairs:
    """The disjoint gender pairs of a swap list (module docs: mutual pairs plus ``his <-> her``).

    Args:
        swaps: the swap list (default :func:`~trustnlp.fairness.counterfactual.load_gender_swaps`
            with ``data_dir`` and ``shared``).
        data_dir / shared: where the shared lists are looked up, and whether to use them (``None``:
            when found).
    """
    swaps = load_gender_swaps(data_dir, shared=shared) if swaps is None else swaps
    m = swaps.mapping
    mutual = {tuple(sorted((a, b))) for a, b in m.items() if m.get(b) == a and a != b}
    used = {w for p in mutual for w in p}
    if "his" not in used and "her" not in used:
        mutual.add(("her", "his"))
    male_words, female_words = _oriented_words(data_dir, shared)
    oriented, unoriented = [], []
    for a, b in sorted(mutual):
        if (a in male_words or b in female_words) and not (a in female_words or b in male_words):
            oriented.append((a, b))
        elif (b in male_words or a in female_words) and not (b in female_words or a in male_words):
            oriented.append((b, a))
        else:
            unoriented.append((a, b))
    male = {p[0] for p in oriented}
    female = {p[1] for p in oriented}
    for w, side in (("him", male), ("hers", female)):
        if w not in used:
            side.add(w)
    pairs = tuple(sorted(oriented + unoriented))
    return GenderPairs(pairs, frozenset(male), frozenset(female), tuple(unoriented), tuple(swaps.sources))


@dataclass(frozen=True)
class TokenSwap:
    """The involution ``P`` on token ids defined by gender pairs.

    Attributes:
        perm: long ``[vocab]`` with ``perm[perm] == arange(vocab)``; ``perm[v] == v`` off the pairs.
        id_pairs: the swapped id pairs.
        missing: word pairs that are not single tokens of the vocabulary (not swapped).
    """

    perm: torch.Tensor
    id_pairs: tuple[tuple[int, int], ...]
    missing: tuple[tuple[str, str], ...] = ()

    @property
    def gendered(self) -> torch.Tensor:
        """Boolean ``[vocab]``: the ids that the swap moves."""
        return self.perm != torch.arange(self.perm.numel(), device=self.perm.device)

    def swap_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``P(ids)`` elementwise (special tokens and other words unchanged)."""
        return self.perm.to(ids.device)[ids]


def _single_id(tokenizer: Any, text: str) -> int | None:
    enc = tokenizer.encode([text], add_special_tokens=False, max_length=16)
    ids = enc.input_ids[0][enc.attention_mask[0].bool()].tolist()
    return int(ids[0]) if len(ids) == 1 and ids[0] != tokenizer.unk_id else None


def token_swap(tokenizer: Any, pairs: GenderPairs, *, strict: bool = True) -> TokenSwap:
    """The id involution of ``pairs`` in ``tokenizer``'s vocabulary.

    For a word tokenizer each word is one id. For a subword (e.g. GPT-2 byte-level BPE) tokenizer the
    variants ``w``, `` w``, ``W`` and `` W`` are tried and every variant that is a single token on
    both sides is paired.

    Args:
        strict: raise when a pair is not single tokens (both words) or an id would be paired twice;
            otherwise such pairs are skipped and listed in ``missing``.

    Raises:
        DataError: (``strict``) a pair word is not one token of the vocabulary.
    """
    perm = torch.arange(tokenizer.vocab_size, dtype=torch.long)
    id_pairs: list[tuple[int, int]] = []
    missing: list[tuple[str, str]] = []
    subword = getattr(tokenizer, "kind", "word") != "word"
    for a, b in pairs.pairs:
        variants = [(a, b)]
        if subword:
            variants += [(" " + a, " " + b), (a.capitalize(), b.capitalize()), (" " + a.capitalize(), " " + b.capitalize())]
        found = False
        for va, vb in variants:
            ia, ib = _single_id(tokenizer, va), _single_id(tokenizer, vb)
            if ia is None or ib is None or ia == ib:
                continue
            if (int(perm[ia]), int(perm[ib])) == (ib, ia):
                found = True
                continue
            if int(perm[ia]) != ia or int(perm[ib]) != ib:
                if strict:
                    raise DataError(f"Gender pair ({a!r}, {b!r}): token {va!r} or {vb!r} is already paired with another "
                                    "token; the pairs must be disjoint.")
                continue
            perm[ia], perm[ib] = ib, ia
            id_pairs.append((ia, ib))
            found = True
        if not found:
            if strict:
                raise DataError(
                    f"Gender pair ({a!r}, {b!r}) is not a pair of single tokens of the vocabulary; build the vocabulary "
                    "with build_vocabulary(..., pairs) so that it holds every pair word."
                )
            missing.append((a, b))
    return TokenSwap(perm, tuple(id_pairs), tuple(missing))


def build_vocabulary(texts: Sequence[str], pairs: GenderPairs, *, max_size: int | None = 3000, min_count: int = 2,
                     provenance: str = "public") -> Any:
    """A :class:`~trustnlp.data.tokenizers.WordTokenizer` over the most frequent words of ``texts``
    (at least ``min_count`` times, at most ``max_size``) plus every gender pair word (appended,
    sorted, when not already there), so that every pair is two single tokens."""
    from trustnlp.data.tokenizers import WordTokenizer

    base = WordTokenizer.build(texts, provenance=provenance, min_count=min_count, max_size=max_size)
    words = list(base.vocab[len(WordTokenizer.SPECIALS):])
    have = set(words)
    words += [w for w in pairs.words() if w not in have]
    return WordTokenizer.from_vocabulary(words, provenance=provenance)


def counterfactual_augment(texts: Sequence[str], swaps: SwapList) -> tuple[list[str], int]:
    """CDA: ``texts`` followed by the gender-swapped copy of every text with at least one swap.

    Returns:
        The augmented texts and the number of counterfactual copies added.
    """
    if isinstance(texts, str):
        raise DataError("Expected a sequence of texts, but got a single string.")
    extra = []
    for t in texts:
        cf, n = swap_text(t, swaps)
        if n > 0:
            extra.append(cf)
    return [*texts, *extra], len(extra)


# --------------------------------------------------------------------------------------------
# data: BOLD split by person, built-in corpus prompts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """An evaluation prompt: ``source`` (``bold`` / ``builtin``), ``group`` (``male`` / ``female``),
    ``index`` (position within its source and group: prompts with the same source and index share
    the sampling seed; built-in prompts with the same index are a swap pair) and ``text``."""

    source: str
    group: str
    index: int
    text: str


@dataclass(frozen=True)
class BoldSplit:
    """BOLD gender sentences split by person.

    Attributes:
        train_sentences: Wikipedia sentences of the training people.
        heldout_sentences: Wikipedia sentences of the held-out people (perplexity).
        heldout_prompts: ``(group, person, prompt)`` of the held-out people (``group`` = male/female).
        train_people / heldout_people: the entity names on each side (disjoint).
        files: path -> sha256 of the files read.
    """

    train_sentences: tuple[str, ...]
    heldout_sentences: tuple[str, ...]
    heldout_prompts: tuple[tuple[str, str, str], ...]
    train_people: frozenset[str]
    heldout_people: frozenset[str]
    files: Mapping[str, str] = field(default_factory=dict)


def _bold_folder(directory: str | Path | None, data_dir: str | Path | None = None) -> Path | None:
    from trustnlp.data.registry import data_dirs

    if directory is not None:
        return Path(directory)
    found = [d / "bold" for d in data_dirs(data_dir) if (d / "bold" / "wikipedia" / "gender_wiki.json").is_file()]
    return found[0] if found else None


def _require_bold(directory: str | Path | None, data_dir: str | Path | None, needed: str) -> Path:
    """The BOLD folder, or a DataError naming the file that was looked for and where."""
    folder = _bold_folder(directory, data_dir)
    if folder is None:
        raise DataError(f"BOLD not found: expected bold/{needed} under ../shared/data "
                        "(or $TRUSTNLP_DATA_DIR, or `data_dir`).")
    return folder


def load_bold_gender(directory: str | Path | None = None, *, data_dir: str | Path | None = None
                     ) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, list[str]]], dict[str, str]]:
    """BOLD's gender domain: ``(wikipedia, prompts, files)``, each ``{group: {person: [text, ...]}}``.

    ``directory`` is the BOLD folder (default: ``bold/`` in the data directories, e.g. ``../shared/data``).

    Raises:
        DataError: the files are missing or malformed.
    """
    from trustnlp.data.dataset import file_sha256

    folder = _require_bold(directory, data_dir, "wikipedia/gender_wiki.json")
    out: list[dict[str, dict[str, list[str]]]] = []
    files: dict[str, str] = {}
    for path in (folder / "wikipedia" / "gender_wiki.json", folder / "prompts" / "gender_prompt.json"):
        data = _read_bold_json(path)
        missing = [g for g in BOLD_GROUPS if g not in data]
        if missing:
            raise DataError(f"{path}: expected the gender groups {list(BOLD_GROUPS)}, but {missing} are missing.")
        out.append({g: data[g] for g in BOLD_GROUPS})
        files[str(path)] = file_sha256(path)
    return out[0], out[1], files


def split_bold_by_person(wiki: Mapping[str, Mapping[str, Sequence[str]]],
                         prompts: Mapping[str, Mapping[str, Sequence[str]]], *, heldout_fraction: float = 0.2,
                         seed: int = 0) -> BoldSplit:
    """Split BOLD gender data by person: in each group (sorted), a seeded share ``heldout_fraction``
    (rounded, at least one when the group has two people or more) of its people not yet assigned is
    held out; a name in both groups is assigned once. Training sentences come only from training
    people; held-out sentences and prompts only from held-out people."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(expected("heldout_fraction", "in (0, 1)", heldout_fraction))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _S_SPLIT]))
    held: dict[str, bool] = {}
    for group in sorted(wiki):
        names = sorted(n for n in wiki[group] if n not in held)
        k = min(len(names) - 1, max(1, round(heldout_fraction * len(names)))) if len(names) >= 2 else 0
        order = rng.permutation(len(names))
        for rank, i in enumerate(order):
            held[names[i]] = rank < k
    train: list[str] = []
    heldout: list[str] = []
    heldout_prompts: list[tuple[str, str, str]] = []
    for group in sorted(wiki):
        for name in sorted(wiki[group]):
            (heldout if held[name] else train).extend(wiki[group][name])
            if held[name]:
                gender = BOLD_GROUPS.get(group, group)
                heldout_prompts.extend((gender, name, p.strip()) for p in prompts.get(group, {}).get(name, ()) if p.strip())
    return BoldSplit(tuple(train), tuple(heldout), tuple(heldout_prompts),
                     frozenset(n for n, h in held.items() if not h), frozenset(n for n, h in held.items() if h))


def builtin_prompt_pairs(texts: Sequence[str], genders: Sequence[str], swaps: SwapList, pairs: GenderPairs,
                         *, min_words: int = 3) -> list[tuple[str, str]]:
    """``(male prompt, female prompt)`` pairs from gendered utterances (de-duplicated, in order).

    The prompt is the utterance's words up to its first gendered word (at least ``min_words``), its
    counterpart the :func:`~trustnlp.fairness.counterfactual.swap_text` of it. The gendered word's
    orientation decides which side is male (the ``genders`` column when the word has none).
    """
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    gendered = pairs.male | pairs.female | {w for p in pairs.pairs for w in p}
    for text, g in zip(texts, genders):
        words = text.split()
        first = next((i for i, w in enumerate(words) if any(t in gendered for t in _WORD.findall(w.lower()))), None)
        if first is None:
            continue
        prefix = " ".join(words[: max(first + 1, min_words)])
        cf, n = swap_text(prefix, swaps)
        if n == 0 or cf.lower() == prefix.lower():
            continue
        word = next(t for t in _WORD.findall(words[first].lower()) if t in gendered)
        side = "male" if word in pairs.male else "female" if word in pairs.female else str(g)
        if side not in GROUPS:
            continue
        pair = (prefix, cf) if side == "male" else (cf, prefix)
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


def _read_bold_json(path: Path) -> dict[str, dict[str, list[str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"BOLD file {path} does not exist.") from None
    except json.JSONDecodeError as e:
        raise DataError(f"BOLD file {path} is not valid JSON: {e}") from None
    ok = isinstance(data, dict) and all(
        isinstance(g, dict) and all(isinstance(v, list) for v in g.values()) for g in data.values())
    if not ok:
        raise DataError(f"{path}: expected a JSON object {{group: {{entity: [text, ...]}}}}.")
    return {g: {e: [t for t in v if isinstance(t, str) and t.strip()] for e, v in ents.items()}
            for g, ents in data.items()}


def load_bold_professions(directory: str | Path | None = None, *, data_dir: str | Path | None = None
                          ) -> tuple[dict[str, dict[str, list[str]]], dict[str, str]]:
    """BOLD's profession-domain prompts (Dhamala et al., FAccT 2021): ``({profession group: {entity:
    [prompt, ...]}}, files)``; ``directory`` is the BOLD folder (default: ``bold/`` in the data
    directories).

    Raises:
        DataError: the file is missing or malformed.
    """
    from trustnlp.data.dataset import file_sha256

    folder = _require_bold(directory, data_dir, "prompts/profession_prompt.json")
    path = folder / "prompts" / "profession_prompt.json"
    data = _read_bold_json(path)
    if not data:
        raise DataError(f"{path}: expected at least one profession group, but got none.")
    return data, {str(path): file_sha256(path)}


def _name_key(name: str) -> str:
    """``Jacob_Zachar`` / ``Jacob Zachar (actor)`` -> ``jacob zachar``."""
    return " ".join(_WORD.findall(re.sub(r"\([^)]*\)", " ", name.replace("_", " ")).lower()))


def _gendered_words(pairs: GenderPairs) -> frozenset[str]:
    return frozenset(pairs.male | pairs.female | {w for p in pairs.pairs for w in p})


@dataclass(frozen=True)
class ProfessionPrompts:
    """Gender-neutral profession prompts (see :func:`select_profession_prompts`).

    Attributes:
        prompts: ``(profession, entity, text)``, grouped by profession (sorted), in a seeded sample.
        available: per profession, the prompts left after the exclusions (before sampling).
        excluded: why prompts were left out: ``training_person`` (the entity is a training person),
            ``mentions_training_person`` (the text holds a training person's name), ``gendered`` (it
            holds a gendered word), ``duplicate`` (the same text twice in a profession).
    """

    prompts: tuple[tuple[str, str, str], ...]
    available: Mapping[str, int]
    excluded: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"n_prompts": len(self.prompts), "n_professions": len(self.available),
                "available": dict(self.available), "excluded": dict(self.excluded)}


def select_profession_prompts(prompts: Mapping[str, Mapping[str, Sequence[str]]], pairs: GenderPairs, *,
                              exclude_people: Sequence[str] | frozenset[str] = (), n_per_profession: int = 20,
                              seed: int = 0) -> ProfessionPrompts:
    """Held-out gender-neutral prompts, ``n_per_profession`` per profession (all when fewer).

    ``prompts`` is ``{profession: {entity: [text, ...]}}`` (BOLD's profession domain). A prompt is left
    out when its entity is one of ``exclude_people`` (compared by :func:`_name_key`: case, ``_`` and a
    trailing ``(...)`` ignored), when its text mentions one of their names (a run of words equal to the
    name), or when it holds a gendered word of ``pairs`` (a male or female word, or either word of a
    pair). The sample is drawn per profession (professions sorted, entities sorted, texts in file
    order) with a generator seeded by ``seed``.
    """
    if isinstance(n_per_profession, bool) or not isinstance(n_per_profession, int) or n_per_profession < 1:
        raise ConfigError(expected("n_per_profession", "an integer >= 1", n_per_profession))
    people = {k for k in (_name_key(n) for n in exclude_people) if k}
    longest = max((len(k.split()) for k in people), default=0)
    gendered = _gendered_words(pairs)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _S_PROFESSION]))
    excluded = dict.fromkeys(("training_person", "mentions_training_person", "gendered", "duplicate"), 0)
    out: list[tuple[str, str, str]] = []
    available: dict[str, int] = {}
    for profession in sorted(prompts):
        keep: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for entity in sorted(prompts[profession]):
            for raw in prompts[profession][entity]:
                text = " ".join(raw.split())
                if not text:
                    continue
                words = _WORD.findall(text.lower())
                if _name_key(entity) in people:
                    excluded["training_person"] += 1
                elif any(" ".join(words[i:i + n]) in people for n in range(1, longest + 1)
                         for i in range(len(words) - n + 1)):
                    excluded["mentions_training_person"] += 1
                elif any(w in gendered for w in words):
                    excluded["gendered"] += 1
                elif text.lower() in seen:
                    excluded["duplicate"] += 1
                else:
                    seen.add(text.lower())
                    keep.append((profession, entity, text))
        available[profession] = len(keep)
        out.extend(keep[i] for i in _subsample(len(keep), n_per_profession, rng))
    return ProfessionPrompts(tuple(out), available, excluded)


def builtin_profession_prompts(texts: Sequence[str], professions: Sequence[str], pairs: GenderPairs, *,
                               occupations: Sequence[str] | None = None, min_words: int = 3) -> list[tuple[str, str]]:
    """``(occupation, prompt)`` from utterances that mention an occupation (the built-in corpus's
    ``profession`` column, ``"none"`` when absent): the words up to the occupation (at least
    ``min_words``), left out when that prefix holds a gendered word of ``pairs`` (not neutral). With
    ``occupations``, each such prefix is a template: the occupation is replaced by every one of
    ``occupations`` (``a`` / ``an`` before it adjusted), so that every occupation gets the same
    contexts. Repeated prompts are dropped. The no-BOLD fallback of the profession prompts."""
    gendered = _gendered_words(pairs)
    templates: list[tuple[str, list[str], int]] = []
    for text, prof in zip(texts, professions):
        prof = str(prof)
        if prof in ("none", "", "None"):
            continue
        words = text.split()
        at = next((i for i, w in enumerate(words) if w.lower() == prof), None)
        if at is None:
            continue
        prefix = words[: max(at + 1, min_words)]
        if any(w in gendered for w in _WORD.findall(" ".join(prefix).lower())):
            continue
        templates.append((prof, prefix, at))
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for prof, prefix, at in templates:
        for occ in (occupations if occupations is not None else (prof,)):
            words = list(prefix)
            words[at] = occ
            if at > 0 and words[at - 1].lower() in ("a", "an"):
                words[at - 1] = "an" if occ[:1].lower() in "aeiou" else "a"
            prompt = " ".join(words)
            if prompt.lower() not in seen and not any(w in gendered for w in _WORD.findall(occ.lower())):
                seen.add(prompt.lower())
                out.append((occ, prompt))
    return out


@dataclass(frozen=True)
class ProbeData:
    """The downstream probe's task: the built-in corpus's intents (train: train + validation splits).

    Attributes:
        train_texts / train_labels: the probe's training data.
        test_texts / test_labels / test_gender: its evaluation (``gender``: ``female`` / ``male`` / ``none``).
    """

    train_texts: tuple[str, ...]
    train_labels: tuple[int, ...]
    test_texts: tuple[str, ...]
    test_labels: tuple[int, ...]
    test_gender: tuple[str, ...]


@dataclass(frozen=True)
class DistillData:
    """Everything the study trains and evaluates on (see :func:`prepare_distill_data`).

    Attributes:
        train_texts: the teacher's (and the plain student's) training corpus.
        heldout_texts: held-out sentences for perplexity and KL.
        prompts: evaluation prompts (sources ``bold``, ``builtin`` and ``profession``).
        pairs / swaps: the gender pairs and the text swap list.
        meta: provenance (sources, sha256 of files, split sizes, fallback reasons).
        probe: the downstream probe's task (``None``: no probe).
    """

    train_texts: tuple[str, ...]
    heldout_texts: tuple[str, ...]
    prompts: tuple[Prompt, ...]
    pairs: GenderPairs
    swaps: SwapList
    meta: Mapping[str, Any]
    probe: ProbeData | None = None


def _subsample(n: int, k: int, rng: np.random.Generator) -> list[int]:
    return sorted(rng.permutation(n)[: min(k, n)].tolist())


def prepare_distill_data(config: DistillConfig) -> DistillData:
    """Training corpus, held-out sentences and evaluation prompts of a :class:`DistillConfig`."""
    from trustnlp.data.assistant import AssistantConfig, generate_assistant

    swaps = load_gender_swaps(config.data_dir, shared=config.shared_swaps)
    pairs = gender_pairs(swaps, data_dir=config.data_dir, shared=config.shared_swaps)
    rng = np.random.default_rng(np.random.SeedSequence([config.data_seed, _S_PROMPTS]))
    splits = generate_assistant(AssistantConfig(n_utterances=config.corpus_size), seed=config.data_seed)
    builtin_train = [*splits.train.texts, *(splits.validation.texts if splits.validation is not None else ())]
    meta: dict[str, Any] = {"name": "bold-gender+assistant", "licence": "CC-BY-SA-4.0 (BOLD), Apache-2.0 (assistant)",
                            "assistant": {"n_utterances": config.corpus_size, "seed": config.data_seed,
                                          "n_train": len(builtin_train), "n_test": len(splits.test)},
                            "swaps": swaps.to_dict(), "pairs": pairs.to_dict(), "fallback": None}
    folder = _bold_folder(config.bold_dir, config.data_dir) if config.bold != "off" else None
    prompts: list[Prompt] = []
    if folder is None:
        if config.bold == "require":
            raise DataError("BOLD is required (bold='require') but bold/wikipedia/gender_wiki.json was not found under "
                            "../shared/data, $TRUSTNLP_DATA_DIR or `data_dir`.")
        reason = "bold='off'" if config.bold == "off" else "BOLD not found (../shared/data/bold missing)"
        meta.update(name="assistant", licence="Apache-2.0",
                    fallback=f"{reason}: built-in corpus only; held-out perplexity on its test split, built-in prompts")
        train_texts, heldout_texts = builtin_train, list(splits.test.texts)
    else:
        wiki, bold_prompts, files = load_bold_gender(folder)
        split = split_bold_by_person(wiki, bold_prompts, heldout_fraction=config.heldout_fraction, seed=config.data_seed)
        train_texts = [*split.train_sentences, *builtin_train]
        heldout_texts = list(split.heldout_sentences)
        for group in GROUPS:
            rows = [p for p in split.heldout_prompts if p[0] == group]
            for j, i in enumerate(_subsample(len(rows), config.n_prompts, rng)):
                prompts.append(Prompt("bold", group, j, rows[i][2]))
        meta.update(files=files, source=str(folder), bold={
            "heldout_fraction": config.heldout_fraction, "n_train_people": len(split.train_people),
            "n_heldout_people": len(split.heldout_people), "n_train_sentences": len(split.train_sentences),
            "n_heldout_sentences": len(split.heldout_sentences), "n_heldout_prompts": len(split.heldout_prompts)})
    pair_list = builtin_prompt_pairs(splits.test.texts, splits.test.column("gender"), swaps, pairs)
    for j, i in enumerate(_subsample(len(pair_list), config.n_builtin_pairs, rng)):
        prompts.append(Prompt("builtin", "male", j, pair_list[i][0]))
        prompts.append(Prompt("builtin", "female", j, pair_list[i][1]))
    # the headline's gender-neutral profession prompts
    if folder is not None:
        professions, prof_files = load_bold_professions(folder)
        chosen = select_profession_prompts(professions, pairs, exclude_people=split.train_people,
                                           n_per_profession=config.n_profession_prompts, seed=config.data_seed)
        meta["files"] = {**meta["files"], **prof_files}
        meta["profession_prompts"] = {"source": "bold profession domain", **chosen.to_dict()}
        neutral = [(prof, text) for prof, _, text in chosen.prompts]
    else:
        from trustnlp.data.assistant import PROFESSION_STEREOTYPES

        found = builtin_profession_prompts(splits.test.texts, splits.test.column("profession"), pairs,
                                           occupations=sorted(PROFESSION_STEREOTYPES))
        by_prof: dict[str, list[str]] = {}
        for prof, text in found:
            by_prof.setdefault(prof, []).append(text)
        chosen = select_profession_prompts({k: {"builtin": v} for k, v in by_prof.items()}, pairs,
                                           n_per_profession=config.n_profession_prompts, seed=config.data_seed)
        neutral = [(prof, text) for prof, _, text in chosen.prompts]
        meta["profession_prompts"] = {
            "source": "built-in corpus test split: utterances mentioning an occupation, cut after it, with every "
                      "occupation of the corpus put in its place",
            **chosen.to_dict()}
    for j, (prof, text) in enumerate(neutral):
        prompts.append(Prompt(PROFESSION_SOURCE, prof, j, text))
    if not neutral:
        meta["profession_prompts"]["null_reason"] = "no gender-neutral profession prompt was found"
    meta.update(n_train_texts=len(train_texts), n_heldout_texts=len(heldout_texts),
                n_prompts={**{f"{s}/{g}": sum(1 for p in prompts if p.source == s and p.group == g)
                              for s in SOURCES for g in GROUPS},
                           PROFESSION_SOURCE: len(neutral)})
    if not heldout_texts:
        raise DataError("No held-out texts for perplexity: the held-out split is empty (raise `heldout_fraction`).")
    probe = None
    if config.probe:
        parts = [d for d in (splits.train, splits.validation) if d is not None]
        probe = ProbeData(tuple(t for d in parts for t in d.texts), tuple(int(y) for d in parts for y in d.labels),
                          tuple(splits.test.texts), tuple(int(y) for y in splits.test.labels),
                          tuple(str(g) for g in splits.test.column("gender")))
    return DistillData(tuple(train_texts), tuple(heldout_texts), tuple(prompts), pairs, swaps, meta, probe)


# --------------------------------------------------------------------------------------------
# teacher targets and the distillation loss
# --------------------------------------------------------------------------------------------


def combine_distributions(log_p: torch.Tensor, log_q: torch.Tensor, mode: str = "mean",
                          gendered: torch.Tensor | None = None) -> torch.Tensor:
    """Combine the original ``log p`` and the mapped-back counterfactual ``log q~`` (``[..., V]``
    log-probabilities) into a distribution (probabilities, normalised over the last axis).

    ``mean``: ``(p + q~)/2``; ``max``: ``max(p, q~)`` renormalised; ``expmean``: ``sqrt(p q~)``
    renormalised; ``replace``: ``q~`` where ``gendered`` (boolean ``[V]``), ``p`` elsewhere, renormalised.
    """
    check_choice("combine", mode, COMBINE_MODES)
    if mode == "mean":
        return 0.5 * (log_p.exp() + log_q.exp())
    if mode == "max":
        out = torch.maximum(log_p, log_q)
    elif mode == "expmean":
        out = 0.5 * (log_p + log_q)
    else:
        if gendered is None:
            raise ConfigError("combine='replace' needs the `gendered` token mask.")
        out = torch.where(gendered.to(log_p.device), log_q, log_p)
    return torch.softmax(out, dim=-1)


@torch.no_grad()
def teacher_distribution(teacher: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                         temperature: float = 1.0, swap: TokenSwap | None = None, combine: str = "mean",
                         select: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher's next-token distribution at temperature ``T`` (``[B, T, V]`` probabilities), or,
    with ``swap``, its counterfactual role-reversal combination (module docs): the teacher also reads
    ``P(input_ids)`` (one forward over both), the counterfactual distribution is mapped back through
    ``P`` in the vocabulary dimension and combined by ``combine``.

    ``select`` (boolean ``[B, T]``) keeps only those positions: ``[N, V]`` in row-major order.
    """
    if not temperature > 0:
        raise ConfigError(expected("temperature", "> 0", temperature))
    b = input_ids.shape[0]
    if swap is None:
        logits = teacher(input_ids, attention_mask)
    else:
        perm = swap.perm.to(input_ids.device)
        logits = teacher(torch.cat([input_ids, perm[input_ids]], dim=0), torch.cat([attention_mask, attention_mask]))
    logits = logits if logits.dtype == torch.float64 else logits.float()
    if swap is None:
        logits = logits if select is None else logits[select]
        return torch.softmax(logits / temperature, dim=-1)
    orig, cf = logits[:b], logits[b:]
    if select is not None:
        orig, cf = orig[select], cf[select]
    log_p = torch.log_softmax(orig / temperature, dim=-1)
    log_q = torch.log_softmax(cf / temperature, dim=-1).index_select(-1, perm)
    return combine_distributions(log_p, log_q, combine, swap.gendered)


def _token_losses(student_logits: torch.Tensor, teacher_probs: torch.Tensor, targets: torch.Tensor, *, alpha: float,
                  temperature: float) -> torch.Tensor:
    """``alpha T^2 KL(p || softmax(s / T)) + (1 - alpha) CE(s, target)`` per row of ``[N, V]``."""
    p = teacher_probs.to(student_logits.dtype)
    with torch.no_grad():
        neg_entropy = torch.xlogy(p, p).sum(-1)  # no gradient: the teacher is fixed
    out = torch.zeros(student_logits.shape[0], dtype=student_logits.dtype, device=student_logits.device)
    if alpha > 0:
        cross = -(p * torch.log_softmax(student_logits / temperature, dim=-1)).sum(-1)
        out = out + alpha * temperature**2 * (neg_entropy + cross)
    if alpha < 1:
        out = out + (1.0 - alpha) * F.cross_entropy(student_logits, targets, reduction="none")
    return out


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, *, alpha: float, temperature: float,
                      reduction: Literal["mean", "sum", "none"] = "mean") -> torch.Tensor:
    """Per sequence, the mean over its next-token positions of
    ``alpha T^2 KL(teacher_probs || softmax(student/T)) + (1 - alpha) CE(student, next token)``.

    Position ``t`` predicts token ``t + 1`` and counts when ``attention_mask[t + 1] == 1``.
    ``teacher_probs`` is already at temperature ``T``: ``[B, T, V]``, or ``[N, V]`` for just the
    counted positions (row-major, as :func:`teacher_distribution` with ``select``). ``0 log 0 = 0``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(expected("alpha", "in [0, 1]", alpha))
    if not temperature > 0:
        raise ConfigError(expected("temperature", "> 0", temperature))
    valid = attention_mask[:, 1:] != 0
    s = student_logits[:, :-1][valid]
    p = teacher_probs[:, :-1][valid] if teacher_probs.dim() == 3 else teacher_probs
    if p.shape != s.shape:
        raise DataError(f"Expected teacher probabilities for {tuple(s.shape)} positions x vocabulary, but got "
                        f"{tuple(p.shape)}.")
    per_token = _token_losses(s, p, input_ids[:, 1:][valid], alpha=alpha, temperature=temperature)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(valid)[valid]
    per_seq = torch.zeros(input_ids.shape[0], dtype=per_token.dtype, device=per_token.device).index_add(0, rows, per_token)
    per_seq = per_seq / valid.sum(1).clamp(min=1).to(per_seq.dtype)
    if reduction == "none":
        return per_seq
    return per_seq.sum() if reduction == "sum" else per_seq.mean()


class DistillStep:
    """A :func:`trustnlp.train.fit` step function: the distillation loss of a logical batch
    (``sum over sequences / logical size``, accumulated over physical batches), with teacher
    targets from :func:`teacher_distribution` (role reversal when ``swap`` is given)."""

    def __init__(self, teacher: torch.nn.Module, *, alpha: float, temperature: float, swap: TokenSwap | None = None,
                 combine: str = "mean") -> None:
        check_choice("combine", combine, COMBINE_MODES)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(expected("alpha", "in [0, 1]", alpha))
        if not temperature > 0:
            raise ConfigError(expected("temperature", "> 0", temperature))
        self.teacher, self.alpha, self.temperature, self.swap, self.combine = teacher, alpha, temperature, swap, combine
        self.teacher.eval()

    def __call__(self, model: torch.nn.Module, task: Any, batch: dict[str, torch.Tensor], logical_size: int,
                 physical: int) -> float:
        n = batch["input_ids"].shape[0]
        if n == 0:
            return float("nan")
        total = 0.0
        for start in range(0, n, physical):
            ids, mask = batch["input_ids"][start:start + physical], batch["attention_mask"][start:start + physical]
            t = int(mask.sum(dim=1).max())
            ids, mask = ids[:, :t], mask[:, :t]
            select = torch.zeros_like(mask, dtype=torch.bool)
            select[:, :-1] = mask[:, 1:] != 0  # the positions that predict a real next token
            target = teacher_distribution(self.teacher, ids, mask, temperature=self.temperature, swap=self.swap,
                                          combine=self.combine, select=select)
            loss = distillation_loss(model(ids, mask), target, ids, mask, alpha=self.alpha,
                                     temperature=self.temperature, reduction="sum")
            (loss / logical_size).backward()
            total += float(loss.detach())
        return total / n


@torch.no_grad()
def kl_to_teacher(student: torch.nn.Module, teacher: torch.nn.Module, data: Any, *, batch_size: int = 64) -> float:
    """Token-mean ``KL(teacher || student)`` at temperature 1 over the next-token positions of
    ``data`` (an :class:`~trustnlp.tasks.EncodedData`)."""
    student_mode, teacher_mode = student.training, teacher.training
    student.eval()
    teacher.eval()
    total, count = 0.0, 0
    try:
        for b in data.batches(batch_size):
            ids, mask = b["input_ids"], b["attention_mask"]
            log_p = torch.log_softmax(teacher(ids, mask).double(), -1)[:, :-1]
            log_s = torch.log_softmax(student(ids, mask).double(), -1)[:, :-1]
            kl = (log_p.exp() * (log_p - log_s)).sum(-1)
            valid = mask[:, 1:].bool()
            total += float(kl[valid].sum())
            count += int(valid.sum())
    finally:
        student.train(student_mode)
        teacher.train(teacher_mode)
    return total / count if count else float("nan")


def _encode_lm(tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    from trustnlp.tasks import EncodedData

    enc = tokenizer.encode(list(texts), max_length=max_length)
    return EncodedData(enc.input_ids, enc.attention_mask, None, None, enc.num_truncated)


def distill(student: torch.nn.Module, teacher: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *,
            alpha: float = 0.5, temperature: float = 2.0, swap: TokenSwap | None = None, combine: str = "mean",
            epochs: int = 3, batch_size: int = 32, lr: float = 2e-3, seed: int = 0, max_length: int = 48,
            device: str = "cpu", max_steps: int | None = None, progress: bool = False) -> Any:
    """Distil ``teacher`` into ``student`` on ``texts`` with the one training loop
    (:func:`trustnlp.train.fit`, AdamW, linear decay, seeded shuffling). ``swap`` switches on the
    role-reversal targets; for CDA pass the augmented texts. Returns the ``FitResult``."""
    from trustnlp.config import TrainConfig
    from trustnlp.devices import resolve_device
    from trustnlp.tasks import LMTask
    from trustnlp.train import fit

    data = _encode_lm(tokenizer, texts, max_length)
    cfg = TrainConfig(task="lm", model="transformer", tokenizer="word", epochs=epochs, max_steps=max_steps,
                      batch_size=batch_size, physical_batch_size=batch_size, lr=lr, seed=seed, device=device,
                      eval_every=0, max_length=max_length)
    teacher.to(resolve_device(device))
    for p in teacher.parameters():
        p.requires_grad_(False)
    step = DistillStep(teacher, alpha=alpha, temperature=temperature, swap=swap, combine=combine)
    return fit(student, LMTask(), data, config=cfg, step_fn=step, progress=progress)


# --------------------------------------------------------------------------------------------
# generation, scores, disparity
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_continuations(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *, seeds: Sequence[int],
                           max_new_tokens: int = 20, top_k: int | None = 40, temperature: float = 1.0,
                           batch_size: int = 64) -> list[list[int]]:
    """Sampled continuation ids (end token excluded) of each prompt, batched.

    The prompt is ``[bos] + tokens`` (the tokeniser's ``cls_id`` when it has one), cropped to its last
    ``max_positions - max_new_tokens`` tokens. Each step samples exactly as
    :meth:`~trustnlp.models.lm.CausalLM.generate` (``softmax(logits / temperature)`` over the
    ``top_k`` most likely tokens; greedy when ``temperature == 0``) with prompt ``i``'s own CPU
    generator seeded by ``seeds[i]``, so a continuation does not depend on the batch it is in.
    Sampling stops at the tokeniser's ``sep_id`` (the end token).
    """
    if len(seeds) != len(prompts):
        raise DataError(f"Expected one seed per prompt ({len(prompts)}), but got {len(seeds)}.")
    if top_k is not None and top_k < 1:
        raise ConfigError(expected("top_k", ">= 1 or None", top_k))
    if not temperature >= 0:
        raise ConfigError(expected("temperature", ">= 0", temperature))
    max_pos = int(getattr(model, "max_positions", 10**9))
    room = max_pos - max_new_tokens
    if room < 1:
        raise ConfigError(expected("max_new_tokens", f"< the model's maximum length ({max_pos})", max_new_tokens))
    bos, eos, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    rows = []
    for p in prompts:
        enc = tokenizer.encode([p], add_special_tokens=False, max_length=10_000)
        ids = ([bos] if bos is not None else []) + enc.input_ids[0][enc.attention_mask[0].bool()].tolist()
        if not ids:
            raise DataError(f"Prompt {p!r} has no tokens and the tokeniser has no start token.")
        rows.append(ids[-room:])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start:start + batch_size]]
            b = len(chunk)
            lens = torch.tensor([len(r) for r in chunk])
            ids = torch.full((b, int(lens.max()) + max_new_tokens), pad, dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = torch.tensor(r)
            done = [False] * b
            cont: list[list[int]] = [[] for _ in range(b)]
            for _ in range(max_new_tokens):
                t = int(lens.max())
                mask = (torch.arange(t)[None, :] < lens[:, None]).long()
                logits = model(ids[:, :t].to(device), mask.to(device)).float().cpu()
                last = logits[torch.arange(b), lens - 1]
                for i in range(b):
                    if done[i]:
                        continue
                    row = last[i : i + 1]
                    if temperature == 0:
                        nxt = int(row.argmax(dim=-1))
                    else:
                        row = row / temperature
                        if top_k is not None and top_k < row.shape[-1]:
                            kth = row.topk(top_k, dim=-1).values[:, -1:]
                            row = row.masked_fill(row < kth, float("-inf"))
                        nxt = int(torch.multinomial(torch.softmax(row, dim=-1), 1, generator=gens[i]))
                    if eos is not None and nxt == eos:
                        done[i] = True
                        continue
                    cont[i].append(nxt)
                    ids[i, lens[i]] = nxt
                    lens[i] += 1
                if all(done):
                    break
            out.extend(cont)
    finally:
        model.train(was_training)
    return out


@functools.lru_cache(maxsize=1)
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise MissingDependencyError("vaderSentiment", purpose="sentiment of generated text") from None
    return SentimentIntensityAnalyzer()


def sentiment_scores(texts: Sequence[str]) -> np.ndarray:
    """VADER compound sentiment (Hutto & Gilbert 2014), in ``[-1, 1]``, of each text (float64)."""
    if isinstance(texts, str):
        raise DataError("Expected a sequence of texts, but got a single string.")
    analyzer = _vader()
    return np.asarray([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


def gender_word_counts(texts: Sequence[str], pairs: GenderPairs) -> tuple[np.ndarray, np.ndarray]:
    """Numbers of male and of female words (``pairs.male`` / ``pairs.female``) in each text."""
    male = np.zeros(len(texts), dtype=np.int64)
    female = np.zeros(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        for w in _WORD.findall(t.lower()):
            male[i] += w in pairs.male
            female[i] += w in pairs.female
    return male, female


@dataclass(frozen=True)
class Disparity:
    """``|mean(male) - mean(female)|`` with a percentile bootstrap interval.

    Attributes:
        value: the disparity. ci: ``(low, high)`` at ``confidence``.
        mean_male / mean_female / n_male / n_female: the groups.
        n_bootstrap / confidence: the interval's settings.
    """

    value: float
    ci: tuple[float, float]
    mean_male: float
    mean_female: float
    n_male: int
    n_female: int
    n_bootstrap: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": list(self.ci), "mean_male": self.mean_male, "mean_female": self.mean_female,
                "n_male": self.n_male, "n_female": self.n_female, "n_bootstrap": self.n_bootstrap,
                "confidence": self.confidence}


def disparity(male: Sequence[float] | np.ndarray, female: Sequence[float] | np.ndarray, *, n_bootstrap: int = 2000,
              confidence: float = 0.95, seed: int = 0) -> Disparity:
    """``|mean(male) - mean(female)|`` and its percentile bootstrap interval: ``n_bootstrap`` times,
    each group is resampled with replacement to its own size (one generator seeded by ``seed``),
    and the interval is the ``(1 -+ confidence) / 2`` quantiles (linear interpolation) of the
    resampled disparities. (The absolute value makes the percentile interval conservative near 0.)

    Raises:
        DataError: a group is empty or holds a non-finite score.
    """
    a, b = np.asarray(male, dtype=np.float64).ravel(), np.asarray(female, dtype=np.float64).ravel()
    for name, x in (("male", a), ("female", b)):
        if x.size == 0:
            raise DataError(f"Expected at least one `{name}` score, but got none.")
        if not np.isfinite(x).all():
            raise DataError(f"Expected finite `{name}` scores, but some are NaN or infinite.")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ConfigError(expected("n_bootstrap", "an integer >= 1", n_bootstrap))
    if not 0.0 < confidence < 1.0:
        raise ConfigError(expected("confidence", "in (0, 1)", confidence))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _S_BOOTSTRAP]))
    ma = a[rng.integers(0, a.size, size=(n_bootstrap, a.size))].mean(axis=1)
    mb = b[rng.integers(0, b.size, size=(n_bootstrap, b.size))].mean(axis=1)
    boot = np.abs(ma - mb)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Disparity(float(abs(a.mean() - b.mean())), (float(lo), float(hi)), float(a.mean()), float(b.mean()),
                     int(a.size), int(b.size), n_bootstrap, confidence)


def polarity_labels(male: Sequence[int] | np.ndarray, female: Sequence[int] | np.ndarray) -> np.ndarray:
    """Gender polarity of each text from its male and female word counts: ``+1`` male-leaning
    (``m > f``), ``-1`` female-leaning (``f > m``), ``0`` neutral (int64)."""
    m, f = np.asarray(male, dtype=np.int64).ravel(), np.asarray(female, dtype=np.int64).ravel()
    if m.shape != f.shape:
        raise DataError(f"Expected as many female as male counts, but got {f.size} and {m.size}.")
    return np.sign(m - f).astype(np.int64)


@dataclass(frozen=True)
class PolarityDisparity:
    """Gender polarity disparity of generations for gender-neutral prompts (:func:`polarity_disparity`).

    Attributes:
        value: ``mean_p |skew_p|`` over professions (the headline ``gender_disparity``); ci: its interval.
        skew / skew_ci: ``mean_p skew_p`` (signed, > 0: male) and its interval.
        gendered_share: share of all generations with at least one gendered word.
        by_profession: profession -> ``{"n", "skew", "male_leaning", "female_leaning", "gendered_share"}``.
        null_value / p_value: the sign-flip null (see :func:`polarity_disparity`): the mean of
            ``mean_p |skew_p|`` when every leaning generation leans male or female with probability 1/2
            (the noise floor of ``value`` at these sizes and leaning shares), and the share of null
            replicates at least as large as ``value`` (``(b + 1) / (n_bootstrap + 1)``).
        n / n_bootstrap / confidence: generations, bootstrap (and null) resamples, interval level.
    """

    value: float
    ci: tuple[float, float]
    skew: float
    skew_ci: tuple[float, float]
    gendered_share: float
    by_profession: Mapping[str, Mapping[str, float | int]]
    null_value: float
    p_value: float
    n: int
    n_bootstrap: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": list(self.ci), "skew": self.skew, "skew_ci": list(self.skew_ci),
                "gendered_share": self.gendered_share,
                "by_profession": {k: dict(v) for k, v in self.by_profession.items()},
                "null_value": self.null_value, "p_value": self.p_value, "n": self.n, "n_bootstrap": self.n_bootstrap,
                "confidence": self.confidence}


def polarity_disparity(male: Sequence[int] | np.ndarray, female: Sequence[int] | np.ndarray,
                       professions: Sequence[str], *, n_bootstrap: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> PolarityDisparity:
    """Gender polarity disparity (module docs; after Dhamala et al. 2021's gender polarity on BOLD).

    Each generation ``i`` (of profession ``professions[i]``) with ``male[i]`` male and ``female[i]``
    female words is labelled by :func:`polarity_labels`; per profession
    ``skew_p = (#male-leaning - #female-leaning) / n_p``; the disparity is ``mean_p |skew_p|`` (each
    profession weighs the same) and the signed skew ``mean_p skew_p``. Percentile bootstrap: ``n_bootstrap``
    times, every profession's generations are resampled with replacement to its own size (one
    generator seeded by ``seed``) and both statistics recomputed; the interval holds the
    ``(1 -+ confidence) / 2`` quantiles (linear interpolation).

    ``mean_p |skew_p|`` is biased upwards: sampling noise alone gives ``E|skew_p| > 0`` (about
    ``0.8 sqrt(g_p / n_p)`` for a share ``g_p`` of leaning generations). Its noise floor is estimated by a sign-flip
    null, from the same generator after the bootstrap: ``n_bootstrap`` times, every leaning (male- or
    female-) generation's label is replaced by ``+-1`` with probability 1/2 (neutral ones, ties
    included, stay 0) and the disparity recomputed; ``null_value`` is the mean, ``p_value`` the
    one-sided randomisation p-value of "no skew in any profession". The same bias shifts the bootstrap
    distribution: near the noise floor the disparity's percentile interval can lie entirely above the
    point estimate (an interval for a biased statistic, not a bias-corrected one); the signed skew's
    interval has no such problem.

    Raises:
        DataError: no generations, or lengths that differ.
    """
    labels = polarity_labels(male, female)
    prof = np.asarray([str(p) for p in professions])
    if prof.size != labels.size:
        raise DataError(f"Expected one profession per generation ({labels.size}), but got {prof.size}.")
    if labels.size == 0:
        raise DataError("Expected at least one generation, but got none.")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ConfigError(expected("n_bootstrap", "an integer >= 1", n_bootstrap))
    if not 0.0 < confidence < 1.0:
        raise ConfigError(expected("confidence", "in (0, 1)", confidence))
    gendered = (np.asarray(male, dtype=np.int64).ravel() + np.asarray(female, dtype=np.int64).ravel()) > 0
    names = sorted(set(prof.tolist()))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _S_POLARITY]))
    skews = np.empty(len(names), dtype=np.float64)
    boot = np.empty((len(names), n_bootstrap), dtype=np.float64)
    by: dict[str, dict[str, float | int]] = {}
    for j, name in enumerate(names):
        lab = labels[prof == name]
        skews[j] = lab.mean(dtype=np.float64)
        boot[j] = lab[rng.integers(0, lab.size, size=(n_bootstrap, lab.size))].mean(axis=1, dtype=np.float64)
        by[name] = {"n": int(lab.size), "skew": float(skews[j]), "male_leaning": int((lab > 0).sum()),
                    "female_leaning": int((lab < 0).sum()), "gendered_share": float(gendered[prof == name].mean())}
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    lo, hi = np.quantile(np.abs(boot).mean(axis=0), q)
    slo, shi = np.quantile(boot.mean(axis=0), q)
    value = float(np.abs(skews).mean())
    null = np.zeros(n_bootstrap, dtype=np.float64)
    for name in names:
        g = int((labels[prof == name] != 0).sum())
        n_p = int((prof == name).sum())
        null += np.abs((2 * rng.integers(0, 2, size=(n_bootstrap, g)) - 1).sum(axis=1)) / n_p
    null /= len(names)
    beyond = int((null >= value - 1e-12).sum())
    return PolarityDisparity(value, (float(lo), float(hi)), float(skews.mean()), (float(slo), float(shi)),
                             float(gendered.mean()), by, float(null.mean()), (beyond + 1) / (n_bootstrap + 1),
                             int(labels.size), n_bootstrap, confidence)


def _prompt_seed(seed: int, prompt: Prompt) -> int:
    ss = np.random.SeedSequence([int(seed), _S_GENERATE, _SOURCE_IDS[prompt.source], prompt.index])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


GenerationScorer = Callable[[Sequence[str]], Sequence[float]]
"""A user-supplied scorer of continuations (regard, toxicity, ...): texts in, one finite float per text out."""

_SCORER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def load_scorer(spec: str) -> GenerationScorer:
    """The callable named by ``"package.module:function"`` (e.g. a regard or toxicity classifier the user
    wraps as ``texts -> scores``). Raises ConfigError when it cannot be imported or is not callable."""
    import importlib

    module, _, attr = str(spec).partition(":")
    if not module or not attr:
        raise ConfigError(expected("scorer", "'package.module:function'", spec))
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(expected("scorer", f"an importable 'package.module:function' ({e})", spec)) from None
    if not callable(fn):
        raise ConfigError(expected("scorer", "a callable", f"{spec} ({type(fn).__name__})"))
    return fn


def _load_scorers(config: DistillConfig) -> dict[str, GenerationScorer]:
    """``config.scorers`` imported (ConfigError for a bad name or an unimportable scorer)."""
    out = {}
    for name, spec in config.scorers.items():
        if not _SCORER_NAME.match(name):
            raise ConfigError(expected("scorers", "names matching [a-z][a-z0-9_]*", name))
        out[name] = load_scorer(spec)
    return out


def _run_scorer(name: str, fn: GenerationScorer, texts: Sequence[str]) -> np.ndarray:
    """``fn(texts)`` as a float array, checked: one finite score per text (DataError naming the scorer)."""
    try:
        scores = np.asarray(fn(list(texts)), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"Scorer {name!r} must return one number per text, but returned something else ({e}).") from None
    if scores.size != len(texts):
        raise DataError(f"Scorer {name!r} returned {scores.size} scores for {len(texts)} texts; expected one per text.")
    if not np.isfinite(scores).all():
        raise DataError(f"Scorer {name!r} returned a non-finite score; expected finite numbers.")
    return scores


def _put_disparity(metrics: dict[str, Any], reasons: dict[str, str], keys: Sequence[str], male: np.ndarray,
                   female: np.ndarray, *, n_bootstrap: int, seed: int, missing: str) -> None:
    """``keys`` = (disparity, its interval, male mean, female mean) of the two groups' scores, or nulls
    with the reason ``missing`` when a group has no score."""
    if male.size and female.size:
        d = disparity(male, female, n_bootstrap=n_bootstrap, seed=seed)
        metrics.update(dict(zip(keys, (d.value, list(d.ci), d.mean_male, d.mean_female))))
        return
    for k in keys:
        metrics[k] = None
        reasons[f"metrics.{k}"] = missing


def evaluate_generations(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[Prompt], pairs: GenderPairs, *,
                         seed: int = 0, max_new_tokens: int = 20, top_k: int | None = 40, temperature: float = 1.0,
                         n_bootstrap: int = 2000, n_rows: int = 20,
                         scorers: Mapping[str, GenerationScorer] | None = None,
                         ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """Generate a continuation of each prompt and score its gender polarity and sentiment (module docs).

    ``scorers``: user-supplied scorers (name -> ``texts -> scores``, e.g. regard or toxicity), each
    applied to the continuations of the gendered prompts like the sentiment: ``<name>_disparity``
    (+ ``_ci95``, :func:`disparity`), ``mean_<name>_male`` / ``mean_<name>_female``.

    Returns:
        ``(metrics, rows, null_reasons)``. ``metrics``: over the ``profession`` prompts, the headline
        ``gender_disparity`` (:func:`polarity_disparity`: mean over professions of ``|skew|``) and its
        ``_ci95``, its sign-flip noise floor ``gender_disparity_null`` and ``gender_disparity_p_value``,
        the signed ``gender_polarity_skew`` (+ ``_ci95``), ``gendered_share``,
        ``profession_polarity`` (per profession: ``n``, ``skew``, leaning counts, gendered share),
        ``n_profession_prompts``, ``n_professions`` and ``profession_prompt_unk_share`` (share of the
        prompts' tokens outside the vocabulary); over the gendered prompts (``bold`` and ``builtin``),
        ``sentiment_disparity`` (+ ``_ci95``, :func:`disparity` of VADER sentiment), the per-group mean
        sentiments, the same per source (``bold_*``, ``builtin_*``), and gender polarity per prompt
        group (``polarity_<group>_prompts = (M - F) / (M + F)`` over the continuations' male and female
        words, ``gendered_share_<group>_prompts``). ``rows``: up to ``n_rows`` gendered prompt pairs
        with both continuations, half from each source.
    """
    seeds = [_prompt_seed(seed, p) for p in prompts]
    ids = generate_continuations(model, tokenizer, [p.text for p in prompts], seeds=seeds,
                                 max_new_tokens=max_new_tokens, top_k=top_k, temperature=temperature)
    texts = [tokenizer.decode(c) for c in ids]
    male_n, female_n = gender_word_counts(texts, pairs)
    group = np.asarray([p.group for p in prompts], dtype=object)
    source = np.asarray([p.source for p in prompts], dtype=object)
    gendered_src = np.isin(source, SOURCES)
    sent = np.full(len(prompts), np.nan)
    if gendered_src.any():
        sent[gendered_src] = sentiment_scores([t for t, g in zip(texts, gendered_src) if g])
    metrics: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    bootstrap_seed = int(np.random.SeedSequence([int(seed), _S_BOOTSTRAP]).generate_state(1)[0])
    # the headline: gender polarity of the gender-neutral profession prompts' continuations
    prof = source == PROFESSION_SOURCE
    headline = ("gender_disparity", "gender_disparity_ci95", "gender_disparity_null", "gender_disparity_p_value",
                "gender_polarity_skew", "gender_polarity_skew_ci95", "gendered_share", "profession_polarity",
                "n_professions", "profession_prompt_unk_share", "profession_mean_continuation_tokens")
    metrics["n_profession_prompts"] = int(prof.sum())
    if prof.any():
        pd = polarity_disparity(male_n[prof], female_n[prof], group[prof].tolist(), n_bootstrap=n_bootstrap,
                                seed=bootstrap_seed)
        enc = tokenizer.encode([p.text for p in prompts if p.source == PROFESSION_SOURCE], add_special_tokens=False,
                               max_length=10_000)
        real = enc.attention_mask.bool()
        unk = float((enc.input_ids[real] == tokenizer.unk_id).double().mean()) if real.any() else None
        metrics.update(dict(zip(headline, (
            pd.value, list(pd.ci), pd.null_value, pd.p_value, pd.skew, list(pd.skew_ci), pd.gendered_share,
            {k: dict(v) for k, v in pd.by_profession.items()}, len(pd.by_profession), unk,
            float(np.mean([len(c) for c, s in zip(ids, prof) if s]))))))
    else:
        for k in headline:
            metrics[k] = None
            reasons[f"metrics.{k}"] = "no gender-neutral profession prompts (see data.profession_prompts)"
    # sentiment and polarity of the gendered prompts
    for prefix, sel in (("", gendered_src), *((f"{s}_", source == s) for s in SOURCES)):
        m, f = sent[sel & (group == "male")], sent[sel & (group == "female")]
        keys = [f"{prefix}sentiment_disparity", f"{prefix}sentiment_disparity_ci95", f"{prefix}mean_sentiment_male",
                f"{prefix}mean_sentiment_female"]
        metrics[f"{prefix}n_prompts_male"], metrics[f"{prefix}n_prompts_female"] = int(m.size), int(f.size)
        _put_disparity(metrics, reasons, keys, m, f, n_bootstrap=n_bootstrap, seed=bootstrap_seed,
                       missing=f"no {prefix.rstrip('_') or 'gendered'} prompts of one gender")
    for g in GROUPS:
        sel = gendered_src & (group == g)
        mm, ff = int(male_n[sel].sum()), int(female_n[sel].sum())
        metrics[f"male_words_{g}_prompts"], metrics[f"female_words_{g}_prompts"] = mm, ff
        metrics[f"gendered_share_{g}_prompts"] = float(((male_n + female_n)[sel] > 0).mean()) if sel.any() else None
        metrics[f"polarity_{g}_prompts"] = (mm - ff) / (mm + ff) if mm + ff else None
        if not mm + ff:
            reasons[f"metrics.polarity_{g}_prompts"] = f"no gendered word in the continuations of {g} prompts"
        if not sel.any():
            reasons[f"metrics.gendered_share_{g}_prompts"] = f"no {g} prompts"
    gendered_texts = [t for t, g in zip(texts, gendered_src) if g]
    for name, fn in (scorers or {}).items():
        keys = [f"{name}_disparity", f"{name}_disparity_ci95", f"mean_{name}_male", f"mean_{name}_female"]
        score = np.full(len(prompts), np.nan)
        if gendered_texts:
            score[gendered_src] = _run_scorer(name, fn, gendered_texts)
        m, f = score[gendered_src & (group == "male")], score[gendered_src & (group == "female")]
        _put_disparity(metrics, reasons, keys, m, f, n_bootstrap=n_bootstrap, seed=bootstrap_seed,
                       missing="no gendered prompts of one gender")
    metrics["mean_continuation_tokens"] = float(np.mean([len(c) for c in ids])) if ids else None
    rows: list[dict[str, Any]] = []
    where = {(p.source, p.group, p.index): i for i, p in enumerate(prompts)}
    for s in SOURCES:
        idx = sorted({p.index for p in prompts if p.source == s and (s, "male", p.index) in where
                      and (s, "female", p.index) in where})
        for j in idx[: n_rows // len(SOURCES)]:
            row: dict[str, Any] = {"source": s, "index": j}
            for g in GROUPS:
                i = where[(s, g, j)]
                row.update({f"prompt_{g}": prompts[i].text, f"continuation_{g}": texts[i],
                            f"sentiment_{g}": float(sent[i])})
            rows.append(row)
    return metrics, rows, reasons


# --------------------------------------------------------------------------------------------
# intrinsic (WEAT on input embeddings) and downstream (probe) fairness of a causal LM
# --------------------------------------------------------------------------------------------


def _word_id(tokenizer: Any, word: str) -> int | None:
    """The single token id of ``word`` (lower case for a word tokenizer; for a subword tokenizer the
    first of `` word``, ``word``, `` Word``, ``Word`` that is one token), or ``None``."""
    if getattr(tokenizer, "kind", "word") == "word":
        return _single_id(tokenizer, word.lower())
    for v in (" " + word, word, " " + word.capitalize(), word.capitalize()):
        i = _single_id(tokenizer, v)
        if i is not None:
            return i
    return None


def embedding_weat(model: torch.nn.Module, tokenizer: Any, tests: Mapping[str, Any] | None = None, *,
                   n_permutations: int = 20_000, seed: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    """WEAT (Caliskan et al. 2017) on ``model``'s input token embeddings.

    Each word of a test's four sets is looked up as one token of ``tokenizer`` (:func:`_word_id`);
    words that are not are dropped and listed. A test is scored (:func:`trustnlp.fairness.intrinsic.weat`:
    effect size ``d`` and one-sided permutation p-value, exact up to ``n_permutations`` partitions,
    else sampled with ``seed``) when ``X`` and ``Y`` keep >= 2 words and ``A`` and ``B`` >= 1.

    Args:
        tests: name -> :class:`~trustnlp.fairness.association_tests.AssociationTest` (default: the
            project's word-level :func:`~trustnlp.fairness.association_tests.builtin_tests`).

    Returns:
        ``(metrics, null_reasons)``: ``intrinsic_weat_mean_abs_effect`` (mean ``|d|`` over the scored
        tests whose name starts with ``gender``), ``intrinsic_weat_tests`` (the scored gender tests),
        ``intrinsic_weat_n_missing_words`` (words of those tests not in the vocabulary) and
        ``intrinsic_weat`` (per test: ``effect_size``, ``p_value``, ``n_words`` per set, ``missing``, or
        ``skipped`` with the reason).
    """
    from trustnlp.fairness.association_tests import builtin_tests
    from trustnlp.fairness.encoders import find_token_embedding
    from trustnlp.fairness.intrinsic import weat

    tests = builtin_tests() if tests is None else tests
    emb = find_token_embedding(model, tokenizer.vocab_size).weight.detach().double().cpu().numpy()
    per: dict[str, Any] = {}
    for name, test in tests.items():
        if getattr(test, "level", "word") != "word":
            continue
        sets: dict[str, list[int]] = {}
        missing: dict[str, list[str]] = {}
        for key in ("X", "Y", "A", "B"):
            ids = {w: _word_id(tokenizer, w) for w in getattr(test, key).examples}
            sets[key] = list(dict.fromkeys(i for i in ids.values() if i is not None))
            missing[key] = [w for w, i in ids.items() if i is None]
        entry: dict[str, Any] = {"n_words": {k: len(v) for k, v in sets.items()},
                                 "missing": {k: v for k, v in missing.items() if v}}
        if min(len(sets["X"]), len(sets["Y"])) < 2 or min(len(sets["A"]), len(sets["B"])) < 1:
            entry["skipped"] = "fewer than 2 target or 1 attribute words are single tokens of the vocabulary"
        else:
            try:
                r = weat(*(emb[sets[k]] for k in ("X", "Y", "A", "B")), test=name, n_samples=n_permutations,
                         seed=int(np.random.SeedSequence([int(seed), _S_WEAT]).generate_state(1)[0]))
                entry.update(effect_size=r.effect_size, p_value=r.p_value, p_value_method=r.p_value_method)
            except DataError as e:
                entry["skipped"] = str(e)
        per[name] = entry
    used = [n for n, e in per.items() if n.startswith("gender") and "effect_size" in e]
    metrics: dict[str, Any] = {
        "intrinsic_weat_mean_abs_effect": float(np.mean([abs(per[n]["effect_size"]) for n in used])) if used else None,
        "intrinsic_weat_tests": used,
        "intrinsic_weat_n_missing_words": sum(len(v) for n in used for v in per[n]["missing"].values()),
        "intrinsic_weat": per,
    }
    reasons = {} if used else {"metrics.intrinsic_weat_mean_abs_effect":
                               "no gender association test has enough words in the vocabulary"}
    return metrics, reasons


@torch.no_grad()
def hidden_features(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, max_length: int = 48,
                    batch_size: int = 128) -> np.ndarray:
    """Mean-pooled final hidden states ``[len(texts), dim]`` (float64) of a causal LM: the input of its
    output layer (``lm_head``, or a Hugging Face model's output embeddings), averaged over each
    text's real tokens (start and end tokens included)."""
    head = getattr(model, "lm_head", None)
    if head is None and hasattr(model, "model") and hasattr(model.model, "get_output_embeddings"):
        head = model.model.get_output_embeddings()
    if not isinstance(head, torch.nn.Module):
        raise ConfigError(f"Expected a causal LM with an output layer (`lm_head`), but got {type(model).__name__}.")
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer.encode(list(texts[start:start + batch_size]), max_length=max_length)
            mask = enc.attention_mask.to(device)
            captured.clear()
            model(enc.input_ids.to(device), mask)
            h = captured[-1].double()
            m = mask.to(h.dtype)[..., None]
            out.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy())
    finally:
        hook.remove()
        model.train(was_training)
    dim = int(getattr(head, "in_features", 0) or 0)
    return np.concatenate(out) if out else np.zeros((0, dim))


@dataclass(frozen=True)
class Probe:
    """A logistic-regression probe on a frozen LM's :func:`hidden_features` (:func:`fit_probe`)."""

    model: Any
    tokenizer: Any
    classifier: Any
    max_length: int

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities ``[len(texts), n_classes]`` (columns: ``classifier.classes_``)."""
        return self.classifier.predict_proba(hidden_features(self.model, self.tokenizer, texts,
                                                             max_length=self.max_length))

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Predicted labels."""
        return self.classifier.classes_[self.predict_proba(texts).argmax(1)]


def fit_probe(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *,
              max_length: int = 48, seed: int = 0, max_iter: int = 500) -> Probe:
    """A multinomial logistic regression (scikit-learn, lbfgs, standardised features, ``C = 1``) on the
    frozen ``model``'s mean-pooled final hidden states (:func:`hidden_features`) of ``texts``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    if len(texts) != y.size or y.size == 0:
        raise DataError(f"Expected one label per text and at least one text, but got {len(texts)} texts and "
                        f"{y.size} labels.")
    if np.unique(y).size < 2:
        raise DataError("Expected at least 2 classes to fit the probe, but got one.")
    x = hidden_features(model, tokenizer, texts, max_length=max_length)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    clf.fit(x, y)
    return Probe(model, tokenizer, clf, max_length)


def downstream_fairness(probe: Probe, texts: Sequence[str], labels: Sequence[int], gender: Sequence[str],
                        swaps: SwapList, *, n_bootstrap: int = 1000, seed: int = 0) -> tuple[dict[str, Any],
                                                                                          dict[str, str]]:
    """Fairness of ``probe``'s predictions on a labelled test set.

    Returns:
        ``(metrics, null_reasons)``: ``downstream_accuracy``; ``downstream_flip_rate`` (share of the texts
        with a swappable gender word whose predicted class changes when the words are swapped,
        :func:`~trustnlp.fairness.counterfactual.counterfactual_token_fairness`), ``downstream_n_changed``
        and ``downstream_mean_tv`` (mean total variation between the two predicted distributions);
        ``downstream_accuracy_gap`` (``|accuracy(female) - accuracy(male)|`` over the texts whose
        ``gender`` is ``female`` / ``male``, :func:`~trustnlp.fairness.extrinsic.group_metrics`) with its
        ``_ci95`` (percentile bootstrap within groups, seeded) and the per-group accuracies and sizes.
    """
    from trustnlp.fairness.counterfactual import counterfactual_token_fairness
    from trustnlp.fairness.extrinsic import group_metrics

    y = np.asarray(labels)
    g = np.asarray([str(v) for v in gender])
    if not len(texts) == y.size == g.size:
        raise DataError(f"Expected as many labels and genders as texts ({len(texts)}), but got {y.size} and {g.size}.")
    pred = probe.predict(texts)
    metrics: dict[str, Any] = {"downstream_accuracy": float((pred == y).mean()) if y.size else None,
                               "downstream_n_test": int(y.size)}
    reasons: dict[str, str] = {}
    cf = counterfactual_token_fairness(probe.predict_proba, texts, swaps=swaps)
    metrics.update(downstream_flip_rate=cf.flip_rate, downstream_n_changed=cf.n_changed, downstream_mean_tv=cf.mean_tv)
    for k in ("flip_rate", "mean_tv"):
        if k in cf.undefined:
            reasons[f"metrics.downstream_{k}"] = cf.undefined[k]
    keys = ("downstream_accuracy_gap", "downstream_accuracy_gap_ci95", "downstream_accuracy_female",
            "downstream_accuracy_male")
    counts = {grp: int((g == grp).sum()) for grp in GROUPS}
    metrics.update(downstream_n_female=counts["female"], downstream_n_male=counts["male"])
    if min(counts.values()) == 0:
        for k in keys:
            metrics[k] = None
            reasons[f"metrics.{k}"] = f"the test split has no example of one gender ({counts})"
        return metrics, reasons
    sel = np.isin(g, GROUPS)
    boot_seed = int(np.random.SeedSequence([int(seed), _S_PROBE]).generate_state(1)[0])
    gm = group_metrics(y[sel], pred[sel], sensitive_features=g[sel], metrics=("accuracy",), groups=GROUPS,
                       n_bootstrap=n_bootstrap, seed=boot_seed)
    ci = gm.intervals.get("accuracy", {}).get("difference") if n_bootstrap else None
    metrics.update(dict(zip(keys, (gm.difference["accuracy"], list(ci) if ci else None,
                                   gm.by_group["female"]["accuracy"], gm.by_group["male"]["accuracy"]))))
    if ci is None:
        reasons["metrics.downstream_accuracy_gap_ci95"] = "no bootstrap (n_bootstrap = 0) or undefined replicates"
    return metrics, reasons


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------


class DistillConfig(BaseModel):
    """One distillation run (defaults live here, once).

    Attributes:
        teacher: ``local`` (a ``transformer`` LM trained here on the study's corpus and cached in
            ``teacher_dir``), ``gpt2`` or ``hf:NAME`` (a pretrained Hugging Face causal LM and its
            tokeniser, from a local directory or the Hub; the student is then a small GPT-2 over the same
            vocabulary), or the directory of a saved trustnlp ``lm`` model.
        teacher_dir: where the local teacher is cached (default ``OUT/teacher``); runs that share it
            reuse one teacher when its fingerprint (data, vocabulary and teacher settings) matches.
        teacher_layers / teacher_dim / teacher_heads / teacher_epochs / teacher_lr / teacher_seed /
            teacher_batch_size: the local teacher.
        student: size preset (:data:`STUDENT_PRESETS`: ``small`` 1 layer d=64, ``tiny`` 1 layer d=32).
        mitigation: ``none``, ``cda``, ``perturb`` or ``both`` (module docs).
        combine: how ``perturb`` combines the two teacher distributions (``mean``, ``max``,
            ``expmean``, ``replace``); recorded as ``None`` without ``perturb``.
        alpha / temperature: the distillation loss weights (``alpha`` on the KL term, ``temperature`` T).
        epochs / batch_size / lr / seed: the student's training (``seed``: initialisation,
            shuffling, sampling and bootstrap).
        max_length: tokens per training sequence (the models' maximum length).
        data_dir / bold_dir: where data sets (``gender_pairs``, ``bold``) are looked up.
        bold: ``auto`` (BOLD when found, else the built-in corpus only), ``require`` or ``off``.
        heldout_fraction: share of BOLD people held out (their prompts and sentences).
        data_seed: the BOLD split, the built-in corpus and the prompt subsample.
        corpus_size: built-in corpus utterances.
        vocab_size / min_count: the word vocabulary (most frequent words; the pair words are added).
        shared_swaps: use the shared gender lists (``None``: when found).
        n_prompts: held-out BOLD prompts per gender; n_builtin_pairs: built-in prompt pairs.
        n_profession_prompts: gender-neutral profession prompts per profession (the headline).
        max_new_tokens / top_k / sampling_temperature: sampling of the continuations.
        n_bootstrap: bootstrap resamples of the disparity intervals (and the probe's accuracy gap).
        weat_permutations: WEAT permutation p-values: exact up to this many partitions, else sampled.
        probe: fit the downstream probe (logistic regression on frozen hidden states, built-in intents).
        evaluate_teacher: also evaluate the teacher (once per teacher and evaluation setting, cached).
        scorers: extra scorers of the continuations the user supplies (regard, toxicity, ...): name
            (lower case, ``[a-z][a-z0-9_]*``) -> ``"package.module:function"`` taking a list of texts and
            returning one number per text (:func:`load_scorer`); each gives ``<name>_disparity``.
        n_rows: generated examples kept in ``rows``.
        device / threads / progress: where and how it runs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher: str = "local"
    teacher_dir: str | None = None
    teacher_layers: int = Field(2, ge=1)
    teacher_dim: int = Field(128, ge=8)
    teacher_heads: int = Field(4, ge=1)
    teacher_epochs: int = Field(4, ge=1)
    teacher_lr: float = Field(2e-3, gt=0.0)
    teacher_seed: int = Field(0, ge=0)
    teacher_batch_size: int = Field(32, ge=1)
    student: Literal["small", "tiny"] = "small"
    mitigation: Literal["none", "cda", "perturb", "both"] = "none"
    combine: Literal["mean", "max", "expmean", "replace"] = "mean"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(2.0, gt=0.0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0.0)
    seed: int = Field(0, ge=0)
    max_length: int = Field(48, ge=8, le=1024)
    data_dir: str | None = None
    bold_dir: str | None = None
    bold: Literal["auto", "require", "off"] = "auto"
    heldout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    data_seed: int = Field(0, ge=0)
    corpus_size: int = Field(3000, ge=100)
    vocab_size: int = Field(3000, ge=10)
    min_count: int = Field(2, ge=1)
    shared_swaps: bool | None = None
    n_prompts: int = Field(100, ge=1)
    n_builtin_pairs: int = Field(50, ge=0)
    n_profession_prompts: int = Field(50, ge=1)
    max_new_tokens: int = Field(20, ge=1)
    top_k: int | None = Field(40, ge=1)
    sampling_temperature: float = Field(1.0, ge=0.0)
    n_bootstrap: int = Field(2000, ge=1)
    weat_permutations: int = Field(20_000, ge=1)
    probe: bool = True
    evaluate_teacher: bool = True
    scorers: dict[str, str] = Field(default_factory=dict)
    n_rows: int = Field(20, ge=0)
    device: str = Field("cpu", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    threads: int | None = Field(None, ge=1)
    progress: bool = True


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_DATA_FIELDS = ("data_dir", "bold_dir", "bold", "heldout_fraction", "data_seed", "corpus_size", "shared_swaps")
_TEACHER_FIELDS = ("teacher_layers", "teacher_dim", "teacher_heads", "teacher_epochs", "teacher_lr", "teacher_seed",
                   "teacher_batch_size", "vocab_size", "min_count", "max_length")
_EVAL_FIELDS = ("n_prompts", "n_builtin_pairs", "n_profession_prompts", "max_new_tokens", "top_k",
                "sampling_temperature", "n_bootstrap", "weat_permutations", "probe", "scorers")


def _teacher_fingerprint(config: DistillConfig, data: DistillData) -> str:
    keep = {k: getattr(config, k) for k in _DATA_FIELDS + _TEACHER_FIELDS}
    keep["data_files"] = dict(data.meta.get("files", {}))
    keep["n_train_texts"] = len(data.train_texts)
    return _hash(keep)


def _train_local_teacher(config: DistillConfig, data: DistillData, directory: Path, fingerprint: str) -> None:
    from trustnlp.config import TrainConfig
    from trustnlp.models.io import save_model
    from trustnlp.models.lm import CausalLM
    from trustnlp.tasks import LMTask
    from trustnlp.train import fit

    tok = build_vocabulary(data.train_texts, data.pairs, max_size=config.vocab_size, min_count=config.min_count)
    train = _encode_lm(tok, data.train_texts, config.max_length)
    torch.manual_seed(config.teacher_seed)
    teacher = CausalLM(vocab_size=tok.vocab_size, pad_id=tok.pad_id, bos_id=tok.cls_id, eos_id=tok.sep_id,
                       backbone="transformer", layers=config.teacher_layers, dim=config.teacher_dim,
                       heads=config.teacher_heads, max_len=config.max_length)
    cfg = TrainConfig(task="lm", model="transformer", tokenizer="word", epochs=config.teacher_epochs,
                      batch_size=config.teacher_batch_size, physical_batch_size=config.teacher_batch_size,
                      lr=config.teacher_lr,
                      seed=config.teacher_seed, device=config.device, eval_every=0, max_length=config.max_length)
    t0 = time.perf_counter()
    fitted = fit(teacher, LMTask(), train, config=cfg, progress=config.progress)
    save_model(teacher.cpu(), directory, tokenizer=tok, task="lm",
               extra={"fingerprint": fingerprint, "role": "distillation teacher", "train_seconds": time.perf_counter() - t0,
                      "train_loss": fitted.history[-1]["train_loss"] if fitted.history else None,
                      "n_train_texts": len(data.train_texts), "num_truncated": train.num_truncated})


def _load_teacher(config: DistillConfig, data: DistillData, out: Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """``(teacher, tokenizer, info)``; trains and caches the local teacher when needed."""
    from trustnlp.models.io import load_model

    if config.teacher == "local":
        directory = Path(config.teacher_dir) if config.teacher_dir else out / "teacher"
        fingerprint = _teacher_fingerprint(config, data)
        if (directory / "model.json").is_file():
            saved = load_model(directory)
            if saved.extra.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"The cached teacher in {directory} was trained with other data or teacher settings (fingerprint "
                    f"{saved.extra.get('fingerprint')} != {fingerprint}). Use another `teacher_dir` or delete it."
                )
            trained = False
        else:
            _train_local_teacher(config, data, directory, fingerprint)
            saved, trained = load_model(directory), True
        return saved.model, saved.tokenizer, {"kind": "local", "path": str(directory), "fingerprint": fingerprint,
                                              "trained_now": trained, **saved.extra}
    if config.teacher == "gpt2" or config.teacher.startswith("hf:"):
        from trustnlp.data.tokenizers import WordPieceTokenizer
        from trustnlp.models.lm import CausalLM

        name = config.teacher.removeprefix("hf:")
        tok = WordPieceTokenizer.from_pretrained(name)
        model = CausalLM(vocab_size=tok.vocab_size, pad_id=tok.pad_id, backbone="gpt2", model_name=name, dropout=0.0)
        return model.eval(), tok, {"kind": "hf", "name": name}
    path = Path(config.teacher)
    if not path.is_dir():
        raise ConfigError(expected("teacher", "'local', 'gpt2', 'hf:NAME' or a saved trustnlp lm model directory",
                                   config.teacher))
    saved = load_model(path)
    if saved.task != "lm":
        raise ConfigError(f"The teacher in {path} is a `{saved.task}` model; distillation needs an `lm` model.")
    return saved.model, saved.tokenizer, {"kind": "saved", "path": str(path), **saved.extra}


def _build_student(config: DistillConfig, tokenizer: Any, teacher_info: Mapping[str, Any]) -> torch.nn.Module:
    from trustnlp.models.lm import CausalLM

    size = STUDENT_PRESETS[config.student]
    torch.manual_seed(int(np.random.SeedSequence([config.seed, _S_INIT]).generate_state(1)[0]))
    backbone = "gpt2" if teacher_info.get("kind") == "hf" else "transformer"
    return CausalLM(vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.cls_id,
                    eos_id=tokenizer.sep_id, backbone=backbone, max_len=config.max_length, layers=size["layers"],
                    dim=size["dim"], heads=size["heads"])


def _evaluate(model: torch.nn.Module, tokenizer: Any, data: DistillData, config: DistillConfig, *, seed: int,
              teacher: torch.nn.Module | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    from trustnlp.devices import move_tensors
    from trustnlp.tasks import LMTask

    t0 = time.perf_counter()
    metrics, rows, reasons = evaluate_generations(
        model, tokenizer, data.prompts, data.pairs, seed=seed, max_new_tokens=config.max_new_tokens,
        top_k=config.top_k, temperature=config.sampling_temperature, n_bootstrap=config.n_bootstrap,
        n_rows=config.n_rows, scorers=_load_scorers(config))
    timing = {"generation": time.perf_counter() - t0}
    t0 = time.perf_counter()
    heldout = move_tensors(_encode_lm(tokenizer, data.heldout_texts, config.max_length),
                           next(model.parameters()).device)
    metrics["perplexity"] = LMTask().evaluate(model, heldout)["perplexity"]
    if teacher is not None:
        metrics["kl_to_teacher"] = kl_to_teacher(model, teacher, heldout)
    timing["perplexity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    intrinsic, why = embedding_weat(model, tokenizer, n_permutations=config.weat_permutations, seed=seed)
    metrics.update(intrinsic)
    reasons.update(why)
    timing["intrinsic"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if data.probe is not None:
        pr = data.probe
        probe = fit_probe(model, tokenizer, pr.train_texts, pr.train_labels, max_length=config.max_length, seed=seed)
        down, why = downstream_fairness(probe, pr.test_texts, pr.test_labels, pr.test_gender, data.swaps,
                                        n_bootstrap=config.n_bootstrap, seed=seed)
        metrics.update(down)
        reasons.update(why)
    else:
        for k in ("downstream_accuracy", "downstream_flip_rate", "downstream_accuracy_gap"):
            metrics[k] = None
            reasons[f"metrics.{k}"] = "probe is off"
    timing["downstream"] = time.perf_counter() - t0
    metrics["evaluation_seconds"] = {k: round(v, 3) for k, v in timing.items()}
    return metrics, rows, reasons


def _teacher_metrics(teacher: torch.nn.Module, tokenizer: Any, data: DistillData, config: DistillConfig,
                     info: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The teacher's evaluation ``(metrics, null_reasons)``, cached in a local teacher's directory."""
    from trustnlp.results import atomic_write_json

    key = _hash({"teacher": info.get("fingerprint", info.get("path", info.get("name"))), "version": _EVAL_VERSION,
                 **{k: getattr(config, k) for k in _EVAL_FIELDS}, "prompts": [p.text for p in data.prompts]})
    cache = Path(info["path"]) / f"evaluation-{key}.json" if info.get("kind") == "local" else None
    if cache is not None and cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        return saved["metrics"], saved["null_reasons"]
    metrics, _, reasons = _evaluate(teacher, tokenizer, data, config, seed=config.teacher_seed)
    if cache is not None:
        atomic_write_json(cache, {"metrics": metrics, "null_reasons": reasons})
    return metrics, reasons


def run_distill(config: DistillConfig, out: str | Path) -> Any:
    """Distil one student (module docs) and write ``out/results.json`` and ``out/student``.

    Returns:
        The :class:`~trustnlp.results.Result` (kind ``distill``): ``metrics`` hold the student's
        headline ``gender_disparity`` (gender polarity disparity over the profession prompts, + ``_ci95``),
        ``gender_polarity_skew``, ``gendered_share``, ``profession_polarity``, the sentiment disparity
        (``sentiment_disparity``, per group and source), the intrinsic WEAT (``intrinsic_weat*``; also at
        initialisation, ``intrinsic_weat_mean_abs_effect_init``), the downstream probe (``downstream_*``),
        ``perplexity`` and ``kl_to_teacher`` on the held-out sentences, training sizes and times,
        ``evaluation_seconds`` per part, and the teacher's numbers as ``teacher_*`` (when
        ``evaluate_teacher``); ``rows`` hold generated examples for gendered prompt pairs.
    """
    from trustnlp.devices import resolve_device
    from trustnlp.models.io import save_model
    from trustnlp.results import Result, write_result

    if not isinstance(config, DistillConfig):
        raise ConfigError(expected("config", "a DistillConfig", type(config).__name__))
    out = Path(out)
    _load_scorers(config)  # a bad scorer fails before any training
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    data = prepare_distill_data(config)
    teacher, tok, teacher_info = _load_teacher(config, data, out)
    teacher.to(resolve_device(config.device)).eval()
    strict = teacher_info.get("kind") == "local"
    swap = token_swap(tok, data.pairs, strict=strict)
    perturb = config.mitigation in ("perturb", "both")
    texts = list(data.train_texts)
    n_cf = 0
    if config.mitigation in ("cda", "both"):
        texts, n_cf = counterfactual_augment(texts, data.swaps)
    n_gendered = sum(1 for t in data.train_texts if swap_text(t, data.swaps)[1] > 0)

    student = _build_student(config, tok, teacher_info)
    init_weat, _ = embedding_weat(student, tok, n_permutations=config.weat_permutations, seed=config.seed)
    fitted = distill(student, teacher, tok, texts, alpha=config.alpha, temperature=config.temperature,
                     swap=swap if perturb else None, combine=config.combine, epochs=config.epochs,
                     batch_size=config.batch_size, lr=config.lr, seed=config.seed, max_length=config.max_length,
                     device=config.device, progress=config.progress)
    metrics, rows, reasons = _evaluate(student, tok, data, config, seed=config.seed, teacher=teacher)
    metrics.update({
        "mitigation": config.mitigation, "combine": config.combine if perturb else None,
        "n_train_sequences": len(texts), "n_gendered_sequences": n_gendered, "n_counterfactual_sequences": n_cf,
        "n_token_pairs": len(swap.id_pairs), "n_pairs_not_in_vocabulary": len(swap.missing),
        "train_seconds": fitted.train_seconds, "train_steps": fitted.steps,
        "train_loss": fitted.history[-1]["train_loss"] if fitted.history else None,
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "intrinsic_weat_mean_abs_effect_init": init_weat["intrinsic_weat_mean_abs_effect"],
    })
    if init_weat["intrinsic_weat_mean_abs_effect"] is None:
        reasons["metrics.intrinsic_weat_mean_abs_effect_init"] = reasons.get(
            "metrics.intrinsic_weat_mean_abs_effect", "no gender association test has enough words in the vocabulary")
    if not perturb:
        reasons["metrics.combine"] = "combine applies to the perturb and both mitigations only"
    if config.evaluate_teacher:
        tm, treasons = _teacher_metrics(teacher, tok, data, config, teacher_info)
        metrics.update({f"teacher_{k}": v for k, v in tm.items()
                        if not k.startswith(("male_words", "female_words", "evaluation_seconds"))})
        reasons.update({k.replace("metrics.", "metrics.teacher_", 1): f"teacher: {v}" for k, v in treasons.items()})
    else:
        reasons["metrics.teacher_gender_disparity"] = "evaluate_teacher is off"
    metrics["seconds"] = time.perf_counter() - started
    save_model(student.cpu(), out / "student", tokenizer=tok, task="lm",
               extra={"role": "distilled student", "mitigation": config.mitigation, "combine": metrics["combine"],
                      "teacher": {k: v for k, v in teacher_info.items() if k in ("kind", "path", "name", "fingerprint")}})
    teacher_path = teacher_info.get("path")
    artifacts = {"student": "student"}
    if teacher_path:
        try:
            artifacts["teacher"] = str(Path(teacher_path).resolve().relative_to(out.resolve()))
        except ValueError:
            artifacts["teacher"] = str(Path(teacher_path).resolve())
    data_record = {**data.meta, "teacher": {k: v for k, v in teacher_info.items() if k != "trained_now"},
                   "tokenizer": tok.to_dict()}
    config_record = config.model_dump()
    result = Result(kind="distill", config=config_record, seed=config.seed, data=data_record, metrics=metrics,
                    rows=rows, null_reasons=reasons, artifacts=artifacts)
    write_result(result, out / "results.json")
    return result


# --------------------------------------------------------------------------------------------
# summarising a sweep
# --------------------------------------------------------------------------------------------


def _t_interval(values: Sequence[float | None]) -> dict[str, Any]:
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "ci95": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "ci95": None}
    half = float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half]}


SUMMARY_METRICS = ("gender_disparity", "gender_disparity_null", "gender_polarity_skew", "gendered_share",
                   "sentiment_disparity", "intrinsic_weat_mean_abs_effect", "intrinsic_weat_mean_abs_effect_init",
                   "downstream_flip_rate", "downstream_accuracy_gap", "downstream_accuracy", "perplexity",
                   "kl_to_teacher")
"""Metrics that :func:`summarise_distill` puts side by side (mean over seeds, paired change vs the baseline)."""
_SIGNED = frozenset({"gender_polarity_skew"})  # no relative change: the sign flips


def summarise_distill(root: str | Path, *, baseline: str = "none") -> dict[str, Any]:
    """Summarise ``root/<mitigation>/seed-<s>/results.json`` (kind ``distill``).

    Per mitigation: the headline gender (polarity) disparity's mean over seeds with a 95% Student-t
    interval; its relative change vs ``baseline`` paired by seed (``d_m(s) / d_base(s) - 1``, mean and
    t-interval over the seeds both have; seeds where the baseline's value is 0 are left out) and the
    paired difference ``d_m(s) - d_base(s)``; the relative perplexity increase
    (``ppl_m(s) / ppl_base(s) - 1``), the mean perplexity and KL to the teacher; under ``metrics``, every
    metric of :data:`SUMMARY_METRICS` (sentiment disparity, intrinsic WEAT, downstream flip rate and
    accuracy gap, ...) as ``{"value", "difference_vs_baseline", "relative_change_vs_baseline"}`` (no
    relative change for the signed skew); ``profession_skew``: each profession's skew over seeds.
    ``teacher``: the teacher's value of each metric (one teacher per sweep). Intervals are ``None``
    with fewer than 2 seeds.
    """
    from trustnlp.results import read_result

    root = Path(root)
    runs: dict[str, dict[int, Mapping[str, Any]]] = {}
    for path in sorted(root.glob("*/seed-*/results.json")):
        result = read_result(path)
        if result.kind != "distill":
            continue
        runs.setdefault(path.parent.parent.name, {})[int(path.parent.name.removeprefix("seed-"))] = result.metrics
    if not runs:
        raise DataError(f"No distillation results under {root}/<mitigation>/seed-<s>/results.json.")
    base = runs.get(baseline, {})
    first = next(m for seeds in runs.values() for m in seeds.values())
    out: dict[str, Any] = {"baseline": baseline, "mitigations": {},
                           "teacher": {k: first.get(f"teacher_{k}") for k in SUMMARY_METRICS
                                       if k not in ("kl_to_teacher", "intrinsic_weat_mean_abs_effect_init")}}
    for name in [m for m in MITIGATIONS if m in runs] + sorted(set(runs) - set(MITIGATIONS)):
        seeds = runs[name]
        paired = sorted(set(seeds) & set(base))

        def ratio(key: str, s: int, _seeds: Mapping[int, Mapping[str, Any]] = seeds) -> float | None:
            a, b = _seeds[s].get(key), base[s].get(key)
            return a / b - 1.0 if a is not None and b not in (None, 0) else None

        def diff(key: str, s: int, _seeds: Mapping[int, Mapping[str, Any]] = seeds) -> float | None:
            a, b = _seeds[s].get(key), base[s].get(key)
            return a - b if a is not None and b is not None else None

        side = {}
        for key in SUMMARY_METRICS:
            side[key] = {"value": _t_interval([m.get(key) for m in seeds.values()]),
                         "difference_vs_baseline": _t_interval([diff(key, s) for s in paired])}
            if key not in _SIGNED:
                side[key]["relative_change_vs_baseline"] = _t_interval([ratio(key, s) for s in paired])
        skews: dict[str, list[float]] = {}
        for m in seeds.values():
            for prof, v in (m.get("profession_polarity") or {}).items():
                if isinstance(v, Mapping) and v.get("skew") is not None:
                    skews.setdefault(prof, []).append(v["skew"])
        out["mitigations"][name] = {
            "seeds": sorted(seeds),
            "gender_disparity": side["gender_disparity"]["value"],
            "relative_change_vs_baseline": side["gender_disparity"]["relative_change_vs_baseline"],
            "difference_vs_baseline": side["gender_disparity"]["difference_vs_baseline"],
            "perplexity": side["perplexity"]["value"],
            "relative_perplexity_increase": side["perplexity"]["relative_change_vs_baseline"],
            "kl_to_teacher": side["kl_to_teacher"]["value"],
            "teacher_gender_disparity": first.get("teacher_gender_disparity"),
            "metrics": side,
            "profession_skew": {k: _t_interval(v) for k, v in sorted(skews.items())},
        }
    return out


def summary_result(summary: Mapping[str, Any], *, root: str | Path | None = None) -> Any:
    """The :func:`summarise_distill` summary as a :class:`~trustnlp.results.Result` of kind ``distill``
    (``metrics.role = "summary"``) for the report: ``metrics`` hold the summary and the headline of
    each mitigation as scalars; ``rows`` one row per mitigation (mean and 95% t-interval bounds of the
    headline, its paired relative change, and the other metrics' means)."""
    from trustnlp.results import Result

    rows: list[dict[str, Any]] = []
    flat: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    for name, m in summary["mitigations"].items():
        row: dict[str, Any] = {"mitigation": name, "n_seeds": len(m["seeds"])}
        for key, t in (("gender_disparity", m["gender_disparity"]),
                       ("relative_change", m["relative_change_vs_baseline"]),
                       ("relative_perplexity_increase", m["relative_perplexity_increase"])):
            row[key] = t["mean"]
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = t["ci95"] if t["ci95"] else (None, None)
            flat[f"{name}_{key}"] = t["mean"]
        for key in SUMMARY_METRICS:
            if key != "gender_disparity":
                row[key] = m["metrics"][key]["value"]["mean"]
        rows.append(row)
    for i, row in enumerate(rows):
        for k, v in row.items():
            if v is None:
                reasons[f"rows[{i}].{k}"] = ("fewer than 2 seeds (no interval)" if "_ci_" in k
                                             else "no value (no paired baseline seed, or the metric is null)")
    for k, v in flat.items():
        if v is None:
            reasons[f"metrics.{k}"] = "no value (no paired baseline seed, or the metric is null)"
    reasons["metrics.gender_disparity"] = ("a summary over mitigations: see metrics.<mitigation>_gender_disparity, "
                                           "the rows and metrics.mitigations")
    return Result(kind="distill", config={"role": "summary", "baseline": summary["baseline"],
                                          "root": str(root) if root is not None else None},
                  seed=0, data={}, metrics={"role": "summary", "mitigation": "summary over seeds",
                                            "gender_disparity": None, **flat, "baseline": summary["baseline"],
                                            "mitigations": summary["mitigations"], "teacher": summary["teacher"]},
                  rows=rows, null_reasons=reasons)


def examples_result(root: str | Path, *, seed: int = 0, n_pairs: int = 10) -> Any:
    """Generated examples side by side: for the first ``n_pairs`` gendered prompt pairs of seed ``seed``,
    one row per (pair, gender) with the prompt and each mitigation's continuation (the students share
    their prompts and per-prompt sampling seeds). A :class:`~trustnlp.results.Result` of kind
    ``distill-examples`` (its rows are shown as a table in the report); ``None`` when no run was found."""
    from trustnlp.results import Result, read_result

    root = Path(root)
    runs = {p.parent.parent.name: read_result(p) for p in sorted(root.glob(f"*/seed-{seed}/results.json"))
            if p.parent.parent.name in ("none", "cda", "perturb", "both")}
    if not runs:
        return None
    order = [m for m in ("none", "cda", "perturb", "both") if m in runs]
    key = {m: {(r["source"], r["index"]): r for r in runs[m].rows if "source" in r} for m in order}
    shared = [k for k in key[order[0]] if all(k in key[m] for m in order)][:n_pairs]
    rows = []
    for source, index in shared:
        for g in GROUPS:
            row: dict[str, Any] = {"source": source, "pair": index, "gender": g,
                                   "prompt": key[order[0]][(source, index)][f"prompt_{g}"]}
            row.update({m: key[m][(source, index)][f"continuation_{g}"] for m in order})
            rows.append(row)
    first = runs[order[0]]
    return Result(kind="distill-examples", config={"root": str(root), "seed": seed, "n_pairs": n_pairs,
                                                   "mitigations": order},
                  seed=seed, data=first.data, metrics={"n_pairs": len(shared), "mitigations": order}, rows=rows)
