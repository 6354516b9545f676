"""Camera localization from a predicted world pointmap: PnP inside RANSAC, pose errors and their summary.

Frames and units: ``pts_world_HW3`` holds, for every pixel (u = column, v = row) of the query image, the world point
seen there (metres when the scene is metric); ``K_33`` is the query camera's intrinsics in pixels (OpenCV axes,
pixel centres at integer coordinates); returned poses are camera-to-world 4x4.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np

from lit3d.geometry import invert_pose, is_valid_pose, pixel_grid, rotation_angle_deg

log = logging.getLogger(__name__)

THRESHOLDS_CM_DEG = (2, 5, 10)
"""(cm, degrees) pairs reported by :func:`summarize`, e.g. 5 -> ``loc/acc_5cm5deg``."""


@dataclass
class PnPResult:
    """Outcome of :func:`localize`; ``cam2world_44`` is None exactly when ``ok`` is False."""

    cam2world_44: np.ndarray | None
    ok: bool
    reason: str
    """'' on success, otherwise why it failed (too few points, RANSAC failed, degenerate points, ...)."""
    n_points: int
    """Valid finite correspondences offered to RANSAC (after subsampling to ``max_points``)."""
    n_inliers: int
    inlier_ratio: float
    seconds: float


def _failed(reason: str, started: float, n_points: int = 0, n_inliers: int = 0) -> PnPResult:
    log.debug("localize failed: %s", reason)
    ratio = n_inliers / n_points if n_points else 0.0
    return PnPResult(None, False, reason, n_points, n_inliers, ratio, time.perf_counter() - started)


def localize(pts_world_HW3: np.ndarray, valid_HW: np.ndarray | None, K_33: np.ndarray, **settings) -> PnPResult:
    """Camera-to-world pose of the query image from its per-pixel world points (pixel (u, v) sees
    ``pts_world_HW3[v, u]``; invalid or non-finite points are ignored); never raises on bad input. ``settings``:
    :func:`localize_points`'s (threshold, iterations, subsampling, refinement)."""
    t0 = time.perf_counter()
    try:
        pts_HW3 = np.asarray(pts_world_HW3, dtype=np.float64)
        if pts_HW3.ndim != 3 or pts_HW3.shape[-1] != 3:
            return _failed(f"pointmap has shape {pts_HW3.shape}, expected (H, W, 3)", t0)
        mask_HW = np.all(np.isfinite(pts_HW3), axis=-1)
        if valid_HW is not None:
            mask_HW &= np.asarray(valid_HW, dtype=bool)
        pts_N3 = pts_HW3[mask_HW]
        uv_N2 = pixel_grid(*mask_HW.shape)[mask_HW]
    except Exception as e:  # malformed input (wrong mask shape, object arrays): report, never raise
        return _failed(f"invalid input: {e}", t0)
    return localize_points(pts_N3, uv_N2, K_33, started=t0, **settings)


def localize_points(
    pts_world_N3: np.ndarray,
    uv_N2: np.ndarray,
    K_33: np.ndarray,
    reprojection_px: float = 10.0,
    iterations: int = 1000,
    confidence: float = 0.9999,
    min_points: int = 4,
    max_points: int = 20_000,
    seed: int = 0,
    refine: bool = True,
    started: float | None = None,
) -> PnPResult:
    """Camera-to-world pose from 2D-3D correspondences (pixel ``uv_N2`` of the query image sees world point
    ``pts_world_N3``; non-finite rows ignored); never raises on bad input.

    RANSAC (OpenCV ``solvePnPRansac``, EPnP minimal samples, SQPnP on the consensus set) with an inlier threshold
    of ``reprojection_px`` pixels (10 px as DSAC*/ACE at 640x480; scale it with the image width, since outliers
    that fall within it bias the fit), then Levenberg-Marquardt refinement on the inliers (``refine``). Above
    ``max_points`` a deterministic random subset (``seed``) is used, which keeps the time per frame bounded
    without changing the estimate noticeably. ``started``: the ``time.perf_counter()`` the reported seconds count
    from (default: now).
    """
    t0 = time.perf_counter() if started is None else started

    def fail(reason: str, n_points: int = 0, n_inliers: int = 0) -> PnPResult:
        return _failed(reason, t0, n_points, n_inliers)

    try:
        pts_N3 = np.asarray(pts_world_N3, dtype=np.float64).reshape(-1, 3)
        uv_N2 = np.asarray(uv_N2, dtype=np.float64).reshape(-1, 2)
        K = np.asarray(K_33, dtype=np.float64)
        if len(pts_N3) != len(uv_N2):
            return fail(f"{len(pts_N3)} world points but {len(uv_N2)} pixels")
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            return fail("intrinsics are not a finite 3x3 matrix")
    except Exception as e:  # malformed input: report, never raise
        return fail(f"invalid input: {e}")
    finite_N = np.all(np.isfinite(pts_N3), axis=1) & np.all(np.isfinite(uv_N2), axis=1)
    pts_N3, uv_N2 = pts_N3[finite_N], uv_N2[finite_N]
    n = len(pts_N3)
    if n < max(min_points, 4):
        return fail(f"fewer than {max(min_points, 4)} valid points ({n})", n)
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        pts_N3, uv_N2, n = pts_N3[keep], uv_N2[keep], max_points
    # EPnP's minimal solver divides by the spread of the points: collinear or coincident sets have no unique pose
    sv_3 = np.linalg.svd(pts_N3 - pts_N3.mean(0), compute_uv=False)
    if sv_3[0] <= 1e-12 or sv_3[1] <= 1e-9 * sv_3[0]:
        return fail("degenerate points (coincident or collinear)", n)

    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            pts_N3, uv_N2, K, None,
            iterationsCount=int(iterations), reprojectionError=float(reprojection_px),
            confidence=float(confidence), flags=cv2.SOLVEPNP_SQPNP,
        )
    except cv2.error as e:
        return fail(f"RANSAC failed: {str(e).strip().splitlines()[-1]}", n)
    n_in = 0 if inliers is None else len(inliers)
    if not ok or n_in < 4:
        return fail(f"RANSAC failed ({n_in} inliers)", n, n_in)

    idx = inliers.ravel()
    try:
        if refine:
            rvec, tvec = cv2.solvePnPRefineLM(pts_N3[idx], uv_N2[idx], K, None, rvec, tvec)
    except cv2.error as e:  # keep the RANSAC pose: refinement only polishes it
        log.debug("solvePnPRefineLM failed, keeping the RANSAC pose: %s", e)
    world2cam_44 = np.eye(4)
    world2cam_44[:3, :3] = cv2.Rodrigues(rvec)[0]
    world2cam_44[:3, 3] = np.asarray(tvec, dtype=np.float64).ravel()
    cam2world_44 = invert_pose(world2cam_44)
    if not is_valid_pose(cam2world_44):
        return fail("RANSAC returned a non-finite or non-rigid pose", n, n_in)
    return PnPResult(cam2world_44, True, "", n, n_in, n_in / n, time.perf_counter() - t0)


