"""Per-sample gradient clipping with a single backward (book-keeping) for DP-SGD.

DP-SGD (Abadi et al. 2016) needs ``Σ_i c_i g_i`` where ``g_i = ∇θ L_i`` is example ``i``'s gradient
and ``c_i`` its clip factor. The book-keeping algorithm (Bu et al. 2023, "Differentially Private
Optimization on Large Model at Small Cost") gets it from ONE backward pass:

1. Forward hooks on every module owning trainable parameters record its inputs ``a`` (and the
   autograd edge of its outputs) — nothing for frozen modules.
2. ``torch.autograd.grad(Σ_i L_i, outputs)`` gives each layer's output gradient ``g`` (row ``i``
   is ``∂L_i/∂y_i``) without computing any (unclipped) weight gradient.
3. A per-layer-type rule (:mod:`~trustnlp.privacy.clipping.rules`) gives ``‖G^l_i‖²`` from
   ``(a, g)``: ghost norm (Li et al. 2022) or instantiation, whichever is cheaper (Bu et al.'s
   mixed ghost norm); layers without a rule use the ``torch.func`` fallback.
4. ``‖g_i‖ = sqrt(Σ_l ‖G^l_i‖²)`` (tied parameters: the norm of the summed contributions).
5. Clip factors: ``flat`` ``c_i = min(1, C/(‖g_i‖ + 1e-6))`` (sensitivity ``C``); ``per-layer``
   (He et al. 2022, "Exploring the limits of differentially private deep learning with group-wise
   clipping") ``c_{i,l} = min(1, C_l/(‖G^l_i‖ + 1e-6))`` per module ``l`` (sensitivity
   ``sqrt(Σ_l C_l²)``; a single ``C`` is split as ``C_l = C/sqrt(L)``); ``automatic`` (Bu et al.
   2022, "Automatic clipping") ``c_i = 1/(‖g_i‖ + γ)`` (sensitivity 1).
6. The clipped sum is formed from ``(a, g, c)`` (e.g. ``Σ_{i,t} c_i g_it a_itᵀ``) and ADDED to
   ``p.grad``, so physical batches accumulate; no parameter ever receives an unclipped gradient.

``mode="ghost"`` instead runs a second backward of ``Σ_i c_i L_i`` (ghost clipping, Li et al. 2022).

*Group clipping* (user-level DP): ``backward(losses, groups=g)`` clips each group's SUMMED gradient
``G_k = Σ_{i: g_i = k} g_i`` instead (``c_k`` from ``‖G_k‖``; sensitivity per group as above), with
the norms from regrouped representations (:mod:`~trustnlp.privacy.clipping.groups`) and the clipped
sum ``Σ_i c_{g_i} g_i`` from the per-example ones. A group must lie within one call.

*Capture mode* (:meth:`PerSampleClipper.capture`, used by :mod:`trustnlp.privacy.engine` for plain
PyTorch loops) skips step 2: a pre-hook on each recorded output's autograd node keeps the output
gradient during the caller's own ``loss.backward()`` of a *reduced* loss, and when that backward
ends (an autograd engine callback) steps 3-6 run on the records that received a gradient, with the
clipped sums added to :attr:`PerSampleClipper.clipped_sums` instead of ``p.grad`` (which autograd
fills with the unclipped gradient; the caller overwrites it). For a mean-reduced loss the output
gradients are ``(1/B) ∂L_i/∂y_i`` and are rescaled by the batch size ``B``.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> with PerSampleClipper(model, max_grad_norm=1.0) as clipper:
    ...     stats = clipper.backward(torch.nn.functional.cross_entropy(model(x), y, reduction="none"))
    >>> stats.norms.shape, model[0].weight.grad.shape
    (torch.Size([8]), torch.Size([3, 4]))
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from trustnlp.errors import ConfigError, PrivacyError, expected
from trustnlp.privacy.clipping.fallback import VmapFallback, flatten
from trustnlp.privacy.clipping.grads import Call, PerExampleGrad, merge, squared_norm
from trustnlp.privacy.clipping.groups import GroupLayout, regroup
from trustnlp.privacy.clipping.rules import Rule, find_rule

__all__ = ["CLIPPING_MODES", "MODES", "ClipStats", "PerSampleClipper"]

CLIPPING_MODES = ("flat", "per-layer", "automatic")
MODES = ("bk", "ghost")
FALLBACK = VmapFallback()
_EPS = 1e-6


@dataclass(frozen=True)
class ClipStats:
    """What one :meth:`PerSampleClipper.backward` saw (with ``groups``: per group, ``[K]`` instead of ``[B]``).

    Attributes:
        norms: ``[B]`` per-example total gradient norm before clipping.
        factors: ``[B]`` clip factors (``flat`` / ``automatic``), or per layer (module path -> ``[B]``).
        layer_norms: module path -> ``[B]`` per-example norm of that layer's parameters' gradient.
    """

    norms: Tensor
    factors: Tensor | dict[str, Tensor]
    layer_norms: dict[str, Tensor]


@dataclass
class _Record:
    call: Call
    edges: list[GradientEdge | None]
    versions: list[tuple[Tensor, int]]
    captured: bool = False  # capture mode: an output gradient arrived (in the current backward)
    dropped: bool = False  # cleared (e.g. by zero_grad) before its backward
    done: bool = False  # capture mode: already clipped


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(expected(name, "> 0", value))
    return float(value)


_HALF = (torch.float16, torch.bfloat16)


def _fp32(x: Any) -> Any:
    """Half-precision activations and output gradients (autocast) are recorded in float32: per-example
    norms and clipped sums are always computed in at least single precision."""
    return x.float() if isinstance(x, Tensor) and x.dtype in _HALF else x


@contextlib.contextmanager
def _no_autocast(device_type: str) -> Iterator[None]:
    """The clipping maths outside any autocast region the caller's backward runs in."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def _trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module._parameters.items() if p is not None and p.requires_grad}


