"""CSV / TSV / JSONL loading: good files, and an error naming file, line and field for each bad one."""

import json

import pytest

from trustnlp.data.dataset import file_sha256
from trustnlp.data.files import load_csv, load_jsonl, load_table, load_table_dir, read_text
from trustnlp.errors import DataError


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_csv_columns_labels_and_meta(tmp_path):
    p = write(tmp_path / "reviews.csv", 'text,label,author,gender\n"play jazz, loud",music,u1,f\nstop,other,u2,m\nmore jazz,music,u1,f\n')
    ds = load_csv(p, columns={"user_id": "author"}, protected=["gender"])
    assert ds.texts == ("play jazz, loud", "stop", "more jazz")
    assert ds.label_names == ("music", "other")
    assert list(ds.labels) == [0, 1, 0]
    assert ds.column("user_id") == ("u1", "u2", "u1")
    assert ds.column("gender") == ("f", "m", "f") and ds.protected == ("gender",)
    assert ds.meta.name == "reviews"
    assert ds.meta.files == {str(p): file_sha256(p)}


def test_tsv_bom_unlabelled_and_given_label_names(tmp_path):
    p = write(tmp_path / "d.tsv", "\ufefftext\tlabel\nhello there\tb\nbye now\ta\n")
    ds = load_table(p, label_names=["a", "b", "c"], name="custom")
    assert ds.label_names == ("a", "b", "c") and list(ds.labels) == [1, 0]
    assert ds.meta.name == "custom"
    assert load_table(p, label_column=None).labels is None


def test_integer_labels_sort_numerically(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 11} for i in range(22)]
    p = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_jsonl(p)
    assert ds.label_names == tuple(str(i) for i in range(11))
    assert list(ds.labels[:11]) == list(range(11))


def test_jsonl_keeps_json_types_and_json_array(tmp_path):
    p = write(tmp_path / "d.jsonl", '{"text": "a b", "label": "x", "ts": 3}\n{"text": "c", "label": "y", "ts": 5}\n')
    assert load_table(p, columns={"timestamp": "ts"}).column("timestamp") == (3, 5)
    q = write(tmp_path / "arr.json", json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "x"}], indent=2))
    assert load_table(q).texts == ("a", "b")


@pytest.mark.parametrize(
    ("fname", "content", "kw", "fragments"),
    [
        ("d.csv", "text,lbl\nhi,a\n", {}, ["d.csv", "missing column `label`", "['text', 'lbl']"]),
        ("d.csv", "text,label\nhi,a\n  ,b\n", {}, ["d.csv", "line 3 (row 2)", "non-empty text", "`text`"]),
        ("d.csv", "text,label\nhi,a\nho,\n", {}, ["d.csv", "line 3", "`label`", "empty"]),
        ("d.csv", "text,label\nhi\n", {}, ["line 2", "missing field `label`"]),
        ("d.csv", "text,label\nhi,a,extra\n", {}, ["line 2", "expected 2 fields", "got 3"]),
        ("d.csv", "text,label\nhi,a\nho,z\n", {"label_names": ["a"]}, ["line 3", "label 'z'", "`label_names`"]),
        ("d.csv", "", {}, ["d.csv", "header", "empty"]),
        ("d.csv", "text,label\n", {}, ["d.csv", "at least one data row"]),
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', {}, ["d.jsonl", "line 2", "invalid JSON"]),
        ("d.jsonl", '{"text": "a", "label": "x"}\n["b", "x"]\n', {}, ["line 2", "expected a JSON object", "list"]),
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "x"}\n', {}, ["line 2", "missing field `text`"]),
        ("d.jsonl", '{"text": 5, "label": "x"}\n', {}, ["line 1", "`text`", "string"]),
        ("d.jsonl", '{"text": "a", "label": null}\n', {}, ["line 1", "missing field `label`"]),
        ("d.jsonl", '{"text": "a", "label": ["x"]}\n', {}, ["line 1", "`label`", "string or number"]),
        ("d.jsonl", '{"text": "a", "label": "x"}\n', {"columns": {"user_id": "uid"}}, ["line 1", "missing field `uid`"]),
        ("d.parquet", "x", {}, ["d.parquet", "unsupported file type", ".csv", ".jsonl"]),
    ],
)
def test_bad_files_name_file_line_and_field(tmp_path, fname, content, kw, fragments):
    p = write(tmp_path / fname, content)
    with pytest.raises(DataError) as e:
        load_table(p, **kw)
    for frag in fragments:
        assert frag in str(e.value), (frag, str(e.value))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="File not found: .*nope.csv"):
        load_csv(tmp_path / "nope.csv")


def test_undecodable_bytes_give_offset_and_encoding(tmp_path):
    p = write(tmp_path / "bad.csv", b"text,label\nok,a\nbad \xff\xfe here,b\n")
    with pytest.raises(DataError) as e:
        load_csv(p)
    msg = str(e.value)
    assert "bad.csv" in msg and "byte offset 20" in msg and "line 3" in msg and "utf-8" in msg
    assert load_csv(p, encoding="latin-1").texts[1] == "bad \xff\xfe here"


def test_utf16_bom_hint(tmp_path):
    p = write(tmp_path / "u16.csv", "text,label\nhi,a\n", encoding="utf-16")
    with pytest.raises(DataError, match="byte offset 0.*utf-16"):
        load_csv(p)
    assert load_csv(p, encoding="utf-16").texts == ("hi",)


def test_read_text_repairs_surrogate_pairs_and_rejects_lone_ones(tmp_path):
    cesu = b"pizza " + b"\xed\xa0\xbc\xed\xbd\x95" + b" ok"
    p = write(tmp_path / "cesu.txt", cesu)
    assert read_text(p, repair_surrogates=True) == "pizza \U0001f355 ok"
    with pytest.raises(DataError, match="cesu.txt: cannot decode byte 0xed at byte offset 6"):
        read_text(p)
    lone = write(tmp_path / "lone.txt", b"x \xed\xa0\xbc y")
    with pytest.raises(DataError, match="lone.txt: unpaired UTF-16 surrogate U\\+D83C"):
        read_text(lone, repair_surrogates=True)
    garbage = write(tmp_path / "garbage.txt", b"\xff\xfe garbage")
    with pytest.raises(DataError, match="garbage.txt: cannot decode byte 0xff at byte offset 0"):
        read_text(garbage, repair_surrogates=True)


def test_table_dir_splits_share_vocabulary(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,x\nb,y\nc,x\n")
    write(tmp_path / "dev.jsonl", '{"text": "d", "label": "y"}\n')
    write(tmp_path / "test.csv", "text,label\ne,x\n")
    splits = load_table_dir(tmp_path)
    assert splits.train.label_names == splits.validation.label_names == splits.test.label_names == ("x", "y")
    assert len(splits.meta.files) == 3 and splits.meta.name == tmp_path.name


def test_table_dir_label_only_in_test_is_an_error(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,x\nb,x\n")
    write(tmp_path / "test.csv", "text,label\nc,x\nd,zebra\n")
    with pytest.raises(DataError, match=r"labels \['zebra'\] occur in the test split but never in train"):
        load_table_dir(tmp_path)


def test_table_dir_missing_or_ambiguous_files(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,x\n")
    with pytest.raises(DataError, match="no test file found"):
        load_table_dir(tmp_path)
    write(tmp_path / "test.csv", "text,label\na,x\n")
    write(tmp_path / "test.jsonl", '{"text": "a", "label": "x"}\n')
    with pytest.raises(DataError, match="several test files"):
        load_table_dir(tmp_path)
