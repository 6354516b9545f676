"""A classical yardstick for localization: SIFT matches against labelled training views, then PnP-RANSAC.

A query image's keypoints are matched (Lowe's ratio test) to those of a few training views; each match takes the
world point that the training view's label map holds at the matched keypoint, and PnP-RANSAC turns the 2D-3D
matches into a pose. No network is involved, so the figure tells what the labels and poses themselves support on
a frame: where this yardstick also misses, the frame's view of the scene disagrees with the training labels
(depth not registered to colour, a viewpoint too far for local features), not only the student.

:func:`refine_by_matching` uses the same matches at test time, where no true pose exists: the views are the
training views nearest a STUDENT's pose estimate (:class:`ViewDatabase`), and the matched pose replaces the
student's where enough matches agree on it.

Images are uint8 RGB (H, W, 3); pixel centres at integer coordinates (OpenCV's keypoint convention); label maps
(H, W, 3) are world points in the labels' frame and unit, of the same views at the same resolution; poses are
camera-to-world 4x4 in one frame and unit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np

from lit3d.metrics.localization import PnPResult, localize_points


@dataclass
class Keypoints:
    """SIFT keypoints of one image: pixel positions ``uv_N2`` and their 128-d descriptors ``desc_N128``."""

    uv_N2: np.ndarray
    desc_N128: np.ndarray


def sift_keypoints(image_HW3: np.ndarray, max_features: int = 2000) -> Keypoints:
    """At most ``max_features`` SIFT keypoints of an RGB image (OpenCV), strongest first."""
    gray_HW = cv2.cvtColor(np.ascontiguousarray(image_HW3, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    kps, desc = cv2.SIFT_create(nfeatures=int(max_features)).detectAndCompute(gray_HW, None)
    uv_N2 = np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2)
    return Keypoints(uv_N2, np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32))


def ratio_matches(query: Keypoints, other: Keypoints, ratio: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``query``, into ``other``) of the query keypoints whose nearest descriptor in ``other`` is
    closer than ``ratio`` times the second nearest (Lowe's test: rejects matches that a repeated texture makes
    ambiguous)."""
    if len(query.desc_N128) == 0 or len(other.desc_N128) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(query.desc_N128, other.desc_N128, k=2)
    good = [(p[0].queryIdx, p[0].trainIdx) for p in pairs if len(p) == 2 and p[0].distance < ratio * p[1].distance]
    q, o = (np.array(x, dtype=int) for x in zip(*good)) if good else (np.zeros(0, int), np.zeros(0, int))
    return q, o


