"""Named data sets and data-directory lookup: one ``load_dataset(spec)`` for every kind of data.

``spec`` is a registered name (:data:`NAMED_DATASETS`), ``hf:NAME`` for a Hugging Face data set,
a ``.csv``/``.tsv``/``.jsonl``/``.json`` file (split with a seeded stratified split), or a
directory with ``train.*`` and ``test.*`` (and optional ``validation.*``/``dev.*``) files.

Example:
    >>> load_dataset("no-such-data")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trustnlp.errors.DataError: Unknown data set 'no-such-data'...
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from trustnlp.data.dataset import DatasetSplits
from trustnlp.data.files import TABLE_SUFFIXES, load_table, load_table_dir, rebuild
from trustnlp.errors import DataError

__all__ = [
    "CACHE_ENV",
    "DATA_DIR_ENV",
    "NAMED_DATASETS",
    "cache_dir",
    "data_dirs",
    "find_dataset_dir",
    "load_dataset",
]

DATA_DIR_ENV = "TRUSTNLP_DATA_DIR"
CACHE_ENV = "TRUSTNLP_CACHE"
NAMED_DATASETS: tuple[str, ...] = ("assistant", "clinc150", "snips", "snips-original", "tinyshakespeare")

# name -> (folder under a data directory, a file that must exist in it)
_FOLDERS: dict[str, tuple[str, str]] = {
    "clinc150": ("clinc150", "data_full.json"),
    "snips": ("snips", "goo2018_split/train/seq.in"),
    "snips-original": ("snips", "sonos_2017-06-custom-intent-engines/validate_PlayMusic.json"),
    "tinyshakespeare": ("tinyshakespeare", "input.txt"),
}


def _candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    cands: list[Path] = []
    if data_dir is not None:
        cands.append(Path(data_dir).expanduser())
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        cands += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    cands.append(Path.cwd() / ".." / "shared" / "data")
    cands.append(Path(__file__).resolve().parents[3] / ".." / "shared" / "data")
    return cands


def data_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The data directories searched, in order, that exist (deduplicated, resolved).

    Order: ``data_dir``; each entry of ``$TRUSTNLP_DATA_DIR`` (``os.pathsep``-separated);
    ``../shared/data`` relative to the current directory; ``../shared/data`` relative to the
    repository root of this source tree.
    """
    out: list[Path] = []
    for p in _candidate_dirs(data_dir):
        if p.is_dir():
            r = p.resolve()
            if r not in out:
                out.append(r)
    return out


def cache_dir() -> Path:
    """Where downloaded data sets go: ``$TRUSTNLP_CACHE/data`` or ``~/.cache/trustnlp/data``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "trustnlp") / "data"


def find_dataset_dir(name: str, data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """The folder of data set ``name`` (e.g. ``<data dir>/clinc150``).

    Searches :func:`data_dirs`, then the download cache; if still missing and ``download``, fetches
    the pinned public release into the cache (:func:`trustnlp.data.hub.download_public`). Names
    without a registered layout (e.g. ``"crows_pairs"``) are looked up as folders only.
    """
    folder, marker = _FOLDERS.get(name, (name, ""))

    def ok(d: Path) -> bool:
        return (d / marker).is_file() if marker else d.is_dir()

    for root in data_dirs(data_dir):
        if ok(root / folder):
            return root / folder
    cached = cache_dir() / folder
    if ok(cached):
        return cached
    searched = ", ".join(f"{p}{'' if p.is_dir() else ' (missing)'}" for p in _candidate_dirs(data_dir))
    from trustnlp.data.hub import PUBLIC_SOURCES, download_public

    if download and name in PUBLIC_SOURCES:
        try:
            return download_public(name, cached)
        except DataError as e:
            raise DataError(f"{e} Data directories searched: {searched}.") from e.__cause__
    raise DataError(
        f"Data set `{name}` was not found: expected a folder `{folder}`"
        + (f" containing `{marker}`" if marker else "")
        + f" in one of the data directories searched ({searched}), or in the cache {cache_dir()}. "
        f"Pass `data_dir` (--data-dir) or set ${DATA_DIR_ENV}"
        + ("" if name not in PUBLIC_SOURCES else "; downloading was disabled")
        + "."
    )


def _unknown(spec: str) -> DataError:
    return DataError(
        f"Unknown data set {spec!r}: expected one of {list(NAMED_DATASETS)}, 'hf:NAME' for a Hugging Face data set, "
        f"or a path to a {'/'.join(TABLE_SUFFIXES)} file or to a directory with train/test files."
    )


def load_dataset(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    include_oos: bool = False,
    text_column: str = "text",
    label_column: str | None = "label",
    validation: float = 0.1,
    test: float = 0.1,
) -> DatasetSplits:
    """Load the data set ``spec`` names, as train / (validation) / test splits.

    Args:
        spec: a name from :data:`NAMED_DATASETS`, ``hf:NAME`` (``hf:repo:config`` for a
            config), a data file, or a directory with ``train.*``/``test.*`` files.
        data_dir: a data directory to search first for named data sets.
        seed: seed of the built-in generator (``assistant``) and of file splits.
        include_oos: CLINC150 only: add the out-of-scope class.
        text_column: text column of files and Hugging Face data sets.
        label_column: label column of files and Hugging Face data sets (``None``: unlabelled).
        validation: validation fraction when splitting a single file.
        test: test fraction when splitting a single file.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"Expected a data set name or path, but got {spec!r}.")
    name = spec.strip().lower().replace("_", "-")
    name = {"builtin": "assistant", "shakespeare": "tinyshakespeare"}.get(name, name)
    if name in NAMED_DATASETS:
        from trustnlp.data import loaders

        if name == "assistant":
            from trustnlp.data.assistant import generate_assistant

            return generate_assistant(seed=seed)
        if name == "clinc150":
            return loaders.load_clinc150(data_dir, include_oos=include_oos)
        if name == "snips":
            return loaders.load_snips(data_dir)
        if name == "snips-original":
            return loaders.load_snips_original(data_dir)
        return loaders.load_tinyshakespeare(data_dir)
    if spec.startswith("hf:"):
        from trustnlp.data.hub import load_hf_dataset

        return load_hf_dataset(spec[3:], text_column=text_column, label_column=label_column)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_table_dir(path, text_column=text_column, label_column=label_column)
    if path.is_file():
        ds = load_table(path, text_column=text_column, label_column=label_column)
        split = {"seed": seed, "test": test, "validation": validation, "stratified": ds.labels is not None}
        ds = rebuild(ds, meta=replace(ds.meta, details={**ds.meta.details, "split": split}))
        return ds.split(test=test, validation=validation, seed=seed)
    if path.suffix.lower() in TABLE_SUFFIXES or os.sep in spec or "/" in spec:
        raise DataError(f"File not found: {spec} (expected an existing data file or directory).")
    raise _unknown(spec)
