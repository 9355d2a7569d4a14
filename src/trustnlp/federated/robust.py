"""Byzantine-robust aggregation, server-side update validation and fault injection for the federated simulator.

Client updates are given either as flat 1-D float tensors of one length or as ``dict[str, Tensor]`` of one
layout (:func:`flatten` / :func:`unflatten` convert, in sorted key order). Every rule here is agnostic of
whether the vectors are client *models* ``x^k`` or *deltas* ``x^k - x``: the rules are translation-equivariant
(``rule(v + c) = rule(v) + c``), so aggregating models and aggregating deltas give the same global step.

Aggregation rules (``--robust`` spec, parsed by :func:`parse_robust_spec`):

* ``mean``: the (optionally weighted) mean, i.e. FedAvg's aggregate (McMahan et al. 2017); not robust.
* ``median``: the coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML); for an even count the mean of the two middle values.
* ``trimmed-mean:BETA``: the coordinate-wise trimmed mean (Yin et al. 2018): per coordinate drop the
  ``floor(BETA n)`` largest and smallest values and average the rest; ``0 <= BETA < 0.5``.
* ``krum:F`` / ``multi-krum:F:M``: Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS): ``score_i = sum of ||v_i - v_j||^2 over the
  n - F - 2 nearest neighbours j != i``; Krum returns the lowest-scoring vector, Multi-Krum the mean of the
  ``M`` lowest-scoring ones; both need ``n >= 2F + 3``.

The robust rules are unweighted, as in the papers (a Byzantine client could otherwise claim a huge example
count); only ``mean`` uses weights.

Validation (:func:`validate_update`) rejects an update that lacks a parameter, has a wrong shape, holds
NaN/Inf or whose norm (of the delta from the global model, when given) exceeds a bound.

Fault injection (:func:`parse_fault_spec`, :func:`inject_fault`, :func:`faulty_clients`) simulates faulty or
malicious devices: ``nan`` (a diverged client), ``scale:K`` (the delta multiplied by ``K``, a model-boosting
attack, Bhagoji et al. 2019), ``signflip`` (the delta negated) and ``dropout`` (the client never reports).

Example:
    >>> import torch
    >>> vs = [torch.tensor([1.0, 10.0]), torch.tensor([2.0, 20.0]), torch.tensor([1e6, -1e6])]
    >>> coordinate_median(vs).tolist()
    [2.0, 10.0]
    >>> v, info = aggregate_robust("trimmed-mean:0.34", vs)
    >>> v.tolist(), info["trimmed"]
    ([2.0, 10.0], 1)
"""

from __future__ import annotations

import builtins
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from trustnlp.errors import ConfigError, DataError, expected

__all__ = [
    "ROBUST_RULES",
    "FAULT_KINDS",
    "flatten",
    "unflatten",
    "stack_vectors",
    "mean",
    "coordinate_median",
    "trimmed_mean",
    "krum_scores",
    "krum",
    "parse_robust_spec",
    "aggregate_robust",
    "validate_update",
    "parse_fault_spec",
    "inject_fault",
    "faulty_clients",
]

#: The aggregation rules :func:`parse_robust_spec` knows (spec forms: ``mean``, ``median``,
#: ``trimmed-mean:BETA``, ``krum:F``, ``multi-krum:F:M``).
ROBUST_RULES = ("mean", "median", "trimmed-mean", "krum", "multi-krum")
#: The fault kinds :func:`parse_fault_spec` knows (spec forms: ``nan``, ``scale:K``, ``signflip``, ``dropout``).
FAULT_KINDS = ("nan", "scale", "signflip", "dropout")

_ROBUST_FORMS = "mean | median | trimmed-mean:BETA | krum:F | multi-krum:F:M"
_FAULT_FORMS = "nan | scale:K | signflip | dropout"
_FAULTY_STREAM = 21  # the SeedSequence tag of faulty_clients' generator

Params = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------- vectors


