"""Vectorised per-sample gradient clipping with a single backward (book-keeping) for DP-SGD.

:class:`PerSampleClipper` hooks a model; after a forward on a batch, ``clipper.backward(losses)``
(``losses``: per-example, ``reduction="none"``) writes ``Σ_i clip(g_i)`` into every trainable
parameter's ``p.grad`` without ever forming the unclipped gradient, using per-layer-type rules
(:data:`RULES`: Linear, GPT-2 Conv1D, Conv1d, Embedding, LayerNorm, RMSNorm; ghost norm or
instantiation, whichever is cheaper) and a ``torch.func`` fallback for any other layer (e.g.
``nn.LSTM``); :meth:`PerSampleClipper.rules_report` says which layer used which.

References: Goodfellow 2015 (per-example gradient trick); Li et al. 2022 (ghost clipping); Bu et al.
2023 (book-keeping, mixed ghost norm); Bu et al. 2022 (automatic clipping); He et al. 2022
(per-layer / group-wise clipping).
"""

from __future__ import annotations

from trustnlp.privacy.clipping.clipper import CLIPPING_MODES, MODES, ClipStats, PerSampleClipper
from trustnlp.privacy.clipping.fallback import VmapFallback
from trustnlp.privacy.clipping.grads import Call, Dense, Outer, PerExampleGrad, Rows
from trustnlp.privacy.clipping.rules import RULES, Rule, find_rule, register_rule

__all__ = [
    "CLIPPING_MODES",
    "MODES",
    "RULES",
    "Call",
    "ClipStats",
    "Dense",
    "Outer",
    "PerExampleGrad",
    "PerSampleClipper",
    "Rows",
    "Rule",
    "VmapFallback",
    "find_rule",
    "register_rule",
]
