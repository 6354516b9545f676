"""Camera files of a label cache: a COLMAP model (text or binary) and a TUM trajectory.

:func:`cache_cameras` gives the cache's cameras (``cameras.npz``: the poses and intrinsics alignment used or
solved, on the label grid, in the labels' world frame and unit), derived from the frames for a cache built before
caches kept them when that is exact (dataset poses and intrinsics used as given). :func:`colmap_model` turns them
and a sample of the labels' world points (:func:`frame_points`) into a :class:`lit3d.cameras.ColmapModel`:
PINHOLE cameras (one per distinct K), one image per posed frame whose 2D points are the sampled pixels, and one
3D point per sample with a track of that single observation. :func:`write_colmap_text` /
:func:`write_colmap_binary` write any model as COLMAP reads it, :func:`write_tum` the trajectory.
"""
from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lit3d.cache.store import CAMERAS_FILE, CacheError, LabelCache
from lit3d.cameras import (COLMAP_MODELS, POINT2D_DTYPE, ColmapCamera, ColmapImage, ColmapModel, ColmapPoints, tum_line,
                           write_lines)
from lit3d.files import atomic_write_bytes
from lit3d.geometry import invert_pose, project, transform_points

log = logging.getLogger(__name__)


@dataclass
class SceneCameras:
    """The cameras of a label cache's frames."""

    names: list[str]
    """Frame names, in the cache's order."""
    cam2world_N44: np.ndarray
    """Camera-to-world poses (OpenCV axes) in ``frame`` and ``unit``; NaN for frames alignment left unposed."""
    K_N33: np.ndarray
    """Intrinsics on the label grid, pixels (centres at integer coordinates)."""
    size: tuple[int, int]
    """(H, W) of the label grid."""
    frame: str
    """World frame of poses and labels: ``dataset`` or ``first_camera``."""
    unit: str
    """Unit of poses and labels: ``m``, ``normalised``, or a dataset's own (``colmap``)."""
    component_N: np.ndarray
    """Connected component of each frame (global alignment per component; -1: in no edge)."""
    derived: bool = False
    """Read from the frames' dataset poses and K (a cache built before caches kept their cameras)."""

    @property
    def posed(self) -> np.ndarray:
        """Indices of the frames with a finite pose."""
        return np.flatnonzero(np.isfinite(self.cam2world_N44).all(axis=(1, 2)))


def cache_cameras(cache: LabelCache) -> SceneCameras:
    """The cameras a complete label cache keeps, or derived from its frames where that is exact (see module doc);
    otherwise a one-line CacheError saying how to rebuild them."""
    stored = cache.cameras()
    if stored is not None:
        return SceneCameras([str(n) for n in stored["names"]], stored["cam2world"], stored["K"],
                            tuple(int(v) for v in stored["size"]), str(stored["frame"]), str(stored["unit"]),
                            stored["component"])
    info, manifest = cache.labels_info, cache.manifest
    align = manifest["align"]
    as_given = align["method"] == "known_poses" or (
        align["method"] == "global" and align["known_pose_mode"] == "fixed" and align["use_known_intrinsics"])
    frames = [cache.load_frame(n) for n in cache.frames] if info["frame"] == "dataset" and as_given else []
    if not frames or not all(np.isfinite(f["cam2world"]).all() for f in frames):
        raise CacheError(f"label cache {cache.root} has no {CAMERAS_FILE} (built before caches kept the cameras "
                         f"alignment solved): delete {cache.root / 'labels.json'} and run lit3d label with the run's "
                         "config to align again (teacher outputs are reused)")
    log.info("label cache %s has no %s: using its frames' dataset poses and intrinsics (the ones alignment used)",
             cache.root, CAMERAS_FILE)
    return SceneCameras(list(cache.frames), np.stack([f["cam2world"] for f in frames]).astype(np.float64),
                        np.stack([f["K"] for f in frames]).astype(np.float64), tuple(frames[0]["image"].shape[:2]),
                        info["frame"], info["unit"], np.zeros(len(frames), int), derived=True)


