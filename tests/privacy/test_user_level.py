"""User-level DP: group clipping against a per-user loop, the DP step, the pipeline and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dp_accounting
import pytest
import torch
import torch.nn.functional as F
from dp_accounting import rdp
from test_clipping_reference import assert_close, group_columns, loop_grads, split, trainable_params
from torch import nn

from trustnlp.config import TrainConfig
from trustnlp.errors import ConfigError, DataError
from trustnlp.models import build_model
from trustnlp.pipeline import run_train
from trustnlp.privacy.accounting import PrivacyLedger
from trustnlp.privacy.clipping import PerSampleClipper
from trustnlp.privacy.clipping.groups import GroupLayout
from trustnlp.privacy.dp_step import DPStep
from trustnlp.privacy.noise import TorchNoise
from trustnlp.privacy.sampling import UserPoissonSampler
from trustnlp.privacy.training import UserEncodedData
from trustnlp.tasks import ClassifyTask, EncodedData

V, B, T = 13, 8, 5
# groups: interleaved, sizes 3 / 0 (group 1 is empty) / 2 / 1 / 2 -> K = 5, M = 3 (regrouped T' = 15)
GROUPS = torch.tensor([0, 2, 0, 3, 4, 2, 0, 4])


pytestmark = pytest.mark.usefixtures("float64_default")


class SeqModel(nn.Module):
    """Embedding (padding_idx) -> LayerNorm -> sequence Linears -> GRU (vmap fallback) -> head; optional
    output layer tied to the embedding (Rows x Outer cross terms).

    Mixed ghost norm per example (T = 5: ghost iff 50 < m n) and after regrouping (T' = 15: iff 450 < m n):
    ``small`` (8 x 8) instantiates in both, ``wide`` (8 -> 96) is ghost in both, ``mid`` (8 -> 32) is
    ghost per example but instantiated per group.
    """

    def __init__(self, *, tied: bool = False) -> None:
        super().__init__()
        d = 8
        self.emb = nn.Embedding(V, d, padding_idx=0)
        self.ln = nn.LayerNorm(d)
        self.small = nn.Linear(d, d)
        self.mid = nn.Linear(d, 32)
        self.wide = nn.Linear(d, 96)
        self.gru = nn.GRU(d, 4, batch_first=True)
        self.head = nn.Linear(32 + 96 + 4, 3)
        self.lm = nn.Linear(d, V, bias=False) if tied else None
        if tied:
            self.lm.weight = self.emb.weight

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = mask.unsqueeze(-1).to(torch.get_default_dtype())
        h = torch.tanh(self.small(self.ln(self.emb(ids))))
        out, _ = self.gru(h)
        pooled = torch.cat([(torch.tanh(self.mid(h)) * m).sum(1), (torch.sin(self.wide(h)) * m).mean(1),
                            (out * m).sum(1)], -1)
        return self.head(pooled), (self.lm(h) if self.lm is not None else None)


def seq_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits, lm = model(batch["input_ids"], batch["attention_mask"])
    loss = F.cross_entropy(logits, batch["labels"], reduction="none")
    if lm is not None:
        tok = F.cross_entropy(lm.transpose(1, 2), batch["input_ids"], reduction="none")
        loss = loss + 0.1 * (tok * batch["attention_mask"]).sum(1)
    return loss


def seq_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 4, 2, 5, 1, 3, 4])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    ids = torch.randint(1, V, (B, T), generator=g) * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (B,), generator=g)}


def per_group_reference(model, batch, groups, clipping, c):
    """Per-user loop: each user's summed gradient (per-example backward passes), its norm, then clipping."""
    per_example = loop_grads(model, seq_loss, batch)  # [B, P]
    k = int(groups.max()) + 1
    summed = torch.zeros(k, per_example.shape[1]).index_add_(0, groups, per_example)  # [K, P]
    norms = summed.norm(dim=1)
    if clipping == "flat":
        clipped = summed * torch.clamp(c / (norms + 1e-6), max=1.0)[:, None]
    elif clipping == "automatic":
        clipped = summed / (norms + 0.01)[:, None]
    else:  # per-layer, C_l = C / sqrt(L)
        cols = group_columns(model)
        cl = c / len(cols) ** 0.5
        clipped = summed.clone()
        for mask in cols.values():
            n = summed[:, mask].norm(dim=1)
            clipped[:, mask] = summed[:, mask] * torch.clamp(cl / (n + 1e-6), max=1.0)[:, None]
    return norms, clipped.sum(0)


def flat_grad(model):
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in trainable_params(model)])


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(("clipping", "mode"), [("flat", "bk"), ("flat", "ghost"), ("per-layer", "bk"),
                                                ("automatic", "bk")])
