"""Scenes: datasets of RGB(-D) frames with intrinsics and, when known, poses.

``load_scene(cfg.data, cache_dir)`` picks the loader registered under ``cfg.data.format``. A loader is a
function ``(DataConfig, cache_dir: Path) -> Scene`` registered with ``@FORMATS.register(name, DataConfig)``.
"""
from pathlib import Path

from lit3d.data.config import DataConfig
from lit3d.data.scene import SPLITS, Scene, SceneError, split_every
from lit3d.registry import Registry, UnknownNameError

FORMATS: Registry[Scene] = Registry("data format")

from lit3d.data import colmap, folder, images, sevenscenes, synthetic, twelvescenes  # noqa: E402,F401  (registers)


SENSOR_KEYS = {"depth_intrinsics": ("folder",), "depth_extrinsics": ("folder", "sevenscenes"),
               "pose_camera": ("folder", "sevenscenes")}
"""``data.*`` keys of separate depth and colour sensors, and the formats that read them."""


def load_scene(cfg: DataConfig, cache_dir: str | Path = "cache") -> Scene:
    """The scene that ``cfg`` describes, subsampled by ``cfg.stride`` / ``cfg.max_frames``."""
    try:
        entry = FORMATS.get(cfg.format)
    except UnknownNameError as e:
        raise SceneError(f"data.format: {e}") from None
    for key, formats in SENSOR_KEYS.items():
        if getattr(cfg, key) != getattr(DataConfig, key) and cfg.format not in formats:
            raise SceneError(f"data.{key} is set but data.format={cfg.format} does not read it (only "
                             f"{', '.join(formats)})")
    return entry.builder(cfg, Path(cache_dir))


__all__ = ["FORMATS", "SPLITS", "DataConfig", "Scene", "SceneError", "load_scene", "split_every"]
