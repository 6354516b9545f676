"""Sweeps: sweep files (:mod:`.spec`), search spaces (:mod:`.space`), shared studies (:mod:`.storage`), workers
(:mod:`.worker`). The command is ``python -m lit3d.sweep``."""
from lit3d.sweeps.spec import SweepConfig, from_yaml, load_sweep

__all__ = ["SweepConfig", "from_yaml", "load_sweep"]
