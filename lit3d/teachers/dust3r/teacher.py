"""``dust3r`` teacher: pairwise pointmaps from the DUSt3R network (Wang et al., CVPR 2024).

Outputs are in camera i's frame (OpenCV axes) at an arbitrary, non-metric scale; frames are mapped onto the
network's grid by DUSt3R's official preprocessing (:meth:`DUSt3RTeacher.frame_transform`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import Tensor

from lit3d.teachers import TEACHERS
from lit3d.teachers.base import FrameTransform, Teacher
from lit3d.teachers.config import TeacherConfig
from lit3d.teachers.dust3r.checkpoint import load_into, read_checkpoint
from lit3d.teachers.dust3r.model import Dust3rNet
from lit3d.teachers.dust3r.preprocess import dust3r_frame_transform, normalize
from lit3d.teachers.dust3r.presets import Dust3rArch, Dust3rPreset, arch_from_hub_config, get_preset

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


@dataclass
class Dust3rTeacherConfig(TeacherConfig):
    name: str = "dust3r"
    preset: str = "DUSt3R_ViTLarge_BaseDecoder_512_dpt"
    """Released model: DUSt3R_ViTLarge_BaseDecoder_{512_dpt, 512_linear, 224_linear}."""
    checkpoint: str = ""
    """Weights: a .pth release file, a folder with model.safetensors + config.json, or a hub name (e.g.
    naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt, needs network and lit3d[hub]); '' = <preset>.pth or <preset>/ in
    $LIT3D_CHECKPOINT_DIR (default ./checkpoints)."""
    sha256: str = ""
    """Expected SHA-256 of the weights file ('' = accept any; the hash is recorded in the label manifest)."""
    random_init: bool = False
    """Random weights instead of a checkpoint: for tests and benchmarks only (recorded in the manifest)."""
    resolution: int = 0
    """Network input: 512 (long side 512, crop to multiples of 16) or 224 (224x224 centre crop); 0 = preset's."""
    amp: str = "bf16"
    """Autocast dtype on GPU: bf16, fp16 or none (CPU always runs fp32; the heads always run fp32)."""
    device: str = ""
    """Device to move the network to when built (e.g. cuda:0); '' = leave placement to the caller (Lightning)."""
    share_encoder: bool = True
    """Encode each distinct image of a batch (by idx_i / idx_j) once; off = one encoder pass per pair side."""
    enc_embed_dim: int = 0
    """Architecture override (0 / empty = preset's; a checkpoint's config.json wins): encoder width, channels."""
    enc_depth: int = 0
    """Architecture override: encoder blocks."""
    enc_num_heads: int = 0
    """Architecture override: encoder attention heads."""
    dec_embed_dim: int = 0
    """Architecture override: decoder width, channels."""
    dec_depth: int = 0
    """Architecture override: blocks per decoder."""
    dec_num_heads: int = 0
    """Architecture override: decoder attention heads."""
    patch_size: int = 0
    """Architecture override: patch size, pixels."""
    head_type: str = ""
    """Architecture override: dpt or linear."""
    dpt_feature_dim: int = 0
    """Architecture override: DPT fusion width, channels."""
    dpt_last_dim: int = 0
    """Architecture override: DPT last conv width, channels."""
    dpt_layer_dims: list[int] = field(default_factory=list)
    """Architecture override: DPT widths of the 4 tapped layers, channels."""

    def arch(self) -> Dust3rArch:
        """The preset's architecture with the non-default overrides applied."""
        names = ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads",
                 "patch_size", "head_type", "dpt_feature_dim", "dpt_last_dim")
        changes = {n: getattr(self, n) for n in names if getattr(self, n)}
        if self.dpt_layer_dims:
            changes["dpt_layer_dims"] = tuple(self.dpt_layer_dims)
        return self.preset_info().arch.replace(**changes)

    def preset_info(self) -> Dust3rPreset:
        """The released model ``preset`` names."""
        return get_preset(self.preset)


