"""The convolutional output head shared by every student: feature maps -> a point per pixel."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F


class ConvHead(nn.Module):
    """Decode feature maps at strides ``strides`` (e.g. 2, 4, ..., 32) to (B, 3, H, W) points.

    From the coarsest map (projected by a 1x1 conv), stages of x2 bilinear upsampling + 3x3 conv + LeakyReLU
    down to ``out_stride``; where a finer input map exists at a stage's stride it is added through a 1x1
    projection (a skip connection: global context plus fine detail). Inputs finer than ``out_stride`` are
    ignored. A per-pixel MLP (1x1 convs) then gives ``out_stride**2`` points per cell, rearranged into full
    resolution (sub-pixel convolution): each pixel keeps its own output, so depth edges stay sharp, while the
    3x3 convs run on ``out_stride**2`` times fewer pixels, which is most of a student's cost at full resolution.
    With one input at stride 1 only the per-pixel MLP remains: the fully-connected output layers of a plain CNN.
    With ``per_cell`` the MLP gives one point per cell instead, interpolated between cell centres
    (:func:`cells_to_pixels`).
    """

    def __init__(self, in_channels: int | Sequence[int], strides: int | Sequence[int], width: int = 32,
                 hidden: int = 128, out_stride: int = 1, per_cell: bool = False):
        super().__init__()
        in_channels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        strides = [strides] if isinstance(strides, int) else list(strides)
        if len(in_channels) != len(strides) or any(s < 1 or s & (s - 1) for s in strides) or strides != sorted(strides):
            raise ValueError(f"ConvHead needs increasing power-of-two strides, one per input; got {strides}")
        if out_stride < 1 or out_stride & (out_stride - 1):
            raise ValueError(f"ConvHead out_stride must be a power of two; got {out_stride}")
        self.out_stride = out_stride = min(out_stride, strides[-1])
        used = [(c, s) for c, s in zip(in_channels, strides) if s >= out_stride]
        self.strides = [s for _, s in used]

        def stage_width(stride: int) -> int:
            return width * min(stride, 2)

        top = self.strides[-1]
        # 1x1 projections: skips to their stage's width, the coarsest map to the first stage's (cheap 3x3s after)
        self.lateral = nn.ModuleDict({str(s): nn.Conv2d(c, stage_width(s), 1) for c, s in used})
        stages, c = [], stage_width(top)
        for k in range(int(math.log2(top // out_stride))):
            s = top >> (k + 1)
            stages.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                        nn.Conv2d(c, stage_width(s), 3, padding=1), nn.LeakyReLU(0.1, inplace=True)))
            c = stage_width(s)
        self.stages = nn.ModuleList(stages)
        self.per_cell = per_cell
        mlp = [nn.Conv2d(c, hidden, 1), nn.LeakyReLU(0.1, inplace=True)]  # made first: the paper's runs' init order
        mlp += [nn.Conv2d(hidden, 3, 1)] if per_cell else [nn.Conv2d(hidden, 3 * out_stride**2, 1),
                                                           nn.PixelShuffle(out_stride)]
        self.point_mlp = nn.Sequential(*mlp)

    def forward(self, feats: torch.Tensor | Sequence[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        feats = [feats] if isinstance(feats, torch.Tensor) else list(feats)
        by_stride = dict(zip(self.strides, feats[len(feats) - len(self.strides):]))
        s = self.strides[-1]
        x = self.lateral[str(s)](by_stride[s])
        for stage in self.stages:
            x = stage(x)
            s //= 2
            if s in by_stride:
                skip = by_stride[s]
                if skip.shape[-2:] != x.shape[-2:]:  # inputs not divisible by the stride
                    x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                x = x + self.lateral[str(s)](skip)
        pts = self.point_mlp(x)
        if self.per_cell:
            pts = cells_to_pixels(pts, self.out_stride)
        H, W = out_size
        if pts.shape[-2] >= H and pts.shape[-1] >= W:  # strided maps of padded inputs cover the image and more
            return pts[..., :H, :W]
        return F.interpolate(pts, size=(H, W), mode="bilinear", align_corners=False)


def cells_to_pixels(pts_B3hw: torch.Tensor, stride: int) -> torch.Tensor:
    """One point per stride-``stride`` cell, taken as the point seen at the cell's centre, to one per pixel:
    (B, 3, h, w) -> (B, 3, h * stride, w * stride), bilinear between cell centres, clamped at the border cells."""
    # align_corners=False puts cell (i, j)'s value at pixel (s * i + (s - 1) / 2, s * j + (s - 1) / 2)
    return F.interpolate(pts_B3hw, scale_factor=stride, mode="bilinear", align_corners=False)


def normalize_image(img_B3HW: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel normalisation of [0, 1] RGB, kept inside students so exported models take raw [0, 1] images."""
    m = torch.tensor(mean, device=img_B3HW.device, dtype=img_B3HW.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=img_B3HW.device, dtype=img_B3HW.dtype).view(1, 3, 1, 1)
    return (img_B3HW - m) / s