def flatten(params: Params) -> torch.Tensor:
    """All tensors of ``params`` flattened and concatenated in sorted key order (a 1-D tensor).

    The dtype is the promotion of the parameters' dtypes (e.g. float32 and float64 give float64).

    Args:
        params: named tensors.

    Returns:
        The 1-D concatenation (empty for an empty mapping).
    """
    if not params:
        return torch.zeros(0)
    keys = sorted(params)
    dtype = functools.reduce(torch.promote_types, (params[k].dtype for k in keys))
    return torch.cat([params[k].detach().reshape(-1).to(dtype) for k in keys])


def unflatten(vec: torch.Tensor, like: Params) -> dict[str, torch.Tensor]:
    """The inverse of :func:`flatten`: ``vec`` cut into tensors with the keys, shapes, dtypes and devices of ``like``.

    Args:
        vec: a 1-D tensor with as many entries as ``like`` holds in all.
        like: the layout (only its keys, shapes, dtypes and devices are used).

    Returns:
        ``{name: tensor}`` in ``like``'s key order (new tensors, not views of ``vec``).

    Raises:
        DataError: ``vec`` is not 1-D or its length does not match.
    """
    if vec.dim() != 1:
        raise DataError(expected("vec", "a 1-D tensor", f"a tensor of shape {tuple(vec.shape)}"))
    total = sum(like[k].numel() for k in like)
    if vec.numel() != total:
        raise DataError(expected("vec", f"of length {total} (the number of entries in `like`)", vec.numel()))
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for k in sorted(like):
        ref = like[k]
        n = ref.numel()
        out[k] = vec[offset:offset + n].reshape(ref.shape).to(dtype=ref.dtype, device=ref.device, copy=True)
        offset += n
    return {k: out[k] for k in like}


def stack_vectors(vectors: Sequence[torch.Tensor] | Sequence[Params]) -> torch.Tensor:
    """The client vectors as an ``(n, d)`` matrix (dicts are flattened with :func:`flatten`).

    Args:
        vectors: 1-D float tensors of one length, or dicts of one layout (same keys and shapes).

    Returns:
        The stacked ``(n, d)`` tensor in the promoted floating dtype of the inputs.

    Raises:
        DataError: no vectors, mixed kinds, a non-1-D tensor, unequal lengths or layouts, a non-float dtype,
            or non-finite values (reject those first with :func:`validate_update`).
    """
    vs: list[Any] = list(vectors)
    if not vs:
        raise DataError(expected("vectors", "a non-empty list of client updates", vs))
    if all(isinstance(v, Mapping) for v in vs):
        first = vs[0]
        for i, v in enumerate(vs):
            if set(v) != set(first):
                raise DataError(f"Client update {i} has parameters {sorted(set(v) ^ set(first))[:5]} that update 0 "
                                "does not share (or lacks them); expected every update to have the same parameters.")
            for k in first:
                if tuple(v[k].shape) != tuple(first[k].shape):
                    raise DataError(expected(f"shape of {k} in client update {i}", str(tuple(first[k].shape)),
                                             tuple(v[k].shape)))
        flat = [flatten(v) for v in vs]
    elif all(isinstance(v, torch.Tensor) for v in vs):
        flat = vs
        for i, v in enumerate(flat):
            if v.dim() != 1:
                raise DataError(expected(f"vectors[{i}]", "a 1-D tensor", f"shape {tuple(v.shape)}"))
            if v.numel() != flat[0].numel():
                raise DataError(expected(f"length of vectors[{i}]", f"{flat[0].numel()} (the length of vectors[0])",
                                         v.numel()))
    else:
        raise DataError(expected("vectors", "all 1-D tensors or all dicts of tensors",
                                 sorted({type(v).__name__ for v in vs})))
    dtype = functools.reduce(torch.promote_types, (v.dtype for v in flat))
    if not dtype.is_floating_point:
        raise DataError(expected("dtype of the client vectors", "a floating-point dtype", dtype))
    mat = torch.stack([v.detach().to(dtype) for v in flat])
    if not bool(torch.isfinite(mat).all()):
        bad = [i for i in range(mat.shape[0]) if not bool(torch.isfinite(mat[i]).all())]
        raise DataError(f"Client vectors {bad[:10]} hold NaN or Inf; expected finite values "
                        "(reject such updates with validate_update before aggregating).")
    return mat


