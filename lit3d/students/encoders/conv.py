"""``conv``: a small from-scratch fully convolutional encoder in the spirit of ACE's (Brachmann et al., CVPR 2023).

3x3 convs with ReLU, three of them strided (32 -> 64 -> 128 -> 256 channels, stride 8), then two residual blocks of
two 3x3 convs at 256 channels. Its receptive field is bounded (81 px, like ACE's), so a cell sees a local
patch, not the room.
"""
from __future__ import annotations

import torch
from torch import nn

from lit3d.students.encoders import check_stride, crop_to_cells, load_state_dict_file, load_strict
from lit3d.students.head import normalize_image


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class ConvEncoder(nn.Module):
    out_channels = 256
    stride = 8

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256), res_blocks: int = 2):
        super().__init__()
        layers, c = [_conv(3, channels[0])], channels[0]
        for c_out in channels[1:]:
            layers.append(_conv(c, c_out, stride=2))
            c = c_out
        self.stem = nn.Sequential(*layers)
        self.res = nn.Sequential(*(ResBlock(c) for _ in range(res_blocks)))
        self.out_channels = c
        self.stride = 2 ** (len(channels) - 1)

    @classmethod
    def create(cls, pretrained: bool, weights_file: str, stride: int) -> "ConvEncoder":
        check_stride("conv", stride, (8,))
        enc = cls()  # no packaged weights: ``pretrained`` without a weights_file means random init
        if weights_file:
            load_strict(enc, load_state_dict_file(weights_file), f"student.weights_file={weights_file}")
        return enc

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = normalize_image(img_B3HW, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        return crop_to_cells(self.res(self.stem(x)), img_B3HW.shape, self.stride)
