"""Seeded partitions of a data set across federated clients, with statistics and plot data.

Every partitioner assigns each example to exactly one client (clients may differ in size) and is a
deterministic function of its seed. The partition specs (``parse_partition_spec``):

- ``iid``: a seeded permutation cut into ``K`` nearly equal parts.
- ``dirichlet:ALPHA`` (label skew, as in FedNLP, Lin et al. 2022, after Hsu et al. 2019): every
  client has the same size ``N/K``; client ``c``'s label mix is ``q_c ~ Dirichlet(ALPHA * p)``, with
  ``p`` the global label distribution, and its examples are drawn without replacement from per-label
  pools by the *pooled Dirichlet sampler with capped redraws* (:func:`dirichlet_label_partition`), which
  never runs out of a label's examples. Small ``ALPHA`` gives clients dominated by a few labels;
  ``ALPHA -> inf`` gives every client the global mix.
- ``quantity:BETA`` (quantity skew): client sizes ``1 + Multinomial(N - K, s)`` with
  ``s ~ Dirichlet(BETA * 1_K)``, so every client has at least one example; examples are assigned
  uniformly at random (labels stay IID).
- ``user`` (natural): one client per distinct value of a user column (``user_id`` in the built-in
  corpus, ``speaker`` in tinyshakespeare); with ``num_clients`` smaller than the number of users,
  whole users are dealt round-robin, in a seeded random order, to ``num_clients`` clients.
- ``cluster:K[:ALPHA]`` (cluster / feature skew, FedNLP): k-means (k-means++ initialisation, best of
  10, scikit-learn) over sentence embeddings (MiniLM by default; any embedding function or array) into
  ``K`` clusters, whose ids then play the role of the label in the ``dirichlet`` sampler
  (``ALPHA`` defaults to :data:`DEFAULT_CLUSTER_ALPHA`).

Example:
    >>> part = dirichlet_label_partition(np.repeat([0, 1, 2], 20), num_clients=6, alpha=0.5, seed=0)
    >>> part.sizes().tolist()
    [10, 10, 10, 10, 10, 10]
    >>> sorted(np.concatenate(part.clients).tolist()) == list(range(60))
    True
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trustnlp.data.dataset import TextDataset
from trustnlp.errors import ConfigError, DataError, MissingDependencyError, expected

__all__ = [
    "DEFAULT_CLUSTER_ALPHA",
    "PARTITION_KINDS",
    "Partition",
    "PartitionSpec",
    "PartitionStats",
    "PartitionPlot",
    "Partitioner",
    "IIDPartitioner",
    "DirichletLabelPartitioner",
    "QuantitySkewPartitioner",
    "UserPartitioner",
    "ClusterPartitioner",
    "iid_partition",
    "dirichlet_label_partition",
    "quantity_skew_partition",
    "user_partition",
    "cluster_partition",
    "kmeans_labels",
    "minilm_embeddings",
    "parse_partition_spec",
    "make_partitioner",
    "partition_dataset",
    "default_user_column",
]

PARTITION_KINDS = ("iid", "dirichlet", "quantity", "user", "cluster")
DEFAULT_CLUSTER_ALPHA = 1.0
USER_COLUMNS = ("user_id", "speaker")
EmbedFn = Callable[[Sequence[str]], np.ndarray]


# -- the partition and its statistics ---------------------------------------------------------------
@dataclass(frozen=True)
class PartitionPlot:
    """Data of the partition figure: one stacked bar per client (its examples by label), clients
    ordered by size, at most ``max_clients`` of them (the largest).

    Attributes:
        title: e.g. ``"dirichlet:0.1, 100 clients"``.
        client_names: bar labels.
        sizes: bar heights (examples per client).
        label_counts: ``[clients][labels]`` stack heights, or ``None`` for unlabelled data.
        label_names: stack names.
        num_clients_total: clients in the partition (the figure may show fewer).
    """

    title: str
    client_names: tuple[str, ...]
    sizes: tuple[int, ...]
    label_counts: tuple[tuple[int, ...], ...] | None
    label_names: tuple[str, ...]
    num_clients_total: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "partition", "title": self.title, "client_names": list(self.client_names),
            "sizes": list(self.sizes), "label_counts": None if self.label_counts is None else [list(r) for r in self.label_counts],
            "label_names": list(self.label_names), "num_clients_total": self.num_clients_total,
        }


@dataclass(frozen=True)
class PartitionStats:
    """Summary statistics of a partition.

    Attributes:
        num_clients / num_examples: totals.
        size_min / size_max / size_mean / size_std / size_cv: client sizes (``cv = std / mean``).
        mean_tv_distance: mean over clients of the total-variation distance between the client's
            label distribution and the global one, ``0.5 * sum_k |q_ck - p_k|`` (0 = IID, -> 1 =
            disjoint labels); ``None`` without labels.
        mean_effective_labels: mean over clients of ``exp(entropy(q_c))`` (how many labels a client
            effectively has); ``None`` without labels.
        mean_labels_present: mean number of distinct labels per client; ``None`` without labels.
    """

    num_clients: int
    num_examples: int
    size_min: int
    size_max: int
    size_mean: float
    size_std: float
    size_cv: float
    mean_tv_distance: float | None
    mean_effective_labels: float | None
    mean_labels_present: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Partition:
    """Which examples each client holds.

    Attributes:
        clients: one sorted ``int64`` index array per client; together they cover ``range(num_examples)``
            exactly once.
        num_examples: size of the partitioned data.
        spec: the partition spec (``"dirichlet:0.5"``).
        seed: the seed it was drawn with.
        client_names: a name per client (user ids for ``user``; ``"0"``, ``"1"``, ... otherwise).
        details: sampler facts (sampler name, redraws, cluster sizes, ...).
    """

    clients: tuple[np.ndarray, ...]
    num_examples: int
    spec: str
    seed: int
    client_names: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.client_names:
            object.__setattr__(self, "client_names", tuple(str(i) for i in range(len(self.clients))))

    def __len__(self) -> int:
        return len(self.clients)

    def sizes(self) -> np.ndarray:
        """Examples per client."""
        return np.array([len(c) for c in self.clients], dtype=np.int64)

    def assignment(self) -> np.ndarray:
        """The client of each example (``-1`` for an example no client holds; never for these partitioners)."""
        out = np.full(self.num_examples, -1, dtype=np.int64)
        for c, idx in enumerate(self.clients):
            out[idx] = c
        return out

    def label_counts(self, labels: np.ndarray, num_labels: int) -> np.ndarray:
        """``[clients, labels]`` matrix of example counts."""
        labels = np.asarray(labels)
        return np.stack([np.bincount(labels[idx], minlength=num_labels) for idx in self.clients]) if self.clients else \
            np.zeros((0, num_labels), dtype=np.int64)

    def stats(self, labels: np.ndarray | None = None, num_labels: int | None = None) -> PartitionStats:
        """Sizes and, given labels, label-skew statistics."""
        sizes = self.sizes().astype(np.float64)
        mean = float(sizes.mean()) if sizes.size else 0.0
        std = float(sizes.std()) if sizes.size else 0.0
        tv = eff = present = None
        if labels is not None and len(self.clients):
            labels = np.asarray(labels)
            k = int(num_labels if num_labels is not None else labels.max() + 1)
            counts = self.label_counts(labels, k).astype(np.float64)
            p = counts.sum(axis=0) / counts.sum()
            q = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
            tv = float(0.5 * np.abs(q - p).sum(axis=1).mean())
            with np.errstate(divide="ignore", invalid="ignore"):
                ent = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)
            eff = float(np.exp(ent).mean())
            present = float((counts > 0).sum(axis=1).mean())
        return PartitionStats(
            num_clients=len(self.clients), num_examples=self.num_examples,
            size_min=int(sizes.min()) if sizes.size else 0, size_max=int(sizes.max()) if sizes.size else 0,
            size_mean=mean, size_std=std, size_cv=std / mean if mean else 0.0,
            mean_tv_distance=tv, mean_effective_labels=eff, mean_labels_present=present,
        )

    def plot_data(self, labels: np.ndarray | None = None, label_names: Sequence[str] = (), *,
                  max_clients: int = 50) -> PartitionPlot:
        """The figure's data (see :class:`PartitionPlot`)."""
        sizes = self.sizes()
        order = np.argsort(-sizes, kind="stable")[:max_clients]
        counts = None
        names = tuple(label_names)
        if labels is not None:
            k = len(names) if names else int(np.asarray(labels).max() + 1)
            names = names or tuple(str(i) for i in range(k))
            m = self.label_counts(np.asarray(labels), k)
            counts = tuple(tuple(int(x) for x in m[c]) for c in order)
        return PartitionPlot(
            title=f"{self.spec}, {len(self.clients)} clients",
            client_names=tuple(self.client_names[c] for c in order),
            sizes=tuple(int(sizes[c]) for c in order),
            label_counts=counts, label_names=names, num_clients_total=len(self.clients),
        )

    def to_dict(self, labels: np.ndarray | None = None, label_names: Sequence[str] = ()) -> dict[str, Any]:
        """Spec, seed, statistics, sizes, sampler details and plot data (JSON-able)."""
        k = len(label_names) if label_names else None
        return {
            "spec": self.spec, "seed": self.seed, "client_names": list(self.client_names),
            "sizes": self.sizes().tolist(), "stats": self.stats(labels, k).to_dict(),
            "details": dict(self.details), "plot": self.plot_data(labels, label_names).to_dict(),
        }


