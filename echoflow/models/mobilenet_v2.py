"""MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381) taking the frames of a clip as input channels."""

from __future__ import annotations

import torch
from torch import nn

from echoflow.models._common import check_input, check_width, initialize_weights, make_divisible

# (expansion t, output channels c, repeats n, first stride s) from Table 2 of the paper.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand with a 1x1 convolution, filter depthwise, project linearly; add the input when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers = [] if expansion == 1 else [_conv_bn_relu6(in_channels, hidden, 1, 1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with a width multiplier; input [B, 1, K, H, W], output logits [B, num_classes]."""

    def __init__(self, frames_per_clip: int, num_classes: int = 2, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        check_width(width_mult, "mobilenet_v2")
        self.frames_per_clip = frames_per_clip
        channels = make_divisible(32 * width_mult)
        # As in the paper, the last layer keeps 1280 channels for width multipliers below 1.
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers = [_conv_bn_relu6(frames_per_clip, channels, 3, 2)]
        for expansion, out_channels, repeats, stride in SETTINGS:
            out_channels = make_divisible(out_channels * width_mult)
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out_channels, stride if index == 0 else 1, expansion))
                channels = out_channels
        layers.append(_conv_bn_relu6(channels, last_channels, 1, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        initialize_weights(self)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        check_input(clips, self.frames_per_clip, "mobilenet_v2")
        features = self.features(clips.flatten(1, 2))
        return self.classifier(self.pool(features).flatten(1))
