"""Federated learning: an in-process simulator, strategies, server optimisers, client selection,
federated evaluation and the federated study (``run_federated``).

See ``docs/federated.md`` for the algorithms (with formulas and references), partitions and defaults.

Example:
    >>> from trustnlp.federated import FederatedConfig, make_strategy
    >>> make_strategy("fedyogi").options["tau"]
    0.001
"""

from __future__ import annotations

from trustnlp.federated import server_opt
from trustnlp.federated.client import Client, LocalTraining, client_seed, local_update
from trustnlp.federated.config import ALGORITHM_DEFAULTS, ALGORITHMS, FederatedConfig
from trustnlp.federated.engine import SimulationResult, simulate
from trustnlp.federated.evaluation import ClientEvaluation, evaluate_clients
from trustnlp.federated.selection import (
    ActivitySelector,
    AvailabilitySelector,
    OortSelector,
    PowerOfChoiceSelector,
    Selection,
    SelectionContext,
    Selector,
    UniformSelector,
    available_clients,
    inclusion_probabilities,
    make_selector,
)
from trustnlp.federated.strategy import (
    ClientUpdate,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    FitInstruction,
    ServerState,
    Strategy,
    make_strategy,
    weighted_mean,
)
from trustnlp.federated.study import make_clients, run_federated
from trustnlp.federated.vectorized import train_vectorized, vectorization_blocker

__all__ = [
    "ActivitySelector",
    "AvailabilitySelector",
    "OortSelector",
    "PowerOfChoiceSelector",
    "Selection",
    "SelectionContext",
    "inclusion_probabilities",
    "make_selector",
    "ALGORITHMS",
    "ALGORITHM_DEFAULTS",
    "Client",
    "ClientEvaluation",
    "ClientUpdate",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "FederatedConfig",
    "FitInstruction",
    "LocalTraining",
    "Selector",
    "ServerState",
    "SimulationResult",
    "Strategy",
    "UniformSelector",
    "available_clients",
    "client_seed",
    "evaluate_clients",
    "local_update",
    "make_clients",
    "make_strategy",
    "run_federated",
    "server_opt",
    "simulate",
    "train_vectorized",
    "vectorization_blocker",
    "weighted_mean",
]
