"""Per-example gradient representations: dense, outer-product (ghost norm) and embedding rows.

* :class:`Dense` – the instantiated per-example gradients ``[B, *shape]``.
* :class:`Outer` – ``G_i = Σ_t u_it v_itᵀ`` (Goodfellow 2015 per-example gradient trick). Its
  squared norm is the *ghost norm* (Li et al. 2022, "Large language models can be strong
  differentially private learners") ``‖G_i‖² = Σ_{t,s} (u_it·u_is)(v_it·v_is)`` (memory
  ``O(B T²)``) or the norm of the instantiated ``G_i`` (memory ``O(B m n)``): the *mixed ghost
  norm* of Bu et al. 2023 ("Differentially Private Optimization on Large Model at Small Cost")
  takes the ghost norm iff ``2 T² < m n``.
* :class:`Rows` – ``G_i = Σ_t e_{id_it} g_itᵀ`` (embeddings). ``‖G_i‖² = Σ_{t,s} [id_it = id_is]
  g_it·g_is``, computed exactly in ``O(B T d)``: rows sharing an ``(example, id)`` key are summed
  (one sort of the keys) before squaring.

Contributions of one parameter (a layer called twice, a weight tied across modules) are summed, so
``‖Σ_j G^j‖² = Σ_j ‖G^j‖² + 2 Σ_{j<k} ⟨G^j, G^k⟩`` with the cross terms of :func:`dot`; e.g. for a
tied table ``E ∈ R^{V×d}`` used as embedding (ids ``id``, output grads ``g^emb``) and as output
layer ``logits = h Eᵀ`` (output grads ``g^lin``)::

    ⟨G^emb_i, G^lin_i⟩ = Σ_{t,s} g^lin_it[id_is] · (h_it · g^emb_is)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trustnlp.errors import PrivacyError

__all__ = ["Call", "Dense", "Outer", "PerExampleGrad", "Rows", "batched", "dot", "merge", "squared_norm"]


@dataclass
class Call:
    """One recorded forward call of a module: detached ``args`` / ``kwargs``, the tensor leaves of
    its output (``outputs``) and, after the backward, the summed loss's gradient with respect to
    each of them (``grads``; zeros for outputs the loss does not depend on)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[Tensor]
    grads: list[Tensor] = field(default_factory=list)

    @property
    def x(self) -> Tensor:
        """The first positional input."""
        return self.args[0]

    @property
    def g(self) -> Tensor:
        """The gradient of the first output."""
        return self.grads[0]


def batched(t: Tensor, batch_size: int, what: str) -> Tensor:
    """``t`` if its first dimension is the batch, else a :class:`PrivacyError`."""
    if t.dim() == 0 or t.shape[0] != batch_size:
        raise PrivacyError(
            f"Expected its {what} to have the batch ({batch_size} examples) as first dimension, but got shape "
            f"{tuple(t.shape)}; per-example gradients need a per-example batch dimension on every input."
        )
    return t


# -- representations --------------------------------------------------------------------------------
class PerExampleGrad:
    """Per-example gradients ``G_i`` (``i < B``) of one parameter of shape ``shape``."""

    shape: torch.Size

    def sq_norm(self) -> Tensor:
        """``‖G_i‖²`` as ``[B]``."""
        raise NotImplementedError

    def dense(self) -> Tensor:
        """``[B, *shape]``."""
        raise NotImplementedError

    def weighted_sum(self, c: Tensor) -> Tensor:
        """``Σ_i c_i G_i`` of shape ``shape``."""
        raise NotImplementedError

    def add_weighted_sum(self, c: Tensor, out: Tensor) -> None:
        """``out += Σ_i c_i G_i`` (in place where the kernels allow)."""
        out.add_(self.weighted_sum(c))


class Dense(PerExampleGrad):
    """Instantiated per-example gradients ``grad [B, *shape]``."""

    def __init__(self, grad: Tensor) -> None:
        self.grad, self.shape = grad, grad.shape[1:]

    def sq_norm(self) -> Tensor:
        return self.grad.flatten(1).pow(2).sum(1)

    def dense(self) -> Tensor:
        return self.grad

    def weighted_sum(self, c: Tensor) -> Tensor:
        return torch.tensordot(c.to(self.grad.dtype), self.grad, dims=1)


