"""What every alignment method returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class AlignResult:
    pts_world_NHW3: np.ndarray
    """World pointmap per frame, float32, in ``unit``."""
    conf_NHW: np.ndarray
    """Fused confidence per pixel (>= 1 where valid)."""
    valid_NHW: np.ndarray
    """Pixels with a trustworthy world point."""
    cam2world_N44: np.ndarray
    """Camera-to-world poses the points are expressed with."""
    frame: str
    """Which world frame: ``dataset`` (the dataset's own poses) or ``first_camera`` (camera 0 at the origin)."""
    unit: str
    """``m`` (metric) or ``normalised`` (scale fixed by a normalisation, not metric)."""
    residual: float = 0.0
    """Mean confidence-weighted disagreement between edges and the fused points, in ``unit``."""
    edge_residual_E: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Per-edge residual, in ``unit``."""
    focals_N: np.ndarray | None = None
    """Focal length per frame in pixels, when solved or known."""
    K_N33: np.ndarray | None = None
    """Intrinsics per frame (pixels) the pointmaps were back-projected with, when solved or known."""
    edge_scale_E: np.ndarray | None = None
    """Scale mapping each edge's predictions into ``unit`` (global alignment)."""
    component_N: np.ndarray | None = None
    """Connected component of each frame when components were aligned separately (-1: frame in no edge); the
    components share one frame only when ``frame`` is ``dataset``."""
    stats: dict = field(default_factory=dict)
    """Diagnostics: masked non-finite pixels, iterations, loss, seconds."""
