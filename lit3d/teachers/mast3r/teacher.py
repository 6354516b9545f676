"""``mast3r`` teacher: pairwise pointmaps in metres from MASt3R (Leroy et al., ECCV 2024).

Everything but the network's head is DUSt3R's (preprocessing, batching, shared encoder passes, bf16, checkpoint
loading), so the teacher is :class:`~lit3d.teachers.dust3r.DUSt3RTeacher` with :class:`Mast3rNet`; outputs are in
camera i's frame (OpenCV axes) and, for the released ``_metric`` model, in metres (``teacher.metric``), so labels
can be anchored with known poses (``align.method=known_poses``) or global alignment without solving a scale.
"""
from __future__ import annotations

from dataclasses import dataclass

from lit3d.teachers import TEACHERS
from lit3d.teachers.dust3r.presets import Dust3rPreset
from lit3d.teachers.dust3r.teacher import DUSt3RTeacher, Dust3rTeacherConfig, load_network
from lit3d.teachers.mast3r.model import Mast3rNet, get_mast3r_preset, mast3r_arch_from_hub_config


@dataclass
class Mast3rTeacherConfig(Dust3rTeacherConfig):
    name: str = "mast3r"
    preset: str = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"
    """Released model: MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric (metric pointmaps, input long side 512)."""
    checkpoint: str = ""
    """Weights: the released .pth, a folder with model.safetensors + config.json, or a hub name (e.g.
    naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric, needs network and lit3d[hub]); '' = <preset>.pth or
    <preset>/ in $LIT3D_CHECKPOINT_DIR (default ./checkpoints)."""

    def preset_info(self) -> Dust3rPreset:
        return get_mast3r_preset(self.preset)


class Mast3rTeacher(DUSt3RTeacher):
    """MASt3R on a batch of pairs; metric when its preset is."""

    def __init__(self, cfg: Mast3rTeacherConfig, net: Mast3rNet, resolution: int, weights: dict):
        super().__init__(cfg, net, resolution, weights)
        self.metric = cfg.preset_info().metric

    def manifest(self) -> dict:
        return {**super().manifest(), "metric": self.metric}


@TEACHERS.register("mast3r", Mast3rTeacherConfig)
def build_mast3r(cfg: Mast3rTeacherConfig) -> Mast3rTeacher:
    """The network with weights (or random ones), placed on ``cfg.device`` when set."""
    teacher = Mast3rTeacher(cfg, *load_network(cfg, Mast3rNet, mast3r_arch_from_hub_config))
    return teacher.to(cfg.device) if cfg.device else teacher
