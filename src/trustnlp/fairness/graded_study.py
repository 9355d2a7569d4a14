"""The graded-bias study: do intrinsic metrics of a classifier's encoder track the bias of its
predictions? And what does differential privacy do to per-group accuracy?

**Planted, graded bias.** The built-in assistant corpus (``gender`` column: ``female``, ``male``
or ``none``) gets a binary task: the intents are ordered by their number of gendered training
examples (ties by name) and every other one is positive (``y = 1``), so that both classes hold
gendered examples. In the *training* split only, a share ``q`` of the gendered examples is
relabelled toward a gender-dependent label (``female`` → 1, ``male`` → 0; chosen uniformly with
a generator seeded by ``(seed, q)``); validation and test labels stay clean. A model that uses
gender words to predict ``y`` therefore has a bias graded by ``q``. Each ``q`` in ``levels`` is
trained with each architecture in ``architectures`` (default 5 × 2 = 10 classifiers).

For each classifier, on the clean test split:

- extrinsic: group metrics by gender (``female`` vs ``male``; accuracy, TPR, FPR, selection rate,
  their differences with bootstrap intervals), AUC bias (Subgroup/BPSN/BNSP AUC of each gender
  subgroup, ``M_{-5}``), counterfactual token fairness (flip rate, mean total variation; gender
  swaps), APS (prediction sensitivity over pooled input embeddings, the protected-status model
  fitted on the gendered test examples);
- intrinsic: WEAT effect size and permutation p-value of the project's own gender tests
  (``gender-career``, ``gender-math-arts``, ``gender-science-arts``, ``gender-occupations``) on
  the classifier's token encoder (:func:`~trustnlp.fairness.encoders.load_encoder` on the saved
  model; each word pooled alone, mean pooling).

Then across models, for every (intrinsic, extrinsic) pair, Pearson's ``r`` and Spearman's ``rho``
with their two-sided p-values (:func:`scipy.stats.pearsonr`, :func:`scipy.stats.spearmanr`).
``gender-occupations`` is the test whose word lists line up with the evaluation data (the
corpus's stereotyped occupations); the others are not aligned.

**DP's disparate impact** (Bagdasaryan, Poursaeed & Shmatikov, NeurIPS 2019): the pipeline's
``run_train`` on the built-in corpus with ``dp=True`` at each finite ``epsilon`` (and a
non-private run for ``inf``), then per-gender test accuracy with bootstrap intervals and the
accuracy gap.

Results go to ``out/results.json`` (kind ``fairness-graded``): ``rows`` (one per classifier, flat
numbers), ``metrics.correlations`` (one entry per pair) and ``metrics.dp_disparate_impact``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trustnlp.errors import ConfigError, expected
from trustnlp.results import Result, write_result

__all__ = ["EXTRINSIC_KEYS", "GENDER_TESTS", "correlate", "plant_bias", "run_graded_study"]

GENDER_TESTS = ("gender-career", "gender-math-arts", "gender-science-arts", "gender-occupations")
"""The project's own gender association tests (``resources/association_tests.json``)."""
EXTRINSIC_KEYS = ("accuracy_gap", "tpr_gap", "fpr_gap", "selection_rate_gap", "auc_bias_bpsn_min",
                  "counterfactual_flip_rate", "counterfactual_mean_tv", "aps")
"""Per-model extrinsic numbers that are correlated with the intrinsic ones."""
_GROUPS = ("female", "male")


def _binary_splits(n_utterances: int, gender_skew: float, seed: int) -> Any:
    from trustnlp.data.assistant import AssistantConfig, generate_assistant
    from trustnlp.data.dataset import TextDataset

    splits = generate_assistant(AssistantConfig(n_utterances=n_utterances, gender_skew=gender_skew), seed=seed)
    names = list(splits.train.label_names)
    gendered = np.asarray([str(g) != "none" for g in splits.train.column("gender")])
    counts = np.bincount(np.asarray(splits.train.labels)[gendered], minlength=len(names))
    order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))
    positive = {names[i] for i in order[0::2]}  # alternate by gendered count: both classes get gendered examples

    def binarise(ds: Any) -> Any:
        y = np.asarray([int(names[i] in positive) for i in ds.labels])
        return TextDataset(list(ds.texts), y, label_names=("other", "positive"), columns=dict(ds.columns),
                           protected=ds.protected, meta=ds.meta)

    return {name: binarise(ds) for name, ds in splits.items()}, sorted(positive)


