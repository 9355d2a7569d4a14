"""Differential privacy for text models: per-sample clipping, noise, Poisson sampling, accounting.

Submodules:

- :mod:`trustnlp.privacy.clipping` — vectorised per-sample clipping with a single backward
  (book-keeping), a registry of per-layer rules and a ``torch.func`` fallback;
- :mod:`trustnlp.privacy.noise` — Gaussian noise sources (seeded torch, or AES-CTR secure);
- :mod:`trustnlp.privacy.sampling` — Poisson and user-level Poisson sampling, a DP data loader;
- :mod:`trustnlp.privacy.accounting` — the privacy ledger, epsilon via ``dp-accounting`` (RDP,
  PLD), noise calibration to a target (epsilon, delta), the budget guard;
- :mod:`trustnlp.privacy.dp_step` — DP-SGD as a step of the one training loop.
"""

from __future__ import annotations

__all__: list[str] = []
