"""``colmap``: a scene reconstructed by COLMAP (or written by ``lit3d export-cameras``), no depth.

Layout of ``data.root``::

    sparse/0/cameras.txt, images.txt (points3D.txt)   COLMAP text model, or the binary .bin files
                                                       (``sparse/`` or ``data.root`` itself also work)
    images/NAME                                        the images named in images.txt / images.bin

Frames are the model's registered images sorted by name (frame name = NAME without its extension, ``/`` of
subfolders replaced by ``_``), resized to ``data.resolution`` with K scaled per camera. Poses are COLMAP's
world-to-camera ``qvec``/``tvec`` inverted: camera-to-world (OpenCV axes, as COLMAP's) in the model's world frame
and scale, not metres (unit ``colmap``): ``align.method=known_poses`` refuses the scene (it needs metric poses),
``align.method=global`` keeps the known poses in their frame. Camera models: SIMPLE_PINHOLE and PINHOLE as they
are; SIMPLE_RADIAL, RADIAL, OPENCV and FULL_OPENCV are undistorted on reading (OpenCV's model, same K and size;
pixels outside the distorted image are black); the fisheye and other models are an error (run COLMAP's
``image_undistorter`` first). EXIF orientation is not applied (COLMAP does not apply it either). Split as
``folder`` (``data.split``: interleaved, block or frames).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from lit3d.data import FORMATS
from lit3d.data.config import DataConfig
from lit3d.data.folder import subsample
from lit3d.data.io import read_rgb, resize_rgb
from lit3d.data.scene import Scene, SceneError
from lit3d.data.splits import make_split, split_mode
from lit3d.geometry import scale_intrinsics

log = logging.getLogger(__name__)

PINHOLE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
UNDISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
"""Models whose distortion is OpenCV's (k1, k2, p1, p2[, k3, k4, k5, k6]): undistorted when images are read."""
UNIT = "colmap"
"""Unit of the poses: the reconstruction's own scale."""


def find_model(root: Path) -> Path:
    """The folder of the COLMAP model: ``root/sparse/0``, ``root/sparse`` or ``root`` (first with cameras.*)."""
    for folder in (root / "sparse" / "0", root / "sparse", root):
        if (folder / "cameras.txt").is_file() or (folder / "cameras.bin").is_file():
            return folder
    raise SceneError(f"{root / 'sparse' / '0' / 'cameras.txt'}: not found (nor cameras.bin, nor in {root / 'sparse'} "
                     f"or {root}); data.format=colmap needs a COLMAP model")


def opencv_distortion(model: str, extra: np.ndarray) -> np.ndarray:
    """OpenCV distortion coefficients (k1, k2, p1, p2[, k3..k6]) of a COLMAP model's distortion parameters."""
    if model == "SIMPLE_RADIAL":
        return np.array([extra[0], 0.0, 0.0, 0.0])
    if model == "RADIAL":
        return np.array([extra[0], extra[1], 0.0, 0.0])
    return np.asarray(extra, dtype=np.float64)  # OPENCV: k1 k2 p1 p2; FULL_OPENCV: k1 k2 p1 p2 k3 k4 k5 k6


def image_reader(path: Path, size_hw: tuple[int, int], K_33: np.ndarray, dist: np.ndarray,
                 out_hw: tuple[int, int]) -> Callable[[], np.ndarray]:
    """() -> (H, W, 3) uint8 at ``out_hw``: the file checked against its camera's size, undistorted when ``dist``
    is not zero (maps made once per reader)."""
    maps: list = []

    def read() -> np.ndarray:
        rgb = read_rgb(path)
        if rgb.shape[:2] != tuple(size_hw):
            raise SceneError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]}, its COLMAP camera is "
                             f"{size_hw[1]}x{size_hw[0]} (WxH)")
        if np.any(dist != 0):
            if not maps:
                maps.extend(cv2.initUndistortRectifyMap(K_33, dist, None, K_33, size_hw[::-1], cv2.CV_32FC1))
            rgb = cv2.remap(rgb, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return resize_rgb(rgb, out_hw)

    return read


@FORMATS.register("colmap", DataConfig)
def load_colmap(cfg: DataConfig, cache_dir: Path) -> Scene:
    """A COLMAP model and its images (see the module doc) at ``data.resolution``."""
    from lit3d.cameras import CameraFileError, read_colmap_model  # lit3d.cameras imports lit3d.data: load late

    root = Path(cfg.root).expanduser()
    if not cfg.root or not root.is_dir():
        raise SceneError(f"data.root: folder {cfg.root!r} not found (data.format=colmap needs a folder with "
                         "sparse/0 and images)")
    mode = split_mode(cfg, "colmap")
    sparse = find_model(root)
    try:
        model = read_colmap_model(sparse, points=False)
    except CameraFileError as e:
        raise SceneError(str(e)) from None
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise SceneError(f"{images_dir}: images folder not found (data.format=colmap reads the images the model in "
                         f"{sparse} names from it)")
    images = sorted(model.images.values(), key=lambda im: im.name)
    images = [images[k] for k in subsample(len(images), cfg)]
    if not images:
        raise SceneError(f"{sparse}: the COLMAP model has no registered images")
    H, W = cfg.resolution
    names, paths, readers = [], [], []
    K_N33, poses = np.empty((len(images), 3, 3)), np.empty((len(images), 4, 4))
    for k, im in enumerate(images):
        cam = model.cameras[im.camera_id]
        if cam.model not in PINHOLE_MODELS + UNDISTORTED_MODELS:
            raise SceneError(f"{sparse}: camera {im.camera_id} uses the {cam.model} model; data.format=colmap reads "
                             f"{', '.join(PINHOLE_MODELS + UNDISTORTED_MODELS)} (undistort the images with COLMAP's "
                             "image_undistorter for the others)")
        path = images_dir / im.name
        if not path.is_file():
            raise SceneError(f"{path}: image not found (named in the COLMAP model {sparse})")
        paths.append(path)
        dist = opencv_distortion(cam.model, cam.distortion) if cam.model in UNDISTORTED_MODELS else np.zeros(4)
        readers.append(image_reader(path, (cam.height, cam.width), cam.K, dist, (H, W)))
        K_N33[k] = scale_intrinsics(cam.K, W / cam.width, H / cam.height)
        poses[k] = im.cam2world_44
        names.append(str(Path(im.name).with_suffix("")).replace("/", "_").replace("\\", "_"))
    log.info("colmap %s: %d frames, %d cameras, at %dx%d", sparse, len(names), len(model.cameras), W, H)
    return Scene(
        name=f"colmap/{root.resolve().name}", frame_names=names, image_size=(H, W), K_N33=K_N33,
        cam2world_N44=poses, read_image=lambda i: readers[i](), read_depth=None,
        split=make_split(names, cfg, mode), metric=False, input_files=[paths],
        source={"format": "colmap", "root": str(root.resolve()), "model": str(sparse.resolve()),
                "stride": cfg.stride, "max_frames": cfg.max_frames, "unit": UNIT},
    )
