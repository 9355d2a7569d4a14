"""DP-SGD in the one training loop: the step against a loop, accounting, resume, end to end."""

import json

import dp_accounting
import pytest
import torch
from dp_accounting import rdp
from test_clipping_reference import loop_grads, split, trainable_params

from trustnlp.config import TrainConfig
from trustnlp.models import build_model
from trustnlp.pipeline import run_train
from trustnlp.privacy.accounting import PrivacyLedger
from trustnlp.privacy.dp_step import DPStep
from trustnlp.privacy.noise import TorchNoise
from trustnlp.results import read_result
from trustnlp.tasks import ClassifyTask, EncodedData


def _data(n=12, t=6, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    return EncodedData(ids * mask, mask, torch.randint(0, 3, (n,), generator=g))


@pytest.mark.parametrize("arch", ["bag", "transformer"])
def test_sigma0_sgd_step_moves_by_minus_clipped_sum_over_expected_batch(arch):
    """With sigma = 0 and SGD lr 1, one step = -(sum of clipped per-example gradients) / (qN)."""
    torch.manual_seed(0)
    opts = {"dropout": 0.0} if arch == "transformer" else {}
    model = build_model(arch, vocab_size=40, num_labels=3, pad_id=0, **opts).double()
    model.eval()  # no dropout: batch and per-example forwards agree
    data, task = _data(), ClassifyTask(3)
    batch = data.batch(torch.arange(len(data)))
    C, q, n_total = 0.05, 0.25, 40
    step = DPStep(model, noise_multiplier=0.0, max_grad_norm=C, clipping="flat", sampling_rate=q,
                  expected_batch_size=q * n_total, noise=TorchNoise(0), ledger=PrivacyLedger())

    def loss_fn(m, b):
        return task.loss(m(b["input_ids"], b["attention_mask"]), b, reduction="none")

    per_example = loop_grads(model, loss_fn, batch)  # [B, P]
    norms = per_example.norm(dim=1)
    assert (norms > C).all()  # clipping is active
    factors = torch.clamp(C / (norms + 1e-6), max=1.0)
    expected_update = split(model, -(factors[:, None] * per_example).sum(0) / (q * n_total))
    before = [p.detach().clone() for p in trainable_params(model)]
    opt = torch.optim.SGD(trainable_params(model), lr=1.0)
    opt.zero_grad(set_to_none=True)
    step(model, task, batch, len(data), 5)  # physical batches of 5: 5 + 5 + 2
    opt.step()
    for p0, p1, u in zip(before, trainable_params(model), expected_update):
        torch.testing.assert_close(p1 - p0, u, rtol=1e-8, atol=1e-12)
    assert step.ledger.total_count == 1


def test_noise_std_is_sigma_times_sensitivity_over_expected_batch():
    torch.manual_seed(0)
    model = build_model("bag", vocab_size=400, num_labels=3, pad_id=0, dim=64)
    task = ClassifyTask(3)
    step = DPStep(model, noise_multiplier=2.0, max_grad_norm=0.5, clipping="flat", sampling_rate=0.1,
                  expected_batch_size=10.0, noise=TorchNoise(1), ledger=PrivacyLedger())
    empty = _data().batch(torch.arange(0))
    step(model, task, empty, 0, 4)  # empty Poisson batch: noise only
    g = torch.cat([p.grad.flatten() for p in trainable_params(model)])
    expected = 2.0 * 0.5 / 10.0
    # n = 25.8k draws: the sample std is within 2% of the truth with overwhelming probability (alpha << 1e-3)
    assert abs(g.std().item() / expected - 1) < 0.02 and abs(g.mean().item()) < 4 * expected / len(g) ** 0.5


def _dp_config(**kw):
    base = dict(corpus_size=800, model="bag", dp=True, epsilon=4.0, epochs=2, batch_size=64, seed=3,
                checkpoint_every=3, eval_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_private_run_end_to_end_accounts_and_redacts(tmp_path):
    res = run_train(_dp_config(), tmp_path / "run", progress=False)
    m = res.metrics
    assert m["private"] is True and m["privacy_unit"] == "example" and m["accountant"] == "rdp"
    assert 0.99 * 4.0 <= m["epsilon"] <= 4.0  # calibrated for exactly the planned steps
    # epsilon equals a direct dp-accounting computation for the steps actually taken
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(m["sampling_rate"], dp_accounting.GaussianDpEvent(m["noise_multiplier"])),
        m["dp_steps"])
    acc = rdp.RdpAccountant()
    acc.compose(event)
    assert m["epsilon"] == pytest.approx(acc.get_epsilon(m["delta"]), rel=1e-6)
    assert m["delta"] < 1 / m["num_train"]
    assert m["dp_steps"] == m["planned_steps"] == m["steps"]
    assert m["truncated_train"] is None and all(r["train_loss"] is None for r in res.rows)
    assert m["max_length"] == 64  # not sized from the private data
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metrics"]["privacy_ledger"]["records"]


def test_private_run_resumes_bitwise(tmp_path):
    from safetensors.torch import load_file

    cfg = _dp_config()
    run_train(cfg, tmp_path / "a", progress=False)
    run_train(cfg, tmp_path / "b", progress=False, stop_after_steps=4)
    res_b = run_train(cfg, tmp_path / "b", progress=False)
    wa = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert res_b.metrics["epsilon"] == read_result(tmp_path / "a" / "results.json").metrics["epsilon"]
