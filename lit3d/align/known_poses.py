"""Alignment with known poses: every edge's predictions are mapped to the world by camera i's pose.

Exact for a metric teacher (e.g. ``depth``): the world point of a pixel is the confidence-weighted mean of all
predictions of that pixel, over every edge that contains its frame.
"""
from __future__ import annotations

import logging

import numpy as np

from lit3d.align.result import AlignResult

log = logging.getLogger(__name__)


def align_known_poses(edges_E2, pred: dict, n_frames: int, cam2world_N44, metric: bool,
                      min_conf: float = 1.5) -> AlignResult:
    """Fuse edge predictions (camera-i frame, metres) into world pointmaps with the dataset's poses."""
    if cam2world_N44 is None:
        raise ValueError("align.method=known_poses needs camera poses, and this scene has none; "
                         "use align.method=global")
    if not metric:
        raise ValueError("align.method=known_poses needs a metric teacher (outputs in metres); "
                         "use align.method=global to solve per-pair scales")
    edges_E2 = np.asarray(edges_E2, dtype=int)
    E, H, W, _ = pred["pts_i"].shape
    sum_pts = np.zeros((n_frames, H, W, 3), np.float64)
    sum_w = np.zeros((n_frames, H, W), np.float64)
    sum_conf = np.zeros((n_frames, H, W), np.float64)

    def contributions():
        for e, (i, j) in enumerate(edges_E2):
            for frame, pts_key, side in ((i, "pts_i", "i"), (j, "pts_j_in_i", "j")):
                pts_cam_i = np.asarray(pred[pts_key][e], np.float64)
                conf = np.asarray(pred[f"conf_{side}"][e], np.float64)
                ok = np.isfinite(pts_cam_i).all(-1) & np.isfinite(conf)
                if f"valid_{side}" in pred:
                    ok &= np.asarray(pred[f"valid_{side}"][e], bool)
                R, t = cam2world_N44[i][:3, :3], cam2world_N44[i][:3, 3]
                yield e, frame, np.where(ok[..., None], pts_cam_i @ R.T + t, 0.0), np.where(ok, conf, 0.0)

    for _, frame, pts_world, w in contributions():
        sum_pts[frame] += w[..., None] * pts_world
        sum_w[frame] += w
        sum_conf[frame] += w * w
    with np.errstate(invalid="ignore", divide="ignore"):
        fused = sum_pts / sum_w[..., None]
        conf = np.where(sum_w > 0, sum_conf / sum_w, 1.0)  # confidence-weighted mean confidence
    valid = (sum_w > 0) & (conf >= min_conf)
    fused = np.where(valid[..., None], fused, 0.0)

    edge_res = np.zeros(E)
    edge_w = np.zeros(E)
    for e, frame, pts_world, w in contributions():
        w = w * valid[frame]
        edge_res[e] += (w * np.linalg.norm(pts_world - fused[frame], axis=-1)).sum()
        edge_w[e] += w.sum()
    residual = float(edge_res.sum() / max(edge_w.sum(), 1e-12))
    edge_res = edge_res / np.maximum(edge_w, 1e-12)
    log.info("known-pose alignment: %d frames, %d edges, %.1f%% valid pixels, residual %.4f m",
             n_frames, E, 100 * valid.mean(), residual)
    return AlignResult(fused.astype(np.float32), conf.astype(np.float32), valid, np.asarray(cam2world_N44),
                       frame="dataset", unit="m", residual=residual, edge_residual_E=edge_res)
