"""Run configurations: pydantic models shared by the CLI and the Python API.

Defaults live here, once. Every run records its configuration (``config.model_dump()``) in its
results file. Configs load from and dump to YAML or JSON.

Example:
    >>> cfg = TrainConfig(model="cnn", epochs=3)
    >>> cfg.batch_size
    64
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trustnlp.errors import ConfigError

__all__ = ["TrainConfig", "DataConfig", "load_config", "read_config_file", "format_validation_error"]

Task = Literal["classify", "tag", "lm"]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DATA_ALIASES = {"builtin": "assistant", "shakespeare": "tinyshakespeare"}


class DataConfig(_Base):
    """Which data set to load and how to split it.

    Attributes:
        data: a named data set (``assistant``, ``clinc150``, ``snips``, ``tinyshakespeare``), a
            CSV/JSONL file or a folder of split files, or ``hf:NAME`` for a Hugging Face data set.
        data_dir: where named data sets are looked up first (then ``$TRUSTNLP_DATA_DIR``, then
            ``../shared/data``).
        include_oos: CLINC150 only: add the out-of-scope class.
        text_column / label_column: column names for CSV/JSONL/HF data.
        validation / test: fractions for data without predefined splits.
        corpus_size / corpus_users: size of the generated assistant corpus (utterances, users);
            ``None`` = the generator's defaults.
    """

    data: str = "assistant"
    data_dir: str | None = None
    include_oos: bool = False
    text_column: str = "text"
    label_column: str = "label"
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    corpus_size: int | None = Field(None, ge=100)
    corpus_users: int | None = Field(None, ge=1)

    @field_validator("data")
    @classmethod
    def _data_alias(cls, v: str) -> str:
        """``builtin`` is the built-in ``assistant`` corpus; ``shakespeare`` is ``tinyshakespeare``."""
        return DATA_ALIASES.get(v.strip().lower(), v) if isinstance(v, str) else v


class TrainConfig(DataConfig):
    """Everything one training run needs.

    Attributes:
        task: ``classify`` (intent), ``tag`` (joint intent + slot tagging), ``lm`` (causal LM).
        model: an architecture name (see ``trustnlp.models.MODELS``) or a saved model directory.
        tokenizer: ``wordpiece`` (the MiniLM WordPiece vocabulary, public; the default) or ``word``
            (a word-level vocabulary; for the built-in corpus it is the generator's public lexicon,
            for other data it is built from the training split, which is refused under DP).
        epochs / max_steps: train for ``epochs`` passes, or stop after ``max_steps`` optimiser
            steps when given.
        batch_size: the logical batch size; ``physical_batch_size`` bounds what one forward/backward
            sees (``None`` = the memory guard picks the largest that fits, up to ``batch_size``).
        lr: learning rate (``None`` = the architecture's default: 5e-3 for ``bag``, 1e-3 for the
            other small models, 5e-5 for pretrained encoders with trainable layers, 5e-4 for LoRA
            adapters, 1e-3 for frozen ones; see ``trustnlp.train.default_lr``).
        optimizer / weight_decay / scheduler / warmup_ratio: the optimiser and its schedule.
        max_length: maximum tokens per input (``None`` = the longest training input, capped at
            128). Longer inputs are truncated and counted in the results, never silently.
        eval_every: evaluate on the validation split every this many epochs (0 = only at the end).
        checkpoint_every: steps between checkpoints (0 = only at the end of each epoch).
        model_options: architecture options passed to ``build_model`` (e.g. ``{"trainable":
            "last-k", "k": 2}`` or ``{"trainable": "lora", "lora_r": 8}`` for MiniLM).
        device: ``auto`` (CUDA if available, else Apple MPS, else CPU), ``cpu``, ``cuda``,
            ``cuda:N`` or ``mps``; checked when the run starts (see ``trustnlp.devices``).
        precision: ``32`` (float32), ``bf16`` (bfloat16 autocast; CPU or CUDA) or ``16`` / ``fp16``
            (float16 autocast with loss scaling; CUDA, not with DP). Parameters, gradients and the
            optimiser state stay float32 (mixed precision).
        dp: train with DP-SGD (example-level): Poisson sampling with rate ``batch_size / n``,
            per-example clipping to ``max_grad_norm`` (``clipping`` mode), Gaussian noise of std
            ``noise_multiplier * sensitivity`` once per logical step, accounting by ``accountant``.
        epsilon / delta: the target privacy budget; the noise multiplier is calibrated to it for
            the planned steps unless ``noise_multiplier`` is given. ``delta=None`` = the documented
            default below 1/n (``trustnlp.privacy.accounting.default_delta``).
        secure_noise: draw the noise from a cryptographically secure source (AES-CTR).
        max_grad_norm: the clipping threshold C, or ``"estimate"``: C is a private estimate of the
            ``clip_quantile`` quantile of the per-unit gradient norms of the initial model (its
            privacy cost is in the ledger and in epsilon).
        privacy_unit: ``example`` or ``user`` (user-level DP: users are Poisson-sampled and each
            user's summed gradient is clipped; the data needs a ``user_column``, e.g. ``user_id``).
        max_examples_per_user: user-level DP: keep at most this many examples per user (part of
            the privacy unit's definition; ``None`` = all).
        noise_schedule: ``constant``, ``exponential:<decay>`` (epoch ``e`` uses ``σ·decay^e``) or
            ``linear:<end_ratio>`` (from ``σ`` to ``end_ratio·σ`` at the last epoch); with
            ``epsilon`` the scale ``σ`` is calibrated for the whole schedule.
    """

    task: Task = "classify"
    model: str = "bag"
    tokenizer: Literal["wordpiece", "word"] = "wordpiece"
    seed: int = 0
    epochs: int = Field(5, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    physical_batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    max_length: int | None = Field(None, ge=2, le=512)
    eval_every: int = Field(1, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0.0)
    model_options: dict[str, Any] = Field(default_factory=dict)
    threads: int | None = Field(None, ge=1)
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    precision: Literal["32", "bf16", "16"] = "32"
    # -- differential privacy (DP-SGD); see docs/privacy.md --------------------------------------
    dp: bool = False
    epsilon: float | None = Field(None, gt=0.0)
    delta: float | None = Field(None, gt=0.0, lt=1.0)
    noise_multiplier: float | None = Field(None, ge=0.0)
    max_grad_norm: float | Literal["estimate"] = 1.0
    clip_quantile: float = Field(0.5, gt=0.0, lt=1.0)
    clipping: Literal["flat", "per-layer", "automatic"] = "flat"
    accountant: Literal["rdp", "pld"] = "rdp"
    secure_noise: bool = False
    privacy_unit: Literal["example", "user"] = "example"
    user_column: str = "user_id"
    max_examples_per_user: int | None = Field(None, ge=1)
    noise_schedule: str = Field("constant", pattern=r"^(constant|exponential:[0-9.eE+-]+|linear:[0-9.eE+-]+)$")

    @model_validator(mode="after")
    def _dp_options_consistent(self) -> TrainConfig:
        dp_only = {"epsilon": self.epsilon, "delta": self.delta, "noise_multiplier": self.noise_multiplier}
        given = [k for k, v in dp_only.items() if v is not None]
        if not self.dp and given:
            raise ValueError(f"{given} only apply to private training; add `dp: true` (--dp)")
        if self.dp and self.epsilon is None and self.noise_multiplier is None:
            raise ValueError("private training needs a target `epsilon` (--epsilon) or a `noise_multiplier`")
        if self.dp and self.epsilon is not None and self.noise_multiplier is not None:
            raise ValueError("give either `epsilon` (the noise is calibrated to it) or `noise_multiplier`, not both")
        changed = {"max_grad_norm": self.max_grad_norm == "estimate", "privacy_unit": self.privacy_unit != "example",
                   "noise_schedule": self.noise_schedule != "constant"}
        if not self.dp and any(changed.values()):
            raise ValueError(f"{[k for k, v in changed.items() if v]} only apply to private training; add `dp: true` (--dp)")
        if self.max_examples_per_user is not None and self.privacy_unit != "user":
            raise ValueError("`max_examples_per_user` applies to user-level DP only; add `privacy_unit: user`")
        if self.clip_quantile != 0.5 and self.max_grad_norm != "estimate":
            raise ValueError("`clip_quantile` applies to `max_grad_norm: estimate` only")
        if self.max_grad_norm == "estimate" and self.clipping == "automatic":
            raise ValueError("automatic clipping has no threshold to estimate; drop `max_grad_norm: estimate`")
        kind, _, arg = self.noise_schedule.partition(":")
        if arg:
            try:
                value = float(arg)
            except ValueError:
                value = float("nan")
            ok = 0 < value <= 1 if kind == "exponential" else value > 0  # False for nan
            if not ok:
                need = "a decay in (0, 1]" if kind == "exponential" else "an end ratio > 0"
                raise ValueError(f"Expected `noise_schedule` {kind}:<x> to have {need}, but got {arg!r}")
        return self

    @field_validator("max_grad_norm", mode="before")
    @classmethod
    def _clip_norm(cls, v: Any) -> Any:
        if v == "estimate":
            return v
        try:
            c = float(v)
        except (TypeError, ValueError):
            c = float("nan")
        if isinstance(v, bool) or not c > 0 or c == float("inf"):
            raise ValueError("must be a number > 0 or 'estimate'")
        return c

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_aliases(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):  # YAML `precision: 32`
            return str(v)
        return "16" if v == "fp16" else v

    @model_validator(mode="after")
    def _precision_with_dp(self) -> TrainConfig:
        if self.dp and self.precision == "16":
            raise ValueError("float16 (`precision: 16`) needs loss scaling, which cannot wrap DP-SGD's per-example "
                             "clipping; use `precision: bf16` (--precision bf16) for private training")
        return self

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name an architecture or a saved model directory")
        return v


def format_validation_error(err: ValidationError, source: str = "configuration") -> str:
    """Render a pydantic error in the house phrasing, naming each field."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if not loc:  # a rule across several fields
            lines.append(str(e["msg"]).removeprefix("Value error, ") + ".")
            continue
        lines.append(f"Expected `{loc}` to satisfy: {e['msg']}, but got {e.get('input')!r}.")
    return f"Invalid {source}:\n  " + "\n  ".join(lines)


def read_config_file(path: str | Path) -> Any:
    """The parsed content of a YAML (or ``.json``) config file; ConfigError naming the file when it is
    missing or does not parse."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"Config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None


def load_config(path: str | Path, model: type[BaseModel] = TrainConfig, **overrides: Any) -> Any:
    """Load a YAML or JSON config file into ``model``, with keyword overrides on top."""
    path = Path(path)
    raw = read_config_file(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path}: expected a mapping of option -> value, but got {type(raw).__name__}.")
    try:
        return model(**{**raw, **overrides})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"config file {path}")) from None
