"""Loaders of the named data sets: counts on the real files, and clear errors on broken copies."""

import json
from collections import Counter

import numpy as np
import pytest

from trustnlp.data.dataset import file_sha256
from trustnlp.data.loaders import _speaker_turns, load_clinc150, load_snips, load_snips_original, load_tinyshakespeare
from trustnlp.errors import DataError


# -- real data ---------------------------------------------------------------------------------
@pytest.mark.shared
def test_clinc150_counts_and_meta(shared_data):
    s = load_clinc150(shared_data / "clinc150")
    assert (len(s.train), len(s.validation), len(s.test)) == (15000, 3000, 4500)
    assert s.train.num_labels == 150 and list(s.train.label_names) == sorted(s.train.label_names)
    assert set(s.train.label_counts()) == {100} and set(s.test.label_counts()) == {30}
    assert s.meta.name == "clinc150" and s.meta.licence == "CC-BY-3.0"
    assert s.meta.source == "https://github.com/clinc/oos-eval @828f8093932c8fe6ca7936c3d2e52903b1c523de"
    path = shared_data / "clinc150" / "data_full.json"
    assert s.meta.files[str(path)] == file_sha256(path)
    assert file_sha256(path).startswith("36923c3705a59e08")  # as in PROVENANCE.md
    assert len(set(s.train.column("domain"))) == 10


@pytest.mark.shared
def test_clinc150_with_oos(shared_data):
    plain = load_clinc150(shared_data)  # a data root works as well as the data set folder
    s = load_clinc150(shared_data, include_oos=True)
    assert (len(s.train), len(s.validation), len(s.test)) == (15100, 3100, 5500)
    assert s.train.num_labels == 151 and s.train.label_names[-1] == "oos"
    assert s.train.label_names[:150] == plain.train.label_names
    assert s.test.label_counts()[-1] == 1000


@pytest.mark.shared
def test_snips_goo2018(shared_data):
    s = load_snips(shared_data / "snips")
    assert (len(s.train), len(s.validation), len(s.test)) == (13084, 700, 700)
    assert s.train.num_labels == 7 and "UNK" not in s.train.label_names
    assert s.train.tag_names[0] == "O" and list(s.train.tag_names[1:]) == sorted(s.train.tag_names[1:])
    assert not {"PAD", "UNK"} & set(s.train.tag_names) and len(s.train.tag_names) == 72
    i = s.train.texts.index("listen to westbam alumb allergic on google music")
    assert s.train.tags[i] == ("O", "O", "B-artist", "O", "B-album", "O", "B-service", "I-service")
    assert s.train.label_names[s.train.labels[i]] == "PlayMusic"
    for ds in (s.train, s.validation, s.test):
        assert all(len(a) == len(b) for a, b in zip(ds.tokens, ds.tags))
        assert all(t == " ".join(tok) for t, tok in zip(ds.texts, ds.tokens))
    assert set(s.validation.label_counts()) == {100}
    assert len(s.meta.files) == 11 and s.meta.licence == "CC0-1.0 (data); Apache-2.0 (split)"


@pytest.mark.shared
def test_snips_original_release(shared_data):
    s = load_snips_original(shared_data / "snips")
    assert (len(s.train), len(s.test)) == (13784, 700) and s.validation is None
    counts = dict(zip(s.train.label_names, s.train.label_counts()))
    assert counts == {"AddToPlaylist": 1942, "BookRestaurant": 1973, "GetWeather": 2000, "PlayMusic": 2000,
                      "RateBook": 1956, "SearchCreativeWork": 1954, "SearchScreeningEvent": 1959}
    assert set(s.test.label_counts()) == {100}
    (pop,) = [t for t in s.train.texts if "Pop Punk Perfection" in t]
    assert "\U0001f355" in pop and not any("\ud800" <= c <= "\udfff" for c in pop)
    assert s.train.tag_names[0] == "O" and all(len(a) == len(b) for a, b in zip(s.train.tokens, s.train.tags))
    assert len(s.meta.files) == 14


@pytest.mark.shared
def test_tinyshakespeare_turns(shared_data):
    s = load_tinyshakespeare(shared_data / "tinyshakespeare")
    assert s.meta.details["turns_in_file"] == 7220  # PROVENANCE.md: 7,220 turns by 308 speakers
    assert s.meta.details["empty_turns_dropped"] == 125
    sizes = [len(ds) for _, ds in s.items()]
    assert sum(sizes) == 7095 and sizes == [6386, 355, 354]
    assert s.train.labels is None
    speakers = Counter(x for _, ds in s.items() for x in ds.column("speaker"))
    assert len(speakers) == 298 and speakers.most_common(1) == [("GLOUCESTER", 211)]
    raw = _speaker_turns(shared_data / "tinyshakespeare" / "input.txt")  # before dropping empty turns
    raw_speakers = Counter(t[0] for t in raw)
    assert len(raw) == 7220 and len(raw_speakers) == 308  # as PROVENANCE.md states
    assert raw_speakers.most_common(5) == [("GLOUCESTER", 229), ("DUKE VINCENTIO", 193), ("ROMEO", 163),
                                           ("MENENIUS", 162), ("PETRUCHIO", 158)]
    assert s.train.column("speaker")[0] == "First Citizen" and s.train.texts[0].startswith("Before we proceed")
    lines = [x for _, ds in s.items() for x in ds.column("line")]
    assert lines == sorted(lines)  # contiguous, in turn order


