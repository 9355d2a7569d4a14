"""Poisson subsampling for DP-SGD: example-level, user-level, and a ``DataLoader`` wrapper.

DP-SGD's privacy analysis (amplification by subsampling, as in the RDP/PRV accountants) assumes
**Poisson sampling**: at every step each privacy unit is included independently with probability
``q``. The logical batch size ``|B| ~ Binomial(N, q)`` therefore varies from step to step and can
be 0; an empty batch is still a step (the model gets noise only) and must not be skipped, or the
accounting would be wrong. The noisy sum is normalised by the *expected* batch size ``q · N``
(a data-independent constant), never by ``|B|``.

Every sampler here is deterministic in ``(seed, epoch)``: ``epoch(e)`` yields epoch ``e``'s batches
(the protocol the training loop uses: it resumes by skipping the batches already done), and
iterating the sampler itself walks epoch after epoch with ``state_dict()``/``load_state_dict()``
for an exact mid-epoch resume. Seeds are domain-separated with sha256, so a sampler seeded ``s`` is
unrelated to ``torch.manual_seed(s)`` and to a noise source seeded ``s``.

Example:
    >>> sampler = PoissonSampler(1000, sampling_rate=0.01, seed=0)
    >>> len(sampler), sampler.expected_batch_size
    (100, 10.0)
    >>> batches = list(sampler.epoch(0))   # 100 index tensors of ~Binomial(1000, 0.01) sizes
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data._utils.collate import default_collate

from trustnlp.errors import ConfigError, DataError, expected

__all__ = ["PoissonSampler", "UserPoissonSampler", "UserBatch", "UserExampleBatches", "DPDataLoader"]

B = TypeVar("B")


def _derive_seed(label: str, seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"trustnlp.{label}:{seed}:{epoch}".encode()).digest()[:8], "little")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(expected(name, f"an int >= {minimum}", value))
    return int(value)


class _StepSampler(ABC, Generic[B]):
    """Shared machinery: per-epoch generators, epoch iteration, and the resumable position."""

    _label: str

    def __init__(self, num_units: int, *, sampling_rate: float, steps_per_epoch: int | None, seed: int) -> None:
        if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int | float) or not 0 < sampling_rate <= 1:
            raise ConfigError(expected("sampling_rate", "in (0, 1]", sampling_rate))
        self.sampling_rate = float(sampling_rate)
        self.seed = _check_int("seed", seed, 0)
        if steps_per_epoch is None:
            steps_per_epoch = max(1, round(1 / self.sampling_rate))
        self.steps_per_epoch = _check_int("steps_per_epoch", steps_per_epoch, 1)
        self._num_units = num_units
        self._epoch, self._step = 0, 0
        self._gen = self._generator(0)

    def _generator(self, e: int) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(_derive_seed(self._label, self.seed, e))

    def _include(self, gen: torch.Generator) -> torch.Tensor:
        """Boolean mask of the units included this step: each independently with probability ``q``."""
        u = torch.rand(self._num_units, generator=gen, dtype=torch.float64)  # 53-bit uniforms in [0, 1)
        return u < self.sampling_rate

    @abstractmethod
    def _draw(self, gen: torch.Generator) -> B: ...

    def epoch(self, e: int) -> Iterator[B]:
        """The ``steps_per_epoch`` batches of epoch ``e`` (a pure function of ``(seed, e)``)."""
        gen = self._generator(_check_int("e", e, 0))
        for _ in range(self.steps_per_epoch):
            yield self._draw(gen)

    def __iter__(self) -> Iterator[B]:
        """The rest of the current epoch; the next ``iter()`` starts the next epoch.

        Equal to ``epoch(e)`` for a fresh epoch. Position is counted when a batch is handed out, so
        :meth:`state_dict` taken after ``k`` batches resumes at batch ``k`` (after all of them: the
        resumed ``iter()`` yields nothing and ends the epoch). One iteration at a time.
        """
        while self._step < self.steps_per_epoch:
            batch = self._draw(self._gen)
            self._step += 1
            yield batch
        self._next_epoch()

    def _next_epoch(self) -> None:
        self._epoch, self._step = self._epoch + 1, 0
        self._gen = self._generator(self._epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def position(self) -> tuple[int, int]:
        """``(epoch, batches of it already handed out)``."""
        return self._epoch, self._step

    def state_dict(self) -> dict[str, torch.Tensor | int | str]:
        """Position and generator state (tensors, ints and strings only)."""
        return {
            "kind": self._label, "seed": self.seed, "num_units": self._num_units,
            "sampling_rate": repr(self.sampling_rate), "steps_per_epoch": self.steps_per_epoch,
            "epoch": self._epoch, "step": self._step, "generator": self._gen.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume exactly where :meth:`state_dict` was taken (the configuration must match)."""
        mine = self.state_dict()
        for key in ("kind", "seed", "num_units", "sampling_rate", "steps_per_epoch"):
            if state.get(key) != mine[key]:
                raise ConfigError(
                    f"Expected the sampler state's `{key}` to be {mine[key]!r} (this sampler's), but got "
                    f"{state.get(key)!r}; the state was saved by a differently configured sampler."
                )
        gen = state.get("generator")
        if not isinstance(gen, torch.Tensor) or gen.dtype != torch.uint8:
            raise ConfigError(expected('state["generator"]', "a uint8 tensor (torch.Generator state)", type(gen).__name__))
        self._epoch = _check_int('state["epoch"]', state.get("epoch"), 0)
        self._step = _check_int('state["step"]', state.get("step"), 0)
        self._gen = torch.Generator(device="cpu")
        self._gen.set_state(gen.detach().cpu().clone())


