"""Config fields every student shares; each student subclasses this with its own options."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class StudentConfig:
    name: str = "mobilenetv3"
    """Registered student name (see ``lit3d.students.STUDENTS``)."""
    default_lr: ClassVar[float] = 2e-3
    """Peak learning rate when ``optim.lr`` is 0: the largest that trained this student reliably on the
    synthetic scene (a class constant, not a config key: ``optim.lr`` is the one knob)."""
    head_stride: int = 4
    """Stride (power of two) at which the head's convs stop; each cell then predicts head_stride**2 points
    (sub-pixel convolution). 1 runs the head at full resolution, several times slower at large inputs."""
    output: str = "pixels"
    """pixels: each output cell predicts its s*s pixels' points (s: the head's output stride); cells: one point per
    cell, the one at its centre (ACE's output), bilinearly interpolated between cell centres, so a point need not
    encode where in its cell a pixel lies."""
