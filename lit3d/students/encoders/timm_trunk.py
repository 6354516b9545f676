"""The first blocks of a timm EfficientNet-family classifier (stem + ``blocks[:n]``) as a stride-s feature encoder."""
from __future__ import annotations

import timm
import torch
from timm.layers import Conv2dSame
from torch import nn
import torch.nn.functional as F

from lit3d.students.encoders import (EncoderWeightsError, check_stride, crop_to_cells, load_state_dict_file,
                                     load_strict, pad_to_multiple)
from lit3d.students.head import normalize_image


class TimmTrunk(nn.Module):
    """``conv_stem``, ``bn1`` and the blocks of ``model`` up to the last one at ``stride`` (timm's feature_info).

    The later blocks, head and classifier are dropped (they would never see a gradient). ``mean`` / ``std``
    normalise [0, 1] RGB as the weights were trained.
    """

    def __init__(self, model: nn.Module, stride: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        info = [f for f in model.feature_info if f["module"].startswith("blocks.") and f["reduction"] == stride]
        if not info:
            raise ValueError(f"{type(model).__name__} has no blocks at stride {stride}")
        last = int(info[-1]["module"].split(".")[1])
        self.conv_stem, self.bn1 = model.conv_stem, model.bn1
        self.blocks = nn.Sequential(*model.blocks[: last + 1])
        self.out_channels, self.stride = info[-1]["num_chs"], stride
        self.mean, self.std = tuple(mean), tuple(std)
        # TF "same" padding of strided convs depends on the input size, which neither tracing nor ONNX export keep:
        # inputs padded to a multiple of the stride make every strided conv see an even size, where it is static
        self.pad_to = stride if _static_same_padding(self) else 1

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = normalize_image(img_B3HW, self.mean, self.std)
        if self.pad_to > 1:
            x = pad_to_multiple(x, self.pad_to)
        x = self.blocks(self.bn1(self.conv_stem(x)))
        return crop_to_cells(x, img_B3HW.shape, self.stride)


class StaticSameConv2d(nn.Conv2d):
    """TF "same" padding of a conv with stride s for input sizes divisible by s: (k - s) // 2 before, the rest after."""

    def __init__(self, conv: Conv2dSame):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None)
        if any(d != 1 for d in conv.dilation):
            raise ValueError("dilated same-padding convs are not supported")
        self.load_state_dict(conv.state_dict())
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        self.same_pad = ((kw - sw) // 2, kw - sw - (kw - sw) // 2, (kh - sh) // 2, kh - sh - (kh - sh) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.same_pad))


def _static_same_padding(module: nn.Module) -> bool:
    """Replace timm's dynamic Conv2dSame by StaticSameConv2d in place; whether there was any."""
    found = False
    for name, child in module.named_children():
        if isinstance(child, Conv2dSame):
            setattr(module, name, StaticSameConv2d(child))
            found = True
        else:
            found = _static_same_padding(child) or found
    return found


class MobileNetV3Encoder(TimmTrunk):
    """timm MobileNetV3 up to stride 8 or 16: random init, or timm's ImageNet state dict from ``weights_file``."""

    @classmethod
    def create(cls, model_name: str, pretrained: bool, weights_file: str, stride: int) -> "MobileNetV3Encoder":
        check_stride(model_name, stride, (8, 16))
        model = timm.create_model(model_name, pretrained=False)
        if weights_file:
            load_strict(model, load_state_dict_file(weights_file), f"student.weights_file={weights_file}")
        elif pretrained:
            raise EncoderWeightsError(
                f"encoder {model_name}: no wheel ships its ImageNet weights and the hub is unreachable; download "
                f"timm's {model_name} weights on a connected machine and pass student.weights_file=PATH, or set "
                f"student.pretrained=false")
        cfg = model.pretrained_cfg
        return cls(model, stride, cfg["mean"], cfg["std"])
