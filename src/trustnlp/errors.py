"""Exceptions raised by trustnlp.

Every error trustnlp raises for bad input is a :class:`TrustNLPError` whose message names the
file, field or value at fault and what was expected, in the house phrasing::

    Expected `max_grad_norm` to be > 0, but got -1.0.
"""

from __future__ import annotations

__all__ = [
    "TrustNLPError",
    "DataError",
    "ConfigError",
    "MissingDependencyError",
    "PrivacyError",
    "PrivacyBudgetExceeded",
    "expected",
]


class TrustNLPError(Exception):
    """Base class of every error trustnlp raises on purpose."""


class DataError(TrustNLPError, ValueError):
    """A data file or data set is missing, malformed or inconsistent."""


class ConfigError(TrustNLPError, ValueError):
    """A configuration value is invalid."""


class PrivacyError(TrustNLPError, ValueError):
    """A request would break a privacy guarantee (e.g. a vocabulary built from private data)."""


class PrivacyBudgetExceeded(PrivacyError):
    """A private step would bring epsilon above the run's budget; it was refused before any update."""


class MissingDependencyError(TrustNLPError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str | None = None, purpose: str = "") -> None:
        hint = f"pip install 'trustnlp[{extra}]'" if extra else f"pip install {package}"
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"The optional dependency `{package}` is not installed{what}. Install it with: {hint}")


def expected(name: str, requirement: str, got: object) -> str:
    """Format the house error phrasing: ``Expected `name` to be requirement, but got got.``"""
    return f"Expected `{name}` to be {requirement}, but got {got!r}."
