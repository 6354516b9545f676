"""Alignment with known poses: every edge's predictions are mapped to the world by camera i's pose.

Exact for a metric teacher (e.g. ``depth``): the world point of a pixel is the confidence-weighted mean of all
predictions of that pixel, over every edge that contains its frame. Frames are fused one at a time from their own
views (:class:`lit3d.align.frame_views.FrameViews`), read by edge id from ``pred`` (arrays, or the lazily read
teacher shards of a label cache), so memory holds one frame's views, not every prediction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np

from lit3d.align.frame_views import EdgeResiduals, FrameViews
from lit3d.align.result import AlignResult

log = logging.getLogger(__name__)

SIDE_KEYS = {0: ("pts_i", "conf_i", "valid_i"), 1: ("pts_j_in_i", "conf_j", "valid_j")}
"""Prediction arrays of the view of image i (side 0) and of image j (side 1) of an edge."""


@dataclass
class FusedFrame:
    """One frame's labels in the dataset's world frame."""

    index: int
    """Frame index (scene order)."""
    pts_world_HW3: np.ndarray
    """float32 world points, metres; 0 where invalid."""
    conf_HW: np.ndarray
    """float32 confidence-weighted mean confidence of the pixel's predictions (1 where there is none)."""
    valid_HW: np.ndarray
    """Pixels with at least one prediction and a fused confidence >= ``min_conf``."""


