"""White-box inversion: the embedding adapters, exact recovery of a unique maximiser, chance on a
model that never saw the canaries, the oracle against brute force, decoding and the metrics."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustnlp.data.canaries import (
    CanarySpec,
    SecretSpace,
    canary_vocabulary,
    make_canaries,
    secret_token_ids,
)
from trustnlp.data.tokenizers import WordTokenizer, minilm_tokenizer
from trustnlp.errors import ConfigError, DataError
from trustnlp.models import build_model
from trustnlp.privacy.attacks.embedding_forward import (
    forward_from_embeddings,
    input_embedding,
    supports_embedding_forward,
)
from trustnlp.privacy.attacks.extraction import (
    exact_rank_statistics,
    extraction_metrics,
    rank_test,
    sampled_rank_statistics,
    set_overlap,
    set_recovery_chance,
)
from trustnlp.privacy.attacks.inversion import (
    InversionConfig,
    InversionTarget,
    _top_k_sequences,
    canary_targets,
    exhaustive_log_probs,
    invert,
    sampled_log_probs,
    score_secrets,
)

VOCAB, LABELS = 40, 3
TINY_BERT = {"model_type": "bert", "vocab_size": VOCAB, "hidden_size": 16, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "bag": ("bag", {"dim": 8}),
    "bag-hidden": ("bag", {"dim": 8, "hidden": 6}),
    "cnn": ("cnn", {"dim": 8, "filters": 4}),
    "lstm": ("lstm", {"dim": 8, "hidden": 6}),
    "transformer": ("transformer", {"dim": 16, "heads": 2, "ff": 32, "max_len": 32}),
    "minilm": ("minilm", {"encoder_config": TINY_BERT}),
    "minilm-cls-eager": ("minilm", {"encoder_config": TINY_BERT, "pooling": "cls", "attn_implementation": "eager"}),
    "minilm-frozen": ("minilm", {"encoder_config": TINY_BERT, "trainable": "frozen"}),
    "minilm-lora": ("minilm", {"encoder_config": TINY_BERT, "trainable": "lora", "lora_r": 2}),
}


def make(name: str) -> nn.Module:
    arch, options = FAMILIES[name]
    torch.manual_seed(0)
    return build_model(arch, vocab_size=VOCAB, num_labels=LABELS, pad_id=0, **options).double().eval()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_soft_embedding_forward_equals_the_forward_on_one_hot_inputs(name: str) -> None:
    model = make(name)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    ids[1, 6:] = 0
    weight = input_embedding(model).weight
    soft = (F.one_hot(ids, VOCAB).double() @ weight.detach()).requires_grad_()
    with torch.no_grad():
        expected = model(ids, mask)
    got = forward_from_embeddings(model, soft, mask)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    (grad,) = torch.autograd.grad(got[:, 0].sum(), soft)  # gradients reach the relaxed inputs (also frozen)
    assert grad[0].abs().sum() > 0 and torch.isfinite(grad).all()
    assert supports_embedding_forward(model)


def test_unsupported_model_and_bad_shapes_are_refused() -> None:
    with pytest.raises(ConfigError, match="no forward-from-embeddings adapter"):
        input_embedding(nn.Linear(3, 3))
    model = make("cnn")
    with pytest.raises(DataError, match="inputs_embeds"):
        forward_from_embeddings(model, torch.zeros(2, 5, 3, dtype=torch.float64), torch.ones(2, 5, dtype=torch.long))


class PositionalLinear(nn.Module):
    """``logit_l = sum_t W[l, t] . e(x_t)`` with one-hot embeddings: position-aware, so a sequence
    (not just a set) can be the unique maximiser of a label."""

    def __init__(self, vocab: int, max_len: int, num_labels: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, vocab)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.eye(vocab))
        self.weight = nn.Parameter(torch.zeros(num_labels, max_len, vocab))

    def input_embedding(self) -> nn.Embedding:
        return self.embedding

    def forward_from_embeddings(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = e.shape[1]
        return torch.einsum("btd,ltd->bl", e * mask[..., None].to(e.dtype), self.weight[:, :t])

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_from_embeddings(self.embedding(ids), mask)


@pytest.fixture(scope="module")
def digit_setup() -> tuple[Any, Any, list[int], list[InversionTarget]]:
    cs = make_canaries(CanarySpec(kind="digits", n_canaries=100), tuple(f"l{i}" for i in range(LABELS * 10)), seed=0)
    tok = WordTokenizer.from_vocabulary(canary_vocabulary(cs.space, cs.spec.resolved_templates), provenance="public")
    return cs, tok, secret_token_ids(tok, cs.space), canary_targets(tok, cs.canaries, length=4)


def test_targets_and_scores_match_the_tokenizer_layout(digit_setup) -> None:
    cs, tok, cand, targets = digit_setup
    torch.manual_seed(0)
    model = build_model("cnn", vocab_size=tok.vocab_size, num_labels=30, dim=8, filters=4).eval()
    texts = [c.text for c in cs.canaries[:10]]
    enc = tok.encode(texts, max_length=32)
    for i, c in enumerate(cs.canaries[:10]):
        ids = list(targets[i].input_ids)
        for pos, s in zip(targets[i].slots, c.secret):
            ids[pos] = cand[s]
        assert ids == enc.input_ids[i][enc.attention_mask[i].bool()].tolist()
    with torch.no_grad():
        direct = torch.log_softmax(model(enc.input_ids, enc.attention_mask).double(), -1)
    want = direct[torch.arange(10), torch.tensor([c.label for c in cs.canaries[:10]])].numpy()
    got = score_secrets(model, targets[:10], cand, cs.secrets[:10], batch_size=3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the WordPiece layout too: every digit is one token, the template's words keep their pieces
    wp = minilm_tokenizer()
    wp_targets = canary_targets(wp, cs.canaries[:3], length=4)
    wp_cand = secret_token_ids(wp, cs.space)
    enc = wp.encode([c.text for c in cs.canaries[:3]], max_length=32)
    for i, c in enumerate(cs.canaries[:3]):
        ids = list(wp_targets[i].input_ids)
        for pos, s in zip(wp_targets[i].slots, c.secret):
            ids[pos] = wp_cand[s]
        assert ids == enc.input_ids[i][enc.attention_mask[i].bool()].tolist()


def test_the_attack_recovers_a_unique_maximising_sequence_exactly(digit_setup) -> None:
    cs, tok, cand, targets = digit_setup
    chosen = [next(c for c in cs.canaries if c.label == lab) for lab in range(LABELS)]  # one canary per label
    model = PositionalLinear(tok.vocab_size, 16, 30).double()
    with torch.no_grad():
        for c, t in zip(chosen, canary_targets(tok, chosen, length=4)):
            for pos, s in zip(t.slots, c.secret):
                model.weight[c.label, pos, cand[s]] = 4.0
    sub = canary_targets(tok, chosen, length=4)
    secrets = np.array([c.secret for c in chosen])
    # the construction: by exhaustive search, each secret is the unique maximiser of its label
    lp = exhaustive_log_probs(model, sub, cand, cs.space.enumerate())
    top2 = np.sort(lp, axis=1)[:, -2:]
    assert (lp.argmax(axis=1) == cs.space.index_of(secrets)).all() and (top2[:, 1] - top2[:, 0] > 1e-5).all()
    for relaxation in ("gumbel", "softmax"):
        out = invert(model, sub, cand, config=InversionConfig(steps=80, relaxation=relaxation), seed=0)
        np.testing.assert_array_equal(out.guesses, secrets)
        np.testing.assert_array_equal(out.argmax_guesses, secrets)
    stats_ = exact_rank_statistics(lp, cs.space.index_of(secrets))
    assert (stats_.ranks == 1).all() and np.allclose(stats_.exposures, np.log2(10**4))
    m = extraction_metrics(out.guesses, secrets, alphabet_size=10, rank_fractions=stats_.rank_fractions,
                           ranks=stats_.ranks, exposures=stats_.exposures)
    assert m.extraction_rate == 1.0 and m.extraction_interval[0] > m.chance and m.rank_test.significant


def test_the_attack_recovers_a_bag_models_maximiser_through_the_hook(digit_setup) -> None:
    # bag of embeddings (the real BagClassifier): order-invariant and linear, so the maximiser of
    # label 0 is the best token t* repeated in every slot
    cs, tok, cand, targets = digit_setup
    torch.manual_seed(0)
    model = build_model("bag", vocab_size=tok.vocab_size, num_labels=2, dim=6).double().eval()
    best = 7
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[0, 0] = 1.0
        model.encoder.embedding.weight[:, 0] = 0.0
        model.encoder.embedding.weight[cand, 0] = torch.linspace(-1.0, 1.0, 10, dtype=torch.float64)[torch.randperm(10)]
        model.encoder.embedding.weight[cand[best], 0] = 3.0
    sub = [InversionTarget(t.input_ids, t.slots, 0) for t in targets[:5]]
    out = invert(model, sub, cand, config=InversionConfig(steps=100), seed=0)
    np.testing.assert_array_equal(out.guesses, np.full((5, 4), best))
    assert set_overlap(out.guesses[0], [best, 1, best, 2]) == 2


def test_a_model_never_trained_on_the_canaries_is_at_chance(digit_setup) -> None:
    # alpha = 0.05 for the rank test; 95% Clopper-Pearson intervals must contain chance
    cs, tok, cand, targets = digit_setup
    torch.manual_seed(3)
    model = build_model("cnn", vocab_size=tok.vocab_size, num_labels=30, dim=8, filters=4).eval()
    out = invert(model, targets, cand, config=InversionConfig(steps=40, top_k=5), seed=0)
    lp = exhaustive_log_probs(model, targets, cand, cs.space.enumerate(), batch_size=4096)
    ranks = exact_rank_statistics(lp, cs.space.index_of(cs.secrets))
    m = extraction_metrics(out.guesses, cs.secrets, alphabet_size=10, rank_fractions=ranks.rank_fractions,
                           ranks=ranks.ranks, exposures=ranks.exposures, alpha=0.05)
    assert m.extraction_interval[0] <= m.chance <= m.extraction_interval[1]
    assert m.token_accuracy_interval[0] <= m.token_chance <= m.token_accuracy_interval[1]
    assert not m.rank_test.significant
    # the attack does its job on this model: its guesses are at least as likely as the true secrets
    own = score_secrets(model, targets, cand, cs.secrets)
    assert (out.candidate_scores[:, 0] >= own - 1e-9).mean() > 0.95


def test_the_oracle_rank_agrees_with_brute_force_on_a_tiny_space() -> None:
    space = SecretSpace(kind="tiny", tokens=("a", "b", "c"), length=3)
    tok = WordTokenizer.from_vocabulary(["my", "code", "is", "and", "a", "b", "c"], provenance="public")
    cand = secret_token_ids(tok, space)
    torch.manual_seed(0)
    model = build_model("transformer", vocab_size=tok.vocab_size, num_labels=4, dim=8, heads=2, ff=16,
                        max_len=16).double().eval()

    class C:  # a canary: what canary_targets reads
        def __init__(self, prefix: str, suffix: str, label: int) -> None:
            self.prefix, self.suffix, self.label = prefix, suffix, label

    canaries = [C("my code is", "", 0), C("my code is", "", 3), C("code", "and is", 1)]
    targets = canary_targets(tok, canaries, length=3)
    all_secrets = space.enumerate()
    lp = exhaustive_log_probs(model, targets, cand, all_secrets, batch_size=5)
    secret_index = np.array([4, 26, 13])
    ranks = exact_rank_statistics(lp, secret_index).ranks
    for i, c in enumerate(canaries):  # brute force: one forward per candidate text
        scores = []
        for s in itertools.product("abc", repeat=3):
            enc = tok.encode([f"{c.prefix} {' '.join(s)} {c.suffix}"], max_length=32)
            with torch.no_grad():
                scores.append(torch.log_softmax(model(enc.input_ids, enc.attention_mask), -1)[0, c.label].item())
        scores = np.array(scores)
        np.testing.assert_allclose(lp[i], scores, rtol=1e-10)
        assert ranks[i] == (scores >= scores[secret_index[i]]).sum()


def test_beam_decoding_gives_the_exact_top_k_of_the_separable_score() -> None:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    got = _top_k_sequences(theta, 7)
    for b in range(4):
        seqs = list(itertools.product(range(5), repeat=3))
        score = [sum(theta[b, j, x].item() for j, x in enumerate(s)) for s in seqs]
        want = [seqs[i] for i in np.argsort(score)[::-1][:7]]
        assert [tuple(r) for r in got[b].tolist()] == want
    assert _top_k_sequences(theta[:, :1, :2], 10).shape == (4, 2, 1)  # fewer sequences than k


def test_sampled_scores_and_rank_statistics() -> None:
    space = SecretSpace(kind="tiny", tokens=("a", "b", "c", "d"), length=2)
    tok = WordTokenizer.from_vocabulary(["pin", "a", "b", "c", "d"], provenance="public")
    cand = secret_token_ids(tok, space)
    torch.manual_seed(0)
    model = build_model("cnn", vocab_size=tok.vocab_size, num_labels=2, dim=8, filters=4).double().eval()
    targets = [InversionTarget((2, 4, 0, 0, 3), (2, 3), 1)]
    samples = sampled_log_probs(model, targets, cand, n_samples=50, seed=0)
    assert samples.shape == (1, 50)
    exhaustive = exhaustive_log_probs(model, targets, cand, space.enumerate())[0]
    assert set(np.round(samples[0], 10)) <= set(np.round(exhaustive, 10))  # each sample is some secret's score
    own = np.array([-1.0, -2.0])
    rs = sampled_rank_statistics(own, np.array([np.linspace(-3, 0, 11), np.linspace(-3, 0, 11)]), space_size=10**6)
    # u = (1 + #{samples >= own}) / (m + 1): -1 has 4 samples >= it (-0.9, -0.6, -0.3, 0 and -1.2? no)
    np.testing.assert_allclose(rs.rank_fractions, [(1 + 4) / 12, (1 + 7) / 12])
    assert rs.kind == "sampled" and (rs.ranks >= 1).all() and rs.n_samples == 11
    tied = exact_rank_statistics(np.array([[0.0, 0.0, -1.0]]), np.array([0]))
    assert tied.ranks[0] == 2  # ties count against the secret


def test_extraction_metrics_by_hand() -> None:
    secrets = np.array([[1, 2, 3], [4, 4, 5], [0, 1, 2]])
    guesses = np.array([[1, 2, 3], [4, 5, 4], [9, 9, 9]])
    m = extraction_metrics(guesses, secrets, alphabet_size=10, rank_fractions=np.array([1e-3, 0.5, 0.9]),
                           ranks=np.array([1.0, 500.0, 900.0]), exposures=np.array([9.97, 1.0, 0.15]))
    assert m.exact_matches == 1 and m.extraction_rate == pytest.approx(1 / 3) and m.chance == 1e-3
    assert m.token_accuracy == pytest.approx(4 / 9) and m.per_position_accuracy == (2 / 3, 1 / 3, 1 / 3)
    assert m.set_recovery == pytest.approx((3 + 3 + 0) / 9)
    assert m.mean_rank == pytest.approx(467.0) and m.median_rank == 500.0 and m.rank_chance == 500.5
    d = m.to_dict()
    assert d["extraction_interval"][0] < 1 / 3 < d["extraction_interval"][1] and d["rank_test"]["alpha"] == 0.05
    with pytest.raises(DataError, match="rank_fractions"):
        extraction_metrics(guesses, secrets, alphabet_size=10, rank_fractions=np.ones(2), ranks=np.ones(3),
                           exposures=np.ones(3))


def test_set_recovery_chance_is_exact() -> None:
    # against the average multiset overlap over every secret of a tiny space
    guesses = np.array([[0, 0, 1], [2, 1, 0], [1, 1, 1]])
    v, length = 3, 3
    for g in guesses:
        brute = np.mean([set_overlap(g, s) for s in itertools.product(range(v), repeat=length)]) / length
        assert set_recovery_chance(g[None], v) == pytest.approx(brute, rel=1e-12)
    assert Counter([0, 0]) & Counter([0]) == Counter([0])


def test_rank_test_against_uniform() -> None:
    rng = np.random.default_rng(0)
    assert not rank_test(rng.random(200)).significant  # chance (alpha = 0.05)
    better = rank_test(rng.random(200) * 0.7)
    assert better.significant and better.p_value < 1e-6
    assert not rank_test(0.3 + 0.7 * rng.random(200)).significant  # worse than chance is not "leaks"
    with pytest.raises(DataError, match="rank_fractions"):
        rank_test(np.array([0.0, 0.5]))
