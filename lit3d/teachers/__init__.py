"""Teachers: image pairs -> pairwise pointmaps and confidences (DUSt3R's output contract: ``depth``, ``dust3r``,
``mast3r``), or per-frame world labels given directly (``external``, ``Teacher.gives_world_labels``).

Found by name: ``create_teacher(cfg)`` with ``cfg.name`` one of ``TEACHERS.names()``.
"""
from lit3d.registry import Registry
from lit3d.teachers.base import OUTPUT_KEYS, FrameTransform, Teacher

TEACHERS: Registry[Teacher] = Registry("teacher")

from lit3d.teachers import depth, dust3r, external, mast3r, vggt  # noqa: E402,F401  (registers)


def create_teacher(cfg) -> Teacher:
    return TEACHERS.create(cfg)


__all__ = ["TEACHERS", "OUTPUT_KEYS", "FrameTransform", "Teacher", "create_teacher"]