class KnownPoseFusion:
    """Fuses frames one at a time: iterate :meth:`frames`; ``residual`` and ``edge_residual_E`` then cover the
    views of the frames fused so far (every edge once every frame in an edge was fused)."""

    frame, unit = "dataset", "m"
    K_N33 = component_N = None  # the cameras are the dataset's, as in an AlignResult of this method

    def __init__(self, edges_E2, pred: Mapping, n_frames: int, cam2world_N44, metric: bool, min_conf: float = 1.5,
                 max_views: int = 32):
        if cam2world_N44 is None:
            raise ValueError("align.method=known_poses needs camera poses, and this scene has none; "
                             "use align.method=global")
        if not metric:
            raise ValueError("align.method=known_poses needs a metric teacher (outputs in metres); "
                             "use align.method=global to solve per-pair scales")
        self.edges_E2 = np.asarray(edges_E2, dtype=np.int64).reshape(-1, 2)
        E = len(self.edges_E2)
        if pred["pts_i"].shape[0] != E:
            raise ValueError(f"known-pose alignment: {pred['pts_i'].shape[0]} predictions for {E} edges")
        if E and (self.edges_E2.min() < 0 or self.edges_E2.max() >= n_frames):
            raise ValueError(f"known-pose alignment: edges refer to frames outside 0..{n_frames - 1}")
        self.pred, self.n_frames, self.min_conf, self.max_views = pred, n_frames, min_conf, max(1, max_views)
        self.hw = tuple(pred["pts_i"].shape[1:3])
        self.cam2world_N44 = np.asarray(cam2world_N44, np.float64)
        self.views = FrameViews(self.edges_E2, n_frames)
        self.residuals = EdgeResiduals(E)
        self.valid_pixels = self.pixels = 0

    @property
    def residual(self) -> float:
        """Mean confidence-weighted distance (m) of the fused views' predictions to their frame's fused points."""
        return self.residuals.residual

    @property
    def edge_residual_E(self) -> np.ndarray:
        return self.residuals.edge_residual_E

    def frames(self, indices: Iterable[int] | None = None) -> Iterator[FusedFrame]:
        """Fused frames ``indices`` (default: all), one at a time."""
        for f in range(self.n_frames) if indices is None else indices:
            yield self.fuse(int(f))

    def fuse(self, frame: int) -> FusedFrame:
        """Fuse one frame from its views and add their residuals."""
        edge_V, side_V = self.views.of(frame)
        H, W = self.hw
        sum_pts, sum_w, sum_conf = np.zeros((H, W, 3)), np.zeros((H, W)), np.zeros((H, W))
        chunks = [slice(k, k + self.max_views) for k in range(0, len(edge_V), self.max_views)]
        kept = None  # the views, when they fit in one chunk: no second read for the residuals
        for c in chunks:
            pts_VHW3, w_VHW = self._world_views(edge_V[c], side_V[c])
            for v in range(len(w_VHW)):  # in edge order, as a plain sum over every edge would add them
                sum_pts += w_VHW[v][..., None] * pts_VHW3[v]
                sum_w += w_VHW[v]
                sum_conf += w_VHW[v] * w_VHW[v]
            kept = (pts_VHW3, w_VHW) if len(chunks) == 1 else None
        with np.errstate(invalid="ignore", divide="ignore"):
            fused = sum_pts / sum_w[..., None]
            conf = np.where(sum_w > 0, sum_conf / sum_w, 1.0)  # confidence-weighted mean confidence
        valid = (sum_w > 0) & (conf >= self.min_conf)
        fused = np.where(valid[..., None], fused, 0.0)
        for c in chunks:
            pts_VHW3, w_VHW = kept if kept is not None else self._world_views(edge_V[c], side_V[c])
            w_VHW = w_VHW * valid
            self.residuals.add(edge_V[c], (w_VHW * np.linalg.norm(pts_VHW3 - fused, axis=-1)).sum((1, 2)),
                               w_VHW.sum((1, 2)))
        self.valid_pixels += int(valid.sum())
        self.pixels += valid.size
        return FusedFrame(frame, fused.astype(np.float32), conf.astype(np.float32), valid)

    def _world_views(self, edge_V: np.ndarray, side_V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (V, H, W, 3) float64 and weights (V, H, W) (the confidence) of views, 0 where masked."""
        V, (H, W) = len(edge_V), self.hw
        pts, conf, ok = np.empty((V, H, W, 3)), np.empty((V, H, W)), np.ones((V, H, W), bool)
        for side, (pts_key, conf_key, valid_key) in SIDE_KEYS.items():
            sel = side_V == side
            if sel.any():
                ids = edge_V[sel]
                pts[sel], conf[sel] = self.pred[pts_key][ids], self.pred[conf_key][ids]
                if valid_key in self.pred:
                    ok[sel] = self.pred[valid_key][ids]
        ok &= np.isfinite(pts).all(-1) & np.isfinite(conf)
        cam2world = self.cam2world_N44[self.edges_E2[edge_V, 0]]  # both views are in camera i's frame
        world = np.matmul(pts, cam2world[:, None, :3, :3].transpose(0, 1, 3, 2)) + cam2world[:, None, None, :3, 3]
        return np.where(ok[..., None], world, 0.0), np.where(ok, conf, 0.0)

    def log_summary(self) -> None:
        log.info("known-pose alignment: %d frames, %d edges, %.1f%% valid pixels, residual %.4f m", self.n_frames,
                 len(self.edges_E2), 100 * self.valid_pixels / max(self.pixels, 1), self.residual)


def align_known_poses(edges_E2, pred: Mapping, n_frames: int, cam2world_N44, metric: bool,
                      min_conf: float = 1.5) -> AlignResult:
    """Fuse edge predictions (camera-i frame, metres) into world pointmaps with the dataset's poses.

    ``pred`` maps ``pts_i``, ``pts_j_in_i`` (E, H, W, 3), ``conf_i``, ``conf_j`` (E, H, W) and optionally
    ``valid_i``, ``valid_j`` to anything indexable by an array of edge ids (arrays, lazily read shards).
    """
    fusion = KnownPoseFusion(edges_E2, pred, n_frames, cam2world_N44, metric, min_conf)
    H, W = fusion.hw
    pts = np.zeros((n_frames, H, W, 3), np.float32)
    conf, valid = np.ones((n_frames, H, W), np.float32), np.zeros((n_frames, H, W), bool)
    for f in fusion.frames():
        pts[f.index], conf[f.index], valid[f.index] = f.pts_world_HW3, f.conf_HW, f.valid_HW
    fusion.log_summary()
    return AlignResult(pts, conf, valid, np.asarray(cam2world_N44), frame=fusion.frame, unit=fusion.unit,
                       residual=fusion.residual, edge_residual_E=fusion.edge_residual_E)
