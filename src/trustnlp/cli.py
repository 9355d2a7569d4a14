"""The `trustnlp` command line (typer).

One vocabulary of options for every command: ``--data``, ``--task``, ``--model``, ``--out``,
``--seed``, ``--epsilon`` (one target) and ``--epsilons`` (a comma-separated list, ``inf`` =
non-private). Every command's ``--help`` has a paragraph on what it does and an ``Examples:``
epilog of runnable command lines (``tests/test_cli_consistency.py`` parses each one).

Errors are one line on stderr with exit code 2, never a traceback: an unknown option or a value of
the wrong type (click's usage errors), a value the configuration rejects (pydantic, rendered with the
option's name), ``--out`` naming an existing file, and every error trustnlp raises on purpose
(:class:`trustnlp.errors.TrustNLPError`).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from trustnlp.errors import ConfigError, TrustNLPError, expected

__all__ = ["SHARED_OPTIONS", "app", "format_options_error", "main"]

#: The shared option vocabulary: every command that has the concept uses exactly this spelling.
SHARED_OPTIONS = ("--data", "--task", "--model", "--out", "--seed", "--epsilon", "--epsilons")


def _examples(*lines: str) -> str:
    """The ``Examples:`` epilog of a command: one runnable command line per paragraph (typer's rich help
    joins the lines of a paragraph, so each example stays one line)."""
    return "\n\n".join(["Examples:", *lines])


app = typer.Typer(
    name="trustnlp",
    help="Trustworthy NLP: private training, privacy audits, federated learning and fairness for text models.",
    epilog=_examples("trustnlp demo --out runs/demo", "trustnlp train --data assistant --dp --epsilon 3 --out runs/dp",
                     "trustnlp report runs/ --out runs/report"),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True)

# -- the shared option vocabulary ------------------------------------------------------------------
DataOpt = Annotated[str, typer.Option("--data", help="assistant (= builtin), clinc150, snips, snips-original, "
                                      "tinyshakespeare (= shakespeare), a CSV/JSONL file or folder, or hf:NAME.")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Where named data sets are looked up first "
                                                  "(then $TRUSTNLP_DATA_DIR, then ../shared/data).")]
TaskOpt = Annotated[str, typer.Option("--task", help="classify | tag (intent + slots) | lm")]
ModelOpt = Annotated[str, typer.Option("--model", help="bag | cnn | lstm | transformer | minilm | joint | lm, "
                                       "or a saved model directory.")]


def _out_dir(value: Path | None) -> Path | None:
    """``--out`` callback: the output directory may be missing (it is created) but must not be a file."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"expected a directory (created if missing), but {str(value)!r} is an existing file.")
    return value


OutOpt = Annotated[Path, typer.Option("--out", callback=_out_dir,
                                      help="Output directory (results.json, model/, figures); created if missing.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random choice; recorded in the results.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML/JSON config file; CLI options override it.")]
