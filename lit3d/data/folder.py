"""``folder``: one flat folder of RGB-D frames in the 7-Scenes / 12Scenes naming (e.g. the shared kitchen sample).

Layout of ``data.root``::

    camera-intrinsics.txt        3x3 K in pixels at the images' native size (``data.intrinsics`` overrides)
    frame-XXXXXX.color.jpg|png   RGB, all frames the same size
    frame-XXXXXX.depth.png       uint16 z-depth, ``data.depth_scale`` units per metre, 0 and 65535 = invalid,
                                 registered to the colour image unless ``data.depth_intrinsics`` gives the
                                 depth camera's own K and ``data.depth_extrinsics`` its offset (optional: all
                                 frames or none)
    frame-XXXXXX.pose.txt        4x4 camera-to-world, metres, of the colour camera (``data.pose_camera=depth``:
                                 of the depth camera; optional: all frames or none)

No official split: ``data.split`` picks interleaved (every ``data.test_every``-th frame), a contiguous block
(``data.test_block``) or named frames (``data.test_frames``); see :mod:`lit3d.data.splits`. The helpers here
(``subsample``, ``lazy_rgb``, ``lazy_depth``) are shared by the other real-data loaders.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from lit3d.data import FORMATS
from lit3d.data.config import DataConfig
from lit3d.data.io import (image_size, list_frame_files, project_depth, read_depth_png, read_extrinsics,
                           read_intrinsics, read_poses, read_rgb, resample_depth, resize_rgb)
from lit3d.data.scene import Scene, SceneError
from lit3d.data.splits import make_split, split_mode
from lit3d.geometry import scale_intrinsics

log = logging.getLogger(__name__)


def subsample(n: int, cfg: DataConfig) -> np.ndarray:
    """Indices kept out of ``n`` sorted frames: every ``stride``-th, then the first ``max_frames``."""
    if cfg.stride < 1:
        raise SceneError(f"data.stride must be >= 1, got {cfg.stride}")
    keep = np.arange(n)[:: cfg.stride]
    return keep[: cfg.max_frames] if cfg.max_frames > 0 else keep


def lazy_rgb(paths: list[Path], native_size: tuple[int, int] | None,
             size: tuple[int, int]) -> Callable[[int], np.ndarray]:
    """Frame index -> (H, W, 3) uint8 at ``size``; a file not of ``native_size`` (H, W) is an error naming it."""

    def read(i: int) -> np.ndarray:
        rgb = read_rgb(paths[i])
        if native_size is not None and rgb.shape[:2] != tuple(native_size):
            raise SceneError(f"{paths[i]}: image is {rgb.shape[1]}x{rgb.shape[0]}, expected "
                             f"{native_size[1]}x{native_size[0]} (WxH) like the scene's other frames")
        return resize_rgb(rgb, size)

    return read


def lazy_depth(paths: list[Path], native_size: tuple[int, int], K_src_33: np.ndarray, K_dst_33: np.ndarray,
               size: tuple[int, int], scale: float, invalid: tuple[int, ...] = (0, 65535),
               dst_from_src_44: np.ndarray | None = None, K_dst_native_33: np.ndarray | None = None
               ) -> Callable[[int], np.ndarray]:
    """Frame index -> (H, W) float32 metres at ``size``, from a depth camera ``K_src`` to the colour camera
    ``K_dst``. With ``dst_from_src`` (the sensors' extrinsics) the depth is first splatted into the colour camera
    at its native intrinsics ``K_dst_native`` and ``native_size`` (:func:`project_depth`), then re-sampled."""

    def read(i: int) -> np.ndarray:
        depth = read_depth_png(paths[i], native_size, scale, invalid)
        if dst_from_src_44 is None:
            return resample_depth(depth, K_src_33, K_dst_33, size)
        depth = project_depth(depth, K_src_33, K_dst_native_33, dst_from_src_44, native_size)
        return resample_depth(depth, K_dst_native_33, K_dst_33, size)

    return read


def depth_extrinsics(cfg: DataConfig) -> np.ndarray | None:
    """``data.depth_extrinsics`` as a 4x4 colour-from-depth transform, or None (the sensors share a centre);
    ``data.pose_camera=depth`` without it is a one-line error."""
    if not cfg.depth_extrinsics:
        if cfg.pose_camera == "depth":
            raise SceneError("data.pose_camera=depth needs data.depth_extrinsics (the depth camera's pose in the "
                             "colour camera), otherwise the two cameras are one")
        return None
    return read_extrinsics(cfg.depth_extrinsics)


def _all_or_none(root: Path, frames: dict[str, dict[str, str]], kind: str) -> bool:
    """Whether every frame has a ``kind`` file; a folder where only some do is an error naming a missing file."""
    have = [kind in files for files in frames.values()]
    if any(have) and not all(have):
        missing = next(name for name, files in frames.items() if kind not in files)
        raise SceneError(f"{root / f'{missing}.{kind}'}: missing (other frames of the folder have a {kind})")
    return all(have)


@FORMATS.register("folder", DataConfig)
def load_folder(cfg: DataConfig, cache_dir: Path) -> Scene:
    """A flat folder of ``frame-XXXXXX.*`` files (see the module doc) at ``data.resolution``."""
    root = Path(cfg.root).expanduser()
    if not cfg.root or not root.is_dir():
        raise SceneError(f"data.root: folder {cfg.root!r} not found (data.format=folder needs a frame folder)")
    mode = split_mode(cfg, "folder")
    frames = list_frame_files(root)
    frames = {name: files for name, files in frames.items() if "color.jpg" in files or "color.png" in files}
    if not frames:
        raise SceneError(f"{root}: no frames (expected frame-XXXXXX.color.jpg or .color.png files)")
    names = list(frames)
    keep = subsample(len(names), cfg)
    names = [names[k] for k in keep]
    frames = {n: frames[n] for n in names}
    color = [root / (files.get("color.jpg") or files["color.png"]) for files in frames.values()]
    native = image_size(color[0])
    K_native = read_intrinsics(Path(cfg.intrinsics) if cfg.intrinsics else root / "camera-intrinsics.txt")
    H, W = cfg.resolution
    K_33 = scale_intrinsics(K_native, W / native[1], H / native[0])
    K_depth_native = read_intrinsics(cfg.depth_intrinsics) if cfg.depth_intrinsics else K_native
    color_from_depth_44 = depth_extrinsics(cfg)
    has_depth, has_poses = _all_or_none(root, frames, "depth.png"), _all_or_none(root, frames, "pose.txt")
    poses = read_poses([root / f["pose.txt"] for f in frames.values()]) if has_poses else None
    if poses is not None and cfg.pose_camera == "depth":
        poses = poses @ np.linalg.inv(color_from_depth_44)  # the colour camera's cam2world
    depth = [root / f["depth.png"] for f in frames.values()] if has_depth else []
    log.info("folder %s: %d frames (%s depth, %s poses) at %dx%d from %dx%d", root, len(names),
             "with" if has_depth else "no", "with" if has_poses else "no", W, H, native[1], native[0])
    return Scene(
        name=f"folder/{root.resolve().name}", frame_names=names, image_size=(H, W),
        K_N33=np.repeat(K_33[None], len(names), 0), cam2world_N44=poses,
        read_image=lazy_rgb(color, native, (H, W)),
        read_depth=lazy_depth(depth, native, K_depth_native, K_33, (H, W), cfg.depth_scale,
                              dst_from_src_44=color_from_depth_44, K_dst_native_33=K_native) if has_depth else None,
        split=make_split(names, cfg, mode), metric=has_depth or has_poses, input_files=[color, depth],
        source={"format": "folder", "root": str(root.resolve()), "stride": cfg.stride, "max_frames": cfg.max_frames,
                "depth_scale": cfg.depth_scale, "intrinsics": cfg.intrinsics,
                # the depth K's values (the colour K's are in the fingerprint already), so editing its file
                # relabels; only when set, so label caches of registered folders keep their hash
                **({"depth_K": K_depth_native.round(6).tolist()} if cfg.depth_intrinsics else {}),
                **({"color_from_depth": color_from_depth_44.round(6).tolist(), "pose_camera": cfg.pose_camera}
                   if color_from_depth_44 is not None else {})},
    )
