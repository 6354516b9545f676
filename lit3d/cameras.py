"""Camera files: intrinsics (K.txt, per-image lists, COLMAP ``cameras.txt``) and pose files (hloc, TUM).

Conventions: K (3, 3) in pixels of the image as stored after its EXIF orientation, pixel centres at integer
coordinates (COLMAP's pixel centres are at +0.5: converted on reading). Poses are camera-to-world 4x4 in the
model's world frame and unit (OpenCV camera axes); files store them as their tools expect:

- hloc / visuallocalization.net: ``name qw qx qy qz tx ty tz``, the world-to-camera rotation (quaternion) and
  translation, one image per line (what ``hloc`` writes and the benchmark reads);
- TUM RGB-D: ``timestamp tx ty tz qx qy qz qw``, the camera-to-world pose (camera centre and orientation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lit3d.data.io import atomic_write_bytes
from lit3d.geometry import invert_pose, quaternion_to_rotation, rotation_to_quaternion

COLMAP_MODELS = {  # model name -> number of parameters; the first ones are f (or fx, fy), cx, cy
    "SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8, "OPENCV_FISHEYE": 8,
    "FULL_OPENCV": 12, "FOV": 5, "SIMPLE_RADIAL_FISHEYE": 4, "RADIAL_FISHEYE": 5, "THIN_PRISM_FISHEYE": 12,
}
"""COLMAP camera models read by :func:`read_colmap_cameras` (distortion parameters are ignored)."""
ONE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")
"""Models with one focal length (params f, cx, cy, ...); the others start fx, fy, cx, cy."""


class CameraFileError(ValueError):
    """A camera or pose file that cannot be used; the message starts with the file's path."""


def check_intrinsics(K_33: np.ndarray, what: str) -> np.ndarray:
    """``K_33`` as float64 if it is a finite pinhole matrix with positive focal lengths, else CameraFileError."""
    K = np.asarray(K_33, dtype=np.float64)
    if (K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0
            or not np.allclose(K[2], [0, 0, 1]) or abs(np.linalg.det(K)) < 1e-12):
        raise CameraFileError(f"{what}: intrinsics are not an invertible pinhole matrix [[fx, 0, cx], [0, fy, cy], "
                              f"[0, 0, 1]] with fx, fy > 0")
    return K


def _lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CameraFileError(f"{path}: cannot read ({e})") from None
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _floats(path: Path, words: list[str]) -> list[float]:
    try:
        return [float(w) for w in words]
    except ValueError as e:
        raise CameraFileError(f"{path}: non-numeric entry ({e})") from None


def read_colmap_cameras(path: str | Path) -> dict[int, tuple[np.ndarray, tuple[int, int]]]:
    """COLMAP ``cameras.txt``: camera id -> (K (3, 3) with lit3d's pixel centres, (height, width))."""
    path = Path(path)
    cameras = {}
    for words in _lines(path):
        if len(words) < 5 or words[1] not in COLMAP_MODELS:
            raise CameraFileError(f"{path}: not a COLMAP cameras.txt line: {' '.join(words)!r} (models: "
                                  f"{', '.join(COLMAP_MODELS)})")
        cam_id, model = int(words[0]), words[1]
        w, h, *params = _floats(path, words[2:])
        if len(params) != COLMAP_MODELS[model]:
            raise CameraFileError(f"{path}: camera {cam_id} ({model}) has {len(params)} parameters, expected "
                                  f"{COLMAP_MODELS[model]}")
        fx, fy, cx, cy = (params[:1] * 2 + params[1:3]) if model in ONE_FOCAL else params[:4]
        K = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]])
        cameras[cam_id] = (check_intrinsics(K, f"{path} camera {cam_id}"), (int(h), int(w)))
    if not cameras:
        raise CameraFileError(f"{path}: no cameras")
    return cameras


def read_colmap_image_cameras(path: str | Path) -> dict[str, int]:
    """COLMAP ``images.txt``: image name -> camera id (every other line holds the 2D points and is skipped)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise CameraFileError(f"{path}: cannot read ({e})") from None
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    out = {}
    for line in lines[::2]:
        words = line.split()
        if len(words) >= 10:
            out[words[9]] = int(words[8])
    return out


def write_colmap_cameras(path: str | Path, cameras: dict[int, tuple[np.ndarray, tuple[int, int]]]) -> None:
    """COLMAP ``cameras.txt`` of PINHOLE cameras: id -> (K with lit3d's pixel centres, (height, width))."""
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    for cam_id, (K, (h, w)) in sorted(cameras.items()):
        fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5))
        lines.append(f"{cam_id} PINHOLE {w} {h} {fx!r} {fy!r} {cx!r} {cy!r}")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_intrinsics_list(path: str | Path) -> dict[str, np.ndarray]:
    """Per-image intrinsics, one image a line: ``NAME fx fy cx cy`` or ``NAME k11 k12 ... k33``."""
    path = Path(path)
    out = {}
    for words in _lines(path):
        if len(words) not in (5, 10):
            raise CameraFileError(f"{path}: expected 'NAME fx fy cx cy' or 'NAME' and 9 numbers per line, got "
                                  f"{' '.join(words)!r}")
        v = _floats(path, words[1:])
        K = np.array([[v[0], 0, v[2]], [0, v[1], v[3]], [0, 0, 1]]) if len(v) == 4 else np.reshape(v, (3, 3))
        out[words[0]] = check_intrinsics(K, f"{path} ({words[0]})")
    if not out:
        raise CameraFileError(f"{path}: no intrinsics")
    return out


# --- pose files -----------------------------------------------------------------------------------------------
def hloc_line(name: str, cam2world_44: np.ndarray) -> str:
    """``name qw qx qy qz tx ty tz`` of the world-to-camera transform (hloc / visuallocalization.net)."""
    w2c = invert_pose(np.asarray(cam2world_44, dtype=np.float64))
    q, t = rotation_to_quaternion(w2c[:3, :3]), w2c[:3, 3]
    return " ".join([name, *(repr(float(x)) for x in (*q, *t))])


def tum_line(timestamp: float, cam2world_44: np.ndarray) -> str:
    """``timestamp tx ty tz qx qy qz qw`` of the camera-to-world pose (TUM RGB-D trajectory)."""
    T = np.asarray(cam2world_44, dtype=np.float64)
    qw, qx, qy, qz = rotation_to_quaternion(T[:3, :3])
    return " ".join(repr(float(x)) for x in (timestamp, *T[:3, 3], qx, qy, qz, qw))


def read_hloc_poses(path: str | Path) -> dict[str, np.ndarray]:
    """Camera-to-world poses of an hloc pose file (inverse of :func:`hloc_line`)."""
    path = Path(path)
    out = {}
    for words in _lines(path):
        if len(words) != 8:
            raise CameraFileError(f"{path}: expected 'name qw qx qy qz tx ty tz', got {' '.join(words)!r}")
        v = _floats(path, words[1:])
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = quaternion_to_rotation(v[:4]), v[4:]
        out[words[0]] = invert_pose(w2c)
    return out


def write_lines(path: str | Path, lines: list[str], header: str = "") -> None:
    """Text file of ``lines`` (after ``# header`` lines), written atomically."""
    head = [f"# {h}" for h in header.splitlines()] if header else []
    atomic_write_bytes(path, ("\n".join(head + lines) + ("\n" if head or lines else "")).encode())
