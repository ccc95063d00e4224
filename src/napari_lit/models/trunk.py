"""A small convolutional trunk for SAM2's image encoder.

SAM2's :class:`sam2.modeling.backbones.image_encoder.ImageEncoder` combines a *trunk*
(Hiera in the official models) with an FPN *neck*.  The trunk only has to return a list of
feature maps at strides 4, 8, 16 and 32 (highest resolution first) and to expose their
channel counts as ``channel_list`` (lowest resolution first), which is what the neck reads.

A from-scratch Hiera does not learn to track within a few CPU hours (see
``shared/FACTS.md``); a residual CNN has the locality bias that makes it learn quickly, so
the embedded ``lit-tiny`` model uses this trunk and everything else from ``sam2``.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

__all__ = ["ConvTrunk"]


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: the same in training and inference (SAM2 runs one frame at
    # a time, and BatchNorm's running statistics cost lit-tiny two thirds of its accuracy)
    return nn.GroupNorm(max(1, channels // 8), channels)


def _conv_norm(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        _norm(c_out),
        nn.ReLU(inplace=True),
    )


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv_norm(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = _norm(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.conv1(x))))


class ConvTrunk(nn.Module):
    """Residual CNN returning features at strides 4, 8, 16 and 32.

    Parameters
    ----------
    channels : sequence of 4 int
        Channels of the stride-4, 8, 16 and 32 feature maps.
    depths : sequence of 4 int
        Number of residual blocks in each stage.
    in_chans : int
        Channels of the input image (3: SAM2 feeds normalised RGB).

    Attributes
    ----------
    channel_list : list of int
        ``channels`` reversed (lowest resolution first), as
        :class:`sam2.modeling.backbones.image_encoder.FpnNeck` expects.

    Notes
    -----
    ``forward`` maps a ``(B, in_chans, H, W)`` float tensor (H, W divisible by 32) to a list
    of four tensors ``(B, channels[i], H / 2**(i+2), W / 2**(i+2))``.
    """

    def __init__(
        self,
        channels: Sequence[int] = (24, 48, 96, 192),
        depths: Sequence[int] = (1, 2, 3, 1),
        in_chans: int = 3,
    ):
        super().__init__()
        if len(channels) != 4 or len(depths) != 4:
            raise ValueError(
                f"channels and depths need 4 entries each (strides 4, 8, 16, 32); "
                f"got {list(channels)} and {list(depths)}"
            )
        channels = [int(c) for c in channels]
        self.channel_list = list(reversed(channels))
        self.stem = nn.Sequential(
            _conv_norm(in_chans, channels[0] // 2, stride=2),
            _conv_norm(channels[0] // 2, channels[0], stride=2),
        )
        stages = []
        c_prev = channels[0]
        for i, (c, d) in enumerate(zip(channels, depths)):
            layers: List[nn.Module] = []
            if i > 0:
                layers.append(_conv_norm(c_prev, c, stride=2))
            layers.extend(_BasicBlock(c) for _ in range(int(d)))
            stages.append(nn.Sequential(*layers))
            c_prev = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Features of ``x`` (B, in_chans, H, W) at strides 4, 8, 16, 32 (see class notes)."""
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs
