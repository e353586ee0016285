"""A small (2+1)D residual CNN (after Tran et al. 2018, arXiv:1711.11248) that convolves over time."""

from __future__ import annotations

import torch
from torch import nn

from echoflow.models._common import check_input, check_width, initialize_weights

# Output channels and (temporal, spatial) stride of the four residual stages at width_mult 1.
STAGES = [(16, 1, 1), (32, 1, 2), (64, 2, 2), (128, 2, 2)]


class Conv2Plus1d(nn.Sequential):
    """A 3x3x3 convolution factored into a 1x3x3 spatial and a 3x1x1 temporal convolution."""

    def __init__(self, in_channels: int, out_channels: int, temporal_stride: int = 1, spatial_stride: int = 1):
        # Middle width from the paper, so the factored pair has as many parameters as the full 3D kernel.
        middle = max(4, (in_channels * out_channels * 27) // (in_channels * 9 + 3 * out_channels))
        super().__init__(
            nn.Conv3d(in_channels, middle, (1, 3, 3), (1, spatial_stride, spatial_stride), (0, 1, 1), bias=False),
            nn.BatchNorm3d(middle),
            nn.ReLU(inplace=True),
            # Padding 1 keeps clips with a single frame valid, because the kernel then covers zero padding.
            nn.Conv3d(middle, out_channels, (3, 1, 1), (temporal_stride, 1, 1), (1, 0, 0), bias=False),
        )


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temporal_stride: int, spatial_stride: int):
        super().__init__()
        self.body = nn.Sequential(
            Conv2Plus1d(in_channels, out_channels, temporal_stride, spatial_stride),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            Conv2Plus1d(out_channels, out_channels),
            nn.BatchNorm3d(out_channels),
        )
        self.shortcut = nn.Identity()
        if in_channels != out_channels or temporal_stride != 1 or spatial_stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, (temporal_stride, spatial_stride, spatial_stride), bias=False),
                nn.BatchNorm3d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class R2Plus1d(nn.Module):
    """(2+1)D CNN with one residual block per stage; input [B, 1, K, H, W], output logits [B, num_classes].

    The stem reduces the frame size by 4 (strided 7x7 convolution, then a 3x3 max pool), the stages by 8 more,
    and the last two stages halve the time axis (a single frame stays a single frame).
    """

    def __init__(self, frames_per_clip: int, num_classes: int = 2, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        check_width(width_mult, "r2plus1d")
        self.frames_per_clip = frames_per_clip

        stem_channels = max(4, int(round(16 * width_mult)))
        self.stem = nn.Sequential(
            nn.Conv3d(1, stem_channels, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
            nn.BatchNorm3d(stem_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(stem_channels, stem_channels, (3, 1, 1), 1, (1, 0, 0), bias=False),
            nn.BatchNorm3d(stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        )

        channels = stem_channels
        blocks = []
        for out_channels, temporal_stride, spatial_stride in STAGES:
            out_channels = max(4, int(round(out_channels * width_mult)))
            blocks.append(ResidualBlock(channels, out_channels, temporal_stride, spatial_stride))
            channels = out_channels
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

        initialize_weights(self)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        check_input(clips, self.frames_per_clip, "r2plus1d")
        return self.classifier(self.pool(self.stages(self.stem(clips))).flatten(1))
