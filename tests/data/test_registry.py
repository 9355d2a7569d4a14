"""Named lookup, data directories, downloads (no network) and Hugging Face data sets (a fake module)."""

import io
import json
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from trustnlp.data import hub, registry
from trustnlp.data.registry import DATA_DIR_ENV, NAMED_DATASETS, data_dirs, find_dataset_dir, load_dataset
from trustnlp.errors import DataError, MissingDependencyError


@pytest.fixture
def offline(monkeypatch):
    calls = []

    def refuse(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


@pytest.fixture
def no_data_dirs(monkeypatch, tmp_path):
    """No data directory has anything; downloads go to an empty cache."""
    monkeypatch.setattr(registry, "data_dirs", lambda data_dir=None: [])
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


# -- data directories ----------------------------------------------------------------------------
def test_data_dir_search_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    work = tmp_path / "a" / "work"
    for d in (explicit, env, work, tmp_path / "a" / "shared" / "data"):
        d.mkdir(parents=True)
    monkeypatch.setenv(DATA_DIR_ENV, str(env))
    monkeypatch.chdir(work)
    dirs = data_dirs(explicit)
    assert dirs[:3] == [explicit.resolve(), env.resolve(), (tmp_path / "a" / "shared" / "data").resolve()]
    repo_shared = (Path(registry.__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()
    assert dirs[3:] == ([repo_shared] if repo_shared.is_dir() else [])
    # deduplicated; missing directories are skipped
    monkeypatch.setenv(DATA_DIR_ENV, f"{explicit}{__import__('os').pathsep}{tmp_path / 'missing'}")
    assert data_dirs(explicit).count(explicit.resolve()) == 1
    assert tmp_path / "missing" not in data_dirs(explicit)


def test_find_dataset_dir_prefers_explicit_over_env(tmp_path, monkeypatch):
    for root in ("one", "two"):
        (tmp_path / root / "clinc150").mkdir(parents=True)
        (tmp_path / root / "clinc150" / "data_full.json").write_text("{}")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "two"))
    assert find_dataset_dir("clinc150", tmp_path / "one") == (tmp_path / "one" / "clinc150").resolve()
    assert find_dataset_dir("clinc150") == (tmp_path / "two" / "clinc150").resolve()


def test_find_dataset_dir_unknown_folder_without_download(tmp_path, no_data_dirs):
    with pytest.raises(DataError, match=r"Data set `crows_pairs` was not found: expected a folder `crows_pairs`"):
        find_dataset_dir("crows_pairs")
    with pytest.raises(DataError, match="downloading was disabled"):
        find_dataset_dir("tinyshakespeare", download=False)


# -- downloads -----------------------------------------------------------------------------------
def test_download_failure_message(tmp_path, offline):
    with pytest.raises(DataError) as e:
        hub.download_public("tinyshakespeare", tmp_path / "ts")
    msg = str(e.value)
    assert "`tinyshakespeare` was not found in the data directories searched and could not be downloaded" in msg
    assert hub.PUBLIC_SOURCES["tinyshakespeare"][0][1] in msg and "network is unreachable" in msg
    assert offline and offline[0][1] == hub.DOWNLOAD_TIMEOUT_S
    assert not (tmp_path / "ts" / "input.txt").exists()


def test_find_dataset_dir_download_failure_lists_dirs(no_data_dirs, offline):
    with pytest.raises(DataError, match=r"could not be downloaded from https://raw.githubusercontent.com/clinc.*Data directories searched"):
        load_dataset("clinc150")


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_writes_atomically_verifies_and_caches(tmp_path, monkeypatch, no_data_dirs):
    tiny = json.dumps({"train": [["hi there", "greet"], ["bye now", "leave"]], "val": [["hello", "greet"]],
                       "test": [["see you", "leave"]]}).encode()
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return FakeResponse(tiny)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setitem(hub.PUBLIC_SOURCES, "clinc150", [("data_full.json", "https://example.invalid/d.json", "")])
    splits = load_dataset("clinc150")
    assert len(splits.train) == 2 and calls == ["https://example.invalid/d.json"]
    assert sorted(p.name for p in (no_data_dirs / "clinc150").iterdir()) == ["data_full.json"]  # no .part left
    load_dataset("clinc150")
    assert len(calls) == 1  # served from the cache
    monkeypatch.setitem(hub.PUBLIC_SOURCES, "clinc150", [("other.json", "https://example.invalid/o.json", "00ff")])
    with pytest.raises(DataError, match=r"expected 00ff\.\.\. \(the pinned release\)"):
        hub.download_public("clinc150", tmp_path / "x")
    assert not (tmp_path / "x" / "other.json").exists()


# -- load_dataset --------------------------------------------------------------------------------
def write_csv(path, n_per_label=20, labels=("a", "b", "c")):
    rows = [f"text {lab} {i},{lab}" for lab in labels for i in range(n_per_label)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def test_file_split_is_seeded_and_stratified(tmp_path):
    p = write_csv(tmp_path / "d.csv")
    s1, s2 = load_dataset(str(p), seed=3), load_dataset(str(p), seed=3)
    for (_, a), (_, b) in zip(s1.items(), s2.items()):
        assert a.texts == b.texts and np.array_equal(a.labels, b.labels)
    assert load_dataset(str(p), seed=4).test.texts != s1.test.texts
    assert [len(ds) for _, ds in s1.items()] == [48, 6, 6]
    assert all(set(ds.label_counts()) == {2} for ds in (s1.validation, s1.test))
    assert s1.meta.details["split"] == {"seed": 3, "test": 0.1, "validation": 0.1, "stratified": True}
    assert str(p) in s1.meta.files
    assert load_dataset(str(p), validation=0.0, test=0.25).validation is None


def test_file_columns_options(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"body": f"t{i}", "y": i % 2}) for i in range(20)))
    s = load_dataset(str(p), text_column="body", label_column="y", seed=0)
    assert s.train.label_names == ("0", "1")


