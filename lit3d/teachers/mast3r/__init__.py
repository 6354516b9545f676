"""MASt3R teacher: DUSt3R's network with MASt3R's descriptor head, weight-compatible with the metric release, and
the ``mast3r`` teacher registration. See README.md in this folder."""
from lit3d.teachers.mast3r.model import (PRESETS, CatMlpDPTHead, Mast3rArch, Mast3rNet, get_mast3r_preset,
                                         mast3r_arch_from_hub_config)
from lit3d.teachers.mast3r.teacher import Mast3rTeacher, Mast3rTeacherConfig, build_mast3r

__all__ = ["PRESETS", "CatMlpDPTHead", "Mast3rArch", "Mast3rNet", "Mast3rTeacher", "Mast3rTeacherConfig",
           "build_mast3r", "get_mast3r_preset", "mast3r_arch_from_hub_config"]