class Outer(PerExampleGrad):
    """``G_i = Σ_t u_it v_itᵀ`` (reshaped to ``shape``), from ``u [B, T, m]`` and ``v [B, T, n]``.

    ``ghost`` is Bu et al.'s choice: the ghost norm iff ``2 T² < m n``.
    """

    def __init__(self, u: Tensor, v: Tensor, shape: torch.Size) -> None:
        self.u, self.v, self.shape = u, v, torch.Size(shape)
        self._dense: Tensor | None = None

    @property
    def ghost(self) -> bool:
        return 2 * self.u.shape[1] ** 2 < self.u.shape[2] * self.v.shape[2]

    def sq_norm(self) -> Tensor:
        if self.ghost:
            return (self.u @ self.u.transpose(1, 2) * (self.v @ self.v.transpose(1, 2))).sum((1, 2))
        return self.dense().flatten(1).pow(2).sum(1)

    def dense(self) -> Tensor:
        if self._dense is None:
            self._dense = (self.u.transpose(1, 2) @ self.v).reshape(-1, *self.shape)
        return self._dense

    def weighted_sum(self, c: Tensor) -> Tensor:
        if self._dense is not None:
            return torch.tensordot(c.to(self._dense.dtype), self._dense, dims=1)
        cu = self.u * c.to(self.u.dtype)[:, None, None]
        return (cu.flatten(0, 1).T @ self.v.flatten(0, 1)).reshape(self.shape)

    def add_weighted_sum(self, c: Tensor, out: Tensor) -> None:
        if self._dense is not None or out.dtype != self.u.dtype or not out.is_contiguous():
            out.add_(self.weighted_sum(c))
            return
        cu = self.u * c.to(self.u.dtype)[:, None, None]
        out.view(cu.shape[2], -1).addmm_(cu.flatten(0, 1).T, self.v.flatten(0, 1))


