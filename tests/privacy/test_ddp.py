"""DP-SGD under DistributedDataParallel: 2 CPU processes (gloo) against one process with the same seed.

One launch of 2 processes (module fixture) runs every scenario on both ranks and writes what it saw; the tests
compare it with single-process runs of the same code. Float64 throughout; "equal to the single
process" is ``rtol=1e-10`` (the only difference is the order of the clipped sum's additions: the
ranks' partial sums, then the all-reduce), and "identical on both ranks" is ``torch.equal``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustnlp.errors import ConfigError, PrivacyBudgetExceeded
from trustnlp.privacy.accounting import compute_epsilon
from trustnlp.privacy.distributed import DistributedPoissonSampler
from trustnlp.privacy.engine import PrivacyEngine
from trustnlp.privacy.optimizer import BatchMemoryManager
from trustnlp.privacy.sampling import PoissonSampler

WORLD, N, V, T, BATCH, SEED, C, STEPS, DELTA = 2, 24, 20, 5, 8, 3, 0.05, 3, 1e-5
Q = 1 / (N // BATCH)  # the engine's default q = 1/len(loader)
SIGMA = 0.8
SCENARIOS = {"sigma0": {"sigma": 0.0}, "sigma": {"sigma": SIGMA}, "bmm": {"sigma": SIGMA, "physical": 2}}


class _Tiny(nn.Module):
    """Embedding -> LayerNorm -> mean over the sequence -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.ln, self.lin = nn.Embedding(V, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lin(self.ln(self.emb(ids)).mean(1))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randint(0, V, (N, T), generator=g), torch.randint(0, 3, (N,), generator=g))


def _model() -> _Tiny:
    torch.manual_seed(0)
    return _Tiny()


def _flat(tensors: Any) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors]).clone()


def _loss(model: nn.Module, ids: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(ids), y)


def _train(module: nn.Module, *, sigma: float, physical: int | None = None, first_grads: list | None = None,
           **kw: Any) -> tuple[PrivacyEngine, Any, Any, list[torch.Tensor], list[list[int]]]:
    """``STEPS`` logical steps of the plain loop; (engine, optimizer, loader, params after each step,
    physical batch sizes of each step)."""
    engine = PrivacyEngine(seed=SEED)
    opt = torch.optim.SGD(module.parameters(), lr=0.5, momentum=0.9)
    module, opt, loader = engine.make_private(module=module, optimizer=opt, data_loader=DataLoader(_data(), batch_size=BATCH),
                                              noise_multiplier=sigma, max_grad_norm=C, **kw)
    params, sizes, current = [], [], []
    manager = contextlib.nullcontext(loader) if physical is None else BatchMemoryManager(loader, physical, opt)
    with manager as batches:
        for ids, y in batches:
            opt.zero_grad()
            _loss(module, ids, y).backward()
            if first_grads is not None and not first_grads:
                first_grads.append(_flat(p.grad for p in module.parameters()))
            current.append(len(ids))
            before = opt.steps
            opt.step()
            if opt.steps > before:
                params.append(_flat(module.parameters()))
                sizes.append(current)
                current = []
            if opt.steps == STEPS:
                break
    return engine, opt, loader, params, sizes


