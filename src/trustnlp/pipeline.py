"""End-to-end runs shared by the CLI and the Python API: train, evaluate, predict.

``run_train`` loads data, picks the tokenizer, builds the model, trains it with the one loop,
evaluates it, saves it (safetensors + JSON) and writes ``results.json`` in the results envelope.

Example:
    >>> from trustnlp.config import TrainConfig
    >>> result = run_train(TrainConfig(data="assistant", model="bag", epochs=1), "runs/doc")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustnlp.config import DataConfig, TrainConfig
from trustnlp.data.dataset import DatasetSplits, TextDataset
from trustnlp.errors import ConfigError, DataError
from trustnlp.results import Result, write_result
from trustnlp.tasks import Task, make_task
from trustnlp.train import FitResult, fit

__all__ = ["load_splits", "make_tokenizer", "run_train", "run_evaluate", "predict", "Prediction", "MAX_LENGTH_CAP"]

MAX_LENGTH_CAP = 128
NON_PRIVATE_REASON = "non-private run: no differential-privacy guarantee (epsilon is infinite)"
_WORDPIECE_ONLY = {"minilm"}


def load_splits(config: DataConfig, *, seed: int) -> DatasetSplits:
    """The data set a config names, split into train / validation / test."""
    from trustnlp.data.registry import load_dataset

    if config.data == "assistant" and (config.corpus_size or config.corpus_users):
        from trustnlp.data.assistant import AssistantConfig, generate_assistant

        sizes = {"n_utterances": config.corpus_size, "n_users": config.corpus_users}
        return generate_assistant(AssistantConfig(**{k: v for k, v in sizes.items() if v}), seed=seed)
    return load_dataset(
        config.data,
        data_dir=config.data_dir,
        seed=seed,
        include_oos=config.include_oos,
        text_column=config.text_column,
        label_column=config.label_column,
        validation=config.validation,
        test=config.test,
    )


def make_tokenizer(kind: str, splits: DatasetSplits, *, model: str, private: bool = False) -> Any:
    """The tokenizer for a run.

    ``wordpiece`` is MiniLM's public WordPiece vocabulary. ``word`` uses the generator's public
    lexicon for the built-in corpus, and otherwise a vocabulary built from the training split,
    which is refused for private runs (the vocabulary itself would leak membership).
    """
    from trustnlp.data.tokenizers import WordTokenizer, check_tokenizer_privacy, minilm_tokenizer

    if kind == "wordpiece":
        tok = minilm_tokenizer()
    elif kind == "word":
        if model in _WORDPIECE_ONLY:
            raise ConfigError(f"Expected `tokenizer` to be 'wordpiece' for model {model!r} (its vocabulary is fixed), but got 'word'.")
        if splits.meta.name == "assistant":
            from trustnlp.data.assistant import assistant_vocabulary

            tok = WordTokenizer.from_vocabulary(assistant_vocabulary(), provenance="generator")
        else:
            tok = WordTokenizer.build(splits.train.texts, provenance="private-train")
    else:
        raise ConfigError(f"Expected `tokenizer` to be one of ['wordpiece', 'word'], but got {kind!r}.")
    check_tokenizer_privacy(tok, private=private)
    return tok


def _task_for(config: TrainConfig, train: TextDataset) -> Task:
    return make_task(config.task, num_labels=train.num_labels, tag_names=train.tag_names)


def _build(config: TrainConfig, tokenizer: Any, train: TextDataset) -> torch.nn.Module:
    from trustnlp.models import build_model

    options = dict(config.model_options)
    if config.task == "tag" and config.model != "joint":
        options.setdefault("encoder", config.model)
        arch = "joint"
    elif config.task == "lm" and config.model not in {"lm", "gpt2"}:
        raise ConfigError(f"Expected `model` to be 'lm' for the `lm` task, but got {config.model!r}.")
    else:
        arch = config.model
    return build_model(
        arch,
        vocab_size=tokenizer.vocab_size,
        num_labels=train.num_labels if config.task != "lm" else 0,
        num_tags=len(train.tag_names) if config.task == "tag" else 0,
        pad_id=tokenizer.pad_id,
        **options,
    )


def _count(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def run_train(config: TrainConfig, out: str | Path, *, progress: bool = True, stop_after_steps: int | None = None) -> Result:
    """Train one model as ``config`` says; write ``out/results.json`` and ``out/model/``."""
    from trustnlp.devices import DeviceModel, autocast_dtype, resolve_device
    from trustnlp.models.io import save_model

    out = Path(out)
    device = resolve_device(config.device)  # fail before loading anything
    autocast_dtype(config.precision, device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2**32))
    t_load = time.perf_counter()
    splits = load_splits(config, seed=config.seed)
    if Path(config.model).is_dir():
        raise ConfigError(
            f"`trustnlp train` builds a new model; {config.model!r} is a saved model directory. "
            "Use `trustnlp evaluate --model DIR` to evaluate it."
        )
    private = config.dp
    tokenizer = make_tokenizer(config.tokenizer, splits, model=config.model, private=private)
    task = _task_for(config, splits.train)
    if config.max_length is not None:
        max_length = config.max_length
    elif private:  # never sized from the private data
        from trustnlp.privacy.training import DP_DEFAULT_MAX_LENGTH

        max_length = DP_DEFAULT_MAX_LENGTH
    else:
        max_length = min(MAX_LENGTH_CAP, task.longest(splits.train, tokenizer))
    encoded = {name: task.encode(ds, tokenizer, max_length=max_length) for name, ds in splits.items()}
    load_seconds = time.perf_counter() - t_load
    model = _build(config, tokenizer, splits.train).to(device)
    plan = None
    extra_fit: dict[str, Any] = {}
    train_data = encoded["train"]
    if private:
        from trustnlp.privacy.training import plan_private_training

        plan = plan_private_training(config, model, num_examples=len(splits.train), data=train_data,
                                     dataset=splits.train)
        if plan.train_data is not None:  # user-level DP: batches also carry each example's user
            train_data = plan.train_data
        extra_fit = {"step_fn": plan.step, "sampler": plan.sampler}
    fitted: FitResult = fit(
        model, task, train_data, config=config, validation=encoded.get("validation"),
        checkpoint_dir=out, progress=progress, stop_after_steps=stop_after_steps, **extra_fit,
    )
    metrics: dict[str, Any] = {}
    if not fitted.extra.get("interrupted"):
        runner = DeviceModel(model, device=device, precision=config.precision)
        metrics.update(_prefixed("test", task.evaluate(runner, encoded["test"])))
        if "validation" in encoded:
            metrics.update(_prefixed("val", task.evaluate(runner, encoded["validation"])))
    model.to("cpu")
    total, trainable = _count(model)
    metrics.update({
        "train_seconds": fitted.train_seconds,
        "seconds_per_epoch": fitted.seconds_per_epoch,
        "data_seconds": load_seconds,
        "epochs": fitted.epochs,
        "steps": fitted.steps,
        "num_parameters": total,
        "trainable_parameters": trainable,
        "physical_batch_size": fitted.physical_batch_size,
        "max_length": max_length,
        "num_train": len(splits.train),
        "num_test": len(splits.test),
        **{f"truncated_{name}": enc.num_truncated for name, enc in encoded.items()},
        "private": False,
        "epsilon": None,
        "delta": None,
        "privacy_unit": None,
    })
    null_reasons = {"metrics.epsilon": NON_PRIVATE_REASON, "metrics.delta": NON_PRIVATE_REASON,
                    "metrics.privacy_unit": NON_PRIVATE_REASON}
    if plan is not None:
        from trustnlp.privacy.training import privacy_metrics

        metrics.update(privacy_metrics(plan, config))
        # statistics of the private training split are not released by a private run
        metrics["truncated_train"] = None
        null_reasons = {"metrics.truncated_train": "private run: a statistic of the private training data is not released"}
        if fitted.extra.get("stopped"):
            metrics["stopped_early"] = fitted.extra["stopped"]
        # the running training loss is a statistic of the private batches: not released either
        history = tuple({**row, "train_loss": None} for row in fitted.history)
        null_reasons.update({f"rows[{i}].train_loss": "private run: training loss on private data is not released"
                             for i in range(len(history))})
    else:
        history = fitted.history
    artifacts: dict[str, str] = {}
    if not fitted.extra.get("interrupted"):
        save_model(model, out / "model", tokenizer=tokenizer, label_names=splits.train.label_names,
                   tag_names=splits.train.tag_names, task=config.task,
                   extra={"data": splits.meta.name, "max_length": max_length, "seed": config.seed})
        artifacts["model"] = "model"
    result = Result(
        kind="train",
        config={**config.model_dump(), "resolved_lr": fitted.extra.get("lr"), "resolved_device": str(device)},
        seed=config.seed,
        data=splits.meta.to_dict(),
        metrics=metrics,
        rows=history,
        null_reasons=null_reasons,
        artifacts=artifacts,
    )
    write_result(result, out / "results.json")
    return result


def run_evaluate(model_dir: str | Path, data: DataConfig, out: str | Path | None = None, *, seed: int = 0,
                 split: str = "test", device: str = "auto") -> Result:
    """Evaluate a saved model on a split of a data set (on ``device``, see :mod:`trustnlp.devices`);
    write ``out/results.json`` when ``out`` is given."""
    from trustnlp.devices import DeviceModel, resolve_device
    from trustnlp.models.io import load_model

    where = resolve_device(device)
    saved = load_model(Path(model_dir))
    splits = load_splits(data, seed=seed)
    ds = dict(splits.items()).get(split)
    if ds is None:
        raise DataError(f"Data set `{splits.meta.name}` has no `{split}` split (has {[k for k, _ in splits.items()]}).")
    if saved.task != "lm" and tuple(ds.label_names) != tuple(saved.label_names):
        raise DataError(
            f"The model in {model_dir} was trained on {len(saved.label_names)} labels that differ from the "
            f"{len(ds.label_names)} labels of `{splits.meta.name}`; expected the same label set."
        )
    task = make_task(saved.task, num_labels=len(saved.label_names), tag_names=saved.tag_names)
    max_length = int(saved.extra.get("max_length", MAX_LENGTH_CAP))
    enc = task.encode(ds, saved.tokenizer, max_length=max_length)
    metrics: dict[str, Any] = _prefixed(split, task.evaluate(DeviceModel(saved.model.to(where), device=where), enc))
    metrics[f"truncated_{split}"] = enc.num_truncated
    result = Result(kind="evaluate", config={"model": str(model_dir), **data.model_dump(), "split": split},
                    seed=seed, data=splits.meta.to_dict(), metrics=metrics)
    if out is not None:
        write_result(result, Path(out) / "results.json")
    return result


@dataclass(frozen=True)
class Prediction:
    """A classifier's prediction for one text."""

    text: str
    label: str
    probability: float
    top: tuple[tuple[str, float], ...]


