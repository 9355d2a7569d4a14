"""White-box model inversion: extract a canary's secret tokens from a trained text classifier.

The attacker holds the model's parameters and knows a canary's **template** (the known tokens and
the positions of the ``L`` unknown ones) and its **label** ``y``; the secret's tokens come from a
known candidate set (the secret space's alphabet, ``C`` tokens). Tokens are discrete, so the attack
relaxes each unknown position ``j`` to a distribution over the candidates (Parikh et al. 2022,
"Canary extraction in natural language understanding models"), parametrised by logits
``theta_j in R^C`` and relaxed with the Gumbel-softmax (Jang et al. 2017, "Categorical
reparameterization with Gumbel-softmax"; Maddison et al. 2017) or a plain tempered softmax:

    p_j = softmax((theta_j + g_j) / tau_t),   g_j ~ Gumbel(0, 1)  (g = 0 for ``softmax``)
    x_j = p_j @ E_C                             (a soft embedding: E_C = candidate rows of E)
    maximise  log p_model(y | known tokens, x_1..x_L)  -  lambda * sum_j H(p_j)

with Adam on ``theta`` and the temperature annealed geometrically from ``tau_0`` to ``tau_T``. The
model runs from input embeddings (:mod:`~trustnlp.privacy.attacks.embedding_forward`; position
embeddings and everything after the lookup are unchanged). Many canaries are optimised as one batch
(their objectives are independent sums, and Adam is elementwise).

**Decoding.** The separable score ``s(x) = sum_j theta_j[x_j]`` orders sequences as the product of
the relaxed distributions at any temperature; a beam of width ``k`` over positions gives its exact
``k`` best sequences (the argmax first). Those candidates (from every restart) are **re-scored**
with the real, discrete model, ``log p(y | template filled with x)``, and ranked: the top one is the
attack's guess.

**Oracle** (small spaces only, e.g. 4 digits): score every one of the ``|R|`` secrets with the
discrete model (batched; one forward per template gives every label). The rank of the true secret,
``rank = |{r : log p(y | r) >= log p(y | secret)}|`` (ties against the secret), gives the exposure
``log2 |R| - log2 rank`` (Carlini et al. 2019; computed by
:func:`~trustnlp.privacy.attacks.extraction.exact_rank_statistics`). For
spaces too large to enumerate, :func:`sampled_log_probs` scores uniform samples of ``R`` per canary.

Example:
    >>> from trustnlp.data.canaries import CanarySpec, canary_vocabulary, make_canaries, secret_token_ids
    >>> from trustnlp.data.tokenizers import WordTokenizer
    >>> from trustnlp.models import build_model
    >>> cs = make_canaries(CanarySpec(n_canaries=4), ["play", "stop"], seed=0)
    >>> tok = WordTokenizer.from_vocabulary(canary_vocabulary(cs.space, cs.spec.resolved_templates))
    >>> model = build_model("cnn", vocab_size=tok.vocab_size, num_labels=2, dim=8, filters=4)
    >>> targets = canary_targets(tok, cs.canaries, length=4)
    >>> result = invert(model, targets, secret_token_ids(tok, cs.space), config=InversionConfig(steps=20), seed=0)
    >>> result.guesses.shape
    (4, 4)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trustnlp.errors import ConfigError, DataError, expected
from trustnlp.privacy.attacks.embedding_forward import forward_from_embeddings, input_embedding

__all__ = [
    "InversionConfig",
    "InversionResult",
    "InversionTarget",
    "canary_targets",
    "exhaustive_log_probs",
    "invert",
    "sampled_log_probs",
    "score_secrets",
]


class InversionConfig(BaseModel):
    """Settings of the relaxed attack (defaults live here, once).

    Attributes:
        steps: Adam steps on the relaxed logits.
        lr: Adam's learning rate.
        relaxation: ``gumbel`` (Gumbel-softmax, as in the published attack) or ``softmax``
            (tempered softmax, no noise).
        temperature_start / temperature_end: ``tau`` anneals geometrically between them.
        init_std: the logits start at ``N(0, init_std^2)`` (0 = uniform distributions).
        entropy_weight: ``lambda``, an optional penalty on the relaxed distributions' entropy
            (pushes them towards one-hot).
        restarts: independent optimisations per canary (their candidates are pooled).
        top_k: candidates decoded per canary and restart (exact beam over the separable score),
            re-scored with the discrete model.
        batch_size: canaries optimised together.
        score_batch_size: sequences per forward when scoring discrete candidates.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(300, ge=1)
    lr: float = Field(0.1, gt=0.0)
    relaxation: Literal["gumbel", "softmax"] = "gumbel"
    temperature_start: float = Field(1.0, gt=0.0)
    temperature_end: float = Field(0.05, gt=0.0)
    init_std: float = Field(0.01, ge=0.0)
    entropy_weight: float = Field(0.0, ge=0.0)
    restarts: int = Field(1, ge=1)
    top_k: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    score_batch_size: int = Field(2048, ge=1)