# -- the worker (one process per rank) --------------------------------------------------------------
def _worker(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    tensors: dict[str, torch.Tensor] = {}
    info: dict[str, Any] = {}
    try:
        for name, kw in SCENARIOS.items():
            plain = _model()
            first: list[torch.Tensor] = []
            ddp = nn.parallel.DistributedDataParallel(_model())
            engine, opt, loader, params, sizes = _train(ddp, first_grads=first, **kw)
            for k, p in enumerate(params):
                tensors[f"{name}.params.{k}"] = p
            shares = [b.tolist() for _, b in zip(range(STEPS), loader.poisson_sampler.epoch(0))]
            info[name] = {"ledger": engine.ledger.to_dict(), "sizes": sizes, "shares": shares,
                          "epsilon": engine.get_epsilon(DELTA) if kw["sigma"] > 0 else None,
                          "rule": opt.clipper.rules_report(), "clipped": bool((opt.clipper.last_stats.norms > C).any())}
            if name == "sigma0":  # DDP's all-reduce: skipped while private, DDP's default again after detach
                ids, y = _data()[shares[0]]
                tensors["hook.private_grad"] = first[0]
                _loss(plain, ids, y).backward()
                tensors["hook.local_grad"] = _flat(p.grad for p in plain.parameters())
                engine.detach()
                trained = copy.deepcopy(ddp.module)
                batch = next(PoissonSampler(N, sampling_rate=Q, seed=SEED).epoch(0))
                local = []
                for r in range(WORLD):
                    trained.zero_grad()
                    _loss(trained, *_data()[batch[r::WORLD]]).backward()
                    local.append(_flat(p.grad for p in trained.parameters()))
                ddp.zero_grad()
                _loss(ddp, ids, y).backward()
                tensors["hook.detached_grad"] = _flat(p.grad for p in ddp.parameters())
                tensors["hook.mean_local_grad"] = sum(local) / WORLD

        # the budget: a guard allowing exactly 2 steps stops both ranks at the third
        target = 0.5 * sum(compute_epsilon(noise_multiplier=1.0, sampling_rate=Q, steps=k, delta=DELTA) for k in (2, 3))
        engine = PrivacyEngine(seed=SEED)
        ddp = nn.parallel.DistributedDataParallel(_model())
        ddp, opt, loader = engine.make_private(module=ddp, optimizer=torch.optim.SGD(ddp.parameters(), lr=0.5),
                                               data_loader=DataLoader(_data(), batch_size=BATCH), noise_multiplier=1.0,
                                               max_grad_norm=C, max_epsilon=target, target_delta=DELTA)
        budget: dict[str, Any] = {"target": target, "error": None}
        for ids, y in loader:
            opt.zero_grad()
            _loss(ddp, ids, y).backward()
            try:
                opt.step()
            except PrivacyBudgetExceeded as err:
                budget["error"] = str(err)
                break
            tensors["budget.params"] = _flat(ddp.parameters())
        tensors["budget.params_after"] = _flat(ddp.parameters())
        budget.update(steps=opt.steps, epsilon=engine.get_epsilon())
        info["budget"] = budget

        # a configuration that differs between the ranks is refused on every rank
        ddp = nn.parallel.DistributedDataParallel(_model())
        try:
            PrivacyEngine(seed=rank).make_private(module=ddp, optimizer=torch.optim.SGD(ddp.parameters(), lr=0.5),
                                                  data_loader=DataLoader(_data(), batch_size=BATCH),
                                                  noise_multiplier=1.0, max_grad_norm=C)
            info["mismatch"] = None
        except ConfigError as err:
            info["mismatch"] = str(err)
            info["mismatch_hooks"] = sum(len(m._forward_hooks) for m in ddp.modules())
    finally:
        dist.destroy_process_group()
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{out}/rank{rank}.safetensors")
    Path(f"{out}/rank{rank}.json").write_text(json.dumps(info))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, single) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """What each rank saw. Runs after ``single``, so that with fork (Linux) the workers inherit every module
    imported (torch, dp-accounting, and torch._dynamo, which the first optimizer imports: ~3 s per process
    under spawn); they set 1 thread before any work, as DataLoader workers do."""
    out = tmp_path_factory.mktemp("ddp")
    method = "fork" if sys.platform == "linux" else "spawn"
    ctx = mp.start_processes(_worker, args=(f"file://{out}/rendezvous", str(out)), nprocs=WORLD, join=False,
                             start_method=method)
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=0.2):
            if time.monotonic() > deadline:
                pytest.fail("the DDP workers did not finish in 120 s (a collective mismatch would hang)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return [(load_file(str(out / f"rank{r}.safetensors")), json.loads((out / f"rank{r}.json").read_text()))
            for r in range(WORLD)]


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        runs = {"start": _flat(_model().parameters())}
        for name, kw in SCENARIOS.items():
            engine, opt, loader, params, sizes = _train(_model(), **kw)
            batches = [b.tolist() for _, b in zip(range(STEPS), loader.poisson_sampler.epoch(0))]
            runs[name] = (engine, params, batches, sizes)
        return runs
    finally:
        torch.set_default_dtype(old)


# -- tests ----------------------------------------------------------------------------------------
def test_rank_shares_partition_the_single_process_poisson_batch(ranks, single):
    _, _, batches, _ = single["sigma"]
    for step in range(STEPS):
        shares = [info["sigma"]["shares"][step] for _, info in ranks]
        assert sorted(shares[0] + shares[1]) == batches[step] and not set(shares[0]) & set(shares[1])
        assert abs(len(shares[0]) - len(shares[1])) <= 1
    assert [len(b) for b in batches] == [9, 5, 11]  # odd sizes: uneven shares (exercised by the padding test)


