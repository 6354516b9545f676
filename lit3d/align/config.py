"""How pairwise predictions become one world frame (``align.*`` keys)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AlignConfig:
    method: str = "known_poses"
    """``known_poses``: map every pair into the world with the dataset's poses (metric teachers, or a scale per
    edge fitted to the known poses); ``global``: DUSt3R-style optimisation."""
    min_conf: float = 1.5
    """Pixels whose fused confidence is below this are marked invalid in the labels."""
    # --- method=global (DUSt3R-style optimisation, lit3d.align.global_alignment) ---
    iterations: int = 300
    """global: Adam iterations on the pixel subsample (DUSt3R: 300)."""
    lr: float = 0.01
    """global: peak Adam learning rate; translations are in units of the scene size, rotations in radians,
    depths, focals and edge scales in log units, so one rate suits every unknown (DUSt3R: 0.01)."""
    lr_min: float = 1e-6
    """global: learning rate at the last iteration."""
    schedule: str = "cosine"
    """global: decay from ``lr`` to ``lr_min``: ``cosine``, ``linear`` or ``constant``."""
    n_pixels: int = 512
    """global: pixels per image the optimisation runs on (0 = every pixel); dense pointmaps are then fused in
    closed form from the solved poses, focals and edge similarities."""
    sampling: str = "grid"
    """global: which pixels: ``grid`` (the centres of a regular grid of cells, the same in every image) or
    ``confident`` (in each cell the pixel with the highest summed log-confidence over the image's edges)."""
    robust: str = "none"
    """global: per-pixel loss on the 3-D distance: ``none`` (plain distance, DUSt3R's L1 norm) or ``cauchy``
    (down-weights points of outlier pairs; also down-weights outlier edges in the dense fusion)."""
    robust_scale: float = 0.02
    """global: Cauchy scale as a fraction of the scene size."""
    init_min_conf: float = 3.0
    """global: confidence a pixel needs to take part in the spanning-tree initialisation (DUSt3R's
    ``min_conf_thr``); falls back to every valid pixel for edges with too few."""
    use_known_intrinsics: bool = True
    """global, pipeline: use the scene's intrinsics (focals and principal points) instead of solving one focal
    per image with the principal point at (W/2, H/2)."""
    known_pose_mode: str = "fixed"
    """global, when the scene has poses: ``fixed`` (known poses kept exactly, the rest solved, result in the
    dataset frame), ``anchor`` (solve every pose, then a Sim(3) fit of the camera centres to the known ones
    expresses the result in the dataset frame) or ``ignore`` (first camera at the origin; scale normalised so the
    median distance of the points to it is 1, or metres for a metric teacher)."""
    on_disconnected: str = "error"
    """global: an edge graph with several connected components is an ``error`` or aligned per ``components``
    (each in its own frame unless known poses anchor it; see ``AlignResult.component_N``)."""
    device: str = "cpu"
    """global: torch device of the optimisation (``cpu``, ``cuda``, ``cuda:1``, ``auto``)."""
    chunk_edges: int = 256
    """global: edges processed at once when reading predictions and per step of the loss on a CPU (x32 on a GPU);
    bounds the extra memory."""
