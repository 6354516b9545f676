"""Interactive 3D view (plotly HTML) of point clouds and camera frusta, e.g. teacher vs student.

Points and camera poses share one world frame (metres when metric); cameras are camera-to-world 4x4 with OpenCV
axes and pinhole intrinsics in pixels. The HTML embeds plotly.js (opens offline, ~4 MB each), or with ``shared_js``
loads one ``plotly.min.js`` beside it, shared by the views of a folder.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from lit3d.files import atomic_output
from lit3d.geometry import transform_points

log = logging.getLogger(__name__)

PLOTLY_JS = "plotly.min.js"
"""The shared plotly.js bundle written beside views made with ``shared_js`` (plotly's ``directory`` mode)."""

Camera = tuple[np.ndarray, np.ndarray, tuple[int, int]]
"""(cam2world_44, K_33, (H, W))."""


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` items, the same for the same (n, max_points, seed)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def _rgb_strings(rgb_N3: np.ndarray) -> list[str]:
    """Plotly colour strings of uint8 colours, or of floats in [0, 1]."""
    rgb = np.asarray(rgb_N3)
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.nan_to_num(rgb.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return [f"rgb({r},{g},{b})" for r, g, b in rgb.tolist()]


def frustum_lines(cam2world_44: np.ndarray, K_33: np.ndarray, hw: tuple[int, int], depth: float) -> np.ndarray:
    """World polyline (M, 3) of a camera frustum to ``depth`` (world units), NaN rows separating segments.

    The image plane is spanned by the outer pixel edges (-0.5 .. W-0.5, -0.5 .. H-0.5).
    """
    h, w = hw
    K_inv = np.linalg.inv(np.asarray(K_33, dtype=np.float64))
    uv1_43 = np.array([[-0.5, -0.5, 1], [w - 0.5, -0.5, 1], [w - 0.5, h - 0.5, 1], [-0.5, h - 0.5, 1]])
    corners_cam_43 = (uv1_43 @ K_inv.T) * depth  # z = depth since K's last row is (0, 0, 1)
    corners_43 = transform_points(np.asarray(cam2world_44, dtype=np.float64), corners_cam_43)
    apex_3 = np.asarray(cam2world_44, dtype=np.float64)[:3, 3]
    gap = np.full((1, 3), np.nan)
    rays = [np.stack([apex_3, c]) for c in corners_43]
    rect = corners_43[[0, 1, 2, 3, 0]]
    return np.concatenate([seg for r in rays for seg in (r, gap)] + [rect, gap])


def pointcloud_html(
    path: str | os.PathLike,
    clouds: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    cameras: Mapping[str, Sequence[Camera]] | None = None,
    max_points: int = 50_000,
    frustum_depth: float | None = None,
    point_size: float = 1.5,
    title: str | None = None,
    shared_js: bool = False,
) -> Path:
    """Write an offline plotly HTML with one toggleable trace per cloud and per camera set; returns the path.

    ``clouds[name] = (pts (..., 3), rgb (..., 3) uint8 or [0, 1] float, or None)``: non-finite points are dropped and
    at most ``max_points`` per cloud kept (deterministic subset). ``cameras[name]`` is a list of
    (cam2world_44, K_33, (H, W)) drawn as frusta of depth ``frustum_depth`` (default 5 % of the clouds' extent).
    ``shared_js``: load plotly.js from ``plotly.min.js`` beside the file (written once per folder, ~4 MB, shared by
    every view there) instead of embedding it in each file.
    """
    fig = go.Figure()
    extent_pts = []
    for k, (name, (pts, rgb)) in enumerate(clouds.items()):
        pts_N3 = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        keep = np.all(np.isfinite(pts_N3), axis=1)
        idx = np.flatnonzero(keep)[subsample(int(keep.sum()), max_points)]
        pts_N3 = pts_N3[idx]
        extent_pts.append(pts_N3)
        if rgb is not None:
            colour = _rgb_strings(np.asarray(rgb).reshape(-1, 3)[idx])
        else:
            colour = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")[k % 5]
        fig.add_trace(go.Scatter3d(
            x=pts_N3[:, 0], y=pts_N3[:, 1], z=pts_N3[:, 2], mode="markers", name=name,
            marker=dict(size=point_size, color=colour), hoverinfo="skip",
        ))
    if cameras:
        if frustum_depth is None:
            allp = np.concatenate(extent_pts) if extent_pts else np.zeros((0, 3))
            diag = float(np.linalg.norm(np.ptp(allp, axis=0))) if len(allp) else 0.0
            frustum_depth = 0.05 * diag if diag > 0 else 0.1
        for k, (name, cams) in enumerate(cameras.items()):
            lines = [frustum_lines(T, K, hw, frustum_depth) for T, K, hw in cams]
            xyz = np.concatenate(lines) if lines else np.zeros((0, 3))
            # plain lists with None (JSON null), which plotly.js always reads as a line break
            x, y, z = ([None if np.isnan(c) else float(c) for c in xyz[:, i]] for i in range(3))
            fig.add_trace(go.Scatter3d(
                x=x, y=y, z=z, mode="lines", name=name, connectgaps=False,
                line=dict(width=3, color=("#d62728", "#2ca02c", "#9467bd", "#8c564b")[k % 4]),
            ))
    fig.update_layout(
        title=title, scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=30 if title else 0, b=0),
        legend=dict(itemsizing="constant"),
    )
    path = Path(path)
    if shared_js and not (path.parent / PLOTLY_JS).is_file():
        from plotly.offline import get_plotlyjs

        with atomic_output(path.parent / PLOTLY_JS) as tmp:
            tmp.write_text(get_plotlyjs(), encoding="utf-8")
    with atomic_output(path) as tmp:
        tmp.write_text(fig.to_html(include_plotlyjs="directory" if shared_js else True, full_html=True),
                       encoding="utf-8")
    log.info("wrote %s", path)
    return path
