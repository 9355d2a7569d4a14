"""Save/load: exact round trips for every architecture, atomic replace, and clear errors on damage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trustnlp.data.tokenizers import Tokenizer, WordTokenizer, minilm_tokenizer
from trustnlp.errors import ConfigError, DataError
from trustnlp.models import HFEncoderClassifier, build_model, load_model, save_model

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
}
TINY_TRANSFORMER = {"dim": 16, "heads": 2, "ff": 32, "max_len": 64}
WORDS = ["play", "some", "jazz", "stop", "the", "music", "what", "time", "is", "it", "?"]
TEXTS = ["Play some jazz", "what time is it?", "stop the music please"]

# name -> (arch, task, tokenizer, options)
SPECS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "bag": ("bag", "classify", "word", {"dim": 8, "hidden": 4}),
    "cnn": ("cnn", "classify", "word", {"dim": 8, "filters": 4}),
    "lstm": ("lstm", "classify", "word", {"dim": 8, "hidden": 6}),
    "transformer": ("transformer", "classify", "word", TINY_TRANSFORMER),
    "minilm": ("minilm", "classify", "wordpiece", {"encoder_config": TINY_BERT, "trainable": "last-k", "k": 1}),
    "joint-cnn": ("joint", "tag", "word", {"encoder": "cnn", "encoder_options": {"dim": 8, "filters": 4}}),
    "joint-minilm": (
        "joint",
        "tag",
        "wordpiece",
        {"encoder": "minilm", "encoder_options": {"encoder_config": TINY_BERT}},
    ),
    "lm-gpt2": ("lm", "lm", "word", {"dim": 16, "heads": 2, "max_len": 64}),
    "lm-transformer": ("lm", "lm", "word", {"backbone": "transformer", "dim": 16, "heads": 2, "max_len": 64}),
}


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    return {"word": WordTokenizer.from_vocabulary(WORDS, provenance="generator"), "wordpiece": minilm_tokenizer()}


def make(name: str, tok: Tokenizer) -> tuple[Any, dict[str, Any]]:
    arch, task, _, options = SPECS[name]
    sizes: dict[str, Any] = {"lm": {}, "joint": {"num_labels": 2, "num_tags": 3}}.get(arch, {"num_labels": 2})
    torch.manual_seed(0)
    model = build_model(arch, vocab_size=tok.vocab_size, pad_id=tok.pad_id, **sizes, **options)
    names = {
        "label_names": ["play", "other"] if "num_labels" in sizes else [],
        "tag_names": ["O", "B-x", "I-x"] if "num_tags" in sizes else [],
    }
    return model, {"task": task, **names}


def logits(model: nn.Module, tok: Tokenizer) -> list[torch.Tensor]:
    enc = tok.encode(TEXTS)
    with torch.no_grad():
        out = model(enc.input_ids, enc.attention_mask)
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_round_trip_is_exact(name: str, tokenizers: dict[str, Tokenizer], tmp_path: Path) -> None:
    tok = tokenizers[SPECS[name][2]]
    model, meta = make(name, tok)
    with torch.no_grad():  # make the weights differ from a fresh init
        for p in model.parameters():
            p.add_(0.01)
    model.eval()
    path = save_model(model, tmp_path / "saved", tokenizer=tok, extra={"seed": 3}, **meta)
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors", "tokenizer"]
    tied = json.loads((path / "model.json").read_text())["tied"]
    assert tied == ({"model.lm_head.weight": "model.transformer.wte.weight"} if name == "lm-gpt2" else {})
    saved = load_model(path)
    assert not saved.model.training
    assert (saved.arch, saved.task, saved.extra) == (model.arch, meta["task"], {"seed": 3})
    assert saved.label_names == tuple(meta["label_names"]) and saved.tag_names == tuple(meta["tag_names"])
    assert saved.tokenizer == tok
    assert saved.model.config == json.loads(json.dumps(model.config))
    for a, b in zip(logits(model, tok), logits(saved.model, saved.tokenizer)):
        assert torch.equal(a, b)
    assert {n: p.requires_grad for n, p in saved.model.named_parameters()} == {
        n: p.requires_grad for n, p in model.named_parameters()
    }


def test_tied_weights_stored_once_and_retied(tokenizers: dict[str, Tokenizer], tmp_path: Path) -> None:
    model, meta = make("lm-gpt2", tokenizers["word"])
    path = save_model(model, tmp_path / "lm", tokenizer=tokenizers["word"], **meta)
    assert json.loads((path / "model.json").read_text())["tied"] == {
        "model.lm_head.weight": "model.transformer.wte.weight"
    }
    assert "model.lm_head.weight" not in load_file(str(path / "model.safetensors"))
    lm = load_model(path).model
    assert lm.model.lm_head.weight is lm.model.transformer.wte.weight


def test_pretrained_minilm_reloads_without_the_package_path(tokenizers: dict[str, Tokenizer], tmp_path: Path) -> None:
    """A model built from `encoder_name` records `encoder_config`, so loading needs no pretrained files."""
    model = HFEncoderClassifier(vocab_size=30522, num_labels=2, encoder_config=TINY_BERT)
    model.config["encoder_name"] = "nonexistent-org/never-downloaded"  # as if it came from the Hub
    path = save_model(model.eval(), tmp_path / "m", tokenizer=tokenizers["wordpiece"])
    saved = load_model(path)
    assert saved.model.config["encoder_name"] == "nonexistent-org/never-downloaded"
    assert torch.equal(logits(model, tokenizers["wordpiece"])[0], logits(saved.model, saved.tokenizer)[0])


def test_replace_is_atomic_and_safe(tokenizers: dict[str, Tokenizer], tmp_path: Path) -> None:
    tok = tokenizers["word"]
    first, meta = make("bag", tok)
    save_model(first, tmp_path / "m", tokenizer=tok, **meta)
    second = build_model("cnn", vocab_size=tok.vocab_size, num_labels=2, dim=8, filters=4)
    save_model(second, tmp_path / "m", tokenizer=tok)
    assert load_model(tmp_path / "m").arch == "cnn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or old directories left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a saved trustnlp model"):
        save_model(second, tmp_path / "notes", tokenizer=tok)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_save_errors(tokenizers: dict[str, Tokenizer], tmp_path: Path) -> None:
    tok = tokenizers["word"]
    model, _ = make("bag", tok)
    with pytest.raises(ConfigError, match="len\\(label_names\\)"):
        save_model(model, tmp_path / "a", tokenizer=tok, label_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="JSON"):
        save_model(model, tmp_path / "a", tokenizer=tok, extra={"x": object()})
    with pytest.raises(ConfigError, match="task"):
        save_model(model, tmp_path / "a", tokenizer=tok, task="translate")
    with pytest.raises(ConfigError, match="trustnlp model"):
        save_model(nn.Linear(2, 2), tmp_path / "a", tokenizer=tok)
    assert not (tmp_path / "a").exists()


@pytest.fixture()
def saved_dir(tokenizers: dict[str, Tokenizer], tmp_path: Path) -> Path:
    model, meta = make("cnn", tokenizers["word"])
    return save_model(model, tmp_path / "m", tokenizer=tokenizers["word"], **meta)


def _edit_meta(path: Path, **changes: Any) -> None:
    meta = json.loads((path / "model.json").read_text())
    for k, v in changes.items():
        if v is None:
            del meta[k]
        else:
            meta[k] = v
    (path / "model.json").write_text(json.dumps(meta))


def test_load_missing_or_malformed_model_json(saved_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    meta = (saved_dir / "model.json").read_text()
    (saved_dir / "model.json").write_text(meta[: len(meta) // 2])
    with pytest.raises(DataError, match=r"model\.json is not valid JSON"):
        load_model(saved_dir)
    (saved_dir / "model.json").write_text(meta)
    _edit_meta(saved_dir, arch=None)
    with pytest.raises(DataError, match="model.json has no field `arch`"):
        load_model(saved_dir)
    (saved_dir / "model.json").write_text(meta)
    _edit_meta(saved_dir, label_names="play")
    with pytest.raises(DataError, match="`label_names`"):
        load_model(saved_dir)
    (saved_dir / "model.json").write_text(meta)
    _edit_meta(saved_dir, format_version=2)
    with pytest.raises(DataError, match="format_version"):
        load_model(saved_dir)
    (saved_dir / "model.json").write_text(meta)
    _edit_meta(saved_dir, config={"vocab_size": 15, "num_labels": 2, "colour": "red"})
    with pytest.raises(DataError, match="field `config`.*colour"):
        load_model(saved_dir)
    (saved_dir / "model.json").unlink()
    with pytest.raises(DataError, match="model.json does not exist"):
        load_model(saved_dir)


def test_load_tampered_weights(saved_dir: Path) -> None:
    weights = saved_dir / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="sha256"):
        load_model(saved_dir)
    weights.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match="sha256"):
        load_model(saved_dir)


def _rewrite_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    import hashlib

    save_file(state, str(path / "model.safetensors"))
    _edit_meta(path, weights_sha256=hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest())


def test_load_mismatched_weights_names_the_keys(saved_dir: Path) -> None:
    state = load_file(str(saved_dir / "model.safetensors"))
    state["extra.weight"] = state.pop("head.weight")
    _rewrite_weights(saved_dir, state)
    with pytest.raises(DataError, match=r"missing keys \['head.weight'\], unexpected keys \['extra.weight'\]"):
        load_model(saved_dir)
    state["head.weight"] = torch.zeros(5, 5)
    del state["extra.weight"]
    _rewrite_weights(saved_dir, state)
    with pytest.raises(DataError, match="does not fit"):
        load_model(saved_dir)


def test_load_missing_tokenizer(saved_dir: Path) -> None:
    (saved_dir / "tokenizer" / "trustnlp_tokenizer.json").unlink()
    with pytest.raises(DataError, match="trustnlp_tokenizer.json does not exist"):
        load_model(saved_dir)
