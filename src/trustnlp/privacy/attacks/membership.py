"""Membership-inference scores: loss threshold, calibrated loss, and LiRA (online and offline).

Every function returns one score per example, **higher = more likely a member**, to be turned into
an ROC curve, AUC and TPR at fixed FPR by :mod:`trustnlp.privacy.attacks.roc`. Inputs are plain
arrays: the target model's per-example statistic ``[N]`` and, for the shadow-based attacks, the same
statistic under ``K`` shadow (reference) models ``[K, N]`` with ``in_mask[k, i]`` true when shadow
``k`` was trained on example ``i``.

- **Loss threshold** (Yeom et al. 2018, "Privacy risk in machine learning"): ``s_i = -loss_i``.
- **Calibrated loss** (Watson et al. 2022, "On the importance of difficulty calibration in membership
  inference attacks"): ``s_i = -(loss_i - mean_k loss_k,i)`` over reference models; with ``in_mask``
  only the references that did *not* train on ``i`` are averaged (the offline form).
- **LiRA** (Carlini et al. 2022, "Membership inference attacks from first principles") on the
  logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` (:func:`logit_confidence`). Per example, fit
  ``N(mu_in, s_in^2)`` to the shadows that trained on it and ``N(mu_out, s_out^2)`` to those that did not;
  *online*: ``s_i = log N(phi_i; mu_in, s_in^2) - log N(phi_i; mu_out, s_out^2)`` (the log likelihood ratio);
  *offline*: the one-sided test against OUT only, ``s_i = log Phi((phi_i - mu_out) / s_out)`` (the log of
  the paper's ``Lambda = 1 - P[Z > phi_i]``, same ranking, finite far into the tail).
  With few shadows, ``global_variance=True`` replaces each per-example variance by the pooled
  within-example variance ``Σ_i Σ_{k∈IN_i} (phi_ki - mu_in,i)^2 / Σ_i (|IN_i| - 1)`` (and likewise OUT),
  the paper's "fixed variance" variant. (The authors' code takes the variance of all values around
  the global mean, which also counts the spread of per-example means; the pooled within-example
  variance is the estimator of a shared variance.) Per-example variances use ``ddof = 1``.

Shadow inclusion: use :func:`shadow_inclusion_mask` (each example in exactly half of the shadows,
each shadow on about half of the population, as in the authors' code); with independent coin flips
some examples end up with too few IN or OUT shadows to fit, which is an error here, never a silent
fallback.

Example:
    >>> rng = np.random.default_rng(0)
    >>> k, n = 16, 1000
    >>> in_mask = shadow_inclusion_mask(k, n, seed=0)
    >>> difficulty = rng.normal(0, 2, n)
    >>> shadow_phi = difficulty + in_mask * 1.0 + rng.normal(0, 1, (k, n))
    >>> target_in = rng.random(n) < 0.5
    >>> target_phi = difficulty + target_in * 1.0 + rng.normal(0, 1, n)
    >>> scores = lira_scores(target_phi, shadow_phi, in_mask)
    >>> scores.shape
    (1000,)
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from trustnlp.errors import DataError, expected
from trustnlp.privacy.attacks._checks import as_mask, as_scores, check_int

__all__ = [
    "logit_confidence",
    "loss_scores",
    "calibrated_loss_scores",
    "lira_scores",
    "shadow_inclusion_mask",
]

_MIN_STD = 1e-30  # floor on a fitted standard deviation (identical shadow values), as in the authors' code


def logit_confidence(logits: object, labels: object) -> np.ndarray:
    """The logit-scaled confidence ``phi = log p_y - log(1 - p_y)`` of the true class, computed stably.

    With ``p = softmax(z)``, ``phi = z_y - logsumexp_{j != y} z_j``: no probability is formed, so
    ``phi`` stays exact where ``p_y`` rounds to 1 (large margins) or underflows to 0.

    Args:
        logits: ``[..., C]`` with ``C >= 2`` (a numpy array, or a CPU torch tensor).
        labels: integer labels of shape ``logits.shape[:-1]``, in ``[0, C)``.

    Returns:
        float64 ``phi`` of shape ``logits.shape[:-1]``.
    """
    z = _to_numpy(logits, "logits")
    y = _to_numpy(labels, "labels")
    if z.ndim < 1 or z.shape[-1] < 2:
        raise DataError(expected("logits", "an array of shape [..., C] with C >= 2 classes", f"shape {z.shape}"))
    z = z.astype(np.float64)
    if not np.isfinite(z).all():
        raise DataError(expected("logits", "finite everywhere", "non-finite values"))
    if y.shape != z.shape[:-1] or not np.issubdtype(y.dtype, np.integer):
        raise DataError(expected("labels", f"integers of shape {z.shape[:-1]}", f"{y.dtype} of shape {y.shape}"))
    if ((y < 0) | (y >= z.shape[-1])).any():
        raise DataError(expected("labels", f"in [0, {z.shape[-1]})", f"values from {y.min()} to {y.max()}"))
    idx = y[..., None]
    z_true = np.take_along_axis(z, idx, axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, idx, -np.inf, axis=-1)
    return z_true - special.logsumexp(others, axis=-1)


def _to_numpy(x: object, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError):
        raise DataError(expected(name, "an array", type(x).__name__)) from None


def loss_scores(losses: object) -> np.ndarray:
    """Loss-threshold attack (Yeom et al. 2018): ``s_i = -loss_i`` (low loss -> member)."""
    return -as_scores(losses, "losses")


def _shadows(target: object, shadow: object, in_mask: object, target_name: str,
             shadow_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = as_scores(target, target_name)
    s = as_scores(shadow, shadow_name, ndim=2)
    if s.shape[1] != t.size:
        raise DataError(expected(shadow_name, f"of shape [K, {t.size}] (one column per target example)",
                                 f"shape {s.shape}"))
    m = as_mask(in_mask, "in_mask", s.shape) if in_mask is not None else None
    return t, s, m  # type: ignore[return-value]


def calibrated_loss_scores(losses: object, reference_losses: object, *, in_mask: object | None = None) -> np.ndarray:
    """Difficulty-calibrated loss attack (Watson et al. 2022): ``s_i = -(loss_i - mean_k ref_k,i)``.

    Args:
        losses: the target model's per-example losses ``[N]``.
        reference_losses: the same examples' losses under ``K`` reference models ``[K, N]``.
        in_mask: optional ``[K, N]``; when given, only references with ``in_mask[k, i]`` false (not
            trained on example ``i``) are averaged, and every example needs at least one.
    """
    t, ref, m = _shadows(losses, reference_losses, in_mask, "losses", "reference_losses")
    if m is None:
        return -(t - ref.mean(axis=0))
    out = ~m
    count = out.sum(axis=0)
    _need(count, 1, "reference model not trained on it")
    return -(t - np.where(out, ref, 0.0).sum(axis=0) / count)


def _need(count: np.ndarray, minimum: int, what: str) -> None:
    bad = np.flatnonzero(count < minimum)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"Expected every example to have at least {minimum} {what}, but example {i} has {int(count[i])} "
            f"({bad.size} examples fall short). Use `shadow_inclusion_mask` (each example in exactly half "
            "of the shadows), more shadows, or `global_variance=True`.")


def _fit(values: np.ndarray, mask: np.ndarray, *, global_variance: bool, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and std of ``values[k, i]`` over ``k`` with ``mask[k, i]`` (ddof 1, or pooled)."""
    count = mask.sum(axis=0)
    _need(count, 1 if global_variance else 2, f"{side} shadow model")
    mean = np.where(mask, values, 0.0).sum(axis=0) / count
    sq = np.where(mask, (values - mean) ** 2, 0.0).sum(axis=0)
    if global_variance:
        dof = int((count - 1).sum())
        if dof < 1:
            raise DataError(expected(f"{side} shadow values", "at least one example with 2 or more shadows "
                                     "for a pooled variance", "none"))
        std = np.full(count.shape, np.sqrt(sq.sum() / dof))
    else:
        std = np.sqrt(sq / (count - 1))
    return mean, np.maximum(std, _MIN_STD)


