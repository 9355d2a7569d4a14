"""DP-SGD across processes (``torch.distributed``, DDP): one Poisson batch split between ranks,
clipped sums summed across ranks, noise added once.

A logical DP-SGD step over ``W`` ranks computes exactly the single-process update

    g̃ = ( Σ_{i∈B} clip(g_i) + N(0, σ² S² I) ) / (qN)

(Abadi et al. 2016), with the work split as follows:

1. **Sampling** (:class:`DistributedPoissonSampler`): every rank makes the *same* seeded Poisson
   draw of the global batch ``B`` (each of the ``N`` examples included w.p. ``q``; the very draw
   a single-process :class:`~trustnlp.privacy.sampling.PoissonSampler` with that seed makes) and
   keeps its share ``B_r = B[r::W]`` (the sorted indices dealt round-robin, so shares differ by at
   most one example). The shares partition ``B``: the union over ranks is the single-process batch.
2. **Clipping**: each rank's clipper (capture mode) forms ``Σ_{i∈B_r} clip(g_i)`` locally.
3. **Noise once, then sum** (:class:`NoisyAllReduce`): rank 0 of the group adds ``N(0, σ²S²I)``
   to its local sum, and one all-reduce (SUM) per dtype/device bucket gives every rank
   ``Σ_r Σ_{i∈B_r} clip(g_i) + noise``. Only rank 0 draws noise, so this works with any noise
   source, including :class:`~trustnlp.privacy.noise.SecureNoise` (no key shared between ranks),
   and rank 0's noise stream is the single-process stream for the same seed.
4. **Normalise** by the *global* expected batch size ``qN`` and step the wrapped optimizer on every
   rank: identical inputs, so identical parameters on every rank.

Accounting is unchanged: a step is one Poisson-subsampled Gaussian release with rate ``q`` (every
rank records it, so the ledgers are identical and a budget guard stops all ranks at the same step).

DDP's own gradient all-reduce averages the *unclipped* gradients; those are never used (the DP
optimizer overwrites ``p.grad``), so :func:`skip_ddp_allreduce` registers a communication hook
that skips it (half the traffic of letting DDP reduce and then overwriting). Its state has an
``active`` switch: after :meth:`~trustnlp.privacy.engine.PrivacyEngine.detach` the hook falls back
to DDP's default averaging all-reduce, so the wrapper behaves as a plain DDP module again.

Opacus's distributed mode (``DistributedDPOptimizer``) also adds noise on rank 0 only; its
distributed Poisson sampler instead samples each rank's fixed slice independently. The global draw
here keeps single-process and distributed runs with one seed identical (and resumable across a
change of world size: the sampler state does not depend on the rank).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.privacy.noise import NoiseSource
from trustnlp.privacy.sampling import DPDataLoader, PoissonSampler, loader_options

__all__ = [
    "DistributedDPDataLoader",
    "DistributedPoissonSampler",
    "NoisyAllReduce",
    "check_same_on_all_ranks",
    "ddp_loader",
    "skip_ddp_allreduce",
]

_FORBIDDEN = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")


def _rank_world(rank: int | None, world_size: int | None, group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)``: as given, or from the (initialised) process group."""
    if rank is None or world_size is None:
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError(
                "Expected an initialised torch.distributed process group (torch.distributed.init_process_group) "
                "or explicit `rank` and `world_size`, but got neither."
            )
        rank = dist.get_rank(group) if rank is None else rank
        world_size = dist.get_world_size(group) if world_size is None else world_size
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(expected("world_size", "an int >= 1", world_size))
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(expected("rank", f"an int in [0, {world_size})", rank))
    return rank, world_size


# -- sampling --------------------------------------------------------------------------------------


