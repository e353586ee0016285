"""Validate the workflow configuration and derive the settings each stage reads."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

DEMO_RAW_DIR = Path("resources/demo/raw")


class ConfigError(ValueError):
    """Invalid configuration value, with the key, the value and what is allowed."""


def load_schema(path: str | Path) -> dict:
    """Read the JSON schema stored as YAML."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for item in error.absolute_path:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts) or "(top level)"


def _allowed(error: jsonschema.ValidationError) -> str:
    """Describe what the failing schema keyword accepts."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    keyword = error.validator
    if keyword == "enum":
        return "one of " + ", ".join(repr(v) for v in error.validator_value)
    if keyword == "const":
        return repr(error.validator_value)
    if keyword in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        symbol = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[keyword]
        return f"a number {symbol} {error.validator_value}"
    if keyword == "type":
        return f"a value of type {error.validator_value}"
    if keyword == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        return "only the keys " + ", ".join(known) if known else "no extra keys"
    if keyword == "required":
        return "the keys " + ", ".join(error.validator_value)
    if keyword in ("oneOf", "anyOf"):
        return schema.get("description", "one of the documented forms")
    if keyword in ("minItems", "maxItems"):
        return f"a list with {'at least' if keyword == 'minItems' else 'at most'} {error.validator_value} items"
    if keyword == "pattern" or keyword == "propertyNames":
        return "names made of letters, digits, '_', '.' and '-', starting with a letter or digit"
    if keyword == "not":
        return "a value other than " + repr(error.validator_value.get("const", error.validator_value))
    return f"{keyword} {error.validator_value!r}"


def format_error(error: jsonschema.ValidationError, source: str) -> str:
    """Render one schema violation as a sentence naming key, value and what is allowed."""
    key = _key_path(error)
    value = error.instance
    if error.validator == "additionalProperties":
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        return (f"{source}: unknown key {', '.join(repr(k) for k in extra)} under '{key}'; "
                f"allowed: {_allowed(error)}. Check the spelling against config/config.yaml.")
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in value]
        return f"{source}: missing key {', '.join(repr(k) for k in missing)} under '{key}'. Add it as in config/config.yaml."
    message = f"{source}: invalid value {value!r} for '{key}'; expected {_allowed(error)}."
    if error.validator == "type" and isinstance(value, str) and _is_number(value):
        message += (f" YAML reads {value} as text because it has no decimal point; "
                    f"write it as {float(value)!r} instead.")
    return message


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def validate(config: dict, schema: dict, source: str = "config") -> None:
    """Check config against schema and the rules a schema cannot state.

    Raises:
        ConfigError: for the first violation, naming the key, the value and what is allowed.
    """
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.path)))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise ConfigError(format_error(error, source))
    _check_cross_references(config, source)


def _check_cross_references(config: dict, source: str) -> None:
    fractions = config["split"].get("fractions")
    if fractions is not None:
        total = sum(fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"{source}: split.fractions add up to {total:g}; they must add up to 1.")
    crop = config["preprocess"]["crop"]
    if isinstance(crop, dict) and config["preprocess"].get("mask") not in (None, "auto", "none"):
        for vertex in config["preprocess"]["mask"]:
            if vertex[0] < 0 or vertex[1] < 0:
                raise ConfigError(f"{source}: preprocess.mask vertex {vertex} is negative; use source pixel coordinates.")
    for name, experiment in experiments(config).items():
        sampling = experiment.get("sampling", "default")
        if sampling not in config["sampling"]:
            raise ConfigError(
                f"{source}: experiment '{name}' names sampling {sampling!r}, which is not defined; "
                f"defined: {', '.join(sorted(config['sampling']))}.")


def experiments(config: dict) -> dict[str, dict]:
    """Return every experiment, with sweep grids expanded into named experiments.

    A sweep entry ``name: {base: exp, grid: {learning_rate: [a, b]}}`` adds ``name_learning_rate-a`` and
    ``name_learning_rate-b``, each a copy of ``exp`` with that value set.
    """
    resolved = {name: copy.deepcopy(settings) for name, settings in config["experiments"].items()}
    for sweep_name, sweep in (config.get("sweep") or {}).items():
        base = sweep["base"]
        if base not in config["experiments"]:
            raise ConfigError(
                f"config: sweep '{sweep_name}' names base experiment {base!r}, which is not defined; "
                f"defined: {', '.join(sorted(config['experiments']))}.")
        keys = sorted(sweep["grid"])
        for values in itertools.product(*(sweep["grid"][key] for key in keys)):
            settings = copy.deepcopy(config["experiments"][base])
            settings.update(dict(zip(keys, values)))
            name = "_".join([sweep_name] + [f"{key}-{value}" for key, value in zip(keys, values)])
            if name in resolved:
                raise ConfigError(f"config: sweep '{sweep_name}' produces experiment name {name!r}, which already exists.")
            resolved[name] = settings
    return resolved


def raw_dir(config: dict) -> Path:
    """Return the raw tree the workflow reads: the demo tree or the configured path."""
    if config["raw_dir"] == "demo":
        return DEMO_RAW_DIR
    return Path(config["raw_dir"])


def load(path: str | Path, schema_path: str | Path) -> dict:
    """Read and validate a configuration file."""
    with open(path, encoding="utf-8") as handle:
        try:
            config = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error}). Fix the syntax and run again.") from None
    validate(config, load_schema(schema_path), source=str(path))
    return config