class PoissonSampler(_StepSampler[torch.Tensor]):
    """Example-level Poisson subsampling: each step includes every example independently w.p. ``q``.

    The batch size is ``Binomial(N, q)`` (mean ``qN``, variance ``qN(1 - q)``); with small ``qN``
    batches are often empty, e.g. ``P(|B| = 0) = (1 - q)^N``. Empty batches are yielded as empty
    ``long`` tensors: they are valid DP steps (noise only).

    Args:
        num_examples: ``N >= 1``.
        sampling_rate: ``q`` in ``(0, 1]``.
        steps_per_epoch: steps per "epoch" (default ``round(1 / q)``, so an epoch sees ``N``
            examples in expectation). Poisson sampling has no real epochs; this only sets how the
            loop counts and checkpoints.
        seed: a non-negative int; batches are a deterministic function of ``(seed, epoch)``.

    Attributes:
        expected_batch_size: ``q · N``, the normaliser of the noisy gradient sum.
    """

    _label = "poisson"

    def __init__(self, num_examples: int, *, sampling_rate: float, steps_per_epoch: int | None = None, seed: int) -> None:
        self.num_examples = _check_int("num_examples", num_examples, 1)
        super().__init__(self.num_examples, sampling_rate=sampling_rate, steps_per_epoch=steps_per_epoch, seed=seed)
        self.expected_batch_size = self.sampling_rate * self.num_examples

    def _draw(self, gen: torch.Generator) -> torch.Tensor:
        return torch.nonzero(self._include(gen)).flatten()

    def __repr__(self) -> str:
        return f"PoissonSampler(num_examples={self.num_examples}, sampling_rate={self.sampling_rate}, steps_per_epoch={self.steps_per_epoch}, seed={self.seed})"


class UserBatch(NamedTuple):
    """One user-level step: ``indices`` of the examples and ``users[i]``, the user (index into
    ``sampler.users``) of example ``indices[i]``. Examples are grouped by user, users ascending."""

    indices: torch.Tensor
    users: torch.Tensor

    def groups(self) -> tuple[torch.Tensor, int]:
        """``(group, k)``: each example's sampled-user number in ``0 .. k-1`` (for ``index_add_``
        of per-example gradients into per-user sums), and ``k``, the number of sampled users."""
        uniq, group = torch.unique_consecutive(self.users, return_inverse=True)
        return group, int(uniq.numel())


