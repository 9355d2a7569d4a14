"""PerSampleClipper on small models covering every rule, against a per-example loop (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_clipping_reference import (
    assert_close,
    clipped_grads,
    group_columns,
    loop_grads,
    per_sample_grad_norms_loop,
    split,
)
from torch import nn

from trustnlp.errors import ConfigError, PrivacyError
from trustnlp.privacy.clipping import (
    CLIPPING_MODES,
    RULES,
    Dense,
    Outer,
    PerSampleClipper,
    Rows,
    Rule,
    find_rule,
)
from trustnlp.privacy.clipping.grads import dot, merge, squared_norm

V, B, T = 11, 5, 6


pytestmark = pytest.mark.usefixtures("float64_default")


class Toy(nn.Module):
    """Embedding (padding_idx) -> LayerNorm -> sequence Linears (one called twice, one instantiated)
    -> Conv1d -> masked mean -> head Linear on [B, d]; optional LSTM (fallback) and a tied output layer."""

    def __init__(self, *, lstm: bool = False, tied: bool = False, conv: dict | None = None) -> None:
        super().__init__()
        d = 8
        self.emb = nn.Embedding(V, d, padding_idx=0)
        self.ln = nn.LayerNorm(d)
        # mixed ghost norm (ghost iff 2 T^2 < d_in d_out) with T = 6 per call:
        self.proj = nn.Linear(d, d)  # called twice (T = 12): instantiate
        self.small = nn.Linear(d, 2)  # called twice: instantiate
        self.wide = nn.Linear(2, 24)  # called twice: instantiate
        self.seq = nn.Linear(d, 16)  # 72 < 128: ghost
        self.conv = nn.Conv1d(24, 6, **(conv or {"kernel_size": 3, "padding": 1}))
        self.lstm = nn.LSTM(d, 4, batch_first=True) if lstm else None
        self.rms = nn.RMSNorm(6)
        self.head = nn.Linear(6 + 16 + (4 if lstm else 0), 3)  # T = 1: ghost
        self.lm = nn.Linear(d, V, bias=False) if tied else None
        if tied:
            self.lm.weight = self.emb.weight

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = mask.unsqueeze(-1).to(torch.get_default_dtype())
        x = self.ln(self.emb(ids))
        h = torch.tanh(self.proj(x))
        h = torch.tanh(self.proj(h)) * m  # proj used twice
        w = self.wide(torch.tanh(self.small(h)))
        w = w + self.wide(torch.sin(self.small(x)))  # wide and small used twice
        c = torch.relu(self.conv(w.transpose(1, 2))).transpose(1, 2)  # [B, L', 6]
        pooled = torch.cat([self.rms(c.mean(1)), (torch.tanh(self.seq(h)) * m).sum(1)], -1)
        if self.lstm is not None:
            out, _ = self.lstm(x)
            pooled = torch.cat([pooled, (out * m).sum(1)], -1)
        logits = self.head(pooled)
        return logits, (self.lm(h) if self.lm is not None else None)


def toy_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    logits, lm = model(batch["ids"], batch["mask"])
    loss = F.cross_entropy(logits, batch["y"], reduction="none")
    if lm is not None:
        tok = F.cross_entropy(lm[:, :-1].transpose(1, 2), batch["ids"][:, 1:], reduction="none")
        loss = loss + (tok * batch["mask"][:, 1:]).sum(1) / batch["mask"][:, 1:].sum(1)
    return loss


def make_batch(b: int = B, t: int = T, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 4, (b, t), generator=g)  # small id range: many repeated ids
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    ids = ids * mask  # right padding with id 0 = padding_idx
    return {"ids": ids, "mask": mask, "y": torch.randint(0, 3, (b,), generator=g)}


def flat_reference(model, loss_fn, batch, c: float):
    G = loop_grads(model, loss_fn, batch)
    norms = G.norm(dim=1)
    factors = (c / (norms + 1e-6)).clamp(max=1.0)
    return norms, (factors[:, None] * G).sum(0), G


# -- representations --------------------------------------------------------------------------------
def _reps():
    g = torch.Generator().manual_seed(1)
    b, t, s, vv, d = 3, 4, 5, 7, 6
    outer = Outer(torch.randn(b, t, vv, generator=g), torch.randn(b, t, d, generator=g), torch.Size((vv, d)))
    outer_i = Outer(torch.randn(b, 9, vv, generator=g), torch.randn(b, 9, d, generator=g), torch.Size((vv, d)))
    rows = Rows(torch.randint(0, 3, (b, s), generator=g), torch.randn(b, s, d, generator=g), vv, padding_idx=0)
    rows2 = Rows(torch.randint(0, vv, (b, 2), generator=g), torch.randn(b, 2, d, generator=g), vv)
    dense = Dense(torch.randn(b, vv, d, generator=g))
    return [outer, outer_i, rows, rows2, dense]


def test_representations_match_dense_forms() -> None:
    reps = _reps()
    assert reps[0].ghost and not reps[1].ghost
    rows = reps[2]
    explicit = torch.zeros(rows.dense().shape)
    for i in range(rows.ids.shape[0]):
        for t in range(rows.ids.shape[1]):
            if rows.ids[i, t] != 0:  # padding_idx gets no gradient
                explicit[i, rows.ids[i, t]] += rows.g[i, t]
    assert (rows.ids == 0).any() and (rows.ids == 1).sum() > rows.ids.shape[0]  # padding and repeats present
    assert_close(rows.dense(), explicit)
    assert_close(reps[0].dense(), torch.einsum("btm,btn->bmn", reps[0].u, reps[0].v))
    c = torch.tensor([0.3, 1.0, 2.0])
    for a in reps:
        assert_close(a.sq_norm(), a.dense().flatten(1).pow(2).sum(1))
        assert_close(a.weighted_sum(c), torch.tensordot(c, a.dense(), dims=1))
        for b in reps:
            assert_close(dot(a, b), (a.dense() * b.dense()).flatten(1).sum(1))
    total = sum(r.dense() for r in reps)
    assert_close(squared_norm(merge(reps)), total.flatten(1).pow(2).sum(1))


# -- toy models against the loop ------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["plain", "tied", "lstm"])
def test_flat_clipping_matches_loop(variant: str) -> None:
    torch.manual_seed(0)
    model = Toy(lstm=variant == "lstm", tied=variant == "tied")
    batch = make_batch()
    ref_norms, ref_sum, _ = flat_reference(model, toy_loss, batch, 0.5)
    assert (ref_norms > 0.5).any()
    clipper = PerSampleClipper(model, max_grad_norm=0.5)
    norms, got = clipped_grads(model, toy_loss, batch, clipper)
    assert_close(norms, ref_norms)
    assert_close(got, ref_sum)
    report = clipper.rules_report()
    assert report["emb"] == "embedding" and report["ln"] == "layernorm" and report["rms"] == "rmsnorm"
    assert report["head"] == "linear-ghost" and report["seq"] == "linear-ghost"
    assert report["small"] == report["proj"] == "linear-instantiate"
    assert report["conv"].startswith("conv1d-")
    assert ("lstm" in report) == (variant == "lstm")
    if variant == "lstm":
        assert report["lstm"] == "vmap-fallback"
    if variant == "tied":
        assert "lm" not in report or report["lm"].startswith("linear-")


@pytest.mark.parametrize(
    "conv",
    [
        {"kernel_size": 2, "padding": "same"},
        {"kernel_size": 3, "stride": 2, "dilation": 2, "padding": 2},
        {"kernel_size": 1, "bias": False},
        {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},  # -> fallback
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_conv1d_configurations(conv: dict) -> None:
    torch.manual_seed(1)
    model = Toy(conv=conv)
    batch = make_batch()
    ref_norms, ref_sum, _ = flat_reference(model, toy_loss, batch, 0.3)
    clipper = PerSampleClipper(model, max_grad_norm=0.3)
    norms, got = clipped_grads(model, toy_loss, batch, clipper)
    assert_close(norms, ref_norms)
    assert_close(got, ref_sum)
    expect_fallback = conv.get("padding_mode") == "reflect"
    assert (clipper.rules_report()["conv"] == "vmap-fallback") == expect_fallback


def test_ghost_mode_matches_bk() -> None:
    torch.manual_seed(2)
    model = Toy(tied=True)
    batch = make_batch()
    _, bk = clipped_grads(model, toy_loss, batch, PerSampleClipper(model, max_grad_norm=0.4))
    _, ghost = clipped_grads(model, toy_loss, batch, PerSampleClipper(model, max_grad_norm=0.4, mode="ghost"))
    assert_close(ghost, bk)


def test_per_layer_clipping() -> None:
    torch.manual_seed(3)
    model = Toy(tied=True)
    batch = make_batch()
    G = loop_grads(model, toy_loss, batch)
    cols = group_columns(model)
    assert "lm" not in cols  # the tied weight belongs to `emb`
    thresholds = {name: 0.05 * (k + 1) for k, name in enumerate(sorted(cols))}
    clipper = PerSampleClipper(model, max_grad_norm=thresholds, clipping="per-layer")
    model.zero_grad(set_to_none=True)
    with clipper:
        stats = clipper.backward(toy_loss(model, batch))
    expected = torch.zeros(G.shape[1])
    for name, m in cols.items():
        layer = G[:, m]
        assert_close(stats.layer_norms[name], layer.norm(dim=1))
        c = (thresholds[name] / (layer.norm(dim=1) + 1e-6)).clamp(max=1.0)
        assert_close(stats.factors[name], c)
        assert ((c[:, None] * layer).norm(dim=1) <= thresholds[name] + 1e-9).all()
        expected[m] = (c[:, None] * layer).sum(0)
    got = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    assert_close(got, expected)
    assert clipper.sensitivity == pytest.approx(math.sqrt(sum(v * v for v in thresholds.values())))
    assert_close(stats.norms, G.norm(dim=1))
    even = PerSampleClipper(model, max_grad_norm=2.0, clipping="per-layer")
    assert even.sensitivity == pytest.approx(2.0)


def test_automatic_clipping() -> None:
    torch.manual_seed(4)
    model = Toy()
    batch = make_batch()
    G = loop_grads(model, toy_loss, batch)
    clipper = PerSampleClipper(model, clipping="automatic", automatic_gamma=0.05)
    _, got = clipped_grads(model, toy_loss, batch, clipper)
    assert_close(got, (G / (G.norm(dim=1, keepdim=True) + 0.05)).sum(0))
    assert clipper.sensitivity == 1.0


def test_accumulation_over_physical_batches() -> None:
    torch.manual_seed(5)
    model = Toy(lstm=True)
    batch = make_batch(b=6)
    _, ref_sum, _ = flat_reference(model, toy_loss, batch, 0.2)
    model.zero_grad(set_to_none=True)
    with PerSampleClipper(model, max_grad_norm=0.2) as clipper:
        for part in (slice(0, 2), slice(2, 6)):
            sub = {k: v[part] for k, v in batch.items()}  # same padding as in the union (Toy pools over it)
            clipper.backward(toy_loss(model, sub))
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert_close(got, ref_sum)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=st.floats(0.01, 3.0), seed=st.integers(0, 10_000), b=st.integers(1, 5))
def test_clipped_contributions_bounded(c: float, seed: int, b: int) -> None:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(V, 4, padding_idx=0), nn.LayerNorm(4), nn.Linear(4, 3))

    def loss_fn(m: nn.Module, batch: dict) -> torch.Tensor:
        return F.cross_entropy(m(batch["ids"]).mean(1), batch["y"], reduction="none")

    batch = make_batch(b=b, seed=seed)
    G = loop_grads(model, loss_fn, batch)
    norms, got = clipped_grads(model, loss_fn, batch, PerSampleClipper(model, max_grad_norm=c))
    assert_close(norms, G.norm(dim=1))
    factors = (c / (norms + 1e-6)).clamp(max=1.0)
    assert ((factors[:, None] * G).norm(dim=1) <= c + 1e-9).all()
    assert_close(got, (factors[:, None] * G).sum(0))


# -- frozen parameters, errors, API ---------------------------------------------------------------
def test_frozen_parameters_are_ignored() -> None:
    torch.manual_seed(6)
    model = Toy()
    for p in [*model.emb.parameters(), *model.ln.parameters(), *model.proj.parameters()]:
        p.requires_grad_(False)
    batch = make_batch()
    ref_norms, ref_sum, _ = flat_reference(model, toy_loss, batch, 0.5)
    clipper = PerSampleClipper(model, max_grad_norm=0.5)
    norms, got = clipped_grads(model, toy_loss, batch, clipper)
    assert_close(norms, ref_norms)
    assert_close(got, ref_sum)
    assert model.emb.weight.grad is None and model.proj.weight.grad is None
    assert not {"emb", "ln", "proj"} & set(clipper.rules_report())


def test_batchnorm_in_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    with PerSampleClipper(model) as clipper, pytest.raises(PrivacyError, match=r"`1` \(BatchNorm1d\)"):
        clipper.backward(F.cross_entropy(model(x), y, reduction="none"))
    model[1].requires_grad_(False)  # frozen: still mixes examples
    with PerSampleClipper(model) as clipper, pytest.raises(PrivacyError, match="BatchNorm1d"):
        clipper.backward(F.cross_entropy(model(x), y, reduction="none"))
    model.eval()  # running statistics: examples independent
    with PerSampleClipper(model) as clipper:
        clipper.backward(F.cross_entropy(model(x), y, reduction="none"))


class Mixer(nn.Module):
    """A custom layer mixing examples (subtracts the batch mean): the fallback must refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) * self.w


