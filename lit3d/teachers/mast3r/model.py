"""The MASt3R network (``AsymmetricMASt3R``) in plain PyTorch, weight-compatible with the release.

MASt3R (Leroy et al., ECCV 2024) is DUSt3R's network (same encoder, decoders, DPT and parameter names:
:class:`~lit3d.teachers.dust3r.Dust3rNet`) with one more branch in each head: ``head_local_features``, an MLP on
the concatenated encoder and last decoder tokens, gives per-pixel matching descriptors (unit length) and their
confidence. The released ``_metric`` model predicts points in metres.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit3d.teachers.dust3r.heads import _DPT, postprocess
from lit3d.teachers.dust3r.layers import Mlp
from lit3d.teachers.dust3r.model import Dust3rNet
from lit3d.teachers.dust3r.presets import Dust3rArch, Dust3rPreset, arch_from_hub_config


@dataclass(frozen=True)
class Mast3rArch(Dust3rArch):
    """DUSt3R's architecture with MASt3R's ``catmlp+dpt`` head (defaults: the released metric model)."""

    head_types = ("catmlp+dpt",)
    head_type: str = "catmlp+dpt"
    """Only ``catmlp+dpt``: DPT for points and confidence, an MLP for descriptors."""
    desc_dim: int = 24
    """Descriptor channels per pixel (``output_mode='pts3d+desc24'``)."""
    two_confs: bool = True
    """The descriptors have their own confidence channel (else they share the points' confidence)."""
    desc_conf_min: float = 0.0
    desc_conf_max: float = math.inf
    """Descriptor confidence = desc_conf_min + exp(c), clipped at desc_conf_max (``desc_conf_mode``)."""


class CatMlpDPTHead(nn.Module):
    """Points and confidence from a DPT (as DUSt3R's), descriptors from an MLP on [encoder, last decoder] tokens,
    placed by pixel shuffle. Returns ``pts3d``, ``conf``, ``desc`` (B, H, W, desc_dim, unit norm), ``desc_conf``."""

    def __init__(self, arch: Mast3rArch):
        super().__init__()
        self.arch = arch
        self.dpt = _DPT(arch)
        width = arch.enc_embed_dim + arch.dec_embed_dim
        self.head_local_features = Mlp(width, 4 * width,  # hidden width: 4x, as released
                                       (arch.desc_dim + arch.two_confs) * arch.patch_size**2)

    def forward(self, tokens: list[Tensor], image_hw: tuple[int, int]) -> dict[str, Tensor]:
        a, p = self.arch, self.arch.patch_size
        pts_conf_B4HW = self.dpt(tokens, image_hw)
        local_BNK = self.head_local_features(torch.cat([tokens[0], tokens[-1]], dim=-1))
        local_BKhw = local_BNK.transpose(-1, -2).unflatten(-1, (image_hw[0] // p, image_hw[1] // p))
        local_BKHW = F.pixel_shuffle(local_BKhw, p)
        out = postprocess(pts_conf_B4HW, a)
        desc_BHWD = local_BKHW[:, : a.desc_dim].permute(0, 2, 3, 1)
        out["desc"] = desc_BHWD / desc_BHWD.norm(dim=-1, keepdim=True)
        if a.two_confs:
            raw_BHW = local_BKHW[:, a.desc_dim]
            out["desc_conf"] = a.desc_conf_min + raw_BHW.exp().clip(max=a.desc_conf_max - a.desc_conf_min)
        else:
            out["desc_conf"] = out["conf"].clone()
        return out


class Mast3rNet(Dust3rNet):
    """MASt3R: DUSt3R's network with :class:`CatMlpDPTHead` heads. ``forward`` returns DUSt3R's outputs plus
    ``desc`` and ``desc_conf`` for both views."""

    arch: Mast3rArch

    def make_head(self, arch: Mast3rArch) -> nn.Module:
        return CatMlpDPTHead(arch)


PRESET = Dust3rPreset("MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric", Mast3rArch(), 512, family="MASt3R",
                      metric=True)
PRESETS = {PRESET.name: PRESET}


def get_mast3r_preset(name: str) -> Dust3rPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown MASt3R preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def mast3r_arch_from_hub_config(cfg: dict[str, Any]) -> tuple[Mast3rArch, int]:
    """Architecture and resolution from the constructor kwargs of a MASt3R hub ``config.json`` (never evaluated)."""
    output_mode, head_type = str(cfg.get("output_mode", "")), cfg.get("head_type")
    if head_type != "catmlp+dpt" or not output_mode.startswith("pts3d+desc"):
        raise ValueError(f"unsupported MASt3R head_type {head_type!r} / output_mode {output_mode!r} "
                         "(only catmlp+dpt with pts3d+desc<N>)")
    if "norm" not in str(cfg.get("desc_mode", "norm")):
        raise ValueError(f"unsupported MASt3R desc_mode {cfg['desc_mode']!r} (only norm)")
    base, resolution = arch_from_hub_config({**cfg, "output_mode": "pts3d", "head_type": "dpt"})
    desc_conf = cfg.get("desc_conf_mode") or cfg.get("conf_mode", ["exp", 1, "inf"])  # official: None -> conf_mode
    if desc_conf[0] != "exp":
        raise ValueError(f"unsupported MASt3R desc_conf_mode {desc_conf!r} (only exp)")
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name != "head_type"}
    return Mast3rArch(**fields, desc_dim=int(output_mode[len("pts3d+desc"):]), two_confs=bool(cfg.get("two_confs")),
                      desc_conf_min=float(desc_conf[1]), desc_conf_max=float(desc_conf[2])), resolution
