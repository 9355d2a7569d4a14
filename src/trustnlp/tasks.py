"""Tasks: how a data set becomes tensors, what the loss is, and how a model is evaluated.

A task is the glue between data and the one training loop: ``encode`` turns a
:class:`~trustnlp.data.dataset.TextDataset` into an :class:`EncodedData`, ``loss`` maps model
outputs and a batch to a loss (``reduction="none"`` gives one loss per example, which DP-SGD and
membership-inference attacks need), and ``evaluate`` computes the task's metrics.

- ``classify``: cross-entropy over intents; metrics accuracy, macro-F1, loss.
- ``tag``: joint intent + slot tagging; loss = intent CE + mean tag CE over each example's words
  (first sub-token of each word; other positions ignored); metrics add CoNLL slot F1.
- ``lm``: next-token cross-entropy; metrics loss and perplexity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from trustnlp.data.dataset import TextDataset
from trustnlp.errors import ConfigError, DataError
from trustnlp.metrics import accuracy, macro_f1, perplexity, span_f1

__all__ = ["EncodedData", "Task", "ClassifyTask", "TagTask", "LMTask", "make_task", "TASKS", "IGNORE_INDEX"]

IGNORE_INDEX = -100
Reduction = Literal["mean", "sum", "none"]


@dataclass(frozen=True)
class EncodedData:
    """A data set as padded tensors (padded to its longest input; batches are cut shorter).

    Attributes:
        input_ids / attention_mask: ``[N, T]`` long tensors.
        labels: ``[N]`` class indices, or ``None``.
        tag_ids: ``[N, T]`` tag index at the first sub-token of each word, ``IGNORE_INDEX``
            elsewhere; ``None`` unless tagging.
        num_truncated: inputs longer than the maximum length (they were cut; reported, not hidden).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    tag_ids: torch.Tensor | None = None
    num_truncated: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def batch(self, index: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """The examples at ``index``, cut to the longest of them."""
        mask = self.attention_mask[index]
        t = int(mask.sum(dim=1).max().item()) if mask.numel() else 1
        out = {"input_ids": self.input_ids[index][:, :t], "attention_mask": mask[:, :t]}
        if self.labels is not None:
            out["labels"] = self.labels[index]
        if self.tag_ids is not None:
            out["tag_ids"] = self.tag_ids[index][:, :t]
        return out

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive batches in order (for evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(slice(start, start + batch_size))


def _reduce(per_example: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    return per_example.mean()


class Task(ABC):
    """The protocol every task implements."""

    name: str

    @abstractmethod
    def encode(self, data: TextDataset, tokenizer: Any, *, max_length: int) -> EncodedData: ...

    @abstractmethod
    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], *, reduction: Reduction = "mean") -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, data: EncodedData, *, batch_size: int = 256) -> dict[str, float]: ...

    def longest(self, data: TextDataset, tokenizer: Any) -> int:
        """Length in tokens of the longest input (to choose ``max_length``)."""
        enc = tokenizer.encode(list(data.texts), max_length=100_000)
        return int(enc.attention_mask.sum(dim=1).max().item())


class ClassifyTask(Task):
    """Sequence classification with cross-entropy."""

    name = "classify"

    def __init__(self, num_labels: int) -> None:
        if num_labels < 2:
            raise ConfigError(f"Expected `num_labels` to be >= 2 for classification, but got {num_labels}.")
        self.num_labels = num_labels

    def encode(self, data: TextDataset, tokenizer: Any, *, max_length: int) -> EncodedData:
        if data.labels is None:
            raise DataError(f"Data set `{data.meta.name}` has no labels; the `classify` task needs them.")
        enc = tokenizer.encode(list(data.texts), max_length=max_length)
        return EncodedData(enc.input_ids, enc.attention_mask, torch.tensor(np.asarray(data.labels), dtype=torch.long), None, enc.num_truncated)

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], *, reduction: Reduction = "mean") -> torch.Tensor:
        return F.cross_entropy(outputs, batch["labels"], reduction=reduction)

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, data: EncodedData, *, batch_size: int = 256) -> tuple[np.ndarray, float]:
        """Predicted classes and the summed loss."""
        model.eval()
        preds, total = [], 0.0
        for b in data.batches(batch_size):
            logits = model(b["input_ids"], b["attention_mask"])
            total += float(self.loss(logits, b, reduction="sum"))
            preds.append(logits.argmax(-1).numpy())
        return np.concatenate(preds) if preds else np.array([], dtype=np.int64), total

    def evaluate(self, model: torch.nn.Module, data: EncodedData, *, batch_size: int = 256) -> dict[str, float]:
        preds, total = self.predict(model, data, batch_size=batch_size)
        y = data.labels.numpy() if data.labels is not None else np.array([])
        return {"loss": total / max(len(data), 1), "accuracy": accuracy(y, preds), "macro_f1": macro_f1(y, preds)}


