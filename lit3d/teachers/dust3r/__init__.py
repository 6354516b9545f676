"""DUSt3R teacher: the network in plain PyTorch (weight-compatible with the releases), safe checkpoint loading,
the official preprocessing, and the ``dust3r`` teacher registration. See README.md in this folder."""
from lit3d.teachers.dust3r.checkpoint import CheckpointError, load_into, read_checkpoint
from lit3d.teachers.dust3r.model import Dust3rNet
from lit3d.teachers.dust3r.preprocess import (dust3r_frame_transform, grid_to_source, load_image, normalize,
                                             source_to_grid)
from lit3d.teachers.dust3r.presets import PRESETS, Dust3rArch, Dust3rPreset, arch_from_hub_config, get_preset
from lit3d.teachers.dust3r.teacher import DUSt3RTeacher, Dust3rTeacherConfig, build_dust3r

__all__ = [
    "PRESETS", "CheckpointError", "DUSt3RTeacher", "Dust3rArch", "Dust3rNet", "Dust3rPreset", "Dust3rTeacherConfig",
    "arch_from_hub_config", "build_dust3r", "dust3r_frame_transform", "get_preset", "grid_to_source", "load_image",
    "load_into", "normalize", "read_checkpoint", "source_to_grid",
]
