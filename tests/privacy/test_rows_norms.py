"""Embedding per-example gradients (``Rows``): the sort-free norm and the direct clipped sum equal
the dense per-example gradients ``[B, V, d]`` built independently here (float64, rtol 1e-10)."""

from __future__ import annotations

import pytest
import torch

from trustnlp.privacy.clipping.grads import Rows


def _dense(ids: torch.Tensor, g: torch.Tensor, v: int, pad: int | None) -> torch.Tensor:
    b, t = ids.shape
    out = torch.zeros(b, v, g.shape[-1], dtype=g.dtype)
    for i in range(b):
        for s in range(t):
            if pad is None or int(ids[i, s]) != pad:
                out[i, int(ids[i, s])] += g[i, s]
    return out


CASES = {
    "no repeats": (torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), None),
    "repeats in some examples": (torch.tensor([[1, 2, 1, 4], [5, 6, 7, 8], [3, 3, 3, 9]]), None),
    "padding repeated, ids distinct": (torch.tensor([[1, 2, 0, 0], [4, 0, 0, 0]]), 0),
    "padding and repeats": (torch.tensor([[1, 1, 0, 0], [2, 3, 2, 0], [0, 0, 0, 0]]), 0),
    "int32 ids": (torch.tensor([[1, 2, 1, 9], [9, 9, 8, 7]], dtype=torch.int32), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rows_norm_and_weighted_sum_match_dense(name: str) -> None:
    ids, pad = CASES[name]
    g = torch.randn(*ids.shape, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v = 10
    dense = _dense(ids, g, v, pad)
    rows = Rows(ids, g, v, pad)
    ref_sq = dense.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(rows.sq_norm(), ref_sq, rtol=1e-10, atol=0)
    c = torch.rand(ids.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(rows.weighted_sum(c), (c[:, None, None] * dense).sum(0), rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(rows.dense(), dense, rtol=1e-10, atol=0)


def test_rows_norm_on_random_batches_with_many_repeats() -> None:
    gen = torch.Generator().manual_seed(3)
    for v in (3, 50):  # tiny vocabulary: nearly every id repeats; larger: few repeats
        ids = torch.randint(0, v, (16, 12), generator=gen)
        g = torch.randn(16, 12, 4, generator=gen, dtype=torch.float64)
        dense = _dense(ids, g, v, 0)
        torch.testing.assert_close(Rows(ids, g, v, 0).sq_norm(), dense.flatten(1).pow(2).sum(1), rtol=1e-10, atol=0)