def plant_bias(labels: Any, gender: Any, q: float, *, seed: int) -> np.ndarray:
    """Labels with a planted gender dependence: a uniformly chosen share ``q`` (rounded) of the
    ``female``/``male`` examples gets label 1 (female) or 0 (male); other examples are kept."""
    if not (isinstance(q, (int, float)) and 0.0 <= q <= 1.0):
        raise ConfigError(expected("q", "in [0, 1]", q))
    y = np.asarray(labels).copy()
    g = np.asarray([str(v) for v in gender])
    idx = np.flatnonzero(np.isin(g, _GROUPS))
    rng = np.random.default_rng([seed, round(q * 1e6)])
    chosen = rng.choice(idx, size=int(round(q * len(idx))), replace=False) if len(idx) else idx
    y[chosen] = (g[chosen] == "female").astype(y.dtype)
    return y


def _train(arch: str, train: Any, val: Any, *, epochs: int, seed: int, out: Path) -> Path:
    from trustnlp.config import TrainConfig
    from trustnlp.data.tokenizers import minilm_tokenizer
    from trustnlp.models import build_model
    from trustnlp.models.io import save_model
    from trustnlp.tasks import make_task
    from trustnlp.train import fit

    torch.manual_seed(seed)
    tok = minilm_tokenizer()
    task = make_task("classify", num_labels=2)
    max_length = 48
    enc_train = task.encode(train, tok, max_length=max_length)
    enc_val = task.encode(val, tok, max_length=max_length)
    model = build_model(arch, vocab_size=tok.vocab_size, num_labels=2, pad_id=tok.pad_id)
    cfg = TrainConfig(model=arch, epochs=epochs, batch_size=32, seed=seed, device="cpu", eval_every=0)
    fit(model, task, enc_train, config=cfg, validation=enc_val, progress=False)
    save_model(model.cpu(), out, tokenizer=tok, label_names=train.label_names, task="classify",
               extra={"data": "assistant-binary", "max_length": max_length, "seed": seed})
    return out