def test_group_clipping_matches_a_per_user_loop(tied, clipping, mode):
    torch.manual_seed(0)
    model = SeqModel(tied=tied)
    batch, c = seq_batch(), 0.3
    ref_norms, ref_sum = per_group_reference(model, batch, GROUPS, clipping, c)
    assert (ref_norms[[0, 2, 3, 4]] > c).all() and ref_norms[1] == 0  # clipping active; group 1 is empty
    clipper = PerSampleClipper(model, max_grad_norm=c, clipping=clipping, mode=mode)
    model.zero_grad(set_to_none=True)
    with clipper:
        stats = clipper.backward(seq_loss(model, batch), groups=GROUPS)
    assert_close(stats.norms, ref_norms)
    assert_close(flat_grad(model), ref_sum)
    assert clipper.rules_report()["gru"] == "vmap-fallback"


def test_singleton_groups_equal_per_example_clipping():
    torch.manual_seed(1)
    model, batch = SeqModel(tied=True), seq_batch(1)
    clipper = PerSampleClipper(model, max_grad_norm=0.2)
    model.zero_grad(set_to_none=True)
    with clipper:
        plain = clipper.backward(seq_loss(model, batch))
    expected = flat_grad(model)
    model.zero_grad(set_to_none=True)
    perm = torch.randperm(B)
    with clipper:
        grouped = clipper.backward(seq_loss(model, batch), groups=perm)  # group perm[i] = example i alone
    torch.testing.assert_close(grouped.norms[perm], plain.norms, rtol=1e-10, atol=0)
    torch.testing.assert_close(flat_grad(model), expected, rtol=1e-10, atol=1e-14)


def test_norms_only_leave_no_gradient():
    torch.manual_seed(2)
    model, batch = SeqModel(), seq_batch(2)
    ref_norms, _ = per_group_reference(model, batch, GROUPS, "flat", 1.0)
    clipper = PerSampleClipper(model, max_grad_norm=1.0)
    model.zero_grad(set_to_none=True)
    with clipper:
        stats = clipper.norms(seq_loss(model, batch), groups=GROUPS)
    assert_close(stats.norms, ref_norms)
    assert all(p.grad is None for p in model.parameters())


def test_group_layout():
    layout = GroupLayout.of(GROUPS, B)
    assert (layout.num_groups, layout.max_size) == (5, 3)
    assert layout.rank.tolist() == [0, 0, 1, 0, 0, 1, 2, 1]
    x = torch.arange(B, dtype=torch.float64)[:, None, None].expand(B, 2, 1)
    padded = layout.pad(x, fill=-1)  # [K, M*2, 1]
    assert padded[0, :, 0].tolist() == [0, 0, 2, 2, 6, 6] and padded[1, :, 0].tolist() == [-1] * 6
    assert padded[3, :, 0].tolist() == [3, 3, -1, -1, -1, -1]


@pytest.mark.parametrize("bad", [torch.tensor([0.0, 1.0]), torch.tensor([0, 1, 2]), torch.tensor([0, -1]),
                                 [0, 1], torch.tensor([[0, 1]])])
def test_bad_groups_are_refused(bad):
    model = nn.Linear(3, 1)
    with PerSampleClipper(model) as clipper, pytest.raises(ConfigError, match="Expected `groups` to be a 1-D integer"):
        clipper.backward(model(torch.randn(2, 3)).squeeze(1), groups=bad)


