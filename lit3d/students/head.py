"""The convolutional output head shared by every student: features at 1/stride -> a point per pixel."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class ConvHead(nn.Module):
    """Upsample a (B, C, H/s, W/s) feature map to (B, 3, H, W) points.

    ``log2(stride)`` stages of x2 bilinear upsampling + 3x3 conv + LeakyReLU, halving the width each time (not
    below ``width``), then a per-pixel MLP (1x1 convs) down to 3 coordinates. With ``stride=1`` only the
    per-pixel MLP remains: the fully-connected output layers of a plain CNN.
    """

    def __init__(self, in_channels: int, stride: int, width: int = 64, hidden: int = 128):
        super().__init__()
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"ConvHead stride must be a power of two, got {stride}")
        stages = []
        c = in_channels
        for _ in range(int(math.log2(stride))):
            c_out = max(width, c // 2)
            stages += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(c, c_out, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
            c = c_out
        self.upsample = nn.Sequential(*stages)
        self.point_mlp = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(hidden, 3, 1))

    def forward(self, feat_BCHW: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        x = self.upsample(feat_BCHW)
        if x.shape[-2:] != tuple(out_size):  # inputs not divisible by the stride
            x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return self.point_mlp(x)


def normalize_image(img_B3HW: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel normalisation of [0, 1] RGB, kept inside students so exported models take raw [0, 1] images."""
    m = torch.tensor(mean, device=img_B3HW.device, dtype=img_B3HW.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=img_B3HW.device, dtype=img_B3HW.dtype).view(1, 3, 1, 1)
    return (img_B3HW - m) / s