def _predict_proba(model: Any, tok: Any, max_length: int, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok.encode(list(texts[i : i + batch_size]), max_length=max_length)
            logits = model(enc.input_ids, enc.attention_mask)
            logits = logits[0] if isinstance(logits, tuple) else logits
            out.append(torch.softmax(logits.double(), -1).numpy())
    return np.concatenate(out)


def _extrinsic(model_dir: Path, test: Any, *, n_bootstrap: int, seed: int) -> dict[str, Any]:
    from trustnlp.fairness.auc_bias import auc_bias
    from trustnlp.fairness.counterfactual import counterfactual_token_fairness, load_gender_swaps
    from trustnlp.fairness.extrinsic import group_metrics
    from trustnlp.fairness.sensitivity import (
        fit_protected_status,
        pooled_input_embeddings,
        text_prediction_sensitivity,
    )
    from trustnlp.models.io import load_model

    saved = load_model(model_dir)
    model, tok = saved.model.eval(), saved.tokenizer
    max_length = int(saved.extra["max_length"])
    texts, y = list(test.texts), np.asarray(test.labels)
    gender = np.asarray([str(v) for v in test.column("gender")])
    probs = _predict_proba(model, tok, max_length, texts)
    pred = probs.argmax(1)
    keep = np.isin(gender, _GROUPS)
    gm = group_metrics(y[keep], pred[keep], sensitive_features=gender[keep], groups=_GROUPS,
                       metrics=("accuracy", "selection_rate", "tpr", "fpr"), n_bootstrap=n_bootstrap, seed=seed)
    ab = auc_bias(y.astype(bool), probs[:, 1], subgroups={g: gender == g for g in _GROUPS})
    cf = counterfactual_token_fairness(lambda t: _predict_proba(model, tok, max_length, t), texts,
                                       swaps=load_gender_swaps(), sensitive_features=gender)
    feats = pooled_input_embeddings(model, tok, texts, max_length=max_length)
    psm = fit_protected_status(feats[keep], gender[keep], feature_space="pooled input embeddings")
    sens = text_prediction_sensitivity(model, tok, texts, gender, protected_model=psm, max_length=max_length)
    bpsn = [ab.per_subgroup[g].get("bpsn_auc") for g in _GROUPS if g in ab.per_subgroup]
    bpsn = [v for v in bpsn if v is not None]
    flat = {
        "accuracy": float((pred == y).mean()),
        "accuracy_gap": gm.difference.get("accuracy"),
        "tpr_gap": gm.difference.get("tpr"),
        "fpr_gap": gm.difference.get("fpr"),
        "selection_rate_gap": gm.difference.get("selection_rate"),
        "auc_bias_bpsn_min": min(bpsn) if bpsn else None,
        "counterfactual_flip_rate": cf.flip_rate,
        "counterfactual_mean_tv": cf.mean_tv,
        "aps": sens.aps,
    }
    for g in _GROUPS:
        for m in ("accuracy", "tpr", "fpr"):
            flat[f"{m}_{g}"] = gm.by_group[g].get(m)
    detail = {"group_metrics": gm.to_dict(), "auc_bias": ab.to_dict(), "counterfactual": cf.to_dict(),
              "sensitivity": {k: v for k, v in sens.to_dict().items() if k != "protected_model"}}
    return {"flat": flat, "detail": detail}


def _intrinsic(model_dir: Path, tests: Sequence[str], *, n_permutations: int, seed: int) -> dict[str, Any]:
    from trustnlp.fairness.association_tests import builtin_tests
    from trustnlp.fairness.encoders import load_encoder
    from trustnlp.fairness.intrinsic import weat

    enc = load_encoder(model_dir)
    own = builtin_tests()
    out: dict[str, Any] = {}
    for name in tests:
        t = own[name]
        e = {k: enc.words(ws.examples, representation="pooled") for k, ws in t.sets.items()}
        r = weat(e["X"], e["Y"], e["A"], e["B"], test=name, n_samples=n_permutations, seed=seed,
                 categories=t.categories())
        out[f"weat_{name}"] = r.effect_size
        out[f"weat_{name}_p"] = r.p_value
    ds = [out[f"weat_{n}"] for n in tests]
    out["weat_mean_abs"] = float(np.mean(np.abs(ds)))
    return out


def correlate(xs: Sequence[float | None], ys: Sequence[float | None]) -> dict[str, Any]:
    """Pearson and Spearman correlation (two-sided p-values, scipy) over the pairs where both are
    defined; ``None`` with a ``reason`` when fewer than 3 pairs remain or either side is constant."""
    from scipy import stats

    pairs = [(float(x), float(y)) for x, y in zip(xs, ys)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    out: dict[str, Any] = {"n": len(pairs), "pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None}
    if len(pairs) < 3:
        return {**out, "reason": f"{len(pairs)} model(s) with both values defined; need at least 3"}
    a, b = np.asarray(pairs).T
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return {**out, "reason": "one of the two metrics is constant across models"}
    pr, sr = stats.pearsonr(a, b), stats.spearmanr(a, b)
    return {**out, "pearson": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman": float(sr.statistic), "spearman_p": float(sr.pvalue)}


def disparate_impact_row(model_dir: str | Path, data: Any, *, epsilon: float | None, seed: int = 0,
                         n_bootstrap: int = 200, test_accuracy: float | None = None,
                         achieved_epsilon: float | None = None) -> dict[str, Any]:
    """Per-gender test accuracy of one saved classifier (one row of ``dp_disparate_impact``).

    Bagdasaryan, Poursaeed & Shmatikov (NeurIPS 2019): DP-SGD costs under-represented groups more accuracy.
    ``data`` is a :class:`~trustnlp.config.DataConfig` whose test split has a ``gender`` column; ``epsilon``
    the target budget of the run (``None`` = non-private). The row holds the accuracy per group with
    percentile bootstrap intervals (resampled within groups), the group counts and the largest
    difference between groups (fairlearn's ``difference``).
    """
    from trustnlp.fairness.extrinsic import group_metrics
    from trustnlp.models.io import load_model
    from trustnlp.pipeline import load_splits

    saved = load_model(Path(model_dir))
    test = load_splits(data, seed=seed).test
    if "gender" not in test.columns:
        raise ConfigError(expected("data", "a data set whose test split has a `gender` column",
                                          str(getattr(data, "data", data))))
    probs = _predict_proba(saved.model.eval(), saved.tokenizer, int(saved.extra["max_length"]), list(test.texts))
    gender = np.asarray([str(v) for v in test.column("gender")])
    gm = group_metrics(np.asarray(test.labels), probs.argmax(1), sensitive_features=gender,
                       metrics=("accuracy",), n_bootstrap=n_bootstrap, seed=seed)
    iv = gm.intervals.get("accuracy", {})
    return {"epsilon": epsilon, "private": epsilon is not None,
            "achieved_epsilon": achieved_epsilon, "test_accuracy": test_accuracy,
            "accuracy_by_group": dict((g, v.get("accuracy")) for g, v in gm.by_group.items()),
            "accuracy_interval_by_group": {g: (list(iv[f"group:{g}"]) if iv.get(f"group:{g}") is not None
                                               else None) for g in gm.groups},
            "counts": dict(gm.counts), "accuracy_gap": gm.difference.get("accuracy")}


def _dp_disparate_impact(epsilons: Sequence[float], *, arch: str, n_utterances: int, epochs: int, batch_size: int,
                         lr: float, n_bootstrap: int, seed: int, out: Path) -> list[dict[str, Any]]:
    from trustnlp.config import TrainConfig
    from trustnlp.pipeline import run_train

    rows = []
    for eps in epsilons:
        private = math.isfinite(eps)
        cfg = TrainConfig(data="assistant", corpus_size=n_utterances, model=arch, epochs=epochs, batch_size=batch_size,
                          lr=lr, seed=seed, device="cpu", eval_every=0, dp=private, epsilon=eps if private else None)
        run_dir = out / f"dp-eps-{eps:g}"
        res = run_train(cfg, run_dir, progress=False)
        rows.append(disparate_impact_row(run_dir / "model", cfg, epsilon=eps if private else None, seed=seed,
                                         n_bootstrap=n_bootstrap, test_accuracy=res.metrics.get("test_accuracy"),
                                         achieved_epsilon=res.metrics.get("epsilon")))
    return rows


def run_graded_study(
    out: str | Path | None = None,
    *,
    levels: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.45),
    architectures: Sequence[str] = ("bag", "cnn"),
    n_utterances: int = 3000,
    gender_skew: float = 0.5,
    epochs: int = 3,
    tests: Sequence[str] = GENDER_TESTS,
    n_permutations: int = 2000,
    n_bootstrap: int = 200,
    dp_epsilons: Sequence[float] = (1.0, 8.0, math.inf),
    dp_architecture: str = "bag",
    dp_epochs: int = 10,
    dp_batch_size: int = 256,
    dp_lr: float = 0.05,
    seed: int = 0,
) -> Result:
    """Run the graded-bias study and the DP disparate-impact comparison (module docs).

    Args:
        out: folder for ``results.json`` and the trained models (``None``: a temporary folder,
            nothing written).
        levels: planted-bias shares ``q`` in [0, 1]; architectures: ``trustnlp.models`` names.
            ``len(levels) * len(architectures)`` classifiers are trained.
        n_utterances / gender_skew: the generated corpus (its size; how often stereotyped
            professions get the stereotyped gender). epochs: training epochs per classifier.
        tests: the project's own association tests run on each encoder.
        n_permutations / n_bootstrap: WEAT permutation partitions; bootstrap replicates.
        dp_epsilons: epsilons of the DP runs (``math.inf``: non-private); empty to skip.
        dp_architecture / dp_epochs / dp_batch_size / dp_lr: the model and training of the DP runs
            (the non-private run uses the same settings; large batches and a high learning rate
            keep DP-SGD from collapsing to the majority class at small epsilon).
        seed: every seeded choice (corpus, planting, training, permutations, bootstrap).
    """
    import tempfile

    from trustnlp.data.dataset import TextDataset
    from trustnlp.fairness.association_tests import builtin_tests

    levels, architectures, tests = tuple(levels), tuple(architectures), tuple(tests)
    if not levels or not architectures:
        raise ConfigError(expected("levels and architectures", "non-empty", (levels, architectures)))
    for q in levels:
        if not (isinstance(q, (int, float)) and 0.0 <= q <= 1.0):
            raise ConfigError(expected("levels", "shares in [0, 1]", levels))
    unknown = [t for t in tests if t not in builtin_tests()]
    if unknown:
        raise ConfigError(expected("tests", f"the project's own tests {sorted(builtin_tests())}", unknown))
    for e in dp_epsilons:
        if not (isinstance(e, (int, float)) and e > 0):
            raise ConfigError(expected("dp_epsilons", "positive numbers (math.inf: non-private)", dp_epsilons))
    config = {"levels": list(levels), "architectures": list(architectures), "n_utterances": n_utterances,
              "gender_skew": gender_skew, "epochs": epochs, "tests": list(tests), "n_permutations": n_permutations,
              "n_bootstrap": n_bootstrap, "dp_epsilons": [e if math.isfinite(e) else None for e in dp_epsilons],
              "dp_architecture": dp_architecture, "dp_epochs": dp_epochs, "dp_batch_size": dp_batch_size,
              "dp_lr": dp_lr, "seed": seed}
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory() if out is None else None
    root = Path(tmp.name) if tmp is not None else Path(out)  # type: ignore[arg-type]
    try:
        splits, positive = _binary_splits(n_utterances, gender_skew, seed)
        train = splits["train"]
        rows: list[dict[str, Any]] = []
        details: dict[str, Any] = {}
        for arch in architectures:
            for q in levels:
                y = plant_bias(train.labels, train.column("gender"), q, seed=seed)
                biased = TextDataset(list(train.texts), y, label_names=train.label_names, columns=dict(train.columns),
                                     protected=train.protected, meta=train.meta)
                name = f"{arch}-q{q:g}"
                model_dir = _train(arch, biased, splits["validation"], epochs=epochs, seed=seed,
                                   out=root / "models" / name)
                ex = _extrinsic(model_dir, splits["test"], n_bootstrap=n_bootstrap, seed=seed)
                intr = _intrinsic(model_dir, tests, n_permutations=n_permutations, seed=seed)
                rows.append({"model": name, "architecture": arch, "planted_bias": q, **ex["flat"], **intr})
                details[name] = ex["detail"]
        intrinsic_keys = [f"weat_{t}" for t in tests] + ["weat_mean_abs"]
        correlations = [{"intrinsic": i, "extrinsic": e, **correlate([r[i] for r in rows], [r[e] for r in rows])}
                        for i in intrinsic_keys for e in EXTRINSIC_KEYS]
        planted = [{"intrinsic": "planted_bias", "extrinsic": e,
                    **correlate([r["planted_bias"] for r in rows], [r[e] for r in rows])}
                   for e in (*EXTRINSIC_KEYS, *intrinsic_keys)]
        dp_rows = _dp_disparate_impact(dp_epsilons, arch=dp_architecture, n_utterances=n_utterances, epochs=dp_epochs,
                                       batch_size=dp_batch_size, lr=dp_lr, n_bootstrap=n_bootstrap, seed=seed, out=root / "dp") if dp_epsilons else []
    finally:
        if tmp is not None:
            tmp.cleanup()
    null_reasons = {f"metrics.correlations[{k}]": c["reason"] for k, c in enumerate(correlations) if c.get("reason")}
    for i, r in enumerate(rows):
        null_reasons.update({f"rows[{i}].{k}": "undefined for this model (see metrics.details)"
                             for k, v in r.items() if v is None})
    for i, r in enumerate(dp_rows):
        if r["epsilon"] is None:
            null_reasons[f"metrics.dp_disparate_impact[{i}].epsilon"] = "non-private run (epsilon is infinite)"
    metrics = {"correlations": correlations, "planted_bias_correlations": planted, "dp_disparate_impact": dp_rows,
               "details": details, "positive_intents": positive, "n_models": len(rows),
               "seconds": time.perf_counter() - t0}
    result = Result(kind="fairness-graded", config=config, seed=seed,
                    data={"name": "assistant", "n_utterances": n_utterances, "gender_skew": gender_skew,
                          "task": "binary: every other intent by gendered count (metrics.positive_intents) vs the rest",
                          "n_train": len(train), "n_test": len(splits["test"])},
                    metrics=metrics, rows=rows, null_reasons=null_reasons)
    if out is not None:
        write_result(result, Path(out) / "results.json")
    return result
