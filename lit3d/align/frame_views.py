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
