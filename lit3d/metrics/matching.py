"""A classical yardstick for localization: SIFT matches against labelled training views, then PnP-RANSAC.

A query image's keypoints are matched (Lowe's ratio test) to those of a few training views; each match takes the
world point that the training view's label map holds at the matched keypoint, and PnP-RANSAC turns the 2D-3D
matches into a pose. No network is involved, so the figure tells what the labels and poses themselves support on
a frame: where this yardstick also misses, the frame's view of the scene disagrees with the training labels
(depth not registered to colour, a viewpoint too far for local features), not only the student.

:func:`refine_by_matching` uses the same matches at test time, where no true pose exists: the views are the
training views nearest a STUDENT's pose estimate (:class:`ViewDatabase`), or, where those give no pose, the views
that share the most matches with the query; the matched pose replaces the student's where enough matches agree on
it. A :class:`ViewDatabase` keeps only each view's keypoints and their world points, and :meth:`ViewDatabase.save`
writes them to one file, so an exported student can be refined without the label cache.

Images are uint8 RGB (H, W, 3); pixel centres at integer coordinates (OpenCV's keypoint convention); label maps
(H, W, 3) are world points in the labels' frame and unit, of the same views at the same resolution; poses are
camera-to-world 4x4 in one frame and unit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from lit3d.files import atomic_save_npz
from lit3d.geometry import invert_pose, project, transform_points
from lit3d.metrics.localization import PnPResult, localize_points
from lit3d.metrics.photometric import DenseView, align_photometric, dense_view


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


@dataclass
class LabelledKeypoints:
    """A training view's SIFT ``keypoints`` and the world points ``pts_N3`` its labels give them (labels' frame
    and unit, :func:`lift`; NaN where the label is missing or invalid): all that matching needs of a view."""

    keypoints: Keypoints
    pts_N3: np.ndarray


def labelled_keypoints(view: dict[str, np.ndarray], max_features: int = 2000) -> LabelledKeypoints:
    """:class:`LabelledKeypoints` of a labelled view (``image``, ``pts_world``, ``valid`` at the label grid)."""
    kp = sift_keypoints(view["image"], max_features)
    pts_N3, ok_N = lift(kp.uv_N2, view["pts_world"], view["valid"])
    pts_N3[~ok_N] = np.nan
    return LabelledKeypoints(kp, pts_N3)


def match_correspondences(query: Keypoints, views: list[LabelledKeypoints], ratio: float = 0.8
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D-3D matches of a query image against labelled ``views``: query pixels ``uv_N2``, world points ``pts_N3``
    and the position in ``views`` of each match's view ``view_N`` (matches to keypoints without a valid label
    dropped after the ratio test)."""
    uv, pts, which = [np.zeros((0, 2))], [np.zeros((0, 3))], [np.zeros(0, int)]
    for k, view in enumerate(views):
        q, o = ratio_matches(query, view.keypoints, ratio)
        p_N3 = view.pts_N3[o].astype(np.float64)
        ok_N = np.all(np.isfinite(p_N3), axis=1)
        uv.append(query.uv_N2[q][ok_N])
        pts.append(p_N3[ok_N])
        which.append(np.full(int(ok_N.sum()), k))
    return np.concatenate(uv), np.concatenate(pts), np.concatenate(which)


MIN_INLIERS = 30
"""Matched inliers a pose needs to replace a student's (COLMAP's default for absolute poses,
``abs_pose_min_num_inliers``): fewer can be a chance consensus of wrong matches."""

VIEWS_FILE = "training_views.npz"
"""The name of :meth:`ViewDatabase.save`'s file beside an exported student (``lit3d evaluate`` writes it)."""
VIEWS_FILE_VERSION = 2
"""Version 2 adds each view's :class:`~lit3d.metrics.photometric.DenseView`; version 1 files still open
(matching only)."""

ALIGN_VIEWS = 4
"""Training views that direct alignment compares the query with: those holding the most of the matched pose's
inlier matches (the views nearest the pose can look elsewhere)."""

ALIGN_KEEP = 0.9
"""Share of the matches that the directly aligned pose must reproject within twice the RANSAC threshold, counted
against the matched pose's own count, to replace it. Where the labels are not registered to colour, alignment can
drift decimetres and keep a third to two thirds of them; a pose that moved to the truth keeps about all. (Twice
the threshold: RANSAC fits the matched pose to the matches at the threshold itself, which favours it there.)"""