class UserPoissonSampler(_StepSampler[UserBatch]):
    """User-level Poisson subsampling: each step includes every *user* independently w.p. ``q``,
    with all of that user's examples.

    For user-level DP the privacy unit is a user: the clipper bounds each sampled user's *summed*
    gradient, so the steps yield :class:`UserBatch` ``(indices, users)`` with the grouping.

    ``max_examples_per_user`` bounds a user's contribution: a user with more examples keeps a fixed
    subset of that size, chosen once from a shuffle seeded by ``seed`` (the other examples are never
    used). The cap is **part of the privacy unit definition**: the guarantee is about a user's
    (capped) example set, so report the cap with ε, and note that it changes what "a user's data"
    means for the model. Without a cap the unit is all of the user's examples.

    Args:
        user_ids: the user of each example (any hashable ids; one per example).
        sampling_rate: ``q`` in ``(0, 1]``, the per-step inclusion probability of a user.
        steps_per_epoch: default ``round(1 / q)``.
        seed: a non-negative int.
        max_examples_per_user: ``None`` (no cap) or an int >= 1.

    Attributes:
        users: the distinct user ids, in order of first appearance (``UserBatch.users`` indexes it).
        num_users: number of distinct users ``U``.
        num_examples: ``len(user_ids)``; ``num_examples_used`` counts those kept under the cap.
        expected_batch_size: ``q · U`` *users* per step (the normaliser of the noisy sum of
            per-user clipped gradients).
        user_index: ``[num_examples]`` long tensor, the user (index into ``users``) of each example.
        kept_indices: the examples kept under the cap, grouped by user (users ascending).
    """

    _label = "user-poisson"

    def __init__(
        self,
        user_ids: Sequence[Hashable],
        *,
        sampling_rate: float,
        steps_per_epoch: int | None = None,
        seed: int,
        max_examples_per_user: int | None = None,
    ) -> None:
        seed = _check_int("seed", seed, 0)
        ids = list(user_ids)
        if not ids:
            raise DataError(expected("user_ids", "non-empty (one user id per example)", ids))
        if max_examples_per_user is not None:
            max_examples_per_user = _check_int("max_examples_per_user", max_examples_per_user, 1)
        self.max_examples_per_user = max_examples_per_user
        index: dict[Hashable, int] = {}
        try:
            owner = [index.setdefault(u, len(index)) for u in ids]
        except TypeError as err:
            raise DataError(f"Expected every user id to be hashable, but got: {err}.") from err
        self.users: tuple[Hashable, ...] = tuple(index)
        self.num_users = len(self.users)
        self.num_examples = len(ids)
        owner_t = torch.tensor(owner, dtype=torch.long)
        counts = torch.bincount(owner_t, minlength=self.num_users)
        kept = torch.arange(self.num_examples)
        if max_examples_per_user is not None and int(counts.max()) > max_examples_per_user:
            # a seeded shuffle within each user (random keys, then a stable sort by user) keeps the first `cap`
            g = torch.Generator(device="cpu").manual_seed(_derive_seed("user-cap", seed, 0))
            shuffled = torch.argsort(torch.rand(self.num_examples, generator=g, dtype=torch.float64))
            shuffled = shuffled[torch.argsort(owner_t[shuffled], stable=True)]
            rank = torch.arange(self.num_examples) - (torch.cumsum(counts, 0) - counts)[owner_t[shuffled]]
            kept = shuffled[rank < max_examples_per_user].sort().values
        order = kept[torch.argsort(owner_t[kept], stable=True)]  # grouped by user, ascending within
        self._order = order  # kept example indices, grouped by user (users ascending)
        self._owner = owner_t[order]  # their users
        self.user_index = owner_t
        self.kept_indices = order
        self.num_examples_used = int(order.numel())
        super().__init__(self.num_users, sampling_rate=sampling_rate, steps_per_epoch=steps_per_epoch, seed=seed)
        self.expected_batch_size = self.sampling_rate * self.num_users

    def _draw(self, gen: torch.Generator) -> UserBatch:
        keep = self._include(gen)[self._owner]  # an example is in iff its user is
        return UserBatch(self._order[keep], self._owner[keep])

    def example_batches(self) -> UserExampleBatches:
        """The batches as plain index tensors, for :func:`trustnlp.train.fit` (its ``BatchSampler``)."""
        return UserExampleBatches(self)

    def __repr__(self) -> str:
        return (
            f"UserPoissonSampler(num_users={self.num_users}, num_examples={self.num_examples}, sampling_rate={self.sampling_rate}, "
            f"steps_per_epoch={self.steps_per_epoch}, seed={self.seed}, max_examples_per_user={self.max_examples_per_user})"
        )