@pytest.mark.parametrize("name", ["sigma0", "sigma"])
def test_update_after_one_and_three_steps_equals_single_process_and_ranks_agree(ranks, single, name):
    (t0, info0), (t1, _) = ranks
    _, params, _, _ = single[name]
    assert info0[name]["clipped"]  # some examples were clipped (C is small)
    assert sorted(info0[name]["rule"]) == ["emb", "lin", "ln"]  # the inner module's layers, not DDP's "module.*"
    start = single["start"]
    for k in (0, STEPS - 1):
        assert torch.equal(t0[f"{name}.params.{k}"], t1[f"{name}.params.{k}"])  # identical on both ranks
        torch.testing.assert_close(t0[f"{name}.params.{k}"], params[k], rtol=1e-10, atol=1e-14)
        assert (params[k] - start).abs().max() > 1e-3  # the steps moved the parameters
    if name == "sigma":  # the noise is there, once: far from the noise-free run, equal to the single-process one
        _, noiseless, _, _ = single["sigma0"]
        assert (t0["sigma.params.0"] - noiseless[0]).abs().max() > 1e-4  # noise std per step: lr·σC/(qN) = 2.5e-3


def test_ledger_and_epsilon_equal_single_process(ranks, single):
    engine, _, _, _ = single["sigma"]
    for _, info in ranks:
        assert info["sigma"]["ledger"] == engine.ledger.to_dict() == {"records": [
            {"kind": "poisson_gaussian", "noise_multiplier": SIGMA, "sampling_rate": Q, "count": STEPS,
             "purpose": "training"}]}
        assert info["sigma"]["epsilon"] == engine.get_epsilon(DELTA)


def test_batch_memory_manager_gives_every_rank_the_same_number_of_physical_batches(ranks, single):
    (t0, info0), (t1, info1) = ranks
    sizes0, sizes1 = info0["bmm"]["sizes"], info1["bmm"]["sizes"]
    assert [len(s) for s in sizes0] == [len(s) for s in sizes1]
    assert [sum(a) + sum(b) for a, b in zip(sizes0, sizes1)] == [9, 5, 11] and max(max(s) for s in sizes0) <= 2
    assert any(0 in s for s in sizes1)  # rank 1 ran an empty padding batch
    _, params, _, _ = single["sigma"]  # splitting does not change the update
    assert torch.equal(t0["bmm.params.2"], t1["bmm.params.2"])
    torch.testing.assert_close(t0["bmm.params.2"], params[2], rtol=1e-10, atol=1e-14)


def test_ddp_allreduce_is_skipped_while_private_and_restored_by_detach(ranks):
    for tensors, _ in ranks:
        # while private, p.grad after backward is the rank's own unclipped gradient (no wasted all-reduce)
        torch.testing.assert_close(tensors["hook.private_grad"], tensors["hook.local_grad"], rtol=1e-12, atol=0)
        # after detach the DDP module averages gradients over the ranks again
        torch.testing.assert_close(tensors["hook.detached_grad"], tensors["hook.mean_local_grad"], rtol=1e-10, atol=1e-15)
    assert not torch.allclose(ranks[0][0]["hook.local_grad"], ranks[1][0]["hook.local_grad"])


def test_budget_guard_stops_every_rank_at_the_same_step(ranks):
    (t0, b0), (t1, b1) = [(t, info["budget"]) for t, info in ranks]
    for b in (b0, b1):
        assert b["steps"] == 2 and b["epsilon"] <= b["target"]
        assert b["error"].startswith("Privacy budget exhausted: one more step") and "The step was not taken" in b["error"]
    assert torch.equal(t0["budget.params_after"], t0["budget.params"])  # the refused step changed nothing
    assert torch.equal(t0["budget.params_after"], t1["budget.params_after"])


def test_configuration_differing_across_ranks_is_refused_on_every_rank(ranks):
    for rank, (_, info) in enumerate(ranks):
        assert info["mismatch"].startswith(f"Expected ['seed'] to be the same on every rank, but they differ (rank {rank} has seed={rank})")
        assert info["mismatch_hooks"] == 0


def test_distributed_sampler_validates_rank_and_needs_a_process_group():
    with pytest.raises(ConfigError, match=r"Expected `rank` to be an int in \[0, 2\), but got 2."):
        DistributedPoissonSampler(10, sampling_rate=0.5, seed=0, rank=2, world_size=2)
    assert [b.tolist() for b in DistributedPoissonSampler(10, sampling_rate=0.5, seed=0, rank=1, world_size=3).epoch(0)] == [
        b[1::3].tolist() for b in PoissonSampler(10, sampling_rate=0.5, seed=0).epoch(0)]
    from trustnlp.privacy.distributed import DistributedDPDataLoader

    with pytest.raises(ConfigError, match="initialised torch.distributed process group"):
        DistributedDPDataLoader(_data(), sampling_rate=0.5, seed=0)
