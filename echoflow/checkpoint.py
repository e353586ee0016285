"""Write and read trained checkpoints (results/models/{experiment}/model.pt).

A checkpoint is a plain dict of tensors, strings, numbers, lists and dicts, so it loads with
``torch.load(path, weights_only=True)`` and never executes pickled code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import echoflow
from echoflow.atomic import atomic_output
from echoflow.models import build

CLASS_NAMES = ["background", "4CV"]
REQUIRED_KEYS = ("state_dict", "arch", "arch_args", "preprocess", "class_names", "experiment", "experiment_name",
                 "best_epoch", "val_metrics", "echoflow_version")


def save(path: str | Path, model: nn.Module, *, arch: str, arch_args: dict, preprocess: dict, experiment: dict,
         experiment_name: str, best_epoch: int, val_metrics: dict, extra: dict | None = None) -> None:
    """Write the checkpoint of ``model`` to ``path`` atomically, with tensors moved to the CPU.

    Args:
        arch_args: keyword arguments of ``echoflow.models.build``, including ``frames_per_clip``.
        preprocess: settings needed to turn a video into model input (see docs/training.md).
        extra: further plain values to store under their own keys.
    """
    checkpoint = {
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "arch": arch,
        "arch_args": dict(arch_args),
        "preprocess": dict(preprocess),
        "class_names": list(CLASS_NAMES),
        "experiment": dict(experiment),
        "experiment_name": experiment_name,
        "best_epoch": int(best_epoch),
        "val_metrics": {key: float(value) for key, value in val_metrics.items()},
        "echoflow_version": echoflow.__version__,
        **(extra or {}),
    }
    with atomic_output(path) as temporary:
        torch.save(checkpoint, temporary)


def read(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Load the checkpoint dict at ``path`` without executing pickled code.

    Raises:
        ValueError: if the file is not a checkpoint written by ``save``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} not found; train the experiment first (rule train).")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files.
        raise ValueError(f"Checkpoint {path} could not be loaded with weights_only=True ({error}). "
                         "Delete it and rerun the train rule.") from error
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"Checkpoint {path} is missing the keys {', '.join(missing)}; "
                         "it was not written by echoflow.checkpoint.save. Rerun the train rule.")
    return checkpoint


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model stored at ``path`` in evaluation mode on ``device``.

    Returns:
        (model, checkpoint dict).
    """
    checkpoint = read(path, device)
    model = build(checkpoint["arch"], **checkpoint["arch_args"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint
