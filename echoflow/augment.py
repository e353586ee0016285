"""Random augmentation of whole batches of clips, identical for every frame of a clip."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes applied to each clip.

    Geometric values are relative to the frame: ``translate`` 0.05 shifts by up to 5% of the width or height,
    ``scale`` (0.9, 1.1) zooms between 90% and 110%. ``brightness`` is an offset in intensity units, because
    frames are in [0, 1]. ``contrast`` 0.1 multiplies the deviation from the clip mean by a factor in [0.9, 1.1].
    """

    hflip: float = 0.5              # Probability of a left-right flip.
    vflip: float = 0.0              # Probability of an up-down flip.
    rotation_deg: float = 10.0      # Maximum rotation in degrees, either direction.
    translate: float = 0.05
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.1
    contrast: float = 0.1
    equalize: float = 0.0           # Probability of histogram equalisation over the non-zero pixels of a clip.

    @classmethod
    def from_setting(cls, setting: bool | dict) -> Augmentation | None:
        """Return the augmentation an experiment's ``augment`` value requests, or None when it is off.

        ``true`` gives the defaults above, a dict overrides some of them, ``false`` turns augmentation off.
        """
        if setting is False or setting is None:
            return None
        if setting is True:
            return cls()
        values = dict(setting)
        if not values.pop("enabled", True):
            return None
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"augment: unknown keys {', '.join(unknown)}; allowed: enabled, {', '.join(sorted(known))}.")
        if "scale" in values:
            values["scale"] = tuple(values["scale"])
        return cls(**values)


def _uniform(size: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def affine_matrices(batch_size: int, settings: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Draw one random flip, rotation, scale and translation per clip as ``affine_grid`` matrices [B, 2, 3].

    The matrices map output coordinates to input coordinates in the [-1, 1] frame that ``affine_grid`` uses.
    """
    angle = _uniform(batch_size, -settings.rotation_deg, settings.rotation_deg, generator) * (math.pi / 180)
    zoom = _uniform(batch_size, settings.scale[0], settings.scale[1], generator)
    shift = _uniform(2 * batch_size, -settings.translate, settings.translate, generator).view(batch_size, 2) * 2
    flip_x = torch.where(torch.rand(batch_size, generator=generator) < settings.hflip, -1.0, 1.0)
    flip_y = torch.where(torch.rand(batch_size, generator=generator) < settings.vflip, -1.0, 1.0)

    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(batch_size, 2, 3)
    theta[:, 0, 0] = cos * flip_x
    theta[:, 0, 1] = -sin * flip_y
    theta[:, 1, 0] = sin * flip_x
    theta[:, 1, 1] = cos * flip_y
    theta[:, :, 2] = shift
    return theta


def equalize(clips: torch.Tensor) -> torch.Tensor:
    """Equalise the histogram of each clip over its non-zero pixels, with one mapping for all its frames.

    Zero pixels (outside the ultrasound sector after masking) stay zero and are left out of the histogram,
    so the black border does not dominate the mapping.

    Args:
        clips: float [B, ...] in [0, 1].
    """
    batch_size = clips.shape[0]
    levels = (clips.reshape(batch_size, -1) * 255).round().long().clamp_(0, 255)
    counts = torch.zeros(batch_size, 256, device=clips.device)
    counts.scatter_add_(1, levels, torch.ones_like(levels, dtype=counts.dtype))
    counts[:, 0] = 0
    cdf = counts.cumsum(1)
    total = cdf[:, -1:].clamp(min=1)
    lowest = torch.where(counts > 0, cdf, total).min(1, keepdim=True).values
    mapping = ((cdf - lowest) / (total - lowest).clamp(min=1)).clamp_(0, 1)
    mapping[:, 0] = 0
    return mapping.gather(1, levels).view_as(clips)


def augment_batch(clips: torch.Tensor, settings: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Apply random photometric and geometric changes to a batch, the same for every frame of a clip.

    Random numbers come from ``generator`` (a CPU generator), so the result depends only on its state.

    Args:
        clips: float [B, 1, K, H, W] in [0, 1], on any device.

    Returns:
        A new tensor of the same shape, values in [0, 1].
    """
    batch_size, _, frames, height, width = clips.shape
    device = clips.device
    x = clips.reshape(batch_size, frames, height, width)

    if settings.equalize > 0:
        chosen = (torch.rand(batch_size, generator=generator) < settings.equalize).to(device)
        x = torch.where(chosen.view(-1, 1, 1, 1), equalize(x), x)

    if settings.brightness > 0 or settings.contrast > 0:
        gain = _uniform(batch_size, 1 - settings.contrast, 1 + settings.contrast, generator).to(device)
        offset = _uniform(batch_size, -settings.brightness, settings.brightness, generator).to(device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * gain.view(-1, 1, 1, 1) + mean + offset.view(-1, 1, 1, 1)).clamp(0, 1)

    theta = affine_matrices(batch_size, settings, generator).to(device=device, dtype=x.dtype)
    grid = F.affine_grid(theta, [batch_size, frames, height, width], align_corners=False)
    # The grid is shared by the K channels of a clip, so every frame moves the same way.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x.reshape(batch_size, 1, frames, height, width)
