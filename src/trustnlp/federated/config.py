"""The federated run configuration (pydantic, shared by the API and ``trustnlp federate``).

Defaults live here once, including each algorithm's defaults (:data:`ALGORITHM_DEFAULTS`);
algorithm options left at ``None`` take them, and an option the chosen algorithm does not use is
refused (``mu`` with ``fedavg``, ...). See ``docs/federated.md``.

Example:
    >>> cfg = FederatedConfig(algorithm="fedadam", partition="dirichlet:0.1", rounds=5)
    >>> cfg.algorithm_options()
    {'server_lr': 0.01, 'beta1': 0.9, 'beta2': 0.99, 'tau': 0.001}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trustnlp.config import DataConfig
from trustnlp.errors import ConfigError

__all__ = ["FederatedConfig", "ALGORITHMS", "ALGORITHM_DEFAULTS", "LOCAL_OPTIMIZERS"]

ALGORITHMS = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad")
LOCAL_OPTIMIZERS = ("sgd", "sgdm", "adam", "adamw")

#: Each algorithm's options and their defaults.
#: - FedAvg (McMahan et al. 2017): server_lr 1 (the new model is the weighted mean of the clients').
#: - FedAvgM (Hsu et al. 2019): server momentum 0.9 at server_lr 1 (Reddi et al. 2021's FedAvgM baseline).
#: - FedProx (Li et al. 2020): mu 0.01, from their grid {0.001, 0.01, 0.1, 1}.
#: - FedAdam / FedYogi (Reddi et al. 2021): beta1 0.9, beta2 0.99, tau 1e-3, server_lr 1e-2 (their
#:   grids' typical optimum; Flower's FedYogi defaults are the same).
#: - FedAdagrad (Reddi et al. 2021): beta1 0 (plain Adagrad), tau 1e-3, server_lr 0.1.
ALGORITHM_DEFAULTS: dict[str, dict[str, float]] = {
    "fedavg": {"server_lr": 1.0},
    "fedavgm": {"server_lr": 1.0, "server_momentum": 0.9},
    "fedprox": {"server_lr": 1.0, "mu": 0.01},
    "fedadam": {"server_lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedadagrad": {"server_lr": 1e-1, "beta1": 0.0, "tau": 1e-3},
}
_ALGORITHM_OPTIONS = ("server_lr", "server_momentum", "mu", "beta1", "beta2", "tau")


def _checked_spec(value: str, parse: Any, field: str) -> str:
    """``value`` normalised, after ``parse`` accepted it (its ``ConfigError`` becomes pydantic's ``ValueError``,
    without the "Expected `field` to be" prefix that pydantic's message already implies)."""
    try:
        parse(value)
    except ConfigError as e:
        raise ValueError(str(e).removeprefix(f"Expected `{field}` to be ").split(", but got")[0]) from None
    return value.strip().lower()


class FederatedConfig(DataConfig):
    """Everything one federated run needs.

    Attributes:
        task: ``classify`` (intent), ``tag`` (joint intent + slot tagging), ``lm`` (next-word LM).
        model: architecture (``None`` = ``bag`` for ``classify``, ``cnn`` for ``tag`` (a ``joint`` tagger
            over a CNN encoder), ``lm`` for ``lm``); ``model_options`` go to ``build_model``.
        tokenizer / max_length: as in ``TrainConfig``.
        seed: seeds the partition, the selection, availability and every client's local shuffling.
        algorithm: ``fedavg | fedavgm | fedprox | fedadam | fedyogi | fedadagrad``.
        server_lr / server_momentum / mu / beta1 / beta2 / tau: algorithm options (``None`` = the
            algorithm's default in :data:`ALGORITHM_DEFAULTS`).
        partition: ``iid | dirichlet:ALPHA | quantity:BETA | user | cluster:K[:ALPHA]`` (see
            :mod:`trustnlp.data.partition`).
        num_clients: clients in the population (``None`` = 100, or one client per user for ``user``).
        user_column: the user column for ``user`` (``None`` = ``user_id`` or ``speaker``).
        clients_per_round: clients selected (uniformly, without replacement) in each round.
        availability: probability that a client is available in a round (independently, seeded);
            selection draws from the available clients only.
        rounds: communication rounds.
        local_epochs / local_steps: local training per round: ``local_epochs`` passes over the
            client's data, or exactly ``local_steps`` optimiser steps when given.
        batch_size: local (logical) batch size.
        lr: local learning rate (``None`` = the architecture's default for the local optimiser,
            ``trustnlp.federated.client.default_local_lr``: SGD 10 for ``bag``, 0.3 for ``cnn``, else
            100 x the Adam default; a tenth of that with momentum; ``train.default_lr`` for Adam(W)).
        local_optimizer: ``sgd`` (plain SGD, as in FedAvg), ``sgdm`` (momentum 0.9), ``adam``,
            ``adamw``; its state starts afresh every round (clients keep no state).
        weight_decay: local weight decay.
        holdout: fraction of each client's examples held out for federated evaluation
            (``floor(holdout * n_c)``; clients with fewer examples hold none out).
        eval_every: evaluate (clients' held-out data and the central test set) every this many
            rounds, and after the last (0 = after the last only).
        vectorize: ``auto`` (train a round's clients batched with ``torch.func.vmap`` when the model
            and optimiser allow it and a probe says it is faster), ``on`` or ``off``.
        device / threads: where to run (see ``trustnlp.devices``) and torch threads.
        selection: who is picked each round: ``uniform | activity[:BETA] | power-of-choice[:D] |
            availability[:HOURS] | oort`` (:mod:`trustnlp.federated.selection`).
        aggregation: ``sample`` (example-weighted mean of the selected updates) or ``horvitz-thompson``
            (weights ``n_k / (N pi_k)``, unbiased for full participation; needs a selector with known ``pi_k``).
        rounds_per_day: rounds in a simulated day (the ``availability`` selector's clock).
        setting: ``static`` (all data from round 1) or ``continual`` (:mod:`trustnlp.federated.settings`):
            ``periods`` time periods (rounds spread evenly over them), examples arrive by ``arrival``
            (``timestamp``: the data's timestamps (tinyshakespeare: the line order); ``poisson``: a
            Poisson process per device; ``auto``: timestamps when the data has them), a device keeps an
            example ``retention`` periods and at most ``storage`` examples (``deletion`` ``fifo`` or
            ``random``), with an optional ``replay`` buffer of deleted examples.
        client_dp: client-level DP (DP-FedAvg): each client's delta clipped to ``clip_norm`` (adaptive:
            ``adaptive_clip`` toward the ``target_quantile`` of the norms), Gaussian noise on the sum,
            calibrated to ``epsilon`` (client-level, at ``delta``; default below 1/K) or given as
            ``noise_multiplier``; accounted with dp-accounting (:mod:`trustnlp.federated.client_dp`).
        secure_aggregation: the server learns only the sum (:mod:`trustnlp.federated.secagg`): threshold
            ``ceil(secagg_threshold x senders)``, ``fractional_bits`` of fixed point, ``secagg_dropout``
            of the senders vanish after masking.
        robust: ``mean | median | trimmed-mean:BETA | krum:F | multi-krum:F:M`` (:mod:`trustnlp.federated.robust`).
        max_update_norm: server-side validation bound on a delta's norm (client-side clip under secure
            aggregation); NaN/Inf and misshapen updates are always rejected.
        faulty_fraction / fault: this fraction of each round's clients report ``nan | scale:K | signflip |
            dropout`` instead of their update.
        deadline: simulated time limit per round (a device needs ``steps / speed`` units, speeds
            LogNormal(0, 0.5)); later updates are dropped.
        See :mod:`trustnlp.federated.server` for what may be combined.
    """

    task: Literal["classify", "tag", "lm"] = "classify"
    model: str | None = None
    model_options: dict[str, Any] = Field(default_factory=dict)
    tokenizer: Literal["wordpiece", "word"] = "wordpiece"
    max_length: int | None = Field(None, ge=2, le=512)
    seed: int = 0
    algorithm: Literal["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad"] = "fedavg"
    server_lr: float | None = Field(None, gt=0.0)
    server_momentum: float | None = Field(None, ge=0.0, lt=1.0)
    mu: float | None = Field(None, ge=0.0)
    beta1: float | None = Field(None, ge=0.0, lt=1.0)
    beta2: float | None = Field(None, ge=0.0, lt=1.0)
    tau: float | None = Field(None, gt=0.0)
    partition: str = "iid"
    num_clients: int | None = Field(None, ge=1)
    user_column: str | None = None
    clients_per_round: int = Field(10, ge=1)
    availability: float = Field(1.0, gt=0.0, le=1.0)
    rounds: int = Field(20, ge=1)
    local_epochs: int = Field(1, ge=1)
    local_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float | None = Field(None, gt=0.0)
    local_optimizer: Literal["sgd", "sgdm", "adam", "adamw"] = "sgd"
    weight_decay: float = Field(0.0, ge=0.0)
    holdout: float = Field(0.2, ge=0.0, lt=1.0)
    eval_every: int = Field(1, ge=0)
    vectorize: Literal["auto", "on", "off"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    threads: int | None = Field(None, ge=1)
    selection: str = "uniform"
    aggregation: Literal["sample", "horvitz-thompson"] = "sample"
    rounds_per_day: int = Field(24, ge=1)
    setting: Literal["static", "continual"] = "static"
    periods: int = Field(10, ge=1)
    arrival: Literal["auto", "timestamp", "poisson"] = "auto"
    retention: int | None = Field(None, ge=1)
    storage: int | None = Field(None, ge=1)
    deletion: Literal["fifo", "random"] = "fifo"
    replay: int = Field(0, ge=0)
    client_dp: bool = False
    epsilon: float | None = Field(None, gt=0.0)
    delta: float | None = Field(None, gt=0.0, lt=1.0)
    noise_multiplier: float | None = Field(None, ge=0.0)
    clip_norm: float = Field(1.0, gt=0.0)
    adaptive_clip: bool = False
    target_quantile: float = Field(0.5, gt=0.0, lt=1.0)
    accountant: Literal["rdp", "pld"] = "rdp"
    secure_aggregation: bool = False
    secagg_threshold: float = Field(0.6, gt=0.0, le=1.0)
    secagg_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    fractional_bits: int = Field(24, ge=0, le=40)
    robust: str = "mean"
    max_update_norm: float | None = Field(None, gt=0.0)
    faulty_fraction: float = Field(0.0, ge=0.0, le=1.0)
    fault: str = "nan"
    deadline: float | None = Field(None, gt=0.0)

    @field_validator("robust")
    @classmethod
    def _robust_spec(cls, v: str) -> str:
        from trustnlp.federated.robust import parse_robust_spec

        return _checked_spec(v, parse_robust_spec, "robust")

    @field_validator("fault")
    @classmethod
    def _fault_spec(cls, v: str) -> str:
        from trustnlp.federated.robust import parse_fault_spec

        return _checked_spec(v, parse_fault_spec, "fault")

    @model_validator(mode="after")
    def _sound_combinations(self) -> FederatedConfig:
        """Refuse the combinations that are not sound (see trustnlp.federated.server)."""
        if self.secure_aggregation and self.robust != "mean":
            raise ValueError(f"robust aggregation ({self.robust!r}) cannot run on top of secure aggregation: the server "
                             "only learns the sum, never an individual update (each client validates and clips its own "
                             "update before masking instead; use robust: mean)")
        if not self.client_dp:
            given = [k for k in ("epsilon", "delta", "noise_multiplier") if getattr(self, k) is not None]
            given += ["adaptive_clip"] if self.adaptive_clip else []
            if given:
                raise ValueError(f"{given} apply to client-level DP only (client_dp: true)")
            return self
        from trustnlp.federated.client_dp import check_selection_for_client_dp

        try:
            check_selection_for_client_dp(self.selection)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if self.selection.startswith("availability"):
            raise ValueError("client-level DP with availability-aware selection is not supported: the sampling rate "
                             "then depends on who is online each round; use uniform or activity:0")
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("client-level DP needs exactly one of epsilon (a target) or noise_multiplier")
        if self.robust != "mean":
            raise ValueError(f"robust aggregation ({self.robust!r}) with client-level DP is refused: DP-FedAvg's noise is "
                             "calibrated to the sensitivity of the clipped sum, which a robust rule changes")
        if self.aggregation != "sample":
            raise ValueError("client-level DP uses DP-FedAvg's fixed-denominator mean; aggregation must be 'sample'")
        if self.setting != "static":
            raise ValueError("client-level DP needs the static setting: in the continual one whether a device holds "
                             "data (and so whether it can be sampled) depends on its private data")
        if self.accountant == "pld" and not self.selection.startswith("activity"):
            raise ValueError("uniform (fixed-size) client sampling is accounted with the RDP accountant only "
                             "(dp-accounting has no without-replacement PLD event); use accountant: rdp or "
                             "selection: activity:0 (Poisson)")
        return self

    @field_validator("selection")
    @classmethod
    def _selection_spec(cls, v: str) -> str:
        from trustnlp.federated.selection import parse_selection_spec

        return _checked_spec(v, parse_selection_spec, "selection")

    @model_validator(mode="after")
    def _selection_and_setting(self) -> FederatedConfig:
        from trustnlp.federated.selection import parse_selection_spec

        kind, _ = parse_selection_spec(self.selection)
        if self.aggregation == "horvitz-thompson" and kind in ("power-of-choice", "oort"):
            raise ValueError(f"aggregation 'horvitz-thompson' needs known inclusion probabilities; selection {kind!r} "
                             "has none (use uniform, activity or availability)")
        if self.setting == "static":
            given = [k for k in ("retention", "storage") if getattr(self, k) is not None] + (["replay"] if self.replay else [])
            if given:
                raise ValueError(f"{given} apply to the continual setting only (setting: continual)")
        else:
            if self.rounds < self.periods:
                raise ValueError(f"the continual setting needs rounds >= periods ({self.rounds} < {self.periods})")
            if self.storage is not None and self.replay >= self.storage:
                raise ValueError(f"replay ({self.replay}) must be smaller than storage ({self.storage})")
        return self

    @field_validator("partition")
    @classmethod
    def _partition_spec(cls, v: str) -> str:
        from trustnlp.data.partition import parse_partition_spec

        return _checked_spec(v, parse_partition_spec, "partition")

    @model_validator(mode="after")
    def _options_for_algorithm(self) -> FederatedConfig:
        used = ALGORITHM_DEFAULTS[self.algorithm]
        given = [k for k in _ALGORITHM_OPTIONS if getattr(self, k) is not None and k not in used]
        if given:
            raise ValueError(f"{given} do not apply to algorithm {self.algorithm!r} (its options are {sorted(used)})")
        return self

    def algorithm_options(self) -> dict[str, float]:
        """The algorithm's options: the given ones, the defaults for the rest."""
        return {k: (float(getattr(self, k)) if getattr(self, k) is not None else v)
                for k, v in ALGORITHM_DEFAULTS[self.algorithm].items()}

    def resolved_model(self) -> str:
        """The architecture name (``model``, or the task's default)."""
        return self.model or {"classify": "bag", "tag": "cnn", "lm": "lm"}[self.task]