def _from_assignment(assign: np.ndarray, num_clients: int, **kw: Any) -> Partition:
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(num_clients + 1))
    clients = tuple(np.sort(order[bounds[c]: bounds[c + 1]]) for c in range(num_clients))
    return Partition(clients=clients, num_examples=len(assign), **kw)


def _check_clients(num_clients: Any, n: int) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ConfigError(expected("num_clients", "an integer >= 1", num_clients))
    if num_clients > n:
        raise ConfigError(expected("num_clients", f"<= the number of examples ({n}), so every client has one", num_clients))
    return int(num_clients)


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(expected(name, "a finite number > 0", value))
    return float(value)


# -- the samplers -----------------------------------------------------------------------------------
def iid_partition(num_examples: int, num_clients: int, *, seed: int) -> Partition:
    """A seeded permutation of ``range(num_examples)`` cut into ``num_clients`` nearly equal parts."""
    k = _check_clients(num_clients, num_examples)
    perm = np.random.default_rng(seed).permutation(num_examples)
    return Partition(clients=tuple(np.sort(p) for p in np.array_split(perm, k)), num_examples=num_examples,
                     spec="iid", seed=seed, details={"sampler": "permutation"})


def dirichlet_label_partition(labels: Sequence[int] | np.ndarray, num_clients: int, *, alpha: float, seed: int,
                              spec: str | None = None) -> Partition:
    """Label skew (FedNLP): equal client sizes, client label mixes ``q_c ~ Dirichlet(alpha * p)``.

    The *pooled Dirichlet sampler with capped redraws*: client sizes are ``floor(N/K)`` or
    ``floor(N/K) + 1`` (the larger ones at seeded random clients); each label's examples form a
    shuffled pool. Clients are filled one at a time in a seeded random order: client ``c`` draws
    its label counts ``~ Multinomial(size_c, q_c)``, each count is capped at what is left in that
    label's pool, and the shortfall is re-drawn from ``q_c`` restricted (and renormalised) to the
    labels that still have examples, until the client is full; if ``q_c`` puts no mass on any
    label with examples left, the rest is drawn in proportion to the examples left. Examples are
    then taken from the front of each pool. As the sizes add up to ``N``, the pools never run out
    (the last client takes exactly what is left); the number of redraws is in ``details``.

    For a client whose caps do not bind, its label fraction ``f_k`` has mean ``p_k`` and variance
    ``p_k (1 - p_k) (1 + alpha / n_c) / (alpha + 1)`` (Dirichlet-multinomial).

    Args:
        labels: the class of each example.
        num_clients: ``K``.
        alpha: concentration (> 0); ``alpha -> inf`` approaches IID, small values give few labels per client.
        seed: the seed.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)) or (y.size and y.min() < 0):
        raise DataError("Expected `labels` to be a 1-D array of non-negative class indices for the label-skew partition.")
    n = len(y)
    k = _check_clients(num_clients, n)
    a = _check_positive("alpha", alpha)
    rng = np.random.default_rng(seed)
    counts = np.bincount(y, minlength=1)
    present = np.flatnonzero(counts)
    p = counts[present] / n
    base, extra = divmod(n, k)
    sizes = np.full(k, base, dtype=np.int64)
    sizes[rng.permutation(k)[:extra]] += 1
    mixes = rng.dirichlet(a * p, size=k)
    if not np.all(np.isfinite(mixes)):
        raise ConfigError(expected("alpha", "large enough for a finite Dirichlet draw", alpha))
    pools = [rng.permutation(np.flatnonzero(y == lab)) for lab in present]
    left = counts[present].astype(np.int64)
    taken = np.zeros_like(left)
    assign = np.empty(n, dtype=np.int64)
    redraws = fallbacks = 0
    order = rng.permutation(k)
    for c in order:
        need, take = int(sizes[c]), np.zeros_like(left)
        while need > 0:
            room = left - take
            w = mixes[c] * (room > 0)
            if w.sum() <= 0.0:
                w, fallbacks = room.astype(np.float64), fallbacks + 1
            draw = np.minimum(rng.multinomial(need, w / w.sum()), room)
            take += draw
            need -= int(draw.sum())
            redraws += int(need > 0)
        for j in np.flatnonzero(take):
            assign[pools[j][taken[j]: taken[j] + take[j]]] = c
        taken += take
        left -= take
    return _from_assignment(assign, k, spec=spec or f"dirichlet:{alpha:g}", seed=seed,
                            details={"sampler": "pooled Dirichlet with capped redraws", "alpha": a,
                                     "redraws": redraws, "fallbacks": fallbacks, "fill_order": order.tolist()})


def quantity_skew_partition(num_examples: int, num_clients: int, *, beta: float, seed: int) -> Partition:
    """Quantity skew: sizes ``1 + Multinomial(N - K, s)``, ``s ~ Dirichlet(beta * 1_K)``; examples uniformly at random."""
    k = _check_clients(num_clients, num_examples)
    b = _check_positive("beta", beta)
    rng = np.random.default_rng(seed)
    share = rng.dirichlet(np.full(k, b))
    if not np.all(np.isfinite(share)):
        raise ConfigError(expected("beta", "large enough for a finite Dirichlet draw", beta))
    sizes = 1 + rng.multinomial(num_examples - k, share)
    perm = rng.permutation(num_examples)
    cuts = np.cumsum(sizes)[:-1]
    return Partition(clients=tuple(np.sort(p) for p in np.split(perm, cuts)), num_examples=num_examples,
                     spec=f"quantity:{beta:g}", seed=seed, details={"sampler": "1 + multinomial of Dirichlet shares", "beta": b})


def user_partition(users: Sequence[Any], *, num_clients: int | None = None, seed: int) -> Partition:
    """Natural partition: one client per user, or whole users dealt round-robin (seeded order) to ``num_clients``."""
    u = np.asarray([str(x) for x in users])
    if u.size == 0:
        raise DataError("Expected at least one example to partition by user, but got none.")
    names, inverse = np.unique(u, return_inverse=True)
    if num_clients is None or num_clients == len(names):
        return _from_assignment(inverse.astype(np.int64), len(names), spec="user", seed=seed,
                                client_names=tuple(str(x) for x in names),
                                details={"sampler": "one client per user", "num_users": len(names)})
    k = _check_clients(num_clients, len(u))
    if k > len(names):
        raise ConfigError(expected("num_clients", f"<= the number of users ({len(names)}) for the `user` partition", num_clients))
    group = np.empty(len(names), dtype=np.int64)
    group[np.random.default_rng(seed).permutation(len(names))] = np.arange(len(names)) % k
    return _from_assignment(group[inverse], k, spec="user", seed=seed,
                            details={"sampler": "whole users dealt round-robin in a seeded order", "num_users": len(names)})


def kmeans_labels(embeddings: np.ndarray, k: int, *, seed: int) -> np.ndarray:
    """Cluster ids from k-means (scikit-learn, k-means++ initialisation, best of 10 runs)."""
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise DataError(f"Expected finite embeddings of shape [N, d], but got shape {x.shape}.")
    if not 1 <= k <= len(x):
        raise ConfigError(expected("K (clusters)", f"in [1, {len(x)}]", k))
    return KMeans(n_clusters=k, n_init=10, random_state=seed % (2**32)).fit_predict(x).astype(np.int64)


def cluster_partition(embeddings: np.ndarray, num_clients: int, *, k: int, alpha: float = DEFAULT_CLUSTER_ALPHA,
                      seed: int) -> Partition:
    """Cluster skew: k-means into ``k`` clusters, then the label-skew sampler over the cluster ids."""
    clusters = kmeans_labels(embeddings, k, seed=seed)
    part = dirichlet_label_partition(clusters, num_clients, alpha=alpha, seed=seed, spec=f"cluster:{k}:{alpha:g}")
    sizes = np.bincount(clusters, minlength=k).tolist()
    return Partition(clients=part.clients, num_examples=part.num_examples, spec=part.spec, seed=seed,
                     details={**part.details, "k": k, "cluster_sizes": sizes})


def minilm_embeddings(texts: Sequence[str], *, batch_size: int = 128, max_length: int = 128) -> np.ndarray:
    """MiniLM (all-MiniLM-L6-v2, offline package) sentence embeddings: mean-pooled, L2-normalised, ``[N, 384]``."""
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from trustnlp.models.hf import quiet_transformers, resolve_name
    except ImportError as e:  # pragma: no cover - base dependencies
        raise MissingDependencyError("transformers", purpose="MiniLM sentence embeddings") from e
    path, local = resolve_name("minilm")
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
        model = AutoModel.from_pretrained(path, local_files_only=local).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tok(list(texts[start: start + batch_size]), padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384))


# -- specs and partitioner classes --------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition spec: ``kind`` and its numbers (``alpha``, ``beta``, ``k``)."""

    kind: str
    alpha: float | None = None
    beta: float | None = None
    k: int | None = None

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "quantity":
            return f"quantity:{self.beta:g}"
        if self.kind == "cluster":
            return f"cluster:{self.k}:{self.alpha:g}"
        return self.kind


