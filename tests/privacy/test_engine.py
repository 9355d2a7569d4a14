"""PrivacyEngine / DPOptimizer in a plain PyTorch loop: exactness against a per-example loop (sigma = 0),
accumulation, noise, accounting, calibration, parameter-efficient training, errors, and Opacus."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from typing import Any

import dp_accounting
import pytest
import torch
import torch.nn.functional as F
from dp_accounting import pld, rdp
from test_clipping_reference import group_columns, loop_grads, split, trainable_params
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustnlp.errors import ConfigError, PrivacyBudgetExceeded, PrivacyError
from trustnlp.models import build_model
from trustnlp.privacy.accounting import compute_epsilon, default_delta
from trustnlp.privacy.distributed import DistributedDPDataLoader
from trustnlp.privacy.engine import PrivacyEngine
from trustnlp.privacy.optimizer import BatchMemoryManager, DPOptimizer
from trustnlp.privacy.sampling import DPDataLoader

V, T, N = 30, 6, 16


pytestmark = pytest.mark.usefixtures("float64_default")


# -- models and data --------------------------------------------------------------------------------
def _text_data(n: int = N, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (n, T), generator=g)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return TensorDataset(ids * mask, mask, torch.randint(0, 3, (n,), generator=g))


def _dense_data(n: int = N, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _freeze(model: nn.Module, keep: Callable[[str], bool]) -> nn.Module:
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
    return model


CASES: dict[str, Callable[[], tuple[nn.Module, TensorDataset]]] = {
    "bag": lambda: (build_model("bag", vocab_size=V, num_labels=3, pad_id=0, dim=8, hidden=6), _text_data()),
    "transformer": lambda: (
        build_model("transformer", vocab_size=V, num_labels=3, pad_id=0, dim=8, layers=2, heads=2, ff=16,
                    max_len=16, dropout=0.0),
        _text_data(),
    ),
    "mlp": lambda: (_mlp(), _dense_data()),
    "bag-frozen-encoder": lambda: (
        _freeze(build_model("bag", vocab_size=V, num_labels=3, pad_id=0, dim=8, hidden=6), lambda n: n.startswith("head")),
        _text_data(),
    ),
    "transformer-last-1": lambda: (
        _freeze(
            build_model("transformer", vocab_size=V, num_labels=3, pad_id=0, dim=8, layers=2, heads=2, ff=16,
                        max_len=16, dropout=0.0),
            lambda n: n.startswith(("encoder.blocks.1.", "encoder.final_ln", "head")),
        ),
        _text_data(),
    ),
}


def _build(case: str, seed: int = 0) -> tuple[nn.Module, TensorDataset]:
    torch.manual_seed(seed)
    model, data = CASES[case]()
    return model.eval(), data


def _logits(model: nn.Module, inputs: list[torch.Tensor]) -> torch.Tensor:
    return model(*inputs)


def _loss(model: nn.Module, batch: list[torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    *inputs, y = batch
    return F.cross_entropy(_logits(model, inputs), y, reduction=reduction)


def _per_example(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """``[B, P]`` per-example gradients by a loop (on a model without hooks)."""
    named = {f"t{i}": t for i, t in enumerate(batch)}

    def loss_fn(m: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return _loss(m, [b[f"t{i}"] for i in range(len(batch))], "none")

    return loop_grads(model, loss_fn, named)


def _private(case: str, *, C: float, sigma: float = 0.0, reduction: str = "mean", seed: int = 0,
             batch_size: int = 8, lr: float = 1.0, **kw: Any) -> tuple[nn.Module, nn.Module, DPOptimizer, Any, Any]:
    """(reference copy without hooks, private model, DP optimizer, DP loader, engine)."""
    model, data = _build(case)
    ref = copy.deepcopy(model)
    engine = PrivacyEngine(seed=seed)
    opt = torch.optim.SGD(trainable_params(model), lr=lr)
    model, dp_opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=DataLoader(data, batch_size=batch_size),
                                                noise_multiplier=sigma, max_grad_norm=C, loss_reduction=reduction, **kw)
    return ref, model, dp_opt, loader, engine


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- exactness at sigma = 0 -------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("case", list(CASES))
def test_sigma0_plain_loop_step_is_minus_lr_clipped_sum_over_expected_batch(case, reduction):
    lr = 0.5
    model, data = _build(case)
    all_examples = _per_example(model, list(data.tensors))  # before the hooks: [N, P]
    C = float(all_examples.norm(dim=1).median())  # some examples clipped, some not
    ref, model, opt, loader, _ = _private(case, C=C, reduction=reduction, lr=lr)
    assert isinstance(loader, DPDataLoader) and loader.sampling_rate == 0.5 and opt.expected_batch_size == 8.0
    idx = next(loader.poisson_sampler.epoch(0))
    batch = next(iter(loader))
    assert len(idx) > 0 and torch.equal(batch[0], data.tensors[0][idx])
    per_example = all_examples[idx]
    norms = per_example.norm(dim=1)
    assert (norms > C).any()  # clipping is active
    factors = torch.clamp(C / (norms + 1e-6), max=1.0)
    update = split(ref, -lr * (factors[:, None] * per_example).sum(0) / (0.5 * N))
    before = [p.detach().clone() for p in trainable_params(model)]
    frozen = [(p, p.detach().clone()) for p in model.parameters() if not p.requires_grad]

    opt.zero_grad()  # the plain loop
    loss = _loss(model, batch, reduction)
    loss.backward()
    opt.step()

    torch.testing.assert_close(opt.clipper.last_stats.norms, norms, rtol=1e-8, atol=1e-12)
    for p0, p1, u in zip(before, trainable_params(model), update):
        torch.testing.assert_close(p1.detach() - p0, u, rtol=1e-8, atol=1e-13)
    assert all(torch.equal(p, p0) for p, p0 in frozen)


@pytest.mark.parametrize("clipping", ["per-layer", "automatic"])
def test_sigma0_per_layer_and_automatic_clipping_match_the_loop(clipping):
    model, data = _build("mlp")
    batch = list(data.tensors)
    per_example = _per_example(model, batch)  # [N, P]
    C = 2.0
    if clipping == "automatic":
        factors = (1.0 / (per_example.norm(dim=1) + 0.01))[:, None].expand_as(per_example)
    else:  # groups: the two Linear layers, C_l = C / sqrt(2)
        factors = torch.empty_like(per_example)
        for cols in group_columns(model).values():
            norms = per_example[:, cols].norm(dim=1, keepdim=True)
            factors[:, cols] = torch.clamp(C / 2**0.5 / (norms + 1e-6), max=1.0)
        assert (factors < 1).any() and (factors == 1).any()
    update = -(factors * per_example).sum(0) / (0.5 * N)
    engine = PrivacyEngine()
    model, opt, _ = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                        data_loader=DataLoader(data, batch_size=8), noise_multiplier=0.0,
                                        max_grad_norm=C, clipping=clipping)
    before = _flat(model)
    opt.zero_grad()
    _loss(model, batch).backward()
    opt.step()
    torch.testing.assert_close(_flat(model) - before, update, rtol=1e-8, atol=1e-13)


def test_secure_mode_draws_secure_noise():
    assert PrivacyEngine(secure_mode=True).noise.secure and not PrivacyEngine().noise.secure


def test_frozen_parameters_get_no_noise_and_do_not_move():
    ref, model, opt, loader, _ = _private("bag-frozen-encoder", sigma=1.0, C=1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for batch in loader:
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (not p.requires_grad), n
        assert (p.grad is None) == (not p.requires_grad), n


# -- accumulation -----------------------------------------------------------------------------------
def test_two_physical_batches_accumulate_to_one_logical_batch_with_one_noise_draw():
    data = list(_text_data().tensors)
    results = []
    for parts in ([slice(0, N)], [slice(0, 5), slice(5, N)]):
        _, model, opt, _, _ = _private("transformer", sigma=0.7, C=0.05, seed=3)
        opt.zero_grad()
        for s in parts:
            _loss(model, [t[s] for t in data]).backward()
        opt.step()
        results.append(_flat(model))
        assert opt.ledger.total_count == 1
    torch.testing.assert_close(results[1], results[0], rtol=1e-8, atol=1e-12)


def test_batch_memory_manager_splits_logical_batches_without_changing_the_update():
    finals, physical = [], []
    for max_size in (None, 3):
        _, model, opt, loader, engine = _private("mlp", sigma=0.5, C=0.3, seed=5, batch_size=8)
        sizes = []
        manager = contextlib.nullcontext(loader) if max_size is None else BatchMemoryManager(loader, max_size, opt)
        with manager as batches:
            for _epoch in range(2):
                for batch in batches:  # the plain loop: a step after every physical batch
                    sizes.append(len(batch[0]))
                    opt.zero_grad()
                    _loss(model, batch).backward()
                    opt.step()
        finals.append(_flat(model))
        physical.append(sizes)
        assert engine.ledger.total_count == opt.steps == 2 * len(loader)
    assert max(physical[1]) <= 3 < max(physical[0]) and sum(physical[1]) == sum(physical[0])
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-8, atol=1e-12)


def test_empty_poisson_batches_are_noise_only_steps():
    model, data = _build("mlp")
    data = _dense_data(n=50)
    engine = PrivacyEngine(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=DataLoader(data, batch_size=5),
                                            noise_multiplier=0.5, max_grad_norm=1.0, sampling_rate=0.02)
    sizes = []
    for batch in loader:
        sizes.append(len(batch[0]))
        opt.zero_grad()
        _loss(model, batch, "sum").backward()
        opt.step()
    assert 0 in sizes and max(sizes) > 0
    assert engine.ledger.total_count == len(loader) == 50
    assert torch.isfinite(_flat(model)).all()


# -- noise and accounting ---------------------------------------------------------------------------
def test_noise_std_is_sigma_times_C_over_expected_batch_size():
    torch.manual_seed(0)
    model = build_model("bag", vocab_size=400, num_labels=3, pad_id=0, dim=64)
    engine = PrivacyEngine(seed=1)
    data = TensorDataset(torch.zeros(100, 2, dtype=torch.long), torch.ones(100, 2, dtype=torch.long), torch.zeros(100))
    model, opt, loader = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                            data_loader=DataLoader(data, batch_size=10), noise_multiplier=2.0,
                                            max_grad_norm=0.5)
    before = _flat(model)
    opt.zero_grad()
    opt.step()  # an empty logical batch: noise only
    g = torch.cat([p.grad.flatten() for p in model.parameters()])
    expected = 2.0 * 0.5 / (0.1 * 100)
    # n = 25.8k draws: the sample std is within 2% of the truth except with probability ~1e-5 (alpha)
    assert abs(g.std().item() / expected - 1) < 0.02 and abs(g.mean().item()) < 4 * expected / len(g) ** 0.5
    torch.testing.assert_close(_flat(model), before - g, rtol=0, atol=1e-15)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_ledger_epsilon_equals_direct_dp_accounting(accountant):
    model, data = _build("mlp")
    engine = PrivacyEngine(accountant=accountant, seed=2)
    model, opt, loader = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                            data_loader=DataLoader(data, batch_size=4), noise_multiplier=1.1,
                                            max_grad_norm=1.0)
    k = 3
    for _, batch in zip(range(k), loader):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.1)), k)
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    acc.compose(event)
    assert engine.get_epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    assert engine.ledger.total_count == k


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_make_private_with_epsilon_calibrates_to_target(accountant):
    model, data = _build("mlp")
    engine = PrivacyEngine(accountant=accountant, seed=0)
    model, opt, loader = engine.make_private_with_epsilon(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=DataLoader(data, batch_size=4),
        target_epsilon=3.0, epochs=2, max_grad_norm=1.0)
    assert engine.target_delta == default_delta(N) and engine.planned_steps == 2 * len(loader) == 8
    eps = compute_epsilon(noise_multiplier=opt.noise_multiplier, sampling_rate=0.25, steps=8, delta=engine.target_delta,
                          accountant=accountant)
    assert 0.99 * 3.0 <= eps <= 3.0
    for _ in range(2):
        for batch in loader:
            opt.zero_grad()
            _loss(model, batch).backward()
            opt.step()
    assert engine.get_epsilon() == pytest.approx(eps, rel=1e-9)


# -- the budget guard ------------------------------------------------------------------------------
def _steps_within(target: float, sigma: float, q: float, delta: float, accountant: str) -> int:
    """The largest k with epsilon(k steps) <= target, by direct dp-accounting evaluations (k = 1, 2, ...)."""
    k = 0
    while compute_epsilon(noise_multiplier=sigma, sampling_rate=q, steps=k + 1, delta=delta, accountant=accountant) <= target:
        k += 1
    return k


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_make_private_with_epsilon_stops_before_exceeding_the_target(accountant):
    model, data = _build("mlp")
    engine = PrivacyEngine(accountant=accountant, seed=0)
    model, opt, loader = engine.make_private_with_epsilon(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=DataLoader(data, batch_size=4),
        target_epsilon=2.0, epochs=2, max_grad_norm=1.0)
    allowed = _steps_within(2.0, opt.noise_multiplier, 0.25, engine.target_delta, accountant)
    assert allowed >= engine.planned_steps == 8
    batches = (batch for _ in range(allowed) for batch in loader)  # epoch after epoch
    for _, batch in zip(range(allowed), batches):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    before = _flat(model)
    opt.zero_grad()
    _loss(model, [t[:4] for t in data.tensors]).backward()
    with pytest.raises(PrivacyBudgetExceeded, match=rf"would bring epsilon to \S+ > target_epsilon=2.0 .* {allowed} steps taken"):
        opt.step()
    assert torch.equal(_flat(model), before) and opt.steps == engine.ledger.total_count == allowed
    assert engine.get_epsilon() <= 2.0 < compute_epsilon(noise_multiplier=opt.noise_multiplier, sampling_rate=0.25,
                                                         steps=allowed + 1, delta=engine.target_delta, accountant=accountant)
    assert issubclass(PrivacyBudgetExceeded, PrivacyError)


def test_make_private_max_epsilon_guards_logical_steps_only():
    sigma, q, delta = 1.0, 0.25, 1e-5
    eps = [compute_epsilon(noise_multiplier=sigma, sampling_rate=q, steps=k, delta=delta) for k in (3, 4)]
    budget = 0.5 * (eps[0] + eps[1])  # 3 steps fit, 4 do not
    assert _steps_within(budget, sigma, q, delta, "rdp") == 3
    _, model, opt, loader, engine = _private("mlp", sigma=sigma, C=1.0, batch_size=4, max_epsilon=budget,
                                             target_delta=delta)
    assert engine.target_epsilon == budget and engine.target_delta == delta
    physical = 0
    with BatchMemoryManager(loader, 1, opt) as batches, pytest.raises(PrivacyBudgetExceeded):
        for batch in batches:  # skipped (accumulating) steps do not consult the guard
            physical += 1
            opt.zero_grad()
            _loss(model, batch).backward()
            opt.step()
    assert opt.steps == 3 and physical > 4 and engine.get_epsilon() <= budget
    # without a budget nothing stops
    _, model, opt, loader, engine = _private("mlp", sigma=sigma, C=1.0, batch_size=4)
    for _batch in loader:
        opt.step()
    assert opt.budget is None and opt.steps == 4


def test_max_epsilon_with_default_delta_and_zero_noise():
    _, _, opt, _, engine = _private("mlp", sigma=0.0, C=1.0, max_epsilon=5.0)
    assert engine.target_delta == default_delta(N)
    with pytest.raises(PrivacyBudgetExceeded, match="epsilon to inf"):  # sigma = 0: no step fits any budget
        opt.step()


# -- the optimizer wrapper --------------------------------------------------------------------------
def test_dp_optimizer_delegates_state_and_works_with_lr_schedulers():
    _, model, opt, loader, _ = _private("mlp", sigma=0.1, C=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    batch = next(iter(loader))
    opt.zero_grad()
    _loss(model, batch).backward()
    opt.step()
    sched.step()
    assert opt.original_optimizer.param_groups[0]["lr"] == 0.5 and opt.param_groups is opt.original_optimizer.param_groups
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.5


def test_zero_grad_drops_captured_sums():
    _, model, opt, loader, _ = _private("mlp", sigma=0.0, C=1.0)
    batch = next(iter(loader))
    _loss(model, batch).backward()
    assert opt.clipper.clipped_sums
    opt.zero_grad()
    before = _flat(model)
    opt.step()  # nothing captured any more: a (noise-free) zero step
    assert torch.equal(_flat(model), before)


# -- errors ---------------------------------------------------------------------------------------
def _make(model=None, **kw):
    model = _mlp() if model is None else model
    args = dict(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                data_loader=DataLoader(_dense_data(), batch_size=4), noise_multiplier=1.0, max_grad_norm=1.0)
    args.update(kw)
    return PrivacyEngine().make_private(**args)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_grad_norm": -1.0}, "Expected `max_grad_norm` to be > 0, but got -1.0."),
        ({"noise_multiplier": -1.0}, "Expected `noise_multiplier` to be a finite number >= 0, but got -1.0."),
        ({"clipping": "norm"}, "Expected `clipping` to be one of"),
        ({"loss_reduction": "none"}, "Expected `loss_reduction` to be one of ['mean', 'sum'], but got 'none'."),
        ({"optimizer": "sgd"}, "Expected `optimizer` to be a torch.optim.Optimizer"),
        ({"data_loader": [1, 2]}, "Expected `data_loader` to be a torch.utils.data.DataLoader"),
        ({"sampling_rate": 1.5}, "Expected `sampling_rate` to be in (0, 1], but got 1.5."),
        ({"max_epsilon": -1.0}, "Expected `max_epsilon` to be a finite number > 0, but got -1.0."),
        ({"max_epsilon": 1.0, "target_delta": 1.0}, "Expected `target_delta` to be in (0, 1), but got 1.0."),
        ({"module": nn.DataParallel(_mlp())}, "Expected `module` to be a plain module or a DistributedDataParallel"),
        ({"data_loader": DistributedDPDataLoader(_dense_data(), sampling_rate=0.5, seed=0, rank=0, world_size=2)},
         "Expected `data_loader` to be a single-process loader, but got a DistributedDPDataLoader"),
    ],
)
def test_invalid_arguments_are_refused_and_leave_no_hooks(kw, message):
    model = _mlp()
    with pytest.raises(ConfigError) as err:
        _make(model, **kw)
    assert message in str(err.value)
    assert not any(m._forward_hooks for m in model.modules())


def test_engine_and_calibration_arguments_are_validated():
    with pytest.raises(ConfigError, match="Expected `accountant` to be one of 'rdp', 'pld', but got 'gdp'."):
        PrivacyEngine(accountant="gdp")
    model = _mlp()
    common = dict(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  data_loader=DataLoader(_dense_data(), batch_size=4), max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="Expected `epochs` to be an int >= 1, but got 0."):
        PrivacyEngine().make_private_with_epsilon(target_epsilon=1.0, epochs=0, **common)
    with pytest.raises(ConfigError, match="Expected `target_epsilon` to be a finite number > 0"):
        PrivacyEngine().make_private_with_epsilon(target_epsilon=-1.0, epochs=1, **common)
    with pytest.raises(ConfigError, match="Expected `delta` to be given"):
        PrivacyEngine().get_epsilon()
    with pytest.raises(ConfigError, match="max_physical_batch_size"):
        _, opt, loader = _make()
        BatchMemoryManager(loader, 0, opt)


def test_make_private_twice_on_one_module_is_refused_until_detached():
    model = _mlp()
    engine = PrivacyEngine()
    args = dict(optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=DataLoader(_dense_data(), batch_size=4),
                noise_multiplier=1.0, max_grad_norm=1.0)
    engine.make_private(module=model, **args)
    with pytest.raises(ConfigError, match="already made private"):
        PrivacyEngine().make_private(module=model, **args)
    engine.detach()
    assert not any(m._forward_hooks for m in model.modules())
    PrivacyEngine().make_private(module=model, **args)


def test_optimizer_over_parameters_outside_the_model_is_refused():
    model, other = _mlp(), nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="not trainable parameters of the private model"):
        _make(model, optimizer=torch.optim.SGD([*model.parameters(), *other.parameters()], lr=0.1))


def test_model_without_trainable_parameters_is_refused():
    model = _freeze(_mlp(), lambda n: False)
    with pytest.raises(ConfigError, match="trainable parameters"):
        _make(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_batchnorm_in_training_mode_is_refused_naming_the_layer():
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    with pytest.raises(PrivacyError, match=r"Module `1` \(BatchNorm1d\) is in training mode"):
        _make(model)


class _Mixer(nn.Module):
    """Mixes the examples of a batch: per-example gradients are undefined."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(0)) * self.w