class Rows(PerExampleGrad):
    """``G_i = Σ_t e_{ids_it} g_itᵀ`` for a table of shape ``[num_rows, d]``: ``ids [B, T]``, ``g [B, T, d]``;
    positions holding ``padding_idx`` contribute nothing."""

    def __init__(self, ids: Tensor, g: Tensor, num_rows: int, padding_idx: int | None = None) -> None:
        self.ids, self.g, self.padding_idx = ids, g, padding_idx
        self.shape = torch.Size((num_rows, g.shape[-1]))
        self._agg: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def gm(self) -> Tensor:
        """``g`` with padding positions zeroed."""
        if self.padding_idx is None:
            return self.g
        return self.g.masked_fill((self.ids == self.padding_idx)[..., None], 0.0)

    def _keys(self) -> Tensor:
        b = self.ids.shape[0]
        return (self.ids + torch.arange(b, device=self.ids.device)[:, None] * self.shape[0]).flatten()

    def aggregate(self) -> tuple[Tensor, Tensor, Tensor]:
        """Distinct keys ``example·V + id`` ``[U]``, the summed rows ``[U, d]`` and a ``[U]`` weight that
        is 0 for the padding row (applied to ``[U]``-sized results, not to the rows: cheaper)."""
        if self._agg is None:
            d = self.shape[1]
            uniq, inverse = torch.unique(self._keys(), return_inverse=True)
            rows = self.g.new_zeros(uniq.shape[0], d).index_add_(0, inverse, self.g.reshape(-1, d))
            keep = self.g.new_ones(uniq.shape[0])
            if self.padding_idx is not None:
                keep = keep.masked_fill(uniq % self.shape[0] == self.padding_idx, 0.0)
            self._agg = (uniq, rows, keep)
        return self._agg

    def sq_norm(self) -> Tensor:
        """``‖G_i‖² = Σ_u ‖Σ_{t: id_it = u} g_it‖²`` without a global sort of the batch's rows.

        Positions whose id occurs once in their example contribute ``‖g_it‖²`` directly; only the
        positions of ids repeated within an example (found by a per-example sort) are summed per
        ``(example, id)`` first. No ``[B, V, d]`` tensor, no pass over distinct rows of the batch.
        """
        b, t = self.ids.shape
        ids = self.ids.long()
        sq = torch.linalg.vector_norm(self.g, dim=2).square()  # [B, T]
        keep = None if self.padding_idx is None else ids != self.padding_idx
        s, perm = ids.sort(dim=1)
        eq = s[:, 1:] == s[:, :-1]
        if self.padding_idx is not None:
            eq &= s[:, 1:] != self.padding_idx
        if not bool(eq.any()):
            return (sq if keep is None else sq * keep).sum(1)
        member = torch.zeros_like(s, dtype=torch.bool)
        member[:, 1:] |= eq
        member[:, :-1] |= eq
        single = ~torch.zeros_like(member).scatter_(1, perm, member)  # original order
        if keep is not None:
            single &= keep
        total = (sq * single).sum(1)
        bi, ti = member.nonzero(as_tuple=True)  # example-major, ids ascending within an example
        keys = bi * self.shape[0] + s[bi, ti]
        uniq, inverse = torch.unique_consecutive(keys, return_inverse=True)
        rows = self.g.new_zeros(uniq.shape[0], self.shape[1]).index_add_(0, inverse, self.g[bi, perm[bi, ti]])
        return total.index_add_(0, uniq // self.shape[0], torch.linalg.vector_norm(rows, dim=1).square())

    def dense(self) -> Tensor:
        uniq, rows, keep = self.aggregate()
        b, (v, d) = self.ids.shape[0], self.shape
        return self.g.new_zeros(b * v, d).index_add_(0, uniq, rows * keep[:, None]).view(b, v, d)

    def weighted_sum(self, c: Tensor) -> Tensor:
        out = self.g.new_zeros(self.shape)
        self.add_weighted_sum(c, out)
        return out

    def add_weighted_sum(self, c: Tensor, out: Tensor) -> None:
        """``out += Σ_i c_i G_i``: every position's row scaled by its example's factor and added to
        the table (padding positions weighted 0), as an ordinary embedding backward would.
        (Never in place: autograd may hand the same gradient tensor to several layers, e.g. summed
        word and position embeddings.)"""
        b, t = self.ids.shape
        w = c.to(self.g.dtype)[:, None].expand(b, t)
        if self.padding_idx is not None:
            w = w * (self.ids != self.padding_idx)
        scaled = (self.g * w[..., None]).reshape(b * t, self.shape[1])
        out.index_add_(0, self.ids.reshape(-1).long(), scaled.to(out.dtype))


def _dot_outer_outer(a: Outer, b: Outer) -> Tensor:
    return (a.u @ b.u.transpose(1, 2) * (a.v @ b.v.transpose(1, 2))).sum((1, 2))


def _dot_outer_rows(a: Outer, r: Rows) -> Tensor:
    # <Σ_t u_t v_tᵀ, Σ_s e_{id_s} g_sᵀ> = Σ_{t,s} u_t[id_s] (v_t · g_s)
    b, t, s = a.u.shape[0], a.u.shape[1], r.ids.shape[1]
    picked = torch.gather(a.u, 2, r.ids[:, None, :].expand(b, t, s))
    return (picked * (a.v @ r.gm.transpose(1, 2))).sum((1, 2))


def _dot_dense_outer(d: Dense, a: Outer) -> Tensor:
    m, n = a.u.shape[2], a.v.shape[2]
    dv = d.grad.reshape(-1, m, n) @ a.v.transpose(1, 2)  # [B, m, T]
    return (dv * a.u.transpose(1, 2)).sum((1, 2))


def _dot_dense_rows(d: Dense, r: Rows) -> Tensor:
    rows = torch.arange(r.ids.shape[0], device=r.ids.device)[:, None]
    return (d.grad[rows, r.ids] * r.gm).sum((1, 2))


def dot(a: PerExampleGrad, b: PerExampleGrad) -> Tensor:
    """Per-example inner products ``⟨A_i, B_i⟩`` as ``[B]`` (both of the same parameter)."""
    if isinstance(b, Dense) and not isinstance(a, Dense):
        a, b = b, a
    if isinstance(a, Rows) and isinstance(b, Outer):
        a, b = b, a
    if isinstance(a, Dense) and isinstance(b, Dense):
        return (a.grad.flatten(1) * b.grad.flatten(1)).sum(1)
    if isinstance(a, Dense) and isinstance(b, Outer):
        return _dot_dense_outer(a, b)
    if isinstance(a, Dense) and isinstance(b, Rows):
        return _dot_dense_rows(a, b)
    if isinstance(a, Outer) and isinstance(b, Outer):
        return _dot_outer_outer(a, b)
    if isinstance(a, Outer) and isinstance(b, Rows):
        return _dot_outer_rows(a, b)
    return (a.dense().flatten(1) * b.dense().flatten(1)).sum(1)


def merge(grads: Sequence[PerExampleGrad]) -> list[PerExampleGrad]:
    """Combine contributions of one parameter: Dense ones summed, Outer ones (same ``m, n``) and
    Rows concatenated along the sequence, so at most one of each kind remains."""
    dense = [g for g in grads if isinstance(g, Dense)]
    rows = [g for g in grads if isinstance(g, Rows)]
    outers: dict[tuple[int, int], list[Outer]] = {}
    for g in grads:
        if isinstance(g, Outer):
            outers.setdefault((g.u.shape[2], g.v.shape[2]), []).append(g)
    out: list[PerExampleGrad] = []
    if dense:
        out.append(Dense(torch.stack([g.grad for g in dense]).sum(0)) if len(dense) > 1 else dense[0])
    for group in outers.values():
        if len(group) == 1:
            out.append(group[0])
        else:
            out.append(Outer(torch.cat([g.u for g in group], 1), torch.cat([g.v for g in group], 1), group[0].shape))
    if rows:
        if len(rows) == 1:
            out.append(rows[0])
        else:
            pad = rows[0].padding_idx if all(r.padding_idx == rows[0].padding_idx for r in rows) else None
            cat_g = torch.cat([r.g if pad is not None else r.gm for r in rows], 1)
            out.append(Rows(torch.cat([r.ids for r in rows], 1), cat_g, rows[0].shape[0], pad))
    return out


def squared_norm(grads: Sequence[PerExampleGrad]) -> Tensor:
    """``‖Σ_j G^j_i‖²`` of merged contributions: ``Σ_j ‖G^j‖² + 2 Σ_{j<k} ⟨G^j, G^k⟩``."""
    total = grads[0].sq_norm()
    for j, a in enumerate(grads):
        if j:
            total = total + a.sq_norm()
        for b in grads[j + 1 :]:
            total = total + 2 * dot(a, b)
    return total
