"""``vanilla_cnn``: a plain stack of six 3x3 conv + ReLU layers, then the ConvHead."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lit3d.students import STUDENTS
from lit3d.students.config import StudentConfig
from lit3d.students.head import ConvHead, normalize_image


@dataclass
class VanillaCNNConfig(StudentConfig):
    name: str = "vanilla_cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 512])
    """Output channels of the conv layers (3 -> ... -> 512 in the paper)."""
    strides: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 2, 2])
    """Stride of each conv layer. All ones is the paper's network at full resolution; its 512-channel layers
    at 384x512 cost ~300 GMAC per image, so by default the deeper, wider layers run at lower resolution."""
    head_hidden: int = 128
    """Width of the per-pixel output layers."""


class VanillaCNN(nn.Module):
    def __init__(self, cfg: VanillaCNNConfig):
        super().__init__()
        if len(cfg.strides) != len(cfg.channels) or any(s not in (1, 2) for s in cfg.strides):
            raise ValueError(f"student.strides must be 1 or 2, one per layer of student.channels; got {cfg.strides}")
        layers, c = [], 3
        for c_out, stride in zip(cfg.channels, cfg.strides):
            layers.append(nn.Sequential(nn.Conv2d(c, c_out, 3, stride=stride, padding=1), nn.ReLU(inplace=True)))
            c = c_out
        self.layers = nn.ModuleList(layers)
        # the last layer at each stride feeds the head (the deepest one, and skips at finer strides)
        cum = [2 ** sum(s == 2 for s in cfg.strides[:k + 1]) for k in range(len(cfg.strides))]
        self.taps = [k for k in range(len(cum)) if k == len(cum) - 1 or cum[k + 1] != cum[k]]
        self.head = ConvHead([cfg.channels[k] for k in self.taps], [cum[k] for k in self.taps],
                             hidden=cfg.head_hidden, out_stride=cfg.head_stride, per_cell=cfg.output == "cells")

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = normalize_image(img_B3HW, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        feats = []
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k in self.taps:
                feats.append(x)
        return self.head(feats, img_B3HW.shape[-2:])


@STUDENTS.register("vanilla_cnn", VanillaCNNConfig)
def _build(cfg: VanillaCNNConfig, img_size: tuple[int, int] | None = None) -> VanillaCNN:
    return VanillaCNN(cfg)
