"""Save and load models with their tokeniser, as safetensors + JSON (never pickle).

A saved model is a directory::

    model.safetensors   the state dict (tied weights stored once)
    model.json          {"format": "trustnlp-model", "format_version": 1, "arch", "config", "task",
                         "label_names", "tag_names", "extra", "weights_sha256", "tied"}
    tokenizer/          the tokeniser (see trustnlp.data.tokenizers)

Writing is atomic: everything goes into a temporary sibling directory that is then renamed into
place (an existing saved model is replaced only after the new one is complete).

Example:
    >>> import tempfile
    >>> from trustnlp.data.tokenizers import WordTokenizer
    >>> from trustnlp.models import build_model
    >>> tok = WordTokenizer.from_vocabulary(["play", "stop"])
    >>> model = build_model("bag", vocab_size=tok.vocab_size, num_labels=2, dim=8)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = save_model(model, Path(d) / "m", tokenizer=tok, label_names=["play", "stop"])
    ...     saved = load_model(path)
    >>> saved.arch, saved.label_names
    ('bag', ('play', 'stop'))
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trustnlp.data.tokenizers import Tokenizer, load_tokenizer
from trustnlp.errors import ConfigError, DataError, TrustNLPError, expected
from trustnlp.models.base import MODELS

__all__ = ["FORMAT", "FORMAT_VERSION", "TASKS", "SavedModel", "load_model", "save_model"]

FORMAT = "trustnlp-model"
FORMAT_VERSION = 1
TASKS = ("classify", "tag", "lm")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class SavedModel:
    """A loaded model (in eval mode) with its tokeniser and metadata."""

    model: nn.Module
    tokenizer: Tokenizer
    arch: str
    task: str
    label_names: tuple[str, ...]
    tag_names: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _aliases(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: kept_name}`` for state-dict entries that are the same tensor as an earlier one (tied weights)."""
    seen: dict[tuple[Any, ...], str] = {}
    out: dict[str, str] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in seen:
            out[name] = seen[key]
        else:
            seen[key] = name
    return out


def _json_or_error(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Expected {what} to be JSON-serialisable, but it is not: {e}") from None


def save_model(
    model: nn.Module,
    directory: str | Path,
    *,
    tokenizer: Tokenizer,
    label_names: Sequence[str] = (),
    tag_names: Sequence[str] = (),
    task: str = "classify",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` (a registered trustnlp model) and its tokeniser into ``directory``.

    Raises:
        ConfigError: the model is not a trustnlp model, a field is not JSON-serialisable, the label
            or tag names do not match the model, or ``directory`` exists and is not a saved model.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    arch = getattr(model, "arch", None)
    config = getattr(model, "config", None)
    if arch not in MODELS or not isinstance(config, dict):
        raise ConfigError(
            f"Expected a trustnlp model (with `arch` in {sorted(MODELS)} and a `config`), but got "
            f"{type(model).__name__}."
        )
    if task not in TASKS:
        raise ConfigError(expected("task", f"one of {list(TASKS)}", task))
    for name, names, key in (("label_names", label_names, "num_labels"), ("tag_names", tag_names, "num_tags")):
        if names and key in config and len(names) != config[key]:
            raise ConfigError(expected(f"len({name})", f"{key} = {config[key]}", len(names)))
    if directory.exists() and not (directory / META_FILE).is_file() and any(directory.iterdir()):
        raise ConfigError(f"{directory} exists and is not a saved trustnlp model; refusing to replace it.")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "config": _json_or_error(config, "the model config"),
        "task": task,
        "label_names": [str(n) for n in label_names],
        "tag_names": [str(n) for n in tag_names],
        "extra": _json_or_error(dict(extra or {}), "`extra`"),
    }
    state = model.state_dict()
    tied = _aliases(state)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in tied}

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "arch": arch})
        meta["weights_sha256"] = _sha256(tmp / WEIGHTS_FILE)
        meta["tied"] = tied
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        tokenizer.save(tmp / TOKENIZER_DIR)
        old = None
        if directory.exists():
            old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            directory.rename(old)
        tmp.rename(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _field(meta: Mapping[str, Any], name: str, typ: type | tuple[type, ...], path: Path) -> Any:
    if name not in meta:
        raise DataError(f"{path} has no field `{name}`.")
    value = meta[name]
    if not isinstance(value, typ) or isinstance(value, bool):
        want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise DataError(f"{path}: expected field `{name}` to be a {want}, but got {type(value).__name__}.")
    return value


def _str_list(meta: Mapping[str, Any], name: str, path: Path) -> tuple[str, ...]:
    value = _field(meta, name, list, path)
    if not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}: expected field `{name}` to be a list of strings.")
    return tuple(value)


def load_model(directory: str | Path) -> SavedModel:
    """Load a model saved by :func:`save_model` (weights checked against the recorded sha256).

    Raises:
        DataError: the directory, ``model.json``, the weights or the tokeniser is missing or
            malformed (the message names the file and field), or the weights do not match the
            architecture (missing / unexpected keys are named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / META_FILE
    if not directory.is_dir():
        raise DataError(f"Saved model directory {directory} does not exist.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{meta_path} does not exist; {directory} is not a saved trustnlp model.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object, but got {type(meta).__name__}.")
    if meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: " + expected("format", repr(FORMAT), meta.get("format")))
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: " + expected("format_version", str(FORMAT_VERSION), meta.get("format_version")))
    arch = _field(meta, "arch", str, meta_path)
    if arch not in MODELS:
        raise DataError(f"{meta_path}: " + expected("arch", f"one of {sorted(MODELS)}", arch))
    config = _field(meta, "config", dict, meta_path)
    task = _field(meta, "task", str, meta_path)
    if task not in TASKS:
        raise DataError(f"{meta_path}: " + expected("task", f"one of {list(TASKS)}", task))
    label_names = _str_list(meta, "label_names", meta_path)
    tag_names = _str_list(meta, "tag_names", meta_path)
    extra = _field(meta, "extra", dict, meta_path)
    digest = _field(meta, "weights_sha256", str, meta_path)
    tied = _field(meta, "tied", dict, meta_path)

    tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise DataError(f"Weights file {weights} does not exist.")
    if _sha256(weights) != digest:
        raise DataError(
            f"Weights file {weights} does not match the sha256 recorded in {meta_path} "
            "(the file was modified or corrupted)."
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"Weights file {weights} could not be read: {e}") from None
    try:
        model = MODELS[arch].from_config(config)
    except TrustNLPError as e:
        raise DataError(f"{meta_path}: field `config` does not describe a valid `{arch}` model: {e}") from None
    expected_keys = model.state_dict()
    aliases = _aliases(expected_keys)
    wanted = set(expected_keys) - set(aliases)
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected or set(tied) != set(aliases):
        raise DataError(
            f"Weights file {weights} does not match the `{arch}` model described in {meta_path}: "
            f"missing keys {missing[:10]}, unexpected keys {unexpected[:10]}"
            + ("" if set(tied) == set(aliases) else f", tied weights {sorted(tied)} vs {sorted(aliases)}")
            + "."
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise DataError(f"Weights file {weights} does not fit the `{arch}` model: {e}") from None
    model.eval()
    return SavedModel(model, tokenizer, arch, task, label_names, tag_names, dict(extra))
