"""``mobilenetv3``: timm MobileNetV3 features (optionally ImageNet-pretrained, optionally frozen) + ConvHead."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import timm
import torch
from torch import nn

from lit3d.students import STUDENTS
from lit3d.students.config import StudentConfig
from lit3d.students.head import ConvHead, normalize_image

log = logging.getLogger(__name__)


@dataclass
class MobileNetV3Config(StudentConfig):
    name: str = "mobilenetv3"
    default_lr: ClassVar[float] = 5e-3  # 150 epochs reach 2e-3's error after ~250; 1e-2 diverged
    model_name: str = "mobilenetv3_small_100"
    """timm model name of the backbone (e.g. mobilenetv3_small_100, mobilenetv3_large_100)."""
    pretrained: bool = False
    """Start from ImageNet weights (timm hub name, or ``pretrained_file``)."""
    pretrained_file: str = ""
    """Local weights file (.safetensors / .pth / .bin) for ``pretrained``; needed where the hub is unreachable."""
    freeze_backbone: bool = False
    """Keep the backbone's weights (and BatchNorm statistics) fixed; only the head trains."""
    feature_levels: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Feature maps fed to the head (0..4 = stride 2, 4, 8, 16, 32): the deepest gives context, finer ones
    detail through skip connections. Blocks after the deepest are dropped."""
    head_width: int = 32
    """Channel width of the head at full resolution (twice that at coarser strides)."""
    squeeze_excite: bool = True
    """Keep the backbone's squeeze-and-excitation gates, which scale every channel by a statistic of the WHOLE
    image; false removes them, so each output sees the image through convolutions only (a 735 px field: still the
    whole image at the usual inputs, but with no whole-image average). Removing them did not localize more held-out
    frames (README, kitchen block 300-399)."""


class MobileNetV3Student(nn.Module):
    def __init__(self, cfg: MobileNetV3Config):
        super().__init__()
        self.cfg = cfg
        self.backbone = _drop_unused_blocks(_create_backbone(cfg))
        if not cfg.squeeze_excite:
            _remove_squeeze_excite(self.backbone)
        info = self.backbone.feature_info
        self.head = ConvHead(info.channels(), info.reduction(), width=cfg.head_width,
                             out_stride=cfg.head_stride, per_cell=cfg.output == "cells")
        self.mean, self.std = self.backbone.pretrained_cfg.get("mean"), self.backbone.pretrained_cfg.get("std")
        if cfg.freeze_backbone:
            self.backbone.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "MobileNetV3Student":
        super().train(mode)
        if self.cfg.freeze_backbone:  # frozen means frozen BatchNorm statistics too
            self.backbone.eval()
        return self

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        # Lightning restores modes module by module around validation (and does not call train() at the start),
        # which would put a frozen backbone's BatchNorm back into training mode: its statistics would drift
        if self.cfg.freeze_backbone and any(m.training for m in self.backbone.modules()):
            self.backbone.eval()
        feats = self.backbone(normalize_image(img_B3HW, self.mean, self.std))
        return self.head(feats, img_B3HW.shape[-2:])


def _create_backbone(cfg: MobileNetV3Config) -> nn.Module:
    kwargs = dict(features_only=True, out_indices=tuple(sorted(cfg.feature_levels)))
    if not cfg.pretrained:
        return timm.create_model(cfg.model_name, pretrained=False, **kwargs)
    if cfg.pretrained_file:
        if not Path(cfg.pretrained_file).is_file():
            raise FileNotFoundError(f"student.pretrained_file: {cfg.pretrained_file} not found")
        return timm.create_model(cfg.model_name, pretrained=True,
                                 pretrained_cfg_overlay=dict(file=cfg.pretrained_file), **kwargs)
    try:
        return timm.create_model(cfg.model_name, pretrained=True, **kwargs)
    except Exception as e:  # offline, hub unreachable, gated weights
        raise RuntimeError(
            f"student.pretrained=true: cannot fetch ImageNet weights for {cfg.model_name} "
            f"({type(e).__name__}); download the timm weights file on a connected machine and pass "
            f"student.pretrained_file=PATH, or set student.pretrained=false"
        ) from None


def _remove_squeeze_excite(backbone: nn.Module) -> None:
    """Replace every block's ``se`` gate by the identity (timm's own placeholder where a block has none)."""
    for block in backbone.modules():
        if isinstance(getattr(block, "se", None), nn.Module):
            block.se = nn.Identity()


def _drop_unused_blocks(backbone: nn.Module) -> nn.Module:
    """timm keeps the blocks after the last requested feature; they would never see a gradient (and break DDP)."""
    last = max(getattr(backbone, "_stage_out_idx", {0}))
    if getattr(backbone, "feature_hooks", None) is None and hasattr(backbone, "blocks"):
        backbone.blocks = backbone.blocks[:last]
    return backbone


@STUDENTS.register("mobilenetv3", MobileNetV3Config)
def _build(cfg: MobileNetV3Config, img_size: tuple[int, int] | None = None) -> MobileNetV3Student:
    return MobileNetV3Student(cfg)
