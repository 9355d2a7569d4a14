"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory holds ``model.safetensors`` (the model's state dict), ``optimizer.safetensors``
(every tensor of the optimiser state, keyed ``state.<param index>.<name>``), ``rng.safetensors``
(torch's CPU RNG state and any extra generator states) and ``state.json`` (loop position, the
optimiser's non-tensor state and param groups, the scheduler's state, history, and a fingerprint of
the configuration). The directory is written next to its final place and renamed into it, so a
crash during a write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trustnlp.errors import DataError
from trustnlp.results import to_jsonable

__all__ = ["atomic_directory", "write_json_durable", "save_checkpoint", "load_checkpoint", "optimizer_state_to_flat", "optimizer_state_from_flat", "split_tensors", "join_tensors"]

STATE_FILE = "state.json"


def optimizer_state_to_flat(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into a flat tensor dict and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in state_dict["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().clone().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_state_from_flat(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def split_tensors(state: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split a nested state dict into (JSON-able part, flat ``{dotted.key: tensor}``)."""
    plain: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            tensors[key] = v.detach().clone().contiguous()
            plain[k] = {"__tensor__": key}
        elif isinstance(v, Mapping):
            sub_plain, sub_tensors = split_tensors(v, prefix=f"{key}.")
            plain[k] = sub_plain
            tensors.update(sub_tensors)
        else:
            plain[k] = v
    return plain, tensors


def join_tensors(plain: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(plain, Mapping):
        if set(plain) == {"__tensor__"}:
            return tensors[plain["__tensor__"]]
        return {k: join_tensors(v, tensors) for k, v in plain.items()}
    return plain


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses shared storage (tied weights); load_state_dict re-ties them.
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def atomic_directory(directory: str | Path) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary sibling to fill; on success it replaces
    ``directory`` (the previous one is moved aside first and removed after), on error it is removed
    and ``directory`` is untouched."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield tmp
        old = None
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_durable(path: Path, payload: Any) -> None:
    """Strict JSON (no NaN), flushed and fsynced (inside an :func:`atomic_directory`)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    state: Mapping[str, Any],
    generators: Mapping[str, torch.Generator] | None = None,
) -> Path:
    """Atomically write a checkpoint to ``directory`` (replacing any previous one)."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_file(_model_tensors(model), str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = optimizer_state_to_flat(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch_cpu": torch.get_rng_state()}
        for name, g in (generators or {}).items():
            rng[f"gen.{name}"] = g.get_state()
        plain_state, state_tensors = split_tensors(state)
        rng.update({f"state.{k}": v for k, v in state_tensors.items()})
        save_file(rng, str(tmp / "rng.safetensors"))
        payload = {
            "format": "trustnlp-checkpoint",
            "format_version": 1,
            "state": to_jsonable(plain_state),
            "optimizer": to_jsonable(opt_meta),
            "scheduler": to_jsonable(scheduler.state_dict()) if scheduler is not None else None,
        }
        write_json_durable(tmp / STATE_FILE, payload)
    return directory


def load_checkpoint(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Restore model, optimiser, scheduler and RNG states in place; return the loop state."""
    directory = Path(directory)
    state_path = directory / STATE_FILE
    try:
        payload = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"Checkpoint {directory} has no {STATE_FILE}; expected a trustnlp checkpoint directory.") from None
    except json.JSONDecodeError as e:
        raise DataError(f"Checkpoint file {state_path} is not valid JSON (line {e.lineno}: {e.msg}).") from None
    if payload.get("format") != "trustnlp-checkpoint":
        raise DataError(f"Checkpoint file {state_path}: expected `format` 'trustnlp-checkpoint', but got {payload.get('format')!r}.")
    weights = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise DataError(
            f"Checkpoint {directory} does not match the model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}."
        )
    optimizer.load_state_dict(optimizer_state_from_flat(load_file(str(directory / "optimizer.safetensors")), payload["optimizer"]))
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    for name, g in (generators or {}).items():
        if f"gen.{name}" in rng:
            g.set_state(rng[f"gen.{name}"])
    state_tensors = {k[len("state."):]: v for k, v in rng.items() if k.startswith("state.")}
    return dict(join_tensors(payload["state"], state_tensors))
