"""``run_fairness``: intrinsic tests of a model (WEAT, SEAT, CEAT, CrowS-Pairs) and, for a trained
classifier, extrinsic metrics on a data set; writes ``results.json`` (kind ``fairness``).

Intrinsic results are ``rows``, one per test, each with at least ``test`` (``weat6``,
``sent-weat6``, ``ceat-weat6``, ``crows-pairs``), ``kind``, ``effect_size``, ``p_value`` and
``pooling``, plus the options that shaped it (encoder, representation, word pooling, sizes,
p-value method, CEAT coverage, CrowS ``tokens``). Values that do not apply (a CrowS row has a
preference score, not an effect size) are ``null`` with a reason in ``null_reasons``.

Test sets: the word-level WEAT tests ``weat1`` ... ``weat10`` (with the ``b`` variants) from
``../shared/data/seat`` when present, and the project's own tests (``gender-career``, ...);
``seat`` runs their sentence versions (``sent-weatN`` from the SEAT files, and
:func:`~trustnlp.fairness.association_tests.sentence_version` of the own tests); ``ceat`` runs
the word-level tests on the CEAT corpus (BOLD's Wikipedia sentences by default), dropping words
without a context (reported per row as ``coverage_fraction`` and ``missing``). ``names`` picks
tests by name instead.

Extrinsic (``extrinsic=True``; ``model`` must be a saved trustnlp classifier): on the test split
of ``data``, group metrics by the protected attribute (accuracy for multi-class tasks, plus
TPR/FPR/FNR/selection rate for binary ones; bootstrap intervals), the per-class TPR gap between
the two largest groups, AUC-based bias (binary tasks), counterfactual token fairness (gender
swaps) and prediction sensitivity (APS), and the per-example correlation of PS with the
counterfactual gap. Everything goes to ``metrics``.

Example:
    >>> result = run_fairness("minilm", "runs/fair", tests=("weat", "seat"))  # doctest: +SKIP
    >>> [(r["test"], round(r["effect_size"], 2)) for r in result.rows][:2]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trustnlp.errors import ConfigError, DataError
from trustnlp.fairness._common import check_choice
from trustnlp.fairness.association_tests import (
    AssociationTest,
    builtin_tests,
    find_seat_dir,
    load_seat_tests,
    sentence_version,
)
from trustnlp.fairness.encoders import DEFAULT_POOLING, DEFAULT_WORD_POOLING, REPRESENTATIONS, TextEncoder
from trustnlp.fairness.intrinsic import DEFAULT_PERMUTATIONS, weat
from trustnlp.results import Result, write_result

__all__ = ["INTRINSIC_TESTS", "WEAT_TESTS", "run_fairness", "select_tests"]

INTRINSIC_TESTS = ("weat", "seat", "ceat", "crows")
WEAT_TESTS = ("weat1", "weat2", "weat3", "weat3b", "weat4", "weat5", "weat5b", "weat6", "weat6b", "weat7",
              "weat7b", "weat8", "weat8b", "weat9", "weat10")
"""The word-level WEAT tests of Caliskan et al. in the SEAT specifications (``b``: May et al.'s variants)."""


def select_tests(names: Sequence[str] | None = None, *, seat_dir: str | Path | None = None,
                 builtin: bool = True) -> tuple[list[AssociationTest], list[AssociationTest]]:
    """``(word tests, sentence tests)`` to run: by ``names`` (SEAT files or own tests, ``sent-``
    names for sentence tests), or the defaults of the module docs."""
    folder = Path(seat_dir) if seat_dir is not None else find_seat_dir()
    seat = load_seat_tests(folder) if folder is not None and folder.is_dir() else {}
    own = builtin_tests()
    own_all = {**own, **{f"sent-{k}": sentence_version(v) for k, v in own.items()}}
    if names is None:
        word = [seat[n] for n in WEAT_TESTS if n in seat] + (list(own.values()) if builtin or not seat else [])
        sent = [seat[f"sent-{n}"] for n in WEAT_TESTS if f"sent-{n}" in seat]
        sent += [own_all[f"sent-{t.name}"] for t in word if f"sent-{t.name}" in own_all]
        return word, sent
    word, sent = [], []
    for n in names:
        t = seat.get(n) or own_all.get(n)
        if t is None:
            raise DataError(f"Unknown association test {n!r}; available: {sorted(seat) + sorted(own_all)}.")
        (word if t.level == "word" else sent).append(t)
        if t.level == "word" and f"sent-{n}" in {**seat, **own_all}:
            sent.append(seat.get(f"sent-{n}") or own_all[f"sent-{n}"])
    return list({t.name: t for t in word}.values()), list({t.name: t for t in sent}.values())


def _embed(test: AssociationTest, enc: TextEncoder, representation: str) -> dict[str, np.ndarray]:
    if test.level == "sentence":
        return {k: enc.sentences(ws.examples) for k, ws in test.sets.items()}
    return {k: enc.words(ws.examples, representation=representation) for k, ws in test.sets.items()}


def _weat_row(test: AssociationTest, enc: TextEncoder, kind: str, representation: str, n_permutations: int,
              seed: int) -> dict[str, Any]:
    e = _embed(test, enc, representation)
    rep = "sentence" if test.level == "sentence" else f"{representation}-word"
    pooling = enc.word_pooling if rep == "static-word" else enc.pooling
    opts = {**enc.describe(), "pooling": pooling, "representation": rep, "source": test.source}
    r = weat(e["X"], e["Y"], e["A"], e["B"], test=test.name, n_samples=n_permutations, seed=seed,
             categories=test.categories(), options=opts)
    return {"kind": kind, **r.to_dict()}


def run_fairness(
    model: str | Path = "minilm",
    out: str | Path | None = None,
    *,
    tests: Sequence[str] = ("weat", "seat"),
    names: Sequence[str] | None = None,
    extrinsic: bool = False,
    data: Any = None,
    protected: str | None = None,
    seat_dir: str | Path | None = None,
    corpus: str | Path | None = None,
    pooling: str = DEFAULT_POOLING,
    word_pooling: str = DEFAULT_WORD_POOLING,
    representation: str = "pooled",
    n_permutations: int = DEFAULT_PERMUTATIONS,
    ceat_samples: int = 1000,
    ceat_contexts: int = 10,
    crows_model: str | None = None,
    crows_kind: str | None = None,
    crows_tokens: str | None = None,
    crows_limit: int | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> Result:
    """Run the fairness study (module docs) and write ``out/results.json`` when ``out`` is given.

    Args:
        model: ``minilm``, a saved trustnlp model directory or a Hugging Face encoder.
        tests: any of :data:`INTRINSIC_TESTS` (``weat``, ``seat``, ``ceat``, ``crows``).
        names: association tests by name (default: module docs).
        extrinsic: also evaluate the classifier ``model`` on ``data`` (a data set name or a
            :class:`~trustnlp.config.DataConfig`); ``protected``: its protected column (default:
            the data set's first protected attribute).
        seat_dir: folder of SEAT files (default ``../shared/data/seat``). corpus: CEAT sentences, a
            text file with one sentence per line (default: BOLD's Wikipedia sentences).
        pooling / word_pooling / representation: encoder options (see
            :mod:`trustnlp.fairness.encoders`), recorded per row.
        n_permutations: WEAT/SEAT permutation partitions. ceat_samples / ceat_contexts: CEAT's
            ``N`` and contexts per word.
        crows_model / crows_kind / crows_tokens / crows_limit: the LM scored on CrowS-Pairs
            (default ``model`` when it is a saved trustnlp LM; a Hugging Face model needs
            ``crows_kind`` ``masked`` or ``causal``), the tokens scored, and how many pairs.
        n_bootstrap: replicates for the group-metric intervals. seed: every seeded choice.
    """
    tests = tuple(tests)
    for t in tests:
        check_choice("tests", t, INTRINSIC_TESTS)
    check_choice("representation", representation, REPRESENTATIONS)
    if extrinsic and data is None:
        raise ConfigError("`extrinsic` needs `data` (the data set to evaluate the classifier on).")
    if extrinsic and not (Path(str(model)).is_dir() and (Path(str(model)) / "model.json").is_file()):
        raise ConfigError(f"`extrinsic` needs `model` to be a saved trustnlp classifier directory, but got {str(model)!r}.")
    config = {"model": str(model), "tests": list(tests), "names": list(names) if names else None, "extrinsic": extrinsic,
              "data": data if data is None or isinstance(data, str) else data.model_dump(), "protected": protected,
              "seat_dir": str(seat_dir) if seat_dir else None, "corpus": str(corpus) if corpus else None,
              "pooling": pooling, "word_pooling": word_pooling, "representation": representation,
              "n_permutations": n_permutations, "ceat_samples": ceat_samples, "ceat_contexts": ceat_contexts,
              "crows_model": crows_model, "crows_kind": crows_kind, "crows_tokens": crows_tokens,
              "crows_limit": crows_limit, "n_bootstrap": n_bootstrap, "seed": seed}
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    null_reasons: dict[str, str] = {}
    data_meta: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    scorer = _crows_scorer(model, tests, crows_model, crows_kind, crows_tokens) if "crows" in tests else None
    enc = None
    if any(t in tests for t in ("weat", "seat", "ceat")):
        from trustnlp.fairness.encoders import load_encoder

        enc = load_encoder(model, pooling=pooling, word_pooling=word_pooling)
    if enc is not None:
        word, sent = select_tests(names, seat_dir=seat_dir)
        # the SEAT files' provenance and licence only when one of their tests was used
        run = (word if "weat" in tests or "ceat" in tests else []) + (sent if "seat" in tests else [])
        used = sorted({t.source for t in run if t.source.endswith(".jsonl")})
        if used:
            from trustnlp.data.dataset import DataMeta

            data_meta["seat"] = DataMeta.for_files("seat", used, source="https://github.com/W4ngatang/sent-bias",
                                                   licence="CC-BY-NC-4.0").to_dict()
        if "weat" in tests:
            rows += [_weat_row(t, enc, "weat", representation, n_permutations, seed) for t in word]
        if "seat" in tests:
            rows += [_weat_row(t, enc, "seat", representation, n_permutations, seed) for t in sent]
        if "ceat" in tests:
            rows += _ceat_rows(word, enc, corpus, ceat_samples, ceat_contexts, seed, data_meta)
    if scorer is not None:
        from trustnlp.fairness.crows import load_crows_pairs

        pairs = load_crows_pairs(limit=crows_limit)
        res = _crows(pairs, scorer)
        i = len(rows)
        rows.append({"kind": "crows", "effect_size": None, "pooling": None, "score": res.metric_score, **res.to_dict()})
        null_reasons[f"rows[{i}].effect_size"] = "CrowS-Pairs reports a preference rate (`score`), not an effect size"
        null_reasons[f"rows[{i}].pooling"] = "CrowS-Pairs scores token log-likelihoods: no pooling"
        data_meta["crows_pairs"] = {"name": "crows_pairs", "licence": "CC-BY-SA-4.0", "n_pairs": len(pairs)}
    if extrinsic:
        from trustnlp.fairness.study_extrinsic import extrinsic_metrics

        ex, reasons, meta = extrinsic_metrics(model, data, protected=protected, n_bootstrap=n_bootstrap, seed=seed)
        metrics["extrinsic"] = ex
        null_reasons.update({f"metrics.extrinsic.{k}": v for k, v in reasons.items()})
        data_meta["evaluation"] = meta
    for i, r in enumerate(rows):
        if r.get("error"):
            null_reasons[f"rows[{i}].effect_size"] = null_reasons[f"rows[{i}].p_value"] = r["error"]
    for kind in ("weat", "seat", "ceat"):
        vals = [abs(r["effect_size"]) for r in rows if r["kind"] == kind and r["effect_size"] is not None]
        if vals:
            metrics[f"{kind}_mean_abs_effect_size"] = float(np.mean(vals))
            metrics[f"{kind}_n_tests"] = len(vals)
    metrics["seconds"] = time.perf_counter() - t0
    if enc is not None and enc.num_truncated:
        metrics["truncated_inputs"] = enc.num_truncated
    result = Result(kind="fairness", config=config, seed=seed, data=data_meta, metrics=metrics, rows=rows,
                    null_reasons=null_reasons)
    if out is not None:
        write_result(result, Path(out) / "results.json")
    return result


def _ceat_rows(word: list[AssociationTest], enc: TextEncoder, corpus: str | Path | None, n: int, contexts: int,
               seed: int, data_meta: dict[str, Any]) -> list[dict[str, Any]]:
    from trustnlp.fairness.ceat import Corpus, ceat, load_bold_corpus

    if corpus is None:
        corp = load_bold_corpus()
    else:
        from trustnlp.data.dataset import file_sha256

        path = Path(corpus)
        if not path.is_file():
            raise DataError(f"CEAT corpus file {path} does not exist (expected one sentence per line).")
        lines = tuple(ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())
        corp = Corpus(lines, name=str(path), files={str(path): file_sha256(path)})
    data_meta["ceat_corpus"] = corp.to_dict()
    rows = []
    for t in word:
        try:
            r = ceat(t, enc, corp, n_samples=n, max_contexts=contexts, seed=seed, on_missing="drop")
        except DataError as e:  # too few words with contexts: reported, not fatal for the other tests
            rows.append({"kind": "ceat", "test": f"ceat-{t.name}", "effect_size": None, "p_value": None,
                         "pooling": enc.word_pooling, "error": str(e)})
            continue
        rows.append({"kind": "ceat", **r.to_dict()})
    return rows


def _crows_scorer(model: str | Path, tests: tuple[str, ...], crows_model: str | None, kind: str | None,
                  tokens: str | None) -> Any:
    from trustnlp.fairness.crows import load_lm_scorer

    spec = crows_model or str(model)
    is_saved_lm = Path(spec).is_dir() and (Path(spec) / "model.json").is_file()
    if not is_saved_lm and kind is None:
        raise ConfigError(f"CrowS-Pairs needs a language model: `{spec}` is not a saved trustnlp LM. Pass `crows_model` "
                          "(a trustnlp LM directory, or a Hugging Face model with `crows_kind` 'masked' or 'causal'); "
                          "MiniLM has no language-model head.")
    return load_lm_scorer(spec, kind=kind, tokens=tokens)


def _crows(pairs: Any, scorer: Any) -> Any:
    from trustnlp.fairness.crows import crows_pairs

    return crows_pairs(pairs, scorer)
