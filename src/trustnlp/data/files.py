"""User data sets from CSV / TSV / JSON-lines files, with errors that name the file, line and field.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "toy.csv"
    >>> _ = p.write_text("text,label,author\\nplay jazz,music,u1\\nstop,other,u2\\n", encoding="utf-8")
    >>> ds = load_csv(p, columns={"user_id": "author"})
    >>> ds.label_names, ds.column("user_id")
    (('music', 'other'), ('u1', 'u2'))
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustnlp.data.dataset import DataMeta, DatasetSplits, TextDataset
from trustnlp.errors import DataError

__all__ = ["TABLE_SUFFIXES", "load_csv", "load_jsonl", "load_table", "load_table_dir", "read_text", "rebuild"]

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
_SPLIT_STEMS = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


def read_text(path: str | Path, encoding: str = "utf-8", *, repair_surrogates: bool = False) -> str:
    """A file's text, with a :class:`DataError` naming the file, byte offset and encoding on bad bytes.

    With ``repair_surrogates`` (UTF-8 only), CESU-8 style surrogate pairs (e.g. the bytes
    ``ED A0 BC ED BD 95``) are accepted and joined into the real code point (here U+1F355).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"File not found: {path} (expected an existing {encoding} text file).")
    raw = path.read_bytes()
    errors = "surrogatepass" if repair_surrogates else "strict"
    try:
        text = raw.decode(encoding, errors=errors)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        hint = ""
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = " (the file starts with a UTF-16 byte-order mark: try encoding='utf-16')"
        raise DataError(
            f"{path}: cannot decode byte 0x{raw[e.start]:02x} at byte offset {e.start} (line {line}) as {encoding} "
            f"({e.reason}). Expected a {encoding} text file; pass the file's encoding{hint}."
        ) from None
    if repair_surrogates and any("\ud800" <= ch <= "\udfff" for ch in text):
        try:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            bad = next(i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff")
            raise DataError(
                f"{path}: unpaired UTF-16 surrogate U+{ord(text[bad]):04X} at character {bad}; "
                "expected surrogates only in high/low pairs."
            ) from None
    text = text.removeprefix("\ufeff")
    return text


def _label_sort_key(names: Iterable[str]) -> list[str]:
    """Sorted label names; numerically when every name is an integer (so "10" follows "9")."""
    names = set(names)
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def _scalar_str(value: Any, *, where: str, field: str) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise DataError(f"{where}: expected field `{field}` to be a string or number, but got {value!r}.")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _build(
    records: Iterator[tuple[str, Mapping[str, Any]]],
    path: Path,
    *,
    fmt: str,
    text_column: str,
    label_column: str | None,
    columns: Mapping[str, str] | None,
    protected: Sequence[str],
    label_names: Sequence[str] | None,
    name: str | None,
) -> TextDataset:
    """Turn ``(where, record)`` pairs into a TextDataset, checking every field."""
    colmap = dict(columns or {})
    for p in protected:
        colmap.setdefault(p, p)
    texts: list[str] = []
    raw_labels: list[tuple[str, str]] = []
    cols: dict[str, list[Any]] = {k: [] for k in colmap}
    needed = [text_column, *([label_column] if label_column else []), *colmap.values()]
    for where, rec in records:
        for f in needed:
            if f not in rec or rec[f] is None:
                raise DataError(f"{where}: missing field `{f}` (fields present: {sorted(k for k in rec if k)}).")
        text = rec[text_column]
        if not isinstance(text, str):
            raise DataError(f"{where}: expected field `{text_column}` to be a string, but got {text!r}.")
        if not text.strip():
            raise DataError(f"{where}: expected a non-empty text in field `{text_column}`, but got {text!r}.")
        texts.append(text)
        if label_column:
            lab = _scalar_str(rec[label_column], where=where, field=label_column).strip()
            if not lab:
                raise DataError(f"{where}: expected a label in field `{label_column}`, but the value is empty.")
            raw_labels.append((where, lab))
        for k, f in colmap.items():
            cols[k].append(rec[f])
    if not texts:
        raise DataError(f"{path}: expected at least one data row, but the file has none.")
    labels = None
    names: tuple[str, ...] = ()
    if label_column:
        names = tuple(label_names) if label_names is not None else tuple(_label_sort_key(lab for _, lab in raw_labels))
        index = {n: i for i, n in enumerate(names)}
        labels = []
        for where, lab in raw_labels:
            if lab not in index:
                raise DataError(f"{where}: label {lab!r} in field `{label_column}` is not one of `label_names` {list(names)}.")
            labels.append(index[lab])
    meta = DataMeta.for_files(
        name or path.stem,
        [path],
        source=str(path),
        details={"format": fmt, "text_column": text_column, "label_column": label_column, "columns": colmap},
    )
    return TextDataset(texts, labels, label_names=names, columns=cols, protected=tuple(protected), meta=meta)


def load_csv(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    columns: Mapping[str, str] | None = None,
    protected: Sequence[str] = (),
    label_names: Sequence[str] | None = None,
    name: str | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
) -> TextDataset:
    """A CSV (or, with ``delimiter="\\t"`` or a ``.tsv`` suffix, TSV) file with a header row.

    Args:
        path: the file.
        text_column: the column holding the texts.
        label_column: the column holding class names (``None``: unlabelled).
        columns: extra per-example columns, as ``{dataset column: file column}``
            (e.g. ``{"user_id": "author"}``); values are kept as strings.
        protected: dataset column names holding protected attributes (added to ``columns`` with
            the same file column name when not mapped there).
        label_names: the class vocabulary (default: sorted unique labels of the file).
        name: data set name (default: the file stem).
        encoding: text encoding of the file.
        delimiter: field separator (default: tab for ``.tsv``, comma otherwise).
    """
    path = Path(path)
    text = read_text(path, encoding)
    delim = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: expected a header row naming the columns, but the file is empty.") from None
    except csv.Error as e:
        raise DataError(f"{path}, line 1: malformed header ({e}).") from None
    header = [h.strip() for h in header]
    colmap = {**{p: p for p in protected}, **dict(columns or {})}
    roles = [("text_column", text_column)]
    if label_column:
        roles.append(("label_column", label_column))
    roles += [(f"columns[{k!r}]", v) for k, v in colmap.items()]
    for role, col in roles:
        if col not in header:
            raise DataError(f"{path}: missing column `{col}` (for `{role}`); the header has columns {header}.")

    def rows() -> Iterator[tuple[str, Mapping[str, Any]]]:
        row_no = 0
        while True:
            line = reader.line_num + 1  # the line this row starts on
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{path}, line {line}: malformed CSV ({e}).") from None
            if not any(c.strip() for c in row):
                continue  # blank line
            row_no += 1
            where = f"{path}, line {line} (row {row_no})"
            if len(row) > len(header):
                raise DataError(
                    f"{where}: expected {len(header)} fields (as in the header), but got {len(row)}; "
                    f"check the delimiter {delim!r} and the quoting."
                )
            yield where, dict(zip(header, row))

    return _build(
        rows(), path, fmt="tsv" if delim == "\t" else "csv", text_column=text_column, label_column=label_column,
        columns=columns, protected=protected, label_names=label_names, name=name,
    )


def load_jsonl(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    columns: Mapping[str, str] | None = None,
    protected: Sequence[str] = (),
    label_names: Sequence[str] | None = None,
    name: str | None = None,
    encoding: str = "utf-8",
) -> TextDataset:
    """A JSON-lines file: one JSON object per line (blank lines are skipped).

    A file whose content is a single JSON array of objects is also accepted. Keyword arguments
    are as for :func:`load_csv`; column values keep their JSON types.
    """
    path = Path(path)
    text = read_text(path, encoding)

    def records() -> Iterator[tuple[str, Mapping[str, Any]]]:
        if text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}); expected a JSON array of objects.") from None
            for i, obj in enumerate(items):
                where = f"{path}, item {i}"
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: expected a JSON object, but got {type(obj).__name__}.")
                yield where, obj
            return
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); expected one JSON object per line.") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, but got {type(obj).__name__} {line.strip()[:40]!r}.")
            yield where, obj

    return _build(
        records(), path, fmt="jsonl", text_column=text_column, label_column=label_column,
        columns=columns, protected=protected, label_names=label_names, name=name,
    )


