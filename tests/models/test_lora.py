"""LoRA adapters (peft) on the HF encoder classifier: what trains, per-example clipping against a
per-example loop (float64), option errors, and a private run through the pipeline and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from trustnlp.config import DataConfig, TrainConfig
from trustnlp.errors import ConfigError, MissingDependencyError
from trustnlp.models import build_model, load_model
from trustnlp.pipeline import run_evaluate, run_train
from trustnlp.privacy.clipping import PerSampleClipper
from trustnlp.results import read_result
from trustnlp.tasks import ClassifyTask

V, B, T, C, LABELS = 13, 5, 7, 1e-3, 3
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": V,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "max_position_embeddings": 16,
    "type_vocab_size": 2,
}
# the MiniLM WordPiece vocabulary (30522 ids) over a tiny encoder: the pipeline's tokenizer, no download
PIPELINE_BERT = {**TINY_BERT, "vocab_size": 30522, "hidden_size": 16, "intermediate_size": 32, "max_position_embeddings": 64}


def lora_model(**options: Any) -> nn.Module:
    torch.manual_seed(0)
    opts = {"trainable": "lora", "lora_r": 2, "dropout": 0.0, **options}
    return build_model("minilm", vocab_size=V, num_labels=LABELS, encoder_config=TINY_BERT, **opts)


def adapter_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def test_only_adapters_and_head_train() -> None:
    model = lora_model(lora_r=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = adapter_names(model)
    assert trainable == adapters | {"head.weight", "head.bias"}
    # default targets: the attention's query and value projections of every layer, A and B each
    assert {n.split(".attention.self.")[1].split(".")[0] for n in adapters} == {"query", "value"}
    assert len(adapters) == 2 * 2 * 2  # layers x {query, value} x {A, B}
    d, r = TINY_BERT["hidden_size"], 3
    assert model.num_parameters(trainable=True) == 2 * 2 * (r * d + d * r) + (d * LABELS + LABELS)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.endswith("query.base_layer.weight") for n in frozen) and any("word_embeddings" in n for n in frozen)
    assert model.config["trainable"] == "lora" and model.config["lora_target_modules"] == ["query", "value"]
    assert model.config["lora_r"] == 3 and model.config["lora_alpha"] == 16.0


def test_lora_options_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"Expected `lora_r` to be >= 1, but got 0"):
        lora_model(lora_r=0)
    with pytest.raises(ConfigError, match=r"Expected `lora_dropout` to be a number in \[0.0, 1.0\)"):
        lora_model(lora_dropout=1.5)
    with pytest.raises(ConfigError, match=r"Expected `lora_target_modules` to be names of linear layers"):
        lora_model(lora_target_modules=["no_such_layer"])
    with pytest.raises(ConfigError, match=r"\['lora_r'\] only apply to LoRA adapters"):
        build_model("minilm", vocab_size=V, num_labels=LABELS, encoder_config=TINY_BERT, trainable="full", lora_r=4)
    with pytest.raises(ConfigError, match=r"one of \['full', 'frozen', 'last-k', 'lora'\]"):
        build_model("minilm", vocab_size=V, num_labels=LABELS, encoder_config=TINY_BERT, trainable="adapters")
    # other targets: every linear layer named `dense` (attention output, feed-forward output)
    model = lora_model(lora_target_modules=["dense"])
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapter_names(model)} == {"dense"}


def test_missing_peft_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"peft.*pip install 'trustnlp\[hf\]'"):
        lora_model()


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 3, 5, 2, 6])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 6, (B, T), generator=g) * mask  # repeated ids, right padding with 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, LABELS, (B,), generator=g)}


@pytest.mark.parametrize("lora_dropout", [0.0, 0.1])
def test_lora_per_sample_clipping_matches_loop(lora_dropout: float) -> None:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = lora_model(lora_dropout=lora_dropout).double()
        with torch.no_grad():  # B starts at zero (then A's gradient is zero too): make both non-trivial
            for name, p in model.named_parameters():
                if ".lora_B." in name:
                    p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
        model.eval()  # the adapters' dropout (a module before lora_A when > 0) is the identity
        task, batch = ClassifyTask(LABELS), make_batch()
        params = [p for p in model.parameters() if p.requires_grad]
        rows = []
        for i in range(B):  # the reference: each example alone, unpadded
            n = int(batch["attention_mask"][i].sum())
            sub = {"input_ids": batch["input_ids"][i : i + 1, :n], "attention_mask": batch["attention_mask"][i : i + 1, :n],
                   "labels": batch["labels"][i : i + 1]}
            loss = task.loss(model(sub["input_ids"], sub["attention_mask"]), sub, reduction="sum")
            rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
        G = torch.stack(rows)
        norms_ref = G.norm(dim=1)
        assert (norms_ref > C).all() and G[:, : params[0].numel()].abs().max() > 0  # lora_A gets gradient
        expected = ((C / (norms_ref + 1e-6)).clamp(max=1.0)[:, None] * G).sum(0)

        clipper = PerSampleClipper(model, max_grad_norm=C)
        with clipper:
            losses = task.loss(model(batch["input_ids"], batch["attention_mask"]), batch, reduction="none")
            stats = clipper.backward(losses)
        got = torch.cat([p.grad.flatten() for p in params])
        torch.testing.assert_close(stats.norms, norms_ref, rtol=1e-8, atol=1e-8 * float(norms_ref.max()))
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8 * float(expected.abs().max()))
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert all(p.grad is None for p in frozen)

        report = clipper.rules_report()
        owners = {n for n, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
        assert set(report) == owners and len(report) == 8 + 1  # 8 adapter matrices + the head
        for path, rule in report.items():
            assert rule.startswith("linear-"), (path, rule)  # nn.Linear rule: never the vmap fallback
    finally:
        torch.set_default_dtype(old)


def pipeline_config(**changes: Any) -> TrainConfig:
    options = {"encoder_config": PIPELINE_BERT, "trainable": "lora", "lora_r": 4, "lora_dropout": 0.1}
    base = {"corpus_size": 300, "model": "minilm", "model_options": options, "epochs": 1, "batch_size": 32,
            "max_length": 16, "seed": 3, "dp": True, "noise_multiplier": 0.5, "lr": 5e-3, "device": "cpu"}
    return TrainConfig(**{**base, **changes})


def test_private_lora_run_saves_and_reloads(tmp_path: Path) -> None:
    out = tmp_path / "lora"
    result = run_train(pipeline_config(), out, progress=False)
    m = result.metrics
    assert m["private"] is True and m["dp_steps"] >= 1 and m["epsilon"] > 0
    rules = m["clipping_rules"]
    assert rules and all(r.startswith("linear-") for r in rules.values())  # adapters + head; nothing else
    assert {p.rsplit(".", 2)[-2] for p in rules if p != "head"} == {"lora_A", "lora_B"}
    weights = load_file(str(out / "model" / "model.safetensors"))
    lora_b = [k for k in weights if ".lora_B." in k]
    assert lora_b and all(weights[k].abs().max() > 0 for k in lora_b)  # trained away from their zero init
    adapters = sum(v.numel() for k, v in weights.items() if ".lora_A." in k or ".lora_B." in k)
    assert m["trainable_parameters"] == adapters + weights["head.weight"].numel() + weights["head.bias"].numel()

    saved = load_model(out / "model")
    assert saved.model.config["trainable"] == "lora"
    again = run_evaluate(out / "model", DataConfig(corpus_size=300), seed=3, device="cpu")  # the same test split
    assert again.metrics["test_loss"] == m["test_loss"] and again.metrics["test_accuracy"] == m["test_accuracy"]


def test_cli_trains_lora_privately(tmp_path: Path) -> None:
    cfg = tmp_path / "lora.json"
    cfg.write_text(json.dumps(pipeline_config().model_dump(include={"corpus_size", "model", "model_options",
                                                                    "max_length", "lr"})))
    out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = ["train", "--config", str(cfg), "--trainable", "lora", "--dp", "--noise-multiplier", "0.5", "--epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--seed", "4", "--out", str(out), "--quiet"]
    proc = subprocess.run([sys.executable, "-m", "trustnlp.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = read_result(out / "results.json")
    assert res.config["model_options"]["trainable"] == "lora" and res.config["dp"] is True
    assert res.metrics["private"] is True and res.metrics["dp_steps"] >= 1
    again = run_evaluate(out / "model", DataConfig(corpus_size=300), seed=4, device="cpu")
    assert again.metrics["test_loss"] == res.metrics["test_loss"]  # the reloaded model predicts as the trained one
