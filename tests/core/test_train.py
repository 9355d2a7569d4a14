"""The training loop: exact resume, physical-batch invariance, the memory guard, schedules."""

import math

import pytest
import torch
from torch import nn

from trustnlp.config import TrainConfig
from trustnlp.errors import ConfigError, TrustNLPError
from trustnlp.tasks import ClassifyTask, EncodedData
from trustnlp.train import _accumulate, find_physical_batch_size, fit, make_scheduler


class Tiny(nn.Module):
    arch = "tiny"

    def __init__(self, vocab=50, dim=8, labels=3, dropout=0.3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, labels)

    def forward(self, ids, mask):
        h = self.emb(ids) * mask.unsqueeze(-1)
        h = h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.out(self.drop(h))


def make_data(n=70, t=7, seed=0, dtype=torch.long):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = (ids[:, 0] % 3).long()
    return EncodedData(ids, mask, labels)


def make_model(seed=1, double=False):
    torch.manual_seed(seed)
    m = Tiny()
    return m.double() if double else m


def cfg(**kw):
    base = dict(epochs=3, batch_size=16, lr=0.05, seed=7, eval_every=1, scheduler="linear", warmup_ratio=0.1)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_bitwise_equal(tmp_path):
    data, val, task = make_data(), make_data(20, seed=5), ClassifyTask(3)
    config = cfg(checkpoint_every=2)
    a = make_model()
    res_a = fit(a, task, data, config=config, validation=val, checkpoint_dir=tmp_path / "a", progress=False)
    rng_a = torch.get_rng_state()
    # interrupted mid-epoch 2 (5 steps/epoch), then resumed into a freshly built model
    b = make_model()
    part = fit(b, task, data, config=config, validation=val, checkpoint_dir=tmp_path / "b", progress=False, stop_after_steps=7)
    assert part.extra["interrupted"] and part.steps == 7
    torch.manual_seed(12345)  # the resumed process's RNG state must come from the checkpoint
    c = make_model(seed=99)  # different init: everything must come from the checkpoint
    res_c = fit(c, task, data, config=config, validation=val, checkpoint_dir=tmp_path / "b", progress=False)
    assert res_c.resumed_from_step == 7 and res_c.steps == res_a.steps == 15
    for (k, p), (_, q) in zip(a.state_dict().items(), c.state_dict().items()):
        assert torch.equal(p, q), k
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(res_a.history) == strip(res_c.history)
    assert torch.equal(rng_a, torch.get_rng_state())  # dropout RNG followed the same path


def test_resume_refuses_a_different_config(tmp_path):
    data, task = make_data(), ClassifyTask(3)
    fit(make_model(), task, data, config=cfg(), checkpoint_dir=tmp_path, progress=False, stop_after_steps=3)
    with pytest.raises(ConfigError, match="different configuration"):
        fit(make_model(), task, data, config=cfg(lr=0.01), checkpoint_dir=tmp_path, progress=False)


