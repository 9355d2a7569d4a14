"""Train the target and shadow models of a membership-inference audit and score the population.

Every model of an audit is trained with **one recipe** (a :class:`~trustnlp.config.TrainConfig`:
architecture, optimiser, schedule, epochs, and for a private target the same epsilon, delta,
clipping and sampling — private targets get private shadows) on its own subset of a *population*
(``masks[m, i]``: model ``m`` trains on example ``i``), from its own seed (initialisation,
batches, dropout and DP noise). After training, each model gives the logit-scaled confidence
``phi = log(p_y / (1 - p_y))`` (:func:`~trustnlp.privacy.attacks.membership.logit_confidence`) and the
loss of **every** population example: the inputs of LiRA (Carlini et al. 2022, "Membership inference
attacks from first principles") and of the loss attacks.

Three paths train the same models (same seeds -> same parameters, tested):

- ``plain``: each model alone, through the one training loop :func:`trustnlp.train.fit` (DP via
  :func:`~trustnlp.privacy.training.plan_private_training`);
- ``features``: for a frozen encoder (MiniLM ``trainable="frozen"``) the population is encoded
  **once** and each model trains only its head on the features (:mod:`._features`), private or not;
- ``batched``: small models with every parameter trainable, non-private, trained ``K`` at once
  (stacked parameters, ``torch.func.vmap``; :mod:`._batched`).

``path="auto"`` takes ``features`` where it applies, else ``batched`` for non-private small models
(groups of up to :data:`BATCH_BUDGET` parameters; larger models train faster one at a time),
else ``plain``. With ``store`` every finished model is saved (``<store>/<name>.safetensors``: its
trainable parameters, ``phi`` and losses, a fingerprint of everything that determines it), so a
rerun skips it; a file written by a different recipe, population or mask is refused.

A frozen encoder runs in eval mode in every path (a fixed feature map; see :mod:`._features`).

Example:
    >>> from trustnlp.config import TrainConfig
    >>> runs = train_models(template, task, population, masks, config=TrainConfig(epochs=2),
    ...                     seeds=[1, 2], names=["shadow-0", "shadow-1"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import special
from torch import nn
from tqdm.auto import tqdm

from trustnlp.config import TrainConfig
from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.privacy.attacks._batched import batch_refusal, train_batched
from trustnlp.privacy.attacks._features import (
    FeatureHead,
    FrozenEncoderModel,
    encode_features,
    feature_data,
    has_frozen_encoder,
)
from trustnlp.privacy.attacks.membership import logit_confidence
from trustnlp.tasks import EncodedData, Task

__all__ = ["BATCH_BUDGET", "PATHS", "ModelRun", "batch_group_size", "derive_seed", "fresh_model", "resolve_path", "train_models"]

PATHS = ("auto", "plain", "features", "batched")
BATCH_BUDGET = 2_000_000  # parameters trained together by the batched path (see batch_group_size)
_PRIVATE_KEYS = ("epsilon", "target_epsilon", "delta", "accountant", "noise_multiplier", "max_grad_norm",
                 "clipping", "sampling_rate", "dp_steps", "planned_steps")


@dataclass(frozen=True)
class ModelRun:
    """One trained model of an audit.

    Attributes:
        name: e.g. ``"target"`` or ``"shadow-3"``.
        seed: the model's seed (initialisation, batches, dropout, DP noise).
        path: how it was trained (``plain`` / ``features`` / ``batched``; ``stored`` when loaded).
        confidences: ``phi`` of every population example ``[N]`` (float64).
        losses: cross-entropy of every population example ``[N]`` (float64).
        stats: ``n_train``, ``steps``, ``seconds``; for private models ``epsilon`` (spent), ``delta``,
            ``noise_multiplier``, ...; ``test_accuracy`` when evaluation data was given.
        parameters: the trained (trainable) parameters, when asked for.
    """

    name: str
    seed: int
    path: str
    confidences: np.ndarray
    losses: np.ndarray
    stats: Mapping[str, Any]
    parameters: Mapping[str, torch.Tensor] | None = None


def derive_seed(seed: int, *labels: object) -> int:
    """A 31-bit seed derived from ``seed`` and labels (e.g. ``("shadow", 3)``), stable across runs."""
    text = "trustnlp.audit:" + ":".join(str(x) for x in (seed, *labels))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def _pretrained(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return isinstance(config, Mapping) and ("encoder_name" in config or "encoder_config" in config)


def fresh_model(template: nn.Module, seed: int) -> nn.Module:
    """A new model of ``template``'s recipe, initialised from ``seed``.

    Small models are rebuilt from their config under ``torch.manual_seed(seed)``. Models over a
    pretrained encoder keep the template's encoder weights (the pretrained initialisation) and get a
    new head (``head.reset_parameters()`` under the seed), without reloading the encoder.
    """
    dtype = next(template.parameters()).dtype
    if _pretrained(template):
        model = copy.deepcopy(template)
        torch.manual_seed(seed)
        model.head.reset_parameters()  # type: ignore[union-attr,operator]
        return model
    if not hasattr(template, "from_config"):
        raise ConfigError(expected("template", "a trustnlp model (with `config` and `from_config`)",
                                   type(template).__name__))
    torch.manual_seed(seed)
    return template.from_config(template.config).to(dtype)  # type: ignore[operator]


def batch_group_size(template: nn.Module) -> int:
    """How many models the batched path trains at once: as many as keep ``BATCH_BUDGET`` parameters together.

    The batched optimiser streams all stacked parameters every step; beyond a few million
    (e.g. 16 bags over the 30,522-word WordPiece vocabulary, 62M parameters) the stacked working set
    falls out of cache and one model at a time is faster (measured in ``benchmarks/shadow_training.py``).
    """
    per_model = sum(p.numel() for p in template.parameters())
    return max(1, BATCH_BUDGET // max(1, per_model))


def resolve_path(template: nn.Module, config: TrainConfig, path: str = "auto") -> str:
    """The path ``path`` means for this model and recipe; an impossible choice is a :class:`ConfigError`."""
    if path not in PATHS:
        raise ConfigError(expected("path", f"one of {list(PATHS)}", path))
    frozen = has_frozen_encoder(template)
    refusal = batch_refusal(template, config)
    if path == "auto":
        if frozen:
            return "features"
        return "batched" if refusal is None and batch_group_size(template) >= 2 else "plain"
    if path == "features" and not frozen:
        raise ConfigError("The features path needs a frozen encoder with a linear head (e.g. MiniLM "
                          f"trainable='frozen'); model `{getattr(template, 'arch', '?')}` trains other parameters.")
    if path == "batched" and refusal is not None:
        raise ConfigError(f"Cannot use path='batched': {refusal}.")
    return path


# -- scoring -----------------------------------------------------------------------------------------


def _statistics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    z = logits.detach().to("cpu", torch.float64).numpy()
    y = labels.cpu().numpy()
    loss = special.logsumexp(z, axis=-1) - np.take_along_axis(z, y[:, None], axis=-1)[:, 0]
    return logit_confidence(z, y), loss


@torch.no_grad()
def _logits(model: nn.Module, data: EncodedData, *, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = [model(b["input_ids"].to(device), b["attention_mask"].to(device)).to("cpu", torch.float64)
           for b in data.batches(batch_size)]
    return torch.cat(out)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).double().mean())


# -- training one model -------------------------------------------------------------------------------


def _subset(data: EncodedData, index: torch.Tensor) -> EncodedData:
    return EncodedData(data.input_ids[index], data.attention_mask[index],
                       None if data.labels is None else data.labels[index], None, 0)


def _fit(net: nn.Module, task: Task, data: EncodedData, config: TrainConfig) -> dict[str, Any]:
    from trustnlp.train import fit

    extra: dict[str, Any] = {}
    plan = None
    if config.dp:
        from trustnlp.privacy.training import plan_private_training

        if config.privacy_unit != "example":
            raise ConfigError(expected("privacy_unit", "'example' for a membership audit (one example is one "
                                       "member)", config.privacy_unit))
        plan = plan_private_training(config, net, num_examples=len(data), data=data)
        extra = {"step_fn": plan.step, "sampler": plan.sampler}
    fitted = fit(net, task, data, config=config, progress=False, **extra)
    stats: dict[str, Any] = {"n_train": len(data), "steps": fitted.steps, "seconds": fitted.train_seconds}
    if plan is not None:
        from trustnlp.privacy.training import privacy_metrics

        metrics = privacy_metrics(plan, config)
        stats.update({k: metrics.get(k) for k in _PRIVATE_KEYS})
        if fitted.extra.get("stopped"):
            stats["stopped_early"] = fitted.extra["stopped"]
    return stats


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _run(name: str, seed: int, path: str, logits: torch.Tensor, population: EncodedData, stats: dict[str, Any],
         params: dict[str, torch.Tensor], test_logits: torch.Tensor | None, test: EncodedData | None) -> ModelRun:
    assert population.labels is not None
    phi, loss = _statistics(logits, population.labels)
    if test_logits is not None and test is not None and test.labels is not None:
        stats = {**stats, "test_accuracy": _accuracy(test_logits, test.labels)}
    return ModelRun(name=name, seed=seed, path=path, confidences=phi, losses=loss, stats=stats, parameters=params)


def _plain(template: nn.Module, task: Task, population: EncodedData, index: torch.Tensor, config: TrainConfig,
           name: str, seed: int, test: EncodedData | None) -> ModelRun:
    model = fresh_model(template, seed)
    net = FrozenEncoderModel(model) if has_frozen_encoder(model) else model
    stats = _fit(net, task, _subset(population, index), config)
    net.eval()
    logits = _logits(net, population)
    test_logits = _logits(net, test) if test is not None else None
    model.to("cpu")
    return _run(name, seed, "plain", logits, population, stats, _trainable(model), test_logits, test)


class _Features:
    """The population (and test) encoded once by the template's frozen encoder."""

    def __init__(self, template: nn.Module, population: EncodedData, test: EncodedData | None) -> None:
        self.template = template
        self.population = encode_features(template, population)
        self.test = encode_features(template, test) if test is not None else None

    def train(self, task: Task, population: EncodedData, index: torch.Tensor, config: TrainConfig, name: str,
              seed: int, test: EncodedData | None) -> ModelRun:
        t = self.template
        head = copy.deepcopy(t.head)
        torch.manual_seed(seed)  # as fresh_model: the same draws for the head
        head.reset_parameters()  # type: ignore[operator]
        net = FeatureHead(self.population, head, copy.deepcopy(t.dropout), arch=getattr(t, "arch", ""),  # type: ignore[arg-type]
                          config=getattr(t, "config", {}))
        assert population.labels is not None
        stats = _fit(net, task, feature_data(index, population.labels[index]), config)
        net.to("cpu").eval()
        with torch.no_grad():
            logits = net.head(self.population)
            test_logits = net.head(self.test) if self.test is not None else None
        return _run(name, seed, "features", logits, population, stats, _trainable(net), test_logits, test)