@dataclass(frozen=True)
class InversionTarget:
    """What the attacker knows about one canary.

    Attributes:
        input_ids: the full token sequence (special tokens included); the unknown positions hold
            any id (they are overwritten).
        slots: the positions of the ``L`` unknown tokens, in secret order.
        label: the canary's label index.
    """

    input_ids: tuple[int, ...]
    slots: tuple[int, ...]
    label: int

    def __post_init__(self) -> None:
        if not self.slots or len(set(self.slots)) != len(self.slots):
            raise DataError(expected("slots", "distinct positions (at least one)", self.slots))
        if min(self.slots) < 0 or max(self.slots) >= len(self.input_ids):
            raise DataError(expected("slots", f"positions in [0, {len(self.input_ids)})", self.slots))


def _encode_part(tokenizer: Any, text: str) -> list[int]:
    if not text.strip():
        return []
    enc = tokenizer.encode([text], add_special_tokens=False, max_length=512)
    return enc.input_ids[0][enc.attention_mask[0].bool()].tolist()


def canary_targets(tokenizer: Any, canaries: Sequence[Any], *, length: int) -> list[InversionTarget]:
    """Targets for canaries (objects with ``prefix``, ``suffix`` and ``label``, e.g.
    :class:`~trustnlp.data.canaries.Canary`): ``[CLS] prefix <L slots> suffix [SEP]`` in the
    tokenizer's layout (the slots hold ``pad_id``). A secret of single-token words fills the slots
    exactly as the tokenizer encodes the canary's text."""
    out = []
    cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    for c in canaries:
        key = (c.prefix, c.suffix)
        if key not in cache:
            cache[key] = (_encode_part(tokenizer, c.prefix), _encode_part(tokenizer, c.suffix))
        pre, suf = cache[key]
        head = [] if tokenizer.cls_id is None else [int(tokenizer.cls_id)]
        tail = [] if tokenizer.sep_id is None else [int(tokenizer.sep_id)]
        ids = head + pre + [int(tokenizer.pad_id)] * length + suf + tail
        start = len(head) + len(pre)
        out.append(InversionTarget(input_ids=tuple(ids), slots=tuple(range(start, start + length)), label=int(c.label)))
    return out


@dataclass(frozen=True)
class InversionResult:
    """The relaxed attack's output for ``n`` canaries (indices into the candidate tokens).

    Attributes:
        guesses: ``[n, L]`` the best re-scored candidate per canary (the attack's answer).
        argmax_guesses: ``[n, L]`` the per-position argmax of the first restart (no re-scoring).
        candidates: ``[n, K, L]`` the pooled, de-duplicated candidates, best first (``K`` the
            largest count over canaries; shorter lists are padded with ``-1``).
        candidate_scores: ``[n, K]`` their ``log p(label | candidate)`` (``-inf`` for padding).
        relaxed_log_prob: ``[n]`` the relaxed objective ``log p(label)`` at the last step (best restart).
        seconds: wall time of the whole attack (optimisation, decoding, re-scoring).
    """

    guesses: np.ndarray
    argmax_guesses: np.ndarray
    candidates: np.ndarray
    candidate_scores: np.ndarray
    relaxed_log_prob: np.ndarray
    seconds: float

    def __len__(self) -> int:
        return int(self.guesses.shape[0])


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = input_embedding(model).weight
    return p.device, p.dtype


