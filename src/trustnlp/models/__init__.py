"""Text models over token ids, a registry, and safetensors save/load.

Architectures (:data:`MODELS`): ``bag``, ``cnn``, ``lstm``, ``transformer`` (small classifiers),
``minilm`` (pretrained MiniLM/BERT encoder + head, offline), ``joint`` (intent + slot tagging) and
``lm`` (causal LM). Each is an ``nn.Module`` with ``forward(input_ids, attention_mask)``, an
``arch`` name, a JSON ``config`` and ``from_config``. transformers is imported only when a
``minilm``/``joint``-with-``minilm``/``lm`` model is built.

Example:
    >>> from trustnlp.models import build_model
    >>> model = build_model("cnn", vocab_size=1000, num_labels=5)
    >>> model.arch, model.config["filters"]
    ('cnn', 128)
"""

from __future__ import annotations

from trustnlp.models.base import MODELS, TextModel, TokenEncoder, build_model, masked_max, masked_mean, position_ids
from trustnlp.models.classifiers import (
    BagClassifier,
    CNNClassifier,
    CNNEncoder,
    LSTMClassifier,
    TransformerClassifier,
    TransformerEncoder,
)
from trustnlp.models.hf import HFEncoder, HFEncoderClassifier
from trustnlp.models.io import SavedModel, load_model, save_model
from trustnlp.models.lm import CausalLM
from trustnlp.models.tagger import JointOutput, JointTagger

__all__ = [
    "MODELS",
    "BagClassifier",
    "CNNClassifier",
    "CNNEncoder",
    "CausalLM",
    "HFEncoder",
    "HFEncoderClassifier",
    "JointOutput",
    "JointTagger",
    "LSTMClassifier",
    "SavedModel",
    "TextModel",
    "TokenEncoder",
    "TransformerClassifier",
    "TransformerEncoder",
    "build_model",
    "load_model",
    "masked_max",
    "masked_mean",
    "position_ids",
    "save_model",
]