# -- broken copies -----------------------------------------------------------------------------
def make_snips(root, train_in, train_out, train_label):
    g = root / "goo2018_split"
    for split, (a, b, c) in {"train": (train_in, train_out, train_label),
                             "dev": ("play jazz\n", "O B-genre\n", "PlayMusic\n"),
                             "test": ("play jazz\n", "O B-genre\n", "PlayMusic\n")}.items():
        (g / split).mkdir(parents=True)
        (g / split / "seq.in").write_text(a)
        (g / split / "seq.out").write_text(b)
        (g / split / "label").write_text(c)
    (g / "intent_label.txt").write_text("UNK\nPlayMusic\nGetWeather\n")
    (g / "slot_label.txt").write_text("PAD\nUNK\nO\nB-genre\nI-genre\n")
    return root


def test_fake_snips_loads(tmp_path):
    root = make_snips(tmp_path, "play jazz \nplay some cool jazz\n", "O B-genre \nO O B-genre I-genre\n", "PlayMusic\nPlayMusic\n")
    s = load_snips(root)
    assert s.train.texts == ("play jazz", "play some cool jazz")
    assert s.train.tag_names == ("O", "B-genre", "I-genre") and s.train.label_names == ("GetWeather", "PlayMusic")


def test_snips_misaligned_line_counts(tmp_path):
    root = make_snips(tmp_path, "play jazz\nplay rock\n", "O B-genre\n", "PlayMusic\nPlayMusic\n")
    with pytest.raises(DataError, match=r"train/seq.out: expected 2 lines \(one per line of .*seq.in\), but got 1"):
        load_snips(root)


def test_snips_token_tag_mismatch_names_line(tmp_path):
    root = make_snips(tmp_path, "play jazz\nplay some jazz\n", "O B-genre\nO B-genre\n", "PlayMusic\nPlayMusic\n")
    with pytest.raises(DataError, match=r"train/seq.out:2: expected 3 tags .* but got 2"):
        load_snips(root)


def test_snips_unknown_intent_and_tag(tmp_path):
    root = make_snips(tmp_path / "a", "play jazz\n", "O B-genre\n", "UNK\n")
    with pytest.raises(DataError, match=r"train/label:1: expected an intent .* got 'UNK'"):
        load_snips(root)
    root = make_snips(tmp_path / "b", "play jazz\n", "O B-mood\n", "PlayMusic\n")
    with pytest.raises(DataError, match=r"train/seq.out:1: tag 'B-mood' is not a slot tag"):
        load_snips(root)


def sonos_file(intent, utterances):
    return json.dumps({intent: [{"data": u} for u in utterances]}).encode()


def test_snips_original_surrogates_and_bio(tmp_path):
    chunks = [{"text": "play "}, {"text": "Pop Punk Perfection PIZZA", "entity": "playlist"}, {"text": " now"}]
    raw = sonos_file("PlayMusic", [chunks]).replace(b"PIZZA", b"\xed\xa0\xbc\xed\xbd\x95")
    (tmp_path / "train_PlayMusic_full.json").write_bytes(raw)
    (tmp_path / "validate_PlayMusic.json").write_bytes(sonos_file("PlayMusic", [chunks[:2]]))
    s = load_snips_original(tmp_path)
    assert s.train.texts == ("play Pop Punk Perfection \U0001f355 now",)
    assert s.train.tags[0] == ("O", "B-playlist", "I-playlist", "I-playlist", "I-playlist", "O")
    assert s.train.tag_names == ("O", "B-playlist", "I-playlist")
    assert np.array_equal(s.test.labels, [0])


def test_snips_original_invalid_bytes(tmp_path):
    (tmp_path / "train_PlayMusic_full.json").write_bytes(b"\xff\xfe garbage")
    (tmp_path / "validate_PlayMusic.json").write_bytes(sonos_file("PlayMusic", [[{"text": "hi"}]]))
    with pytest.raises(DataError, match=r"train_PlayMusic_full.json: cannot decode byte 0xff at byte offset 0"):
        load_snips_original(tmp_path)


def test_snips_original_bad_structure(tmp_path):
    (tmp_path / "train_PlayMusic_full.json").write_bytes(sonos_file("GetWeather", [[{"text": "hi"}]]))
    (tmp_path / "validate_PlayMusic.json").write_bytes(sonos_file("PlayMusic", [[{"text": "hi"}]]))
    with pytest.raises(DataError, match=r"train_PlayMusic_full.json: expected a JSON object with the single key 'PlayMusic'"):
        load_snips_original(tmp_path)


def test_clinc150_bad_rows(tmp_path):
    data = {"train": [["hi", "greet"]], "val": [["yo", "greet"]], "test": [["", "greet"]]}
    (tmp_path / "data_full.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"data_full.json, `test`\[0\]: expected a \[text, intent\] pair"):
        load_clinc150(tmp_path)
    data["test"] = [["bye", "farewell"]]
    (tmp_path / "data_full.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"`test`\[0\]: intent 'farewell' does not occur in `train`"):
        load_clinc150(tmp_path)
    with pytest.raises(DataError, match=r"expected a JSON object with keys .*oos_train"):
        load_clinc150(tmp_path, include_oos=True)


def test_tinyshakespeare_small_file(tmp_path):
    text = "First Citizen:\nSpeak.\n\nAll:\nSpeak, speak.\n\nROMEO:\n\nJULIET:\nAy me!\nO Romeo.\n\n" * 10
    (tmp_path / "input.txt").write_text(text)
    s = load_tinyshakespeare(tmp_path)
    assert s.meta.details["turns_in_file"] == 40 and s.meta.details["empty_turns_dropped"] == 10
    assert [len(ds) for _, ds in s.items()] == [27, 2, 1]
    assert s.train.texts[2] == "Ay me!\nO Romeo." and s.train.column("speaker")[:3] == ("First Citizen", "All", "JULIET")