class _Tied(nn.Module):
    """Uses a layer's weight outside that layer's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.linear(x, self.a.weight))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: nn.Sequential(_Mixer(), nn.Linear(6, 3)), r"Module `0` \(_Mixer\): re-running it one example"),
        (_Tied, r"module\(s\) \['a'\] got gradients but not through a recorded forward call"),
    ],
)
def test_layers_the_clipper_cannot_handle_fail_in_backward_naming_them(model, message):
    _, opt, loader = _make(model())
    model = opt.clipper.model
    batch = next(iter(loader))
    opt.zero_grad()
    with pytest.raises(PrivacyError, match=message):
        _loss(model, batch).backward()


def test_backward_after_zero_grad_or_twice_is_refused():
    _, opt, loader = _make()
    model = opt.clipper.model
    batch = next(iter(loader))
    loss = _loss(model, batch)
    opt.zero_grad()  # drops the forward just recorded
    with pytest.raises(PrivacyError, match="before the captured state was cleared"):
        loss.backward()
    opt.zero_grad()
    loss = _loss(model, batch)
    loss.backward(retain_graph=True)
    with pytest.raises(PrivacyError, match="two backward passes"):
        loss.backward()


def test_without_poisson_sampling_the_loader_is_kept_with_a_warning():
    loader = DataLoader(_dense_data(), batch_size=4, shuffle=True)
    with pytest.warns(UserWarning, match="not a proven guarantee"):
        _, opt, out = _make(data_loader=loader, poisson_sampling=False)
    assert out is loader and opt.sampling_rate == 0.25 and opt.expected_batch_size == 4.0


# -- a peer library -------------------------------------------------------------------------------
class _EmbLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 5)
        self.lin = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(ids).mean(1))


def test_same_clipped_gradient_as_opacus_hooks():
    pytest.importorskip("opacus")
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer as OpacusDPOptimizer

    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    model = _EmbLinear()
    theirs_model = copy.deepcopy(model)
    ids, y = torch.randint(0, V, (8, T)), torch.randint(0, 3, (8,))
    C = 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsm = GradSampleModule(theirs_model, batch_first=True, loss_reduction="mean")
        their_opt = OpacusDPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=C,
                                      expected_batch_size=8, loss_reduction="mean")
        their_opt.zero_grad()
        F.cross_entropy(gsm(ids), y).backward()
        their_opt.pre_step()  # clip, accumulate, (zero) noise, divide by the expected batch size
        theirs = [p.grad.detach().clone() for p in theirs_model.parameters()]

    dataset = TensorDataset(torch.randint(0, V, (16, T)), torch.randint(0, 3, (16,)))
    _, opt, _ = PrivacyEngine().make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                             data_loader=DataLoader(dataset, batch_size=8), noise_multiplier=0.0,
                                             max_grad_norm=C)
    assert opt.expected_batch_size == 8.0
    opt.zero_grad()
    F.cross_entropy(model(ids), y).backward()
    opt.step()
    assert (opt.clipper.last_stats.norms > C).any()
    for p, g in zip(model.parameters(), theirs):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7 * float(g.abs().max()))


def test_backward_through_a_forward_run_before_make_private_is_refused():
    model = _mlp()
    batch = list(_dense_data().tensors)
    loss = _loss(model, batch)  # recorded by nobody
    _make(model)
    with pytest.raises(PrivacyError, match=r"module\(s\) \['0', '2'\] got gradients but not through a recorded"):
        loss.backward()
