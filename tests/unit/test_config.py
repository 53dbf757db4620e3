"""Training configs: YAML, overrides, validation."""

from pathlib import Path

import pytest

from trainer.config import ConfigError, TrainConfig, load_config, parse_overrides


def test_defaults_and_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch_size: 32\nmethod_config:\n  cfg_dropout: 0.2\nexport:\n  id: x\n")
    config = load_config(path, ["--lr=0.001", "--export.default_steps=4", "--method_config.logit_std=1.5"])
    assert config.batch_size == 32 and config.lr == 0.001
    assert config.export.id == "x" and config.export.default_steps == 4
    assert config.method_config == {"cfg_dropout": 0.2, "logit_std": 1.5}
    assert config.max_steps == TrainConfig().max_steps


def test_shipped_configs_load():
    for name in ("configs/tiny-cpu.yaml", "configs/shapes-teacher.yaml"):
        assert load_config(name).export.id


def test_every_config_in_the_repository_loads_and_names_a_known_method():
    from trainer.methods import METHODS

    paths = sorted(Path("configs").glob("*.yaml"))
    assert len(paths) >= 20
    for path in paths:
        config = load_config(str(path))
        assert config.method in METHODS, path
        assert config.export.id, path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--lr=-1"], "lr must be > 0"),
        (["--batch_size=0"], "batch_size must be >= 1"),
        (["--batch_sise=4"], "unknown config key"),
        (["--batch_size=four"], "batch_size must be int"),
        (["--export.nope=1"], "unknown config key"),
        (["--mixed_precision=fp8"], "mixed_precision must be no, bf16 or fp16"),
        (["lr=1"], "must look like --key=value"),
        (["--lr_clock=wall"], "lr_clock must be steps or time"),
        (["--lr_clock=time"], "set max_minutes too"),
    ],
)
def test_bad_values_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_yaml_is_data_never_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(path)


def test_override_parsing():
    assert parse_overrides(["--a.b=1", "--c=x", "--d=true"]) == {"a": {"b": 1}, "c": "x", "d": True}
