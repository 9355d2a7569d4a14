"""Differential privacy for text models: per-sample clipping, noise, Poisson sampling, accounting.

Submodules:

- :mod:`trustnlp.privacy.clipping` — vectorised per-sample clipping with a single backward
  (book-keeping), a registry of per-layer rules and a ``torch.func`` fallback;
- :mod:`trustnlp.privacy.noise` — Gaussian noise sources (seeded torch, or AES-CTR secure);
- :mod:`trustnlp.privacy.sampling` — Poisson and user-level Poisson sampling, a DP data loader;
- :mod:`trustnlp.privacy.accounting` — the privacy ledger, epsilon via ``dp-accounting`` (RDP,
  PLD), noise calibration to a target (epsilon, delta), the budget guard;
- :mod:`trustnlp.privacy.dp_step` — DP-SGD as a step of the one training loop;
- :mod:`trustnlp.privacy.engine` — an Opacus-shaped ``PrivacyEngine`` (``make_private``,
  ``make_private_with_epsilon``), ``DPOptimizer`` and ``BatchMemoryManager`` for plain PyTorch loops.

Example:
    >>> from trustnlp.privacy import PrivacyEngine  # doctest: +SKIP
    >>> engine = PrivacyEngine(accountant="rdp")  # doctest: +SKIP
    >>> model, optimizer, loader = engine.make_private_with_epsilon(  # doctest: +SKIP
    ...     module=model, optimizer=optimizer, data_loader=loader, target_epsilon=3.0, epochs=5, max_grad_norm=1.0)
"""

from __future__ import annotations

__all__: list[str] = ["BatchMemoryManager", "DPOptimizer", "PrivacyEngine"]  # noqa: F822 (lazy)


def __getattr__(name: str) -> object:
    """Lazy exports: importing the engine pulls in dp-accounting (~2 s)."""
    if name in __all__:
        from trustnlp.privacy import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
