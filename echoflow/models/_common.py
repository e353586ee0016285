"""Helpers shared by the architectures."""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, minimum: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` without dropping below 90% of it.

    This is the rounding the MobileNet reference implementations apply to width-multiplied channel counts.
    """
    minimum = divisor if minimum is None else minimum
    rounded = max(minimum, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def check_input(clips: torch.Tensor, frames_per_clip: int, name: str) -> None:
    """Raise ValueError unless ``clips`` is shaped [B, 1, frames_per_clip, H, W]."""
    if clips.dim() != 5 or clips.shape[1] != 1 or clips.shape[2] != frames_per_clip:
        raise ValueError(
            f"{name} expects input of shape [batch, 1, {frames_per_clip}, height, width] "
            f"(frames_per_clip={frames_per_clip}), got {list(clips.shape)}. "
            "Build the model with the frames_per_clip of the clips you feed it.")


def check_width(width_mult: float, name: str) -> None:
    if not width_mult > 0:
        raise ValueError(f"{name}: width_mult must be > 0, got {width_mult!r}.")


def initialize_weights(model: nn.Module) -> None:
    """Initialise convolutions (He, fan-out), batch norms (identity) and linear layers (N(0, 0.01)) in place."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
