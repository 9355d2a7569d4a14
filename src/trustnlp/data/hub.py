"""Data from the network: Hugging Face ``datasets`` and the public sources of the named data sets.

Nothing here runs at import time; both entry points fail with a :class:`DataError` that says
what to do instead (a local file via ``--data``, or a data directory) when offline.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trustnlp.data.dataset import DataMeta, DatasetSplits, TextDataset
from trustnlp.errors import DataError, MissingDependencyError

__all__ = ["DOWNLOAD_TIMEOUT_S", "PUBLIC_SOURCES", "download_public", "load_hf_dataset"]

DOWNLOAD_TIMEOUT_S = 60.0
_LOCAL_HINT = "use a local CSV/JSONL file instead, e.g. `--data path/to/data.csv` (columns `text` and `label`)"

_CLINC = "https://raw.githubusercontent.com/clinc/oos-eval/828f8093932c8fe6ca7936c3d2e52903b1c523de/data/"
_JOINTBERT = "https://raw.githubusercontent.com/monologg/JointBERT/00324f60dda4a491b2913bc3065ae93966caea3f/data/snips/"
_SONOS = (
    "https://raw.githubusercontent.com/sonos/nlu-benchmark/b86ac7f1577868c42158d0dec77db50956046696/"
    "2017-06-custom-intent-engines/"
)
_CHARRNN = "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/"
_SNIPS_INTENTS = (
    "AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook", "SearchCreativeWork", "SearchScreeningEvent",
)

# name -> list of (relative destination path, URL, sha256 prefix from the data set's PROVENANCE.md)
PUBLIC_SOURCES: dict[str, list[tuple[str, str, str]]] = {
    "clinc150": [
        ("data_full.json", _CLINC + "data_full.json", "36923c3705a59e08"),
        ("domains.json", _CLINC + "domains.json", "b947b579d3b8e74b"),
    ],
    "snips": [
        ("goo2018_split/intent_label.txt", _JOINTBERT + "intent_label.txt", "65e97527fa7048ee"),
        ("goo2018_split/slot_label.txt", _JOINTBERT + "slot_label.txt", "d355b87d41fe23ff"),
        *[
            (f"goo2018_split/{split}/{f}", f"{_JOINTBERT}{split}/{f}", sha)
            for split, f, sha in [
                ("train", "seq.in", "04ad1e3f2121d83c"), ("train", "seq.out", "fd5f2121d8055827"),
                ("train", "label", "bfd7df6cf9dd76c5"), ("dev", "seq.in", "64e0f6d8ad8aab3a"),
                ("dev", "seq.out", "712e6d34feb8d52d"), ("dev", "label", "9c1dd041216f647b"),
                ("test", "seq.in", "c1e341173fcea295"), ("test", "seq.out", "58c07c9097d5e1f7"),
                ("test", "label", "37a26da3ad079bb4"),
            ]
        ],
    ],
    "snips-original": [
        (f"sonos_2017-06-custom-intent-engines/{f}", f"{_SONOS}{intent}/{f}", sha)
        for intent, shas in zip(
            _SNIPS_INTENTS,
            [
                ("fee1b4645352e70e", "14cc9ee49ae477b1"), ("7677e82cd6e9a819", "4f7258ccc768b777"),
                ("86f414b2ad8a9931", "60c095e193655d6c"), ("901ddbe9781d1fdb", "922212775e26259d"),
                ("bb43e4b74134300d", "c1f8b4114da0bb5e"), ("87b3432de48c71c2", "8a5e830eddb185d3"),
                ("5447e9440c02e2fb", "81e1445713e03c7c"),
            ],
        )
        for f, sha in zip((f"train_{intent}_full.json", f"validate_{intent}.json"), shas)
    ],
    "tinyshakespeare": [("input.txt", _CHARRNN + "input.txt", "86c4e6aa9db7c042")],
}


def download_public(name: str, dest: str | Path) -> Path:
    """Fetch a named data set's files from its public source (pinned commits) into ``dest``.

    Files already present are kept. Each file is written atomically (temporary file, then
    rename) and checked against the sha256 recorded in the data set's PROVENANCE.md.

    Returns:
        ``dest``.

    Raises:
        DataError: unknown name, or a download failed (offline, HTTP error, checksum mismatch).
    """
    if name not in PUBLIC_SOURCES:
        raise DataError(f"No public download is known for data set `{name}`; expected one of {sorted(PUBLIC_SOURCES)}.")
    dest = Path(dest)
    for rel, url, sha_prefix in PUBLIC_SOURCES[name]:
        target = dest / rel
        if target.is_file():
            continue
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                data = resp.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DataError(
                f"Data set `{name}` was not found in the data directories searched and could not be downloaded "
                f"from {url} ({type(e).__name__}: {e}). Put the files in a data directory (see `--data-dir` or "
                f"$TRUSTNLP_DATA_DIR) or {_LOCAL_HINT}."
            ) from e
        digest = hashlib.sha256(data).hexdigest()
        if sha_prefix and not digest.startswith(sha_prefix):
            raise DataError(
                f"Downloaded {url} has sha256 {digest[:16]}..., but expected {sha_prefix}... (the pinned release); "
                "refusing to use it."
            )
        _atomic_write(target, data)
    return dest


def _atomic_write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_hf_dataset(
    name: str,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    split_map: Mapping[str, str] | None = None,
    cache_dir: str | Path | None = None,
) -> DatasetSplits:
    """A Hugging Face hub data set as train / (validation) / test splits.

    Args:
        name: the hub id, optionally with a config after a colon (``"nyu-mll/glue:sst2"``).
        text_column: the text column.
        label_column: the label column (a ``ClassLabel`` keeps its names; strings are mapped to
            sorted unique names; other integers to ``"0".."k"``), or ``None`` for unlabelled data.
        split_map: our split name (``train``/``validation``/``test``) -> hub split name. By
            default ``train``, the first of ``validation``/``dev``/``val``, and ``test``.
        cache_dir: the ``datasets`` cache directory.
    """
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise MissingDependencyError("datasets", extra="hf", purpose=f"loading the Hugging Face data set `{name}`") from None
    path, _, config = name.partition(":")
    try:
        dd = datasets.load_dataset(path, config or None, cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as e:
        raise DataError(
            f"Could not load the Hugging Face data set `{name}` ({type(e).__name__}: {e}). If you are offline or the "
            f"name is wrong, {_LOCAL_HINT}."
        ) from e
    available = list(dd.keys())
    smap = dict(split_map) if split_map else _default_split_map(available)
    for ours, theirs in smap.items():
        if ours not in ("train", "validation", "test"):
            raise DataError(f"`split_map` key {ours!r} is not a split; expected 'train', 'validation' or 'test'.")
        if theirs not in available:
            raise DataError(f"Hugging Face data set `{name}` has no split {theirs!r} (splits: {available}).")
    for req in ("train", "test"):
        if req not in smap:
            raise DataError(
                f"Hugging Face data set `{name}` has no {req} split (splits: {available}); pass `split_map` to choose one."
            )
    parts = {ours: dd[theirs] for ours, theirs in smap.items()}
    names = _hf_label_names(parts, name, label_column)
    info = getattr(parts["train"], "info", None)
    meta = DataMeta(
        name=f"hf:{name}",
        source=f"https://huggingface.co/datasets/{path}",
        licence=(getattr(info, "license", None) or "unknown"),
        version=str(getattr(info, "version", None) or "") or None,
        details={
            "config": config or None,
            "split_map": smap,
            "fingerprints": {k: getattr(v, "_fingerprint", None) for k, v in parts.items()},
        },
    )
    out = {k: _hf_to_dataset(v, name, k, smap[k], text_column, label_column, names, meta) for k, v in parts.items()}
    return DatasetSplits(train=out["train"], validation=out.get("validation"), test=out["test"])


def _default_split_map(available: list[str]) -> dict[str, str]:
    smap: dict[str, str] = {}
    for ours, candidates in (("train", ("train",)), ("validation", ("validation", "dev", "val")), ("test", ("test",))):
        for c in candidates:
            if c in available:
                smap[ours] = c
                break
    return smap


def _hf_label_names(parts: Mapping[str, Any], name: str, label_column: str | None) -> tuple[str, ...]:
    if not label_column:
        return ()
    feature = getattr(parts["train"], "features", {}).get(label_column)
    if feature is not None and getattr(feature, "names", None):
        return tuple(feature.names)
    values = set()
    for split, ds in parts.items():
        if label_column not in ds.column_names:
            raise DataError(
                f"Hugging Face data set `{name}` ({split} split) has no label column `{label_column}` "
                f"(columns: {list(ds.column_names)})."
            )
        values.update(ds[label_column])
    if all(isinstance(v, str) for v in values):
        return tuple(sorted(values))
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return tuple(str(i) for i in range(max(values) + 1))
    raise DataError(
        f"Hugging Face data set `{name}`: expected label column `{label_column}` to hold class names or "
        f"non-negative class indices, but got values such as {sorted(map(repr, values))[:5]}."
    )


def _hf_to_dataset(
    ds: Any, name: str, split: str, hub_split: str, text_column: str, label_column: str | None,
    names: tuple[str, ...], meta: DataMeta,
) -> TextDataset:
    where = f"Hugging Face data set `{name}` (split {hub_split!r})"
    cols = list(ds.column_names)
    for col in [text_column, *([label_column] if label_column else [])]:
        if col not in cols:
            raise DataError(f"{where}: missing column `{col}` (columns: {cols}).")
    texts = list(ds[text_column])
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"{where}, row {i}: expected a non-empty text in `{text_column}`, but got {t!r}.")
    labels = None
    if label_column:
        index = {n: i for i, n in enumerate(names)}
        labels = []
        for i, v in enumerate(ds[label_column]):
            k = index.get(v) if isinstance(v, str) else v
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(names):
                raise DataError(
                    f"{where}, row {i}: expected `{label_column}` to be one of {len(names)} classes, but got {v!r}"
                    + (" (unlabelled split?)" if v == -1 else "")
                    + "."
                )
            labels.append(k)
    return TextDataset(texts, labels, label_names=names, meta=meta)