def _batch(targets: Sequence[InversionTarget], device: torch.device) -> tuple[torch.Tensor, ...]:
    """``ids [B, T]``, ``mask [B, T]``, ``slots [B, L]``, ``labels [B]`` (right padding with 0 / mask 0)."""
    length = len(targets[0].slots)
    if any(len(t.slots) != length for t in targets):
        raise DataError("Expected every target to have the same number of unknown positions.")
    width = max(len(t.input_ids) for t in targets)
    ids = torch.zeros(len(targets), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(targets):
        ids[i, : len(t.input_ids)] = torch.tensor(t.input_ids)
        mask[i, : len(t.input_ids)] = 1
    slots = torch.tensor([t.slots for t in targets], dtype=torch.long)
    labels = torch.tensor([t.label for t in targets], dtype=torch.long)
    return ids.to(device), mask.to(device), slots.to(device), labels.to(device)


def _check_candidates(model: nn.Module, candidate_ids: Sequence[int]) -> torch.Tensor:
    cand = torch.as_tensor(list(candidate_ids), dtype=torch.long)
    vocab = input_embedding(model).num_embeddings
    if cand.dim() != 1 or cand.numel() < 2 or int(cand.min()) < 0 or int(cand.max()) >= vocab:
        raise ConfigError(expected("candidate_ids", f"at least 2 token ids in [0, {vocab})", list(candidate_ids)[:10]))
    return cand


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) inside the block; its mode is restored after."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def score_secrets(model: nn.Module, targets: Sequence[InversionTarget], candidate_ids: Sequence[int],
                  secrets: np.ndarray, *, rows: np.ndarray | None = None, batch_size: int = 2048) -> np.ndarray:
    """``log p(label | target filled with the secret)`` under the discrete model, per secret.

    Args:
        targets: the canaries' targets.
        candidate_ids: token id of each candidate (secrets index into it).
        secrets: ``[M, L]`` candidate indices.
        rows: ``[M]`` the target each secret fills (default: secret ``k`` fills target ``k``).
        batch_size: sequences per forward.

    Returns:
        ``[M]`` float64 log-probabilities of each row's target label.
    """
    cand = _check_candidates(model, candidate_ids)
    sec = np.asarray(secrets, dtype=np.int64)
    if sec.ndim != 2 or sec.shape[1] != len(targets[0].slots) or sec.min(initial=0) < 0 or \
            sec.max(initial=0) >= cand.numel():
        raise DataError(expected("secrets", f"[M, {len(targets[0].slots)}] indices into {cand.numel()} candidates",
                                 f"an array of shape {sec.shape}"))
    r = np.arange(len(sec)) if rows is None else np.asarray(rows, dtype=np.int64)
    if r.shape != (len(sec),):
        raise DataError(expected("rows", f"one target index per secret ({len(sec)})", f"shape {r.shape}"))
    device, _ = _device_dtype(model)
    ids, mask, slots, labels = _batch(targets, device)
    cand = cand.to(device)
    out = np.empty(len(sec), dtype=np.float64)
    with _eval_mode(model):
        for start in range(0, len(sec), batch_size):
            rr = torch.as_tensor(r[start : start + batch_size], device=device)
            fill = cand[torch.as_tensor(sec[start : start + batch_size], device=device)]
            x = ids[rr].scatter(1, slots[rr], fill)
            lp = torch.log_softmax(model(x, mask[rr]).double(), dim=-1)
            out[start : start + len(rr)] = lp.gather(1, labels[rr][:, None]).squeeze(1).cpu().numpy()
    return out


