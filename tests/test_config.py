"""Configuration validation: every invalid value names its key, the value and what is allowed."""

from pathlib import Path

import pytest
import yaml

from echoflow import config as echoflow_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = echoflow_config.load_schema(ROOT / "config" / "schema.yaml")


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_default_config_is_valid():
    echoflow_config.validate(default_config(), SCHEMA)


@pytest.mark.parametrize("change, words", [
    (lambda c: c["preprocess"].update(size=[4, 128]), ["preprocess.size[0]", "4", ">= 8"]),
    (lambda c: c["preprocess"].update(crop="center"), ["preprocess.crop", "center"]),
    (lambda c: c["preprocess"]["crop"].update(width=-3), ["preprocess.crop", "-3"]),
    (lambda c: c["preprocess"].update(on_bad_video="skip"), ["on_bad_video", "skip", "'fail'", "'exclude'"]),
    (lambda c: c["annotations"].update(empty_project="ignore"), ["empty_project", "ignore", "'background'"]),
    (lambda c: c["split"]["fractions"].update(train=0.9), ["split.fractions", "1.2"]),
    (lambda c: c["split"].update(folds=1), ["split.folds", "1"]),
    (lambda c: c["experiments"]["squeezenet"].update(model="resnet50"), ["model", "resnet50", "'squeezenet'"]),
    (lambda c: c["experiments"]["squeezenet"].update(learning_rate=0), ["learning_rate", "0", "> 0"]),
    (lambda c: c["experiments"]["squeezenet"].update(batch_size="big"), ["batch_size", "big", "integer"]),
    (lambda c: c["experiments"]["squeezenet"].update(sampling="missing"), ["squeezenet", "missing", "default"]),
    (lambda c: c["sampling"]["default"].update(balance="oversample"), ["balance", "oversample", "'weights'"]),
    (lambda c: c.update(raw_dri="demo"), ["raw_dri", "unknown key"]),
    (lambda c: c.pop("preprocess"), ["missing key", "preprocess"]),
])
def test_invalid_value_names_key(change, words):
    config = default_config()
    change(config)
    with pytest.raises(echoflow_config.ConfigError) as raised:
        echoflow_config.validate(config, SCHEMA)
    for word in words:
        assert word in str(raised.value)


def test_sweep_expands_grid():
    config = default_config()
    config["sweep"] = {"lr": {"base": "squeezenet", "grid": {"learning_rate": [0.01, 0.001], "batch_size": [8]}}}
    experiments = echoflow_config.experiments(config)
    assert "lr_batch_size-8_learning_rate-0.01" in experiments
    assert experiments["lr_batch_size-8_learning_rate-0.001"]["learning_rate"] == 0.001
    assert experiments["lr_batch_size-8_learning_rate-0.01"]["model"] == "squeezenet"


def test_sweep_unknown_base_rejected():
    config = default_config()
    config["sweep"] = {"lr": {"base": "nope", "grid": {"learning_rate": [0.01]}}}
    with pytest.raises(echoflow_config.ConfigError, match="nope"):
        echoflow_config.validate(config, SCHEMA)


def test_exponent_without_point_hint():
    config = default_config()
    config["experiments"]["squeezenet"]["learning_rate"] = "5e-4"
    with pytest.raises(echoflow_config.ConfigError) as raised:
        echoflow_config.validate(config, SCHEMA)
    assert "'5e-4'" in str(raised.value)
    assert "0.0005" in str(raised.value)

