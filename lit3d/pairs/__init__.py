"""Scene graphs: which frame pairs (i, j) the teacher predicts.

``make_pairs(scene, cfg)`` returns a directed edge list (P, 2) of scene frame indices. Graph names follow
DUSt3R's: ``complete``, ``swin-K``, ``logwin-K`` (``-noncyclic`` drops wrap-around), ``oneref-R``; plus
``covis``, which keeps pairs whose views overlap by at least ``min_overlap`` according to the known poses.
"""
from __future__ import annotations

import logging

import numpy as np

from lit3d.data.scene import Scene
from lit3d.geometry import backproject_depth, invert_pose, project, transform_points
from lit3d.pairs.config import PairsConfig

log = logging.getLogger(__name__)


def _window_pairs(n: int, steps: list[int], cyclic: bool) -> set[tuple[int, int]]:
    pairs = set()
    for i in range(n):
        for d in steps:
            j = i + d
            if j >= n and not cyclic:
                continue
            j %= n
            if i != j:
                pairs.add((min(i, j), max(i, j)))
    return pairs


def _parse_k(graph: str, default: int) -> int:
    parts = graph.split("-")
    try:
        return int(parts[1]) if len(parts) > 1 else default
    except ValueError:
        raise ValueError(f"pairs.graph: cannot read the number in {graph!r} (e.g. swin-3)") from None


def overlap_matrix(scene: Scene, frames: np.ndarray, grid: int = 16, nominal_depth: float = 2.0) -> np.ndarray:
    """(F, F) fraction of frame a's sampled pixels that land inside frame b, in front of it.

    Uses depth where the scene has it (occlusion is ignored), else a constant ``nominal_depth`` in scene
    units, which approximates frustum overlap.
    """
    if scene.cam2world_N44 is None:
        raise ValueError("pairs.graph=covis needs known camera poses; this scene has none (use swin-K or complete)")
    H, W = scene.image_size
    rows = np.linspace(0, H - 1, grid).round().astype(int)
    cols = np.linspace(0, W - 1, grid).round().astype(int)
    pts_world = []
    for f in frames:
        depth = scene.read_depth(f) if scene.has_depth else np.full((H, W), nominal_depth, np.float32)
        pts_cam = backproject_depth(depth.astype(np.float64), scene.K_N33[f])[np.ix_(rows, cols)].reshape(-1, 3)
        ok = pts_cam[:, 2] > 0
        pts_world.append(transform_points(scene.cam2world_N44[f], pts_cam[ok]))
    F = len(frames)
    overlap = np.eye(F)
    for b, fb in enumerate(frames):
        world2cam = invert_pose(scene.cam2world_N44[fb])
        for a in range(F):
            if a == b or len(pts_world[a]) == 0:
                continue
            uv, z = project(transform_points(world2cam, pts_world[a]), scene.K_N33[fb])
            inside = (z > 0) & (uv[:, 0] >= -0.5) & (uv[:, 0] <= W - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] <= H - 0.5)
            overlap[a, b] = inside.mean()
    return overlap


def make_pairs(scene: Scene, cfg: PairsConfig) -> np.ndarray:
    """Directed edges (P, 2) over the frames of ``cfg.splits``, as scene frame indices."""
    frames = np.sort(np.concatenate([scene.split[s] for s in cfg.splits]))
    n = len(frames)
    graph = cfg.graph
    score = None
    if graph == "complete":
        pairs = {(i, j) for i in range(n) for j in range(i + 1, n)}
    elif graph.startswith("swin"):
        pairs = _window_pairs(n, list(range(1, _parse_k(graph, 3) + 1)), cyclic=not graph.endswith("-noncyclic"))
    elif graph.startswith("logwin"):
        pairs = _window_pairs(n, [2**m for m in range(_parse_k(graph, 3))], cyclic=not graph.endswith("-noncyclic"))
    elif graph.startswith("oneref"):
        ref = _parse_k(graph, 0)
        pairs = {(min(ref, j), max(ref, j)) for j in range(n) if j != ref}
    elif graph == "covis":
        score = overlap_matrix(scene, frames)
        sym = np.minimum(score, score.T)
        pairs = {(i, j) for i in range(n) for j in range(i + 1, n) if sym[i, j] >= cfg.min_overlap}
    else:
        raise ValueError(f"pairs.graph: unknown scene graph {graph!r}; valid: complete, swin-K, logwin-K, "
                         "oneref-R, covis (with optional -noncyclic for swin/logwin)")
    ranked = sorted(pairs, key=lambda p: (-min(score[p], score[p[::-1]]) if score is not None else 0, abs(p[1] - p[0]), p))
    if cfg.max_pairs_per_image > 0:
        count = np.zeros(n, int)
        kept = []
        for i, j in ranked:
            if count[i] < cfg.max_pairs_per_image and count[j] < cfg.max_pairs_per_image:
                kept.append((i, j))
                count[i] += 1
                count[j] += 1
        ranked = kept
    ranked = sorted(ranked)
    if cfg.symmetrize:
        ranked = ranked + [(j, i) for i, j in ranked]
    if not ranked:
        raise ValueError(f"pairs.graph={graph!r} gives no pairs for {n} frames (min_overlap={cfg.min_overlap})")
    edges = frames[np.asarray(ranked, dtype=int)]
    log.info("scene graph %s: %d frames, %d directed pairs", graph, n, len(edges))
    return edges


__all__ = ["PairsConfig", "make_pairs", "overlap_matrix"]
