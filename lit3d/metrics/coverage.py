"""How far a test camera is from the training cameras: nearest camera, surface coverage and the scale at which
training frames saw that surface (pure numpy).

Poses are camera-to-world 4x4 (OpenCV axes: x right, y down, z forward), in one world frame and unit; intrinsics
are 3x3 in pixels with pixel centres at integer coordinates; depth maps are z-depth in the poses' unit, 0 = none.
"""
from __future__ import annotations

import numpy as np


def _rotations(T_N44: np.ndarray) -> np.ndarray:
    """Rotation blocks snapped onto SO(3) (SVD): dataset poses are not always exactly orthonormal."""
    U, _, Vt = np.linalg.svd(np.asarray(T_N44, dtype=np.float64)[:, :3, :3])
    U[:, :, -1] *= np.sign(np.linalg.det(U @ Vt))[:, None]
    return U @ Vt


def nearest_cameras(test_cam2world_N44: np.ndarray, train_cam2world_M44: np.ndarray, chunk: int = 256
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per test camera: distance to the nearest training camera centre, the rotation angle to that camera, and
    the smallest rotation angle to any training camera.

    Angles are of the full relative rotation R_test^T R_train in degrees (viewing direction and roll), from the
    chord ``||R_a - R_b||_F = 2 sqrt(2) sin(angle / 2)`` (stable for small angles). Returns (dist_N, angle_N,
    min_angle_N); all NaN when there is no training camera.
    """
    test = np.asarray(test_cam2world_N44, dtype=np.float64).reshape(-1, 4, 4)
    train = np.asarray(train_cam2world_M44, dtype=np.float64).reshape(-1, 4, 4)
    N = len(test)
    if N == 0 or len(train) == 0:
        nan = np.full(N, np.nan)
        return nan, nan.copy(), nan.copy()
    R_test, R_train = _rotations(test), _rotations(train)
    dist, angle, min_angle = np.empty(N), np.empty(N), np.empty(N)
    for s in range(0, N, chunk):
        d_nM = np.linalg.norm(test[s : s + chunk, None, :3, 3] - train[None, :, :3, 3], axis=-1)
        chord_nM = np.linalg.norm(R_test[s : s + chunk, None] - R_train[None], axis=(-2, -1)) / (2 * np.sqrt(2))
        ang_nM = np.degrees(2 * np.arcsin(np.clip(chord_nM, 0.0, 1.0)))
        nearest = d_nM.argmin(1)
        rows = np.arange(len(nearest))
        dist[s : s + chunk], angle[s : s + chunk] = d_nM[rows, nearest], ang_nM[rows, nearest]
        min_angle[s : s + chunk] = ang_nM.min(1)
    return dist, angle, min_angle


def surface_points(depth_HW: np.ndarray, K_33: np.ndarray, cam2world_44: np.ndarray, step: int = 4) -> np.ndarray:
    """World points (P, 3) of every ``step``-th pixel (rows and columns) with depth > 0."""
    v, u = np.mgrid[0 : depth_HW.shape[0] : step, 0 : depth_HW.shape[1] : step]
    z = np.asarray(depth_HW, dtype=np.float64)[v, u]
    ok = np.isfinite(z) & (z > 0)
    K = np.asarray(K_33, dtype=np.float64)
    u, v, z = u[ok], v[ok], z[ok]
    pts_P3 = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)
    T = np.asarray(cam2world_44, dtype=np.float64)
    return pts_P3 @ T[:3, :3].T + T[:3, 3]


def training_depth(pts_world_P3: np.ndarray, train_cam2world_M44: np.ndarray, train_K_M33: np.ndarray,
                   train_depth_MHW: np.ndarray, near_P: np.ndarray | None = None, rtol: float = 0.05,
                   atol: float = 0.05, max_elements: int = 4_000_000) -> np.ndarray:
    """The depth (P,) at which a training frame sees each world point (P, 3); NaN where none does.

    A point is seen by a training camera when it projects inside its image (nearest pixel), in front of it, and
    that frame's depth there agrees with the point's depth within ``max(rtol * z, atol)`` (not occluded, and the
    frame has depth there). Of several such cameras the one whose depth is nearest in ratio to ``near_P`` (the
    query camera's depth of each point) is kept; without ``near_P`` any of them. Vectorised over points and
    cameras in chunks of about ``max_elements`` point-camera pairs.
    """
    pts = np.asarray(pts_world_P3, dtype=np.float64).reshape(-1, 3)
    T = np.asarray(train_cam2world_M44, dtype=np.float64).reshape(-1, 4, 4)
    K = np.asarray(train_K_M33, dtype=np.float64).reshape(-1, 3, 3)
    depth = np.asarray(train_depth_MHW)
    M, (H, W) = len(T), depth.shape[1:]
    log_near_P = np.log(np.asarray(near_P, dtype=np.float64)) if near_P is not None else np.zeros(len(pts))
    best_P = np.full(len(pts), np.nan)
    gap_P = np.full(len(pts), np.inf)  # |log(near / z_train)| of the kept camera
    c = max(1, min(M, max_elements // max(1, len(pts))))
    for m in range(0, M, c):
        sl = slice(m, m + c)
        # camera-frame points (c, P, 3): R^T (X - t)
        cam = np.einsum("mji,mpj->mpi", T[sl, :3, :3], pts[None] - T[sl, None, :3, 3])
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.round(K[sl, 0, 0, None] * cam[..., 0] / z + K[sl, 0, 2, None])
            v = np.round(K[sl, 1, 1, None] * cam[..., 1] / z + K[sl, 1, 2, None])
        inside = (z > 1e-9) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        mi, pi = np.nonzero(inside)
        d = depth[m + mi, v[mi, pi].astype(int), u[mi, pi].astype(int)]
        zz = z[mi, pi]
        ok = (d > 0) & (np.abs(d - zz) <= np.maximum(rtol * zz, atol))
        pi, zz = pi[ok], zz[ok]
        gap = np.abs(log_near_P[pi] - np.log(zz))
        np.minimum.at(gap_P, pi, gap)  # a point may be seen by several cameras of the chunk
        win = gap == gap_P[pi]
        best_P[pi[win]] = zz[win]
    return best_P


def surface_coverage(pts_world_P3: np.ndarray, train_cam2world_M44: np.ndarray, train_K_M33: np.ndarray,
                     train_depth_MHW: np.ndarray, rtol: float = 0.05, atol: float = 0.05,
                     max_elements: int = 4_000_000) -> np.ndarray:
    """Which world points (P, 3) some training frame sees: (P,) bool, where :func:`training_depth` is finite."""
    return np.isfinite(training_depth(pts_world_P3, train_cam2world_M44, train_K_M33, train_depth_MHW, None, rtol,
                                      atol, max_elements))


def frame_depth(frame: dict, labels_in_pose_frame: bool) -> np.ndarray | None:
    """z-depth (H, W) of a label-cache frame for :func:`surface_coverage`: the dataset's depth, else (when the labels
    share the poses' world frame) the depth of the labels' valid world points in the camera; None without a pose
    or either."""
    T = np.asarray(frame["cam2world"], dtype=np.float64)
    if not np.all(np.isfinite(T)):
        return None
    depth = np.asarray(frame["depth"], dtype=np.float32)
    if (depth > 0).any():
        return depth
    if not labels_in_pose_frame:
        return None
    z = ((np.asarray(frame["pts_world"], dtype=np.float64) - T[:3, 3]) @ T[:3, :3])[..., 2]  # R^T (X - t), z only
    ok = np.asarray(frame["valid"], bool) & np.isfinite(z) & (z > 0)
    return np.where(ok, z, 0).astype(np.float32)


def generalisation(test_frames: list[dict], train_frames, labels_in_pose_frame: bool, step: int = 4,
                   max_width: int = 128, rtol: float = 0.05, atol: float = 0.05) -> list[dict[str, float]]:
    """Per test frame: ``nearest_train_m`` (distance to the nearest training camera centre, poses' unit),
    ``nearest_train_deg`` (rotation angle to that camera), ``min_train_deg`` (smallest rotation angle to any training
    camera) and ``coverage`` (fraction of its surface points, every ``step``-th pixel, that a training frame sees,
    :func:`surface_coverage`) and ``depth_ratio`` (median over its seen surface points of the frame's depth of a
    point over the depth at which the training frame nearest in scale sees it: 0.5 = the frame sees its surface
    twice as close as any training frame, a 2x zoom that ``loader.scale_range`` may or may not cover). Frames are
    label-cache dicts (``depth``, ``K``, ``cam2world``, ``pts_world``, ``valid``); ``train_frames`` may be a
    generator (read once). Training depth maps are kept subsampled to at most
    ``max_width`` columns (intrinsics scaled to match). NaN where a pose or depth is unknown."""
    poses, Ks, depths = [], [], []
    for f in train_frames:
        d = frame_depth(f, labels_in_pose_frame)
        T = np.asarray(f["cam2world"], dtype=np.float64)
        if not np.all(np.isfinite(T)):
            continue
        poses.append(T)
        s = max(1, -(-f["depth"].shape[1] // max_width))
        K = np.array(f["K"], dtype=np.float64)
        K[:2] /= s  # sample (i, j) of depth[::s, ::s] is pixel (s i, s j)
        Ks.append(K)
        depths.append(d[::s, ::s] if d is not None else None)
    rows = [{"nearest_train_m": np.nan, "nearest_train_deg": np.nan, "min_train_deg": np.nan, "coverage": np.nan,
             "depth_ratio": np.nan} for _ in test_frames]
    if not poses:
        return rows
    test_T = np.stack([np.asarray(f["cam2world"], dtype=np.float64) for f in test_frames])
    known = np.all(np.isfinite(test_T), axis=(1, 2))
    if known.any():
        dist, ang, min_ang = nearest_cameras(test_T[known], np.stack(poses))
        for k, i in enumerate(np.flatnonzero(known)):
            rows[i].update(nearest_train_m=float(dist[k]), nearest_train_deg=float(ang[k]),
                           min_train_deg=float(min_ang[k]))
    with_depth = [m for m, d in enumerate(depths) if d is not None]
    if not with_depth:
        return rows
    shape = depths[with_depth[0]].shape
    with_depth = [m for m in with_depth if depths[m].shape == shape]
    D = np.stack([depths[m] for m in with_depth])
    T_M, K_M = np.stack([poses[m] for m in with_depth]), np.stack([Ks[m] for m in with_depth])
    for row, f in zip(rows, test_frames):
        d = frame_depth(f, labels_in_pose_frame)
        if d is None:
            continue
        pts = surface_points(d, f["K"], f["cam2world"], step)
        if not len(pts):
            continue
        T = np.asarray(f["cam2world"], dtype=np.float64)
        z_P = (pts - T[:3, 3]) @ T[:3, 2]  # the test camera's depth of each point
        z_train_P = training_depth(pts, T_M, K_M, D, z_P, rtol, atol)
        seen = np.isfinite(z_train_P)
        row["coverage"] = float(seen.mean())
        if seen.any():
            row["depth_ratio"] = float(np.median(z_P[seen] / z_train_P[seen]))
    return rows


def summarize_generalisation(rows: list[dict]) -> dict[str, float]:
    """``gen/nearest_train_m_median``, ``gen/nearest_train_deg_median``, ``gen/min_train_deg_median``,
    ``gen/coverage_mean``, ``gen/depth_ratio_{median,min,max}`` over the frames where each is known (keys absent
    when none is)."""
    out = {}
    for col, agg, key in (("nearest_train_m", np.median, "nearest_train_m_median"),
                          ("nearest_train_deg", np.median, "nearest_train_deg_median"),
                          ("min_train_deg", np.median, "min_train_deg_median"), ("coverage", np.mean, "coverage_mean"),
                          ("depth_ratio", np.median, "depth_ratio_median"), ("depth_ratio", np.min, "depth_ratio_min"),
                          ("depth_ratio", np.max, "depth_ratio_max")):
        x = np.array([r[col] for r in rows], dtype=np.float64)
        if np.isfinite(x).any():
            out[f"gen/{key}"] = float(agg(x[np.isfinite(x)]))
    return out
