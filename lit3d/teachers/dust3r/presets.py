"""DUSt3R architectures: the released presets and the hub ``config.json`` format.

An :class:`Dust3rArch` holds every constructor argument that changes the parameter names or shapes or the
computation of ``AsymmetricCroCo3DStereo``; widths are channels, ``patch_size`` is pixels.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dust3rArch:
    """DUSt3R network hyperparameters (defaults: ViT-Large encoder, ViT-Base decoders, DPT head)."""

    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    head_type: str = "dpt"
    """``dpt`` or ``linear``."""
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128
    dpt_layer_dims: tuple[int, ...] = (96, 192, 384, 768)
    depth_mode: str = "exp"
    """Point activation: ``exp`` (r/|r| * expm1|r|), ``square`` or ``linear``; unbounded as released."""
    conf_min: float = 1.0
    conf_max: float = math.inf
    """Confidence = conf_min + exp(c), clipped at conf_max (conf_mode ``('exp', 1, inf)``)."""

    head_types = ("dpt", "linear")  # heads this family builds (not a field; MASt3R's subclass has its own)

    def __post_init__(self) -> None:
        if self.head_type not in self.head_types:
            raise ValueError(f"{type(self).__name__} head_type must be one of {', '.join(self.head_types)}, "
                             f"got {self.head_type!r}")
        if self.depth_mode not in ("exp", "square", "linear"):
            raise ValueError(f"DUSt3R depth_mode must be exp, square or linear, got {self.depth_mode!r}")
        for dim, heads, what in ((self.enc_embed_dim, self.enc_num_heads, "encoder"),
                                 (self.dec_embed_dim, self.dec_num_heads, "decoder")):
            # RoPE2D splits each head into a y half and an x half, each rotated in pairs
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"DUSt3R {what} dim {dim} / {heads} heads must give a head dim divisible by 4")
        if "dpt" in self.head_type and (self.dec_depth < 4 or len(self.dpt_layer_dims) != 4):
            raise ValueError("the DPT head needs dec_depth >= 4 and 4 dpt_layer_dims")

    @property
    def dpt_hooks(self) -> tuple[int, int, int, int]:
        """Indices into [encoder output, decoder block 1..L outputs] that feed the DPT head."""
        depth = self.dec_depth
        return 0, depth * 2 // 4, depth * 3 // 4, depth

    def replace(self, **changes: Any) -> "Dust3rArch":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Dust3rPreset:
    """A released model: its architecture, input resolution (pixels) and where its weights are published."""

    name: str
    arch: Dust3rArch
    resolution: int
    """512: long side 512, crop to multiples of 16; 224: short side 224, centre crop 224x224."""
    family: str = "DUSt3R"
    """``DUSt3R`` or ``MASt3R``: the teacher that runs it and the folder of the release server."""
    metric: bool = False
    """Whether the released weights predict metres (MASt3R's ``_metric`` models)."""

    @property
    def url(self) -> str:
        return f"https://download.europe.naverlabs.com/ComputerVision/{self.family}/{self.name}.pth"

    @property
    def hub_name(self) -> str:
        return f"naver/{self.name}"


_LINEAR = Dust3rArch(head_type="linear")
PRESETS: dict[str, Dust3rPreset] = {
    p.name: p
    for p in (
        Dust3rPreset("DUSt3R_ViTLarge_BaseDecoder_512_dpt", Dust3rArch(), 512),
        Dust3rPreset("DUSt3R_ViTLarge_BaseDecoder_512_linear", _LINEAR, 512),
        Dust3rPreset("DUSt3R_ViTLarge_BaseDecoder_224_linear", _LINEAR, 224),
    )
}


def get_preset(name: str) -> Dust3rPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown DUSt3R preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def _float(value: Any) -> float:
    # config.json may spell infinities as strings ("inf") or as JSON extensions (Infinity)
    return float(value)


def arch_from_hub_config(cfg: dict[str, Any]) -> tuple[Dust3rArch, int]:
    """Architecture and resolution from the constructor kwargs of a hub ``config.json`` (never evaluated)."""
    if cfg.get("output_mode", "pts3d") != "pts3d":
        raise ValueError(f"unsupported DUSt3R output_mode {cfg['output_mode']!r} (only pts3d)")
    pos_embed = str(cfg.get("pos_embed", "RoPE100"))
    if not pos_embed.startswith("RoPE"):
        raise ValueError(f"unsupported DUSt3R pos_embed {pos_embed!r} (only RoPE<base>)")
    depth_mode = cfg.get("depth_mode", ["exp", "-inf", "inf"])
    conf_mode = cfg.get("conf_mode", ["exp", 1, "inf"])
    if not (math.isinf(_float(depth_mode[1])) and math.isinf(_float(depth_mode[2]))):
        raise ValueError(f"unsupported bounded DUSt3R depth_mode {depth_mode!r}")
    if conf_mode[0] != "exp":
        raise ValueError(f"unsupported DUSt3R conf_mode {conf_mode!r} (only exp)")
    img_size = cfg.get("img_size", 224)
    img_size = max(img_size) if isinstance(img_size, (list, tuple)) else int(img_size)
    kwargs: dict[str, Any] = {
        k: cfg[k] for k in ("patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim",
                            "dec_depth", "dec_num_heads", "mlp_ratio", "head_type") if k in cfg
    }
    widths = cfg.get("dpt_widths") or {}
    if "feature_dim" in widths:
        kwargs["dpt_feature_dim"] = int(widths["feature_dim"])
        kwargs["dpt_last_dim"] = int(widths.get("last_dim", widths["feature_dim"] // 2))
    if "layer_dims" in widths:
        kwargs["dpt_layer_dims"] = tuple(int(d) for d in widths["layer_dims"])
    arch = Dust3rArch(rope_base=float(pos_embed[4:]), depth_mode=str(depth_mode[0]), conf_min=_float(conf_mode[1]),
                      conf_max=_float(conf_mode[2]), **kwargs)
    return arch, img_size
