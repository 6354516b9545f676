"""Students: small networks mapping ONE image (B, 3, H, W) in [0, 1] to a world pointmap (B, 3, H, W).

Found by name as timm's ``create_model``: ``create_student(cfg)`` with ``cfg.name`` one of ``STUDENTS.names()``.
Outputs are in normalised world units; :class:`lit3d.students.module.StudentModule` maps them to the scene frame.
"""
import torch

from lit3d.registry import Registry

STUDENTS: Registry[torch.nn.Module] = Registry("student")

from lit3d.students import mobilenetv3, scr, vanilla_cnn, vit  # noqa: E402,F401  (registers)


def create_student(cfg, img_size: tuple[int, int]) -> torch.nn.Module:
    """The student ``cfg.name`` for (H, W) inputs ``img_size``."""
    return STUDENTS.create(cfg, img_size=tuple(img_size))


def model_size(model: torch.nn.Module) -> dict[str, float]:
    """Parameter count and size in MB (parameters and buffers as stored, 1 MB = 2**20 bytes)."""
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return {"params": params, "size_mb": nbytes / 2**20}


__all__ = ["STUDENTS", "create_student", "model_size"]
