"""``vanilla_cnn``: six 3x3 conv + ReLU layers at full resolution, then per-pixel fully-connected layers."""
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
    """Output channels of the six conv layers (3 -> ... -> 512 in the paper)."""
    head_hidden: int = 128
    """Width of the per-pixel output layers."""


class VanillaCNN(nn.Module):
    def __init__(self, cfg: VanillaCNNConfig):
        super().__init__()
        layers, c = [], 3
        for c_out in cfg.channels:
            layers += [nn.Conv2d(c, c_out, 3, padding=1), nn.ReLU(inplace=True)]
            c = c_out
        self.features = nn.Sequential(*layers)
        self.head = ConvHead(c, 1, hidden=cfg.head_hidden)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = normalize_image(img_B3HW, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        return self.head(self.features(x), img_B3HW.shape[-2:])


@STUDENTS.register("vanilla_cnn", VanillaCNNConfig)
def _build(cfg: VanillaCNNConfig, img_size: tuple[int, int] | None = None) -> VanillaCNN:
    return VanillaCNN(cfg)
