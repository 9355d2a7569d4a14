"""Loaders for the named public data sets: CLINC150, SNIPS (two releases) and tinyshakespeare.

Each loader takes ``data_dir``: the data set's own folder (e.g. ``shared/data/clinc150``), or a
data root holding it (``shared/data``), or ``None`` to search the standard data directories
(see :func:`trustnlp.data.registry.data_dirs`) and, failing that, download the pinned release.
Every loader checks the files it reads and records their sha256 in ``meta.files``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from trustnlp.data.dataset import DataMeta, DatasetSplits, TextDataset
from trustnlp.data.files import read_text
from trustnlp.errors import DataError

__all__ = ["SPEAKER_LINE", "load_clinc150", "load_snips", "load_snips_original", "load_tinyshakespeare"]

CLINC150_SOURCE = "https://github.com/clinc/oos-eval @828f8093932c8fe6ca7936c3d2e52903b1c523de"
SNIPS_SOURCE = "https://github.com/monologg/JointBERT @00324f60dda4a491b2913bc3065ae93966caea3f (data/snips)"
SNIPS_ORIGINAL_SOURCE = "https://github.com/sonos/nlu-benchmark @b86ac7f1577868c42158d0dec77db50956046696"
SHAKESPEARE_SOURCE = "https://github.com/karpathy/char-rnn @6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"
SPEAKER_LINE = re.compile(r"^[A-Z][A-Za-z' .,-]*:$")
_NOT_LABELS = {"PAD", "UNK"}


def _locate(name: str, data_dir: str | Path | None, inner: str, marker: str) -> Path:
    """The folder holding ``marker``: ``data_dir`` itself, ``data_dir/inner``, or the data set's folder."""
    if data_dir is not None:
        for cand in (Path(data_dir), Path(data_dir) / inner):
            if (cand / marker).is_file():
                return cand
    from trustnlp.data.registry import find_dataset_dir  # lazy: registry imports this module

    return find_dataset_dir(name, data_dir) / inner


