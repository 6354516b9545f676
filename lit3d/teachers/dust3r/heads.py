"""DUSt3R prediction heads: tokens -> per-pixel (x, y, z, c) -> points and confidences.

Both heads return ``{"pts3d": (B, H, W, 3), "conf": (B, H, W)}`` in the frame of the pair's first camera
(arbitrary scale). Module names match the released checkpoints (``proj``; ``dpt.scratch``, ``dpt.head``, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit3d.teachers.dust3r.presets import Dust3rArch


def postprocess(out_B4HW: Tensor, arch: Dust3rArch) -> dict[str, Tensor]:
    """Raw head output -> points (depth mode) and confidence (conf_min + exp(c), clipped)."""
    fmap_BHW4 = out_B4HW.permute(0, 2, 3, 1)
    xyz_BHW3 = fmap_BHW4[..., :3]
    if arch.depth_mode != "linear":
        dist_BHW1 = xyz_BHW3.norm(dim=-1, keepdim=True)
        unit_BHW3 = xyz_BHW3 / dist_BHW1.clip(min=1e-8)
        xyz_BHW3 = unit_BHW3 * (torch.expm1(dist_BHW1) if arch.depth_mode == "exp" else dist_BHW1.square())
    conf_BHW = arch.conf_min + fmap_BHW4[..., 3].exp().clip(max=arch.conf_max - arch.conf_min)
    return {"pts3d": xyz_BHW3, "conf": conf_BHW}


class LinearHead(nn.Module):
    """Each decoder token -> p x p pixels x 4 channels, placed by pixel shuffle."""

    def __init__(self, arch: Dust3rArch):
        super().__init__()
        self.arch = arch
        self.proj = nn.Linear(arch.dec_embed_dim, 4 * arch.patch_size**2)

    def forward(self, tokens: list[Tensor], image_hw: tuple[int, int]) -> dict[str, Tensor]:
        last_BNC = tokens[-1]
        p = self.arch.patch_size
        feat_BKN = self.proj(last_BNC).transpose(-1, -2)
        feat_BKhw = feat_BKN.reshape(last_BNC.shape[0], -1, image_hw[0] // p, image_hw[1] // p)
        return postprocess(F.pixel_shuffle(feat_BKhw, p), self.arch)


class _ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _FusionBlock(nn.Module):
    """Add the skip (through a residual unit), refine, upsample x2 (bilinear, corners aligned), 1x1 conv."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    """DPT's projections to the feature width and fusion blocks.

    ``layer_rn`` is a list view of ``layer{1..4}_rn`` (the same modules), so the state dict holds both names,
    as the released checkpoints do.
    """

    def __init__(self, layer_dims: tuple[int, ...], features: int):
        super().__init__()
        for i, dim in enumerate(layer_dims):
            setattr(self, f"layer{i + 1}_rn", nn.Conv2d(dim, features, 3, padding=1, bias=False))
        self.layer_rn = nn.ModuleList([getattr(self, f"layer{i + 1}_rn") for i in range(len(layer_dims))])
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", _FusionBlock(features))


class _Upsample(nn.Module):
    """Parameter-free x2 bilinear upsampling (a slot of ``dpt.head``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _DPT(nn.Module):
    """DPT adapter: 4 token maps at patch grid -> (B, 4, H, W)."""

    def __init__(self, arch: Dust3rArch):
        super().__init__()
        self.hooks = arch.dpt_hooks
        enc, dec, feat, last = arch.enc_embed_dim, arch.dec_embed_dim, arch.dpt_feature_dim, arch.dpt_last_dim
        l0, l1, l2, l3 = arch.dpt_layer_dims
        # token maps reach strides p/4, p/2, p, 2p before fusion
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(enc, l0, 1), nn.ConvTranspose2d(l0, l0, 4, stride=4)),
            nn.Sequential(nn.Conv2d(dec, l1, 1), nn.ConvTranspose2d(l1, l1, 2, stride=2)),
            nn.Sequential(nn.Conv2d(dec, l2, 1)),
            nn.Sequential(nn.Conv2d(dec, l3, 1), nn.Conv2d(l3, l3, 3, stride=2, padding=1)),
        ])
        self.scratch = _Scratch(arch.dpt_layer_dims, feat)
        self.head = nn.Sequential(
            nn.Conv2d(feat, feat // 2, 3, padding=1), _Upsample(),
            nn.Conv2d(feat // 2, last, 3, padding=1), nn.ReLU(), nn.Conv2d(last, 4, 1),
        )
        self.patch_size = arch.patch_size

    def forward(self, tokens: list[Tensor], image_hw: tuple[int, int]) -> Tensor:
        gh, gw = image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
        maps = [tokens[h].transpose(-1, -2).unflatten(-1, (gh, gw)) for h in self.hooks]
        maps = [rn(post(m)) for m, post, rn in zip(maps, self.act_postprocess, self.scratch.layer_rn)]
        s = self.scratch
        # the stride-2 conv rounds odd grids up; crop back to the stride-p map before fusing
        path = s.refinenet4(maps[3])[:, :, : maps[2].shape[2], : maps[2].shape[3]]
        path = s.refinenet3(path, maps[2])
        path = s.refinenet2(path, maps[1])
        path = s.refinenet1(path, maps[0])
        return self.head(path)


class DPTHead(nn.Module):
    """DPT head on [encoder output, decoder outputs 1..L] at hooks [0, L/2, 3L/4, L]."""

    def __init__(self, arch: Dust3rArch):
        super().__init__()
        self.arch = arch
        self.dpt = _DPT(arch)

    def forward(self, tokens: list[Tensor], image_hw: tuple[int, int]) -> dict[str, Tensor]:
        return postprocess(self.dpt(tokens, image_hw), self.arch)


def make_head(arch: Dust3rArch) -> nn.Module:
    return DPTHead(arch) if arch.head_type == "dpt" else LinearHead(arch)
