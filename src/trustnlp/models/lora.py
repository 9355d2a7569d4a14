"""LoRA adapters (via ``peft``) for the Hugging Face encoders.

LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models") keeps a pretrained
weight ``W₀ ∈ R^{out×in}`` frozen and learns a low-rank update of each targeted projection::

    y = W₀ x + b₀ + (α / r) · B A dropout(x),     A ∈ R^{r×in},  B ∈ R^{out×r}

``A`` starts Kaiming-uniform and ``B`` at zero, so training starts from the pretrained model. Only
``A`` and ``B`` (and the classifier head, outside the encoder) train: about ``2 r d`` parameters per
targeted ``d × d`` projection instead of ``d²``. In peft, ``A`` and ``B`` are plain ``nn.Linear``
modules (``lora_A[adapter]``, ``lora_B[adapter]``) called as modules, so per-example gradient
clipping handles them with its ``nn.Linear`` rule (``G_i = Σ_t g_it a_itᵀ``), with the dropout
before ``A`` part of the recorded input; the frozen base layer has no trainable parameters and
costs nothing. Private fine-tuning of LoRA adapters is Yu et al. 2022 ("Differentially Private
Fine-tuning of Language Models").

The adapters are injected in place (``peft.inject_adapter_in_model``; no ``PeftModel`` wrapper), so
the encoder's forward and its state-dict keys stay plain: ``...query.base_layer.weight`` (frozen)
and ``...query.lora_A.default.weight`` (trainable).

Example:
    >>> tiny = {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
    ...         "num_attention_heads": 2, "intermediate_size": 32}
    >>> from trustnlp.models import build_model
    >>> model = build_model("minilm", vocab_size=64, num_labels=3, encoder_config=tiny, trainable="lora", lora_r=4)
    >>> sorted({n.split(".")[-3] for n, p in model.named_parameters() if p.requires_grad and "lora_" in n})
    ['lora_A', 'lora_B']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from trustnlp.errors import ConfigError, MissingDependencyError, expected
from trustnlp.models.base import check_float, check_int

__all__ = ["LORA_DEFAULTS", "apply_lora", "check_lora_options", "default_targets", "import_peft"]

# The defaults of ``trainable="lora"`` (peft's names: r, lora_alpha, lora_dropout, target_modules);
# ``lora_target_modules=None`` = the attention's query and value projections (Hu et al. 2022).
LORA_DEFAULTS: dict[str, Any] = {"lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0, "lora_target_modules": None}
ADAPTER = "default"


def import_peft() -> Any:
    """The ``peft`` package, or a :class:`MissingDependencyError` naming the extra to install."""
    try:
        import peft
    except ImportError:
        raise MissingDependencyError("peft", extra="hf", purpose="trainable='lora' (LoRA adapters)") from None
    return peft


def check_lora_options(
    trainable: str, *, r: Any, alpha: Any, dropout: Any, target_modules: Any
) -> tuple[int, float, float, list[str] | None]:
    """Validate the LoRA options; they must keep their defaults unless ``trainable == "lora"``."""
    given = {"lora_r": r, "lora_alpha": alpha, "lora_dropout": dropout, "lora_target_modules": target_modules}
    if trainable != "lora":
        changed = sorted(k for k, v in given.items() if v != LORA_DEFAULTS[k])
        if changed:
            raise ConfigError(f"{changed} only apply to LoRA adapters; add `trainable: lora` (--trainable lora).")
    check_int("lora_r", r, 1)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError(expected("lora_alpha", "a number > 0", alpha))
    check_float("lora_dropout", dropout, 0.0, 1.0)
    targets = None
    if target_modules is not None:
        ok = isinstance(target_modules, Sequence) and not isinstance(target_modules, str) and target_modules
        if not ok or not all(isinstance(t, str) and t.strip() for t in target_modules):
            raise ConfigError(
                expected("lora_target_modules", "a non-empty list of module names (e.g. ['query', 'value'])", target_modules)
            )
        targets = list(target_modules)
    return r, float(alpha), float(dropout), targets


def default_targets(model_type: str) -> list[str]:
    """peft's default LoRA targets for a transformers model type (``bert``: ``['query', 'value']``)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    targets = mapping.get(model_type)
    if not targets:
        raise ConfigError(
            f"No default LoRA target modules are known for encoder type {model_type!r}; give "
            "`lora_target_modules` (the names of its attention projections, e.g. ['query', 'value'])."
        )
    return list(targets)


def apply_lora(
    model: nn.Module, *, model_type: str, r: int, alpha: float, dropout: float, target_modules: list[str] | None
) -> list[str]:
    """Inject LoRA adapters into ``model`` in place, freeze everything else in it; return the targets used.

    Raises:
        MissingDependencyError: ``peft`` is not installed (``pip install 'trustnlp[hf]'``).
        ConfigError: a target module name matches no ``nn.Linear`` of the model.
    """
    peft = import_peft()
    targets = list(target_modules) if target_modules is not None else default_targets(model_type)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    try:
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(
            expected("lora_target_modules", "names of linear layers of the encoder", targets) + f" ({first})"
        ) from None
    for name, p in model.named_parameters():
        p.requires_grad_(any(part in ("lora_A", "lora_B") for part in name.split(".")))
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(expected("lora_target_modules", "names of linear layers of the encoder", targets))
    return targets
