"""``external`` teacher: world pointmaps made elsewhere (any model, any resolution) imported into the label cache.

Layout of the folder ``teacher.path``::

    external.json       {"frame": "dataset" | "first_camera" | "other", "unit": "m" | "normalised",
                         "source": "free text: the model and settings that made the labels"}
    <frame name>.npz    one file per labelled frame (names as the scene's, e.g. frame-000010.npz), holding EITHER
        pts_world       (h, w, 3) world points of the frame's pixels, in ``frame`` and ``unit``
      OR
        depth           (h, w) z-depth along the optical axis, in ``unit``; 0 = no depth
        K               (3, 3) intrinsics of this (h, w) grid, pixels, pixel centres at integer coordinates
        cam2world       (4, 4) camera-to-world pose in ``frame`` and ``unit`` (then points = pose @ backprojection)
      and optionally
        conf            (h, w) confidence >= 1 (lit3d's contract; absent: ``teacher.confidence`` where valid)
        valid           (h, w) bool; absent: every pixel (pointmaps) or depth != 0 (depth maps)

``frame`` says which world frame the labels are in: ``dataset`` (the scene's poses; only then can they be scored
against the dataset's geometry), ``first_camera`` (the first camera at the origin) or ``other``. ``unit`` is ``m``
(metres: the teacher is metric) or ``normalised`` (any fixed scale). A label map covers the whole image: any size
whose aspect ratio is within 2 % of the frame's is resampled to the label grid exactly as the data module resamples
labels (perspective-correct on one surface, else the nearest valid label); nothing is cropped. Pixels marked
invalid may hold anything; every other value must be finite. Pixels whose confidence is below ``align.min_conf``
are invalid, as for every teacher. Every problem stops the build with one line naming the file and key.

:func:`export_cache` writes a label cache in this layout (the inverse of the import).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lit3d.align.result import AlignResult
from lit3d.files import atomic_save_npz, atomic_write_bytes
from lit3d.geometry import backproject_depth, scale_intrinsics, transform_points
from lit3d.teachers import TEACHERS
from lit3d.teachers.base import FrameTransform, Teacher
from lit3d.teachers.config import TeacherConfig

META_FILE = "external.json"
FRAMES = ("dataset", "first_camera", "other")
UNITS = ("m", "normalised")
ASPECT_TOL = 0.02
"""Largest relative difference between a label map's aspect ratio and the frame's."""


class ExternalLabelError(ValueError):
    """External labels that are missing, malformed or non-finite; the message is one line naming file and key."""


@dataclass
class ExternalTeacherConfig(TeacherConfig):
    name: str = "external"
    path: str = ""
    """Folder of labels made elsewhere: external.json + one <frame>.npz per labelled frame (see
    lit3d/teachers/external.py for the layout)."""
    confidence: float = 10.0
    """Confidence of valid pixels in files without ``conf``."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_meta(folder: Path) -> dict:
    path = folder / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExternalLabelError(f"{path} is missing: it states the labels' frame and unit, e.g. "
                                 '{"frame": "dataset", "unit": "m", "source": "my model"}') from None
    except (OSError, ValueError) as e:
        raise ExternalLabelError(f"{path} is unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise ExternalLabelError(f"{path} must hold a JSON object with frame, unit and source")
    for key, allowed in (("frame", FRAMES), ("unit", UNITS)):
        if meta.get(key) not in allowed:
            raise ExternalLabelError(f"{path}: {key} must be one of {', '.join(allowed)}, got {meta.get(key)!r}")
    return {"frame": meta["frame"], "unit": meta["unit"], "source": str(meta.get("source", ""))}


def _array(f, path: Path, key: str, shape: tuple, dtype=np.float64) -> np.ndarray:
    """``f[key]`` with the given shape (None = any size), as ``dtype``."""
    a = f[key]
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        want = "(" + ", ".join("h" if s is None and i == 0 else "w" if s is None else str(s)
                               for i, s in enumerate(shape)) + ")"
        raise ExternalLabelError(f"{path}: {key} has shape {a.shape}, expected {want}")
    if a.dtype.kind not in "biuf":
        raise ExternalLabelError(f"{path}: {key} has dtype {a.dtype}, expected numbers")
    return a.astype(dtype)


def _check_finite(path: Path, key: str, a: np.ndarray, where: np.ndarray) -> None:
    bad = int((~np.isfinite(a) & where.reshape(where.shape + (1,) * (a.ndim - where.ndim))).sum())
    if bad:
        raise ExternalLabelError(f"{path}: {key} has {bad} non-finite values (NaN/inf) at valid pixels; mark such "
                                 "pixels with valid=False")


def read_frame(path: Path, confidence: float) -> dict[str, np.ndarray]:
    """One external label file -> ``pts_world`` (h, w, 3) float64, ``conf`` (h, w), ``valid`` (h, w), checked."""
    try:
        f = dict(np.load(path, allow_pickle=False))
    except FileNotFoundError:
        raise ExternalLabelError(f"{path} is missing: every labelled frame needs its file") from None
    except Exception as e:  # truncated zip, not an npz, object arrays
        raise ExternalLabelError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if "pts_world" in f:
        pts = _array(f, path, "pts_world", (None, None, 3))
        hw = pts.shape[:2]
    elif "depth" in f:
        missing = [k for k in ("K", "cam2world") if k not in f]
        if missing:
            raise ExternalLabelError(f"{path}: a depth map needs {' and '.join(missing)} too")
        depth = _array(f, path, "depth", (None, None))
        hw = depth.shape
    else:
        raise ExternalLabelError(f"{path}: needs pts_world (h, w, 3), or depth (h, w) + K + cam2world; it has "
                                 f"{', '.join(sorted(f)) or 'no arrays'}")
    if "valid" in f:
        if f["valid"].dtype != bool:
            raise ExternalLabelError(f"{path}: valid has dtype {f['valid'].dtype}, expected bool")
        valid = _array(f, path, "valid", hw, bool)
    else:
        valid = np.ones(hw, bool) if "pts_world" in f else depth != 0
    if "pts_world" not in f:
        _check_finite(path, "depth", depth, valid)
        if (depth[valid] < 0).any():
            raise ExternalLabelError(f"{path}: depth has negative values at valid pixels")
        K = _array(f, path, "K", (3, 3))
        cam2world = _array(f, path, "cam2world", (4, 4))
        for key, a in (("K", K), ("cam2world", cam2world)):
            _check_finite(path, key, a, np.ones((), bool))
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ExternalLabelError(f"{path}: K has non-positive focal lengths")
        pts = transform_points(cam2world, backproject_depth(np.where(valid, depth, 0.0), K).astype(np.float64))
    _check_finite(path, "pts_world", pts, valid)
    if "conf" in f:
        conf = _array(f, path, "conf", hw)
        _check_finite(path, "conf", conf, valid)
        if (conf[valid] < 1).any():
            raise ExternalLabelError(f"{path}: conf has values below 1 at valid pixels (lit3d's confidences are >= 1, "
                                     "1 = no information): map yours, e.g. 1 + c")
    else:
        conf = np.where(valid, confidence, 1.0)
    zero = ~valid
    return {"pts_world": np.where(zero[..., None], 0.0, pts), "conf": np.where(zero, 1.0, conf), "valid": valid}


class ExternalTeacher(Teacher):
    """Reads labels made elsewhere: one world pointmap per frame, no pairs and no alignment."""

    gives_world_labels = True

    def __init__(self, cfg: ExternalTeacherConfig):
        super().__init__()
        if not cfg.path:
            raise ExternalLabelError("teacher=external needs teacher.path: the folder of external labels "
                                     "(layout: lit3d/teachers/external.py)")
        self.cfg, self.folder = cfg, Path(cfg.path).expanduser()
        if not self.folder.is_dir():
            raise ExternalLabelError(f"teacher.path {self.folder} is not a folder")
        self.meta = _read_meta(self.folder)
        self.metric = self.meta["unit"] == "m"
        files = sorted(self.folder.glob("*.npz"))
        if not files:
            raise ExternalLabelError(f"teacher.path {self.folder} holds no <frame>.npz files")
        digest = hashlib.sha256()
        for path in files:  # the labels' content identifies the cache (a changed file gives a new cache)
            digest.update(f"{path.name}:{_sha256(path)}\n".encode())
        self.files_sha256 = digest.hexdigest()

    def manifest(self) -> dict:
        return {"name": "external", "path": str(self.folder.resolve()), **self.meta,
                "confidence": self.cfg.confidence, "files_sha256": self.files_sha256}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise TypeError("teacher=external gives per-frame world labels (world_labels), not pairwise predictions")

    def world_labels(self, scene, names: list[str], transform: FrameTransform, min_conf: float) -> AlignResult:
        """World pointmaps of ``names`` (the labelled frames) on the label grid; other frames stay invalid."""
        from lit3d.cache.datamodule import resize_frame

        H, W = transform.output_size
        n = len(scene)
        pts = np.zeros((n, H, W, 3), np.float32)
        conf = np.ones((n, H, W), np.float32)
        valid = np.zeros((n, H, W), bool)
        index = {name: i for i, name in enumerate(scene.frame_names)}
        for name in names:
            path = self.folder / f"{name}.npz"
            frame = read_frame(path, self.cfg.confidence)
            h, w = frame["valid"].shape
            if abs((w / h) / (W / H) - 1) > ASPECT_TOL:
                raise ExternalLabelError(f"{path}: pts_world/depth is {h}x{w}, whose aspect ratio differs from the "
                                         f"{H}x{W} label grid's by more than {ASPECT_TOL:.0%} (maps must cover the "
                                         "whole image)")
            i = index[name]
            if (h, w) != (H, W):  # resample as the data module does, through the scene's pose when it fits
                K_label = transform.intrinsics(scene.K_N33[i])
                cam2world = scene.cam2world_N44[i] if scene.has_poses and self.meta["frame"] == "dataset" else \
                    np.full((4, 4), np.nan)
                frame = resize_frame({**frame, "image": np.zeros((h, w, 3), np.uint8), "depth": np.zeros((h, w)),
                                      "K": scale_intrinsics(K_label, w / W, h / H), "cam2world": cam2world}, (H, W))
            ok = frame["valid"] & (frame["conf"] >= min_conf)
            pts[i] = np.where(ok[..., None], frame["pts_world"], 0.0)
            conf[i] = frame["conf"]
            valid[i] = ok
        poses = scene.cam2world_N44 if scene.has_poses else np.full((n, 4, 4), np.nan)
        return AlignResult(pts, conf, valid, poses, frame=self.meta["frame"], unit=self.meta["unit"])


def export_cache(cache, folder: str | Path, source: str = "") -> Path:
    """Write the labels of a complete label cache as external labels (``pts_world``, ``conf``, ``valid``)."""
    folder = Path(folder)
    info = cache.labels_info
    meta = {"frame": info["frame"], "unit": info["unit"],
            "source": source or f"lit3d label cache {cache.root} (teacher {cache.manifest['teacher']['name']})"}
    for name in cache.frames:
        frame = cache.load_frame(name)
        atomic_save_npz(folder / f"{name}.npz", **{k: frame[k] for k in ("pts_world", "conf", "valid")})
    atomic_write_bytes(folder / META_FILE, json.dumps(meta, indent=1).encode())
    return folder


@TEACHERS.register("external", ExternalTeacherConfig)
def _build(cfg: ExternalTeacherConfig) -> ExternalTeacher:
    return ExternalTeacher(cfg)
