"""Readers with one-line errors that name the offending file.

Readers return arrays at the file's native size; ``resize_rgb`` / ``resample_depth`` bring them to the scene
resolution. Every reader raises :class:`SceneError` whose message starts with the file's path.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lit3d.data.scene import SceneError


class CorruptPoseError(SceneError):
    """A pose file holding INF/NaN: 12Scenes' marker of a frame without a pose (loaders may skip and count)."""


# --- text files: poses and intrinsics -----------------------------------------------------------------------
def _read_matrix(path: Path, rows: int, what: str) -> np.ndarray:
    """A whitespace-separated ``rows`` x ``rows`` matrix (one row per line, or all on one line), float64.

    Parsed with ``str.split`` + ``float``: ~20x faster than ``np.loadtxt`` on tiny files, which matters for
    thousands of pose files, and ``float`` reads INF/-inf/nan as 12Scenes writes them.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise SceneError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: cannot read {what} file ({e})") from None
    lines = [line.split() for line in text.splitlines() if line.strip()]
    shape = [len(line) for line in lines]
    if shape not in ([rows] * rows, [rows * rows]):
        raise SceneError(f"{path}: {what} is not a {rows}x{rows} matrix (rows of {shape} numbers)")
    try:
        values = [float(v) for line in lines for v in line]
    except ValueError as e:
        raise SceneError(f"{path}: {what} has a non-numeric entry ({e})") from None
    return np.array(values, dtype=np.float64).reshape(rows, rows)


def rigid_error(T_N44: np.ndarray) -> np.ndarray:
    """(N,) largest deviation of each 4x4 from a rigid transform: R R^T - I, det R - 1 and the last row."""
    T_N44 = np.asarray(T_N44, dtype=np.float64).reshape(-1, 4, 4)
    R = T_N44[:, :3, :3]
    ortho = np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)).max((1, 2))
    last = np.abs(T_N44[:, 3] - [0, 0, 0, 1]).max(1)
    return np.maximum(np.maximum(ortho, last), np.abs(np.linalg.det(R) - 1))


def read_pose(path: str | Path, atol: float | None = 1e-2) -> np.ndarray:
    """Camera-to-world (4, 4) from a text file (metres, row-major).

    Raises :class:`CorruptPoseError` for INF/NaN entries (12Scenes' convention for untracked frames) and
    :class:`SceneError` for anything else that is not a rigid transform within ``atol`` (poses written with 7
    digits deviate by ~1e-4; None skips the check, for callers that check many poses at once with
    :func:`read_poses`).
    """
    T_44 = _read_matrix(Path(path), 4, "pose")
    if not np.isfinite(T_44).all():
        raise CorruptPoseError(f"{path}: pose contains INF/NaN")
    if atol is not None and rigid_error(T_44)[0] > atol:
        raise SceneError(f"{path}: pose is not a rigid camera-to-world transform")
    return T_44


def read_poses(paths: list[Path], atol: float = 1e-2) -> np.ndarray:
    """(N, 4, 4) poses of ``paths`` as :func:`read_pose` (the rigidity check vectorised: ~10x faster)."""
    T_N44 = np.stack([read_pose(p, atol=None) for p in paths]) if paths else np.zeros((0, 4, 4))
    bad = np.flatnonzero(rigid_error(T_N44) > atol)
    if len(bad):
        raise SceneError(f"{paths[bad[0]]}: pose is not a rigid camera-to-world transform")
    return T_N44


def read_extrinsics(path: str | Path, atol: float = 1e-3) -> np.ndarray:
    """A rigid 4x4 (metres, row-major) from a text file, e.g. the depth camera's coordinates -> the colour
    camera's; anything else (INF/NaN included) is a one-line error naming the file."""
    T_44 = _read_matrix(Path(path), 4, "extrinsics")
    if not np.isfinite(T_44).all() or rigid_error(T_44)[0] > atol:
        raise SceneError(f"{path}: extrinsics are not a rigid 4x4 transform [[R, t], [0, 0, 0, 1]] (metres)")
    return T_44


def read_intrinsics(path: str | Path) -> np.ndarray:
    """Pinhole K (3, 3) in pixels from a text file: fx 0 cx / 0 fy cy / 0 0 1."""
    K_33 = _read_matrix(Path(path), 3, "intrinsics")
    if not (np.all(np.isfinite(K_33)) and K_33[0, 0] > 0 and K_33[1, 1] > 0 and np.allclose(K_33[2], [0, 0, 1])):
        raise SceneError(f"{path}: intrinsics are not a pinhole matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    return K_33


# --- images ---------------------------------------------------------------------------------------------------
def _open_loaded(path: Path, what: str) -> Image.Image:
    """PIL image fully decoded; truncated or corrupt files raise instead of being padded with grey."""
    # PIL silently fills truncated images when this global is set (some libraries set it): force it off here
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise SceneError(f"{path}: {what} file not found") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise SceneError(f"{path}: corrupt or truncated {what} ({e})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def read_rgb(path: str | Path, exif_transpose: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; ``exif_transpose`` applies the EXIF orientation (phone photos)."""
    image = _open_loaded(Path(path), "image")
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def image_size(path: str | Path, exif_transpose: bool = False) -> tuple[int, int]:
    """(H, W) of an image from its header only (fast), after the EXIF orientation when asked."""
    try:
        with Image.open(path) as image:
            W, H = image.size
            # orientations 5-8 rotate by 90 degrees
            if exif_transpose and image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                W, H = H, W
    except FileNotFoundError:
        raise SceneError(f"{path}: image file not found") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise SceneError(f"{path}: not a readable image ({e})") from None
    return H, W


def read_depth_png(path: str | Path, expected_size: tuple[int, int] | None, scale: float = 1000.0,
                   invalid: tuple[int, ...] = (0, 65535)) -> np.ndarray:
    """(H, W) float32 z-depth in metres from a uint16 PNG of ``scale`` units per metre; ``invalid`` codes -> 0.

    ``expected_size`` (H, W) guards against a depth map of another camera or resolution (None: any size).
    """
    image = _open_loaded(Path(path), "depth PNG")
    raw = np.asarray(image)
    if image.mode not in ("I;16", "I;16B", "I;16L") or raw.ndim != 2:
        raise SceneError(f"{path}: depth PNG must be single-channel uint16, found mode {image.mode}")
    if expected_size is not None and raw.shape != tuple(expected_size):
        raise SceneError(f"{path}: depth PNG is {raw.shape[1]}x{raw.shape[0]}, expected "
                         f"{expected_size[1]}x{expected_size[0]} (WxH)")
    depth = raw.astype(np.float32) / np.float32(scale)
    depth[np.isin(raw, invalid)] = 0.0
    return depth


def resize_rgb(rgb_HW3: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Colour at ``size`` (H, W): area averaging when shrinking (anti-aliased), bilinear when enlarging."""
    H, W = rgb_HW3.shape[:2]
    h, w = size
    if (H, W) == (h, w):
        return rgb_HW3
    interpolation = cv2.INTER_AREA if w <= W and h <= H else cv2.INTER_LINEAR
    return cv2.resize(rgb_HW3, (w, h), interpolation=interpolation)


def resample_depth(depth_HW: np.ndarray, K_src_33: np.ndarray, K_dst_33: np.ndarray,
                   size: tuple[int, int]) -> np.ndarray:
    """Depth seen by a camera with the same centre and axes as the source and intrinsics ``K_dst`` at ``size``.

    Nearest neighbour (interpolating depth invents points across object edges); target pixels that fall
    outside the source get 0 (invalid). Covers plain resizing (``K_dst`` = scaled ``K_src``) and registering a
    depth camera to a colour camera that differ only in intrinsics (7-Scenes).
    """
    H, W = depth_HW.shape
    h, w = size
    u_src = (np.arange(w) - K_dst_33[0, 2]) / K_dst_33[0, 0] * K_src_33[0, 0] + K_src_33[0, 2]
    v_src = (np.arange(h) - K_dst_33[1, 2]) / K_dst_33[1, 1] * K_src_33[1, 1] + K_src_33[1, 2]
    # +1e-6: exact ties (integer scale factors) round up, like ``floor((u + 0.5) * W / w)``
    cols, rows = np.floor(u_src + 0.5 + 1e-6).astype(int), np.floor(v_src + 0.5 + 1e-6).astype(int)
    ok_cols, ok_rows = (cols >= 0) & (cols < W), (rows >= 0) & (rows < H)
    out = depth_HW[np.ix_(np.clip(rows, 0, H - 1), np.clip(cols, 0, W - 1))].astype(np.float32)
    out[~ok_rows, :] = 0.0
    out[:, ~ok_cols] = 0.0
    return out


def project_depth(depth_HW: np.ndarray, K_src_33: np.ndarray, K_dst_33: np.ndarray, dst_from_src_44: np.ndarray,
                  size: tuple[int, int]) -> np.ndarray:
    """Depth (z in the destination camera, metres) seen by a camera ``dst_from_src`` away from the source, at
    ``size`` with intrinsics ``K_dst``: for depth and colour sensors a few centimetres apart.

    Every valid source pixel is lifted to 3-D, moved into the destination camera and splatted onto the pixel
    nearest its projection; where several land, the nearest surface wins (a z-buffer). Pixels no point reaches
    (disocclusions, outside the source view) get 0 (invalid). Meant for ``size`` no finer than the source's
    sampling (then no cracks open); :func:`resample_depth` takes the result to coarser grids.
    """
    h, w = size
    v, u = np.nonzero(depth_HW > 0)
    z = depth_HW[v, u].astype(np.float64)
    rays_N3 = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K_src_33).T
    pts_N3 = (rays_N3 * z[:, None]) @ dst_from_src_44[:3, :3].T + dst_from_src_44[:3, 3]
    z_dst = pts_N3[:, 2]
    front = z_dst > 1e-6
    uvw_N3 = pts_N3[front] @ K_dst_33.T
    cols = np.floor(uvw_N3[:, 0] / uvw_N3[:, 2] + 0.5).astype(np.int64)
    rows = np.floor(uvw_N3[:, 1] / uvw_N3[:, 2] + 0.5).astype(np.int64)
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    out = np.full(h * w, np.inf)
    np.minimum.at(out, rows[inside] * w + cols[inside], z_dst[front][inside])
    out[np.isinf(out)] = 0.0
    return out.reshape(h, w).astype(np.float32)


# --- frame folders ----------------------------------------------------------------------------------------------
FRAME_FILE = re.compile(r"^(frame-\d+)\.(color\.jpg|color\.png|depth\.png|pose\.txt)$")


def list_frame_files(folder: str | Path) -> dict[str, dict[str, str]]:
    """``frame-XXXXXX`` -> {'color.jpg' | 'color.png' | 'depth.png' | 'pose.txt': file name}, sorted by name.

    One ``scandir`` (no per-file stat), so listing thousands of frames takes milliseconds.
    """
    frames: dict[str, dict[str, str]] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                m = FRAME_FILE.match(entry.name)
                if m:
                    frames.setdefault(m.group(1), {})[m.group(2)] = entry.name
    except (FileNotFoundError, NotADirectoryError):
        raise SceneError(f"{folder}: folder not found") from None
    return dict(sorted(frames.items()))
