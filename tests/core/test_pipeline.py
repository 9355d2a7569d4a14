"""Pipeline pieces that the CLI tests do not reach directly."""

import pytest

from trustnlp.config import TrainConfig
from trustnlp.data.registry import load_dataset
from trustnlp.errors import ConfigError, PrivacyError
from trustnlp.pipeline import load_splits, make_tokenizer, run_train


@pytest.fixture()
def csv_splits(tmp_path):
    rows = ["text,label"] + [f"play song number {i},music" for i in range(30)] + [f"weather in city {i},weather" for i in range(30)]
    p = tmp_path / "d.csv"
    p.write_text("\n".join(rows) + "\n")
    return load_dataset(str(p), seed=0)


def test_word_vocabulary_from_private_training_data_is_refused_under_dp(csv_splits):
    tok = make_tokenizer("word", csv_splits, model="bag", private=False)
    assert tok.provenance == "private-train"
    with pytest.raises(PrivacyError, match="leaks membership"):
        make_tokenizer("word", csv_splits, model="bag", private=True)
    # the public WordPiece vocabulary is fine for private runs
    assert make_tokenizer("wordpiece", csv_splits, model="bag", private=True).provenance == "public"


def test_generator_vocabulary_for_the_builtin_corpus():
    splits = load_splits(TrainConfig(corpus_size=300), seed=0)
    tok = make_tokenizer("word", splits, model="bag", private=True)
    assert tok.provenance == "generator"
    with pytest.raises(ConfigError, match="wordpiece"):
        make_tokenizer("word", splits, model="minilm")


def test_run_train_all_tasks_small(tmp_path):
    for task, model in (("classify", "transformer"), ("tag", "cnn"), ("lm", "lm")):
        # the LM uses the generator's small public word vocabulary (a 30k-way softmax is slow here)
        tokenizer = "word" if task == "lm" else "wordpiece"
        cfg = TrainConfig(corpus_size=300, task=task, model=model, epochs=1, batch_size=32, max_length=24, tokenizer=tokenizer)
        res = run_train(cfg, tmp_path / task, progress=False)
        key = {"classify": "test_accuracy", "tag": "test_slot_f1", "lm": "test_perplexity"}[task]
        assert res.metrics[key] is not None and res.metrics["steps"] >= 1
        assert (tmp_path / task / "model" / "model.safetensors").exists()
