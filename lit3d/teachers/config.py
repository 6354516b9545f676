"""Config fields every teacher shares; each teacher subclasses this with its own options."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TeacherConfig:
    name: str = "depth"
    """Registered teacher name (see ``lit3d.teachers.TEACHERS``)."""
    batch_size: int = 8
    """Pairs per teacher forward pass (0 = choose to fit device memory, where the teacher supports it)."""