def _lines(path: Path) -> list[str]:
    """The lines of a text file (``\\n``-separated, final newline optional), right-stripped."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip() for ln in lines]


# -- CLINC150 --------------------------------------------------------------------------------------
def load_clinc150(data_dir: str | Path | None = None, *, include_oos: bool = False) -> DatasetSplits:
    """CLINC150 (``data_full.json``): 150 intents, 15,000 / 3,000 / 4,500 train / validation / test.

    ``label_names`` are the 150 in-scope intents sorted; with ``include_oos`` the class ``"oos"``
    is appended last (so in-scope indices do not change) and ``oos_train`` / ``oos_val`` /
    ``oos_test`` are merged into the respective splits. Column ``domain`` comes from
    ``domains.json`` when present (``"oos"`` for out-of-scope queries).
    """
    folder = _locate("clinc150", data_dir, "", "data_full.json")
    path = folder / "data_full.json"
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}).") from None
    keys = ["train", "val", "test"] + (["oos_train", "oos_val", "oos_test"] if include_oos else [])
    if not isinstance(data, dict) or any(k not in data for k in keys):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected a JSON object with keys {keys}, but got {got}.")
    pairs: dict[str, list[tuple[str, str]]] = {}
    for key in keys:
        rows = data[key]
        if not isinstance(rows, list):
            raise DataError(f"{path}, key `{key}`: expected a list of [text, intent] pairs, but got {type(rows).__name__}.")
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) and x.strip() for x in row)):
                raise DataError(f"{path}, `{key}`[{i}]: expected a [text, intent] pair of non-empty strings, but got {row!r}.")
        pairs[key] = [(t, y) for t, y in rows]
    for key in ("oos_train", "oos_val", "oos_test"):
        for i, (_, y) in enumerate(pairs.get(key, [])):
            if y != "oos":
                raise DataError(f"{path}, `{key}`[{i}]: expected intent 'oos', but got {y!r}.")
    intents = sorted({y for _, y in pairs["train"]})
    if "oos" in intents:
        raise DataError(f"{path}, key `train`: expected only in-scope intents, but found 'oos'.")
    names = intents + (["oos"] if include_oos else [])
    index = {n: i for i, n in enumerate(names)}
    files = [path]
    domain_of: dict[str, str] = {}
    dom_path = folder / "domains.json"
    if dom_path.is_file():
        files.append(dom_path)
        try:
            domains = json.loads(read_text(dom_path))
        except json.JSONDecodeError as e:
            raise DataError(f"{dom_path}, line {e.lineno}: invalid JSON ({e.msg}).") from None
        if not isinstance(domains, dict):
            raise DataError(f"{dom_path}: expected a JSON object mapping domain -> list of intents.")
        domain_of = {intent: dom for dom, its in domains.items() for intent in its}
        domain_of["oos"] = "oos"
    meta = DataMeta.for_files(
        "clinc150", files, source=CLINC150_SOURCE, licence="CC-BY-3.0", version="data_full",
        details={"include_oos": include_oos, "label_order": "150 in-scope intents sorted" + (", then oos" if include_oos else "")},
    )

    def build(split: str) -> TextDataset:
        rows = pairs[split] + (pairs[f"oos_{split}"] if include_oos else [])
        for i, (_, y) in enumerate(rows):
            if y not in index:
                raise DataError(f"{path}, `{split}`[{i}]: intent {y!r} does not occur in `train`.")
        cols = {"domain": [domain_of.get(y, "unknown") for _, y in rows]} if domain_of else None
        return TextDataset([t for t, _ in rows], [index[y] for _, y in rows], label_names=names, columns=cols, meta=meta)

    return DatasetSplits(train=build("train"), validation=build("val"), test=build("test"))


# -- SNIPS, Goo et al. 2018 split ------------------------------------------------------------------
def _vocab_file(path: Path) -> list[str] | None:
    return [x for x in _lines(path) if x and x not in _NOT_LABELS] if path.is_file() else None


def load_snips(data_dir: str | Path | None = None) -> DatasetSplits:
    """SNIPS as split by Goo et al. (2018): 13,084 / 700 / 700 utterances, 7 intents, BIO slot tags.

    ``tokens``/``tags`` are the whitespace tokens of ``seq.in`` and the BIO tags of ``seq.out``;
    ``tag_names`` is ``"O"`` then the other tags sorted (``PAD``/``UNK`` of the vocabulary files
    are not labels). ``validation`` is the ``dev`` split.
    """
    folder = _locate("snips", data_dir, "goo2018_split", "train/seq.in")
    intent_vocab = _vocab_file(folder / "intent_label.txt")
    slot_vocab = _vocab_file(folder / "slot_label.txt")
    read: dict[str, tuple[list[str], list[list[str]], list[list[str]]]] = {}
    files: list[Path] = [p for p in (folder / "intent_label.txt", folder / "slot_label.txt") if p.is_file()]
    for split in ("train", "dev", "test"):
        paths = [folder / split / f for f in ("seq.in", "seq.out", "label")]
        for p in paths:
            if not p.is_file():
                raise DataError(f"File not found: {p} (expected SNIPS files seq.in, seq.out and label in {folder / split}).")
        files += paths
        seq_in, seq_out, labels = (_lines(p) for p in paths)
        for p, got in ((paths[1], seq_out), (paths[2], labels)):
            if len(got) != len(seq_in):
                raise DataError(
                    f"{p}: expected {len(seq_in)} lines (one per line of {paths[0]}), but got {len(got)}; the files are misaligned."
                )
        tokens, tags = [], []
        for n, (a, b, y) in enumerate(zip(seq_in, seq_out, labels), start=1):
            tok, tag = a.split(), b.split()
            if not tok:
                raise DataError(f"{paths[0]}:{n}: expected a non-empty utterance, but the line is empty.")
            if len(tok) != len(tag):
                raise DataError(
                    f"{paths[1]}:{n}: expected {len(tok)} tags (one per token of {paths[0]}:{n}), but got {len(tag)}."
                )
            if not y or y in _NOT_LABELS or (intent_vocab is not None and y not in intent_vocab):
                raise DataError(f"{paths[2]}:{n}: expected an intent from {intent_vocab or 'the label file'}, but got {y!r}.")
            for t in tag:
                if t in _NOT_LABELS or (slot_vocab is not None and t not in slot_vocab):
                    raise DataError(f"{paths[1]}:{n}: tag {t!r} is not a slot tag (expected one of {folder / 'slot_label.txt'}).")
            tokens.append(tok)
            tags.append(tag)
        read[split] = (labels, tokens, tags)
    names = sorted(intent_vocab) if intent_vocab is not None else sorted(set(read["train"][0]))
    used = {t for _, _, tg in read.values() for ts in tg for t in ts}
    tag_names = ["O"] + sorted((set(slot_vocab) if slot_vocab is not None else used) - {"O"})
    index = {n: i for i, n in enumerate(names)}
    meta = DataMeta.for_files(
        "snips", files, source=SNIPS_SOURCE, licence="CC0-1.0 (data); Apache-2.0 (split)", version="goo2018",
    )

    def build(split: str) -> TextDataset:
        labels, tokens, tags = read[split]
        for n, y in enumerate(labels, start=1):
            if y not in index:
                raise DataError(f"{folder / split / 'label'}:{n}: intent {y!r} does not occur in train.")
        return TextDataset(
            [" ".join(t) for t in tokens], [index[y] for y in labels], label_names=names,
            tokens=tokens, tags=tags, tag_names=tag_names, meta=meta,
        )

    return DatasetSplits(train=build("train"), validation=build("dev"), test=build("test"))


# -- SNIPS, original 2017-06 release ---------------------------------------------------------------
def _snips_json(path: Path, intent: str) -> list[tuple[str, list[str], list[str]]]:
    """(text, tokens, BIO tags) per utterance of one sonos JSON file."""
    try:
        data = json.loads(read_text(path, repair_surrogates=True))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}).") from None
    if not isinstance(data, dict) or list(data) != [intent] or not isinstance(data[intent], list):
        got = list(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected a JSON object with the single key {intent!r} holding a list, but got {got}.")
    out = []
    for i, utt in enumerate(data[intent]):
        where = f"{path}, utterance {i}"
        chunks = utt.get("data") if isinstance(utt, dict) else None
        if not isinstance(chunks, list):
            raise DataError(f"{where}: expected an object with a `data` list of chunks, but got {utt!r:.80}.")
        tokens: list[str] = []
        tags: list[str] = []
        for j, ch in enumerate(chunks):
            if not (isinstance(ch, dict) and isinstance(ch.get("text"), str)):
                raise DataError(f"{where}, chunk {j}: expected an object with a string `text`, but got {ch!r:.80}.")
            entity = ch.get("entity")
            if entity is not None and not (isinstance(entity, str) and entity):
                raise DataError(f"{where}, chunk {j}: expected `entity` to be a slot name, but got {entity!r}.")
            words = ch["text"].split()
            tokens += words
            tags += [("B-" if k == 0 else "I-") + entity if entity else "O" for k in range(len(words))]
        text = "".join(ch["text"] for ch in chunks).strip()
        if not text:
            raise DataError(f"{where}: expected a non-empty utterance, but its chunks are empty.")
        out.append((text, tokens, tags))
    return out


def load_snips_original(data_dir: str | Path | None = None) -> DatasetSplits:
    """The original SNIPS release (sonos nlu-benchmark 2017-06): 13,784 train / 700 test, no validation.

    ``train_<Intent>_full.json`` -> train, ``validate_<Intent>.json`` -> test. The text is the
    concatenation of the chunks; tokens are each chunk's whitespace tokens with BIO tags from the
    chunk's ``entity``. ``tag_names`` is ``"O"`` then ``B-``/``I-`` of every entity seen, sorted.
    CESU-8 surrogate bytes (in ``train_PlayMusic_full.json``) are repaired to the real code point.
    """
    inner = "sonos_2017-06-custom-intent-engines"
    folder = _locate("snips-original", data_dir, inner, "validate_PlayMusic.json")
    train_files = sorted(folder.glob("train_*_full.json"))
    if not train_files:
        raise DataError(f"{folder}: expected train_<Intent>_full.json files (the sonos SNIPS release), but found none.")
    intents = [p.name[len("train_") : -len("_full.json")] for p in train_files]
    read: dict[str, list[tuple[str, str, list[str], list[str]]]] = {"train": [], "test": []}
    files: list[Path] = []
    for intent, tr in zip(intents, train_files):
        te = folder / f"validate_{intent}.json"
        if not te.is_file():
            raise DataError(f"File not found: {te} (expected a validate file for each train_{intent}_full.json).")
        for split, p in (("train", tr), ("test", te)):
            files.append(p)
            read[split] += [(intent, *row) for row in _snips_json(p, intent)]
    entities = {t[2:] for rows in read.values() for *_, tags in rows for t in tags if t != "O"}
    tag_names = ["O"] + sorted(f"{b}-{e}" for e in entities for b in "BI")
    names = sorted(intents)
    index = {n: i for i, n in enumerate(names)}
    meta = DataMeta.for_files(
        "snips-original", files, source=SNIPS_ORIGINAL_SOURCE, licence="CC0-1.0", version="2017-06-custom-intent-engines",
        details={"tokenisation": "whitespace tokens of each chunk"},
    )

    def build(split: str) -> TextDataset:
        rows = read[split]
        return TextDataset(
            [r[1] for r in rows], [index[r[0]] for r in rows], label_names=names,
            tokens=[r[2] for r in rows], tags=[r[3] for r in rows], tag_names=tag_names, meta=meta,
        )

    return DatasetSplits(train=build("train"), test=build("test"))


# -- tinyshakespeare -------------------------------------------------------------------------------
def _speaker_turns(path: Path) -> list[tuple[str, str, int]]:
    """(speaker, speech, 1-based line of the speaker line) for each turn; speech may be empty."""
    lines = _lines(path)
    starts = [i for i, ln in enumerate(lines) if SPEAKER_LINE.match(ln) and (i == 0 or not lines[i - 1].strip())]
    if not starts:
        raise DataError(f"{path}: expected speaker lines like 'ROMEO:' after a blank line, but found none.")
    turns = []
    for k, s in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        speech = "\n".join(lines[s + 1 : end]).strip("\n")
        turns.append((lines[s][:-1], speech, s + 1))
    return turns


def load_tinyshakespeare(data_dir: str | Path | None = None) -> DatasetSplits:
    """tinyshakespeare speaker turns, unlabelled, for language modelling.

    A line matching :data:`SPEAKER_LINE` after a blank line (or first) starts a turn; the text is
    the speech that follows (newlines kept), column ``speaker`` the name and ``line`` the speaker
    line's number. The file has 7,220 turns by 308 speakers; the 125 turns with no speech (a
    speaker line directly followed by a blank line) are dropped, leaving 7,095 turns by 298
    speakers. Split contiguously 90/5/5 in turn order (no shuffling).
    """
    folder = _locate("tinyshakespeare", data_dir, "", "input.txt")
    path = folder / "input.txt"
    all_turns = _speaker_turns(path)
    turns = [t for t in all_turns if t[1].strip()]  # 125 turns of the file have a speaker line only
    n = len(turns)
    n_train, n_val = round(0.9 * n), round(0.05 * n)
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    meta = DataMeta.for_files(
        "tinyshakespeare", [path], source=SHAKESPEARE_SOURCE, licence="public domain (text); MIT (char-rnn)",
        details={
            "unit": "speaker turn", "split": "contiguous 90/5/5 by turn order", "turns_in_file": len(all_turns),
            "empty_turns_dropped": len(all_turns) - n, "speakers": len({t[0] for t in turns}),
        },
    )

    def build(lo: int, hi: int) -> TextDataset:
        part = turns[lo:hi]
        cols: dict[str, Any] = {"speaker": [t[0] for t in part], "line": [t[2] for t in part]}
        return TextDataset([t[1] for t in part], None, columns=cols, meta=meta)

    splits = {k: build(*v) for k, v in bounds.items()}
    return DatasetSplits(train=splits["train"], validation=splits["validation"], test=splits["test"])

