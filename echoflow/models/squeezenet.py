"""SqueezeNet 1.1 (Iandola et al. 2016, arXiv:1602.07360, v1.1 layout) taking the frames of a clip as channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from echoflow.models._common import check_input, check_width

# (squeeze, expand 1x1, expand 3x3) channels of the eight fire modules; None marks a 3x3 max pool.
LAYOUT = [None, (16, 64, 64), (16, 64, 64), None, (32, 128, 128), (32, 128, 128), None,
          (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]


class MaxPool(nn.MaxPool2d):
    """3x3 max pool with stride 2 that also accepts maps smaller than 3x3, as frames of 8-23 pixels produce.

    Such maps are padded with -inf up to 3x3 first, so the pool takes their maximum; larger maps are pooled
    exactly as published.
    """

    def __init__(self):
        super().__init__(3, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height < 3 or width < 3:
            x = F.pad(x, (0, max(0, 3 - width), 0, max(0, 3 - height)), value=float("-inf"))
        return super().forward(x)


class Fire(nn.Module):
    """Squeeze with 1x1 convolutions, then expand with parallel 1x1 and 3x3 convolutions."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(in_channels, squeeze, 1), nn.ReLU(inplace=True))
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, expand1x1, 1), nn.ReLU(inplace=True))
        self.expand3x3 = nn.Sequential(nn.Conv2d(squeeze, expand3x3, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1; input [B, 1, K, H, W], output logits [B, num_classes].

    ``width_mult`` scales every channel count (1.0 is the published network). The classifier is a 1x1
    convolution and global average pooling as published, but without the ReLU between them: with two
    classes that ReLU can clamp both logits to zero for every input, which stops the gradient.
    """

    def __init__(self, frames_per_clip: int, num_classes: int = 2, width_mult: float = 1.0, dropout: float = 0.5):
        super().__init__()
        check_width(width_mult, "squeezenet")
        self.frames_per_clip = frames_per_clip

        def scale(channels: int) -> int:
            return max(4, int(round(channels * width_mult)))

        channels = scale(64)
        layers: list[nn.Module] = [nn.Conv2d(frames_per_clip, channels, 3, stride=2), nn.ReLU(inplace=True)]
        for entry in LAYOUT:
            if entry is None:
                layers.append(MaxPool())
                continue
            squeeze, expand1x1, expand3x3 = (scale(c) for c in entry)
            layers.append(Fire(channels, squeeze, expand1x1, expand3x3))
            channels = expand1x1 + expand3x3
        self.features = nn.Sequential(*layers)
        self.final_conv = nn.Conv2d(channels, num_classes, 1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), self.final_conv, nn.AdaptiveAvgPool2d(1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is self.final_conv:
                    nn.init.normal_(module.weight, 0, 0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        check_input(clips, self.frames_per_clip, "squeezenet")
        return self.classifier(self.features(clips.flatten(1, 2))).flatten(1)
