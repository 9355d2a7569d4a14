"""Group clipping (user-level DP): norms of per-group *summed* gradients from per-example representations.

With user-level DP (McMahan et al. 2018, "Learning differentially private recurrent language
models") the privacy unit is a group ``k`` of examples (a user's). What gets clipped is the group's
summed gradient

    G_k = Σ_{i∈k} G_i,        c_k = min(1, C / (‖G_k‖ + 1e-6)),

and the clipped sum is ``Σ_k c_k G_k = Σ_i c_{k(i)} G_i``: formed from the ordinary per-example
representations with each example weighted by its group's factor, so only the *norms* need the
grouping. They come from regrouped representations (:func:`regroup`), still without per-example
dense gradients where the per-example ones avoided them:

* :class:`~trustnlp.privacy.clipping.grads.Dense` ``[B, *shape]``: ``index_add`` into ``[K, *shape]``.
* :class:`~trustnlp.privacy.clipping.grads.Outer` ``G_i = Σ_t u_it v_itᵀ``: ``G_k`` is an ``Outer``
  over the concatenation of its examples' sequences, ``u'_k = [u_{i_1}; u_{i_2}; …]`` (likewise
  ``v'``), padded with zero rows to the largest group (``M`` examples, ``M·T`` positions; zero rows
  add nothing). Its norm is the ghost norm or the instantiated one by the same cost rule, with
  ``T' = M·T``.
* :class:`~trustnlp.privacy.clipping.grads.Rows` (embeddings): the same concatenation of ids and
  row gradients; padding positions carry a zero gradient.

Cross terms of a parameter's several contributions (tied weights) are then those of the regrouped
representations, so :func:`~trustnlp.privacy.clipping.grads.squared_norm` applies unchanged.

Cost: padding to the largest group makes the regrouped Outer / Rows ``K·M/B`` times the per-example
size (``K`` groups, ``B`` examples); capping the examples per user bounds ``M``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trustnlp.errors import ConfigError, expected
from trustnlp.privacy.clipping.grads import Dense, Outer, PerExampleGrad, Rows

__all__ = ["GroupLayout", "regroup"]


@dataclass(frozen=True)
class GroupLayout:
    """Where each example goes when its group's examples are laid end to end.

    Attributes:
        groups: ``[B]`` group index of each example, in ``0 .. K-1``.
        num_groups: ``K = max(groups) + 1`` (a group without examples has norm 0).
        rank: ``[B]`` position of each example among its group's examples (in batch order).
        max_size: ``M``, the size of the largest group.
    """

    groups: Tensor
    num_groups: int
    rank: Tensor
    max_size: int

    @classmethod
    def of(cls, groups: object, batch_size: int) -> GroupLayout:
        """Validate ``groups`` (a 1-D integer tensor of ``batch_size`` indices >= 0) and lay it out."""
        if (
            not isinstance(groups, Tensor)
            or groups.dim() != 1
            or groups.dtype.is_floating_point
            or groups.dtype.is_complex
            or groups.dtype == torch.bool
            or groups.shape[0] != batch_size
            or (groups.numel() and int(groups.min()) < 0)
        ):
            got = (f"a {groups.dtype} tensor of shape {tuple(groups.shape)}" if isinstance(groups, Tensor)
                   else type(groups).__name__)
            raise ConfigError(expected("groups", f"a 1-D integer tensor of {batch_size} group indices >= 0 "
                                       "(one per example)", got))
        groups = groups.long()
        if not groups.numel():
            return cls(groups, 0, groups, 0)
        k = int(groups.max()) + 1
        counts = torch.bincount(groups, minlength=k)
        order = torch.argsort(groups, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(groups)
        rank[order] = torch.arange(groups.numel(), device=groups.device) - starts[groups[order]]
        return cls(groups, k, rank, int(counts.max()))

    def pad(self, x: Tensor, fill: int | float = 0) -> Tensor:
        """``x [B, T, ...] -> [K, M·T, ...]``: each group's examples end to end, then ``fill``."""
        t, rest = x.shape[1], x.shape[2:]
        out = x.new_full((self.num_groups, self.max_size, t, *rest), fill)
        out[self.groups.to(x.device), self.rank.to(x.device)] = x
        return out.reshape(self.num_groups, self.max_size * t, *rest)


def regroup(rep: PerExampleGrad, layout: GroupLayout) -> PerExampleGrad:
    """The per-group summed gradients ``G_k = Σ_{i∈k} G_i`` of one per-example representation."""
    if isinstance(rep, Outer):
        return Outer(layout.pad(rep.u), layout.pad(rep.v), rep.shape)
    if isinstance(rep, Rows):
        fill = rep.padding_idx if rep.padding_idx is not None else 0
        return Rows(layout.pad(rep.ids, fill), layout.pad(rep.gm), rep.shape[0], rep.padding_idx)
    grad = rep.dense()
    out = grad.new_zeros(layout.num_groups, *grad.shape[1:])
    return Dense(out.index_add_(0, layout.groups.to(grad.device), grad))
