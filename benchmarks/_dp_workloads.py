"""Workloads, per-mode logical steps and the sigma = 0 gradient check for ``dp_overhead.py``.

Every function here runs inside ONE worker process (one mode of one workload); the driver in
``dp_overhead.py`` never builds a model itself.

Modes (same model, data, SGD optimiser and learning rate everywhere):

- ``nonprivate``: :func:`trustnlp.train._accumulate` (sum of losses / logical size over the
  physical batches) + ``opt.step()``;
- ``ours``: :class:`trustnlp.privacy.dp_step.DPStep` (flat clipping, book-keeping clipper, seeded
  ``TorchNoise`` on every trainable parameter, divide by the expected batch size) + ``opt.step()``;
- ``opacus-hooks`` / ``opacus-ghost``: ``opacus.PrivacyEngine().make_private(...,
  poisson_sampling=False, grad_sample_mode=...)``. The logical batch is split into physical batches
  by *virtual steps*: ``optimizer.signal_skip_step(True)`` before ``optimizer.step()`` on every
  physical batch but the last (the mechanism Opacus's ``BatchMemoryManager`` drives), and
  ``optimizer.zero_grad()`` after every physical batch, so per-sample state never accumulates.
  The DataLoader handed to ``make_private`` has ``batch_size = logical``, so Opacus divides by the
  logical batch size exactly like ours. Ghost mode uses the wrapped criterion (4 return values).

A timed logical step is: forward + backward over all physical batches, clipping, noise, optimiser
step and ``zero_grad``.
"""

from __future__ import annotations

