"""The canary-extraction study: plant canaries, train (privately or not), invert, measure.

For every (model, repetitions ``r``, epsilon, defence) the study inserts the same seeded canaries
(:mod:`trustnlp.data.canaries`; ``r`` copies each) into the training split, trains a classifier with
the one training loop (DP-SGD calibrated to ``epsilon`` when it is finite), runs the white-box
inversion attack (:mod:`trustnlp.privacy.attacks.inversion`) and scores it against chance
(:mod:`trustnlp.privacy.attacks.extraction`): exact-match rate with a Clopper-Pearson interval,
per-position accuracy, set recovery, the true secrets' ranks and exposures (exact from the exhaustive
oracle for ``digits``; estimated from uniform samples for ``words``) with a one-sided test against
uniform ranks, the time per attack, and ``group_epsilon = r * epsilon``: example-level DP protects
the ``r`` copies of one secret only as a group (group privacy: ``(r epsilon, r e^{(r-1) epsilon}
delta)``, reported as ``group_delta``).

Defences (Parikh et al. 2022): ``dropout:<p>`` (the model's dropout), ``early-stopping:<patience>``
(stop when the validation loss has not improved for ``patience`` epochs), combined with ``+``.

``run_extract(config, out)`` writes ``out/results.json`` (the results envelope, ``kind
"extract"``), one row per setting, plus ``out/canaries_r<r>.json`` (the exact insertion manifests)
and ``out/settings/<setting>.json`` (each canary's guess, rank and exposure).

Example:
    >>> cfg = ExtractConfig(models=["cnn"], repetitions=[1, 10], epsilons=[8, float("inf")], secret="digits")
    >>> result = run_extract(cfg, "runs/extract")  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from trustnlp.config import DataConfig, TrainConfig
from trustnlp.data.canaries import (
    CanarySet,
    CanarySpec,
    canary_vocabulary,
    insert_canaries,
    make_canaries,
    secret_token_ids,
)
from trustnlp.errors import ConfigError, expected
from trustnlp.privacy.attacks.extraction import (
    RankStatistics,
    exact_rank_statistics,
    extraction_metrics,
    sampled_rank_statistics,
)
from trustnlp.privacy.attacks.inversion import (
    InversionConfig,
    canary_targets,
    exhaustive_log_probs,
    invert,
    sampled_log_probs,
    score_secrets,
)
from trustnlp.results import Result, atomic_write_json, write_result

__all__ = ["DEFENCES", "Defence", "ExtractConfig", "parse_defence", "run_extract"]

DEFENCES = ("none", "dropout", "early-stopping")
ENUMERATION_LIMIT = 10**6  # spaces up to this size get the exhaustive oracle
NON_PRIVATE = "non-private run: no differential-privacy guarantee (epsilon is infinite)"
_DATA_ALIASES = {"builtin": "assistant"}


class ExtractConfig(DataConfig):
    """Everything one extraction study needs (the data fields are :class:`~trustnlp.config.DataConfig`'s;
    ``builtin`` is an alias of ``assistant``).

    Attributes:
        models: architectures to attack (``bag``, ``cnn``, ``lstm``, ``transformer``, ``minilm``).
        repetitions: copies ``r`` of each canary.
        epsilons: target epsilons; ``inf`` = non-private training.
        secret: ``digits`` (4 digits, exhaustive oracle) or ``words`` (6 words from the public list).
        n_canaries: canaries per setting (the same seeded canaries in every setting).
        templates: canary templates with one ``{secret}`` slot (``None``: the defaults of ``secret``).
        defences: ``none``, ``dropout:<p>``, ``early-stopping:<patience>``, or several joined by ``+``.
        tokenizer: ``wordpiece`` (MiniLM's public vocabulary) or ``word`` (the built-in corpus only:
            the generator's lexicon plus the public canary vocabulary).
        seed / epochs / batch_size / lr / max_length / model_options / delta / max_grad_norm /
            accountant / device / threads: as in :class:`~trustnlp.config.TrainConfig` (``max_length``
            ``None`` = the fixed private-run default, for every setting alike).
        attack: the inversion attack's settings.
        rank_samples: uniform samples per canary to estimate ranks where the space cannot be enumerated.
        alpha: level of the rank test against chance. confidence: of the Clopper-Pearson intervals.
    """

    models: list[str] = Field(default_factory=lambda: ["cnn"], min_length=1)
    repetitions: list[int] = Field(default_factory=lambda: [1, 10, 100], min_length=1)
    epsilons: list[float] = Field(default_factory=lambda: [1.0, 8.0, math.inf], min_length=1)
    secret: Literal["digits", "words"] = "digits"
    n_canaries: int = Field(100, ge=1)
    templates: list[str] | None = None
    defences: list[str] = Field(default_factory=lambda: ["none"], min_length=1)
    tokenizer: Literal["wordpiece", "word"] = "wordpiece"
    seed: int = 0
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float | None = Field(None, gt=0.0)
    max_length: int | None = Field(None, ge=8, le=512)
    model_options: dict[str, Any] = Field(default_factory=dict)
    delta: float | None = Field(None, gt=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    accountant: Literal["rdp", "pld"] = "rdp"
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    threads: int | None = Field(None, ge=1)
    attack: InversionConfig = Field(default_factory=InversionConfig)
    rank_samples: int = Field(1000, ge=10)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)

    @field_validator("repetitions")
    @classmethod
    def _positive_repetitions(cls, v: list[int]) -> list[int]:
        if any(r < 1 for r in v):
            raise ValueError("every repetition count must be >= 1")
        return v

    @field_validator("epsilons")
    @classmethod
    def _positive_epsilons(cls, v: list[float]) -> list[float]:
        if any(not (e > 0) for e in v):  # also refuses nan
            raise ValueError("every epsilon must be > 0 (inf = non-private)")
        return v

    @field_validator("defences")
    @classmethod
    def _known_defences(cls, v: list[str]) -> list[str]:
        for d in v:
            parse_defence(d)
        return v


@dataclass(frozen=True)
class Defence:
    """A parsed defence setting: the model's ``dropout`` (``None`` = its default) and the
    early-stopping ``patience`` (``None`` = train every epoch)."""

    name: str
    dropout: float | None = None
    patience: int | None = None


def parse_defence(spec: str) -> Defence:
    """``none`` | ``dropout:<p>`` | ``early-stopping[:<patience>]`` | parts joined by ``+``."""
    dropout, patience = None, None
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(expected("defence", f"one of {list(DEFENCES)} (e.g. 'dropout:0.5')", spec))
    for part in spec.split("+"):
        kind, _, arg = part.strip().partition(":")
        try:
            if kind == "none" and not arg:
                continue
            if kind == "dropout" and 0.0 <= float(arg) < 1.0:
                dropout = float(arg)
                continue
            if kind == "early-stopping" and (not arg or int(arg) >= 1):
                patience = int(arg) if arg else 1
                continue
        except ValueError:
            pass
        raise ConfigError(expected("defence", "'none', 'dropout:<p in [0, 1)>', 'early-stopping[:<patience >= 1>]' "
                                   "or such parts joined by '+'", spec))
    return Defence(name=spec, dropout=dropout, patience=patience)


def _tokenizer(config: ExtractConfig, splits: Any, canaries: CanarySet, *, private: bool) -> Any:
    from trustnlp.data.tokenizers import WordTokenizer, check_tokenizer_privacy, minilm_tokenizer

    tok: Any
    if config.tokenizer == "wordpiece":
        tok = minilm_tokenizer()
    else:
        if "minilm" in config.models:
            raise ConfigError("Expected `tokenizer` to be 'wordpiece' for model 'minilm' (its vocabulary is fixed), "
                              "but got 'word'.")
        if splits.meta.name != "assistant":
            raise ConfigError(f"Expected `tokenizer` to be 'wordpiece' for data `{splits.meta.name}`, but got 'word': "
                              "a word vocabulary built from the training data would contain the canaries' secrets, "
                              "and only the built-in corpus has a public lexicon.")
        from trustnlp.data.assistant import assistant_vocabulary

        words = assistant_vocabulary() + canary_vocabulary(canaries.space, canaries.spec.resolved_templates)
        tok = WordTokenizer.from_vocabulary(words, provenance="generator")
    check_tokenizer_privacy(tok, private=private)
    return tok


class _EarlyStopping:
    """``on_epoch_end`` callback + step wrapper: after ``patience`` epochs without a lower validation
    loss, the next step raises ``StopTraining`` (the loop keeps the current parameters). Every other
    attribute (the DP step's clipper, probe, state) is the wrapped step's."""

    def __init__(self, step: Any, patience: int) -> None:
        self.inner, self.patience = step, patience
        self.best, self.bad = math.inf, 0
        self.stopped_at: int | None = None

    def __call__(self, *args: Any) -> float:
        from trustnlp.train import StopTraining

        if self.stopped_at is not None:
            raise StopTraining(f"early stopping after epoch {self.stopped_at}")
        return self.inner(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        loss = logs.get("val_loss")
        if loss is None:
            return
        if loss < self.best - 1e-6:
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.stopped_at = epoch


@dataclass(frozen=True)
class _Trained:
    model: torch.nn.Module
    info: dict[str, Any]


def _train(config: ExtractConfig, arch: str, epsilon: float, defence: Defence, tokenizer: Any, train: Any,
           encoded: dict[str, Any], *, progress: bool) -> _Trained:
    from trustnlp.devices import DeviceModel
    from trustnlp.models import build_model
    from trustnlp.tasks import make_task
    from trustnlp.train import fit

    private = math.isfinite(epsilon)
    options = dict(config.model_options)
    if defence.dropout is not None:
        options["dropout"] = defence.dropout
    tc = TrainConfig(
        data=config.data, data_dir=config.data_dir, include_oos=config.include_oos, corpus_size=config.corpus_size,
        corpus_users=config.corpus_users, model=arch, tokenizer=config.tokenizer, seed=config.seed,
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, max_length=encoded["max_length"],
        model_options=options, device=config.device, threads=config.threads, dp=private,
        epsilon=epsilon if private else None, delta=config.delta if private else None,
        max_grad_norm=config.max_grad_norm, accountant=config.accountant,
    )
    task = make_task("classify", num_labels=train.num_labels)
    torch.manual_seed(config.seed)
    model = build_model(arch, vocab_size=tokenizer.vocab_size, num_labels=train.num_labels, pad_id=tokenizer.pad_id,
                        **options)
    step: Any = inspect.signature(fit).parameters["step_fn"].default  # the loop's own (non-private) step
    extra: dict[str, Any] = {}
    plan = None
    if private:
        from trustnlp.privacy.training import plan_private_training

        plan = plan_private_training(tc, model, num_examples=len(train), data=encoded["train"], dataset=train)
        step, extra = plan.step, {"sampler": plan.sampler}
    callbacks: list[Any] = []
    if defence.patience is not None:
        if encoded.get("validation") is None:
            raise ConfigError(f"Early stopping needs a validation split; data `{config.data}` has none "
                              "(set `validation` > 0).")
        step = _EarlyStopping(step, defence.patience)
        callbacks.append(step)
    fitted = fit(model, task, encoded["train"], config=tc, validation=encoded.get("validation"), step_fn=step,
                 callbacks=callbacks, progress=progress, **extra)
    runner = DeviceModel(model, device=next(model.parameters()).device, precision=tc.precision)
    test = task.evaluate(runner, encoded["test"])
    info: dict[str, Any] = {
        "epochs_trained": fitted.epochs, "steps": fitted.steps, "stopped_early": bool(fitted.extra.get("stopped")),
        "train_seconds": fitted.train_seconds, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
        "dropout": model.config.get("dropout"), "epsilon_spent": None, "delta": None, "noise_multiplier": None,
    }
    if plan is not None:
        from trustnlp.privacy.training import privacy_metrics

        pm = privacy_metrics(plan, tc)
        info.update({"epsilon_spent": pm["epsilon"], "delta": pm["delta"], "noise_multiplier": pm["noise_multiplier"]})
    model.eval()
    return _Trained(model=model, info=info)


def _group_privacy(r: int, epsilon: float, delta: float | None) -> tuple[float, float | None]:
    """``(r epsilon, min(1, r e^{(r-1) epsilon} delta))`` (group privacy for ``r`` records)."""
    if not math.isfinite(epsilon):
        return math.inf, None
    if delta is None:
        return r * epsilon, None
    log_gd = math.log(r) + (r - 1) * epsilon + math.log(delta)
    return r * epsilon, 1.0 if log_gd >= 0 else math.exp(log_gd)


def _ranks(model: torch.nn.Module, targets: Sequence[Any], cand: list[int], canaries: CanarySet,
           config: ExtractConfig) -> tuple[RankStatistics, np.ndarray | None]:
    """Rank statistics and, for an enumerable space, the oracle's best secret per canary."""
    space, secrets = canaries.space, canaries.secrets
    bs = config.attack.score_batch_size
    if space.size <= ENUMERATION_LIMIT:
        lp = exhaustive_log_probs(model, targets, cand, space.enumerate(limit=ENUMERATION_LIMIT), batch_size=bs)
        return exact_rank_statistics(lp, space.index_of(secrets)), lp.argmax(axis=1)
    own = score_secrets(model, targets, cand, secrets, batch_size=bs)
    samples = sampled_log_probs(model, targets, cand, n_samples=config.rank_samples, seed=config.seed, batch_size=bs)
    return sampled_rank_statistics(own, samples, space_size=space.size), None


def _slug(arch: str, r: int, epsilon: float, defence: str) -> str:
    eps = "inf" if not math.isfinite(epsilon) else f"{epsilon:g}"
    safe = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in defence)
    return f"{arch}_r{r}_eps{eps}_{safe}"


def run_extract(config: ExtractConfig, out: str | Path, *, progress: bool = False) -> Result:
    """Run the study ``config`` describes; write ``out/results.json`` and the manifests; return the result."""
    from trustnlp.devices import resolve_device
    from trustnlp.pipeline import load_splits
    from trustnlp.privacy.training import DP_DEFAULT_MAX_LENGTH
    from trustnlp.tasks import make_task

    out = Path(out)
    resolve_device(config.device)  # fail before any work
    data_config = config.model_copy(update={"data": _DATA_ALIASES.get(config.data, config.data)})
    splits = load_splits(data_config, seed=config.seed)
    private_any = any(math.isfinite(e) for e in config.epsilons)
    defences = [parse_defence(d) for d in config.defences]
    max_length = config.max_length or DP_DEFAULT_MAX_LENGTH
    task = make_task("classify", num_labels=splits.train.num_labels)
    spec0 = CanarySpec(kind=config.secret, n_canaries=config.n_canaries, repetitions=1,
                       templates=None if config.templates is None else tuple(config.templates))
    canaries0 = make_canaries(spec0, splits.train.label_names, seed=config.seed)
    tokenizer = _tokenizer(config, splits, canaries0, private=private_any)
    cand = secret_token_ids(tokenizer, canaries0.space)
    targets = canary_targets(tokenizer, canaries0.canaries, length=canaries0.space.length)
    longest = max(len(t.input_ids) for t in targets)
    if longest > max_length:
        raise ConfigError(expected("max_length", f">= the longest canary ({longest} tokens)", max_length))
    held_out = {name: task.encode(ds, tokenizer, max_length=max_length) for name, ds in splits.items() if name != "train"}
    rows: list[dict[str, Any]] = []
    null_reasons: dict[str, str] = {f"config.epsilons[{i}]": NON_PRIVATE
                                    for i, e in enumerate(config.epsilons) if not math.isfinite(e)}
    artifacts: dict[str, str] = {}
    for r in config.repetitions:
        canaries = make_canaries(replace(spec0, repetitions=r), splits.train.label_names, seed=config.seed)
        assert canaries.canaries == canaries0.canaries  # the same secrets in every setting
        train, manifest = insert_canaries(splits.train, canaries)
        name = f"canaries_r{r}.json"
        atomic_write_json(out / name, manifest.to_dict())
        artifacts[f"canaries_r{r}"] = name
        encoded = {"train": task.encode(train, tokenizer, max_length=max_length), **held_out, "max_length": max_length}
        for arch in config.models:
            for eps in config.epsilons:
                for defence in defences:
                    trained = _train(config, arch, eps, defence, tokenizer, train, encoded, progress=progress)
                    row = _attack_row(config, trained, targets, cand, canaries, r=r, epsilon=eps, defence=defence,
                                      arch=arch)
                    slug = _slug(arch, r, eps, defence.name)
                    atomic_write_json(out / "settings" / f"{slug}.json", row.pop("_details"))
                    artifacts[f"settings/{slug}"] = f"settings/{slug}.json"
                    i = len(rows)
                    for field_name, reason in row.pop("_null_reasons").items():
                        null_reasons[f"rows[{i}].{field_name}"] = reason
                    rows.append(row)
    space = canaries0.space
    metrics = {"secret": config.secret, "space_size": space.size, "chance": 1.0 / space.size,
               "n_canaries": config.n_canaries, "n_settings": len(rows), "alpha": config.alpha,
               "rank_kind": "exact" if space.size <= ENUMERATION_LIMIT else "sampled",
               "tokenizer": tokenizer.to_dict()}
    result = Result(kind="extract", config=config.model_dump(), seed=config.seed, data=splits.meta.to_dict(),
                    metrics=metrics, rows=rows, null_reasons=null_reasons, artifacts=artifacts)
    write_result(result, out / "results.json")
    return result


def _attack_row(config: ExtractConfig, trained: _Trained, targets: Sequence[Any], cand: list[int],
                canaries: CanarySet, *, r: int, epsilon: float, defence: Defence, arch: str) -> dict[str, Any]:
    from trustnlp.privacy.attacks.stats import clopper_pearson

    model, info = trained.model, trained.info
    secrets = canaries.secrets
    inv = invert(model, targets, cand, config=config.attack, seed=config.seed)
    t0 = time.perf_counter()
    ranks, oracle_best = _ranks(model, targets, cand, canaries, config)
    rank_seconds = time.perf_counter() - t0
    m = extraction_metrics(inv.guesses, secrets, alphabet_size=len(canaries.space.tokens),
                           rank_fractions=ranks.rank_fractions, ranks=ranks.ranks, exposures=ranks.exposures,
                           alpha=config.alpha, confidence=config.confidence)
    n = len(canaries)
    group_eps, group_delta = _group_privacy(r, epsilon, info["delta"])
    reasons: dict[str, str] = {}
    if not math.isfinite(epsilon):
        for key in ("epsilon", "epsilon_spent", "delta", "group_epsilon", "group_delta", "noise_multiplier"):
            reasons[key] = NON_PRIVATE
    oracle: dict[str, Any] = {"oracle_extraction_rate": None, "oracle_extraction_interval": None}
    if oracle_best is not None:
        hits = int((oracle_best == canaries.space.index_of(secrets)).sum())
        oracle = {"oracle_extraction_rate": hits / n,
                  "oracle_extraction_interval": list(clopper_pearson(hits, n, confidence=config.confidence))}
    else:
        for key in oracle:
            reasons[key] = f"the {canaries.space.kind} space ({canaries.space.size} secrets) cannot be enumerated"
    md = m.to_dict()
    test = md.pop("rank_test")
    row: dict[str, Any] = {
        "model": arch, "secret": canaries.space.kind, "repetitions": r,
        "epsilon": epsilon if math.isfinite(epsilon) else None,
        "epsilon_spent": info["epsilon_spent"], "delta": info["delta"], "noise_multiplier": info["noise_multiplier"],
        "group_epsilon": group_eps if math.isfinite(group_eps) else None, "group_delta": group_delta,
        "defence": defence.name, "dropout": info["dropout"], "early_stopping_patience": defence.patience,
        "stopped_early": info["stopped_early"], "epochs_trained": info["epochs_trained"],
        **md,
        "rank_kind": ranks.kind, "rank_samples": ranks.n_samples,
        "rank_test_statistic": test["statistic"], "rank_test_p_value": test["p_value"],
        "rank_test_alpha": test["alpha"], "rank_test_significant": test["significant"], "rank_test": test["method"],
        "argmax_extraction_rate": float((inv.argmax_guesses == secrets).all(axis=1).mean()),
        **oracle,
        "attack_seconds": inv.seconds, "seconds_per_canary": inv.seconds / n, "rank_seconds": rank_seconds,
        "train_seconds": info["train_seconds"], "test_accuracy": info["test_accuracy"],
        "test_macro_f1": info["test_macro_f1"],
    }
    if ranks.n_samples is None:
        reasons["rank_samples"] = "exact ranks: every secret was scored"
    if defence.patience is None:
        reasons["early_stopping_patience"] = "no early stopping in this setting"
    space = canaries.space
    row["_details"] = {
        "setting": {k: row[k] for k in ("model", "repetitions", "epsilon", "defence")},
        "canaries": [{"id": c.id, "secret": space.render(c.secret), "guess": space.render(g), "rank": float(rk),
                      "exposure": float(ex), "guess_log_prob": float(s)}
                     for c, g, rk, ex, s in zip(canaries.canaries, inv.guesses, ranks.ranks, ranks.exposures,
                                                inv.candidate_scores[:, 0])],
    }
    row["_null_reasons"] = reasons
    return row