def _top_k_sequences(theta: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best sequences of the separable score ``sum_j theta[:, j, x_j]`` -> ``[N, k', L]`` (best first).

    Exact: a sequence among the ``k`` best has a prefix among the ``k`` best prefixes (else ``k``
    better prefixes completed with its suffix would all beat it), so a beam of width ``k`` keeps it.
    """
    n, length, c = theta.shape
    scores, tok = theta[:, 0, :].topk(min(k, c), dim=-1)
    paths = tok[:, :, None]
    for j in range(1, length):
        total = (scores[:, :, None] + theta[:, j, None, :]).reshape(n, -1)
        scores, flat = total.topk(min(k, total.shape[1]), dim=-1)
        prev, tok = flat // c, flat % c
        paths = torch.cat([paths.gather(1, prev[:, :, None].expand(-1, -1, j)), tok[:, :, None]], dim=-1)
    return paths


def _gumbel(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=dtype).clamp_(torch.finfo(dtype).tiny, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def _optimise(model: nn.Module, targets: Sequence[InversionTarget], cand: torch.Tensor, config: InversionConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Relaxed logits ``theta [R*B, L, C]`` (restart-major) and the final noiseless objective ``[R*B]``."""
    device, dtype = _device_dtype(model)
    ids, mask, slots, labels = _batch(targets, device)
    r = config.restarts
    ids, mask, slots, labels = ids.repeat(r, 1), mask.repeat(r, 1), slots.repeat(r, 1), labels.repeat(r)
    n, length = slots.shape
    weight = input_embedding(model).weight.detach()
    e_cand = weight[cand]  # [C, D]
    base = weight[ids]  # [N, T, D]
    rows = torch.arange(n, device=device).repeat_interleave(length)
    cols = slots.reshape(-1)
    shape = (n, length, cand.numel())
    theta = (torch.randn(shape, generator=generator, dtype=dtype) * config.init_std).to(device).requires_grad_()
    opt = torch.optim.Adam([theta], lr=config.lr)
    t0, t1, steps = config.temperature_start, config.temperature_end, config.steps

    def objective(logits: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.softmax(logits / tau, dim=-1)
        emb = base.index_put((rows, cols), (p @ e_cand).reshape(-1, base.shape[-1]))
        lp = torch.log_softmax(forward_from_embeddings(model, emb, mask), dim=-1).gather(1, labels[:, None]).squeeze(1)
        return lp, p

    with torch.enable_grad():
        for step in range(steps):
            tau = t0 * (t1 / t0) ** (step / max(steps - 1, 1))
            logits = theta
            if config.relaxation == "gumbel":
                logits = theta + _gumbel(shape, generator, dtype).to(device)
            lp, p = objective(logits, tau)
            loss = -lp.sum()
            if config.entropy_weight:
                loss = loss - config.entropy_weight * (p * torch.log(p.clamp_min(1e-30))).sum()
            (grad,) = torch.autograd.grad(loss, theta)
            theta.grad = grad
            opt.step()
    with torch.no_grad():
        final, _ = objective(theta.detach(), t1)
    return theta.detach(), final


def invert(model: nn.Module, targets: Sequence[InversionTarget], candidate_ids: Sequence[int], *,
           config: InversionConfig | None = None, seed: int = 0) -> InversionResult:
    """Run the relaxed inversion attack on every target; see the module docstring for the maths.

    Args:
        model: a trustnlp classifier (any family with an embedding adapter); it is run in eval mode
            and its parameters are not changed.
        targets: one :class:`InversionTarget` per canary (same number of unknown positions).
        candidate_ids: the token ids each unknown position may take (e.g. the ids of ``0``-``9``).
        config: the attack's settings (:class:`InversionConfig`).
        seed: seeds the initial logits and the Gumbel noise.

    Returns:
        An :class:`InversionResult` (secret guesses as indices into ``candidate_ids``).
    """
    config = config or InversionConfig()
    if not targets:
        raise DataError("Expected at least one inversion target, but got none.")
    cand = _check_candidates(model, candidate_ids)
    device, _ = _device_dtype(model)
    cand = cand.to(device)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(int(seed))
    n, length, r = len(targets), len(targets[0].slots), config.restarts
    pooled: list[np.ndarray] = []
    argmax = np.empty((n, length), dtype=np.int64)
    relaxed = np.empty(n, dtype=np.float64)
    with _eval_mode(model):
        for start in range(0, n, config.batch_size):
            chunk = targets[start : start + config.batch_size]
            b = len(chunk)
            theta, final = _optimise(model, chunk, cand, config, generator)
            argmax[start : start + b] = theta[:b].argmax(dim=-1).cpu().numpy()
            relaxed[start : start + b] = final.view(r, b).max(dim=0).values.double().cpu().numpy()
            paths = _top_k_sequences(theta, config.top_k).cpu().numpy()  # [R*B, k, L]
            paths = paths.reshape(r, b, -1, length).transpose(1, 0, 2, 3).reshape(b, -1, length)
            for row in paths:
                pooled.append(np.array(list(dict.fromkeys(map(tuple, row.tolist()))), dtype=np.int64))
    rows = np.concatenate([np.full(len(p), i) for i, p in enumerate(pooled)])
    scores = score_secrets(model, targets, cand.tolist(), np.concatenate(pooled), rows=rows,
                           batch_size=config.score_batch_size)
    width = max(len(p) for p in pooled)
    candidates = np.full((n, width, length), -1, dtype=np.int64)
    cand_scores = np.full((n, width), -np.inf)
    offset = 0
    for i, p in enumerate(pooled):
        s = scores[offset : offset + len(p)]
        offset += len(p)
        order = np.argsort(-s, kind="stable")
        candidates[i, : len(p)] = p[order]
        cand_scores[i, : len(p)] = s[order]
    return InversionResult(guesses=candidates[:, 0].copy(), argmax_guesses=argmax, candidates=candidates,
                           candidate_scores=cand_scores, relaxed_log_prob=relaxed,
                           seconds=time.perf_counter() - started)


def exhaustive_log_probs(model: nn.Module, targets: Sequence[InversionTarget], candidate_ids: Sequence[int],
                         secrets: np.ndarray, *, batch_size: int = 2048) -> np.ndarray:
    """``[n, M]`` ``log p(label_i | target_i filled with secret m)`` for every target and every secret.

    The oracle over an enumerated space (``secrets`` = ``SecretSpace.enumerate()``): one forward
    per (template, secret) serves every target sharing that template (all labels come out at once).
    """
    cand = _check_candidates(model, candidate_ids)
    sec = np.asarray(secrets, dtype=np.int64)
    device, _ = _device_dtype(model)
    out = np.empty((len(targets), len(sec)), dtype=np.float64)
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault((t.input_ids, t.slots), []).append(i)
    cand = cand.to(device)
    with _eval_mode(model), torch.no_grad():
        for (ids_t, slots_t), members in groups.items():
            ids = torch.tensor(ids_t, device=device)
            slots = torch.tensor(slots_t, device=device)
            labels = torch.tensor([targets[i].label for i in members], device=device)
            for start in range(0, len(sec), batch_size):
                fill = cand[torch.as_tensor(sec[start : start + batch_size], device=device)]
                x = ids.expand(len(fill), -1).clone()
                x[:, slots] = fill
                lp = torch.log_softmax(model(x, torch.ones_like(x)).double(), dim=-1)
                out[members, start : start + len(fill)] = lp[:, labels].T.cpu().numpy()
    return out


def sampled_log_probs(model: nn.Module, targets: Sequence[InversionTarget], candidate_ids: Sequence[int], *,
                      n_samples: int, seed: int, batch_size: int = 2048) -> np.ndarray:
    """``[n, n_samples]`` ``log p(label_i | target_i filled with a uniform random secret)``, fresh
    independent samples per target (for ranks and exposure in spaces too large to enumerate)."""
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise ConfigError(expected("n_samples", "an integer >= 1", n_samples))
    rng = np.random.default_rng([int(seed), 0x5A3])
    length = len(targets[0].slots)
    sec = rng.integers(0, len(candidate_ids), size=(len(targets) * n_samples, length))
    rows = np.repeat(np.arange(len(targets)), n_samples)
    return score_secrets(model, targets, candidate_ids, sec, rows=rows, batch_size=batch_size).reshape(
        len(targets), n_samples)
