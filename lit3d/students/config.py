"""Config fields every student shares; each student subclasses this with its own options."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StudentConfig:
    name: str = "mobilenetv3"
    """Registered student name (see ``lit3d.students.STUDENTS``)."""
