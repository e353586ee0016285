"""Architectures that classify a clip [B, 1, K, H, W] of grayscale frames as background (0) or 4CV (1)."""

from __future__ import annotations

import inspect

from torch import nn

from echoflow.models.mobilenet_v1 import MobileNetV1
from echoflow.models.mobilenet_v2 import MobileNetV2
from echoflow.models.r2plus1d import R2Plus1d
from echoflow.models.squeezenet import SqueezeNet

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
    "squeezenet": SqueezeNet,
    "r2plus1d": R2Plus1d,
}

NUM_CLASSES = 2


def build(name: str, frames_per_clip: int, **model_args) -> nn.Module:
    """Construct architecture ``name`` for clips of ``frames_per_clip`` frames with 2 output classes.

    Raises:
        ValueError: for an unknown name, an unknown keyword argument or an invalid frames_per_clip.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}.")
    if not isinstance(frames_per_clip, int) or frames_per_clip < 1:
        raise ValueError(f"{name}: frames_per_clip must be an integer >= 1, got {frames_per_clip!r}.")
    cls = ARCHITECTURES[name]
    allowed = sorted(p for p in inspect.signature(cls.__init__).parameters
                     if p not in ("self", "frames_per_clip", "num_classes"))
    unknown = sorted(set(model_args) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown model_args {', '.join(unknown)}; allowed: {', '.join(allowed)}.")
    return cls(frames_per_clip=frames_per_clip, num_classes=NUM_CLASSES, **model_args)


def count_parameters(model: nn.Module) -> int:
    """Count the trainable parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
