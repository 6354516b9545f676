"""``images``: a folder of plain photos (``*.jpg``, ``*.jpeg``, ``*.png``), no depth and no poses.

Only a learned teacher (``teacher=dust3r`` with ``align.method=global``) can label such a scene. Frames are the
image files sorted by name (frame name = file stem), EXIF orientation applied (phone photos), each resized to
``data.resolution``. Intrinsics: a given ``data.intrinsics`` file (3x3, pixels, at the images' native size; all
images from that one camera), else a pinhole with the principal point at the image centre and the focal length
giving a horizontal field of view of ``data.hfov_deg`` (default 60 deg) at each image's native size. Split as
``folder`` (``data.split``: interleaved, block or frames).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from lit3d.data import FORMATS
from lit3d.data.config import DataConfig
from lit3d.data.folder import subsample
from lit3d.data.io import image_size, read_intrinsics, read_rgb, resize_rgb
from lit3d.data.scene import Scene, SceneError
from lit3d.data.splits import make_split, split_mode
from lit3d.geometry import scale_intrinsics

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png")


def fov_intrinsics(height: int, width: int, hfov_deg: float) -> np.ndarray:
    """K (3, 3) of a pinhole with horizontal field of view ``hfov_deg``, square pixels, centred principal point."""
    if not 0 < hfov_deg < 180:
        raise SceneError(f"data.hfov_deg must be in (0, 180) degrees, got {hfov_deg}")
    f = (width / 2) / np.tan(np.radians(hfov_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])


@FORMATS.register("images", DataConfig)
def load_images(cfg: DataConfig, cache_dir: Path) -> Scene:
    """Plain images of ``data.root`` (see the module doc) at ``data.resolution``."""
    root = Path(cfg.root).expanduser()
    if not cfg.root or not root.is_dir():
        raise SceneError(f"data.root: folder {cfg.root!r} not found (data.format=images needs an image folder)")
    mode = split_mode(cfg, "images")
    with os.scandir(root) as entries:
        files = sorted(e.name for e in entries if e.name.lower().endswith(EXTENSIONS) and not e.name.startswith("."))
    if not files:
        raise SceneError(f"{root}: no frames (expected image files ending in {', '.join(EXTENSIONS)})")
    files = [files[k] for k in subsample(len(files), cfg)]
    paths = [root / f for f in files]
    names = [Path(f).stem for f in files]
    K_given = read_intrinsics(cfg.intrinsics) if cfg.intrinsics else None
    H, W = cfg.resolution
    K_N33 = np.empty((len(paths), 3, 3))
    for k, path in enumerate(paths):  # header reads only: sizes can differ from image to image
        h0, w0 = image_size(path, exif_transpose=True)
        K_native = K_given if K_given is not None else fov_intrinsics(h0, w0, cfg.hfov_deg)
        K_N33[k] = scale_intrinsics(K_native, W / w0, H / h0)
    log.info("images %s: %d frames at %dx%d (%s)", root, len(names), W, H,
             f"K from {cfg.intrinsics}" if cfg.intrinsics else f"K from a {cfg.hfov_deg:g} deg field of view")
    return Scene(
        name=f"images/{root.resolve().name}", frame_names=names, image_size=(H, W), K_N33=K_N33,
        read_image=lambda i: resize_rgb(read_rgb(paths[i], exif_transpose=True), (H, W)),
        split=make_split(names, cfg, mode), cam2world_N44=None, read_depth=None, metric=False, input_files=[paths],
        source={"format": "images", "root": str(root.resolve()), "stride": cfg.stride, "max_frames": cfg.max_frames,
                "hfov_deg": cfg.hfov_deg, "intrinsics": cfg.intrinsics},
    )
