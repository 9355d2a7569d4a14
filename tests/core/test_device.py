"""Device selection and mixed precision in the training loop and the pipeline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from trustnlp import devices
from trustnlp.config import TrainConfig
from trustnlp.devices import DeviceModel, autocast_dtype, fp32_boundary, resolve_device
from trustnlp.errors import ConfigError
from trustnlp.models import build_model
from trustnlp.pipeline import run_train
from trustnlp.privacy.clipping import PerSampleClipper
from trustnlp.tasks import ClassifyTask, EncodedData
from trustnlp.train import fit

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
no_accelerator = pytest.mark.skipif(CUDA or devices._mps_available(), reason="this machine has an accelerator")


class Small(nn.Module):
    arch = "small"

    def __init__(self, vocab: int = 50, dim: int = 16, labels: int = 3, dropout: float = 0.2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.hidden = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, labels)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = (self.emb(ids) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.out(self.drop(torch.tanh(self.hidden(h))))


def make_data(n: int = 96, t: int = 7, seed: int = 0) -> EncodedData:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    return EncodedData(ids, mask, (ids[:, 0] % 3).long())


def make_model(seed: int = 1) -> Small:
    torch.manual_seed(seed)
    return Small()


def cfg(**kw: Any) -> TrainConfig:
    base = {"epochs": 4, "batch_size": 16, "lr": 0.05, "seed": 7, "scheduler": "constant", "device": "cpu"}
    return TrainConfig(**{**base, **kw})


# -- device selection --------------------------------------------------------------------------------
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@no_accelerator
def test_auto_picks_cpu_here_and_cuda_is_a_clear_error(tmp_path: Path) -> None:
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"Expected `device` to be available, but got '{name}': CUDA is not available"):
            resolve_device(name)
    with pytest.raises(ConfigError, match=r"Apple MPS is not available"):
        resolve_device("mps")
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=r"CUDA is not available"):
        fit(model, ClassifyTask(3), make_data(), config=cfg(device="cuda"), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any step
    with pytest.raises(ConfigError, match=r"CUDA is not available"):  # before loading any data
        run_train(TrainConfig(model="bag", device="cuda:0"), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_malformed_device_and_precision_are_named() -> None:
    with pytest.raises(ConfigError, match=r"Expected `device` to be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps', but got 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ValidationError, match=r"device"):
        TrainConfig(device="gpu")
    with pytest.raises(ValidationError, match=r"precision"):
        TrainConfig(precision="8")
    assert TrainConfig(precision="fp16").precision == "16" and TrainConfig(precision=32).precision == "32"
    with pytest.raises(ValidationError, match=r"float16 .* use `precision: bf16`"):
        TrainConfig(dp=True, noise_multiplier=1.0, precision="16")
    cpu = torch.device("cpu")
    assert autocast_dtype("32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match=r"Expected `precision` to be '32' or 'bf16' on device 'cpu', but got '16'.*needs CUDA"):
        autocast_dtype("16", cpu)
    with pytest.raises(ConfigError, match=r"Expected `precision` to be one of \['32', 'bf16', '16'\]"):
        autocast_dtype("fp8", cpu)


@no_accelerator
def test_fp16_on_cpu_is_refused_by_fit() -> None:
    with pytest.raises(ConfigError, match=r"needs CUDA"):
        fit(make_model(), ClassifyTask(3), make_data(), config=cfg(precision="16"), progress=False)


# -- mixed precision ---------------------------------------------------------------------------------
def test_bf16_training_on_cpu_learns_with_fp32_master_weights() -> None:
    data, val, task = make_data(), make_data(32, seed=5), ClassifyTask(3)
    model, seen = make_model(), []
    handle = model.hidden.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    res = fit(model, task, data, config=cfg(precision="bf16"), validation=val, progress=False)
    handle.remove()
    assert set(seen) == {torch.bfloat16}  # the forward really ran under autocast (training and evaluation)
    losses = [row["train_loss"] for row in res.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.8 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert res.extra["device"] == "cpu" and res.extra["precision"] == "bf16"
    # the same run in float32 differs (bfloat16 rounding), but only slightly
    ref = make_model()
    fit(ref, task, data, config=cfg(), progress=False)
    diffs = [float((a - b).detach().abs().max()) for a, b in zip(model.parameters(), ref.parameters())]
    assert max(diffs) > 0 and max(diffs) < 0.5


def test_bf16_resume_is_bitwise_equal(tmp_path: Path) -> None:
    data, task = make_data(), ClassifyTask(3)
    config = cfg(precision="bf16", epochs=2, checkpoint_every=2)
    a = make_model()
    fit(a, task, data, config=config, checkpoint_dir=tmp_path / "a", progress=False)
    b = make_model()
    part = fit(b, task, data, config=config, checkpoint_dir=tmp_path / "b", progress=False, stop_after_steps=4)
    assert part.extra["interrupted"]
    c = make_model(seed=99)  # a different init: everything must come from the checkpoint
    res = fit(c, task, data, config=config, checkpoint_dir=tmp_path / "b", progress=False)
    assert res.resumed_from_step == 4
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_device_model_upcasts_only_low_precision_outputs() -> None:
    model = make_model().double()
    ids, mask = make_data(4).input_ids, make_data(4).attention_mask
    assert DeviceModel(model, device=torch.device("cpu"))(ids, mask).dtype == torch.float64  # never downcast
    model = make_model()
    assert DeviceModel(model, device=torch.device("cpu"), precision="bf16")(ids, mask).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(ids, mask).dtype == torch.bfloat16


TINY_BERT = {
    "model_type": "bert", "vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}


@pytest.mark.parametrize("trainable", ["full", "lora"])
def test_per_sample_norms_under_bf16_are_fp32_and_close_to_fp32(trainable: str) -> None:
    torch.manual_seed(0)
    model = build_model("minilm", vocab_size=40, num_labels=3, encoder_config=TINY_BERT, trainable=trainable, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(1)
    ids, y = torch.randint(1, 40, (6, 9), generator=g), torch.randint(0, 3, (6,), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for precision in ("32", "bf16"):
        model.zero_grad(set_to_none=True)
        runner, clipper = DeviceModel(model, device=torch.device("cpu"), precision=precision), PerSampleClipper(model, max_grad_norm=1e-3)
        with fp32_boundary(model), clipper:
            stats = clipper.backward(F.cross_entropy(runner(ids, mask), y, reduction="none"))
        summed = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        assert stats.norms.dtype == torch.float32 and summed.dtype == torch.float32
        assert all(r.startswith(("linear-", "embedding", "layernorm")) for r in clipper.rules_report().values())
        out[precision] = (stats.norms, summed)
    (n32, s32), (n16, s16) = out["32"], out["bf16"]
    assert not torch.equal(n32, n16)  # bfloat16 matmuls did run
    torch.testing.assert_close(n16, n32, rtol=2e-2, atol=0.0)  # bf16 rounding (2^-8 relative per op)
    assert float((s16 - s32).norm() / s32.norm()) < 2e-2


def test_private_bf16_run_records_device_and_precision(tmp_path: Path) -> None:
    options = {"encoder_config": {**TINY_BERT, "vocab_size": 30522, "max_position_embeddings": 64},
               "trainable": "lora", "lora_r": 4}
    config = TrainConfig(corpus_size=300, model="minilm", model_options=options, epochs=1, batch_size=32, max_length=16,
                         seed=2, dp=True, noise_multiplier=0.5, lr=5e-3, precision="bf16", device="auto")
    result = run_train(config, tmp_path / "run", progress=False)
    assert result.config["device"] == "auto" and result.config["precision"] == "bf16"
    assert result.config["resolved_device"] == str(resolve_device("auto"))
    m = result.metrics
    assert m["private"] is True and m["dp_steps"] >= 1 and math.isfinite(m["test_loss"])
    assert "vmap-fallback" not in m["clipping_rules"].values()


# -- CUDA (runs where a GPU is present) ------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("precision", ["32", "bf16", "16"])
def test_cuda_training_moves_model_and_data(precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    data, val, task = make_data(), make_data(32, seed=5), ClassifyTask(3)
    model = make_model()
    res = fit(model, task, data, config=cfg(device="cuda", precision=precision), validation=val, progress=False)
    losses = [row["train_loss"] for row in res.history]
    assert losses[-1] < 0.8 * losses[0] and math.isfinite(res.history[-1]["val_loss"])
    assert all(p.is_cuda and p.dtype == torch.float32 for p in model.parameters())
    assert res.extra["device"].startswith("cuda") and val.input_ids.device.type == "cpu"  # caller's data untouched


@needs_cuda
def test_cuda_resume_is_bitwise_equal(tmp_path: Path) -> None:
    data, task = make_data(), ClassifyTask(3)
    config = cfg(device="cuda", epochs=2, checkpoint_every=2)  # dropout draws from the CUDA generator
    a = make_model()
    fit(a, task, data, config=config, checkpoint_dir=tmp_path / "a", progress=False)
    b = make_model()
    fit(b, task, data, config=config, checkpoint_dir=tmp_path / "b", progress=False, stop_after_steps=4)
    c = make_model(seed=99)
    fit(c, task, data, config=config, checkpoint_dir=tmp_path / "b", progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
