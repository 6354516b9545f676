"""Scenes larger than one forward pass: overlapping chunks of views, each predicted in its own first view's frame,
brought into one frame through the views they share (Sim(3)), then optionally anchored to known camera centres."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lit3d.geometry import umeyama_sim3

MAX_FIT_POINTS = 50_000
"""Points (evenly strided) used to fit one chunk's Sim(3)."""


@dataclass
class ViewSet:
    """Predictions for a set of views in one frame (a chunk's own, or the stitched one)."""

    frames: np.ndarray
    """(S,) indices of the views (into the list of views being labelled)."""
    pts_SHW3: np.ndarray
    """World points of every pixel (float32 or float64; transforms keep the dtype)."""
    conf_SHW: np.ndarray
    valid_SHW: np.ndarray
    cam2world_S44: np.ndarray
    """Camera-to-world poses (rotation orthonormal; the frame's scale is in the translations)."""

    def transformed(self, s: float, R: np.ndarray, t: np.ndarray) -> "ViewSet":
        """The same views in the frame x -> s R x + t."""
        poses = self.cam2world_S44.copy()
        poses[:, :3, :3] = R @ poses[:, :3, :3]
        poses[:, :3, 3] = s * poses[:, :3, 3] @ R.T + t
        pts = (s * self.pts_SHW3 @ R.T + t).astype(self.pts_SHW3.dtype)
        return ViewSet(self.frames, pts, self.conf_SHW, self.valid_SHW, poses)


def chunk_ranges(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive chunks of at most ``size`` views, each sharing ``overlap`` views with the last."""
    if not 0 < overlap < size:
        raise ValueError(f"teacher.chunk_overlap must be in [1, chunk_size - 1] = [1, {size - 1}], got {overlap}")
    ranges, start = [], 0
    while True:
        end = min(start + size, n)
        ranges.append((start, end))
        if end == n:
            return ranges
        start = end - overlap


def fit_sim3(src: ViewSet, dst: ViewSet, frames: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Sim(3) taking ``src``'s points of the shared ``frames`` onto ``dst``'s (confidence-weighted least squares)."""
    i_src = np.searchsorted(src.frames, frames)
    i_dst = np.searchsorted(dst.frames, frames)
    both = src.valid_SHW[i_src] & dst.valid_SHW[i_dst]
    if both.sum() < 3:
        raise ValueError(f"chunks sharing views {frames.tolist()} have fewer than 3 valid pixels in common: raise "
                         "teacher.chunk_overlap or lower align.min_conf")
    a, b = src.pts_SHW3[i_src][both], dst.pts_SHW3[i_dst][both]
    w = np.minimum(src.conf_SHW[i_src][both], dst.conf_SHW[i_dst][both])
    step = max(1, len(a) // MAX_FIT_POINTS)
    s, R, t = umeyama_sim3(a[::step], b[::step], w[::step])
    return float(s), np.asarray(R), np.asarray(t)


def stitch(chunks: list[ViewSet]) -> ViewSet:
    """All views in the first chunk's frame: each later chunk is mapped by the Sim(3) that best aligns it with the
    views already placed that it shares; a view keeps its first chunk's prediction. ``frames`` must be sorted."""
    placed = chunks[0]
    for chunk in chunks[1:]:
        shared = np.intersect1d(chunk.frames, placed.frames)
        if len(shared) == 0:
            raise ValueError(f"chunk of views {chunk.frames[0]}..{chunk.frames[-1]} shares no view with the "
                             "previous ones")
        chunk = chunk.transformed(*fit_sim3(chunk, placed, shared))
        new = ~np.isin(chunk.frames, placed.frames)
        placed = ViewSet(*(np.concatenate([a, b[new]]) for a, b in
                           ((placed.frames, chunk.frames), (placed.pts_SHW3, chunk.pts_SHW3),
                            (placed.conf_SHW, chunk.conf_SHW), (placed.valid_SHW, chunk.valid_SHW),
                            (placed.cam2world_S44, chunk.cam2world_S44))))
        order = np.argsort(placed.frames)
        placed = ViewSet(placed.frames[order], placed.pts_SHW3[order], placed.conf_SHW[order],
                         placed.valid_SHW[order], placed.cam2world_S44[order])
    return placed


def anchor_to_poses(views: ViewSet, cam2world_S44: np.ndarray) -> tuple[ViewSet, float]:
    """``views`` in the frame of the known poses (Sim(3) between camera centres), and the centres' RMS residual."""
    ours, known = views.cam2world_S44[:, :3, 3], cam2world_S44[:, :3, 3]
    for centres, whose in ((known, "dataset"), (ours, "predicted")):
        spread = np.linalg.svd(centres - centres.mean(0), compute_uv=False) if len(centres) >= 3 else np.zeros(2)
        if not spread[1] > 1e-6 * max(spread[0], 1e-12):
            raise ValueError(f"anchoring needs at least 3 non-collinear {whose} camera centres")
    s, R, t = (np.asarray(x) for x in umeyama_sim3(ours, known))
    anchored = views.transformed(float(s), R, t)
    residual = float(np.sqrt(((anchored.cam2world_S44[:, :3, 3] - known) ** 2).sum(-1).mean()))
    return anchored, residual
