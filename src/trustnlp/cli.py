"""The `trustnlp` command line (typer).

One vocabulary of options for every command: ``--data``, ``--task``, ``--model``, ``--out``,
``--seed`` (and, as privacy lands, ``--epsilon`` / ``--epsilons``). Errors trustnlp raises on
purpose are printed as one clear message (exit code 2), never as a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from trustnlp.errors import TrustNLPError

__all__ = ["app", "main"]

app = typer.Typer(
    name="trustnlp",
    help="Trustworthy NLP: private training, privacy audits, federated learning and fairness for text models.",
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
OutOpt = Annotated[Path, typer.Option("--out", help="Output directory (results.json, model/, figures).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random choice; recorded in the results.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML/JSON config file; CLI options override it.")]
EpsilonOpt = Annotated[float | None, typer.Option("--epsilon", help="Target epsilon of one private run (with --dp).")]
CorpusSizeOpt = Annotated[int | None, typer.Option("--corpus-size", help="Built-in corpus: number of utterances.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def _summary(title: str, metrics: dict[str, Any], keys: list[str]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in keys:
        if k in metrics:
            v = metrics[k]
            table.add_row(k, "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
    console.print(table)


@app.command()
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
    """Train a model; write OUT/results.json and OUT/model/ (safetensors + JSON)."""
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


@app.command()
def evaluate(
    model: ModelOpt,
    data: DataOpt = "assistant",
    out: Annotated[Path | None, typer.Option("--out", help="Write OUT/results.json too.")] = None,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    include_oos: Annotated[bool, typer.Option("--include-oos")] = False,
    corpus_size: CorpusSizeOpt = None,
) -> None:
    """Evaluate a saved model (offline) on a data set's split."""
    from trustnlp.config import DataConfig
    from trustnlp.pipeline import run_evaluate

    result = run_evaluate(model, DataConfig(data=data, data_dir=data_dir, include_oos=include_oos, corpus_size=corpus_size), out,
                          seed=seed, split=split)
    _summary(f"{model} on {data} ({split})", dict(result.metrics), list(result.metrics))


@app.command()
def predict(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to classify.")],
    model: ModelOpt = "runs/train/model",
    top_k: Annotated[int, typer.Option(help="How many labels to show.")] = 3,
) -> None:
    """Predict labels for texts with a saved model (offline)."""
    from trustnlp.pipeline import predict as _predict

    for p in _predict(model, texts, top_k=top_k):
        tops = ", ".join(f"{lab} {prob:.3f}" for lab, prob in p.top)
        typer.echo(f"{p.label}\t{p.probability:.3f}\t{p.text}\t[{tops}]")  # tab-separated: easy to parse


@app.command()
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
    """Membership-inference audit at several epsilons: LiRA with shadow models, empirical epsilon lower bounds."""
    from trustnlp.config import load_config
    from trustnlp.privacy.audit_study import AuditConfig, run_audit

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


def _floats(name: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"Expected `{name}` to be comma-separated numbers, but got {text!r}.")
        raise


@app.command()
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
    """Rewrite text with metric-DP word replacement, then train a classifier on it (clean test split)."""
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


@app.command()
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
    """White-box canary extraction (model inversion) per model x repetitions x epsilon."""
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


@app.command()
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
    """Bias of a representation (WEAT/SEAT/CEAT/CrowS) and of a classifier's predictions (--extrinsic)."""
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


@app.command()
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
    """Federated training on simulated devices that keep their text; per-round metrics and the model."""
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


@app.command()
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

    Example: trustnlp cda --data assistant --mode two-sided --out runs/cda
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


@app.command()
def distill(
    teacher: Annotated[str, typer.Option(help="local (trained here on BOLD + the built-in corpus) | gpt2 | hf:NAME | "
                                         "a saved trustnlp lm directory")] = "local",
    student_config: Annotated[str, typer.Option("--student-config", help="Student size: small | tiny")] = "small",
    mitigation: Annotated[str, typer.Option(help="none | cda | perturb | both")] = "none",
    combine: Annotated[str | None, typer.Option(help="perturb: mean | max | expmean | replace")] = None,
    teacher_dir: Annotated[Path | None, typer.Option(help="Cache of the local teacher (default OUT/teacher).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Student epochs.")] = None,
    out: OutOpt = Path("runs/distill"),
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Distil a causal LM into a smaller student, optionally with counterfactual role reversal; score gender
    disparity of its generations and its perplexity.

    Example: trustnlp distill --teacher local --student-config small --mitigation both --out runs/distill
    """
    from trustnlp.config import load_config
    from trustnlp.fairness.generation import DistillConfig, run_distill

    given = {"teacher": teacher, "student": student_config, "mitigation": mitigation, "combine": combine,
             "teacher_dir": str(teacher_dir) if teacher_dir else None, "epochs": epochs, "seed": seed,
             "data_dir": data_dir, "progress": not quiet}
    ctx = click_context()
    names = {"student": "student_config"}
    explicit = {k: v for k, v in given.items()
                if v is not None and (config is None or k == "progress" or _is_explicit(ctx, names.get(k, k)))}
    cfg = load_config(config, DistillConfig, **explicit) if config is not None else DistillConfig(**explicit)
    result = run_distill(cfg, out)
    keys = [k for k in ("gender_disparity", "gender_disparity_ci_low", "gender_disparity_ci_high", "perplexity",
                        "kl_to_teacher") if k in result.metrics]
    _summary(f"distill: {cfg.mitigation}", result.metrics, keys)
    console.print(f"Results: {out / 'results.json'}")


@app.command()
def report(
    paths: Annotated[list[Path], typer.Argument(help="Results files or directories (searched for results.json).")],
    out: OutOpt = Path("runs/report"),
    title: Annotated[str, typer.Option(help="Report title.")] = "trustnlp report",
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="Do not redact secrets.")] = False,
) -> None:
    """Render every result found into OUT/report.html (figures embedded and saved as files)."""
    from trustnlp.report import render_report

    rep = render_report(paths, out, title=title, show_secrets=show_secrets)
    console.print(f"Report: {rep.html_path} ({len(rep.results)} result(s), {len(rep.figures)} figure file(s))")


@app.command()
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
    """The main job on the built-in assistant corpus: train (private and not), audit, extract, federate,
    fairness and CDA, each stage with a time budget; one summary table and one report."""
    from trustnlp.demo import load_demo_config, run_demo

    stages = load_demo_config(config, full=full) if config is not None else None
    run_demo(out, seed=seed, progress=not quiet, console=console, corpus_size=corpus_size, stages=stages, full=full)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning trustnlp's own errors into one clear message."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, standalone_mode=True)
    except TrustNLPError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)
    except ValidationError as e:
        from trustnlp.config import format_validation_error

        err_console.print(f"[bold red]error:[/] {format_validation_error(e, 'options')}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