_SPEC = re.compile(r"^(iid|user|dirichlet:(?P<alpha>[^:]+)|quantity:(?P<beta>[^:]+)|cluster:(?P<k>[^:]+)(:(?P<calpha>[^:]+))?)$")


def parse_partition_spec(spec: str) -> PartitionSpec:
    """Parse ``iid | dirichlet:ALPHA | quantity:BETA | user | cluster:K[:ALPHA]``."""
    bad = ConfigError(expected("partition", "one of 'iid', 'dirichlet:ALPHA', 'quantity:BETA', 'user', 'cluster:K[:ALPHA]' "
                               "(ALPHA, BETA > 0; K an integer >= 1)", spec))
    m = _SPEC.match(spec.strip().lower()) if isinstance(spec, str) else None
    if m is None:
        raise bad
    try:
        if m.group("alpha") is not None:
            return PartitionSpec("dirichlet", alpha=_check_positive("alpha", float(m.group("alpha"))))
        if m.group("beta") is not None:
            return PartitionSpec("quantity", beta=_check_positive("beta", float(m.group("beta"))))
        if m.group("k") is not None:
            k = int(m.group("k"))
            if k < 1:
                raise bad
            a = float(m.group("calpha")) if m.group("calpha") is not None else DEFAULT_CLUSTER_ALPHA
            return PartitionSpec("cluster", alpha=_check_positive("alpha", a), k=k)
    except ValueError:
        raise bad from None
    return PartitionSpec(m.group(1))


