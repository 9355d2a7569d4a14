"""Models: shapes, gradients, padding invariance, trainable subsets, registry errors, generation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustnlp.errors import ConfigError, DataError
from trustnlp.models import MODELS, CausalLM, HFEncoderClassifier, JointOutput, build_model
from trustnlp.models.classifiers import SelfAttention

VOCAB, LABELS, TAGS = 60, 3, 5
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": VOCAB,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
}
TINY_TRANSFORMER = {"dim": 16, "heads": 2, "ff": 32, "max_len": 64}

# name -> (arch, options)
SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "bag": ("bag", {"dim": 8}),
    "bag-hidden": ("bag", {"dim": 8, "hidden": 6}),
    "cnn": ("cnn", {"dim": 8, "filters": 4}),
    "lstm": ("lstm", {"dim": 8, "hidden": 6}),
    "transformer": ("transformer", TINY_TRANSFORMER),
    "minilm": ("minilm", {"encoder_config": TINY_BERT}),
    "minilm-cls": ("minilm", {"encoder_config": TINY_BERT, "pooling": "cls"}),
    "minilm-eager-frozen": (
        "minilm",
        {"encoder_config": TINY_BERT, "attn_implementation": "eager", "trainable": "frozen"},
    ),
    "joint-cnn": ("joint", {"encoder": "cnn", "encoder_options": {"dim": 8, "filters": 4}}),
    "joint-transformer": ("joint", {"encoder": "transformer", "encoder_options": TINY_TRANSFORMER}),
    "joint-minilm": ("joint", {"encoder": "minilm", "encoder_options": {"encoder_config": TINY_BERT}}),
    "lm-gpt2": ("lm", {"dim": 16, "heads": 2, "max_len": 64}),
    "lm-gpt2-eager": ("lm", {"dim": 16, "heads": 2, "max_len": 64, "attn_implementation": "eager"}),
    "lm-transformer": ("lm", {"backbone": "transformer", "dim": 16, "heads": 2, "max_len": 64}),
}


def make(name: str) -> Any:
    arch, options = SPECS[name]
    sizes = {"lm": {}, "joint": {"num_labels": LABELS, "num_tags": TAGS}}.get(arch, {"num_labels": LABELS})
    torch.manual_seed(0)
    return build_model(arch, vocab_size=VOCAB, pad_id=0, **sizes, **options)


def batch(lengths: tuple[int, ...] = (7, 4, 2), extra_pad: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + extra_pad
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(4, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def outputs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    out = model(ids, mask)
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_backward(name: str) -> None:
    model = make(name)
    model.train()
    ids, mask = batch()
    outs = outputs(model, ids, mask)
    arch = SPECS[name][0]
    if arch == "joint":
        assert isinstance(model(ids, mask), JointOutput)
        assert outs[0].shape == (3, LABELS) and outs[1].shape == (3, 7, TAGS)
    elif arch == "lm":
        assert outs[0].shape == (3, 7, VOCAB)
    else:
        assert outs[0].shape == (3, LABELS)
    g = torch.Generator().manual_seed(1)
    loss = torch.stack([(o * torch.randn(o.shape, generator=g)).sum() for o in outs]).sum()
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n, p in trainable:
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
    assert sum(p.grad.abs().sum().item() for _, p in trainable) > 0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_padding_never_changes_a_prediction(name: str) -> None:
    model = make(name).eval()
    ids, mask = batch()
    ids_p, mask_p = batch(extra_pad=5)
    with torch.no_grad():
        a, b = outputs(model, ids, mask), outputs(model, ids_p, mask_p)
    for x, y in zip(a, b):
        if x.dim() == 3:  # per-token outputs: compare real positions
            y = y[:, : x.shape[1]]
            real = mask.bool()
            x, y = x[real], y[real]
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_config_round_trip(name: str) -> None:
    model = make(name)
    cfg = json.loads(json.dumps(model.config))
    assert {"vocab_size", "pad_id"} <= set(cfg)
    rebuilt = type(model).from_config(cfg)
    assert rebuilt.arch == model.arch == SPECS[name][0]
    assert rebuilt.config == cfg
    assert {n: p.shape for n, p in rebuilt.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}


@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented:UserWarning")
@pytest.mark.parametrize("name", sorted(SPECS))
def test_per_sample_gradients_with_torch_func_match_a_loop(name: str) -> None:
    """Every model works under ``torch.func`` (vmap over examples): no data-dependent control flow."""
    from torch.func import functional_call, grad, vmap

    model = make(name).eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    ids, mask = batch()

    def loss(p: dict[str, torch.Tensor], i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (i[None], m[None]))
        return torch.stack([o.pow(2).sum() for o in (out if isinstance(out, tuple) else (out,))]).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, ids, mask)
    for b in range(ids.shape[0]):
        one = grad(loss)(params, ids[b], mask[b])
        for n in params:
            torch.testing.assert_close(per_sample[n][b], one[n], atol=1e-5, rtol=1e-4)


def test_registry_and_errors() -> None:
    assert sorted(MODELS) == ["bag", "cnn", "joint", "lm", "lstm", "minilm", "transformer"]
    with pytest.raises(ConfigError, match=r"one of \['bag', 'cnn', 'joint', 'lm', 'lstm', 'minilm', 'transformer'\]"):
        build_model("resnet", vocab_size=VOCAB, num_labels=2)
    with pytest.raises(ConfigError) as err:
        build_model("cnn", vocab_size=VOCAB, num_labels=1)
    assert str(err.value) == "Expected `num_labels` to be >= 2, but got 1."
    with pytest.raises(ConfigError, match="Unknown option.*'colour'"):
        build_model("bag", vocab_size=VOCAB, num_labels=2, colour="red")
    with pytest.raises(ConfigError, match="num_tags"):
        build_model("bag", vocab_size=VOCAB, num_labels=2, num_tags=4)
    with pytest.raises(ConfigError, match="dropout"):
        build_model("cnn", vocab_size=VOCAB, num_labels=2, dropout=1.5)
    with pytest.raises(ConfigError, match="pad_id"):
        build_model("bag", vocab_size=VOCAB, num_labels=2, pad_id=VOCAB)
    with pytest.raises(ConfigError, match="multiple of heads"):
        build_model("transformer", vocab_size=VOCAB, num_labels=2, dim=10, heads=4)
    with pytest.raises(ConfigError, match="encoder"):
        build_model("joint", vocab_size=VOCAB, num_labels=2, num_tags=3, encoder="lstm")
    with pytest.raises(ConfigError, match="vocabulary size"):
        build_model("minilm", vocab_size=VOCAB + 1, num_labels=2, encoder_config=TINY_BERT)
    with pytest.raises(ConfigError, match="trainable"):
        build_model("minilm", vocab_size=VOCAB, num_labels=2, encoder_config=TINY_BERT, trainable="some")
    with pytest.raises(ConfigError, match="`k`"):
        build_model("minilm", vocab_size=VOCAB, num_labels=2, encoder_config=TINY_BERT, trainable="last-k", k=3)


def test_sequence_longer_than_positions_is_an_error() -> None:
    model = make("transformer")
    ids = torch.ones(1, 65, dtype=torch.long)
    with pytest.raises(DataError, match="max_len"):
        model(ids, torch.ones_like(ids))


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_minilm_trainable_subsets() -> None:
    frozen = build_model("minilm", vocab_size=VOCAB, num_labels=2, encoder_config=TINY_BERT, trainable="frozen")
    assert _trainable(frozen) == {"head.weight", "head.bias"}
    ids, mask = batch()
    frozen(ids, mask).sum().backward()
    assert all(p.grad is None for n, p in frozen.named_parameters() if not n.startswith("head."))

    last = build_model("minilm", vocab_size=VOCAB, num_labels=2, encoder_config=TINY_BERT, trainable="last-k", k=1)
    layer1 = {n for n, _ in last.named_parameters() if n.startswith("encoder.model.encoder.layer.1.")}
    assert layer1 and _trainable(last) == layer1 | {"head.weight", "head.bias"}

    full = build_model("minilm", vocab_size=VOCAB, num_labels=2, encoder_config=TINY_BERT)
    assert _trainable(full) == {n for n, _ in full.named_parameters()}
    assert not any("pooler" in n for n in _trainable(full))

    joint = build_model(
        "joint",
        vocab_size=VOCAB,
        num_labels=2,
        num_tags=3,
        encoder="minilm",
        encoder_options={"encoder_config": TINY_BERT, "trainable": "frozen"},
    )
    assert _trainable(joint) == {"intent_head.weight", "intent_head.bias", "tag_head.weight", "tag_head.bias"}


def test_hf_encoder_gets_contiguous_batched_position_ids() -> None:
    model = make("minilm")
    seen: dict[str, torch.Tensor] = {}
    emb = model.encoder.model.embeddings
    hooks = [
        emb.position_embeddings.register_forward_pre_hook(lambda m, a: seen.setdefault("pos", a[0])),
        emb.token_type_embeddings.register_forward_pre_hook(lambda m, a: seen.setdefault("type", a[0])),
    ]
    ids, mask = batch()
    model(ids, mask)
    for h in hooks:
        h.remove()
    for key in ("pos", "type"):
        assert seen[key].shape == ids.shape and seen[key].is_contiguous()


def test_bilstm_matches_packed_bidirectional_lstm() -> None:
    model = make("lstm").eval()
    enc = model.encoder
    ref = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for suffix, src in (("", enc.forward_lstm), ("_reverse", enc.backward_lstm)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l0{suffix}").copy_(getattr(src, f"{name}_l0"))
        ids, mask = batch()
        x = enc.embedding(ids)
        packed = nn.utils.rnn.pack_padded_sequence(x, mask.sum(1), batch_first=True, enforce_sorted=False)
        want, _ = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=ids.shape[1])
        got = enc(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-6, rtol=0)


def test_self_attention_matches_sdpa() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 4, dropout=0.0)
    x = torch.randn(2, 5, 16)
    allowed = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    q, k, v = (p(x).view(2, 5, 4, 4).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    want = attn.out_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x, allowed), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lm-gpt2", "lm-transformer"])
def test_generate_is_deterministic_under_a_seeded_generator(name: str) -> None:
    model = make(name)
    assert isinstance(model, CausalLM)
    model.train()
    prompt = torch.tensor([[5, 6, 7]])

    def sample(seed: int, **kw: Any) -> torch.Tensor:
        return model.generate(prompt, max_new_tokens=10, generator=torch.Generator().manual_seed(seed), **kw)

    a, b = sample(0, temperature=1.5), sample(0, temperature=1.5)
    assert a.shape == (1, 13) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)
    assert not all(torch.equal(a, sample(s, temperature=1.5)) for s in range(1, 4))
    assert torch.equal(sample(0, temperature=0), sample(1, top_k=1))  # greedy == top-1 sampling
    assert model.training  # mode restored
    assert model.generate(prompt[0], max_new_tokens=2).shape == (5,)


def test_gpt2_lm_ties_its_head_and_takes_special_ids() -> None:
    lm = build_model("lm", vocab_size=VOCAB, pad_id=0, bos_id=2, eos_id=3, dim=16, heads=2, max_len=64)
    assert lm.model.lm_head.weight is lm.model.transformer.wte.weight
    assert (lm.model.config.bos_token_id, lm.model.config.eos_token_id, lm.model.config.pad_token_id) == (2, 3, 0)
    with pytest.raises(ConfigError, match="bos_id"):
        build_model("lm", vocab_size=VOCAB, bos_id=VOCAB)


def test_pretrained_lm_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="nonexistent-org/gpt-nothing.*local directory"):
        CausalLM(vocab_size=VOCAB, model_name="nonexistent-org/gpt-nothing")
    with pytest.raises(ConfigError, match="nonexistent-org/bert-nothing"):
        HFEncoderClassifier(vocab_size=VOCAB, num_labels=2, encoder_name="nonexistent-org/bert-nothing")


@pytest.mark.slow
def test_real_minilm_embeddings_are_pretrained() -> None:
    from trustnlp.data.tokenizers import minilm_tokenizer

    tok = minilm_tokenizer()
    model = build_model("minilm", vocab_size=tok.vocab_size, num_labels=2, pad_id=tok.pad_id).eval()
    assert model.config["encoder_config"]["num_hidden_layers"] == 6
    assert sum(p.numel() for p in model.encoder.parameters()) == 22_565_376
    enc = tok.encode(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    with torch.no_grad():
        emb = F.normalize(model.embed(enc.input_ids, enc.attention_mask), dim=-1)
    assert abs((emb[0] @ emb[1]).item() - 0.755) < 0.01
    assert (emb[0] @ emb[2]).item() < 0.3


def test_frozen_encoder_has_no_dropout_in_train_mode() -> None:
    """A frozen encoder is a fixed feature extractor: same features at every step; the head still trains."""
    cfg = {"model_type": "bert", "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32,
           "hidden_dropout_prob": 0.5, "attention_probs_dropout_prob": 0.5}
    from trustnlp.models import build_model

    ids = torch.randint(1, 100, (4, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    frozen = build_model("minilm", vocab_size=100, num_labels=3, pad_id=0, encoder_config=cfg, trainable="frozen")
    frozen.train()
    enc = next(m for m in frozen.modules() if type(m).__name__ == "HFEncoder")
    assert not enc.model.training and frozen.training
    assert torch.equal(enc(ids, mask), enc(ids, mask))
    full = build_model("minilm", vocab_size=100, num_labels=3, pad_id=0, encoder_config=cfg, trainable="full")
    full.train()
    enc_full = next(m for m in full.modules() if type(m).__name__ == "HFEncoder")
    assert not torch.equal(enc_full(ids, mask), enc_full(ids, mask))  # dropout on when the encoder trains
