"""Round checkpoints of a federated run: safetensors for tensors, JSON for the rest (no pickle).

``<dir>/checkpoint/`` holds ``model.safetensors`` (the global model's state dict),
``server.safetensors`` (the server optimiser's tensors and torch's CPU RNG state) and
``state.json`` (round, rows, the optimiser state's non-tensor part, the local-training path,
fingerprint). It is written next to its place and renamed into it, so a crash never leaves a
half-written checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trustnlp.checkpoint import atomic_directory, join_tensors, split_tensors, write_json_durable
from trustnlp.errors import DataError
from trustnlp.results import to_jsonable

__all__ = ["save_round", "load_round", "FORMAT"]

FORMAT = "trustnlp-federated-checkpoint"


def save_round(directory: Path, *, model: torch.nn.Module, opt_state: Mapping[str, Any], state: Mapping[str, Any]) -> Path:
    """Atomically write the checkpoint of a finished round to ``directory``."""
    with atomic_directory(directory) as tmp:
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        plain_opt, opt_tensors = split_tensors(opt_state)
        tensors = {f"opt.{k}": v for k, v in opt_tensors.items()}
        tensors["rng.torch_cpu"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "server.safetensors"))
        payload = {"format": FORMAT, "format_version": 1, "state": to_jsonable(dict(state)), "opt_state": to_jsonable(plain_opt)}
        write_json_durable(tmp / "state.json", payload)
    return directory


def load_round(directory: Path, *, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the model and torch's RNG; return ``(state, opt_state)``."""
    path = directory / "state.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"Checkpoint file {path} is not valid JSON (line {e.lineno}: {e.msg}).") from None
    if payload.get("format") != FORMAT:
        raise DataError(f"Checkpoint file {path}: expected `format` {FORMAT!r}, but got {payload.get('format')!r}.")
    weights = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise DataError(f"Checkpoint {directory} does not match the model: missing keys {missing[:5]}, "
                        f"unexpected keys {unexpected[:5]}.")
    tensors = load_file(str(directory / "server.safetensors"))
    torch.set_rng_state(tensors["rng.torch_cpu"])
    opt_tensors = {k[len("opt."):]: v for k, v in tensors.items() if k.startswith("opt.")}
    return dict(payload["state"]), dict(join_tensors(payload["opt_state"], opt_tensors))