def lira_scores(target_confidences: object, shadow_confidences: object, in_mask: object, *, online: bool = True,
                global_variance: bool = False) -> np.ndarray:
    """LiRA membership scores (Carlini et al. 2022) from logit-scaled confidences.

    Args:
        target_confidences: ``phi`` of the target model on each example ``[N]``
            (:func:`logit_confidence`; average over augmentations/queries beforehand if any).
        shadow_confidences: ``phi`` of each shadow model on each example ``[K, N]``.
        in_mask: ``[K, N]`` boolean, true where shadow ``k`` trained on example ``i``.
        online: the likelihood ratio of IN vs OUT fits (needs IN and OUT shadows for every example);
            ``False``: the offline one-sided test ``log Phi((phi - mu_out) / s_out)`` (OUT shadows only).
        global_variance: one pooled variance for all examples (per side) instead of per-example
            variances; the paper's choice with few shadows (e.g. fewer than 64).

    Returns:
        float64 scores ``[N]``, higher = more likely a member.
    """
    if not isinstance(online, bool) or not isinstance(global_variance, bool):
        raise DataError(expected("online and global_variance", "bools", (online, global_variance)))
    phi, shadow, m = _shadows(target_confidences, shadow_confidences, in_mask, "target_confidences",
                              "shadow_confidences")
    mu_out, sd_out = _fit(shadow, ~m, global_variance=global_variance, side="OUT")
    if not online:
        return stats.norm.logcdf(phi, loc=mu_out, scale=sd_out)
    mu_in, sd_in = _fit(shadow, m, global_variance=global_variance, side="IN")
    return stats.norm.logpdf(phi, loc=mu_in, scale=sd_in) - stats.norm.logpdf(phi, loc=mu_out, scale=sd_out)


def shadow_inclusion_mask(n_shadows: int, n_examples: int, *, seed: int = 0) -> np.ndarray:
    """``[K, N]`` inclusion mask with every example in exactly ``K // 2`` shadows (Carlini et al.'s design).

    Each column is a uniformly random set of ``K // 2`` shadows, so every shadow trains on about half
    of the population and every example has ``K // 2`` IN and ``K - K // 2`` OUT shadows (``K`` even:
    a balanced split; online LiRA with per-example variances needs ``K >= 4``).
    """
    k = check_int(n_shadows, "n_shadows", 2)
    n = check_int(n_examples, "n_examples", 1)
    seed = check_int(seed, "seed", 0)
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((k, n)), axis=0)
    return order < k // 2
