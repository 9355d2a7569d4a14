"""trustnlp: a toolkit and command line for trustworthy NLP.

Private training (DP-SGD), privacy audits, federated learning and fairness for text models,
with one training loop, one results schema and one report.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