@dataclass
class LabelPoints:
    """World points sampled from the labels, with their colour and the pixel they label."""

    xyz_P3: np.ndarray
    """World points in the labels' frame and unit."""
    rgb_P3: np.ndarray
    """uint8 colours of the cached image at ``uv``."""
    frame_P: np.ndarray
    """Index of the frame (into :class:`SceneCameras`) each point labels."""
    uv_P2: np.ndarray
    """Label-grid pixel (u, v) of each point, integer centres."""

    @staticmethod
    def concat(parts: list["LabelPoints"]) -> "LabelPoints":
        if not parts:
            return LabelPoints(np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0, int), np.zeros((0, 2)))
        return LabelPoints(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("xyz_P3", "rgb_P3", "frame_P",
                                                                                     "uv_P2")))


def points_per_frame(n_points: int, n_frames: int) -> int:
    """Samples per frame so that ``n_frames`` frames give about ``n_points`` points."""
    return math.ceil(n_points / n_frames) if n_points > 0 and n_frames > 0 else 0


def frame_points(frame: dict[str, np.ndarray], index: int, n: int, rng: np.random.Generator) -> LabelPoints:
    """Up to ``n`` of a cached frame's valid, finite label points, drawn uniformly without replacement."""
    ok_P = np.flatnonzero((frame["valid"] & np.isfinite(frame["pts_world"]).all(-1)).ravel())
    pick = np.sort(rng.choice(ok_P, min(n, len(ok_P)), replace=False))
    W = frame["valid"].shape[1]
    return LabelPoints(frame["pts_world"].reshape(-1, 3)[pick].astype(np.float64), frame["image"].reshape(-1, 3)[pick],
                       np.full(len(pick), index), np.stack([pick % W, pick // W], -1).astype(np.float64))


def colmap_model(cams: SceneCameras, points: LabelPoints | None = None) -> ColmapModel:
    """COLMAP model of the posed frames (image name ``NAME.png``) and ``points`` (see the module doc); a point's
    error is its reprojection error (px) in the frame it labels."""
    cameras: dict[int, ColmapCamera] = {}
    camera_of: dict[bytes, int] = {}
    images: dict[int, ColmapImage] = {}
    points = points or LabelPoints.concat([])
    image_ids, point_ids = np.zeros(len(cams.names), int), np.arange(1, len(points.xyz_P3) + 1)
    error_P = np.zeros(len(points.xyz_P3))
    for image_id, k in enumerate(cams.posed, start=1):
        K = np.asarray(cams.K_N33[k], np.float64)
        cam_id = camera_of.setdefault(K.tobytes(), len(camera_of) + 1)  # frames with equal K share one camera
        cameras.setdefault(cam_id, ColmapCamera.pinhole(K, cams.size))
        mine = np.flatnonzero(points.frame_P == k)
        uv_cam, _ = project(transform_points(invert_pose(cams.cam2world_N44[k]), points.xyz_P3[mine]), K)
        error_P[mine] = np.linalg.norm(uv_cam - points.uv_P2[mine], axis=1)
        images[image_id] = ColmapImage.from_pose(f"{cams.names[k]}.png", cam_id, cams.cam2world_N44[k],
                                                 points.uv_P2[mine] + 0.5, point_ids[mine])
        image_ids[k] = image_id
    # each point is observed once: by the frame it labels, as the n-th of that image's 2D points
    index_in_image = np.zeros(len(point_ids), int)
    for k in np.unique(points.frame_P):
        mine = np.flatnonzero(points.frame_P == k)
        index_in_image[mine] = np.arange(len(mine))
    tracks = [np.array([[image_ids[k], i]]) for k, i in zip(points.frame_P, index_in_image)]
    return ColmapModel(cameras, images, ColmapPoints(point_ids, points.xyz_P3, points.rgb_P3.astype(np.uint8),
                                                     np.nan_to_num(error_P, nan=-1.0), tracks))


def _check_points(model: ColmapModel) -> ColmapPoints:
    """The model's points; every track must name an image of the model."""
    pts = model.points
    for pid, track in zip(pts.ids_P, pts.tracks):
        if len(track) and not set(track[:, 0].tolist()) <= model.images.keys():
            raise ValueError(f"COLMAP model: point {pid} is observed by an image the model lacks")
    return pts


def write_colmap_text(folder: str | Path, model: ColmapModel) -> list[Path]:
    """``cameras.txt``, ``images.txt``, ``points3D.txt`` (COLMAP's text model) in ``folder``, each atomically."""
    folder, pts = Path(folder), _check_points(model)
    num = lambda v: repr(float(v))  # noqa: E731  (shortest text that reads back to the same float)
    cams = [cam.line(cam_id) for cam_id, cam in sorted(model.cameras.items())]
    images = []
    for image_id, im in sorted(model.images.items()):
        images.append(" ".join([str(image_id), *map(num, (*im.qvec, *im.tvec)), str(im.camera_id), im.name]))
        images.append(" ".join(f"{num(x)} {num(y)} {int(p)}" for (x, y), p in zip(im.xys_P2, im.point3D_ids_P)))
    points = [" ".join([str(int(pid)), *map(num, xyz), *map(str, rgb.tolist()), num(err),
                        *(str(int(v)) for v in track.ravel())])
              for pid, xyz, rgb, err, track in zip(pts.ids_P, pts.xyz_P3, pts.rgb_P3, pts.error_P, pts.tracks)]
    n_obs = sum(len(im.xys_P2) for im in model.images.values())
    files = {
        "cameras.txt": (cams, "Camera list with one line of data per camera:\n  CAMERA_ID, MODEL, WIDTH, HEIGHT, "
                              f"PARAMS[]\nNumber of cameras: {len(cams)}"),
        "images.txt": (images, "Image list with two lines of data per image:\n  IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, "
                               "CAMERA_ID, NAME\n  POINTS2D[] as (X, Y, POINT3D_ID)\nNumber of images: "
                               f"{len(model.images)}, mean observations per image: "
                               f"{n_obs / max(len(model.images), 1):g}"),
        "points3D.txt": (points, "3D point list with one line of data per point:\n  POINT3D_ID, X, Y, Z, R, G, B, "
                                 "ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\nNumber of points: "
                                 f"{len(points)}, mean track length: "
                                 f"{np.mean([len(t) for t in pts.tracks]) if pts.tracks else 0:g}"),
    }
    for name, (lines, header) in files.items():
        write_lines(folder / name, lines, header)
    return [folder / name for name in files]


def write_colmap_binary(folder: str | Path, model: ColmapModel) -> list[Path]:
    """``cameras.bin``, ``images.bin``, ``points3D.bin`` (COLMAP's binary model, little-endian) in ``folder``."""
    folder, pts, model_ids = Path(folder), _check_points(model), {m: i for i, m in enumerate(COLMAP_MODELS)}
    cams = [struct.pack("<Q", len(model.cameras))]
    for cam_id, cam in sorted(model.cameras.items()):
        cams += [struct.pack("<iiQQ", cam_id, model_ids[cam.model], cam.width, cam.height),
                 np.asarray(cam.params, "<f8").tobytes()]
    images = [struct.pack("<Q", len(model.images))]
    for image_id, im in sorted(model.images.items()):
        xy = np.zeros(len(im.xys_P2), POINT2D_DTYPE)
        xy["x"], xy["y"], xy["point3D_id"] = im.xys_P2[:, 0], im.xys_P2[:, 1], im.point3D_ids_P
        images += [struct.pack("<i7di", image_id, *im.qvec, *im.tvec, im.camera_id), im.name.encode() + b"\0",
                   struct.pack("<Q", len(xy)), xy.tobytes()]
    points = [struct.pack("<Q", len(pts.ids_P))]
    for pid, xyz, rgb, err, track in zip(pts.ids_P, pts.xyz_P3, pts.rgb_P3, pts.error_P, pts.tracks):
        points += [struct.pack("<Q3d3Bd", int(pid), *xyz, *rgb.tolist(), err), struct.pack("<Q", len(track)),
                   np.asarray(track, "<i4").tobytes()]
    files = {"cameras.bin": cams, "images.bin": images, "points3D.bin": points}
    for name, chunks in files.items():
        atomic_write_bytes(folder / name, b"".join(chunks))
    return [folder / name for name in files]


def write_tum(path: str | Path, cams: SceneCameras) -> Path:
    """TUM trajectory of the posed frames: ``index tx ty tz qx qy qz qw`` (camera-to-world), the index being the
    frame's position in the cache's frame list; the header names each index's frame (``# index name``)."""
    header = [f"lit3d label cache cameras: index tx ty tz qx qy qz qw (camera-to-world), frame {cams.frame}, "
              f"unit {cams.unit}", "index name:", *(f"{k} {cams.names[k]}" for k in cams.posed)]
    write_lines(path, [tum_line(k, cams.cam2world_N44[k]) for k in cams.posed], "\n".join(header))
    return Path(path)


def write_png(path: str | Path, image_HW3: np.ndarray) -> None:
    """uint8 RGB image as PNG, atomically."""
    buf = io.BytesIO()
    Image.fromarray(image_HW3).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