import copy
import math
import resource
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LABELS, SIGMA, CLIP, LR, SAMPLING_RATE = 150, 1.0, 1.0, 1e-4, 0.01
MODES = ("nonprivate", "ours", "opacus-hooks", "opacus-ghost")
OPACUS_MODES = {"opacus-hooks": "hooks", "opacus-ghost": "ghost"}
CHECK_TOL = 1e-6  # relative L2 error in float64
TINY_BERT = {"model_type": "bert", "vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    arch: str
    vocab: int
    logical: int
    physical: int
    seq_len: int
    target: float  # ours/non-private target
    options: dict[str, Any] = field(default_factory=dict)


FULL = {
    "a": Workload("a", "MiniLM-L6 + head, full fine-tuning", "minilm", 30522, 256, 32, 32, 1.5),
    "b": Workload("b", "small transformer (vocab 30522, d 128, 2 layers)", "transformer", 30522, 1024, 256, 32, 1.8,
                  {"dim": 128, "layers": 2}),
    "c": Workload("c", "bag of embeddings (vocab 10k, d 128)", "bag", 10_000, 1024, 1024, 32, 2.0, {"dim": 128}),
}
QUICK = {  # tiny dims, same code paths (MiniLM architecture = a tiny random BERT)
    "a": replace(FULL["a"], title="tiny BERT (MiniLM architecture) + head", vocab=1000, logical=16, physical=8,
                 seq_len=8, options={"encoder_config": TINY_BERT}),
    "b": replace(FULL["b"], title="tiny transformer (d 32)", vocab=1000, logical=32, physical=16, seq_len=8,
                 options={"dim": 32, "layers": 2, "heads": 4, "ff": 64}),
    "c": replace(FULL["c"], title="tiny bag of embeddings (d 32)", vocab=1000, logical=32, physical=32, seq_len=8,
                 options={"dim": 32}),
}


def workload(key: str, quick: bool) -> Workload:
    return (QUICK if quick else FULL)[key]


def describe(wl: Workload) -> dict[str, Any]:
    return {k: v for k, v in asdict(wl).items() if k != "options"} | {"options": str(wl.options)}


def build(wl: Workload, seed: int) -> nn.Module:
    from trustnlp.models import build_model

    torch.manual_seed(seed)
    return build_model(wl.arch, vocab_size=wl.vocab, num_labels=LABELS, pad_id=0, **wl.options)


def make_data(wl: Workload, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` examples of random token ids (never the pad id), full attention masks, random labels."""
    g = torch.Generator().manual_seed(10_007 + seed)
    ids = torch.randint(1, wl.vocab, (n, wl.seq_len), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, LABELS, (n,), generator=g)}


def _slice(batch: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: v[start:stop] for k, v in batch.items()}


def _chunks(batch: dict[str, torch.Tensor], physical: int) -> Iterator[tuple[bool, dict[str, torch.Tensor]]]:
    n = batch["input_ids"].shape[0]
    for start in range(0, n, physical):
        yield start + physical >= n, _slice(batch, start, start + physical)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


Step = tuple[Callable[[dict[str, torch.Tensor]], None], Callable[[], None]]


def make_step(mode: str, model: nn.Module, *, logical: int, physical: int, sigma: float, clip: float,
              lr: float, seed: int) -> Step:
    """``(step, zero)`` for one mode: ``step(batch)`` leaves the final gradient in ``p.grad`` and
    applies the optimiser; ``zero()`` clears the gradients. Raises if the mode cannot handle ``model``."""
    from trustnlp.tasks import ClassifyTask

    task = ClassifyTask(LABELS)
    opt = torch.optim.SGD(trainable(model), lr=lr)
    if mode == "nonprivate":
        from trustnlp.train import _accumulate

        def step(batch: dict[str, torch.Tensor]) -> None:
            _accumulate(model, task, batch, logical, physical)
            opt.step()

        return step, opt.zero_grad
    if mode == "ours":
        from trustnlp.privacy.accounting import PrivacyLedger
        from trustnlp.privacy.dp_step import DPStep
        from trustnlp.privacy.noise import TorchNoise

        dp = DPStep(model, noise_multiplier=sigma, max_grad_norm=clip, clipping="flat", sampling_rate=SAMPLING_RATE,
                    expected_batch_size=logical, noise=TorchNoise(seed), ledger=PrivacyLedger())

        def step(batch: dict[str, torch.Tensor]) -> None:
            dp(model, task, batch, logical, physical)
            opt.step()

        return step, opt.zero_grad
    if mode in OPACUS_MODES:
        return _opacus_step(OPACUS_MODES[mode], model, opt, logical=logical, physical=physical, sigma=sigma,
                            clip=clip)
    raise ValueError(f"unknown mode {mode!r}")


def _opacus_step(gsm_mode: str, model: nn.Module, opt: torch.optim.Optimizer, *, logical: int, physical: int,
                 sigma: float, clip: float) -> Step:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore")  # secure-RNG / accountant notices
    ds = TensorDataset(torch.zeros(logical, 1))  # only sizes matter: expected batch size = logical
    out = PrivacyEngine().make_private(module=model, optimizer=opt, data_loader=DataLoader(ds, batch_size=logical),
                                       criterion=nn.CrossEntropyLoss(), noise_multiplier=sigma, max_grad_norm=clip,
                                       poisson_sampling=False, grad_sample_mode=gsm_mode)
    if gsm_mode == "ghost":
        gsm, dp_opt, criterion, _ = out
    else:
        (gsm, dp_opt, _), criterion = out, nn.CrossEntropyLoss()
    if dp_opt.expected_batch_size != logical:
        raise RuntimeError(f"Opacus expected_batch_size {dp_opt.expected_batch_size} != logical {logical}")

    def step(batch: dict[str, torch.Tensor]) -> None:
        for last, part in _chunks(batch, physical):
            criterion(gsm(part["input_ids"], part["attention_mask"]), part["labels"]).backward()
            if not last:
                dp_opt.signal_skip_step(do_skip=True)  # clip + accumulate only (virtual step)
                dp_opt.step()
                dp_opt.zero_grad()
            else:
                dp_opt.step()

    return step, dp_opt.zero_grad


# -- timing -----------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_mode(mode: str, wl: Workload, *, steps: int, warmup: int, seed: int) -> dict[str, Any]:
    from trustnlp.runtime import allocator_settings, tune_allocator

    torch.set_num_threads(2)
    tune_allocator()  # every mode, as trustnlp.train.fit does for every run (TRUSTNLP_TUNE_MALLOC=0: off)
    model = build(wl, seed)
    model.train()
    n_batches = max(1, min(steps + warmup, 3))
    data = make_data(wl, wl.logical * n_batches, seed)
    step, zero = make_step(mode, model, logical=wl.logical, physical=wl.physical, sigma=SIGMA, clip=CLIP, lr=LR,
                           seed=seed)
    zero()
    times = []
    faults0 = 0
    for i in range(warmup + steps):
        if i == warmup:
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        j = i % n_batches
        batch = _slice(data, j * wl.logical, (j + 1) * wl.logical)
        t0 = time.perf_counter()
        step(batch)
        zero()
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / max(1, steps)
    return {"mode": mode, "workload": wl.key, "warmup_s": times[:warmup], "times_s": times[warmup:],
            "params": sum(p.numel() for p in trainable(model)), "peak_rss_mib": peak_rss_mib(),
            "threads": torch.get_num_threads(), "allocator": allocator_settings(), "minor_faults_per_step": faults}


# -- sigma = 0 gradient check ---------------------------------------------------------------------
def _no_dropout_train_mode(model: nn.Module) -> None:
    """Eval mode (no dropout anywhere, incl. attention-probability dropout), but ``training=True`` on
    modules that own parameters directly (Linear/Embedding/LayerNorm: their forward ignores the flag)
    and on the root (our classifiers' forward ignores it): Opacus refuses a root in eval mode and its
    hooks only record modules in training mode."""
    model.eval()
    model.training = True
    for m in model.modules():
        if any(p is not None for p in m._parameters.values()):
            m.training = True


def _reference(model: nn.Module, batch: dict[str, torch.Tensor], clip: float | None) -> tuple[list, torch.Tensor]:
    """Per-example loop: full gradient of each example, flat clip to ``clip``, average."""
    params = trainable(model)
    per, norms = [], []
    n = batch["input_ids"].shape[0]
    for i in range(n):
        x = _slice(batch, i, i + 1)
        loss = F.cross_entropy(model(x["input_ids"], x["attention_mask"]), x["labels"])
        g = torch.autograd.grad(loss, params, allow_unused=True)
        g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)]
        per.append(g)
        norms.append(torch.sqrt(sum((gi.double() ** 2).sum() for gi in g)))
    norms_t = torch.stack(norms)
    if clip is None:
        return [], norms_t
    factors = (clip / (norms_t + 1e-6)).clamp(max=1.0)
    out = [sum(factors[i] * per[i][k] for i in range(n)) / n for k in range(len(params))]
    return out, norms_t


def _rel_err(got: list[torch.Tensor | None], ref: list[torch.Tensor]) -> float:
    num = sum(float(((torch.zeros_like(r) if g is None else g) - r).pow(2).sum()) for g, r in zip(got, ref))
    den = sum(float(r.pow(2).sum()) for r in ref)
    return math.sqrt(num / max(den, 1e-300))


def grad_check(wl: Workload, modes: list[str], *, seed: int, n: int = 4, physical: int = 2) -> dict[str, Any]:
    """sigma = 0, float64, ``n`` examples in physical batches of ``physical``: each private mode's
    ``p.grad`` vs the per-example loop; ``C`` = the median per-example norm (some examples clipped)."""
    torch.set_num_threads(2)
    base = build(wl, seed).double()
    _no_dropout_train_mode(base)
    batch = make_data(wl, n, seed + 1)
    _, norms = _reference(base, batch, None)
    clip = float(norms.median())
    ref, _ = _reference(base, batch, clip)
    res: dict[str, Any] = {"examples": n, "physical": physical, "dtype": "float64", "clip": clip,
                           "norms": [float(v) for v in norms], "clipped": int((norms > clip).sum()), "tol": CHECK_TOL}
    for mode in ["ours", *[m for m in modes if m in OPACUS_MODES]]:
        model = copy.deepcopy(base)
        try:
            step, _ = make_step(mode, model, logical=n, physical=physical, sigma=0.0, clip=clip, lr=0.0, seed=seed)
            step(batch)
            err = _rel_err([p.grad for p in trainable(model)], ref)
            res[mode] = {"rel_err": err, "ok": err <= CHECK_TOL}
        except Exception as e:  # an Opacus mode that cannot handle the model: skipped, with the reason
            if mode == "ours":
                raise
            res[mode] = {"skipped": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"}
    return res
