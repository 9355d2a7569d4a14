"""Per-example clipping under bf16 autocast: activations and output gradients are recorded in
float32, the clipping maths runs outside autocast, and the results stay close to a float32 run."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trustnlp.privacy.clipping import PerSampleClipper


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16, padding_idx=0)
        self.ln = nn.LayerNorm(16)
        self.seq = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.seq(self.ln(self.emb(ids)))).mean(1))


class TiedNet(nn.Module):
    """The embedding table is also the output layer (as in language models): its per-example
    gradient mixes an embedding part (float32 under autocast) and a Linear part (bf16 matmul)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.seq = nn.Linear(16, 16)
        self.out = nn.Linear(16, 20, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.seq(self.emb(ids))).mean(1))


def _clip(model: nn.Module, ids: torch.Tensor, y: torch.Tensor, *, bf16: bool, capture: bool):
    clipper = PerSampleClipper(model, max_grad_norm=0.5)
    if capture:
        clipper.capture(loss_reduction="sum")  # attached until detach()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = nn.functional.cross_entropy(model(ids), y, reduction="none")
            losses.sum().backward()  # the caller's own backward, still inside autocast
        sums = clipper.take_clipped_sums()
        clipper.detach()
        return clipper.last_stats.norms, {n: sums[id(p)] for n, p in model.named_parameters()}
    with clipper:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = nn.functional.cross_entropy(model(ids), y, reduction="none")
        stats = clipper.backward(losses)  # outside autocast (as DPStep does): mixed dtypes must not fail
    return stats.norms, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("make", [Net, TiedNet])
def test_bf16_autocast_norms_and_sums_are_float32_and_close_to_float32_run(make: type[nn.Module]) -> None:
    torch.manual_seed(0)
    base = make()
    ids = torch.randint(1, 20, (6, 5))
    y = torch.randint(0, 3, (6,))
    for capture in (False, True):
        ref_norms, ref = _clip(copy.deepcopy(base), ids, y, bf16=False, capture=capture)
        norms, got = _clip(copy.deepcopy(base), ids, y, bf16=True, capture=capture)
        assert norms.dtype == torch.float32
        torch.testing.assert_close(norms, ref_norms, rtol=0.05, atol=0.0)
        for name, g in got.items():
            assert g.dtype == torch.float32, name
            torch.testing.assert_close(g, ref[name], rtol=0.1, atol=0.02)