def pose_errors(est_cam2world_44: np.ndarray | None, gt_cam2world_44: np.ndarray) -> tuple[float, float]:
    """(translation error in cm, rotation error in degrees) of an estimated camera-to-world pose (metres).

    Translation error is the distance between camera centres; rotation error the angle of R_est^T R_gt. A missing
    or non-finite estimate gives (inf, inf) so that it counts as a failure in :func:`summarize`.
    """
    if est_cam2world_44 is None or not np.all(np.isfinite(est_cam2world_44)):
        return float("inf"), float("inf")
    est = np.asarray(est_cam2world_44, dtype=np.float64)
    gt = np.asarray(gt_cam2world_44, dtype=np.float64)
    t_cm = float(np.linalg.norm(est[:3, 3] - gt[:3, 3]) * 100.0)
    return t_cm, rotation_angle_deg(est[:3, :3], gt[:3, :3])


def summarize(t_cm: np.ndarray, r_deg: np.ndarray) -> dict[str, float]:
    """Localization accuracy of N frames: fraction with both errors strictly under X cm and X degrees, and medians.

    Failed frames must be passed as inf (NaN is treated as inf). Medians include failures, so they are inf when
    more than half the frames failed. Returns plain floats; NaN for every value when N = 0.
    """
    t = np.asarray(t_cm, dtype=np.float64).ravel()
    r = np.asarray(r_deg, dtype=np.float64).ravel()
    t, r = np.where(np.isnan(t), np.inf, t), np.where(np.isnan(r), np.inf, r)
    if t.shape != r.shape:
        raise ValueError(f"t_cm has {t.size} values but r_deg has {r.size}")
    out: dict[str, float] = {}
    for x in THRESHOLDS_CM_DEG:
        out[f"loc/acc_{x}cm{x}deg"] = float(np.mean((t < x) & (r < x))) if t.size else float("nan")
    out["loc/median_t_cm"] = float(np.median(t)) if t.size else float("nan")
    out["loc/median_r_deg"] = float(np.median(r)) if t.size else float("nan")
    out["loc/n_frames"] = float(t.size)
    out["loc/failure_rate"] = float(np.mean(~(np.isfinite(t) & np.isfinite(r)))) if t.size else float("nan")
    return out


TUNING_PX_640 = (5.0, 10.0, 20.0)
"""RANSAC inlier thresholds tried by :func:`tuning_grid`, in pixels at 640 px width (scaled to the image's)."""
TUNING_ITERATIONS = (256, 1000)
TUNING_REFINE = (True, False)


def tuning_grid(width: int) -> list[dict]:
    """Localization settings to choose from on validation frames: thresholds :data:`TUNING_PX_640` scaled to
    ``width`` (at least 1 px, as the default), x iterations x LM refinement on/off; duplicates (thresholds that
    clamp to the same value) dropped. Each: ``reprojection_px``, ``iterations``, ``refine``."""
    grid: list[dict] = []
    for px in TUNING_PX_640:
        for it in TUNING_ITERATIONS:
            for refine in TUNING_REFINE:
                s = {"reprojection_px": max(1.0, px * width / 640), "iterations": it, "refine": refine}
                if s not in grid:
                    grid.append(s)
    return grid


def choose_setting(rows: list[dict]) -> int:
    """Index of the best row: highest ``acc_5cm5deg``, ties broken by the lower ``median_t_cm``, then the first."""
    def key(k: int) -> tuple[float, float, int]:
        acc, med = rows[k]["acc_5cm5deg"], rows[k]["median_t_cm"]
        return (-(acc if np.isfinite(acc) else -1.0), med if not np.isnan(med) else np.inf, k)

    return min(range(len(rows)), key=key)