def load_table(path: str | Path, **kw: Any) -> TextDataset:
    """Load a ``.csv``, ``.tsv``, ``.jsonl`` or ``.json`` (JSON lines) file; keywords as for :func:`load_csv`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return load_csv(path, **kw)
    if suffix in (".jsonl", ".json"):
        kw.pop("delimiter", None)
        return load_jsonl(path, **kw)
    raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected one of {list(TABLE_SUFFIXES)}.")


def _find_split_file(directory: Path, split: str) -> Path | None:
    found = [directory / f"{stem}{suf}" for stem in _SPLIT_STEMS[split] for suf in TABLE_SUFFIXES]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise DataError(f"{directory}: found several {split} files {[p.name for p in found]}; expected exactly one.")
    return found[0] if found else None


def load_table_dir(
    directory: str | Path,
    *,
    label_column: str | None = "label",
    label_names: Sequence[str] | None = None,
    name: str | None = None,
    **kw: Any,
) -> DatasetSplits:
    """Splits from ``train.*``, ``test.*`` and optional ``validation.*`` / ``dev.*`` files in ``directory``.

    The label vocabulary (unless given) is the sorted union over all files, so a label that
    occurs only in validation or test is reported by :class:`DatasetSplits`.
    """
    directory = Path(directory)
    paths = {s: _find_split_file(directory, s) for s in ("train", "validation", "test")}
    for s in ("train", "test"):
        if paths[s] is None:
            wanted = [f"{stem}{suf}" for stem in _SPLIT_STEMS[s] for suf in TABLE_SUFFIXES]
            raise DataError(f"{directory}: no {s} file found; expected one of {wanted}.")
    name = name or directory.name
    loaded = {
        s: load_table(p, label_column=label_column, label_names=label_names, name=name, **kw)
        for s, p in paths.items()
        if p is not None
    }
    names = label_names
    if label_column and names is None:
        names = tuple(_label_sort_key(n for ds in loaded.values() for n in ds.label_names))
    files = {f: h for ds in loaded.values() for f, h in ds.meta.files.items()}
    meta = DataMeta(name=name, source=str(directory), files=files, details=dict(loaded["train"].meta.details))
    out = {s: rebuild(ds, meta=meta, label_names=names) for s, ds in loaded.items()}
    return DatasetSplits(train=out["train"], validation=out.get("validation"), test=out["test"])


def rebuild(ds: TextDataset, *, meta: DataMeta | None = None, label_names: Sequence[str] | None = None) -> TextDataset:
    """A copy of ``ds`` with new metadata and/or a larger label vocabulary (labels re-indexed by name)."""
    labels: Sequence[int] | np.ndarray | None = ds.labels
    names = ds.label_names
    if label_names is not None and ds.labels is not None and tuple(label_names) != names:
        index = {n: i for i, n in enumerate(label_names)}
        labels = [index[names[k]] for k in ds.labels]
        names = tuple(label_names)
    return TextDataset(
        ds.texts, labels, label_names=names, columns=ds.columns, protected=ds.protected,
        tokens=ds.tokens, tags=ds.tags, tag_names=ds.tag_names, meta=meta or ds.meta,
    )
