"""Default training settings; kept free of torch so the workflow can read them while it plans jobs."""

from __future__ import annotations

import copy

# Values used for keys an experiment in config/config.yaml leaves out.
DEFAULT_SETTINGS = {
    "model_args": {},
    "sampling": "default",
    "optimizer": "adam",
    "learning_rate": 0.001,
    "momentum": 0.9,
    "weight_decay": 0.0001,
    "batch_size": 32,
    "max_epochs": 4,
    "patience": 2,
    "augment": True,
    "seed": 0,
}


def resolve_settings(settings: dict) -> dict:
    """Return an experiment's settings with every key the training reads, defaults filled in."""
    resolved = copy.deepcopy(DEFAULT_SETTINGS)
    resolved.update(copy.deepcopy(settings))
    return resolved