def default_user_column(data: TextDataset) -> str:
    """The user column of a data set: the first of ``user_id``, ``speaker`` it has."""
    for name in USER_COLUMNS:
        if name in data.columns:
            return name
    raise DataError(f"Data set `{data.meta.name}` has no user column (looked for {list(USER_COLUMNS)}; columns: "
                    f"{sorted(data.columns)}); the `user` partition needs one (pass `user_column`).")


class Partitioner(ABC):
    """A seeded partitioner: ``partition(data) -> Partition``."""

    spec: str

    def __init__(self, *, seed: int) -> None:
        self.seed = int(seed)

    @abstractmethod
    def partition(self, data: TextDataset) -> Partition: ...


class IIDPartitioner(Partitioner):
    """See :func:`iid_partition`."""

    def __init__(self, num_clients: int, *, seed: int) -> None:
        super().__init__(seed=seed)
        self.num_clients, self.spec = num_clients, "iid"

    def partition(self, data: TextDataset) -> Partition:
        return iid_partition(len(data), self.num_clients, seed=self.seed)


class DirichletLabelPartitioner(Partitioner):
    """See :func:`dirichlet_label_partition`."""

    def __init__(self, num_clients: int, *, alpha: float, seed: int) -> None:
        super().__init__(seed=seed)
        self.num_clients, self.alpha = num_clients, _check_positive("alpha", alpha)
        self.spec = f"dirichlet:{alpha:g}"

    def partition(self, data: TextDataset) -> Partition:
        if data.labels is None:
            raise DataError(f"Data set `{data.meta.name}` has no labels; the `dirichlet` partition needs them "
                            "(use `iid`, `quantity`, `user` or `cluster`).")
        return dirichlet_label_partition(data.labels, self.num_clients, alpha=self.alpha, seed=self.seed)