class ViewDatabase:
    """Labelled training views to match queries against: their camera-to-world poses ``cam2world_M44`` (the
    labels' frame and unit; non-finite = unposed, never picked) known up front, and ``load(j)`` giving view j's
    ``image``, ``pts_world`` and ``valid`` at the label grid. Only each view's :class:`LabelledKeypoints` and
    :class:`~lit3d.metrics.photometric.DenseView` are kept, computed on first use (:meth:`save` computes them
    all and writes them to one file, which :meth:`open` reads back without the images or labels)."""

    def __init__(self, cam2world_M44: np.ndarray, load: Callable[[int], dict[str, np.ndarray]] | None,
                 max_features: int = 2000):
        self.cam2world_M44 = np.asarray(cam2world_M44, dtype=np.float64).reshape(-1, 4, 4)
        self.posed_P = np.flatnonzero(np.isfinite(self.cam2world_M44).all(axis=(1, 2)))
        if len(self.posed_P) == 0:
            raise ValueError("matching needs training views with poses; none of them has one")
        self._load, self.max_features = load, max_features
        self._views: dict[int, LabelledKeypoints] = {}
        self._dense: dict[int, DenseView] = {}

    def nearest(self, cam2world_44: np.ndarray, k: int) -> list[int]:
        """Indices of the ``k`` posed views nearest to a camera (:func:`nearest_views`)."""
        return [int(self.posed_P[i]) for i in nearest_views(cam2world_44, self.cam2world_M44[self.posed_P], k)]

    def retrieve(self, query: Keypoints, k: int, ratio: float = 0.8) -> list[int]:
        """Indices of the ``k`` posed views that share the most ratio-test matches with a query (at least one):
        views picked by what the query shows, where no pose estimate points to them. Touches every view."""
        counts_P = np.array([len(ratio_matches(query, self.view(int(j)).keypoints, ratio)[0]) for j in self.posed_P])
        order = np.argsort(-counts_P, kind="stable")[:k]
        return [int(self.posed_P[i]) for i in order if counts_P[i] > 0]

    def view(self, j: int) -> LabelledKeypoints:
        if j not in self._views:
            if self._load is None:
                raise KeyError(f"view {j} is not in this database")
            frame = self._load(j)  # one read serves both: a frame's sampled view costs a millisecond and 86 KB
            self._views[j] = labelled_keypoints(frame, self.max_features)
            self._dense[j] = dense_view(frame, self.cam2world_M44[j])
        return self._views[j]

    def dense(self, j: int) -> DenseView | None:
        """View j sampled for direct alignment; None where the database has none (a version 1 file)."""
        if j not in self._dense and self._load is not None:
            self.view(j)
        return self._dense.get(j)

    def correspondences(self, query: Keypoints, views: list[int], ratio: float = 0.8
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`match_correspondences` of a query against views ``views`` (indices, e.g. :meth:`nearest`); the
        third array holds each match's view index in this database."""
        uv_N2, pts_N3, k_N = match_correspondences(query, [self.view(j) for j in views], ratio)
        return uv_N2, pts_N3, np.asarray(views, dtype=int)[k_N]

    def save(self, path: str | Path) -> Path:
        """Every posed view's keypoints, descriptors (uint8: OpenCV's SIFT values are whole numbers up to 255),
        lifted world points and, where the database has them, its :class:`~lit3d.metrics.photometric.DenseView`
        (grey values, camera-frame points), with all poses, in one ``.npz`` written atomically."""
        feats = [self.view(int(j)) for j in self.posed_P]
        desc = np.concatenate([f.keypoints.desc_N128 for f in feats] + [np.zeros((0, 128), np.float32)])
        if desc.size and (desc.min() < 0 or desc.max() > 255 or np.any(desc != np.round(desc))):
            raise ValueError("SIFT descriptors are not whole numbers in 0..255; they cannot be stored as uint8")
        dense = [self.dense(int(j)) for j in self.posed_P]
        extra = {}
        if dense and all(d is not None for d in dense):
            pts = [d.pts_cam_hw3.reshape(-1, 3) for d in dense]
            extra = dict(dense_shape_P2=np.array([d.gray_hw.shape for d in dense], dtype=np.int64),
                         dense_stride_P=np.array([d.stride for d in dense], dtype=np.int64),
                         dense_gray=np.concatenate([d.gray_hw.ravel() for d in dense]),
                         dense_pts_cam=np.concatenate(pts).astype(np.result_type(*pts)))
        atomic_save_npz(
            path, version=np.array(VIEWS_FILE_VERSION), cam2world_M44=self.cam2world_M44,
            posed_P=self.posed_P, counts_P=np.array([len(f.pts_N3) for f in feats], dtype=np.int64),
            max_features=np.array(self.max_features), desc_N128=desc.astype(np.uint8),
            uv_N2=np.concatenate([f.keypoints.uv_N2 for f in feats] + [np.zeros((0, 2))]).astype(np.float32),
            pts_N3=np.concatenate([f.pts_N3 for f in feats] + [np.zeros((0, 3))]).astype(np.float32), **extra)
        return Path(path)

    @classmethod
    def open(cls, path: str | Path) -> "ViewDatabase":
        """A database written by :meth:`save`; a missing, corrupt or foreign file is a one-line error."""
        dense_keys = ("dense_shape_P2", "dense_stride_P", "dense_gray", "dense_pts_cam")
        try:
            with np.load(path) as z:
                if int(z["version"]) not in (1, VIEWS_FILE_VERSION):
                    raise ValueError(f"format version {int(z['version'])}, not {VIEWS_FILE_VERSION}")
                arrays = {k: z[k] for k in ("cam2world_M44", "posed_P", "counts_P", "max_features", "desc_N128",
                                            "uv_N2", "pts_N3") + tuple(k for k in dense_keys if k in z.files)}
        except FileNotFoundError:
            raise FileNotFoundError(f"training views file {path} does not exist") from None
        except Exception as e:  # a truncated zip, a missing key, a wrong version
            raise ValueError(f"training views file {path} is corrupt or not a lit3d views file ({e})") from None
        db = cls(arrays["cam2world_M44"], None, int(arrays["max_features"]))
        ends_P = np.cumsum(arrays["counts_P"])
        corrupt = ValueError(f"training views file {path} is corrupt (its views and poses disagree)")
        if not np.array_equal(arrays["posed_P"], db.posed_P) or (len(ends_P) and ends_P[-1] != len(arrays["pts_N3"])):
            raise corrupt
        for j, end, n in zip(db.posed_P, ends_P, arrays["counts_P"]):
            rows = slice(int(end - n), int(end))
            kp = Keypoints(arrays["uv_N2"][rows].astype(np.float64), arrays["desc_N128"][rows].astype(np.float32))
            db._views[int(j)] = LabelledKeypoints(kp, arrays["pts_N3"][rows].astype(np.float64))
        if any(k in arrays for k in dense_keys):  # version 2 (a posed view always exists: the constructor)
            if not all(k in arrays for k in dense_keys):
                raise corrupt
            shape_P2 = arrays["dense_shape_P2"].reshape(-1, 2)
            ends_P = np.cumsum(np.prod(shape_P2, axis=1))
            if (len(shape_P2) != len(db.posed_P) or len(arrays["dense_stride_P"]) != len(db.posed_P)
                    or not int(ends_P[-1]) == len(arrays["dense_gray"]) == len(arrays["dense_pts_cam"])):
                raise corrupt
            for j, end, (h, w), stride in zip(db.posed_P, ends_P, shape_P2, arrays["dense_stride_P"]):
                rows = slice(int(end - h * w), int(end))
                db._dense[int(j)] = DenseView(arrays["dense_gray"][rows].reshape(h, w),
                                              arrays["dense_pts_cam"][rows].reshape(h, w, 3),
                                              db.cam2world_M44[int(j)], int(stride))
        return db


@dataclass
class Refinement:
    """Outcome of :func:`refine_by_matching`: the pose kept (``result``), whether matching gave it (``adopted``),
    whether views retrieved by their matches (not picked by the prior) led to it (``retrieved``), whether direct
    alignment then moved it (``aligned``), the matches and inliers of the best matched pose (0 when none), and
    the seconds the prior's PnP, the matching and the alignment took together (``seconds``; also where the prior
    is kept)."""

    result: PnPResult
    adopted: bool
    matches: int
    inliers: int
    retrieved: bool
    seconds: float
    aligned: bool = False


@dataclass
class _Matched:
    """A matched pose and the 2D-3D matches it was solved from (``view_N``: each match's training view)."""

    pnp: PnPResult
    uv_N2: np.ndarray
    pts_N3: np.ndarray
    view_N: np.ndarray
    retrieved: bool


def _match_rounds(query: Keypoints, K_33: np.ndarray, db: ViewDatabase, first: list[int], reprojection_px: float,
                  views: int, rounds: int, ratio: float, retrieved: bool) -> _Matched | None:
    """The matched pose with the most inliers over ``rounds`` rounds: the first against views ``first``, each
    later one against the ``views`` views nearest the previous round's pose."""
    best: _Matched | None = None
    picked = first
    for _ in range(rounds):
        uv_N2, pts_N3, view_N = db.correspondences(query, picked, ratio)
        res = localize_points(pts_N3, uv_N2, K_33, reprojection_px=reprojection_px)
        if not res.ok:
            break
        if best is None or res.n_inliers > best.pnp.n_inliers:
            best = _Matched(res, uv_N2, pts_N3, view_N, retrieved)
        picked = db.nearest(res.cam2world_44, views)
    return best


def _within(matched: _Matched, K_33: np.ndarray, cam2world_44: np.ndarray, px: float) -> np.ndarray:
    """Which of the matches reproject within ``px`` pixels under a pose, (N,) bool."""
    uv_N2, _ = project(transform_points(invert_pose(cam2world_44), matched.pts_N3), np.asarray(K_33, float))
    with np.errstate(invalid="ignore"):
        return np.linalg.norm(uv_N2 - matched.uv_N2, axis=1) < px


def _aligned(image_HW3: np.ndarray, K_33: np.ndarray, matched: _Matched, db: ViewDatabase, px: float, views: int
             ) -> np.ndarray | None:
    """The matched pose refined by direct alignment against the ``views`` training views with the most of its
    inliers (views that demonstrably see what the query sees), where the database has them and the result keeps
    :data:`ALIGN_KEEP` of the matches within ``2 px`` (else None)."""
    inliers_N = _within(matched, K_33, matched.pnp.cam2world_44, px)
    picked, counts = np.unique(matched.view_N[inliers_N], return_counts=True)
    dense = [db.dense(int(j)) for j in picked[np.argsort(-counts, kind="stable")][:views]]
    if not dense or any(d is None for d in dense):
        return None
    pose = align_photometric(image_HW3, K_33, matched.pnp.cam2world_44, dense).cam2world_44
    if pose is None or _within(matched, K_33, pose, 2 * px).sum() < ALIGN_KEEP * _within(
            matched, K_33, matched.pnp.cam2world_44, 2 * px).sum():
        return None
    return pose


def refine_by_matching(image_HW3: np.ndarray, K_33: np.ndarray, prior: PnPResult, db: ViewDatabase,
                       reprojection_px: float, views: int = 10, rounds: int = 2, min_inliers: int = MIN_INLIERS,
                       ratio: float = 0.8, retrieval: bool = True, align: bool = True) -> Refinement:
    """A query's pose from SIFT matches against the training views nearest a prior estimate (a student's PnP
    pose, labels' frame): each round matches against the ``views`` views nearest the latest pose and solves
    PnP-RANSAC; the matched pose with the most inliers, if it has ``min_inliers``, replaces ``prior``.

    A second round re-picks the views around the first matched pose, so a prior some decimetres off still ends
    on the views a true pose would pick. Where that gives no pose with ``min_inliers`` (a prior too far off to
    pick views that share the query's content, or no prior pose at all) and ``retrieval`` is on, the rounds start
    again from the ``views`` views with the most matches among all (:meth:`ViewDatabase.retrieve`). Without a
    matched pose that enough matches support, ``prior`` is kept: matching never loses a frame the prior
    localized. With ``align``, a matched pose is then refined by direct alignment with every labelled pixel of
    the :data:`ALIGN_VIEWS` (at most ``views``) views holding the most of its inlier matches
    (:func:`lit3d.metrics.photometric.align_photometric`), kept where it still agrees with the matches
    (:data:`ALIGN_KEEP`).
    """
    t0 = time.perf_counter()
    query = sift_keypoints(image_HW3, db.max_features)
    tries: list[_Matched] = []
    if prior.ok:
        near = _match_rounds(query, K_33, db, db.nearest(prior.cam2world_44, views), reprojection_px, views, rounds,
                             ratio, retrieved=False)
        tries += [near] if near is not None else []
    if retrieval and not any(m.pnp.n_inliers >= min_inliers for m in tries):
        found = db.retrieve(query, views, ratio)
        far = _match_rounds(query, K_33, db, found, reprojection_px, views, rounds, ratio,
                            retrieved=True) if found else None
        tries += [far] if far is not None else []
    if not tries:
        return Refinement(prior, False, 0, 0, False, prior.seconds + time.perf_counter() - t0)
    best = max(tries, key=lambda m: m.pnp.n_inliers)
    n_matches, n_inliers = len(best.uv_N2), best.pnp.n_inliers
    if n_inliers < min_inliers:
        return Refinement(prior, False, n_matches, n_inliers, best.retrieved,
                          prior.seconds + time.perf_counter() - t0)
    pose = _aligned(image_HW3, K_33, best, db, reprojection_px, min(views, ALIGN_VIEWS)) if align else None
    seconds = prior.seconds + time.perf_counter() - t0
    result = replace(best.pnp, seconds=seconds, **({} if pose is None else {"cam2world_44": pose}))
    return Refinement(result, True, n_matches, n_inliers, best.retrieved, seconds, aligned=pose is not None)