# -- the DP step ------------------------------------------------------------------------------------
def _data(n=10, t=6, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    return EncodedData(ids * mask, mask, torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_sigma0_sgd_step_moves_by_minus_clipped_user_sum_over_expected_users(arch):
    """sigma = 0, SGD lr 1: one step = -(sum over users of the clipped summed gradient) / (qU)."""
    torch.manual_seed(0)
    opts = {"dropout": 0.0} if arch == "transformer" else {}
    model = build_model(arch, vocab_size=40, num_labels=3, pad_id=0, **opts).double()
    model.eval()  # no dropout: batch and per-example forwards agree
    users = torch.tensor([3, 1, 3, 0, 1, 3, 2, 0, 3, 2])  # user 3 has 4 examples (> the physical batch of 3)
    base, task = _data(), ClassifyTask(3)
    data = UserEncodedData(base.input_ids, base.attention_mask, base.labels, users=users)
    batch = data.batch(torch.arange(len(data)))
    C, q, num_users = 0.05, 0.25, 12
    step = DPStep(model, noise_multiplier=0.0, max_grad_norm=C, clipping="flat", sampling_rate=q,
                  expected_batch_size=q * num_users, noise=TorchNoise(0), ledger=PrivacyLedger(), privacy_unit="user")
    parts = [part["labels"].shape[0] for part, _ in step.parts(batch, 3)]
    assert parts == [2, 2, 2, 4]  # cut at user boundaries only; user 3 (4 examples) alone, above 3

    def loss_fn(m, b):
        return task.loss(m(b["input_ids"], b["attention_mask"]), b, reduction="none")

    per_example = loop_grads(model, loss_fn, {k: v for k, v in batch.items() if k != "user"})
    summed = torch.zeros(4, per_example.shape[1]).index_add_(0, users, per_example)
    norms = summed.norm(dim=1)
    assert (norms > C).all()
    expected = split(model, -(summed * torch.clamp(C / (norms + 1e-6), max=1.0)[:, None]).sum(0) / (q * num_users))
    before = [p.detach().clone() for p in trainable_params(model)]
    opt = torch.optim.SGD(trainable_params(model), lr=1.0)
    opt.zero_grad(set_to_none=True)
    step(model, task, batch, len(data), 3)
    opt.step()
    for p0, p1, u in zip(before, trainable_params(model), expected):
        torch.testing.assert_close(p1 - p0, u, rtol=1e-8, atol=1e-12)
    assert step.ledger.total_count == 1


def test_user_batches_for_the_loop():
    ids = ["b", "a", "b", "c", "a", "b", "b"]
    sampler = UserPoissonSampler(ids, sampling_rate=0.5, seed=3, max_examples_per_user=2)
    view = sampler.example_batches()
    assert view.steps_per_epoch == sampler.steps_per_epoch == 2
    for idx, ub in zip(view.epoch(1), sampler.epoch(1)):
        assert torch.equal(idx, ub.indices) and torch.equal(sampler.user_index[idx], ub.users)
    assert sampler.user_index.tolist() == [0, 1, 0, 2, 1, 0, 0]
    assert sampler.kept_indices.numel() == 5  # user "b" capped at 2 of its 4 examples


# -- end to end -------------------------------------------------------------------------------------
def _user_config(**kw):
    base = dict(corpus_size=400, corpus_users=60, model="bag", dp=True, epsilon=4.0, epochs=2, batch_size=64, seed=1,
                privacy_unit="user", max_examples_per_user=8, eval_every=0)
    base.update(kw)
    return TrainConfig(**base)


def test_user_level_run_accounts_users(tmp_path):
    res = run_train(_user_config(), tmp_path / "run", progress=False)
    m = res.metrics
    assert m["privacy_unit"] == "user" and m["max_examples_per_user"] == 8
    n_users = res.data["details"]["n_users_effective"]
    assert m["num_users"] <= n_users and m["num_users"] > 40  # the users of the training split
    assert m["delta"] < 1 / m["num_users"]
    assert m["expected_users_per_step"] == pytest.approx(m["sampling_rate"] * m["num_users"])
    assert 0.99 * 4.0 <= m["epsilon"] <= 4.0
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(m["sampling_rate"], dp_accounting.GaussianDpEvent(m["noise_multiplier"])),
        m["dp_steps"]))
    assert m["epsilon"] == pytest.approx(acc.get_epsilon(m["delta"]), rel=1e-6)


def test_cli_user_level_writes_privacy_unit(tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "trustnlp.cli", "train", "--corpus-size", "300", "--model", "bag", "--dp", "--epsilon",
         "8", "--privacy-unit", "user", "--max-examples-per-user", "5", "--epochs", "1", "--batch-size", "64",
         "--device", "cpu", "--out", str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"]["privacy_unit"] == "user" and saved["config"]["privacy_unit"] == "user"
    assert saved["metrics"]["max_examples_per_user"] == 5 and saved["metrics"]["num_users"] > 0


def test_user_level_needs_a_user_column(tmp_path):
    path = tmp_path / "toy.csv"
    rows = [f"{'play some music' if i % 2 else 'what time is it'} {i},{'music' if i % 2 else 'time'}" for i in range(40)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    cfg = TrainConfig(data=str(path), model="bag", dp=True, epsilon=4.0, epochs=1, batch_size=8, privacy_unit="user")
    with pytest.raises(DataError, match=r"needs a per-example user column `user_id`.*has columns \[\]"):
        run_train(cfg, tmp_path / "run", progress=False)


def test_config_refuses_user_options_without_dp():
    with pytest.raises(ValueError, match="only apply to private training"):
        TrainConfig(privacy_unit="user")
    with pytest.raises(ValueError, match="applies to user-level DP only"):
        TrainConfig(dp=True, epsilon=1.0, max_examples_per_user=3)