def first_occurrence(ids_N: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the first occurrence of each distinct id, and each entry's position among the distinct ids."""
    uniq, inverse_N = torch.unique(ids_N, return_inverse=True)
    order_N = torch.arange(len(ids_N), device=ids_N.device)
    first_U = torch.full((len(uniq),), len(ids_N), device=ids_N.device).scatter_reduce(0, inverse_N, order_N, "amin")
    return first_U, inverse_N


class DUSt3RTeacher(Teacher):
    """DUSt3R on a batch of pairs (see :mod:`lit3d.teachers.base` for the keys)."""

    def __init__(self, cfg: Dust3rTeacherConfig, net: Dust3rNet, resolution: int, weights: dict):
        super().__init__()
        self.cfg = cfg
        self.net = net.eval().requires_grad_(False)
        self.resolution = resolution
        self._weights = weights
        if cfg.amp not in AMP_DTYPES:
            raise ValueError(f"teacher.amp must be one of {', '.join(AMP_DTYPES)}, got {cfg.amp!r}")

    def frame_transform(self, height: int, width: int) -> FrameTransform:
        return dust3r_frame_transform(height, width, self.resolution, self.net.arch.patch_size)

    def manifest(self) -> dict:
        # plain-JSON values: lists for tuples, strings for infinities (JSON has no inf)
        arch = {k: list(v) if isinstance(v, tuple) else str(v) if v in (math.inf, -math.inf) else v
                for k, v in asdict(self.net.arch).items()}
        return {"name": self.cfg.name, "preset": self.cfg.preset, "arch": arch, "resolution": self.resolution,
                "amp": self.cfg.amp, **self._weights}

    def encode_pairs(self, img_i: Tensor, img_j: Tensor, idx_i: Tensor | None, idx_j: Tensor | None
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encoder tokens and positions of both sides; each distinct image is encoded once when ids are given."""
        B = img_i.shape[0]
        imgs = torch.cat([img_i, img_j])
        if self.cfg.share_encoder and idx_i is not None and idx_j is not None:
            first_U, inverse_2B = first_occurrence(torch.cat([idx_i, idx_j]).to(imgs.device))
            feat_U, pos_U = self.net.encode(imgs[first_U])
            feat, pos = feat_U[inverse_2B], pos_U[inverse_2B]
        else:
            feat, pos = self.net.encode(imgs)
        return feat[:B], pos[:B], feat[B:], pos[B:]

    @torch.no_grad()
    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        device = self.net.patch_embed.proj.weight.device
        img_i = normalize(batch["img_i"].to(device, torch.float32))
        img_j = normalize(batch["img_j"].to(device, torch.float32))
        if img_i.shape != img_j.shape:
            raise ValueError(f"img_i {tuple(img_i.shape)} and img_j {tuple(img_j.shape)} must have equal shapes")
        amp = AMP_DTYPES[self.cfg.amp] if device.type == "cuda" else None
        with torch.autocast(device_type=device.type, dtype=amp, enabled=amp is not None):
            feat_i, pos_i, feat_j, pos_j = self.encode_pairs(img_i, img_j, batch.get("idx_i"), batch.get("idx_j"))
            pred_i, pred_j = self.net.forward_features(feat_i, pos_i, feat_j, pos_j, tuple(img_i.shape[-2:]))
        valid_BHW = torch.ones_like(pred_i["conf"], dtype=torch.bool)
        return {"pts_i": pred_i["pts3d"], "pts_j_in_i": pred_j["pts3d_in_other_view"], "conf_i": pred_i["conf"],
                "conf_j": pred_j["conf"], "valid_i": valid_BHW, "valid_j": valid_BHW.clone()}

    def fit_batch_size(self, height: int, width: int, start: int = 64) -> int:
        """Pairs per forward: ``cfg.batch_size`` if set, else the largest power of two (<= start) that runs.

        On CUDA a symmetrised random batch is tried and halved on out-of-memory; on CPU the answer is 4, since
        throughput there does not grow with the batch.
        """
        if self.cfg.batch_size > 0:
            return self.cfg.batch_size
        device = self.net.patch_embed.proj.weight.device
        if device.type != "cuda":
            return 4
        size = start
        while size > 1:
            ids = torch.arange(size, device=device)
            probe = {"img_i": torch.rand(size, 3, height, width, device=device), "idx_i": ids, "idx_j": ids ^ 1}
            probe["img_j"] = probe["img_i"][ids ^ 1]
            try:
                self(probe)
                break
            except torch.cuda.OutOfMemoryError:
                size //= 2
            finally:
                probe.clear()
                torch.cuda.empty_cache()
        log.info("dust3r: batch size %d fits %dx%d on %s", size, height, width, device)
        return size


def load_network(cfg: Dust3rTeacherConfig, net_cls: type[Dust3rNet] = Dust3rNet,
                 arch_from_config: Callable[[dict], tuple[Dust3rArch, int]] = arch_from_hub_config
                 ) -> tuple[Dust3rNet, int, dict]:
    """The network of ``cfg`` with its weights (or random ones), its input resolution and the weights' record."""
    preset = cfg.preset_info()
    resolution = cfg.resolution or preset.resolution
    if cfg.random_init:
        log.warning("%s: random weights (teacher.random_init=true): for tests and benchmarks only", cfg.name)
        net = net_cls(cfg.arch()).init_weights()
        return net, resolution, {"checkpoint": None, "checkpoint_sha256": None, "random_init": True}
    ckpt = read_checkpoint(cfg.checkpoint, preset, cfg.sha256)
    arch = cfg.arch()
    if ckpt.config is not None:  # the file's own config.json describes its weights
        arch, file_resolution = arch_from_config(ckpt.config)
        resolution = cfg.resolution or file_resolution
    with torch.device("meta"):  # no second 2.3 GB copy: the loaded tensors become the parameters
        net = net_cls(arch)
    load_into(net, ckpt.state_dict, f"{ckpt.path} (teacher.preset={cfg.preset})")
    log.info("%s: loaded %s (sha256 %s)", cfg.name, ckpt.path, ckpt.sha256)
    return net, resolution, {"checkpoint": str(ckpt.path), "checkpoint_sha256": ckpt.sha256, "random_init": False}


@TEACHERS.register("dust3r", Dust3rTeacherConfig)
def build_dust3r(cfg: Dust3rTeacherConfig) -> DUSt3RTeacher:
    """The network with weights (or random ones), placed on ``cfg.device`` when set."""
    teacher = DUSt3RTeacher(cfg, *load_network(cfg))
    return teacher.to(cfg.device) if cfg.device else teacher