def test_directory_with_train_and_test(tmp_path):
    write_csv(tmp_path / "train.csv")
    write_csv(tmp_path / "test.csv", 2)
    s = load_dataset(str(tmp_path))
    assert (len(s.train), len(s.test), s.validation) == (60, 6, None)


def test_directory_label_only_in_test(tmp_path):
    write_csv(tmp_path / "train.csv", labels=("a", "b"))
    write_csv(tmp_path / "test.csv", 2, labels=("a", "zebra"))
    with pytest.raises(DataError, match=r"\['zebra'\] occur in the test split but never in train"):
        load_dataset(str(tmp_path))


def test_unknown_name_and_missing_file():
    with pytest.raises(DataError) as e:
        load_dataset("imdb")
    assert all(n in str(e.value) for n in NAMED_DATASETS) and "path" in str(e.value)
    with pytest.raises(DataError, match="File not found: nowhere/d.csv"):
        load_dataset("nowhere/d.csv")


@pytest.mark.shared
def test_named_with_data_dir(shared_data):
    s = load_dataset("CLINC150", data_dir=shared_data, include_oos=True)
    assert s.train.num_labels == 151
    assert len(load_dataset("snips_original", data_dir=shared_data).train) == 13784


def test_assistant_named_data_set():
    pytest.importorskip("trustnlp.data.assistant")
    s = load_dataset("assistant", seed=1)
    assert len(s.train) > 0 and s.train.num_labels > 1


# -- Hugging Face --------------------------------------------------------------------------------
class FakeSplit:
    def __init__(self, cols, features=None):
        self._cols, self.features, self.column_names = cols, features or {}, list(cols)
        self._fingerprint = "fp"

    def __getitem__(self, col):
        return self._cols[col]


def fake_datasets(monkeypatch, load):
    mod = types.ModuleType("datasets")
    mod.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", mod)


def test_hf_dataset_with_class_label(monkeypatch):
    label = types.SimpleNamespace(names=["neg", "pos"])
    seen = {}

    def load(path, config=None, cache_dir=None):
        seen.update(path=path, config=config)
        return {"train": FakeSplit({"sentence": ["good", "bad"], "label": [1, 0]}, {"label": label}),
                "validation": FakeSplit({"sentence": ["ok"], "label": [1]}, {"label": label}),
                "test": FakeSplit({"sentence": ["meh"], "label": [0]}, {"label": label})}

    fake_datasets(monkeypatch, load)
    s = load_dataset("hf:nyu-mll/glue:sst2", text_column="sentence")
    assert seen == {"path": "nyu-mll/glue", "config": "sst2"}
    assert s.train.label_names == ("neg", "pos") and list(s.train.labels) == [1, 0]
    assert len(s.validation) == 1 and s.meta.name == "hf:nyu-mll/glue:sst2"
    assert s.meta.source == "https://huggingface.co/datasets/nyu-mll/glue"


def test_hf_string_labels_split_map_and_errors(monkeypatch):
    def load(path, config=None, cache_dir=None):
        return {"train": FakeSplit({"text": ["a", "b"], "intent": ["x", "y"]}),
                "dev": FakeSplit({"text": ["c"], "intent": ["y"]}),
                "eval": FakeSplit({"text": ["d"], "intent": ["x"]})}

    fake_datasets(monkeypatch, load)
    from trustnlp.data.hub import load_hf_dataset

    s = load_hf_dataset("toy", label_column="intent", split_map={"train": "train", "validation": "dev", "test": "eval"})
    assert s.train.label_names == ("x", "y") and list(s.test.labels) == [0]
    with pytest.raises(DataError, match=r"`toy` has no test split \(splits: \['train', 'dev', 'eval'\]\)"):
        load_hf_dataset("toy", label_column="intent")
    with pytest.raises(DataError, match="has no label column `label`"):
        load_hf_dataset("toy", split_map={"train": "train", "test": "eval"})


def test_hf_offline_or_unknown(monkeypatch):
    def load(path, config=None, cache_dir=None):
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")

    fake_datasets(monkeypatch, load)
    with pytest.raises(DataError, match=r"Hugging Face data set `nope`.*offline.*local CSV/JSONL file.*--data"):
        load_dataset("hf:nope")


def test_hf_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match=r"trustnlp\[hf\]"):
        load_dataset("hf:anything")