class DistributedPoissonSampler(PoissonSampler):
    """A rank's share of a global Poisson batch: the global draw is seeded, hence the same on every
    rank (and equal to :class:`~trustnlp.privacy.sampling.PoissonSampler`'s with the same seed);
    rank ``r`` keeps ``B[r::world_size]`` of its sorted indices.

    The position/generator state (:meth:`state_dict`) is the global sampler's: the same on every
    rank, so a checkpoint of any rank resumes any rank (even with another world size).

    Args:
        num_examples: ``N``, the size of the whole data set.
        sampling_rate: ``q`` in ``(0, 1]`` (of the global batch: ``E|B| = qN``).
        steps_per_epoch: default ``round(1 / q)``.
        seed: a non-negative int, the same on every rank.
        rank / world_size: this process's rank in the group and the group's size.

    Attributes:
        largest_share: after each draw, the size of the largest share of that global batch
            (``ceil(|B| / world_size)``, rank 0's), so that every rank can cut its share into the
            same number of physical batches (:class:`~trustnlp.privacy.optimizer.BatchMemoryManager`).
    """

    def __init__(self, num_examples: int, *, sampling_rate: float, steps_per_epoch: int | None = None, seed: int,
                 rank: int, world_size: int) -> None:
        self.rank, self.world_size = _rank_world(rank, world_size)
        super().__init__(num_examples, sampling_rate=sampling_rate, steps_per_epoch=steps_per_epoch, seed=seed)
        self.largest_share = 0

    def _draw(self, gen: torch.Generator) -> torch.Tensor:
        batch = super()._draw(gen)
        self.largest_share = -(-int(batch.numel()) // self.world_size)
        return batch[self.rank :: self.world_size]

    def __repr__(self) -> str:
        return (
            f"DistributedPoissonSampler(num_examples={self.num_examples}, sampling_rate={self.sampling_rate}, "
            f"steps_per_epoch={self.steps_per_epoch}, seed={self.seed}, rank={self.rank}, world_size={self.world_size})"
        )


class DistributedDPDataLoader(DPDataLoader):
    """A :class:`~trustnlp.privacy.sampling.DPDataLoader` yielding this rank's share of each global
    Poisson batch (:class:`DistributedPoissonSampler`); shares may be empty (collated to empty
    tensors, as for an empty Poisson batch), and every rank must still run its forward/backward and
    ``optimizer.step()`` on them.

    ``sampling_rate`` and ``expected_batch_size`` are the global ones (``q``, ``qN``: the
    normaliser). ``state_dict`` / ``load_state_dict`` are the global sampler's (rank-independent).

    Args:
        dataset: the whole map-style data set (the same on every rank).
        sampling_rate: ``q`` in ``(0, 1]``.
        seed: a non-negative int, the same on every rank.
        steps_per_epoch: default ``round(1 / q)``.
        collate_fn: how to collate a non-empty batch (default ``default_collate``).
        rank / world_size: default: those of the default process group.
        **kwargs: other ``DataLoader`` options; the batching options are refused.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        sampling_rate: float,
        seed: int,
        steps_per_epoch: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._rank_world = _rank_world(rank, world_size)
        super().__init__(dataset, sampling_rate=sampling_rate, seed=seed, steps_per_epoch=steps_per_epoch,
                         collate_fn=collate_fn, **kwargs)

    def _make_sampler(self, n: int, *, sampling_rate: float, steps_per_epoch: int | None,
                      seed: int) -> DistributedPoissonSampler:
        rank, world_size = self._rank_world
        return DistributedPoissonSampler(n, sampling_rate=sampling_rate, seed=seed, steps_per_epoch=steps_per_epoch,
                                         rank=rank, world_size=world_size)

    @property
    def rank(self) -> int:
        return self.poisson_sampler.rank

    @property
    def world_size(self) -> int:
        return self.poisson_sampler.world_size

    @classmethod
    def from_data_loader(  # type: ignore[override]
        cls, loader: DataLoader, *, sampling_rate: float | None = None, seed: int, steps_per_epoch: int | None = None,
        rank: int | None = None, world_size: int | None = None,
    ) -> DistributedDPDataLoader:
        """A distributed Poisson-sampling copy of ``loader`` (same dataset, collate function and options).

        ``sampling_rate`` defaults to ``1 / len(loader)``: the loader's batch (all ranks together)
        in expectation.
        """
        if getattr(loader, "batch_sampler", None) is None:
            raise ConfigError("Expected a DataLoader with automatic batching (batch_size or batch_sampler set), but got batch_size=None.")
        if isinstance(loader.dataset, IterableDataset):
            raise DataError(expected("loader.dataset", "a map-style dataset", type(loader.dataset).__name__))
        if sampling_rate is None:
            if len(loader) == 0:
                raise DataError("Expected a non-empty DataLoader, but got one with 0 batches.")
            sampling_rate = 1 / len(loader)
        return cls(loader.dataset, sampling_rate=sampling_rate, seed=seed, steps_per_epoch=steps_per_epoch,
                   collate_fn=loader.collate_fn, rank=rank, world_size=world_size, **loader_options(loader))


def ddp_loader(data_loader: DataLoader, *, poisson_sampling: bool, sampling_rate: float | None, seed: int,
               group: Any = None) -> DistributedDPDataLoader:
    """The loader of a DDP run: ``data_loader`` itself if it is a :class:`DistributedDPDataLoader`
    of this group, else a distributed Poisson copy of a plain loader over the whole data set.

    Raises:
        ConfigError: ``poisson_sampling=False``; a ``DPDataLoader`` (it would give every rank the
            whole batch); a distributed loader of another rank/world size or sampling rate.
    """
    if poisson_sampling is not True:
        raise ConfigError(expected("poisson_sampling", "True with a DistributedDataParallel module", poisson_sampling))
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if isinstance(data_loader, DistributedDPDataLoader):
        if (data_loader.rank, data_loader.world_size) != (rank, world):
            raise ConfigError(expected("data_loader's (rank, world_size)", f"the DDP group's {(rank, world)}",
                                       (data_loader.rank, data_loader.world_size)))
        if sampling_rate is not None and sampling_rate != data_loader.sampling_rate:
            raise ConfigError(expected("sampling_rate", f"the DistributedDPDataLoader's ({data_loader.sampling_rate})",
                                       sampling_rate))
        return data_loader
    if isinstance(data_loader, DPDataLoader):
        raise ConfigError(
            "Expected `data_loader` to be a plain DataLoader or a DistributedDPDataLoader with a "
            "DistributedDataParallel module, but got a DPDataLoader: it would give every rank the whole batch."
        )
    return DistributedDPDataLoader.from_data_loader(data_loader, sampling_rate=sampling_rate, seed=seed, rank=rank,
                                                    world_size=world)


# -- the noisy sum across ranks --------------------------------------------------------------------


class NoisyAllReduce:
    """Noise once, then sum across the ranks of ``group``: rank 0 adds ``N(0, std²)`` to its
    tensors, then one all-reduce (SUM) per (dtype, device) bucket of flattened tensors.

    The result is identical on every rank. In exact arithmetic it is the single-process
    ``Σ_r s_r + noise``; in floating point it differs from it by the rounding of the sum's order.

    Args:
        group: the process group (``None``: the default group; DDP's ``process_group``).
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank, self.world_size = _rank_world(None, None, group)

    def __call__(self, tensors: Sequence[torch.Tensor], *, noise: NoiseSource, std: float) -> None:
        """Add the noise (rank 0) and sum ``tensors`` across ranks, in place, in the same order on every rank."""
        noise.add_(tensors, std=std if self.rank == 0 else 0.0)  # validates on every rank; draws on rank 0 only
        buckets: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for t in tensors:
            buckets.setdefault((t.dtype, t.device), []).append(t)
        with torch.no_grad():
            for ts in buckets.values():
                flat = torch.cat([t.reshape(-1) for t in ts])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
                for t, part in zip(ts, flat.split([t.numel() for t in ts]), strict=True):
                    t.copy_(part.view_as(t))

    def __repr__(self) -> str:
        return f"NoisyAllReduce(rank={self.rank}, world_size={self.world_size})"


def check_same_on_all_ranks(values: Mapping[str, object], *, group: Any = None, device: torch.device | str = "cpu") -> None:
    """Raise :class:`~trustnlp.errors.ConfigError` on every rank unless each value is the same on every rank.

    A collective (one all-reduce of 48-bit hashes of ``repr(value)``): every rank must call it with
    the same keys, in the same order.
    """
    names = list(values)
    h = [int.from_bytes(hashlib.sha256(repr(values[k]).encode()).digest()[:6], "little") for k in names]
    x = torch.tensor(h + [-v for v in h], dtype=torch.float64, device=device)  # 48-bit ints are exact in float64
    dist.all_reduce(x, op=dist.ReduceOp.MAX, group=group)
    differ = [k for i, k in enumerate(names) if x[i] != -x[len(names) + i]]
    if differ:
        mine = ", ".join(f"{k}={values[k]!r}" for k in differ)
        raise ConfigError(
            f"Expected {differ} to be the same on every rank, but they differ (rank {dist.get_rank(group)} has {mine}): "
            "give every process the same engine seed, data set, sampling rate, noise multiplier and clipping."
        )


# -- DDP's own all-reduce --------------------------------------------------------------------------


@dataclass
class _SkipState:
    """State of the communication hook: ``active`` skips DDP's all-reduce; otherwise DDP's default."""

    process_group: Any
    active: bool = True


def _dp_comm_hook(state, bucket):  # type: ignore[no-untyped-def]
    """DDP communication hook ``(state: _SkipState, bucket: dist.GradBucket) -> Future[Tensor]``:
    keep the local (unclipped, discarded) gradients while private; after ``detach`` DDP's default
    averaging all-reduce. (No annotations: DDP checks them, and postponed ones are strings.)"""
    if not state.active:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        return allreduce_hook(state.process_group, bucket)
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def skip_ddp_allreduce(module: DistributedDataParallel) -> _SkipState:
    """Register (or re-activate) the hook that skips DDP's all-reduce of the unclipped gradients.

    Raises:
        ConfigError: ``module`` already has another communication hook (DDP allows one).
    """
    for hook, state in getattr(module, "_comm_hooks", []):
        if hook is _dp_comm_hook:
            state.active = True
            return state
    state = _SkipState(module.process_group)
    try:
        module.register_comm_hook(state, _dp_comm_hook)
    except RuntimeError as err:
        raise ConfigError(
            "The DistributedDataParallel module already has a communication hook, and DDP allows only one: the DP "
            "engine needs its own (the clipped sums are all-reduced by the DP optimizer). Wrap the model in a fresh "
            f"DistributedDataParallel without a comm hook. ({err})"
        ) from err
    return state