def test_physical_batches_do_not_change_the_update():
    data, task = make_data(), ClassifyTask(3)
    models = []
    for physical in (16, 5, 1):
        m = make_model(double=True)
        m.drop.p = 0.0
        fit(m, task, data, config=cfg(epochs=2, physical_batch_size=physical), progress=False)
        models.append(m)
    for m in models[1:]:
        for p, q in zip(models[0].parameters(), m.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_accumulated_gradient_is_the_batch_mean_gradient():
    data, task = make_data(n=12), ClassifyTask(3)
    m = make_model(double=True)
    m.drop.p = 0.0
    batch = data.batch(torch.arange(12))
    _accumulate(m, task, batch, 12, 5)
    got = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    task.loss(m(batch["input_ids"], batch["attention_mask"]), batch).backward()
    for g, p in zip(got, m.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-14)


def test_memory_guard_halves_until_it_fits_and_keeps_rng():
    data, task = make_data(), ClassifyTask(3)
    m = make_model()
    calls = []

    def step(model, task_, batch, logical, physical):
        calls.append(physical)
        if physical > 8:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")
        return _accumulate(model, task_, batch, logical, physical)

    before = torch.get_rng_state()
    assert find_physical_batch_size(m, task, data, start=64, step_fn=step) == 8
    assert calls == [64, 32, 16, 8]
    assert torch.equal(before, torch.get_rng_state())
    assert all(p.grad is None for p in m.parameters())

    def always(model, task_, batch, logical, physical):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(TrustNLPError, match="Out of memory even with a physical batch of 1"):
        find_physical_batch_size(m, task, data, start=4, step_fn=always)

    def other(model, task_, batch, logical, physical):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        find_physical_batch_size(m, task, data, start=4, step_fn=other)


def test_training_learns_and_divergence_is_reported():
    data, task = make_data(n=200), ClassifyTask(3)
    m = make_model()
    before = task.evaluate(m, data)["accuracy"]
    fit(m, task, data, config=cfg(epochs=15, lr=0.1, scheduler="constant"), progress=False)
    after = task.evaluate(m, data)["accuracy"]
    assert after > max(before, 0.6)
    with pytest.raises(TrustNLPError, match="loss became"):
        fit(make_model(), task, data, config=cfg(lr=1e30, optimizer="sgd"), progress=False)


def test_schedules():
    p = torch.nn.Parameter(torch.zeros(1))
    for name, at_half in (("constant", 1.0), ("linear", 0.5), ("cosine", 0.5)):
        opt = torch.optim.SGD([p], lr=1.0)
        sch = make_scheduler(opt, name=name, total_steps=100, warmup_ratio=0.0)
        for _ in range(50):
            opt.step()
            sch.step()
        assert sch.get_last_lr()[0] == pytest.approx(at_half, abs=1e-12)
    opt = torch.optim.SGD([p], lr=1.0)
    sch = make_scheduler(opt, name="linear", total_steps=100, warmup_ratio=0.1)
    assert sch.get_last_lr()[0] == pytest.approx(0.1)
    assert math.isclose(make_scheduler(opt, name="cosine", total_steps=10, warmup_ratio=0).lr_lambdas[0](10), 0.0, abs_tol=1e-12)


class NoisyStep:
    """A stateful step (like DP-SGD's): adds seeded noise to the gradients, counts steps, may stop."""

    def __init__(self, seed=0, stop_at=None):
        self.gen = torch.Generator().manual_seed(seed)
        self.count = 0
        self.stop_at = stop_at

    def __call__(self, model, task, batch, logical, physical):
        if self.stop_at is not None and self.count >= self.stop_at:
            from trustnlp.train import StopTraining

            raise StopTraining("budget")
        loss = _accumulate(model, task, batch, logical, physical)
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=self.gen) * 0.01
            p.grad = noise if p.grad is None else p.grad + noise
        self.count += 1
        return loss

    def probe(self, model, task, batch, logical, physical):
        return _accumulate(model, task, batch, logical, physical)

    def state_dict(self):
        return {"gen": self.gen.get_state(), "count": self.count}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])
        self.count = state["count"]


def test_stateful_step_is_checkpointed_and_resumes_bitwise(tmp_path):
    data, task, config = make_data(), ClassifyTask(3), cfg(checkpoint_every=2)
    a = make_model()
    fit(a, task, data, config=config, checkpoint_dir=tmp_path / "a", progress=False, step_fn=NoisyStep())
    b = make_model()
    fit(b, task, data, config=config, checkpoint_dir=tmp_path / "b", progress=False, step_fn=NoisyStep(), stop_after_steps=6)
    resumed_step = NoisyStep(seed=123)  # its state must come from the checkpoint
    c = make_model(seed=5)
    fit(c, task, data, config=config, checkpoint_dir=tmp_path / "b", progress=False, step_fn=resumed_step)
    assert resumed_step.count == 15
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)


def test_stop_training_ends_cleanly_and_variable_batches_work(tmp_path):
    data, task = make_data(), ClassifyTask(3)

    class Ragged:  # variable-size batches including an empty one (as Poisson sampling gives)
        steps_per_epoch = 3

        def epoch(self, e):
            yield torch.arange(0, 10)
            yield torch.arange(0, 0)
            yield torch.arange(10, 13)

    m = make_model()
    res = fit(m, task, data, config=cfg(epochs=2), progress=False, sampler=Ragged(), step_fn=NoisyStep(stop_at=4),
              checkpoint_dir=tmp_path)
    assert res.steps == 4 and res.extra["stopped"] == "budget"
