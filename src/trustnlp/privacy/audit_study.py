"""The privacy audit study: how much models trained at several epsilons leak, against what they claim.

For each epsilon (and once without DP), :func:`run_audit` trains on one *population* (a data set's
train + validation split, e.g. CLINC150's 18,000 in-scope examples):

- the **target**, on a random half: every example is a member independently with probability 1/2
  (the inclusion the one-run audit of Steinke, Nasr & Jagielski 2023 assumes);
- ``K`` **shadows**, each on about half (:func:`~trustnlp.privacy.attacks.shadow_inclusion_mask`:
  every example IN for exactly ``K/2`` of them), with the target's recipe: a private target gets
  private shadows at the same epsilon, delta, clipping and sampling rate;

then scores every population example with the chosen attack (LiRA online/offline of Carlini et al.
2022 on the logit-scaled confidence, the loss threshold of Yeom et al. 2018 or the calibrated loss
of Watson et al. 2022), and reports the attack on the *evaluation* half of the population (the
other half, the *calibration* examples, only chooses thresholds): AUC, TPR at 0.1% and 1% FPR with
Clopper-Pearson intervals, the empirical epsilon lower bound from TPR/FPR at one calibrated
threshold (Jagielski et al. 2020) and the one-run bound (Steinke et al. 2023) at the same
confidence and the row's delta. Across the finite epsilons, the Spearman rank correlation of
epsilon with attack success measures how practical leakage tracks the theoretical guarantee.

**A claim that fails is an error.** For every private row both lower bounds must be at most the
epsilon the target's ledger spent; otherwise the results are written (with ``claim_holds: false``)
and :class:`~trustnlp.errors.PrivacyError` is raised — the DP engine or the accounting is broken.

Example:
    >>> cfg = AuditConfig(data="assistant", corpus_size=2000, model="bag", epsilons=[1.0, None], shadows=4)
    >>> result = run_audit(cfg, "runs/audit")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from trustnlp.config import DataConfig, TrainConfig
from trustnlp.data.dataset import DatasetSplits, TextDataset
from trustnlp.errors import ConfigError, DataError, PrivacyError
from trustnlp.privacy.attacks import (
    calibrated_loss_scores,
    calibration_split,
    evaluate_attack,
    lira_scores,
    loss_scores,
    shadow_inclusion_mask,
)
from trustnlp.privacy.attacks.result import AttackResult
from trustnlp.privacy.attacks.shadows import ModelRun, derive_seed, train_models
from trustnlp.privacy.audit import check_claim, epsilon_lower_bound_from_scores, one_run_audit
from trustnlp.results import Result, write_result

__all__ = ["ATTACKS", "AuditConfig", "run_audit", "spearman_summary"]

ATTACKS = ("lira-online", "lira-offline", "loss", "calibrated")
ROC_POINTS = 200  # ROC vertices kept per row in results.json (real operating points, spread in FPR and log FPR)
NON_PRIVATE = "non-private row: no differential-privacy claim (epsilon is infinite)"


class AuditConfig(DataConfig):
    """The audit study's configuration (defaults live here; the CLI and the API share it).

    Attributes:
        model / model_options / tokenizer: the architecture (``trainable: frozen`` in ``model_options``
            for MiniLM features), as for training.
        epsilons: target epsilons, one row each; ``None`` (or ``"inf"``) is the non-private row.
        shadows: ``K`` shadow models per row (LiRA and the calibrated attack need ``K >= 4``).
        attack: the attack of the rows; the AUCs of the others are recorded too.
        global_variance: LiRA with one pooled variance (``None`` = when ``K < 64``, as the paper advises).
        epochs / max_steps / batch_size / lr / optimizer / weight_decay / scheduler: the recipe of every model.
        max_length: fixed input length (never sized from the private data).
        delta: the delta of every private model and of the empirical bounds (``None`` =
            ``default_delta(N)`` for the population size ``N``, below ``1/(10 n)`` for every model).
        accountant / max_grad_norm / clipping: DP-SGD settings of the private models.
        population_size: use a seeded random subset of this many population examples.
        confidence: of every interval and lower bound.
        calibration_fraction: share of the population (stratified by target membership) whose
            scores only choose thresholds.
        one_run_guess_fraction: the one-run audit guesses "in" for this fraction of the population
            with the highest scores and "out" for as many with the lowest (fixed beforehand).
        path: how shadows are trained: ``auto`` | ``plain`` | ``features`` | ``batched``.
    """

    model: str = "bag"
    model_options: dict[str, Any] = Field(default_factory=dict)
    tokenizer: Literal["wordpiece", "word"] = "wordpiece"
    epsilons: list[float | None] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, None])
    shadows: int = Field(16, ge=0)
    attack: Literal["lira-online", "lira-offline", "loss", "calibrated"] = "lira-online"
    global_variance: bool | None = None
    seed: int = Field(0, ge=0)
    epochs: int = Field(5, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float | None = Field(None, gt=0.0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    max_length: int = Field(64, ge=2, le=512)
    delta: float | None = Field(None, gt=0.0, lt=1.0)
    accountant: Literal["rdp", "pld"] = "rdp"
    max_grad_norm: float = Field(1.0, gt=0.0)
    clipping: Literal["flat", "per-layer", "automatic"] = "flat"
    population_size: int | None = Field(None, ge=20)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    calibration_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    one_run_guess_fraction: float = Field(0.05, gt=0.0, le=0.5)
    path: Literal["auto", "plain", "features", "batched"] = "auto"
    threads: int | None = Field(None, ge=1)
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")

    @field_validator("epsilons", mode="before")
    @classmethod
    def _inf_is_none(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [x for x in v.split(",") if x.strip()]
        if not isinstance(v, list | tuple):
            return v
        return [None if x is None or str(x).strip().lower() in ("inf", "none", "null") or x == math.inf else x
                for x in v]

    @model_validator(mode="after")
    def _check(self) -> AuditConfig:
        if not self.epsilons:
            raise ValueError("`epsilons` needs at least one value (a number > 0, or inf for the non-private row)")
        finite = [e for e in self.epsilons if e is not None]
        if any(not (e > 0 and math.isfinite(e)) for e in finite):
            raise ValueError(f"Expected every epsilon to be > 0 (or inf), but got {self.epsilons}")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ValueError(f"Expected distinct epsilons, but got {self.epsilons}")
        if self.attack != "loss" and self.shadows < 4:
            raise ValueError(f"attack {self.attack!r} needs `shadows` >= 4 (IN and OUT shadows for every example); "
                             f"got {self.shadows}")
        return self

    def recipe(self, epsilon: float | None, *, delta: float, noise_multiplier: float | None = None) -> TrainConfig:
        """The training configuration of the models of the row for ``epsilon`` (``None``: non-private).

        With ``noise_multiplier`` (the shadows of a private row) the noise is that of the target
        instead of being calibrated again: the same mechanism (sigma, C, expected batch, epochs).
        """
        data = DataConfig.model_fields
        private: dict[str, Any] = {}
        if epsilon is not None:
            budget = {"epsilon": epsilon} if noise_multiplier is None else {"noise_multiplier": noise_multiplier}
            private = {"dp": True, **budget, "delta": delta, "accountant": self.accountant,
                       "max_grad_norm": self.max_grad_norm, "clipping": self.clipping}
        return TrainConfig(
            **{k: getattr(self, k) for k in data}, task="classify", model=self.model, tokenizer=self.tokenizer,
            seed=self.seed, epochs=self.epochs, max_steps=self.max_steps, batch_size=self.batch_size,
            physical_batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
            weight_decay=self.weight_decay, scheduler=self.scheduler, max_length=self.max_length, eval_every=0,
            model_options=self.model_options, threads=self.threads, device=self.device, **private)


# -- data -------------------------------------------------------------------------------------------------


def _concat(a: TextDataset, b: TextDataset | None) -> TextDataset:
    if b is None:
        return a
    labels = None if a.labels is None or b.labels is None else np.concatenate([a.labels, b.labels])
    return TextDataset(a.texts + b.texts, labels, label_names=a.label_names, meta=a.meta)


def _population(config: AuditConfig, population: TextDataset | None, test: TextDataset | None,
                ) -> tuple[TextDataset, TextDataset, DatasetSplits | None]:
    from trustnlp.pipeline import load_splits

    splits = None
    if population is None:
        splits = load_splits(config, seed=config.seed)
        population, test = _concat(splits.train, splits.validation), splits.test
    if test is None:
        raise DataError("Expected held-out `test` data with a custom population (test accuracy is measured on it).")
    if population.labels is None:
        raise DataError(f"Data set `{population.meta.name}` has no labels; the audit needs a classification data set.")
    if config.population_size is not None:
        if config.population_size > len(population):
            raise ConfigError(f"Expected `population_size` to be <= the population ({len(population)}), but got "
                              f"{config.population_size}.")
        rng = np.random.default_rng(derive_seed(config.seed, "population"))
        population = population.subset(np.sort(rng.choice(len(population), config.population_size, replace=False)))
    return population, test, splits


# -- attacks ------------------------------------------------------------------------------------------------


def _scores(attack: str, target: ModelRun, shadows: list[ModelRun], in_mask: np.ndarray,
            global_variance: bool) -> np.ndarray:
    if attack == "loss":
        return loss_scores(target.losses)
    if attack == "calibrated":
        return calibrated_loss_scores(target.losses, np.stack([s.losses for s in shadows]), in_mask=in_mask)
    phi = np.stack([s.confidences for s in shadows])
    return lira_scores(target.confidences, phi, in_mask, online=attack == "lira-online",
                       global_variance=global_variance)


def _point(result: AttackResult, fpr: float, key: str) -> dict[str, Any]:
    p = result.at_fpr(fpr)
    return {key: p.tpr, f"{key}_interval": list(p.tpr_interval), f"fpr_realised_at_{key.removeprefix('tpr_at_')}":
            p.fpr}


def spearman_summary(rows: list[dict[str, Any]], keys: tuple[str, ...] = ("mia_auc", "tpr_at_1e-3_fpr",
                     "empirical_epsilon_lower")) -> tuple[dict[str, Any], dict[str, str]]:
    """Spearman's rank correlation of epsilon with each success measure over the rows with a finite epsilon.

    Returns ``(metrics, null_reasons)``: ``spearman_epsilon_<key>`` and its ``_pvalue`` (two-sided),
    ``None`` with a reason when fewer than 3 finite epsilons or a constant column make it undefined.
    """
    from scipy.stats import spearmanr

    finite = [r for r in rows if r.get("epsilon") is not None]
    out: dict[str, Any] = {"spearman_n": len(finite)}
    reasons: dict[str, str] = {}
    for key in keys:
        name = f"spearman_epsilon_{key}"
        x = np.array([r["epsilon"] for r in finite], dtype=float)
        y = np.array([r[key] for r in finite], dtype=float)
        why = None
        if len(finite) < 3:
            why = f"needs at least 3 finite epsilons, got {len(finite)}"
        elif np.ptp(y) == 0:
            why = f"`{key}` is the same at every finite epsilon (rank correlation undefined)"
        if why:
            out[name], out[f"{name}_pvalue"] = None, None
            reasons[f"metrics.{name}"] = reasons[f"metrics.{name}_pvalue"] = why
            continue
        res = spearmanr(x, y)
        out[name], out[f"{name}_pvalue"] = float(res.statistic), float(res.pvalue)
    return out, reasons


# -- the study ------------------------------------------------------------------------------------------------


def _label(epsilon: float | None) -> str:
    return "eps-inf" if epsilon is None else f"eps-{epsilon:g}"


def _save_scores(file: Path, tensors: dict[str, np.ndarray]) -> None:
    """Per-example arrays as one safetensors file, written atomically."""
    from safetensors.numpy import save

    from trustnlp.results import atomic_write_bytes

    atomic_write_bytes(file, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}))


def run_audit(config: AuditConfig, out: str | Path, *, progress: bool = True, population: TextDataset | None = None,
              test: TextDataset | None = None, tokenizer: Any | None = None) -> Result:
    """Run the audit study; write ``out/results.json`` (and ``out/models/``, ``out/scores/``).

    Args:
        config: the study.
        out: output folder; finished models under ``out/models/`` are reused by a rerun.
        progress: progress bars.
        population / test: a custom population and held-out test data (default: the data set of
            ``config``: train + validation, and its test split).
        tokenizer: a tokenizer for a custom population (default: ``config.tokenizer`` via
            :func:`trustnlp.pipeline.make_tokenizer`, which refuses a private vocabulary under DP).

    Raises:
        PrivacyError: an empirical lower bound exceeds the epsilon a private target claims (after the
            results are written).
    """
    from trustnlp.models import build_model
    from trustnlp.pipeline import make_tokenizer
    from trustnlp.privacy.accounting import default_delta
    from trustnlp.tasks import ClassifyTask

    out = Path(out)
    started = time.perf_counter()
    pop, test_ds, splits = _population(config, population, test)
    any_private = any(e is not None for e in config.epsilons)
    if tokenizer is None:
        tokenizer = make_tokenizer(config.tokenizer, splits or DatasetSplits(train=pop, test=test_ds),
                                   model=config.model, private=any_private)
    task = ClassifyTask(pop.num_labels)
    pop_enc = task.encode(pop, tokenizer, max_length=config.max_length)
    test_enc = task.encode(test_ds, tokenizer, max_length=config.max_length)
    n, k = len(pop), config.shadows
    target_in = np.random.default_rng(derive_seed(config.seed, "target-membership")).random(n) < 0.5
    shadow_in = shadow_inclusion_mask(k, n, seed=derive_seed(config.seed, "shadow-membership")) if k else \
        np.zeros((0, n), dtype=bool)
    calibration = calibration_split(target_in, fraction=config.calibration_fraction,
                                    seed=derive_seed(config.seed, "calibration"))
    names = ["target"] + [f"shadow-{i}" for i in range(k)]
    seeds = [derive_seed(config.seed, "target")] + [derive_seed(config.seed, "shadow", i) for i in range(k)]
    delta = config.delta if config.delta is not None else default_delta(n)
    global_variance = config.global_variance if config.global_variance is not None else k < 64
    torch.manual_seed(derive_seed(config.seed, "template"))
    template = build_model(config.model, vocab_size=tokenizer.vocab_size, num_labels=pop.num_labels,
                           pad_id=tokenizer.pad_id, **config.model_options)
    _save_scores(out / "scores" / "masks.safetensors",
                 {"target_in": target_in, "shadow_in": shadow_in, "calibration": calibration})
    rows: list[dict[str, Any]] = []
    reasons: dict[str, str] = {}
    violations: list[str] = []
    bar = tqdm(config.epsilons, desc="audit", unit="epsilon", disable=None if progress else True, leave=False)
    for epsilon in bar:
        label = _label(epsilon)
        bar.set_postfix(epsilon="inf" if epsilon is None else epsilon)
        t0 = time.perf_counter()
        common = {"path": config.path, "test": test_enc, "store": out / "models" / label, "progress": progress}
        recipe = config.recipe(epsilon, delta=delta)
        if epsilon is None:  # one call: the batched path trains the target with the shadows
            runs = train_models(template, task, pop_enc, np.vstack([target_in[None], shadow_in]), config=recipe,
                                seeds=seeds, names=names, **common)
        else:  # calibrate once (for the target); the shadows run the target's mechanism (sigma, C, q, epochs)
            runs = train_models(template, task, pop_enc, target_in[None], config=recipe, seeds=seeds[:1],
                                names=names[:1], **common)
            sigma = runs[0].stats["noise_multiplier"]
            if k:
                runs += train_models(template, task, pop_enc, shadow_in, seeds=seeds[1:], names=names[1:],
                                     config=config.recipe(epsilon, delta=delta, noise_multiplier=sigma), **common)
        target, shadows = runs[0], runs[1:]
        row, results = _row(config, epsilon, delta, target, shadows, shadow_in, target_in, calibration,
                            global_variance, time.perf_counter() - t0)
        _save_scores(out / "scores" / f"{label}.safetensors", {
            "scores": results[config.attack].scores, "target_confidences": target.confidences,
            "target_losses": target.losses, **({"shadow_confidences": np.stack([s.confidences for s in shadows]),
                                                "shadow_losses": np.stack([s.losses for s in shadows])} if k else {})})
        i = len(rows)
        if epsilon is None:
            for key in ("epsilon", "epsilon_spent", "accountant", "noise_multiplier", "sampling_rate",
                        "shadow_epsilon_spent_mean", "claim_holds"):
                reasons[f"rows[{i}].{key}"] = NON_PRIVATE
        else:
            for bound in ("empirical_epsilon_lower", "one_run_epsilon_lower"):
                try:
                    check_claim(row[bound], claimed_epsilon=row["epsilon_spent"])
                except PrivacyError as e:
                    row["claim_holds"] = False
                    violations.append(f"epsilon={epsilon:g} ({bound}): {e}")
        rows.append(row)
    spearman, spearman_reasons = spearman_summary(rows)
    reasons.update(spearman_reasons)
    nonprivate = next((r for r in rows if r["epsilon"] is None), None)
    metrics: dict[str, Any] = {
        "attack": config.attack, "n_population": n, "n_members": int(target_in.sum()), "shadows": k,
        "global_variance": global_variance, "delta": delta, "confidence": config.confidence,
        "nonprivate_mia_auc": nonprivate["mia_auc"] if nonprivate else None,
        "nonprivate_test_accuracy": nonprivate["test_accuracy"] if nonprivate else None,
        "claims_hold": not violations, "violations": violations,
        "seeds": {"target": seeds[0], "shadows": seeds[1:]}, **spearman,
        "total_seconds": time.perf_counter() - started,
    }
    meta = (splits.meta if splits is not None else pop.meta).to_dict()
    meta["details"] = {**meta.get("details", {}), "population": "train + validation" if splits is not None else
                       "given", "population_size": n, "test_size": len(test_ds)}
    result = Result(kind="audit", config=config.model_dump(), seed=config.seed, data=meta, metrics=metrics, rows=rows,
                    null_reasons=reasons, artifacts={"models": "models", "scores": "scores"})
    write_result(result, out / "results.json")
    if violations:
        raise PrivacyError("The audit falsified a privacy claim:\n  " + "\n  ".join(violations))
    return result


def _row(config: AuditConfig, epsilon: float | None, delta: float, target: ModelRun, shadows: list[ModelRun],
         shadow_in: np.ndarray, target_in: np.ndarray, calibration: np.ndarray, global_variance: bool,
         seconds: float) -> tuple[dict[str, Any], dict[str, AttackResult]]:
    usable = [a for a in ATTACKS if a == "loss" or len(shadows) >= 4]
    results = {a: evaluate_attack(_scores(a, target, shadows, shadow_in, global_variance), target_in,
                                  calibration=calibration, attack=a, confidence=config.confidence) for a in usable}
    main = results[config.attack]
    bound = epsilon_lower_bound_from_scores(main.scores, target_in, calibration=calibration, delta=delta,
                                            confidence=config.confidence)
    guesses = max(1, round(config.one_run_guess_fraction * len(target_in)))
    one_run = one_run_audit(main.scores, target_in, k_plus=guesses, k_minus=guesses, delta=delta,
                            confidence=config.confidence)
    st = target.stats
    shadow_acc = [s.stats["test_accuracy"] for s in shadows if "test_accuracy" in s.stats]
    spent = [s.stats["epsilon"] for s in shadows if s.stats.get("epsilon") is not None]
    roc = main.roc.thin(ROC_POINTS)
    row: dict[str, Any] = {
        "epsilon": epsilon, "private": epsilon is not None, "epsilon_spent": st.get("epsilon"), "delta": delta,
        "accountant": config.accountant if epsilon is not None else None,
        "noise_multiplier": st.get("noise_multiplier"), "sampling_rate": st.get("sampling_rate"),
        "shadow_epsilon_spent_mean": float(np.mean(spent)) if spent else None,
        "test_accuracy": st["test_accuracy"],
        "shadow_test_accuracy": float(np.mean(shadow_acc)) if shadow_acc else None,
        "attack": config.attack, "mia_auc": main.auc,
        **_point(main, 1e-3, "tpr_at_1e-3_fpr"), **_point(main, 1e-2, "tpr_at_1e-2_fpr"),
        "empirical_epsilon_lower": bound.epsilon, "empirical_epsilon_threshold": bound.threshold,
        "one_run_epsilon_lower": one_run.epsilon,
        "one_run": {"m": one_run.m, "r": one_run.r, "v": one_run.v},
        "confidence": config.confidence, "claim_holds": True if epsilon is not None else None,
        "auc_by_attack": {a: r.auc for a, r in results.items()},
        "n_members": main.roc.n_members, "n_nonmembers": main.roc.n_nonmembers,
        "n_calibration": int(calibration.sum()), "target_steps": st.get("steps"),
        "trained_by": sorted({str(r.stats.get("trained_by", r.path)) for r in [target, *shadows]}),
        "models_reused": sum(r.path == "stored" for r in [target, *shadows]),
        "seconds": seconds, "roc": {"fpr": roc.fpr.tolist(), "tpr": roc.tpr.tolist()},
    }
    return row, results