class QuantitySkewPartitioner(Partitioner):
    """See :func:`quantity_skew_partition`."""

    def __init__(self, num_clients: int, *, beta: float, seed: int) -> None:
        super().__init__(seed=seed)
        self.num_clients, self.beta = num_clients, _check_positive("beta", beta)
        self.spec = f"quantity:{beta:g}"

    def partition(self, data: TextDataset) -> Partition:
        return quantity_skew_partition(len(data), self.num_clients, beta=self.beta, seed=self.seed)


class UserPartitioner(Partitioner):
    """See :func:`user_partition` (``column=None``: ``user_id`` or ``speaker``, whichever the data has)."""

    def __init__(self, num_clients: int | None = None, *, column: str | None = None, seed: int) -> None:
        super().__init__(seed=seed)
        self.num_clients, self.column, self.spec = num_clients, column, "user"

    def partition(self, data: TextDataset) -> Partition:
        column = self.column or default_user_column(data)
        part = user_partition(data.column(column), num_clients=self.num_clients, seed=self.seed)
        return Partition(clients=part.clients, num_examples=part.num_examples, spec=part.spec, seed=part.seed,
                         client_names=part.client_names, details={**part.details, "column": column})


class ClusterPartitioner(Partitioner):
    """See :func:`cluster_partition`; ``embed`` maps texts to ``[N, d]`` (default :func:`minilm_embeddings`),
    or pass precomputed ``embeddings``."""

    def __init__(self, num_clients: int, *, k: int, alpha: float = DEFAULT_CLUSTER_ALPHA, seed: int,
                 embed: EmbedFn | None = None, embeddings: np.ndarray | None = None) -> None:
        super().__init__(seed=seed)
        self.num_clients, self.k, self.alpha = num_clients, k, _check_positive("alpha", alpha)
        self.embed, self.embeddings = embed, embeddings
        self.spec = f"cluster:{k}:{alpha:g}"

    def partition(self, data: TextDataset) -> Partition:
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings)
        else:
            emb = np.asarray((self.embed or minilm_embeddings)(list(data.texts)))
        if emb.ndim != 2 or emb.shape[0] != len(data):
            raise DataError(f"Expected embeddings of shape [{len(data)}, d] (one per example), but got {emb.shape}.")
        part = cluster_partition(emb, self.num_clients, k=self.k, alpha=self.alpha, seed=self.seed)
        source = "given array" if self.embeddings is not None else getattr(self.embed or minilm_embeddings, "__name__", "function")
        return Partition(clients=part.clients, num_examples=part.num_examples, spec=part.spec, seed=part.seed,
                         details={**part.details, "embeddings": source})