class UserExampleBatches:
    """A :class:`UserPoissonSampler` seen as the training loop's ``BatchSampler``: ``epoch(e)`` yields
    each step's example indices (grouped by user); the users of the examples are
    ``sampler.user_index[indices]``."""

    def __init__(self, sampler: UserPoissonSampler) -> None:
        self.sampler = sampler
        self.steps_per_epoch = sampler.steps_per_epoch

    def epoch(self, e: int) -> Iterator[torch.Tensor]:
        for batch in self.sampler.epoch(e):
            yield batch.indices

    def __len__(self) -> int:
        return self.steps_per_epoch


# -- DataLoader ------------------------------------------------------------------------------------


class _IndexLists:
    """A batch sampler for ``DataLoader``: the Poisson sampler's index tensors as lists of ints."""

    def __init__(self, sampler: PoissonSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[int]]:
        for idx in self.sampler:
            yield idx.tolist()

    def __len__(self) -> int:
        return len(self.sampler)


def _empty_like(x: Any, path: str = "batch") -> Any:
    """The structure of a collated batch with every tensor/array cut to batch size 0 (fresh memory).

    Nothing of the template's values survives: a value that cannot be emptied is an error, since
    returning it would let the (real) example it came from influence every empty step.
    """
    if isinstance(x, torch.Tensor | np.ndarray):
        if x.ndim == 0:
            raise DataError(f"Cannot make an empty batch: `{path}` is a 0-d tensor/array, so it has no batch dimension.")
        if isinstance(x, np.ndarray):
            return np.empty((0, *x.shape[1:]), dtype=x.dtype)
        return torch.empty((0, *x.shape[1:]), dtype=x.dtype, device=x.device)
    if x is None:
        return None
    if isinstance(x, Mapping):
        emptied = {k: _empty_like(v, f"{path}[{k!r}]") for k, v in x.items()}
        try:
            return type(x)(emptied)  # type: ignore[call-arg]
        except TypeError:
            return emptied
    if isinstance(x, tuple | list):
        leaves = (str, bytes, int, float, complex, bool)
        if all(isinstance(v, leaves) for v in x):  # a collated batch of plain values (e.g. strings)
            return type(x)()
        items = [_empty_like(v, f"{path}[{i}]") for i, v in enumerate(x)]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    raise DataError(
        f"Cannot make an empty batch: `{path}` is a {type(x).__name__}; expected tensors, arrays, "
        "mappings, tuples or lists of them (returning the value itself would leak the example it came from)."
    )


