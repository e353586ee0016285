"""MobileNetV1 (Howard et al. 2017, arXiv:1704.04861) taking the frames of a clip as input channels."""

from __future__ import annotations

import torch
from torch import nn

from echoflow.models._common import check_input, check_width, initialize_weights, make_divisible

# (output channels, stride) of the depthwise-separable blocks after the stem, from Table 1 of the paper.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 with a width multiplier; input [B, 1, K, H, W], output logits [B, num_classes].

    The K frames of a clip are stacked as the K input channels of the first convolution, so only that layer
    combines information across frames.
    """

    def __init__(self, frames_per_clip: int, num_classes: int = 2, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        check_width(width_mult, "mobilenet_v1")
        self.frames_per_clip = frames_per_clip
        channels = make_divisible(32 * width_mult)
        layers = [_conv_bn_relu(frames_per_clip, channels, 3, 2)]
        for out_channels, stride in BLOCKS:
            out_channels = make_divisible(out_channels * width_mult)
            layers.append(_conv_bn_relu(channels, channels, 3, stride, groups=channels))
            layers.append(_conv_bn_relu(channels, out_channels, 1, 1))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
        initialize_weights(self)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        check_input(clips, self.frames_per_clip, "mobilenet_v1")
        features = self.features(clips.flatten(1, 2))
        return self.classifier(self.pool(features).flatten(1))