def test_fallback_refuses_modules_mixing_examples() -> None:
    model = nn.Sequential(nn.Linear(3, 3), Mixer())
    x = torch.randn(4, 3)
    with PerSampleClipper(model) as clipper, pytest.raises(PrivacyError, match=r"`1` \(Mixer\).*mixes examples"):
        clipper.backward(model(x).pow(2).sum(1))


def test_unrecorded_and_misused() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    x = torch.randn(4, 3)
    clipper = PerSampleClipper(model)
    with clipper, pytest.raises(PrivacyError, match="No forward pass"):
        clipper.backward(torch.ones(4, requires_grad=True))
    with clipper, pytest.raises(PrivacyError, match=r"module\(s\) \['1'\]"):
        clipper.backward(model[0](x).sum(1))
    with clipper, pytest.raises(ConfigError, match="per_example_loss"):
        clipper.backward(model(x).sum())
    with clipper, pytest.raises(PrivacyError, match="modified in place"):
        h = torch.randn(4, 3, requires_grad=True) * 1.0
        out = model(h)
        h.mul_(2.0)
        clipper.backward(out.sum(1))
    with clipper, pytest.raises(PrivacyError, match="batch dimension|batch"):
        clipper.backward(model(torch.randn(3)).sum().reshape(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_grad_norm": -1.0}, "Expected `max_grad_norm` to be > 0, but got -1.0."),
        ({"max_grad_norm": 0}, "Expected `max_grad_norm` to be > 0, but got 0."),
        ({"clipping": "nope"}, "Expected `clipping` to be one of"),
        ({"mode": "fast"}, "Expected `mode` to be one of"),
        ({"automatic_gamma": 0.0}, "Expected `automatic_gamma` to be > 0"),
        ({"max_grad_norm": {"0": 1.0}}, "mapping needs clipping='per-layer'"),
        ({"max_grad_norm": {"zz": 1.0}, "clipping": "per-layer"}, "own no parameters"),
        ({"clipping": "per-layer", "mode": "ghost"}, "'bk' with per-layer"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        PerSampleClipper(nn.Linear(2, 2), **kwargs)
    assert message in str(err.value)


def test_registry_and_constants() -> None:
    assert CLIPPING_MODES == ("flat", "per-layer", "automatic")
    assert isinstance(RULES[nn.Linear], Rule) and find_rule(nn.LSTM(2, 2)) is None
    assert find_rule(nn.Conv1d(2, 2, 3, groups=2)) is None
    assert per_sample_grad_norms_loop(
        nn.Linear(2, 1), lambda m, b: m(b["x"]).sum(1), {"x": torch.ones(2, 2)}
    ).shape == (2,)
    model = nn.Linear(2, 2)
    with PerSampleClipper(model) as clipper:
        assert clipper.rules_report() == {"": "linear"}
    assert len(split(model, torch.zeros(6))) == 2
