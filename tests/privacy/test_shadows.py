"""Shadow training: the cheap paths (batched vmap, frozen-encoder features) give the plain path's models.

Equality is tested in float64 after several optimiser steps: the paths differ only in the order of
floating-point sums (vmap'd embedding backward; features encoded in one batch instead of per
training batch), so parameters agree to rtol 1e-9 (observed: <= 1e-16 absolute).
"""

import numpy as np
import pytest
import torch

from trustnlp.config import TrainConfig
from trustnlp.errors import ConfigError, DataError
from trustnlp.models import build_model
from trustnlp.privacy.attacks import logit_confidence, shadow_inclusion_mask
from trustnlp.privacy.attacks.shadows import (
    BATCH_BUDGET,
    derive_seed,
    fresh_model,
    resolve_path,
    train_models,
)
from trustnlp.tasks import ClassifyTask, EncodedData

RTOL, ATOL = 1e-9, 1e-12
TINY_BERT = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 32}


def _data(n=120, t=8, vocab=60, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    return EncodedData(ids * mask, mask, torch.randint(0, classes, (n,), generator=g))


def _bag():
    torch.manual_seed(0)
    return build_model("bag", vocab_size=60, num_labels=4, pad_id=0, dim=8).double()


def _frozen_bert():
    torch.manual_seed(0)
    return build_model("minilm", vocab_size=64, num_labels=4, pad_id=0, encoder_config=TINY_BERT,
                       trainable="frozen").double()


def _config(**kw):
    base = dict(epochs=3, batch_size=16, physical_batch_size=16, eval_every=0, lr=0.05, threads=1, device="cpu")
    return TrainConfig(**{**base, **kw})


def _train(template, masks, config, path, **kw):
    k = masks.shape[0]
    return train_models(template, ClassifyTask(4), _data(), masks, config=config, seeds=[11 + i for i in range(k)],
                        names=[f"m{i}" for i in range(k)], path=path, keep_parameters=True, progress=False,
                        test=_data(40, seed=1), **kw)


def _assert_same(runs_a, runs_b):
    for a, b in zip(runs_a, runs_b, strict=True):
        assert a.seed == b.seed and a.stats["steps"] == b.stats["steps"] and a.stats["n_train"] == b.stats["n_train"]
        assert set(a.parameters) == set(b.parameters) and a.parameters
        for name in a.parameters:
            torch.testing.assert_close(a.parameters[name], b.parameters[name], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(a.confidences, b.confidences, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(a.losses, b.losses, rtol=RTOL, atol=ATOL)
        assert a.stats["test_accuracy"] == b.stats["test_accuracy"]


@pytest.mark.parametrize("recipe", [
    dict(optimizer="adamw", weight_decay=0.01, warmup_ratio=0.2),
    dict(optimizer="adam", weight_decay=0.01, scheduler="cosine"),
    dict(optimizer="sgd", weight_decay=0.001, grad_clip=0.05, scheduler="constant"),
])
def test_batched_path_equals_plain(recipe):
    masks = shadow_inclusion_mask(4, 120, seed=0)  # 68, 57, 52 and 63 examples: 5, 4, 4, 4 steps per epoch
    sizes = masks.sum(axis=1)
    assert len(set(np.ceil(sizes / 16))) > 1  # models end after different numbers of steps (ragged schedule)
    config = _config(**recipe)
    plain, batched = _train(_bag(), masks, config, "plain"), _train(_bag(), masks, config, "batched")
    _assert_same(plain, batched)
    assert {r.path for r in batched} == {"batched"}
    start = fresh_model(_bag(), 11)
    assert (plain[0].parameters["head.weight"] - start.head.weight).abs().max() > 1e-3  # it did train


@pytest.mark.parametrize("private", [False, True])
def test_features_path_equals_plain(private):
    """Head dropout (p = 0.1) is active: equal models also mean equal dropout masks and, with DP, equal noise."""
    masks = shadow_inclusion_mask(2, 120, seed=1)
    config = _config(epochs=2, **(dict(dp=True, noise_multiplier=1.0, delta=1e-5) if private else {}))
    template = _frozen_bert()
    assert template.dropout.p > 0
    plain, features = _train(template, masks, config, "plain"), _train(template, masks, config, "features")
    _assert_same(plain, features)
    if private:
        for a, b in zip(plain, features):
            assert a.stats["noise_multiplier"] == b.stats["noise_multiplier"] == 1.0
            assert a.stats["epsilon"] == pytest.approx(b.stats["epsilon"]) and a.stats["epsilon"] > 0


def test_scores_are_logit_confidences_of_the_trained_model():
    masks = shadow_inclusion_mask(2, 120, seed=0)
    template, data = _bag(), _data()
    run = _train(template, masks, _config(epochs=1), "plain")[0]
    model = fresh_model(template, run.seed)
    model.load_state_dict(run.parameters)
    with torch.no_grad():
        logits = model.eval()(data.input_ids, data.attention_mask)
    np.testing.assert_allclose(run.confidences, logit_confidence(logits, data.labels), rtol=1e-12)
    ce = torch.nn.functional.cross_entropy(logits, data.labels, reduction="none").numpy()
    np.testing.assert_allclose(run.losses, ce, rtol=1e-10)


def test_store_resumes_and_refuses_another_recipe(tmp_path, monkeypatch):
    masks = shadow_inclusion_mask(2, 120, seed=0)
    first = _train(_bag(), masks, _config(epochs=1), "plain", store=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.safetensors", "m1.safetensors"]

    def no_training(*args, **kwargs):
        raise AssertionError("a stored model was trained again")

    monkeypatch.setattr("trustnlp.train.fit", no_training)
    again = _train(_bag(), masks, _config(epochs=1), "plain", store=tmp_path)
    assert [r.path for r in again] == ["stored", "stored"]
    _assert_same(first, again)
    with pytest.raises(ConfigError, match="different recipe"):
        _train(_bag(), masks, _config(epochs=2), "plain", store=tmp_path)
    with pytest.raises(ConfigError, match="different recipe"):
        _train(_bag(), ~masks, _config(epochs=1), "plain", store=tmp_path)


def test_paths_resolve_where_they_apply():
    bag, bert = _bag(), _frozen_bert()
    assert resolve_path(bag, _config(), "auto") == "batched"
    assert resolve_path(bag, _config(dp=True, epsilon=1.0), "auto") == "plain"
    assert resolve_path(bert, _config(), "auto") == "features"
    assert resolve_path(bert, _config(dp=True, epsilon=1.0), "auto") == "features"
    big = build_model("bag", vocab_size=BATCH_BUDGET // 8, num_labels=4, pad_id=0, dim=8)
    assert resolve_path(big, _config(), "auto") == "plain"  # too large to stack: one at a time is faster
    with pytest.raises(ConfigError, match="non-private only"):
        resolve_path(bag, _config(dp=True, epsilon=1.0), "batched")
    with pytest.raises(ConfigError, match="features path needs a frozen encoder"):
        resolve_path(bag, _config(), "features")
    with pytest.raises(ConfigError, match="Expected `path`"):
        resolve_path(bag, _config(), "fast")
    dropout_bag = build_model("bag", vocab_size=60, num_labels=4, pad_id=0, dim=8, dropout=0.2)
    assert resolve_path(dropout_bag, _config(), "auto") == "plain"


def test_fresh_models_follow_their_seed():
    bag, bert = _bag(), _frozen_bert()
    for template in (bag, bert):
        a, b, c = fresh_model(template, 1), fresh_model(template, 1), fresh_model(template, 2)
        assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)
        assert a.head.weight.dtype == torch.float64
    # a pretrained encoder keeps the template's weights; only the head is new
    assert all(torch.equal(p, q) for p, q in zip(fresh_model(bert, 5).encoder.parameters(), bert.encoder.parameters()))
    assert derive_seed(0, "shadow", 1) == derive_seed(0, "shadow", 1) != derive_seed(0, "shadow", 2)


def test_bad_masks_are_named():
    with pytest.raises(DataError, match="masks"):
        _train(_bag(), np.ones((2, 5), dtype=bool), _config(), "plain")
    empty = np.zeros((2, 120), dtype=bool)
    empty[1, :3] = True
    with pytest.raises(DataError, match="'m0' has none"):
        _train(_bag(), empty, _config(), "plain")
