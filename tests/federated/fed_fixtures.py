"""Tiny synthetic data and models shared by the federated tests (not a test module)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from trustnlp.data.partition import Partition, iid_partition
from trustnlp.federated import Client, FederatedConfig
from trustnlp.federated.study import make_clients
from trustnlp.models import build_model
from trustnlp.tasks import EncodedData

VOCAB, LABELS, MAX_LEN = 40, 3, 7


def synthetic(n: int, *, seed: int = 0, max_len: int = MAX_LEN, vocab: int = VOCAB, labels: int = LABELS) -> EncodedData:
    """Random token ids (pad 0, right-padded, lengths 2..max_len); label = first token mod ``labels``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, max_len + 1, (n,), generator=g)
    mask = (torch.arange(max_len) < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (n, max_len), generator=g) * mask
    return EncodedData(ids, mask, ids[:, 0] % labels)


def bag(*, seed: int = 0, dropout: float = 0.0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("bag", vocab_size=VOCAB, num_labels=LABELS, dim=8, dropout=dropout).to(dtype)


def population(data: EncodedData, partition: Partition | None = None, *, num_clients: int = 6, holdout: float = 0.0,
               seed: int = 0) -> list[Client]:
    part = partition or iid_partition(len(data), num_clients, seed=seed)
    return make_clients(data, part, holdout=holdout, seed=seed)


def config(**kw: object) -> FederatedConfig:
    base: dict[str, object] = {"rounds": 2, "clients_per_round": 3, "batch_size": 4, "lr": 0.5, "eval_every": 0,
                               "vectorize": "off", "device": "cpu", "seed": 0}
    base.update(kw)
    return FederatedConfig(**base)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block (the test machine's 2 cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
