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


def load_scene(cfg: DataConfig, cache_dir: str | Path = "cache") -> Scene:
    """The scene that ``cfg`` describes, subsampled by ``cfg.stride`` / ``cfg.max_frames``."""
    try:
        entry = FORMATS.get(cfg.format)
    except UnknownNameError as e:
        raise SceneError(f"data.format: {e}") from None
    return entry.builder(cfg, Path(cache_dir))


__all__ = ["FORMATS", "SPLITS", "DataConfig", "Scene", "SceneError", "load_scene", "split_every"]