class TagTask(Task):
    """Joint intent classification and BIO slot tagging (word-level tags on first sub-tokens)."""

    name = "tag"

    def __init__(self, num_labels: int, tag_names: Sequence[str]) -> None:
        if not tag_names:
            raise ConfigError("Expected `tag_names` to be non-empty for the `tag` task, but got an empty list.")
        self.num_labels = num_labels
        self.tag_names = tuple(tag_names)

    def encode(self, data: TextDataset, tokenizer: Any, *, max_length: int) -> EncodedData:
        if data.tokens is None or data.tags is None or data.labels is None:
            raise DataError(
                f"Data set `{data.meta.name}` has no slot tags or no intent labels; the `tag` task needs both "
                "(e.g. --data snips or --data assistant)."
            )
        if tuple(data.tag_names) != self.tag_names:
            raise DataError(f"Data set `{data.meta.name}` has a different tag vocabulary than the task.")
        enc = tokenizer.encode_words([list(t) for t in data.tokens], max_length=max_length)
        tag_index = {t: i for i, t in enumerate(self.tag_names)}
        tag_ids = torch.full_like(enc.input_ids, IGNORE_INDEX)
        for i, (wids, tags) in enumerate(zip(enc.word_ids or [], data.tags)):
            prev = None
            for pos, w in enumerate(wids):
                if w is not None and w != prev:
                    tag_ids[i, pos] = tag_index[tags[w]]
                prev = w
        return EncodedData(enc.input_ids, enc.attention_mask, torch.tensor(np.asarray(data.labels), dtype=torch.long), tag_ids, enc.num_truncated)

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], *, reduction: Reduction = "mean") -> torch.Tensor:
        intent_logits, tag_logits = outputs
        intent = F.cross_entropy(intent_logits, batch["labels"], reduction="none")
        tags = batch["tag_ids"]
        tok = F.cross_entropy(tag_logits.transpose(1, 2), tags, ignore_index=IGNORE_INDEX, reduction="none")
        valid = (tags != IGNORE_INDEX).sum(dim=1).clamp(min=1)
        return _reduce(intent + tok.sum(dim=1) / valid, reduction)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, data: EncodedData, *, batch_size: int = 256) -> dict[str, float]:
        model.eval()
        total, preds, true_tags, pred_tags = 0.0, [], [], []
        for b in data.batches(batch_size):
            out = model(b["input_ids"], b["attention_mask"])
            total += float(self.loss(out, b, reduction="sum"))
            preds.append(out[0].argmax(-1).numpy())
            tag_pred = out[1].argmax(-1)
            for gold_row, pred_row in zip(b["tag_ids"], tag_pred):
                keep = gold_row != IGNORE_INDEX
                true_tags.append([self.tag_names[int(t)] for t in gold_row[keep]])
                pred_tags.append([self.tag_names[int(t)] for t in pred_row[keep]])
        y = data.labels.numpy() if data.labels is not None else np.array([])
        p = np.concatenate(preds) if preds else np.array([], dtype=np.int64)
        return {
            "loss": total / max(len(data), 1),
            "accuracy": accuracy(y, p),
            "macro_f1": macro_f1(y, p),
            "slot_f1": span_f1(true_tags, pred_tags),
        }


class LMTask(Task):
    """Causal language modelling: predict token t+1 from tokens <= t."""

    name = "lm"

    def encode(self, data: TextDataset, tokenizer: Any, *, max_length: int) -> EncodedData:
        enc = tokenizer.encode(list(data.texts), max_length=max_length)
        return EncodedData(enc.input_ids, enc.attention_mask, None, None, enc.num_truncated)

    def _token_nll(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, IGNORE_INDEX)
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
        return nll, (target != IGNORE_INDEX).sum(dim=1)

    def loss(self, outputs: Any, batch: dict[str, torch.Tensor], *, reduction: Reduction = "mean") -> torch.Tensor:
        nll, n = self._token_nll(outputs, batch)
        return _reduce(nll.sum(dim=1) / n.clamp(min=1), reduction)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, data: EncodedData, *, batch_size: int = 256) -> dict[str, float]:
        model.eval()
        total_nll, n_tokens, total_loss = 0.0, 0, 0.0
        for b in data.batches(batch_size):
            logits = model(b["input_ids"], b["attention_mask"])
            nll, n = self._token_nll(logits, b)
            total_nll += float(nll.sum())
            n_tokens += int(n.sum())
            total_loss += float(self.loss(logits, b, reduction="sum"))
        return {"loss": total_loss / max(len(data), 1), "perplexity": perplexity(total_nll, n_tokens)}


TASKS = ("classify", "tag", "lm")


def make_task(name: str, *, num_labels: int = 0, tag_names: Sequence[str] = ()) -> Task:
    """Build a task by name."""
    if name == "classify":
        return ClassifyTask(num_labels)
    if name == "tag":
        return TagTask(num_labels, tag_names)
    if name == "lm":
        return LMTask()
    raise ConfigError(f"Expected `task` to be one of {list(TASKS)}, but got {name!r}.")