# --------------------------------------------------------------------------------------------------- rules


def _check_weights(weights: Sequence[float] | torch.Tensor | np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
    if w.shape != (n,):
        raise ConfigError(expected("weights", f"{n} numbers (one per client vector)", f"shape {w.shape}"))
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
        raise ConfigError(expected("weights", "finite, >= 0 and with a positive sum", w.tolist()))
    return w


def mean(vectors: Sequence[torch.Tensor] | Sequence[Params],
         weights: Sequence[float] | torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """The mean ``sum_k w_k v_k / sum_k w_k`` (plain mean without weights): FedAvg's aggregate (McMahan et al. 2017).

    Args:
        vectors: the client vectors (see :func:`stack_vectors`).
        weights: one non-negative weight per vector (e.g. example counts), or ``None`` for equal weights.

    Returns:
        The 1-D aggregate in the vectors' dtype.
    """
    return _mean(stack_vectors(vectors), weights)


def _mean(mat: torch.Tensor, weights: Sequence[float] | torch.Tensor | np.ndarray | None) -> torch.Tensor:
    if weights is None:
        return mat.mean(dim=0)
    w = torch.as_tensor(_check_weights(weights, mat.shape[0]), dtype=mat.dtype, device=mat.device)
    return (w[:, None] * mat).sum(dim=0) / w.sum()


def coordinate_median(vectors: Sequence[torch.Tensor] | Sequence[Params]) -> torch.Tensor:
    """The coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML).

    For an odd count ``n`` each coordinate's middle value; for an even count the mean of the two middle values
    (as :func:`numpy.median`; :func:`torch.median` would return the lower one). Robust to fewer than ``n / 2``
    arbitrary vectors per coordinate.

    Args:
        vectors: the client vectors (see :func:`stack_vectors`).

    Returns:
        The 1-D aggregate in the vectors' dtype.
    """
    return _median(stack_vectors(vectors))


def _median(mat: torch.Tensor) -> torch.Tensor:
    n = mat.shape[0]
    srt = torch.sort(mat, dim=0).values
    if n % 2 == 1:
        return srt[n // 2].clone()
    return (srt[n // 2 - 1] + srt[n // 2]) / 2


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 0.5:
        raise ConfigError(expected("beta (the trimmed-mean fraction)", "a number in [0, 0.5)", beta))
    return float(beta)


def _trim_count(beta: float, n: int) -> int:
    """``floor(beta n)``, with a 1e-9 tolerance so that e.g. ``0.29 * 100 = 28.999999999999996`` counts as 29,
    and never more than ``(n - 1) // 2`` (at least one value per coordinate stays)."""
    return min(int(math.floor(beta * n + 1e-9)), (n - 1) // 2)


def trimmed_mean(vectors: Sequence[torch.Tensor] | Sequence[Params], beta: float) -> torch.Tensor:
    """The coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML).

    Per coordinate, the ``b = floor(beta n)`` largest and ``b`` smallest values are dropped and the other
    ``n - 2b`` averaged (as :func:`scipy.stats.trim_mean` with ``proportiontocut=beta``). Robust to up to ``b``
    arbitrary vectors. ``beta = 0`` is the plain mean.

    Args:
        vectors: the client vectors (see :func:`stack_vectors`).
        beta: the fraction trimmed at each end, ``0 <= beta < 0.5``.

    Returns:
        The 1-D aggregate in the vectors' dtype.

    Raises:
        ConfigError: ``beta`` outside ``[0, 0.5)``.
    """
    beta = _check_beta(beta)
    return _trimmed(stack_vectors(vectors), beta)


def _trimmed(mat: torch.Tensor, beta: float) -> torch.Tensor:
    n = mat.shape[0]
    b = _trim_count(beta, n)
    srt = torch.sort(mat, dim=0).values
    return srt[b:n - b].mean(dim=0)


def _check_f(f: int) -> int:
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0:
        raise ConfigError(expected("f (the number of Byzantine clients Krum tolerates)", "an integer >= 0", f))
    return int(f)


def _krum_n_check(n: int, f: int) -> None:
    if n < 2 * f + 3:
        raise ConfigError(f"Krum with f={f} needs n >= 2f + 3 = {2 * f + 3} client updates, but got n={n}; "
                          f"lower f to at most {max((n - 3) // 2, 0)} or select more clients"
                          + (" (Krum needs at least 3 updates)." if n < 3 else "."))


def _krum_scores_matrix(mat: torch.Tensor, f: int) -> torch.Tensor:
    n = mat.shape[0]
    mat = mat.to(torch.float64)
    dist = torch.zeros(n, n, dtype=torch.float64, device=mat.device)
    for i in range(n - 1):  # row by row: O(n d) memory however large the model
        d = (mat[i + 1:] - mat[i]).pow(2).sum(dim=1)
        dist[i, i + 1:] = d
        dist[i + 1:, i] = d
    dist.fill_diagonal_(math.inf)  # a vector is not its own neighbour
    return torch.sort(dist, dim=1).values[:, : n - f - 2].sum(dim=1)


def krum_scores(vectors: Sequence[torch.Tensor] | Sequence[Params], f: int) -> torch.Tensor:
    """Krum's scores (Blanchard et al. 2017): ``score_i = sum_{j in N_i} ||v_i - v_j||^2`` with ``N_i`` the
    ``n - f - 2`` nearest neighbours of ``v_i`` (``j != i``), in float64.

    Args:
        vectors: the client vectors (see :func:`stack_vectors`).
        f: the number of Byzantine vectors to tolerate; ``n >= 2f + 3``.

    Returns:
        A float64 tensor of ``n`` scores.

    Raises:
        ConfigError: ``f`` not an integer >= 0, or ``n < 2f + 3``.
    """
    f = _check_f(f)
    mat = stack_vectors(vectors)
    _krum_n_check(mat.shape[0], f)
    return _krum_scores_matrix(mat, f)


def _krum(mat: torch.Tensor, f: int, m: int) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    f = _check_f(f)
    n = mat.shape[0]
    _krum_n_check(n, f)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n:
        raise ConfigError(expected("m (the number of vectors Multi-Krum averages)",
                                   f"an integer in [1, {n}] (n = the number of client updates)", m))
    scores = _krum_scores_matrix(mat, f)
    selected = [int(i) for i in torch.argsort(scores, stable=True)[: int(m)]]
    return mat[selected].mean(dim=0), selected, scores


def krum(vectors: Sequence[torch.Tensor] | Sequence[Params], f: int, m: int = 1) -> tuple[torch.Tensor, list[int]]:
    """Krum (``m = 1``) and Multi-Krum (``m > 1``) (Blanchard et al. 2017, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS).

    Each vector is scored by :func:`krum_scores`; Krum returns the lowest-scoring vector and Multi-Krum the mean
    of the ``m`` lowest-scoring ones. Equal scores are broken by the lower index.

    Args:
        vectors: the client vectors (see :func:`stack_vectors`).
        f: the number of Byzantine vectors to tolerate; needs ``n >= 2f + 3``.
        m: how many vectors to average, ``1 <= m <= n`` (``m <= n - f`` keeps the paper's guarantee).

    Returns:
        ``(aggregate, selected)``: the 1-D aggregate in the vectors' dtype and the selected indices, lowest
        score first.

    Raises:
        ConfigError: bad ``f`` or ``m``, or ``n < 2f + 3``.
    """
    vec, selected, _ = _krum(stack_vectors(vectors), f, m)
    return vec, selected


# --------------------------------------------------------------------------------------------------- specs


def _parse_int(text: str, field: str, spec: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(expected(field, f"an integer >= {minimum} (in spec {spec!r})", text)) from None
    if value < minimum:
        raise ConfigError(expected(field, f"an integer >= {minimum} (in spec {spec!r})", value))
    return value


def parse_robust_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse an aggregation-rule spec: ``mean | median | trimmed-mean:BETA | krum:F | multi-krum:F:M``.

    Args:
        spec: the spec (case and surrounding spaces ignored).

    Returns:
        ``(kind, params)``: ``("mean", {})``, ``("median", {})``, ``("trimmed-mean", {"beta": float})``,
        ``("krum", {"f": int})`` or ``("multi-krum", {"f": int, "m": int})``.

    Raises:
        ConfigError: an unknown rule, a wrong number of fields or an invalid value.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(expected("robust aggregation spec", f"one of {_ROBUST_FORMS}", spec))
    parts = [p.strip() for p in spec.strip().lower().split(":")]
    kind, args = parts[0], parts[1:]
    arity = {"mean": 0, "median": 0, "trimmed-mean": 1, "krum": 1, "multi-krum": 2}
    if kind not in arity:
        raise ConfigError(expected("robust aggregation rule", f"one of {_ROBUST_FORMS}", spec))
    if len(args) != arity[kind]:
        form = {"mean": "mean", "median": "median", "trimmed-mean": "trimmed-mean:BETA", "krum": "krum:F",
                "multi-krum": "multi-krum:F:M"}[kind]
        raise ConfigError(expected(f"{kind} spec", f"of the form {form}", spec))
    if kind == "trimmed-mean":
        try:
            beta = float(args[0])
        except ValueError:
            raise ConfigError(expected("trimmed-mean BETA", f"a number in [0, 0.5) (in spec {spec!r})",
                                       args[0])) from None
        if not 0 <= beta < 0.5:
            raise ConfigError(expected("trimmed-mean BETA", f"a number in [0, 0.5) (in spec {spec!r})", beta))
        return kind, {"beta": beta}
    if kind == "krum":
        return kind, {"f": _parse_int(args[0], "krum F", spec, 0)}
    if kind == "multi-krum":
        return kind, {"f": _parse_int(args[0], "multi-krum F", spec, 0),
                      "m": _parse_int(args[1], "multi-krum M", spec, 1)}
    return kind, {}


def aggregate_robust(spec: str, vectors: Sequence[torch.Tensor] | Sequence[Params],
                     weights: Sequence[float] | torch.Tensor | np.ndarray | None = None
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Aggregate client vectors with the rule ``spec`` (see :func:`parse_robust_spec`).

    Args:
        spec: ``mean | median | trimmed-mean:BETA | krum:F | multi-krum:F:M``.
        vectors: the client vectors (models or deltas; see :func:`stack_vectors`).
        weights: per-vector weights, used by ``mean`` only (the robust rules are unweighted).

    Returns:
        ``(aggregate, info)``: the 1-D aggregate and ``{"rule", "num_clients", **params}`` plus ``"trimmed"``
        (per end) for the trimmed mean and ``"selected"`` (indices, lowest score first) and ``"scores"`` for Krum.

    Raises:
        ConfigError: a bad spec or weights, or too few vectors for Krum's ``f``.
    """
    kind, params = parse_robust_spec(spec)
    mat = stack_vectors(vectors)
    n = mat.shape[0]
    info: dict[str, Any] = {"rule": kind, "num_clients": n, **params}
    if kind == "mean":
        info["weighted"] = weights is not None
        return _mean(mat, weights), info
    if kind == "median":
        return _median(mat), info
    if kind == "trimmed-mean":
        info["trimmed"] = _trim_count(params["beta"], n)
        return _trimmed(mat, params["beta"]), info
    vec, selected, scores = _krum(mat, params["f"], params.get("m", 1))
    info["selected"] = selected
    info["scores"] = scores.tolist()
    return vec, info


# --------------------------------------------------------------------------------------------------- validation


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def validate_update(params: Params, reference: Params, *, max_norm: float | None,
                    global_params: Params | None = None) -> str | None:
    """Server-side sanity check of one client update; ``None`` when it is acceptable, else the reason.

    Checks, per parameter of ``reference`` in its order: present (``"missing parameter <name>"``), of the
    reference's shape (``"shape of <name> is (a, b) but expected (c, d)"``) and finite
    (``"non-finite values in <name>"``); then, with ``max_norm``, the L2 norm over all of ``reference``'s
    parameters of ``params - global_params`` (or of ``params`` without ``global_params``), in float64
    (``"update norm X exceeds the bound Y"`` when ``X > Y``). Parameters that ``reference`` lacks are ignored
    (as :meth:`Strategy.aggregate <trustnlp.federated.strategy.Strategy.aggregate>` ignores them).

    Args:
        params: the client's parameters.
        reference: the expected names and shapes (e.g. the global parameters).
        max_norm: the bound on the update's norm, or ``None`` for no bound.
        global_params: the global parameters the client started from (the norm is then of the delta).

    Returns:
        ``None`` or the reason string.

    Raises:
        ConfigError: ``max_norm`` not a positive number, or ``global_params`` lacking/mis-shaping a parameter.
    """
    if max_norm is not None and (isinstance(max_norm, bool) or not isinstance(max_norm, (int, float))
                                 or not max_norm > 0 or math.isnan(max_norm)):
        raise ConfigError(expected("max_norm", "a number > 0 or None", max_norm))
    for name in reference:
        if name not in params:
            return f"missing parameter {name}"
        p, ref = params[name], reference[name]
        if tuple(p.shape) != tuple(ref.shape):
            return f"shape of {name} is {_shape(p)} but expected {_shape(ref)}"
        if p.is_floating_point() or p.is_complex():
            if not bool(torch.isfinite(p).all()):
                return f"non-finite values in {name}"
    if max_norm is None:
        return None
    sq = 0.0
    for name in reference:
        p = params[name].detach().to(torch.float64)
        if global_params is not None:
            if name not in global_params or tuple(global_params[name].shape) != tuple(p.shape):
                raise ConfigError(expected(f"global_params[{name!r}]", f"a tensor of shape {_shape(p)}",
                                           _shape(global_params[name]) if name in global_params else "nothing"))
            p = p - global_params[name].detach().to(torch.float64)
        sq += float(p.pow(2).sum())
    norm = math.sqrt(sq)
    if norm > max_norm:
        return f"update norm {norm:.6g} exceeds the bound {float(max_norm):.6g}"
    return None


# --------------------------------------------------------------------------------------------------- faults


def parse_fault_spec(spec: str) -> tuple[str, float | None]:
    """Parse a fault spec: ``nan | scale:K | signflip | dropout``.

    Args:
        spec: the spec (case and surrounding spaces ignored).

    Returns:
        ``(kind, param)``: ``("scale", K)`` with ``K`` a finite float, else ``(kind, None)``.

    Raises:
        ConfigError: an unknown kind, a wrong number of fields or a non-finite ``K``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(expected("fault spec", f"one of {_FAULT_FORMS}", spec))
    parts = [p.strip() for p in spec.strip().lower().split(":")]
    kind, args = parts[0], parts[1:]
    if kind not in FAULT_KINDS:
        raise ConfigError(expected("fault kind", f"one of {_FAULT_FORMS}", spec))
    if kind == "scale":
        if len(args) != 1:
            raise ConfigError(expected("scale fault spec", "of the form scale:K", spec))
        try:
            k = float(args[0])
        except ValueError:
            raise ConfigError(expected("scale factor K", f"a finite number (in spec {spec!r})", args[0])) from None
        if not math.isfinite(k):
            raise ConfigError(expected("scale factor K", f"a finite number (in spec {spec!r})", k))
        return kind, k
    if args:
        raise ConfigError(expected(f"{kind} fault spec", f"just {kind!r} (no parameters)", spec))
    return kind, None


def inject_fault(params: Params, global_params: Params | None, kind: str,
                 param: float | None = None) -> dict[str, torch.Tensor] | None:
    """What a faulty or malicious client reports instead of ``params`` (new tensors; the inputs are not changed).

    With ``delta = params - global_params`` per floating-point parameter:

    * ``nan``: every floating-point parameter filled with NaN (a diverged client);
    * ``scale`` (``param = K``): ``global + K * delta`` (a boosting attack, Bhagoji et al. 2019, "Analyzing
      Federated Learning through an Adversarial Lens", ICML);
    * ``signflip``: ``global - delta`` (the update pushes the model the other way);
    * ``dropout``: ``None`` (the client never reports).

    Non-floating parameters (e.g. integer buffers) are copied unchanged.

    Args:
        params: the client's honest parameters after local training.
        global_params: the global parameters it started from (needed for ``scale`` and ``signflip``).
        kind: one of :data:`FAULT_KINDS` (see :func:`parse_fault_spec`).
        param: ``K`` for ``scale``.

    Returns:
        The faulty parameters, or ``None`` for ``dropout``.

    Raises:
        ConfigError: an unknown kind, ``scale`` without a finite ``K``, or missing ``global_params``.
    """
    if kind not in FAULT_KINDS:
        raise ConfigError(expected("fault kind", f"one of {list(FAULT_KINDS)}", kind))
    if kind == "dropout":
        return None
    if kind == "nan":
        return {k: torch.full_like(v, math.nan) if v.is_floating_point() else v.detach().clone()
                for k, v in params.items()}
    if kind == "scale" and (param is None or isinstance(param, bool) or not math.isfinite(float(param))):
        raise ConfigError(expected("scale factor K", "a finite number", param))
    if global_params is None:
        raise ConfigError(f"The {kind!r} fault needs the global parameters (the update is relative to them), "
                          "but got global_params=None.")
    out: dict[str, torch.Tensor] = {}
    for k, v in params.items():
        if not v.is_floating_point():
            out[k] = v.detach().clone()
            continue
        if k not in global_params or tuple(global_params[k].shape) != tuple(v.shape):
            raise ConfigError(expected(f"global_params[{k!r}]", f"a tensor of shape {_shape(v)}",
                                       _shape(global_params[k]) if k in global_params else "nothing"))
        g = global_params[k].detach().to(v.dtype)
        delta = v.detach() - g
        out[k] = g + float(param) * delta if kind == "scale" else g - delta  # type: ignore[arg-type]
    return out


def faulty_clients(selected_ids: Sequence[int] | np.ndarray, fraction: float, seed: int,
                   round: int) -> set[int]:  # noqa: A002 - the simulator's name
    """Which of a round's selected clients are faulty: exactly ``round(fraction * n)`` of the ``n`` distinct
    selected ids (Python's ``round``, half to even: 2.5 -> 2), uniformly without replacement.

    The draw uses ``np.random.default_rng(np.random.SeedSequence([seed, round, 21]))`` on the sorted ids, so it
    is deterministic per ``(seed, round, set of selected ids)`` and independent of their order.

    Args:
        selected_ids: the round's selected client ids (duplicates count once).
        fraction: the faulty fraction, ``0 <= fraction <= 1``.
        seed: the run's seed.
        round: the round number.

    Returns:
        The set of faulty client ids.

    Raises:
        ConfigError: ``fraction`` outside ``[0, 1]``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError(expected("faulty fraction", "a number in [0, 1]", fraction))
    ids = np.unique(np.asarray(selected_ids, dtype=np.int64).reshape(-1))
    k = int(builtins.round(fraction * len(ids)))
    if k == 0:
        return set()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) % (2**63), int(round), _FAULTY_STREAM]))
    return {int(c) for c in rng.choice(ids, size=k, replace=False)}

