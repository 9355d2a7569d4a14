"""PerSampleClipper on trustnlp's model families (tiny, float64, no dropout) against a per-example loop."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_clipping_reference import assert_close, clipped_grads, loop_grads
from torch import nn

from trustnlp.models import build_model
from trustnlp.privacy.clipping import PerSampleClipper
from trustnlp.tasks import IGNORE_INDEX, ClassifyTask, LMTask, TagTask

V, B, T, C = 13, 4, 7, 0.05

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

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "bag": ("classify", {"arch": "bag", "dim": 8, "hidden": 6}),
    "cnn": ("classify", {"arch": "cnn", "dim": 8, "kernel_sizes": [2, 3], "filters": 4}),
    "lstm": ("classify", {"arch": "lstm", "dim": 8, "hidden": 4}),
    "transformer": ("classify", {"arch": "transformer", "dim": 8, "layers": 1, "heads": 2, "ff": 16, "max_len": 16}),
    "joint-cnn": ("tag", {"arch": "joint", "encoder_options": {"dim": 8, "kernel_sizes": [2, 3], "filters": 4}}),
    "lm-gpt2": ("lm", {"arch": "lm", "layers": 1, "dim": 8, "heads": 2, "max_len": 16}),
    "lm-transformer": (
        "lm",
        {"arch": "lm", "backbone": "transformer", "layers": 1, "dim": 8, "heads": 2, "max_len": 16},
    ),
    "minilm-full": ("classify", {"arch": "minilm", "encoder_config": TINY_BERT}),
    "minilm-frozen": ("classify", {"arch": "minilm", "encoder_config": TINY_BERT, "trainable": "frozen"}),
    "minilm-last-k": ("classify", {"arch": "minilm", "encoder_config": TINY_BERT, "trainable": "last-k", "k": 1}),
}

EXPECTED_RULES = {  # module path suffix -> rule, checked where present
    "embedding": "embedding",
    "word_embeddings": "embedding",
    "wte": "embedding",
    "forward_lstm": "vmap-fallback",
    "LayerNorm": "layernorm",
    "ln_f": "layernorm",
    "c_attn": "gpt2-conv1d-ghost",
    "head": "linear-ghost",
}


pytestmark = pytest.mark.usefixtures("float64_default")


def build(name: str) -> tuple[nn.Module, Any]:
    task_name, options = MODELS[name]
    options = dict(options)
    arch = options.pop("arch")
    sizes: dict[str, Any] = {}
    if task_name != "lm":
        sizes["num_labels"] = 3
    if task_name == "tag":
        sizes["num_tags"] = 4
    torch.manual_seed(0)
    model = build_model(arch, vocab_size=V, dropout=0.0, **sizes, **options).double()
    task = {"classify": lambda: ClassifyTask(3), "tag": lambda: TagTask(3, ["O", "B-x", "I-x", "B-y"]), "lm": LMTask}[
        task_name
    ]()
    return model, task


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 3, 5, 2])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 6, (B, T), generator=g) * mask  # repeated ids, right padding with 0
    tags = torch.randint(0, 4, (B, T), generator=g).masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (B,), generator=g), "tag_ids": tags}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_family_matches_loop(name: str) -> None:
    model, task = build(name)

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return task.loss(m(batch["input_ids"], batch["attention_mask"]), batch, reduction="none")

    batch = make_batch()
    G = loop_grads(model, loss_fn, batch)
    norms_ref = G.norm(dim=1)
    assert (norms_ref > C).all()
    factors = (C / (norms_ref + 1e-6)).clamp(max=1.0)
    clipper = PerSampleClipper(model, max_grad_norm=C)
    norms, got = clipped_grads(model, loss_fn, batch, clipper)
    assert_close(norms, norms_ref)
    assert_close(got, (factors[:, None] * G).sum(0))
    report = clipper.rules_report()
    trainable = {n for n, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))}
    assert set(report) == trainable
    for path, rule in report.items():
        suffix = path.rsplit(".", 1)[-1]
        if suffix in EXPECTED_RULES:
            assert rule == EXPECTED_RULES[suffix], (path, rule)
    if name == "lm-gpt2":
        assert model.model.lm_head.weight is model.model.transformer.wte.weight  # tied: cross terms exercised
    if name == "minilm-frozen":
        assert set(report) == {"head"}
    if name == "lstm":
        assert report["encoder.backward_lstm"] == "vmap-fallback"
