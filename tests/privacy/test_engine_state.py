"""PrivacyEngine.state_dict / load_state_dict: an interrupted and resumed run equals the uninterrupted one
bitwise (parameters, optimiser state, ledger, noise stream), through a pickle-free checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustnlp.checkpoint import load_checkpoint, save_checkpoint
from trustnlp.errors import ConfigError, PrivacyBudgetExceeded
from trustnlp.privacy.accounting import compute_epsilon
from trustnlp.privacy.engine import PrivacyEngine

V, T, N, BATCH, EPOCHS = 25, 6, 20, 5, 2  # q = 1/4: 4 steps per epoch, 8 in all


class _Tiny(nn.Module):
    """Embedding -> LayerNorm -> dropout -> mean -> Linear (dropout: the torch RNG must resume too)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.ln, self.drop, self.lin = nn.Embedding(V, 8), nn.LayerNorm(8), nn.Dropout(0.2), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lin(self.drop(self.ln(self.emb(ids))).mean(1))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randint(0, V, (N, T), generator=g), torch.randint(0, 3, (N,), generator=g))


def _setup(init_seed: int = 0, **kw: Any) -> tuple[PrivacyEngine, nn.Module, Any, Any]:
    torch.manual_seed(init_seed)
    model = _Tiny().train()
    engine = PrivacyEngine(seed=7)
    args: dict[str, Any] = {"noise_multiplier": 1.3, **kw}
    model, opt, loader = engine.make_private(module=model, optimizer=torch.optim.Adam(model.parameters(), lr=0.05),
                                             data_loader=DataLoader(_data(), batch_size=BATCH), max_grad_norm=0.5, **args)
    return engine, model, opt, loader


def _train(model: nn.Module, opt: Any, loader: Any, *, stop_after: int | None = None) -> None:
    """The plain loop, resumable: it starts at the loader's epoch and goes on where the loader is."""
    for _epoch in range(loader.poisson_sampler.position[0], EPOCHS):
        for ids, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(ids), y).backward()
            opt.step()
            if opt.steps == stop_after:
                return


@pytest.mark.parametrize("stop_after", [5, 4])  # mid-epoch; at an epoch's last batch
def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, stop_after):
    torch.manual_seed(123)
    engine, model, opt, loader = _setup()
    _train(model, opt, loader)
    assert opt.steps == EPOCHS * len(loader) == 8

    torch.manual_seed(123)
    engine_a, model_a, opt_a, loader_a = _setup()
    _train(model_a, opt_a, loader_a, stop_after=stop_after)
    save_checkpoint(tmp_path / "ckpt", model=model_a, optimizer=opt_a, scheduler=None,
                    state={"privacy": engine_a.state_dict()})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]  # no pickle
    saved = json.loads((tmp_path / "ckpt" / "state.json").read_text())["state"]["privacy"]
    assert saved["ledger"]["records"][0]["count"] == stop_after and saved["private"]["0"]["steps"] == stop_after

    torch.manual_seed(999)  # another process: other initial weights and RNG, restored from the checkpoint
    engine_b, model_b, opt_b, loader_b = _setup(init_seed=5)
    state = load_checkpoint(tmp_path / "ckpt", model=model_b, optimizer=opt_b, scheduler=None)
    engine_b.load_state_dict(state["privacy"])
    assert opt_b.steps == stop_after and loader_b.poisson_sampler.position == loader_a.poisson_sampler.position
    _train(model_b, opt_b, loader_b)

    for (name, p), p_b in zip(model.named_parameters(), model_b.parameters()):
        assert torch.equal(p, p_b), name
    for key, st in opt.state_dict()["state"].items():
        for field, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b.state_dict()["state"][key][field])), field
    assert engine_b.ledger == engine.ledger and opt_b.steps == opt.steps == 8
    assert torch.equal(engine_b.noise.state_dict()["generator"], engine.noise.state_dict()["generator"])
    assert engine_b.get_epsilon(1e-5) == engine.get_epsilon(1e-5)


def test_the_resumed_budget_guard_counts_the_restored_ledger():
    # a budget of 3 steps; the state after 2 allows exactly one more
    budget = 0.5 * sum(compute_epsilon(noise_multiplier=1.3, sampling_rate=0.25, steps=k, delta=1e-5) for k in (3, 4))
    engine, model, opt, loader = _setup(max_epsilon=budget, target_delta=1e-5)
    _train(model, opt, loader, stop_after=2)
    state = engine.state_dict()

    engine_b, model_b, opt_b, loader_b = _setup(max_epsilon=budget, target_delta=1e-5)
    engine_b.load_state_dict(state)
    assert opt_b.budget.remaining_steps() == 1
    with pytest.raises(PrivacyBudgetExceeded, match="3 steps taken"):
        _train(model_b, opt_b, loader_b)
    assert opt_b.steps == 3 and engine_b.get_epsilon() <= budget


def test_state_of_a_differently_configured_run_is_refused_before_anything_changes():
    engine, model, opt, loader = _setup()
    _train(model, opt, loader, stop_after=1)
    state = engine.state_dict()
    other, *_ = _setup(noise_multiplier=1.0)
    with pytest.raises(ConfigError, match=r"""Expected `state\["private"\]\["0"\]\["noise_multiplier"\]` to be 1.0 \(this run's\), but got 1.3."""):
        other.load_state_dict(state)
    assert other.ledger.total_count == 0
    with pytest.raises(ConfigError, match=r"""Expected `state\["format"\]` to be 'trustnlp-privacy-engine'"""):
        other.load_state_dict({"format": "something else"})
    wrong_seed = PrivacyEngine(seed=8)
    torch.manual_seed(0)
    m = _Tiny()
    wrong_seed.make_private(module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
                            data_loader=DataLoader(_data(), batch_size=BATCH), noise_multiplier=1.3, max_grad_norm=0.5)
    with pytest.raises(ConfigError, match=r"""\["loader"\]\["seed"\]` to be 8 \(this run's\), but got 7."""):
        wrong_seed.load_state_dict(state)


def test_state_is_refused_in_the_middle_of_a_logical_batch():
    engine, model, opt, loader = _setup()
    ids, y = next(iter(loader))
    opt.zero_grad()
    F.cross_entropy(model(ids), y).backward()
    with pytest.raises(ConfigError, match="between logical steps"):
        engine.state_dict()
    opt.step()
    assert engine.state_dict()["private"]["0"]["steps"] == 1


def test_state_dict_holds_only_tensors_and_json_values(tmp_path: Path):
    engine, model, opt, loader = _setup()
    _train(model, opt, loader, stop_after=1)

    def leaves(x: Any) -> list[Any]:
        return [v for val in x.values() for v in leaves(val)] if isinstance(x, dict) else (
            [v for val in x for v in leaves(val)] if isinstance(x, list) else [x])

    kinds = {type(v) for v in leaves(engine.state_dict())}
    assert kinds <= {torch.Tensor, int, float, str, type(None)}, kinds