EpsilonOpt = Annotated[float | None, typer.Option("--epsilon", help="Target epsilon of one private run (with --dp).")]
CorpusSizeOpt = Annotated[int | None, typer.Option("--corpus-size", help="Built-in corpus: number of utterances.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


def _error(message: str) -> None:
    """Print ``error: message`` on stderr, unwrapped (one line for a one-line message)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def _fail(message: str) -> None:
    _error(_escape(message))
    raise typer.Exit(code=2)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _command(*examples: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command whose help is its docstring (paragraphs re-flowed so the terminal wraps them)
    with an ``Examples:`` epilog of 1-3 runnable command lines."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        paragraphs = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
        text = "\n\n".join(" ".join(p.split()) for p in paragraphs)
        return app.command(help=text, epilog=_examples(*examples), **kwargs)(fn)

    return register


def _summary(title: str, metrics: dict[str, Any], keys: list[str]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in keys:
        if k in metrics:
            v = metrics[k]
            table.add_row(k, "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
    console.print(table)


@_command("trustnlp train --data assistant --model bag --epochs 3 --out runs/train",
          "trustnlp train --data assistant --dp --epsilon 3 --out runs/train-dp",
          "trustnlp train --data clinc150 --model cnn --seed 1 --out runs/clinc-cnn")
def train(
    data: DataOpt = "assistant",
    task: TaskOpt = "classify",
    model: ModelOpt = "bag",
    out: OutOpt = Path("runs/train"),
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Logical batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: by architecture).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="wordpiece (MiniLM, public) | word")] = None,
    max_length: Annotated[int | None, typer.Option(help="Max tokens per input (default: longest, <= 128).")] = None,
    include_oos: Annotated[bool, typer.Option("--include-oos", help="CLINC150: add the out-of-scope class.")] = False,
    corpus_size: CorpusSizeOpt = None,
    dp: Annotated[bool, typer.Option("--dp", help="Train with DP-SGD (example-level differential privacy).")] = False,
    epsilon: EpsilonOpt = None,
    delta: Annotated[float | None, typer.Option(help="DP delta (default: below 1/n, documented).")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="DP noise multiplier instead of --epsilon.")] = None,
    max_grad_norm: Annotated[str | None, typer.Option(help="DP clipping threshold C (a number), or 'estimate' (a "
                                                  "private quantile of the gradient norms, see --clip-quantile).")] = None,
    clip_quantile: Annotated[float | None, typer.Option(help="DP with --max-grad-norm estimate: the target quantile "
                                                        "(default 0.5).")] = None,
    privacy_unit: Annotated[str | None, typer.Option(help="DP privacy unit: example | user (needs a user_id column).")] = None,
    max_examples_per_user: Annotated[int | None, typer.Option(help="User-level DP: at most this many examples per "
                                                                "user.")] = None,
    noise_schedule: Annotated[str | None, typer.Option(help="DP noise per epoch: constant | exponential:<decay> | "
                                                       "linear:<end_ratio> (calibrated to --epsilon as a whole).")] = None,
    clipping: Annotated[str | None, typer.Option(help="DP clipping: flat | per-layer | automatic")] = None,
    accountant: Annotated[str | None, typer.Option(help="DP accountant: rdp | pld")] = None,
    secure_noise: Annotated[bool, typer.Option("--secure-noise", help="Cryptographically secure DP noise.")] = False,
    trainable: Annotated[str | None, typer.Option(help="MiniLM: full | frozen | last-k | lora (LoRA adapters; "
                                                  "needs the hf extra; rank etc. via model_options in --config)")] = None,
    k: Annotated[int | None, typer.Option(help="MiniLM with --trainable last-k: how many layers.")] = None,
    device: Annotated[str | None, typer.Option(help="auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps")] = None,
    precision: Annotated[str | None, typer.Option(help="32 | bf16 | 16 (fp16, CUDA only): mixed precision "
                                                  "(autocast; weights stay float32)")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a model; write OUT/results.json and OUT/model/ (safetensors + JSON).

    Trains --model on --data (a named data set, or your own CSV/JSONL file or folder) for --task with the
    one training loop: exact resume (the same command again continues from its checkpoint in OUT), a memory
    guard and a progress bar. With --dp it trains with DP-SGD (per-example clipping, Poisson sampling)
    and calibrates the noise so the run spends at most --epsilon; results record the epsilon spent,
    delta and the accounting (docs/privacy.md). OUT/results.json holds the metrics and one row per
    epoch (docs/results.md); OUT/model/ is loaded by `evaluate`, `predict` and `fairness --extrinsic`.
    """
    from trustnlp.config import TrainConfig, load_config
    from trustnlp.pipeline import run_train

    given = {"data": data, "task": task, "model": model, "seed": seed, "data_dir": data_dir, "epochs": epochs,
             "max_steps": max_steps, "batch_size": batch_size, "lr": lr, "tokenizer": tokenizer,
             "max_length": max_length, "include_oos": include_oos or None, "corpus_size": corpus_size,
             "dp": dp or None, "epsilon": epsilon, "delta": delta, "noise_multiplier": noise_multiplier,
             "max_grad_norm": max_grad_norm, "clipping": clipping, "accountant": accountant,
             "clip_quantile": clip_quantile, "privacy_unit": privacy_unit,
             "max_examples_per_user": max_examples_per_user, "noise_schedule": noise_schedule,
             "secure_noise": secure_noise or None, "device": device, "precision": precision}
    ctx = click_context()
    explicit = {k: v for k, v in given.items() if v is not None and (config is None or _is_explicit(ctx, k))}
    options = {}
    if trainable is not None:
        options["trainable"] = trainable
    if k is not None:
        options["k"] = k
    if config is not None:
        cfg = load_config(config, TrainConfig, **explicit)
        if options:
            cfg = cfg.model_copy(update={"model_options": {**cfg.model_options, **options}})
    else:
        cfg = TrainConfig(**explicit, model_options=options)
    result = run_train(cfg, out, progress=not quiet)
    m = result.metrics
    _summary(f"{cfg.model} on {cfg.data} ({cfg.task})", dict(m),
             ["test_accuracy", "test_macro_f1", "test_slot_f1", "test_perplexity", "test_loss", "epochs",
              "seconds_per_epoch", "train_seconds", "num_parameters", "truncated_test", "epsilon", "delta",
              "privacy_unit", "num_users", "noise_multiplier", "max_grad_norm", "sampling_rate", "dp_steps",
              "stopped_early"])
    console.print(f"Results: {out / 'results.json'}   model: {out / 'model'}")


def click_context() -> Any:
    import click

    return click.get_current_context()


def _is_explicit(ctx: Any, name: str) -> bool:
    import click

    src = ctx.get_parameter_source(name)
    return src is not None and src != click.core.ParameterSource.DEFAULT


@_command("trustnlp evaluate --model runs/train/model --data assistant --out runs/eval",
          "trustnlp evaluate --model runs/train/model --split validation")
def evaluate(
    model: ModelOpt,
    data: DataOpt = "assistant",
    out: Annotated[Path | None, typer.Option("--out", callback=_out_dir,
                                             help="Also write OUT/results.json (kind evaluate).")] = None,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    include_oos: Annotated[bool, typer.Option("--include-oos")] = False,
    corpus_size: CorpusSizeOpt = None,
) -> None:
    """Evaluate a saved model (offline) on a data set's split.

    Loads the model directory a `train` or `federate` run saved (OUT/model), scores it on --split of
    --data (the same data set and settings it was trained on, e.g. the same --corpus-size for the
    built-in corpus) and prints the metrics; with --out it also writes OUT/results.json.
    """
    from trustnlp.config import DataConfig
    from trustnlp.pipeline import run_evaluate

    result = run_evaluate(model, DataConfig(data=data, data_dir=data_dir, include_oos=include_oos, corpus_size=corpus_size), out,
                          seed=seed, split=split)
    _summary(f"{model} on {data} ({split})", dict(result.metrics), list(result.metrics))


@_command('trustnlp predict --model runs/train/model "set an alarm for seven am"',
          'trustnlp predict --model runs/train/model --top-k 5 "weather in paris"')
def predict(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to classify.")],
    model: ModelOpt = "runs/train/model",
    top_k: Annotated[int, typer.Option(help="How many labels to show.")] = 3,
) -> None:
    """Predict labels for texts with a saved model (offline).

    Prints one tab-separated line per text: the predicted label, its probability, the text and the
    --top-k most likely labels with their probabilities. Writes nothing, so it takes neither --out
    nor --seed.
    """
    from trustnlp.pipeline import predict as _predict

    for p in _predict(model, texts, top_k=top_k):
        tops = ", ".join(f"{lab} {prob:.3f}" for lab, prob in p.top)
        typer.echo(f"{p.label}\t{p.probability:.3f}\t{p.text}\t[{tops}]")  # tab-separated: easy to parse


@_command("trustnlp audit --epsilons 1,8,inf --shadows 4 --epochs 2 --out runs/audit",
          "trustnlp audit --data clinc150 --model bag --shadows 16 --out runs/audit-clinc",
          "trustnlp audit --config examples/audit/clinc150-bag.yaml --out runs/audit")
def audit(
    data: DataOpt = "assistant",
    model: ModelOpt = "bag",
    epsilons: Annotated[str, typer.Option(help="Comma-separated target epsilons, one row each; inf = non-private.")]
    = "0.5,1,2,4,8,16,inf",
    shadows: Annotated[int | None, typer.Option(help="Shadow models per epsilon (default 16).")] = None,
    out: OutOpt = Path("runs/audit"),
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    attack: Annotated[str | None, typer.Option(help="lira-online | lira-offline | loss | calibrated")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs of every model.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop every model after this many steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Logical batch size (DP: expected batch size).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: by architecture).")] = None,
    delta: Annotated[float | None, typer.Option(help="DP delta of every model and bound (default: below 1/(10 N)).")]
    = None,
    population_size: Annotated[int | None, typer.Option(help="Audit a seeded random subset of the population "
                                                        "(train + validation) of this size.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="wordpiece (MiniLM, public) | word")] = None,
    trainable: Annotated[str | None, typer.Option(help="MiniLM: frozen (heads on features, fast) | full | last-k")]
    = None,
    path: Annotated[str | None, typer.Option(help="Shadow training: auto | plain | features | batched")] = None,
    corpus_size: CorpusSizeOpt = None,
    include_oos: Annotated[bool, typer.Option("--include-oos", help="CLINC150: add the out-of-scope class.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for training.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Membership-inference audit at several epsilons: LiRA with shadow models, empirical epsilon lower bounds.

    For every epsilon of --epsilons (inf: non-private) it trains a target model and --shadows shadow
    models with DP-SGD on random halves of the population, attacks the target (LiRA by default) and
    reports the attack's AUC, its TPR at 0.1% and 1% FPR with Clopper-Pearson intervals, and two
    empirical lower bounds on epsilon. A bound above the claimed epsilon means the privacy guarantee is
    broken: the row is recorded and the command fails. Models and scores are kept in OUT, so the same
    command again reuses them (docs/audit.md).
    """
    from trustnlp.config import load_config
    from trustnlp.privacy.audit_study import AuditConfig, run_audit

    _floats("epsilons", epsilons, allow=("none", "null"))  # the one-line error of privatize/extract
    given = {"data": data, "model": model, "epsilons": epsilons, "shadows": shadows, "seed": seed,
             "data_dir": data_dir, "attack": attack, "epochs": epochs, "max_steps": max_steps,
             "batch_size": batch_size, "lr": lr, "delta": delta, "population_size": population_size,
             "tokenizer": tokenizer, "path": path, "corpus_size": corpus_size, "include_oos": include_oos or None,
             "threads": threads}
    ctx = click_context()
    explicit = {k: v for k, v in given.items() if v is not None and (config is None or _is_explicit(ctx, k))}
    if config is not None:
        cfg = load_config(config, AuditConfig, **explicit)
    else:
        cfg = AuditConfig(**explicit)
    if trainable is not None:
        cfg = AuditConfig(**{**cfg.model_dump(), "model_options": {**cfg.model_options, "trainable": trainable}})
    result = run_audit(cfg, out, progress=not quiet)
    table = Table(title=f"audit: {cfg.attack} on {cfg.model} / {cfg.data} (K={cfg.shadows})")
    for col in ("epsilon", "test acc", "AUC", "TPR@0.1%FPR", "TPR@1%FPR", "eps lower (TPR/FPR)", "eps lower (one run)"):
        table.add_column(col, justify="right")
    for r in result.rows:
        table.add_row("∞" if r["epsilon"] is None else f"{r['epsilon']:g}", f"{r['test_accuracy']:.3f}",
                      f"{r['mia_auc']:.3f}", f"{r['tpr_at_1e-3_fpr']:.4f}", f"{r['tpr_at_1e-2_fpr']:.4f}",
                      f"{r['empirical_epsilon_lower']:.3f}", f"{r['one_run_epsilon_lower']:.3f}")
    console.print(table)
    rho = result.metrics.get("spearman_epsilon_mia_auc")
    console.print(f"Spearman(epsilon, AUC) = {'—' if rho is None else f'{rho:.3f}'}   Results: {out / 'results.json'}")


def _floats(name: str, text: str, allow: tuple[str, ...] = ()) -> list[float]:
    """The comma-separated numbers of option ``name`` (words in ``allow`` are skipped), or a one-line error."""
    try:
        return [float(x) for x in text.split(",") if x.strip() and x.strip().lower() not in allow]
    except ValueError:
        _fail(f"Expected `{name}` to be comma-separated numbers, but got {text!r}.")
        raise


@_command("trustnlp privatize --epsilons 45,90 --mechanisms euclidean --out runs/priv",
          "trustnlp privatize --data clinc150 --model bag --out runs/privatize-clinc")
def privatize(
    data: DataOpt = "assistant",
    mechanisms: Annotated[str, typer.Option(help="Comma-separated: euclidean (Feyisetan et al. 2020) | "
                                            "mahalanobis (Xu et al. 2020).")] = "euclidean,mahalanobis",
    epsilons: Annotated[str, typer.Option(help="Comma-separated metric-DP epsilons (per unit of embedding "
                                          "distance; useful range for MiniLM: tens to hundreds).")]
    = "45,60,75,90,120",
    model: ModelOpt = "bag",
    epochs: Annotated[int | None, typer.Option(help="Epochs of the classifier trained on privatised text.")] = None,
    out: OutOpt = Path("runs/privatize"),
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    corpus_size: CorpusSizeOpt = None,
    include_oos: Annotated[bool, typer.Option("--include-oos", help="CLINC150: add the out-of-scope class.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Rewrite text with metric-DP word replacement, then train a classifier on it (clean test split).

    Each mechanism x epsilon rewrites every training text word by word: a word's public MiniLM embedding
    plus calibrated noise, replaced by the nearest vocabulary word (metric DP: epsilon per unit of
    embedding distance, so useful values are tens to hundreds). It then trains --model on the rewritten
    text and scores it on the clean test split; one row per setting plus a non-private baseline
    (docs/text_privacy.md).
    """
    from trustnlp.config import load_config
    from trustnlp.privacy.text import PrivatizeConfig, run_privatize

    train = {"model": model} | ({"epochs": epochs} if epochs is not None else {})
    given = {"data": data, "mechanisms": [m.strip() for m in mechanisms.split(",") if m.strip()],
             "epsilons": _floats("epsilons", epsilons), "seed": seed, "data_dir": data_dir,
             "corpus_size": corpus_size, "include_oos": include_oos or None}
    ctx = click_context()
    explicit = {k: v for k, v in given.items() if v is not None and (config is None or _is_explicit(ctx, k))}
    if config is None or _is_explicit(ctx, "model") or _is_explicit(ctx, "epochs"):
        explicit["train"] = train
    cfg = load_config(config, PrivatizeConfig, **explicit) if config is not None else PrivatizeConfig(**explicit)
    result = run_privatize(cfg, out, progress=not quiet)
    table = Table(title=f"privatize: {cfg.data} ({', '.join(cfg.mechanisms)})")
    for col in ("mechanism", "epsilon", "words unchanged", "test acc"):
        table.add_column(col, justify="right")
    for r in result.rows:
        eps = "—" if r.get("epsilon") is None else f"{r['epsilon']:g}"
        table.add_row(str(r["mechanism"]), eps, f"{r['words_unchanged']:.3f}", f"{r['test_accuracy']:.3f}")
    console.print(table)
    console.print(f"Results: {out / 'results.json'}")


def _ints(name: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"Expected `{name}` to be comma-separated integers, but got {text!r}.")
        raise


@_command("trustnlp extract --repetitions 1,10 --epsilons 8,inf --out runs/extract",
          "trustnlp extract --model bag --secret words --epochs 2 --out runs/words")
def extract(
    data: DataOpt = "assistant",
    model: Annotated[str, typer.Option("--model", help="Comma-separated: bag | cnn | lstm | transformer | minilm.")]
    = "cnn",
    repetitions: Annotated[str, typer.Option(help="Comma-separated copies r of each canary.")] = "1,10,100",
    epsilons: Annotated[str, typer.Option(help="Comma-separated target epsilons; inf = non-private.")] = "1,8,inf",
    secret: Annotated[str, typer.Option(help="digits (4-digit codes, exhaustive oracle) | words (6 public words)")]
    = "digits",
    n_canaries: Annotated[int | None, typer.Option(help="Canaries per setting (default 100).")] = None,
    defences: Annotated[str | None, typer.Option(help="Comma-separated: none | dropout:P | early-stopping:K "
                                                 "(join with + to combine).")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="wordpiece (MiniLM, public) | word (built-in corpus)")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs of every model.")] = None,
    out: OutOpt = Path("runs/extract"),
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    corpus_size: CorpusSizeOpt = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for training.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """White-box canary extraction (model inversion) per model x repetitions x epsilon.

    Plants canaries (a template with a secret slot, e.g. a 4-digit code) r times each in the training
    data, trains every --model at every epsilon of --epsilons (inf: non-private), then recovers the
    secrets by a relaxed white-box inversion of the model. Reports the exact extraction rate with its
    interval against chance, token accuracy, the secret's rank and exposure, and the group epsilon
    r x epsilon that actually protects a repeated secret (docs/extraction.md).
    """
    from trustnlp.config import load_config
    from trustnlp.privacy.extraction_study import ExtractConfig, run_extract

    given = {"data": data, "models": [m.strip() for m in model.split(",") if m.strip()],
             "repetitions": _ints("repetitions", repetitions), "epsilons": _floats("epsilons", epsilons),
             "secret": secret, "n_canaries": n_canaries,
             "defences": None if defences is None else [d.strip() for d in defences.split(",") if d.strip()],
             "tokenizer": tokenizer, "epochs": epochs, "seed": seed, "data_dir": data_dir,
             "corpus_size": corpus_size, "threads": threads}
    names = {"models": "model"}
    ctx = click_context()
    explicit = {k: v for k, v in given.items()
                if v is not None and (config is None or _is_explicit(ctx, names.get(k, k)))}
    cfg = load_config(config, ExtractConfig, **explicit) if config is not None else ExtractConfig(**explicit)
    result = run_extract(cfg, out, progress=not quiet)
    table = Table(title=f"extract: {cfg.secret} canaries in {cfg.data}")
    for col in ("model", "r", "epsilon", "defence", "extraction", "chance", "token acc", "mean rank", "group eps"):
        table.add_column(col, justify="right")
    for r in result.rows:
        eps = "∞" if r.get("epsilon") is None else f"{r['epsilon']:g}"
        geps = "∞" if r.get("group_epsilon") is None else f"{r['group_epsilon']:g}"
        table.add_row(str(r["model"]), str(r["repetitions"]), eps, str(r.get("defence", "none")),
                      f"{r['extraction_rate']:.3f}", f"{r['chance']:.2g}", f"{r['token_accuracy']:.3f}",
                      f"{r['mean_rank']:.4g}", geps)
    console.print(table)
    console.print(f"Results: {out / 'results.json'}")


@_command("trustnlp fairness --model minilm --tests weat,seat --out runs/fairness",
          "trustnlp fairness --tests weat --names flowers-insects --out runs/weat",
          "trustnlp fairness --model runs/train/model --extrinsic --data assistant")
def fairness(
    model: Annotated[str, typer.Option("--model", help="minilm, a saved trustnlp model directory, or a Hugging "
                                       "Face encoder.")] = "minilm",
    tests: Annotated[str, typer.Option(help="Comma-separated intrinsic tests: weat, seat, ceat, crows.")]
    = "weat,seat",
    names: Annotated[str | None, typer.Option(help="Comma-separated association tests by name (default: all "
                                              "available).")] = None,
    extrinsic: Annotated[bool, typer.Option("--extrinsic", help="Also group metrics, AUC bias and counterfactual "
                                            "fairness of the classifier --model on --data.")] = False,
    data: Annotated[str | None, typer.Option("--data", help="Data set for --extrinsic (e.g. assistant).")] = None,
    protected: Annotated[str | None, typer.Option(help="Protected column for --extrinsic.")] = None,
    pooling: Annotated[str | None, typer.Option(help="Sentence pooling: mean (default) | cls")] = None,
    corpus: Annotated[Path | None, typer.Option(help="CEAT: a text file with one sentence per line "
                                                "(default: BOLD's Wikipedia sentences in ../shared/data).")] = None,
    crows_limit: Annotated[int | None, typer.Option(help="CrowS-Pairs: score only this many pairs.")] = None,
    corpus_size: CorpusSizeOpt = None,
    out: OutOpt = Path("runs/fairness"),
    seed: SeedOpt = 0,
) -> None:
    """Bias of a representation (WEAT/SEAT/CEAT/CrowS) and of a classifier's predictions (--extrinsic).

    Intrinsic tests (--tests) measure associations in the sentence embeddings of --model: effect sizes
    with permutation p-values (WEAT/SEAT), their distribution over contexts (CEAT) and a masked-LM
    preference for stereotypes (CrowS-Pairs). With --extrinsic it also scores a saved classifier on
    --data by group: rate gaps, AUC-based bias and counterfactual token fairness (docs/fairness.md).
    """
    from trustnlp.config import DataConfig
    from trustnlp.fairness.study import run_fairness

    options: dict[str, Any] = {}
    if pooling is not None:
        options["pooling"] = pooling
    data_cfg: Any = None
    if data is not None:
        data_cfg = DataConfig(data=data, corpus_size=corpus_size)
    result = run_fairness(model, out, tests=[t.strip() for t in tests.split(",") if t.strip()],
                          names=None if names is None else [n.strip() for n in names.split(",") if n.strip()],
                          extrinsic=extrinsic, data=data_cfg, protected=protected, corpus=corpus,
                          crows_limit=crows_limit, seed=seed, **options)
    table = Table(title=f"fairness: {model}")
    for col in ("test", "kind", "effect size", "p-value", "pooling"):
        table.add_column(col, justify="right")
    for r in result.rows:
        es, p = r.get("effect_size"), r.get("p_value")
        table.add_row(str(r.get("test")), str(r.get("kind", "")), "—" if es is None else f"{es:+.3f}",
                      "—" if p is None else f"{p:.3g}", str(r.get("pooling", "")))
    console.print(table)
    console.print(f"Results: {out / 'results.json'}")


@_command("trustnlp federate --partition dirichlet:0.5 --rounds 20 --out runs/federate",
          "trustnlp federate --algorithm fedprox --mu 0.01 --out runs/fedprox",
          "trustnlp federate --partition user --client-dp --epsilon 8 --out runs/fed-dp")
def federate(
    data: DataOpt = "assistant",
    task: TaskOpt = "classify",
    model: Annotated[str | None, typer.Option("--model", help="bag | cnn | lstm | transformer | minilm | lm "
                                              "(default: by task).")] = None,
    algorithm: Annotated[str, typer.Option(help="fedavg | fedavgm | fedprox | fedadam | fedyogi | fedadagrad")]
    = "fedavg",
    partition: Annotated[str, typer.Option(help="iid | dirichlet:ALPHA | quantity:BETA | user | cluster:K")] = "iid",
    num_clients: Annotated[int | None, typer.Option(help="Number of clients (user partition: default one per "
                                                    "user).")] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="Clients selected per round.")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round.")] = None,
    local_steps: Annotated[int | None, typer.Option(help="Local steps per round (instead of epochs).")] = None,
    server_lr: Annotated[float | None, typer.Option(help="Server learning rate (default: by algorithm).")] = None,
    mu: Annotated[float | None, typer.Option(help="FedProx proximal weight.")] = None,
    lr: Annotated[float | None, typer.Option(help="Client learning rate (default: by architecture).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Client batch size.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="wordpiece (MiniLM, public) | word")] = None,
    vectorize: Annotated[str | None, typer.Option(help="Batched local training: auto | on | off")] = None,
    selection: Annotated[str | None, typer.Option(help="uniform | activity[:BETA] | power-of-choice[:D] | "
                                                  "availability[:HOURS] | oort")] = None,
    aggregation: Annotated[str | None, typer.Option(help="sample | horvitz-thompson")] = None,
    setting: Annotated[str | None, typer.Option(help="static | continual")] = None,
    periods: Annotated[int | None, typer.Option(help="Continual: time periods.")] = None,
    arrival: Annotated[str | None, typer.Option(help="Continual: auto | timestamp | poisson")] = None,
    retention: Annotated[int | None, typer.Option(help="Continual: periods a device keeps an example.")] = None,
    storage: Annotated[int | None, typer.Option(help="Continual: examples a device holds at most.")] = None,
    deletion: Annotated[str | None, typer.Option(help="Continual: fifo | random")] = None,
    replay: Annotated[int | None, typer.Option(help="Continual: replay buffer of deleted examples.")] = None,
    client_dp: Annotated[bool | None, typer.Option("--client-dp", help="Client-level DP (DP-FedAvg).")] = None,
    epsilon: Annotated[float | None, typer.Option(help="Client DP: target epsilon.")] = None,
    delta: Annotated[float | None, typer.Option(help="Client DP: delta (default below 1/clients).")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help="Client DP: noise multiplier instead of --epsilon.")]
    = None,
    clip_norm: Annotated[float | None, typer.Option(help="Client DP: update clip norm (initial, if adaptive).")] = None,
    adaptive_clip: Annotated[bool | None, typer.Option("--adaptive-clip", help="Client DP: adaptive clipping.")] = None,
    secure_aggregation: Annotated[bool | None, typer.Option("--secure-aggregation", help="Secure aggregation.")] = None,
    robust: Annotated[str | None, typer.Option(help="mean | median | trimmed-mean:BETA | krum:F | multi-krum:F:M")]
    = None,
    max_update_norm: Annotated[float | None, typer.Option(help="Reject updates with a larger delta norm.")] = None,
    faulty_fraction: Annotated[float | None, typer.Option(help="Fraction of each round's clients that are faulty.")]
    = None,
    fault: Annotated[str | None, typer.Option(help="nan | scale:K | signflip | dropout")] = None,
    deadline: Annotated[float | None, typer.Option(help="Round deadline in simulated time units.")] = None,
    out: OutOpt = Path("runs/federate"),
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    corpus_size: CorpusSizeOpt = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Federated training on simulated devices that keep their text; per-round metrics and the model.

    Splits --data over clients by --partition (iid, label skew, quantity skew, one client per user),
    then every round selects clients (--selection), trains each locally from the global model and
    aggregates the updates with --algorithm (FedAvg, FedProx, FedOpt). Options add client-level DP
    (--client-dp with --epsilon), secure aggregation, robust aggregation with fault injection and
    continual data. Writes one row per round, OUT/partition.json and OUT/model/ (docs/federated.md).
    """
    from trustnlp.config import load_config
    from trustnlp.federated.config import FederatedConfig
    from trustnlp.federated.study import run_federated

    given = {"data": data, "task": task, "model": model, "algorithm": algorithm, "partition": partition,
             "num_clients": num_clients, "clients_per_round": clients_per_round, "local_epochs": local_epochs,
             "local_steps": local_steps, "server_lr": server_lr, "mu": mu, "lr": lr, "batch_size": batch_size,
             "rounds": rounds, "tokenizer": tokenizer, "vectorize": vectorize, "seed": seed, "data_dir": data_dir,
             "corpus_size": corpus_size, "threads": threads, "selection": selection, "aggregation": aggregation,
             "setting": setting, "periods": periods, "arrival": arrival, "retention": retention, "storage": storage,
             "deletion": deletion, "replay": replay, "client_dp": client_dp, "epsilon": epsilon, "delta": delta,
             "noise_multiplier": noise_multiplier, "clip_norm": clip_norm, "adaptive_clip": adaptive_clip,
             "secure_aggregation": secure_aggregation, "robust": robust, "max_update_norm": max_update_norm,
             "faulty_fraction": faulty_fraction, "fault": fault, "deadline": deadline}
    ctx = click_context()
    explicit = {k: v for k, v in given.items() if v is not None and (config is None or _is_explicit(ctx, k))}
    cfg = load_config(config, FederatedConfig, **explicit) if config is not None else FederatedConfig(**explicit)
    result = run_federated(cfg, out, progress=not quiet)
    keys = [k for k in ("test_accuracy", "test_macro_f1", "test_slot_f1", "test_perplexity", "clients_accuracy_mean",
                        "clients_accuracy_p10", "future_accuracy_mean_over_periods", "future_perplexity_mean_over_periods",
                        "epsilon", "delta", "rejected_updates", "dropped_updates",
                        "rounds", "client_updates_per_second") if k in result.metrics and result.metrics[k] is not None]
    _summary(f"federate: {cfg.algorithm} on {cfg.data} ({cfg.partition})", result.metrics, keys)
    console.print(f"Results: {out / 'results.json'}")


@_command("trustnlp cda --data assistant --mode two-sided --out runs/cda",
          "trustnlp cda --mode one-sided --seed 1 --out runs/cda-one-sided")
def cda(
    data: DataOpt = "assistant",
    mode: Annotated[str, typer.Option(help="two-sided (add the gender-swapped copy of every gendered text) | "
                                      "one-sided (replace each gendered text by its swap with probability 1/2)")]
    = "two-sided",
    her_rule: Annotated[str, typer.Option(help="The 'her' -> his/him rule: heuristic | pos (needs nltk or spaCy)")]
    = "heuristic",
    out: OutOpt = Path("runs/cda"),
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    corpus_size: CorpusSizeOpt = None,
) -> None:
    """Counterfactual data augmentation of a training split (gender swaps); writes train_cda.jsonl.

    Every gendered word of the training texts of --data is swapped with its counterpart (he/she,
    his/her, man/woman, ...), either adding the swapped copy (two-sided) or replacing the text by it
    with probability 1/2 (one-sided). Writes OUT/train_cda.jsonl (the augmented training split) and
    OUT/results.json with the counts and the swap accuracy on a gold set (docs/fairness.md).
    """
    from trustnlp.config import load_config
    from trustnlp.fairness.mitigation import CDAConfig, run_cda

    given = {"data": data, "mode": mode, "her_rule": her_rule, "seed": seed, "data_dir": data_dir,
             "corpus_size": corpus_size}
    ctx = click_context()
    explicit = {k: v for k, v in given.items() if v is not None and (config is None or _is_explicit(ctx, k))}
    cfg = load_config(config, CDAConfig, **explicit) if config is not None else CDAConfig(**explicit)
    result = run_cda(cfg, out)
    keys = [k for k in ("n_before", "n_after", "n_gendered", "gendered_share", "swaps_per_gendered_text", "n_ambiguous",
                        "swap_accuracy") if k in result.metrics]
    _summary(f"cda: {cfg.mode} on {cfg.data}", result.metrics, keys)
    console.print(f"Augmented training set: {out / 'train_cda.jsonl'}   results: {out / 'results.json'}")


@_command("trustnlp distill --mitigation both --student-config small --out runs/distill",
          "trustnlp distill --mitigation none --student-config tiny --out runs/distill-0")
def distill(
    teacher: Annotated[str, typer.Option(help="local (trained here on BOLD + the built-in corpus) | gpt2 | hf:NAME | "
                                         "a saved trustnlp lm directory")] = "local",
    student_config: Annotated[str, typer.Option("--student-config", help="Student size: small | tiny")] = "small",
    mitigation: Annotated[str, typer.Option(help="none | cda | perturb | both")] = "none",
    combine: Annotated[str | None, typer.Option(help="perturb: mean | max | expmean | replace")] = None,
    teacher_dir: Annotated[Path | None, typer.Option(help="Cache of the local teacher (default OUT/teacher).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Student epochs.")] = None,
    scorer: Annotated[list[str] | None, typer.Option(
        "--scorer", help="NAME=package.module:function (repeatable): your own scorer of the continuations "
                         "(regard, toxicity, ...), texts in, one number per text out; reported as NAME_disparity")
    ] = None,
    out: OutOpt = Path("runs/distill"),
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Distil a causal LM into a smaller student and score the gender disparity of its generations.

    Trains a student language model on the teacher's next-token distributions, optionally with
    counterfactual role reversal (--mitigation cda: gender-swapped training text; perturb: the teacher's
    distributions over swapped contexts combined by --combine; both). Then scores the student's
    generations: the gender polarity disparity of continuations of gender-neutral profession prompts
    (with a bootstrap interval), and its perplexity (docs/fairness.md).
    """
    from trustnlp.config import load_config
    from trustnlp.fairness.generation import DistillConfig, run_distill

    scorers = None
    if scorer:
        scorers = {}
        for item in scorer:
            name, sep, spec = item.partition("=")
            if not sep or not name or not spec:
                raise ConfigError(expected("--scorer", "NAME=package.module:function", item))
            scorers[name] = spec
    given = {"teacher": teacher, "student": student_config, "mitigation": mitigation, "combine": combine,
             "teacher_dir": str(teacher_dir) if teacher_dir else None, "epochs": epochs, "seed": seed,
             "data_dir": data_dir, "scorers": scorers, "progress": not quiet}
    ctx = click_context()
    names = {"student": "student_config"}
    explicit = {k: v for k, v in given.items()
                if v is not None and (config is None or k == "progress" or _is_explicit(ctx, names.get(k, k)))}
    cfg = load_config(config, DistillConfig, **explicit) if config is not None else DistillConfig(**explicit)
    result = run_distill(cfg, out)
    shown = dict(result.metrics)
    ci = shown.get("gender_disparity_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        shown["gender_disparity_ci95_low"], shown["gender_disparity_ci95_high"] = ci
    keys = [k for k in ("gender_disparity", "gender_disparity_ci95_low", "gender_disparity_ci95_high",
                        "gender_disparity_null", "gender_polarity_skew", "gendered_share", "sentiment_disparity",
                        "perplexity", "kl_to_teacher", *(f"{n}_disparity" for n in cfg.scorers))
            if shown.get(k) is not None]
    _summary(f"distill: {cfg.mitigation}", shown, keys)
    console.print(f"Results: {out / 'results.json'}")


@_command("trustnlp report runs/ --out runs/report",
          'trustnlp report runs/audit runs/federate --title "privacy" --out runs/rep')
def report(
    paths: Annotated[list[Path], typer.Argument(help="Results files or directories (searched for results.json).")],
    out: OutOpt = Path("runs/report"),
    title: Annotated[str, typer.Option(help="Report title.")] = "trustnlp report",
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="Do not redact secrets.")] = False,
) -> None:
    """Render every result found into OUT/report.html (figures embedded and saved as files).

    Searches the given files and folders for results.json files, and renders one self-contained HTML
    page: an overview (with the privacy-utility plot when there are private and non-private runs), then
    per result its configuration, data provenance, metrics and plots; the plots are also written to
    OUT/figures/ as PNG and SVG. Canary secrets are redacted unless --show-secrets. Rendering makes no
    random choice, so it takes no --seed.
    """
    from trustnlp.report import render_report

    rep = render_report(paths, out, title=title, show_secrets=show_secrets)
    console.print(f"Report: {rep.html_path} ({len(rep.results)} result(s), {len(rep.figures)} figure file(s))")


@_command("trustnlp demo --out runs/demo",
          "trustnlp demo --corpus-size 1000 --quiet --out runs/demo-small")
def demo(
    out: OutOpt = Path("runs/demo"),
    seed: SeedOpt = 0,
    quiet: QuietOpt = False,
    full: Annotated[bool, typer.Option("--full", help="The studies' larger settings (more shadows, canaries, "
                                       "rounds, epochs; longer budgets).")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="YAML file: a list of stage names, or of "
                                                "{name, options, budget} to override a stage's options.")] = None,
    corpus_size: CorpusSizeOpt = None,
) -> None:
    """The main job on the built-in assistant corpus, every pillar in one run, with one report.

    Runs train (private and not), audit, extract, federate, fairness and CDA on the generated assistant
    corpus, each stage with a time budget and its own OUT/<stage>/results.json, then prints one summary
    table and writes OUT/report.html. --full uses the studies' larger settings; --config picks stages
    and overrides their options. `make demo` runs this command.
    """
    from trustnlp.demo import load_demo_config, run_demo

    stages = load_demo_config(config, full=full) if config is not None else None
    run_demo(out, seed=seed, progress=not quiet, console=console, corpus_size=corpus_size, stages=stages, full=full)


#: Configuration fields whose command-line option has another name.
_FIELD_OPTIONS = {"models": "model", "student": "student_config"}


def _option_names(argv: list[str]) -> dict[str, str]:
    """``{parameter name: --option}`` of the subcommand ``argv`` invokes (empty when there is none)."""
    group = typer.main.get_command(app)
    name = next((a for a in argv if not a.startswith("-")), None)
    command = getattr(group, "commands", {}).get(name) if name else None
    if command is None:
        return {}
    return {p.name: p.opts[0] for p in command.params if isinstance(p, click.Option) and p.name and p.opts}


def format_options_error(err: ValidationError, argv: list[str]) -> str:
    """One line for a configuration the options built and pydantic rejected, naming each field by the
    option that sets it (``--epsilon``, ``--epsilons (item 2)``), in the house phrasing."""
    options = _option_names(argv)
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        msg = str(e["msg"]).removeprefix("Value error, ")
        if not loc:  # a rule across several fields
            parts.append(msg.rstrip(".") + ".")
            continue
        field = _FIELD_OPTIONS.get(loc[0], loc[0])
        name = options.get(field, ".".join(loc))
        if field in options and len(loc) > 1:
            name += " (item " + ", ".join(str(int(x) + 1) if x.isdigit() else x for x in loc[1:]) + ")"
        parts.append(f"Expected `{name}` to satisfy: {msg}, but got {e.get('input')!r}.")
    return "Invalid options: " + " ".join(parts)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; every error a user can cause is one line on stderr and exit code 2.

    Usage errors (unknown option, missing or badly typed value: click), rejected configurations (pydantic)
    and trustnlp's own errors are turned into ``error: <message>`` without a traceback; anything else is
    a bug and keeps its traceback.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="trustnlp", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # the help was printed already
        sys.exit(e.exit_code)
    except click.UsageError as e:
        where = f"{e.ctx.command_path}: " if e.ctx is not None and e.ctx.command_path != "trustnlp" else ""
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        _error(_escape(where + " ".join(e.format_message().split()) + hint))
        sys.exit(2)
    except click.ClickException as e:
        _error(_escape(e.format_message()))
        sys.exit(e.exit_code)
    except click.Abort:
        _error("aborted.")
        sys.exit(1)
    except TrustNLPError as e:
        _error(_escape(str(e)))
        sys.exit(2)
    except ValidationError as e:
        _error(_escape(format_options_error(e, args)))
        sys.exit(2)
    if isinstance(code, int) and code != 0:  # typer.Exit(code) from a command, e.g. _fail
        sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
