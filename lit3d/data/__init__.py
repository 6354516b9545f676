"""Scenes: datasets of RGB(-D) frames with intrinsics and, when known, poses.

``load_scene(cfg.data, cache_dir)`` picks the loader registered under ``cfg.data.format``. A loader is a
function ``(DataConfig, cache_dir: Path) -> Scene`` registered with ``@FORMATS.register(name, DataConfig)``.
"""
import dataclasses
from pathlib import Path

from lit3d.data.config import DataConfig
from lit3d.data.scene import SPLITS, Scene, SceneError, split_every
from lit3d.registry import Registry, UnknownNameError

FORMATS: Registry[Scene] = Registry("data format")

from lit3d.data import colmap, folder, images, sevenscenes, synthetic, twelvescenes  # noqa: E402,F401  (registers)


SENSOR_KEYS = {"depth_intrinsics": ("folder",), "depth_extrinsics": ("folder", "sevenscenes"),
               "pose_camera": ("folder", "sevenscenes")}
"""``data.*`` keys of separate depth and colour sensors, and the formats that read them."""


SYNTHETIC_RESOLUTION = [96, 128]
"""Default (H, W) of the synthetic scene: its default run must train in about 10 minutes on 2 CPU cores."""

RECORDED_RESOLUTION = [192, 256]
"""Default (H, W) of every format of recorded images, 0.4 of VGA. On the 7-Scenes kitchen video's held-out
stretch (README, *Input resolution*) the default student localizes 88 / 91 % of the frames within 5 cm / 5 deg at
192x256 against 63 / 51 % at 96x128 (150 epochs, seeds 0 / 1), at 2.8x the training time; ACE and DSAC* work at
480 px height, where a network's fixed receptive field covers a small part of the image."""


def default_resolution(fmt: str) -> list[int]:
    """``data.resolution`` when it is left empty: (H, W) for data format ``fmt``."""
    return list(SYNTHETIC_RESOLUTION if fmt == "synthetic" else RECORDED_RESOLUTION)


def load_scene(cfg: DataConfig, cache_dir: str | Path = "cache") -> Scene:
    """The scene that ``cfg`` describes, subsampled by ``cfg.stride`` / ``cfg.max_frames``."""
    try:
        entry = FORMATS.get(cfg.format)
    except UnknownNameError as e:
        raise SceneError(f"data.format: {e}") from None
    if not cfg.resolution:
        cfg = dataclasses.replace(cfg, resolution=default_resolution(cfg.format))
    for key, formats in SENSOR_KEYS.items():
        if getattr(cfg, key) != getattr(DataConfig, key) and cfg.format not in formats:
            raise SceneError(f"data.{key} is set but data.format={cfg.format} does not read it (only "
                             f"{', '.join(formats)})")
    return entry.builder(cfg, Path(cache_dir))


__all__ = ["FORMATS", "SPLITS", "DataConfig", "Scene", "SceneError", "default_resolution", "load_scene",
           "split_every"]