class _EmptyBatchCollate:
    """Wraps a collate function so that an empty Poisson batch becomes correctly shaped empty tensors.

    Shapes and dtypes (all but the batch dimension, which must be the first) come from collating the
    dataset's first example; none of its values are returned.
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any], dataset: Dataset) -> None:
        self.collate_fn = collate_fn
        self.dataset = dataset
        self._template: Any = None

    def __call__(self, batch: list[Any]) -> Any:
        if batch:
            return self.collate_fn(batch)
        if self._template is None:
            self._template = _empty_like(self.collate_fn([self.dataset[0]]))
        return _empty_like(self._template)


_FORBIDDEN = ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last")


def loader_options(loader: DataLoader) -> dict[str, Any]:
    """The options of ``loader`` other than its batching (workers, pinning, generator, ...), to build
    another loader over the same data that batches differently."""
    options: dict[str, Any] = {
        "num_workers": loader.num_workers, "pin_memory": loader.pin_memory, "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn, "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator, "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        options["in_order"] = loader.in_order
    return options


class DPDataLoader(DataLoader):
    """A ``DataLoader`` over a map-style dataset whose batches are Poisson samples (for DP-SGD).

    Batches vary in size (``Binomial(len(dataset), q)``) and may be empty; an empty batch is
    collated to tensors with batch dimension 0 and the other dimensions/dtypes of the dataset's
    first example. Exact mid-epoch resume through :meth:`state_dict` holds with ``num_workers=0``;
    with workers the sampler runs ahead by the prefetched batches (resume with
    ``loader.poisson_sampler.epoch(e)`` and skip instead).

    Args:
        dataset: a map-style dataset (``__len__`` and ``__getitem__``).
        sampling_rate: ``q`` in ``(0, 1]``.
        seed: a non-negative int.
        steps_per_epoch: default ``round(1 / q)``.
        collate_fn: how to collate a non-empty batch (default ``default_collate``).
        **kwargs: other ``DataLoader`` options (``num_workers``, ``pin_memory``, ...); the batching
            options (``batch_size``, ``shuffle``, ``sampler``, ``batch_sampler``, ``drop_last``)
            are set by Poisson sampling and are refused.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        sampling_rate: float,
        seed: int,
        steps_per_epoch: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise DataError(expected("dataset", "a map-style dataset with __len__ and __getitem__", type(dataset).__name__))
        bad = [k for k in _FORBIDDEN if k in kwargs]
        if bad:
            raise ConfigError(f"{type(self).__name__} sets the batches by Poisson sampling; remove the option(s) {bad}.")
        self.poisson_sampler = self._make_sampler(len(dataset), sampling_rate=sampling_rate,
                                                  steps_per_epoch=steps_per_epoch, seed=seed)
        if isinstance(collate_fn, _EmptyBatchCollate):
            collate_fn = collate_fn.collate_fn
        super().__init__(
            dataset,
            batch_sampler=_IndexLists(self.poisson_sampler),
            collate_fn=_EmptyBatchCollate(collate_fn or default_collate, dataset),
            **kwargs,
        )

    def _make_sampler(self, n: int, *, sampling_rate: float, steps_per_epoch: int | None, seed: int) -> PoissonSampler:
        """The Poisson sampler of the batches (subclasses: e.g. a rank's share of a global draw)."""
        return PoissonSampler(n, sampling_rate=sampling_rate, steps_per_epoch=steps_per_epoch, seed=seed)

    @property
    def sampling_rate(self) -> float:
        return self.poisson_sampler.sampling_rate

    @property
    def expected_batch_size(self) -> float:
        """``q · len(dataset)``, the normaliser of the noisy gradient sum."""
        return self.poisson_sampler.expected_batch_size

    def state_dict(self) -> dict[str, torch.Tensor | int | str]:
        return self.poisson_sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.poisson_sampler.load_state_dict(state)

    @classmethod
    def from_data_loader(
        cls, loader: DataLoader, *, sampling_rate: float | None = None, seed: int, steps_per_epoch: int | None = None
    ) -> DPDataLoader:
        """A Poisson-sampling copy of ``loader``: same dataset, collate function, workers and options.

        Args:
            loader: a ``DataLoader`` with automatic batching over a map-style dataset.
            sampling_rate: default ``1 / len(loader)`` (the original batch size in expectation).
            seed: a non-negative int.
            steps_per_epoch: default ``round(1 / q)``.
        """
        if getattr(loader, "batch_sampler", None) is None:
            raise ConfigError("Expected a DataLoader with automatic batching (batch_size or batch_sampler set), but got batch_size=None.")
        if isinstance(loader.dataset, IterableDataset):
            raise DataError(expected("loader.dataset", "a map-style dataset", type(loader.dataset).__name__))
        if sampling_rate is None:
            if len(loader) == 0:
                raise DataError("Expected a non-empty DataLoader, but got one with 0 batches.")
            sampling_rate = 1 / len(loader)
        options = loader_options(loader)
        return cls(loader.dataset, sampling_rate=sampling_rate, seed=seed, steps_per_epoch=steps_per_epoch,
                   collate_fn=loader.collate_fn, **options)