def make_partitioner(spec: str | PartitionSpec, *, num_clients: int | None, seed: int, user_column: str | None = None,
                     embed: EmbedFn | None = None, embeddings: np.ndarray | None = None) -> Partitioner:
    """The partitioner a spec names (``num_clients=None`` is allowed for ``user`` only: one client per user)."""
    s = spec if isinstance(spec, PartitionSpec) else parse_partition_spec(spec)
    if s.kind == "user":
        return UserPartitioner(num_clients, column=user_column, seed=seed)
    if num_clients is None:
        raise ConfigError(f"Expected `num_clients` for the `{s}` partition, but got None.")
    if s.kind == "iid":
        return IIDPartitioner(num_clients, seed=seed)
    if s.kind == "dirichlet":
        return DirichletLabelPartitioner(num_clients, alpha=float(s.alpha or 0), seed=seed)
    if s.kind == "quantity":
        return QuantitySkewPartitioner(num_clients, beta=float(s.beta or 0), seed=seed)
    return ClusterPartitioner(num_clients, k=int(s.k or 0), alpha=float(s.alpha or 0), seed=seed, embed=embed,
                              embeddings=embeddings)


def partition_dataset(data: TextDataset, spec: str, *, num_clients: int | None, seed: int, user_column: str | None = None,
                      embed: EmbedFn | None = None, embeddings: np.ndarray | None = None) -> Partition:
    """Partition ``data`` as ``spec`` says (see the module docs)."""
    return make_partitioner(spec, num_clients=num_clients, seed=seed, user_column=user_column, embed=embed,
                            embeddings=embeddings).partition(data)
