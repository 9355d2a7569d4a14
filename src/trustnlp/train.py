"""The one training loop every trustnlp capability uses.

``fit`` trains a model for a number of epochs (or optimiser steps) on an
:class:`~trustnlp.tasks.EncodedData`, with:

- seeded shuffling: epoch ``e`` visits examples in ``randperm(N)`` drawn from a generator seeded
  with ``(seed, e)``, so a run resumed mid-epoch sees exactly the batches it would have seen;
- logical batches of ``batch_size`` processed as physical batches that fit in memory (gradients
  are accumulated as ``sum of per-example losses / logical batch size``, so the update does not
  depend on the physical split); the *memory guard* finds the largest physical batch that runs;
- an optimiser (AdamW, Adam, SGD with momentum) and a schedule (constant, linear or cosine decay
  after linear warm-up);
- evaluation on a validation split every ``eval_every`` epochs, a progress bar, callbacks;
- checkpoints (safetensors + JSON, see :mod:`trustnlp.checkpoint`) after each epoch and every
  ``checkpoint_every`` steps; ``fit`` resumes from one and the result is bitwise equal to an
  uninterrupted run (parameters, optimiser state and RNG state).

Later capabilities plug in through ``step_fn``: a callable that, given the model and the logical
batch, leaves gradients in ``p.grad`` (DP-SGD replaces the plain accumulate-and-average step).

Device and precision (``config.device`` / ``config.precision``, see :mod:`trustnlp.devices`): the
model and the training data move to the device; ``step_fn`` and evaluation receive the model
wrapped in a :class:`~trustnlp.devices.DeviceModel` (forward under ``torch.autocast`` for mixed
precision, float32 outputs), so the loss and the parameters, gradients and optimiser state stay
float32. ``16`` (float16) adds loss scaling (``GradScaler``) to the default step; it is refused for
other steps (DP-SGD's clipping backward cannot be scaled: use ``bf16``). When ``step_fn`` clips
per example (it has a ``clipper``), the layers it records exchange float32 tensors
(:func:`~trustnlp.devices.fp32_boundary`) so per-example norms are computed in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from trustnlp.checkpoint import load_checkpoint, save_checkpoint
from trustnlp.config import TrainConfig
from trustnlp.devices import DeviceModel, fp32_boundary, loss_scaler, move_tensors, resolve_device
from trustnlp.errors import ConfigError, TrustNLPError
from trustnlp.runtime import tune_allocator
from trustnlp.tasks import EncodedData, Task

__all__ = [
    "fit", "FitResult", "Callback", "BatchSampler", "ShuffleSampler", "StopTraining",
    "make_optimizer", "make_scheduler", "find_physical_batch_size", "is_oom_error",
]


class Callback(Protocol):
    """Hooks into the loop; every method is optional."""

    def on_step_end(self, step: int, logs: dict[str, float]) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...


StepFn = Callable[[torch.nn.Module, Task, dict[str, torch.Tensor], int, int], float]


@dataclass(frozen=True)
class FitResult:
    """What a training run did.

    Attributes:
        history: one row per epoch (``epoch``, ``step``, ``train_loss``, ``val_*``, ``seconds``).
        steps: optimiser steps taken in total.
        epochs: epochs completed.
        train_seconds: wall time spent training in this process (excludes time before a resume).
        seconds_per_epoch: mean wall time of the epochs run in this process.
        physical_batch_size: the physical batch size used.
        resumed_from_step: the checkpoint step training resumed from, or ``None``.
    """

    history: tuple[dict[str, Any], ...]
    steps: int
    epochs: int
    train_seconds: float
    seconds_per_epoch: float
    physical_batch_size: int
    resumed_from_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_optimizer(model: torch.nn.Module, *, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("The model has no trainable parameters (every parameter has requires_grad=False).")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ConfigError(f"Expected `optimizer` to be one of ['adamw', 'adam', 'sgd'], but got {name!r}.")


def make_scheduler(optimizer: torch.optim.Optimizer, *, name: str, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio * total_steps`` steps, then constant / linear / cosine decay."""
    warmup = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if name == "linear":
            return max(0.0, 1.0 - progress)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ConfigError(f"Expected `scheduler` to be one of ['constant', 'linear', 'cosine'], but got {name!r}.")

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def is_oom_error(err: BaseException) -> bool:
    """Whether an exception is an out-of-memory failure (CPU or accelerator)."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    msg = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _accumulate(model: torch.nn.Module, task: Task, batch: dict[str, torch.Tensor], logical_size: int, physical: int,
                *, scaler: torch.amp.GradScaler | None = None) -> float:
    """Default step: sum-of-losses / logical size, accumulated over physical batches. Returns the mean loss.

    With a ``scaler`` (float16 mixed precision) the backward runs on the scaled loss.
    """
    n = batch["input_ids"].shape[0]
    if n == 0:  # an empty logical batch (Poisson sampling): no gradient, the optimiser step is a no-op
        return float("nan")
    total = 0.0
    for start in range(0, n, physical):
        part = {k: v[start : start + physical] for k, v in batch.items()}
        mask = part["attention_mask"]
        t = int(mask.sum(dim=1).max())
        part = {k: (v[:, :t] if v.dim() == 2 else v) for k, v in part.items()}
        out = model(part["input_ids"], part["attention_mask"])
        loss = task.loss(out, part, reduction="sum")
        part_loss = loss / logical_size
        (scaler.scale(part_loss) if scaler is not None else part_loss).backward()
        total += float(loss.detach())
    return total / n


def find_physical_batch_size(
    model: torch.nn.Module,
    task: Task,
    data: EncodedData,
    *,
    start: int,
    step_fn: StepFn = _accumulate,
    minimum: int = 1,
) -> int:
    """The memory guard: the largest physical batch (halving from ``start``) whose step runs.

    It probes with the longest inputs of ``data`` (the worst case), on a copy of the RNG state (of
    the CPU and of the data's CUDA device) so that probing does not change the run, and clears the
    gradients it made.
    """
    where = data.input_ids.device
    cuda = [where.index if where.index is not None else torch.cuda.current_device()] if where.type == "cuda" else []
    lengths = data.attention_mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    size = max(minimum, start)
    while True:
        idx = order[: min(size, len(data))]
        batch = data.batch(idx)
        try:
            with torch.random.fork_rng(devices=cuda):
                model.train()
                step_fn(model, task, batch, len(idx), size)
            return size
        except Exception as err:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not is_oom_error(err):
                raise
            if cuda:
                torch.cuda.empty_cache()
            if size <= minimum:
                raise TrustNLPError(
                    f"Out of memory even with a physical batch of {size} example(s) of {int(lengths.max())} tokens. "
                    "Use a smaller model, a smaller `max_length`, or a machine with more memory."
                ) from err
            size = max(minimum, size // 2)
        finally:
            model.zero_grad(set_to_none=True)


def _fingerprint(config: TrainConfig) -> str:
    # the device is where a run executes, not what it computes: a checkpoint may resume elsewhere
    keep = config.model_dump(exclude={"eval_every", "checkpoint_every", "threads", "device"})
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


class BatchSampler(Protocol):
    """Which examples each logical step sees: ``epoch(e)`` yields index tensors, deterministically in
    ``(seed, e)``, so a resumed run can skip the batches it already did. DP-SGD's Poisson sampler
    implements the same protocol (its batches vary in size and may be empty)."""

    steps_per_epoch: int

    def epoch(self, e: int) -> Iterator[torch.Tensor]: ...


class ShuffleSampler:
    """Fixed-size batches of a fresh random permutation per epoch (``randperm`` seeded by ``(seed, epoch)``)."""

    def __init__(self, num_examples: int, *, batch_size: int, seed: int) -> None:
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = math.ceil(num_examples / batch_size)

    def epoch(self, e: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(e))
        order = torch.randperm(self.num_examples, generator=g)
        for b in range(self.steps_per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


class StopTraining(Exception):
    """Raised by a step function *before* it changes anything, to end training cleanly (e.g. the
    privacy budget would be exceeded by the next step). ``fit`` checkpoints and returns."""


def default_lr(model: torch.nn.Module) -> float:
    """The architecture's default learning rate (pretrained encoders fine-tune gently; LoRA adapters
    and frozen encoders' heads train faster)."""
    arch = getattr(model, "arch", "")
    config = getattr(model, "config", None)
    config = config if isinstance(config, dict) else {}
    trainable = config.get("trainable", (config.get("encoder_options") or {}).get("trainable", "full"))
    if arch in {"minilm", "hf"} or (arch == "joint" and config.get("encoder") == "minilm"):
        if trainable == "lora":  # adapters start at zero and are small: they take larger steps (Hu et al. 2022)
            return 5e-4
        return 1e-3 if trainable == "frozen" else 5e-5
    if arch == "bag":  # one embedding table and a linear layer: learns slowly at 1e-3
        return 5e-3
    return 1e-3


def fit(
    model: torch.nn.Module,
    task: Task,
    train_data: EncodedData,
    *,
    config: TrainConfig,
    validation: EncodedData | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    step_fn: StepFn = _accumulate,
    progress: bool = True,
    stop_after_steps: int | None = None,
    sampler: BatchSampler | None = None,
) -> FitResult:
    """Train ``model`` on ``train_data`` for ``config.epochs`` epochs (or ``config.max_steps`` steps).

    Args:
        model: any module ``model(input_ids, attention_mask) -> outputs`` understood by ``task``.
        task: loss and metrics.
        train_data: the encoded training split.
        config: the run configuration (seed, optimiser, schedule, batch sizes, device, precision, ...).
        validation: evaluated every ``config.eval_every`` epochs.
        callbacks: objects with optional ``on_step_end`` / ``on_epoch_end``.
        checkpoint_dir: where checkpoints go; when it holds a checkpoint of the same configuration,
            training resumes from it.
        step_fn: computes the gradients of one logical batch (DP-SGD plugs in here). When it has
            ``state_dict()`` / ``load_state_dict()`` (noise generator, privacy ledger), that state
            is checkpointed with the rest.
        progress: show a progress bar.
        stop_after_steps: stop (after checkpointing) once this many steps are done in total — to
            simulate an interruption in tests.
        sampler: which examples each step sees (default: shuffled fixed-size batches).

    Returns:
        A :class:`FitResult` with the per-epoch history (``extra`` records the device and precision).

    Raises:
        ConfigError: the device is not available here, or the precision is not supported on it or
            with this ``step_fn``.
    """
    if len(train_data) == 0:
        raise ConfigError("Expected a non-empty training set, but got 0 examples.")
    if config.threads:
        torch.set_num_threads(config.threads)
    tune_allocator()  # keep freed tensor memory: no per-step page faults (trustnlp.runtime)
    device = resolve_device(config.device)
    scaler = loss_scaler(config.precision, device, private=_clips_per_example(step_fn), default_step=step_fn is _accumulate)
    if scaler is not None:
        step_fn = _scaled_accumulate(scaler)
    model.to(device)
    runner = DeviceModel(model, device=device, precision=config.precision)
    train_data = move_tensors(train_data, device)
    boundary = fp32_boundary(model) if runner.dtype is not None and _clips_per_example(step_fn) else contextlib.nullcontext()
    with boundary:
        fitted = _fit(runner, task, train_data, config=config, validation=validation, callbacks=callbacks,
                      checkpoint_dir=checkpoint_dir, step_fn=step_fn, progress=progress,
                      stop_after_steps=stop_after_steps, sampler=sampler, scaler=scaler)
    return dataclasses.replace(fitted, extra={**fitted.extra, "device": str(device), "precision": config.precision})


def _scaled_accumulate(scaler: torch.amp.GradScaler) -> StepFn:
    def step(model: torch.nn.Module, task: Task, batch: dict[str, torch.Tensor], logical: int, physical: int) -> float:
        return _accumulate(model, task, batch, logical, physical, scaler=scaler)

    return step


def _clips_per_example(step_fn: Any) -> bool:
    """Whether ``step_fn`` clips per-example gradients (DP-SGD's step has a ``clipper``)."""
    return getattr(step_fn, "clipper", None) is not None


def _fit(
    model: DeviceModel,
    task: Task,
    train_data: EncodedData,
    *,
    config: TrainConfig,
    validation: EncodedData | None,
    callbacks: Sequence[Callback],
    checkpoint_dir: str | Path | None,
    step_fn: StepFn,
    progress: bool,
    stop_after_steps: int | None,
    sampler: BatchSampler | None,
    scaler: torch.amp.GradScaler | None,
) -> FitResult:
    """The loop of :func:`fit`, on a model already placed on its device."""
    device = model.device
    generators = {"cuda": torch.cuda.default_generators[device.index or 0]} if device.type == "cuda" else {}
    n = len(train_data)
    sampler = sampler or ShuffleSampler(n, batch_size=config.batch_size, seed=config.seed)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    lr = config.lr or default_lr(model.model)
    optimizer = make_optimizer(model, name=config.optimizer, lr=lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, name=config.scheduler, total_steps=total_steps, warmup_ratio=config.warmup_ratio)

    fingerprint = _fingerprint(config)
    ckpt = Path(checkpoint_dir) / "checkpoint" if checkpoint_dir is not None else None
    step, epoch, history, resumed = 0, 0, [], None
    carried = (0.0, 0)  # running (loss sum, examples) of a part-done epoch, restored on resume
    if ckpt is not None and (ckpt / "state.json").exists():
        state = load_checkpoint(ckpt, model=model.model, optimizer=optimizer, scheduler=scheduler, generators=generators)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if hasattr(step_fn, "load_state_dict") and state.get("step_fn") is not None:
            step_fn.load_state_dict(state["step_fn"])
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(
                f"The checkpoint in {ckpt} was written by a different configuration (fingerprint "
                f"{state.get('fingerprint')} != {fingerprint}). Use a new --out directory or delete the checkpoint."
            )
        step, epoch, history, resumed = int(state["step"]), int(state["epoch"]), list(state["history"]), int(state["step"])
        carried = (float(state.get("epoch_loss_sum", 0.0)), int(state.get("epoch_loss_n", 0)))

    probe = getattr(step_fn, "probe", step_fn)  # a DP step probes without noise or accounting
    physical = config.physical_batch_size or find_physical_batch_size(model, task, train_data, start=config.batch_size, step_fn=probe)
    physical = min(physical, config.batch_size)

    def checkpoint(epoch_now: int, loss_sum: float = 0.0, loss_n: int = 0) -> None:
        if ckpt is not None:
            save_checkpoint(
                ckpt, model=model.model, optimizer=optimizer, scheduler=scheduler, generators=generators,
                state={"step": step, "epoch": epoch_now, "history": history, "fingerprint": fingerprint,
                       "epoch_loss_sum": loss_sum, "epoch_loss_n": loss_n,
                       "step_fn": step_fn.state_dict() if hasattr(step_fn, "state_dict") else None,
                       "scaler": scaler.state_dict() if scaler is not None else None},
            )

    started = time.perf_counter()
    epoch_times: list[float] = []
    bar = tqdm(total=total_steps, initial=step, desc=f"train {getattr(model.model, 'arch', '')}", unit="step", disable=None if progress else True, leave=False)
    try:
        while step < total_steps:
            first = step - epoch * steps_per_epoch  # batches of this epoch already done (resume)
            t0 = time.perf_counter()
            model.train()
            loss_sum, loss_n = carried if first > 0 else (0.0, 0)
            carried = (0.0, 0)
            for b, idx in enumerate(sampler.epoch(epoch)):
                if b < first:
                    continue
                if step >= total_steps:
                    break
                batch = train_data.batch(idx)
                optimizer.zero_grad(set_to_none=True)
                try:
                    loss = step_fn(model, task, batch, len(idx), physical)
                except StopTraining as stop:
                    stopped = str(stop)
                    checkpoint(epoch, loss_sum, loss_n)
                    return _result(history, step, epoch, started, epoch_times, physical, resumed, lr, stopped=stopped)
                if len(idx) and not math.isfinite(loss):
                    raise TrustNLPError(f"The training loss became {loss} at step {step + 1}; lower the learning rate (lr={lr}).")
                stepped = True
                if scaler is not None:
                    if config.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    scale = scaler.get_scale()
                    scaler.step(optimizer)  # skipped, and the scale lowered, when a gradient overflowed
                    scaler.update()
                    stepped = scaler.get_scale() >= scale
                else:
                    if config.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    optimizer.step()
                if stepped:  # the schedule follows the updates actually made
                    scheduler.step()
                step += 1
                if len(idx):
                    loss_sum += loss * len(idx)
                    loss_n += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
                for cb in callbacks:
                    if hasattr(cb, "on_step_end"):
                        cb.on_step_end(step, {"loss": loss, "lr": float(scheduler.get_last_lr()[0])})
                mid_epoch = b + 1 < steps_per_epoch and step < total_steps
                if config.checkpoint_every and step % config.checkpoint_every == 0 and mid_epoch:
                    checkpoint(epoch, loss_sum, loss_n)
                if stop_after_steps is not None and step >= stop_after_steps and mid_epoch:
                    checkpoint(epoch, loss_sum, loss_n)
                    return _result(history, step, epoch, started, epoch_times, physical, resumed, lr, interrupted=True)
            epoch += 1
            epoch_times.append(time.perf_counter() - t0)
            row: dict[str, Any] = {
                "epoch": epoch, "step": step,
                "train_loss": loss_sum / loss_n if loss_n else None,
                "seconds": epoch_times[-1],
            }
            if validation is not None and len(validation) and config.eval_every and (epoch % config.eval_every == 0 or step >= total_steps):
                row.update({f"val_{k}": v for k, v in task.evaluate(model, validation).items()})
            history.append(row)
            for cb in callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(epoch, row)
            checkpoint(epoch)
            if stop_after_steps is not None and step >= stop_after_steps and step < total_steps:
                return _result(history, step, epoch, started, epoch_times, physical, resumed, lr, interrupted=True)
    finally:
        bar.close()
    return _result(history, step, epoch, started, epoch_times, physical, resumed, lr)


def _result(history: list, step: int, epoch: int, started: float, epoch_times: list[float], physical: int,
            resumed: int | None, lr: float, interrupted: bool = False, stopped: str | None = None) -> FitResult:
    return FitResult(
        history=tuple(history),
        steps=step,
        epochs=epoch,
        train_seconds=time.perf_counter() - started,
        seconds_per_epoch=sum(epoch_times) / len(epoch_times) if epoch_times else float("nan"),
        physical_batch_size=physical,
        resumed_from_step=resumed,
        extra={"interrupted": interrupted, "lr": lr, "stopped": stopped},
    )
