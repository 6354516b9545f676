"""Which edge predictions show each frame, so that alignment can fuse one frame at a time.

Edge e = (i, j) holds two views: side 0 shows frame i (``pts_i``, ``conf_i``), side 1 shows frame j
(``pts_j_in_i``, ``conf_j``), both in camera i's frame. A frame's fused label depends only on its own views, so
frames can be fused (and written) one after the other while only that frame's views are in memory.
"""
from __future__ import annotations

import numpy as np


class FrameViews:
    """The views of every frame: ``of(f)`` gives its edge ids and sides, in edge order."""

    def __init__(self, edges_E2: np.ndarray, n_frames: int):
        edges_E2 = np.asarray(edges_E2, np.int64).reshape(-1, 2)
        flat = edges_E2.ravel()  # view v = 2 * edge + side shows frame flat[v]
        self._order = np.argsort(flat, kind="stable")  # grouped by frame, by edge within a frame
        self._start = np.searchsorted(flat[self._order], np.arange(n_frames + 1))

    def of(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Edge ids (V,) and sides (V,) (0: the frame is image i, 1: image j) of ``frame``'s views."""
        views = self._order[self._start[frame] : self._start[frame + 1]]
        return views // 2, views % 2

    def count(self, frame: int) -> int:
        return int(self._start[frame + 1] - self._start[frame])


class EdgeResiduals:
    """Weighted mean distance of each edge's views to their frames' fused points, accumulated as frames are fused
    (in the labels' unit): ``add`` the sums of some views, read ``residual`` (all edges) or ``edge_residual_E``."""

    def __init__(self, n_edges: int):
        self.num_E, self.den_E = np.zeros(n_edges), np.zeros(n_edges)

    def add(self, edge_V: np.ndarray, weighted_dist_V: np.ndarray, weight_V: np.ndarray) -> None:
        """Sums over pixels of views ``edge_V`` (one view per edge: a frame's views are distinct edges)."""
        self.num_E[edge_V] += weighted_dist_V
        self.den_E[edge_V] += weight_V

    @property
    def residual(self) -> float:
        return float(self.num_E.sum() / max(self.den_E.sum(), 1e-12))

    @property
    def edge_residual_E(self) -> np.ndarray:
        return self.num_E / np.maximum(self.den_E, 1e-12)