# -- the store ------------------------------------------------------------------------------------------


def _digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(b"none" if t is None else t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _fingerprint(name: str, config: TrainConfig, template: nn.Module, mask: np.ndarray, data_digest: str) -> str:
    body = {"name": name, "config": config.model_dump(), "arch": getattr(template, "arch", type(template).__name__),
            "template": getattr(template, "config", None), "dtype": str(next(template.parameters()).dtype),
            "mask": hashlib.sha256(np.packbits(mask).tobytes()).hexdigest(), "data": data_digest}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _save(file: Path, run: ModelRun, fingerprint: str) -> None:
    from safetensors.torch import save_file

    tensors = {"confidences": torch.from_numpy(run.confidences), "losses": torch.from_numpy(run.losses)}
    tensors.update({f"param.{k}": v.contiguous() for k, v in (run.parameters or {}).items()})
    meta = {"format": "trustnlp-audit-model", "fingerprint": fingerprint, "name": run.name, "seed": str(run.seed),
            "path": run.path, "stats": json.dumps(run.stats, default=str)}
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load(file: Path, fingerprint: str, keep_parameters: bool) -> ModelRun | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not file.exists():
        return None
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("fingerprint") != fingerprint:
        raise ConfigError(f"The stored model {file} was trained by a different recipe, population or inclusion mask "
                          f"(fingerprint {meta.get('fingerprint')} != {fingerprint}). Use a new --out directory or "
                          "delete it.")
    tensors = load_file(str(file))
    params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")} if keep_parameters else None
    return ModelRun(name=meta["name"], seed=int(meta["seed"]), path="stored",
                    confidences=tensors["confidences"].numpy(), losses=tensors["losses"].numpy(),
                    stats={**json.loads(meta["stats"]), "trained_by": meta["path"]}, parameters=params)


# -- many models ------------------------------------------------------------------------------------------


def _check(population: EncodedData, masks: object, seeds: Sequence[int], names: Sequence[str]) -> np.ndarray:
    if population.labels is None:
        raise DataError("Expected a labelled population (membership scores need each example's label).")
    m = np.asarray(masks)
    n = len(population)
    if m.ndim != 2 or m.shape[1] != n or m.dtype != np.bool_:
        raise DataError(expected("masks", f"a boolean array of shape [M, {n}]", f"{m.dtype} of shape {m.shape}"))
    if len(seeds) != m.shape[0] or len(names) != m.shape[0] or len(set(names)) != len(names):
        raise ConfigError(f"Expected one seed and one distinct name per model ({m.shape[0]}), but got "
                          f"{len(seeds)} seeds and names {list(names)}.")
    empty = np.flatnonzero(m.sum(axis=1) == 0)
    if empty.size:
        raise DataError(f"Expected every model to train on at least one example, but model {names[int(empty[0])]!r} "
                        "has none.")
    return m


def train_models(template: nn.Module, task: Task, population: EncodedData, masks: object, *, config: TrainConfig,
                 seeds: Sequence[int], names: Sequence[str], path: str = "auto", test: EncodedData | None = None,
                 store: str | Path | None = None, keep_parameters: bool = False,
                 progress: bool = True) -> list[ModelRun]:
    """Train model ``m`` on the population examples with ``masks[m]`` and score every example.

    Args:
        template: the architecture (and, for a pretrained encoder, its weights); never trained itself.
        task: the classification task.
        population: the encoded population ``[N]`` (labelled).
        masks: ``[M, N]`` boolean inclusion masks.
        config: the training recipe shared by all models (its ``seed`` is replaced by ``seeds[m]``).
        seeds: one seed per model.
        names: one distinct name per model (store file names).
        path: ``auto`` | ``plain`` | ``features`` | ``batched`` (module docstring).
        test: held-out data; each model's ``stats["test_accuracy"]`` is measured on it.
        store: folder where finished models are saved and found again on a rerun.
        keep_parameters: return the trained parameters in each :class:`ModelRun`.
        progress: show progress bars.

    Returns:
        One :class:`ModelRun` per model, in the order of ``masks``.
    """
    m = _check(population, masks, seeds, names)
    chosen = resolve_path(template, config, path)
    configs = [config.model_copy(update={"seed": int(s)}) for s in seeds]
    data_digest = _digest(population.input_ids, population.attention_mask, population.labels,
                          None if test is None else test.input_ids, None if test is None else test.labels)
    prints = [_fingerprint(nm, c, template, row, data_digest) for nm, c, row in zip(names, configs, m)]
    files = [Path(store) / f"{nm}.safetensors" if store is not None else None for nm in names]
    runs: list[ModelRun | None] = [
        _load(f, fp, keep_parameters) if f is not None else None for f, fp in zip(files, prints)]
    todo = [i for i, r in enumerate(runs) if r is None]
    index = [torch.from_numpy(np.flatnonzero(row)) for row in m]

    def finish(i: int, run: ModelRun) -> None:
        if files[i] is not None:
            _save(files[i], run, prints[i])
        runs[i] = run if keep_parameters else ModelRun(**{**run.__dict__, "parameters": None})

    if todo and chosen == "batched":
        size = batch_group_size(template)
        for start in range(0, len(todo), size):
            group = todo[start : start + size]
            models = [fresh_model(template, int(seeds[i])) for i in group]
            stats = train_batched(models, task, population, [index[i] for i in group],
                                  configs=[configs[i] for i in group], progress=progress)
            for i, model, st in zip(group, models, stats):
                logits = _logits(model, population)
                test_logits = _logits(model, test) if test is not None else None
                finish(i, _run(names[i], int(seeds[i]), "batched", logits, population,
                               {"n_train": len(index[i]), **st}, _trainable(model), test_logits, test))
    elif todo:
        features = _Features(template, population, test) if chosen == "features" else None
        bar = tqdm(todo, desc=f"train {getattr(template, 'arch', 'model')} ({chosen})", unit="model",
                   disable=None if progress else True, leave=False)
        for i in bar:
            bar.set_postfix(model=names[i])
            if features is not None:
                run = features.train(task, population, index[i], configs[i], names[i], int(seeds[i]), test)
            else:
                run = _plain(template, task, population, index[i], configs[i], names[i], int(seeds[i]), test)
            finish(i, run)
    return [r for r in runs if r is not None]