@torch.no_grad()
def predict(model_dir: str | Path, texts: Sequence[str], *, top_k: int = 3, device: str = "auto") -> list[Prediction]:
    """Predict intents for ``texts`` with a saved classifier (or joint tagger), on ``device``."""
    from trustnlp.devices import DeviceModel, resolve_device
    from trustnlp.models.io import load_model

    where = resolve_device(device)
    saved = load_model(Path(model_dir))
    if saved.task == "lm":
        raise ConfigError(f"The model in {model_dir} is a language model; `predict` needs a classifier.")
    for i, t in enumerate(texts):
        if not t.strip():
            raise DataError(f"Expected a non-empty text to predict, but got {t!r} (text {i}).")
    enc = saved.tokenizer.encode(list(texts), max_length=int(saved.extra.get("max_length", MAX_LENGTH_CAP)))
    out = DeviceModel(saved.model.to(where), device=where)(enc.input_ids, enc.attention_mask)
    logits = out[0] if isinstance(out, tuple) else out
    probs = torch.softmax(logits, dim=-1)
    k = min(top_k, probs.shape[1])
    vals, idx = probs.topk(k, dim=-1)
    preds = []
    for text, v, ix in zip(texts, vals, idx):
        top = tuple((saved.label_names[int(j)], float(p)) for p, j in zip(v, ix))
        preds.append(Prediction(text=text, label=top[0][0], probability=top[0][1], top=top))
    return preds