def lift(uv_N2: np.ndarray, pts_world_HW3: np.ndarray, valid_HW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points of a labelled view at pixels ``uv_N2``: the label of the nearest pixel (no interpolation
    across depth edges). Returns (pts_N3, ok_N); ok where that pixel lies inside, is valid and finite."""
    H, W = valid_HW.shape
    col_N, row_N = np.round(uv_N2[:, 0]).astype(int), np.round(uv_N2[:, 1]).astype(int)
    inside_N = (col_N >= 0) & (col_N < W) & (row_N >= 0) & (row_N < H)
    col_N, row_N = np.clip(col_N, 0, W - 1), np.clip(row_N, 0, H - 1)
    pts_N3 = pts_world_HW3[row_N, col_N].astype(np.float64)
    ok_N = inside_N & valid_HW[row_N, col_N] & np.all(np.isfinite(pts_N3), axis=1)
    return pts_N3, ok_N


def nearest_views(cam2world_44: np.ndarray, views_cam2world_M44: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` views nearest to a camera, ranked by the sum of their ranks in centre distance and in
    rotation angle (unit-free, so it serves poses in any unit)."""
    views = np.asarray(views_cam2world_M44, dtype=np.float64).reshape(-1, 4, 4)
    dist_M = np.linalg.norm(views[:, :3, 3] - cam2world_44[:3, 3], axis=1)
    chord_M = np.linalg.norm(views[:, :3, :3] - cam2world_44[:3, :3], axis=(1, 2))  # grows with the angle
    rank_M = np.argsort(np.argsort(dist_M)) + np.argsort(np.argsort(chord_M))
    return np.argsort(rank_M, kind="stable")[:k]


def match_correspondences(query: Keypoints, views: list[dict[str, np.ndarray]], ratio: float = 0.8,
                          features: list[Keypoints] | None = None, max_features: int = 2000
                          ) -> tuple[np.ndarray, np.ndarray]:
    """2D-3D matches of a query image against labelled ``views`` (each with ``image``, ``pts_world``, ``valid``;
    ``features``: their keypoints when already computed, else ``max_features`` of each): query pixels ``uv_N2``
    and world points ``pts_N3``."""
    uv, pts = [np.zeros((0, 2))], [np.zeros((0, 3))]
    for j, view in enumerate(views):
        kp = features[j] if features is not None else sift_keypoints(view["image"], max_features)
        q, o = ratio_matches(query, kp, ratio)
        p_N3, ok_N = lift(kp.uv_N2[o], view["pts_world"], view["valid"])
        uv.append(query.uv_N2[q][ok_N])
        pts.append(p_N3[ok_N])
    return np.concatenate(uv), np.concatenate(pts)


MIN_INLIERS = 30
"""Matched inliers a pose needs to replace a student's (COLMAP's default for absolute poses,
``abs_pose_min_num_inliers``): fewer can be a chance consensus of wrong matches."""


class ViewDatabase:
    """Labelled training views to match queries against: their camera-to-world poses ``cam2world_M44`` (the
    labels' frame and unit; non-finite = unposed, never picked) known up front, and ``load(j)`` giving view j's
    ``image``, ``pts_world`` and ``valid`` at the label grid, read with its SIFT keypoints on first use and kept."""

    def __init__(self, cam2world_M44: np.ndarray, load: Callable[[int], dict[str, np.ndarray]],
                 max_features: int = 2000):
        self.cam2world_M44 = np.asarray(cam2world_M44, dtype=np.float64).reshape(-1, 4, 4)
        self.posed_P = np.flatnonzero(np.isfinite(self.cam2world_M44).all(axis=(1, 2)))
        if len(self.posed_P) == 0:
            raise ValueError("matching needs training views with poses; none of them has one")
        self._load, self.max_features = load, max_features
        self._views: dict[int, tuple[dict[str, np.ndarray], Keypoints]] = {}

    def nearest(self, cam2world_44: np.ndarray, k: int) -> list[int]:
        """Indices of the ``k`` posed views nearest to a camera (:func:`nearest_views`)."""
        return [int(self.posed_P[i]) for i in nearest_views(cam2world_44, self.cam2world_M44[self.posed_P], k)]

    def view(self, j: int) -> tuple[dict[str, np.ndarray], Keypoints]:
        if j not in self._views:
            frame = self._load(j)
            self._views[j] = frame, sift_keypoints(frame["image"], self.max_features)
        return self._views[j]

    def correspondences(self, query: Keypoints, cam2world_44: np.ndarray, k: int, ratio: float = 0.8
                        ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`match_correspondences` of a query against the ``k`` views nearest ``cam2world_44``."""
        chosen = [self.view(j) for j in self.nearest(cam2world_44, k)]
        return match_correspondences(query, [v for v, _ in chosen], ratio, [kp for _, kp in chosen])


@dataclass
class Refinement:
    """Outcome of :func:`refine_by_matching`: the pose kept (``result``), whether matching gave it (``adopted``),
    and the matches and inliers of the best matched pose (0 when none)."""

    result: PnPResult
    adopted: bool
    matches: int
    inliers: int


def refine_by_matching(image_HW3: np.ndarray, K_33: np.ndarray, prior: PnPResult, db: ViewDatabase,
                       reprojection_px: float, views: int = 10, rounds: int = 2, min_inliers: int = MIN_INLIERS,
                       ratio: float = 0.8) -> Refinement:
    """A query's pose from SIFT matches against the training views nearest a prior estimate (a student's PnP
    pose, labels' frame): each round matches against the ``views`` views nearest the latest pose and solves
    PnP-RANSAC; the matched pose with the most inliers, if it has ``min_inliers``, replaces ``prior``.

    A second round re-picks the views around the first matched pose, so a prior some decimetres off still ends
    on the views a true pose would pick. Without a prior pose, or without a matched pose that enough matches
    support, ``prior`` is kept: matching never loses a frame the prior localized.
    """
    if not prior.ok:
        return Refinement(prior, False, 0, 0)
    t0 = time.perf_counter()
    query = sift_keypoints(image_HW3, db.max_features)
    best: tuple[PnPResult, int] | None = None
    pose_44 = prior.cam2world_44
    for _ in range(rounds):
        uv_N2, pts_N3 = db.correspondences(query, pose_44, views, ratio)
        res = localize_points(pts_N3, uv_N2, K_33, reprojection_px=reprojection_px)
        if not res.ok:
            break
        if best is None or res.n_inliers > best[0].n_inliers:
            best = res, len(uv_N2)
        pose_44 = res.cam2world_44
    if best is None:
        return Refinement(prior, False, 0, 0)
    res, n_matches = best
    if res.n_inliers < min_inliers:
        return Refinement(prior, False, n_matches, res.n_inliers)
    return Refinement(replace(res, seconds=prior.seconds + time.perf_counter() - t0), True, n_matches,
                      res.n_inliers)
