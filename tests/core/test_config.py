import pytest

from trustnlp.config import TrainConfig, load_config
from trustnlp.errors import ConfigError


def test_yaml_config_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: cnn\nepochs: 2\nbatch_size: 16\n")
    cfg = load_config(p, TrainConfig, epochs=4)
    assert (cfg.model, cfg.epochs, cfg.batch_size) == ("cnn", 4, 16)


def test_config_errors_name_the_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 0\n")
    with pytest.raises(ConfigError, match=r"Expected `epochs` to satisfy: .*greater than or equal to 1.*but got 0"):
        load_config(p, TrainConfig)
    p.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"`epoch`.*[Ee]xtra"):
        load_config(p, TrainConfig)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p, TrainConfig)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", TrainConfig)
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p, TrainConfig)


def test_data_aliases_name_the_canonical_data_sets() -> None:
    from trustnlp.config import DataConfig, TrainConfig

    assert DataConfig(data="builtin").data == "assistant"
    assert TrainConfig(data="Shakespeare").data == "tinyshakespeare"
    assert DataConfig(data="clinc150").data == "clinc150"
