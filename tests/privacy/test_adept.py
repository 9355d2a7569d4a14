"""ADePT-style rewriting: calibration of the latent mechanisms, the published flaw, the autoencoder.

Statistical tests use fixed seeds; alpha = 0.01 for goodness of fit, one-sided Clopper-Pearson
bounds at 0.99 each in the event audits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dp_accounting.pld import privacy_loss_distribution as pld
from scipy import stats

from trustnlp.errors import ConfigError, PrivacyError
from trustnlp.privacy.adept import (
    AutoencoderConfig,
    DPRewriter,
    analytic_gaussian_sigma,
    audit_event,
    classic_gaussian_sigma,
    clip,
    gaussian_delta,
    hockey_stick_delta,
    make_latent_mechanism,
    privacy_loss_samples,
    train_autoencoder,
    worst_case_pair,
)

ALPHA = 0.01


def test_clip_in_each_norm() -> None:
    z = np.random.default_rng(0).standard_normal((200, 8)) * np.linspace(0.01, 3, 200)[:, None]
    for norm, p in (("l1", 1), ("l2", 2)):
        c = clip(z, norm=norm, bound=1.5)
        n_in, n_out = np.linalg.norm(z, ord=p, axis=1), np.linalg.norm(c, ord=p, axis=1)
        assert (n_out <= 1.5 * (1 + 1e-12)).all()
        np.testing.assert_array_equal(c[n_in <= 1.5], z[n_in <= 1.5])
        np.testing.assert_allclose(n_out[n_in > 1.5], 1.5, rtol=1e-12)
        np.testing.assert_allclose(clip(torch.as_tensor(z), norm=norm, bound=1.5).numpy(), c, rtol=1e-12)
    with pytest.raises(ConfigError, match="`norm`"):
        clip(z, norm="linf", bound=1.0)
    with pytest.raises(ConfigError, match="`clip_bound`"):
        clip(z, norm="l2", bound=0.0)


@pytest.mark.parametrize(("eps", "delta"), [(0.5, 1e-5), (1.0, 1e-6), (4.0, 1e-5), (8.0, 1e-3)])
def test_analytic_gaussian_sigma_matches_dp_accounting(eps: float, delta: float) -> None:
    sens = 2.0
    sigma = analytic_gaussian_sigma(eps, delta, sensitivity=sens)
    assert gaussian_delta(sigma, epsilon=eps, sensitivity=sens) <= delta
    assert gaussian_delta(sigma * (1 - 1e-9), epsilon=eps, sensitivity=sens) > delta  # the smallest such sigma
    ref = pld.from_gaussian_mechanism(sigma, sensitivity=sens, value_discretization_interval=1e-4)
    assert ref.get_delta_for_epsilon(eps) == pytest.approx(delta, rel=1e-6)
    if eps < 1:
        classic = classic_gaussian_sigma(eps, delta, sensitivity=sens)
        assert classic > sigma and gaussian_delta(classic, epsilon=eps, sensitivity=sens) < delta
    else:
        with pytest.raises(ConfigError, match="`epsilon`"):
            classic_gaussian_sigma(eps, delta, sensitivity=sens)


def test_laplace_l1_privacy_loss_is_bounded_by_epsilon() -> None:
    mech = make_latent_mechanism("laplace-l1", epsilon=1.5, clip_bound=2.0)
    x, xp = worst_case_pair(mech, dim=8)
    assert np.abs(x - xp).sum() == pytest.approx(4.0)
    loss = privacy_loss_samples(mech, x, xp, n=100_000, seed=1)
    assert loss.max() <= 1.5 + 1e-12
    at_max = int((loss >= 1.5 - 1e-9).sum())  # L = eps exactly when y_1 >= C: probability 1/2
    assert stats.binomtest(at_max, len(loss), 0.5).pvalue > ALPHA
    assert hockey_stick_delta(loss, 1.5) < 1e-12  # zero up to rounding
    assert mech.true_epsilon(dim=8) == pytest.approx(1.5)


def test_laplace_l1_is_tight_by_an_event_audit() -> None:
    eps = 1.0
    mech = make_latent_mechanism("laplace-l1", epsilon=eps, clip_bound=1.0)
    x, xp = worst_case_pair(mech, dim=16)
    audit = audit_event(mech, x, xp, threshold=eps - 1e-9, n=100_000, seed=2, confidence=0.99)
    assert audit.epsilon_lower <= eps  # a valid lower bound never exceeds the true epsilon
    assert abs(audit.epsilon_hat - eps) < 0.05  # and the calibration is tight: P[S|x]/P[S|x'] = e^eps


def test_published_adept_violates_its_claimed_epsilon() -> None:
    # ADePT: L2 clip C, Laplace scale 2C/eps. Two L2-clipped latents at L1 distance 2C sqrt(d).
    eps, dim = 1.0, 4
    mech = make_latent_mechanism("adept-published", epsilon=eps, clip_bound=1.0)
    x, xp = worst_case_pair(mech, dim=dim)
    assert np.linalg.norm(x - xp) == pytest.approx(2.0) and np.abs(x - xp).sum() == pytest.approx(4.0)
    assert mech.true_epsilon(dim=dim) == pytest.approx(2.0)
    loss = privacy_loss_samples(mech, x, xp, n=200_000, seed=3)
    assert loss.max() > 1.9 * eps  # the privacy loss reaches sqrt(d) * eps
    # the hockey-stick delta at the claimed eps is far from 0 and matches dp-accounting's exact value
    # for the product of d one-dimensional Laplace mechanisms (sensitivity 2C/sqrt(d) each)
    one = pld.from_laplace_mechanism(mech.scale, sensitivity=2.0 / math.sqrt(dim), value_discretization_interval=1e-4)
    ref = one.self_compose(dim).get_delta_for_epsilon(eps)
    est = hockey_stick_delta(loss, eps)
    assert ref > 0.05 and est == pytest.approx(ref, rel=0.03)
    # an audit with an event fixed in advance proves eps > claimed at 99% confidence
    audit = audit_event(mech, x, xp, threshold=2 * eps - 1e-9, n=200_000, seed=4, confidence=0.99)
    assert eps < audit.epsilon_lower <= mech.true_epsilon(dim=dim)
    # the same pair under the corrected L1 clip + Laplace passes the same audit
    fixed = make_latent_mechanism("laplace-l1", epsilon=eps, clip_bound=1.0)
    ok = audit_event(fixed, fixed.clip(x), fixed.clip(xp), threshold=eps - 1e-9, n=200_000, seed=4, confidence=0.99)
    assert ok.epsilon_lower <= eps


def test_gaussian_l2_privacy_loss_distribution() -> None:
    # for two latents at L2 distance 2C the privacy loss is N(mu, 2 mu), mu = (2C)^2 / (2 sigma^2)
    eps, delta = 2.0, 1e-2  # a large delta so that Monte Carlo resolves the hockey-stick divergence
    mech = make_latent_mechanism("gaussian-l2", epsilon=eps, clip_bound=1.0, delta=delta)
    x, xp = worst_case_pair(mech, dim=16)
    loss = privacy_loss_samples(mech, x, xp, n=400_000, seed=5)
    mu = 4.0 / (2 * mech.scale**2)
    assert stats.kstest(loss, stats.norm(mu, math.sqrt(2 * mu)).cdf).pvalue > ALPHA
    est, se = hockey_stick_delta(loss, eps), np.maximum(0, 1 - np.exp(eps - loss)).std() / math.sqrt(len(loss))
    assert abs(est - delta) < 4 * se  # the analytic calibration spends exactly delta at eps
    # the published ADePT calibration on the same L2 ball is only sqrt(d) * eps-DP
    assert make_latent_mechanism("adept-published", epsilon=eps, clip_bound=1.0).true_epsilon(dim=16) == 4 * eps


def test_latent_mechanism_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="`mechanism`"):
        make_latent_mechanism("laplace-l2", epsilon=1.0, clip_bound=1.0)
    with pytest.raises(ConfigError, match="`delta`"):
        make_latent_mechanism("gaussian-l2", epsilon=1.0, clip_bound=1.0)
    with pytest.raises(ConfigError, match="`delta`"):
        make_latent_mechanism("gaussian-l2", epsilon=1.0, clip_bound=1.0, delta=1.5)
    with pytest.raises(ConfigError, match="`calibration`"):
        make_latent_mechanism("gaussian-l2", epsilon=1.0, clip_bound=1.0, delta=1e-5, calibration="rdp")
    with pytest.raises(ConfigError, match="`epsilon`"):
        make_latent_mechanism("laplace-l1", epsilon=-1.0, clip_bound=1.0)


@pytest.fixture(scope="module")
def autoencoder() -> tuple[object, object]:
    from trustnlp.data.assistant import AssistantConfig, assistant_vocabulary, generate_assistant
    from trustnlp.data.tokenizers import WordTokenizer

    public = generate_assistant(AssistantConfig(n_utterances=150, n_users=10), seed=101)  # public: its own seed
    tok = WordTokenizer.from_vocabulary(assistant_vocabulary(), provenance="generator")
    cfg = AutoencoderConfig(embed_dim=16, hidden=32, latent_dim=8, epochs=3, max_length=16)
    return train_autoencoder(public.train.texts, tok, config=cfg, clip_norm="l1", clip_bound=1.0, seed=0), tok


def test_rewriter_releases_clipped_noisy_latents(autoencoder: tuple[object, object]) -> None:
    model, tok = autoencoder
    texts = ["play some jazz", "set an alarm for seven am", "what is the weather in paris"]
    mech = make_latent_mechanism("laplace-l1", epsilon=2.0, clip_bound=1.0)
    rw = DPRewriter(model, tok, mech)  # type: ignore[arg-type]
    out = rw.rewrite(texts, seed=0)
    assert len(out) == 3 and all(o.strip() for o in out)
    assert out == rw.rewrite(texts, seed=0)
    latents = rw.latents(texts)
    assert (np.abs(mech.clip(latents)).sum(axis=1) <= 1.0 + 1e-12).all()
    # with (almost) no noise the rewrite is the greedy decoding of the clipped latent
    quiet = DPRewriter(model, tok, make_latent_mechanism("laplace-l1", epsilon=1e12, clip_bound=1.0))  # type: ignore[arg-type]
    ids = model.generate(torch.as_tensor(clip(latents, norm="l1", bound=1.0), dtype=torch.float32),  # type: ignore[attr-defined]
                         bos=tok.cls_id, eos=tok.sep_id, max_length=16)  # type: ignore[attr-defined]
    assert quiet.rewrite(texts, seed=7) == [tok.decode(r) for r in ids]  # type: ignore[attr-defined]


def test_autoencoder_refuses_a_private_vocabulary() -> None:
    from trustnlp.data.tokenizers import WordTokenizer

    tok = WordTokenizer.build(["my pin is 4719"], provenance="private-train")
    with pytest.raises(PrivacyError, match="private"):
        train_autoencoder(["my pin is 4719"], tok, config=AutoencoderConfig(epochs=1))
