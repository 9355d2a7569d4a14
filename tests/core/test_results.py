"""The results envelope: strictly valid JSON, null reasons, atomic writes, validation on read."""

import json
import math

import numpy as np
import pytest

from trustnlp.errors import DataError
from trustnlp.results import SCHEMA_VERSION, Result, atomic_write_text, read_result, to_jsonable, write_result


def _result(**kw):
    base = dict(kind="train", config={"model": "bag", "lr": 1e-3}, seed=3, data={"name": "toy", "licence": "CC0"},
                metrics={"test_accuracy": np.float32(0.5), "epsilon": None, "private": False, "bad": float("nan"),
                         "big": float("inf")},
                rows=[{"epoch": 1, "val_loss": float("nan")}])
    base.update(kw)
    return Result(**base)


def test_envelope_is_strict_json_with_null_reasons(tmp_path):
    path = write_result(_result(null_reasons={"metrics.epsilon": "non-private run"}), tmp_path / "r" / "results.json")
    text = path.read_text()
    d = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    for key in ("schema_version", "kind", "config", "seed", "versions", "data", "metrics", "rows"):
        assert key in d
    assert d["schema_version"] == SCHEMA_VERSION
    assert d["metrics"]["bad"] is None and d["null_reasons"]["metrics.bad"] == "nan"
    assert d["metrics"]["big"] is None and d["null_reasons"]["metrics.big"] == "inf"
    assert d["rows"][0]["val_loss"] is None and d["null_reasons"]["rows[0].val_loss"] == "nan"
    assert d["metrics"]["epsilon"] is None and d["metrics"]["private"] is False
    assert d["null_reasons"]["metrics.epsilon"] == "non-private run"
    assert d["metrics"]["test_accuracy"] == pytest.approx(0.5)
    assert {"python", "torch", "numpy"} <= set(d["versions"])
    back = read_result(path)
    assert back.seed == 3 and back.kind == "train"


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


def test_read_result_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_result(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad.json is not valid JSON: line 1"):
        read_result(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"kind": "train"}))
    with pytest.raises(DataError, match="missing field"):
        read_result(partial)
    future = tmp_path / "future.json"
    d = _result().to_dict()
    d["schema_version"] = "9.0"
    future.write_text(json.dumps(d))
    with pytest.raises(DataError, match="schema_version"):
        read_result(future)


def test_to_jsonable_rejects_unknown_types():
    with pytest.raises(TypeError, match="metrics.x"):
        to_jsonable({"x": object()}, path="metrics")
    assert to_jsonable((np.int64(2), np.bool_(True))) == [2, True]
    assert math.isnan(float("nan")) and to_jsonable(float("-inf"), null_reasons={}) is None