class PerSampleClipper:
    """Hooks on a model that turn a batch's per-example losses into clipped gradient sums in ``p.grad``.

    Args:
        model: the model; every trainable parameter must belong to a module whose forward runs
            (frozen parameters, ``requires_grad=False``, are ignored and cost nothing).
        max_grad_norm: the threshold ``C`` (> 0); for ``per-layer`` also a mapping module path -> ``C_l``.
        clipping: ``flat``, ``per-layer`` or ``automatic``.
        mode: ``bk`` (one backward, book-keeping) or ``ghost`` (second backward; not with ``per-layer``).
        automatic_gamma: ``γ`` of automatic clipping (> 0).

    Raises:
        ConfigError: an invalid option (house phrasing, e.g. "Expected `max_grad_norm` to be > 0, but got -1.0.").
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_grad_norm: float | Mapping[str, float] = 1.0,
        clipping: str = "flat",
        mode: str = "bk",
        automatic_gamma: float = 0.01,
    ) -> None:
        if clipping not in CLIPPING_MODES:
            raise ConfigError(expected("clipping", f"one of {list(CLIPPING_MODES)}", clipping))
        if mode not in MODES:
            raise ConfigError(expected("mode", f"one of {list(MODES)}", mode))
        if clipping == "per-layer" and mode == "ghost":
            raise ConfigError("Expected `mode` to be 'bk' with per-layer clipping, but got 'ghost'.")
        self.automatic_gamma = _positive("automatic_gamma", automatic_gamma)
        owning = {name for name, m in model.named_modules() if any(p is not None for p in m._parameters.values())}
        if isinstance(max_grad_norm, Mapping):
            if clipping != "per-layer":
                raise ConfigError(
                    expected("max_grad_norm", "a number (a mapping needs clipping='per-layer')", max_grad_norm)
                )
            unknown = sorted(set(max_grad_norm) - owning)
            if unknown:
                raise ConfigError(f"`max_grad_norm` names module(s) {unknown} that own no parameters in the model.")
            self.max_grad_norm: float | dict[str, float] = {
                k: _positive(f"max_grad_norm[{k!r}]", v) for k, v in max_grad_norm.items()
            }
        else:
            self.max_grad_norm = _positive("max_grad_norm", max_grad_norm)
        self.model, self.clipping, self.mode = model, clipping, mode
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._records: dict[nn.Module, list[_Record]] = {}
        self._names: dict[nn.Module, str] = {}
        self._batchnorm_train: dict[str, str] = {}
        self._recording = False
        self._report: dict[str, str] = {}
        # capture mode (see `capture`)
        self._capturing = False
        self._loss_reduction = "mean"
        self._task = -2  # id of the autograd graph task whose end is already queued
        self._touched: set[int] = set()
        self.clipped_sums: dict[int, Tensor] = {}
        self.captured_examples = 0
        self.last_stats: ClipStats | None = None

    # -- hooks ---------------------------------------------------------------------------------------
    def attach(self) -> PerSampleClipper:
        """Register the forward hooks (idempotent); returns ``self``."""
        self.detach()
        self._report = {}
        for name, module in self.model.named_modules():
            self._names.setdefault(module, name)
            if any(p is not None for p in module._parameters.values()):
                self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
                if _trainable(module):
                    self._report[name] = self._rule(module).name
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                self._handles.append(module.register_forward_hook(self._batchnorm_hook))
        self._recording = True
        return self

    def detach(self) -> None:
        """Remove the hooks and drop recorded activations (and, in capture mode, the clipped sums)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()
        self._recording = self._capturing = False
        self.take_clipped_sums()

    def clear(self) -> None:
        """Drop recorded activations (e.g. after a forward that will not be back-propagated)."""
        for recs in self._records.values():
            for r in recs:
                r.dropped = True
        self._records = {}
        self._batchnorm_train = {}

    def __enter__(self) -> PerSampleClipper:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _batchnorm_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._recording and module.training and torch.is_grad_enabled():
            self._batchnorm_train[self._names[module]] = type(module).__name__

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not self._recording or not torch.is_grad_enabled() or not _trainable(module):
            return
        outs = [t for t in flatten(output)[0] if isinstance(t, Tensor) and t.is_floating_point()]
        edges = [get_gradient_edge(t) if t.requires_grad else None for t in outs]
        if all(e is None for e in edges):
            return
        leaves, rebuild = flatten((args, kwargs))
        leaves = [x.detach() if isinstance(x, Tensor) else x for x in leaves]
        versions = [(x, x._version) for x in leaves if isinstance(x, Tensor)]
        a, kw = rebuild([_fp32(x) for x in leaves])
        call = Call(tuple(a), dict(kw), [_fp32(o.detach()) for o in outs])
        rec = _Record(call, edges, versions)
        self._records.setdefault(module, []).append(rec)
        if self._capturing:
            call.grads = [None] * len(outs)  # type: ignore[list-item]  # filled by the node pre-hooks
            for j, e in enumerate(edges):
                if e is not None:
                    e.node.register_prehook(functools.partial(self._output_grad, module, rec, j, e.output_nr))

    @staticmethod
    def _rule(module: nn.Module) -> Rule:
        return find_rule(module) or FALLBACK

    def rules_report(self) -> dict[str, str]:
        """Module path -> rule used for its trainable parameters (``linear-ghost``, ``linear-instantiate``,
        ``embedding``, ``layernorm``, ``conv1d-…``, ``gpt2-conv1d-…``, ``vmap-fallback``, …; the
        norm method is known after a backward)."""
        return dict(self._report)

    # -- thresholds ----------------------------------------------------------------------------------
    def _groups(self) -> dict[int, tuple[nn.Parameter, str]]:
        """id(param) -> (param, path of the first module owning it) for every trainable parameter."""
        out: dict[int, tuple[nn.Parameter, str]] = {}
        for name, module in self.model.named_modules():
            for p in _trainable(module).values():
                out.setdefault(id(p), (p, name))
        return out

    def _thresholds(self, groups: list[str]) -> dict[str, float]:
        if isinstance(self.max_grad_norm, dict):
            missing = sorted(set(groups) - set(self.max_grad_norm))
            if missing:
                raise ConfigError(f"`max_grad_norm` has no threshold for trainable layer(s) {missing}.")
            return {g: self.max_grad_norm[g] for g in groups}
        return {g: self.max_grad_norm / math.sqrt(len(groups)) for g in groups}

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the clipped sum: ``C`` (flat), ``sqrt(Σ_l C_l²)`` (per-layer), 1 (automatic)."""
        if self.clipping == "automatic":
            return 1.0
        if self.clipping == "flat" or not isinstance(self.max_grad_norm, dict):
            return float(self.max_grad_norm)  # type: ignore[arg-type]
        groups = sorted({g for _, g in self._groups().values()})
        return math.sqrt(sum(c * c for c in self._thresholds(groups).values()))

    # -- the step ------------------------------------------------------------------------------------
    def backward(self, per_example_loss: Tensor, *, groups: Tensor | None = None) -> ClipStats:
        """Clip per-example gradients of ``per_example_loss`` (``[B]``, from a forward run while
        attached) and add their clipped sum to each trainable parameter's ``p.grad``.

        ``groups`` (``[B]`` integer indices in ``0 .. K-1``): clip each group's summed gradient
        instead (user-level DP); the stats are then per group (``[K]``).

        Raises:
            ConfigError: ``per_example_loss`` or ``groups`` malformed.
            PrivacyError: nothing recorded, a layer whose per-example gradients are undefined
                (examples mixed, e.g. BatchNorm in training mode), a trainable parameter whose
                module did not run, or an input modified in place after its layer's forward.
        """
        return self._run(per_example_loss, groups, accumulate=True)

    def norms(self, per_example_loss: Tensor, *, groups: Tensor | None = None) -> ClipStats:
        """As :meth:`backward` but only the norms and factors: no parameter gets a gradient (e.g. for a
        private estimate of the clipping threshold)."""
        return self._run(per_example_loss, groups, accumulate=False)

    def _run(self, per_example_loss: Tensor, groups: Tensor | None, *, accumulate: bool) -> ClipStats:
        if (
            not isinstance(per_example_loss, Tensor)
            or per_example_loss.dim() != 1
            or not per_example_loss.requires_grad
        ):
            got = tuple(per_example_loss.shape) if isinstance(per_example_loss, Tensor) else per_example_loss
            raise ConfigError(
                expected("per_example_loss", "a 1-D tensor [B] of per-example losses that requires grad", got)
            )
        layout = None if groups is None else GroupLayout.of(groups, per_example_loss.shape[0])
        if self._capturing:
            raise ConfigError("This clipper is in capture mode: call `loss.backward()` on the reduced loss instead.")
        records, bn = self._records, self._batchnorm_train
        self.clear()
        _refuse_batchnorm(bn)
        if not records:
            raise PrivacyError(
                "No forward pass was recorded: run the model's forward after `attach()` with gradients enabled."
            )
        self._recording, was = False, self._recording
        try:
            return self._step(per_example_loss, records, layout, accumulate)
        finally:
            self._recording = was

    def _step(self, loss: Tensor, records: dict[nn.Module, list[_Record]], layout: GroupLayout | None = None,
              accumulate: bool = True) -> ClipStats:
        b = loss.shape[0]
        groups = self._groups()
        ran = {id(p) for m in records for p in _trainable(m).values()}
        idle = sorted({g for pid, (_, g) in groups.items() if pid not in ran})
        if idle:
            raise PrivacyError(
                f"Trainable parameters of module(s) {idle} got no recorded forward call: freeze them "
                "(requires_grad=False) or run them inside their own module's forward."
            )
        self._check_versions(records)
        edges = [e for recs in records.values() for r in recs for e in r.edges if e is not None]
        ghost = self.mode == "ghost" and accumulate
        grads = iter(torch.autograd.grad(loss.sum(), edges, allow_unused=True, retain_graph=ghost))
        for recs in records.values():
            for r in recs:
                got = [next(grads) if e is not None else None for e in r.edges]
                r.call.grads = [torch.zeros_like(o) if g is None else _fp32(g) for g, o in zip(got, r.call.outputs)]
        with _no_autocast(loss.device.type):
            stats = self._clip(records, b, accumulate=accumulate and not ghost, layout=layout)
        if ghost:
            assert isinstance(stats.factors, Tensor)
            c = stats.factors if layout is None else stats.factors[layout.groups.to(stats.factors.device)]
            (c.to(loss.dtype) * loss).sum().backward()
        return stats

    def _check_versions(self, records: dict[nn.Module, list[_Record]]) -> None:
        for m, recs in records.items():
            for rec in recs:
                if any(t._version != v for t, v in rec.versions):
                    raise PrivacyError(
                        f"An input of module `{self._names[m]}` ({type(m).__name__}) was modified in place after its "
                        "forward; per-example gradients would be wrong."
                    )

    def _clip(
        self,
        records: dict[nn.Module, list[_Record]],
        b: int,
        *,
        scale: float = 1.0,
        sink: dict[int, Tensor] | None = None,
        accumulate: bool = True,
        layout: GroupLayout | None = None,
    ) -> ClipStats:
        """Steps 3-6 on records whose ``call.grads`` are set, for a batch of ``b`` examples.

        ``scale``: the output gradients are ``1/scale`` times the per-example ones (a mean-reduced
        loss: ``scale = b``); norms and sums are corrected, nothing is copied. ``sink``: where the
        clipped sums are added (``id(param) -> tensor``; default ``p.grad``). ``layout``: group
        clipping (norms of regrouped representations; each example weighted by its group's factor).
        """
        groups = self._groups()
        per_param: dict[int, list[PerExampleGrad]] = {}
        per_module: list[tuple[nn.Module, Rule, dict[str, nn.Parameter]]] = []
        for m, recs in records.items():
            params, rule = _trainable(m), self._rule(m)
            try:
                reps = rule.grads(m, [r.call for r in recs], params, b)
            except PrivacyError as e:
                raise PrivacyError(f"Module `{self._names[m]}` ({type(m).__name__}): {e}") from e
            for pname, p in params.items():
                per_param.setdefault(id(p), []).extend(reps[pname])
            per_module.append((m, rule, params))
        merged = {pid: merge(reps) for pid, reps in per_param.items()}
        for m, rule, params in per_module:
            self._report[self._names[m]] = rule.describe(m, {n: merged[id(p)] for n, p in params.items()})

        group_sq: dict[str, Tensor] = {}
        for pid, contributions in merged.items():
            g = groups[pid][1]
            if layout is not None:
                contributions = [regroup(r, layout) for r in contributions]
            sq = squared_norm(contributions).clamp_min(0)
            if scale != 1.0:
                sq = sq * (scale * scale)
            group_sq[g] = group_sq[g] + sq if g in group_sq else sq
        layer_norms = {g: v.sqrt().detach() for g, v in group_sq.items()}
        norms = torch.stack(list(group_sq.values())).sum(0).sqrt().detach()

        factors: Tensor | dict[str, Tensor]
        if self.clipping == "per-layer":
            thr = self._thresholds(sorted(layer_norms))
            factors = {g: (thr[g] / (n + _EPS)).clamp(max=1.0) for g, n in layer_norms.items()}
        elif self.clipping == "automatic":
            factors = 1.0 / (norms + self.automatic_gamma)
        else:
            factors = (float(self.max_grad_norm) / (norms + _EPS)).clamp(max=1.0)  # type: ignore[arg-type]

        if accumulate:
            with torch.no_grad():
                for pid, contributions in merged.items():
                    p, g = groups[pid]
                    c = factors[g] if isinstance(factors, dict) else factors
                    if layout is not None:
                        c = c[layout.groups.to(c.device)]
                    if scale != 1.0:
                        c = c * scale
                    out = p.grad if sink is None else sink.get(pid)
                    rest = contributions
                    if out is None:
                        out = contributions[0].weighted_sum(c).to(p.dtype).contiguous()
                        rest = contributions[1:]
                        if sink is None:
                            p.grad = out
                        else:
                            sink[pid] = out
                    for contribution in rest:
                        contribution.add_weighted_sum(c, out)
        return ClipStats(norms=norms, factors=factors, layer_norms=layer_norms)

    # -- capture mode: clipping inside the caller's own backward -------------------------------------
    def capture(self, *, loss_reduction: str = "mean") -> PerSampleClipper:
        """Attach in capture mode, for a plain ``loss.backward()`` of a reduced loss; returns ``self``.

        Every recorded output's autograd node gets a pre-hook keeping its gradient, and every
        trainable parameter a hook noting that it got one. When a backward ends, the records that
        received a gradient are one physical batch of ``B`` examples (``B``: the first dimension of
        the first recorded call's first tensor input; the rules check every other layer against
        it): ``loss_reduction="mean"`` rescales their gradients by ``B``, per-example norms and
        clip factors follow the rules as in :meth:`backward`, and the clipped sums are ADDED to
        :attr:`clipped_sums` (``id(param) -> tensor``, so physical batches accumulate; collect them
        with :meth:`take_clipped_sums`). ``p.grad`` is left to autograd: it holds the UNCLIPPED
        gradient, which the caller must overwrite. Records without a gradient stay pending (a
        later backward may reach them) until :meth:`clear`. Only ``mode="bk"``.

        Raises (from ``loss.backward()``):
            PrivacyError: as :meth:`backward`; also a trainable parameter that got a gradient but
                not through a recorded call of its module (used outside its module's forward), a
                record reached by a second backward (``retain_graph=True``) or after :meth:`clear`.
        """
        if loss_reduction not in ("mean", "sum"):
            raise ConfigError(expected("loss_reduction", "one of ['mean', 'sum']", loss_reduction))
        if self.mode != "bk":
            raise ConfigError(expected("mode", "'bk' in capture mode", self.mode))
        self.attach()
        self._capturing, self._loss_reduction = True, loss_reduction
        for pid, (p, _) in self._groups().items():
            self._handles.append(p.register_hook(functools.partial(self._param_grad, pid)))
        return self

    def take_clipped_sums(self) -> dict[int, Tensor]:
        """The clipped sums captured since the last call (``id(param) -> Σ_i clip(g_i)``), then reset."""
        sums, self.clipped_sums, self.captured_examples = self.clipped_sums, {}, 0
        return sums

    def _queue_backward_end(self) -> None:
        task = torch._C._current_graph_task_id()
        if task != self._task:  # once per backward: graph task ids are unique
            self._task = task
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_ended)

    def _param_grad(self, pid: int, grad: Tensor) -> None:
        if self._capturing:
            self._touched.add(pid)
            self._queue_backward_end()

    def _output_grad(self, module: nn.Module, rec: _Record, j: int, nr: int, grad_outputs: Any) -> None:
        if not self._capturing or grad_outputs[nr] is None:
            return
        where = f"module `{self._names[module]}` ({type(module).__name__})"
        if rec.dropped:
            raise PrivacyError(
                f"A backward reached the output of {where} from a forward recorded before the captured state was "
                "cleared (optimizer.zero_grad()?): call zero_grad() before the forward pass."
            )
        if rec.done or rec.call.grads[j] is not None:
            raise PrivacyError(
                f"The output of {where} got gradients from two backward passes (retain_graph=True?): per-example "
                "clipping needs the whole loss of a forward in one backward; sum the losses and call backward once."
            )
        g = grad_outputs[nr]
        if g.dtype in _HALF:
            rec.call.grads[j] = g.float()
        else:
            rec.call.grads[j] = g.clone() if type(rec.edges[j].node).__name__ == "AccumulateGrad" else g  # type: ignore[union-attr]
        rec.captured = True
        self._queue_backward_end()

    def _backward_ended(self) -> None:
        taken = {m: [r for r in recs if r.captured] for m, recs in self._records.items()}
        taken = {m: recs for m, recs in taken.items() if recs}
        self._records = {m: rest for m, recs in self._records.items() if (rest := [r for r in recs if not r.captured])}
        touched, self._touched = self._touched, set()
        bn, self._batchnorm_train = self._batchnorm_train, {}
        for recs in taken.values():
            for r in recs:
                r.done = True
        _refuse_batchnorm(bn)
        b = self._batch_size(taken) if taken else None
        if b == 0:  # an empty batch: nothing to clip
            return
        groups = self._groups()
        ran = {id(p) for m in taken for p in _trainable(m).values()}
        outside = sorted({groups[pid][1] for pid in touched - ran if pid in groups})
        if outside:
            raise PrivacyError(
                f"Trainable parameters of module(s) {outside} got gradients but not through a recorded forward call "
                "of their module (used outside its forward, e.g. a tied weight in F.linear, or a forward run before "
                "the hooks were attached?): their per-example gradients are unknown; call the module itself, or "
                "freeze them (requires_grad=False)."
            )
        if b is None:
            return
        self._check_versions(taken)
        for recs in taken.values():
            for r in recs:
                r.call.grads = [torch.zeros_like(o) if g is None else g for g, o in zip(r.call.grads, r.call.outputs)]
        scale = float(b) if self._loss_reduction == "mean" else 1.0
        self._recording, was = False, self._recording  # the fallback re-runs modules: record nothing
        try:
            device = next((p.device.type for p in self.model.parameters()), "cpu")
            with _no_autocast(device):
                self.last_stats = self._clip(taken, b, scale=scale, sink=self.clipped_sums)
        finally:
            self._recording = was
        self.captured_examples += b

    def _batch_size(self, records: dict[nn.Module, list[_Record]]) -> int:
        """The first dimension (second for a sequence-first RNN) of the first recorded call's first tensor input."""
        module, recs = next(iter(records.items()))
        call = recs[0].call
        tensors = [t for t in flatten((call.args, call.kwargs))[0] if isinstance(t, Tensor) and t.dim() > 0]
        tensors = tensors or [o for o in call.outputs if o.dim() > 0]
        if not tensors:
            raise PrivacyError(f"Module `{self._names[module]}` got no batched tensor input: the batch size is unknown.")
        dim = 1 if isinstance(module, nn.RNNBase) and not module.batch_first and tensors[0].dim() > 1 else 0
        return int(tensors[0].shape[dim])


def _refuse_batchnorm(bn: dict[str, str]) -> None:
    if bn:
        path, kind = next(iter(bn.items()))
        raise PrivacyError(
            f"Module `{path}` ({kind}) ran in training mode: batch normalisation mixes the examples of a batch, "
            "so per-example gradients are undefined; use LayerNorm/GroupNorm or put it in eval mode."
        )
