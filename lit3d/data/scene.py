"""The ``Scene``: what every dataset loader returns and every later stage reads.

A scene is a list of frames sharing one resolution. Per frame: an RGB image, optionally a depth map (metres,
0 = invalid), 3x3 intrinsics at the scene resolution and optionally a camera-to-world pose (metres, OpenCV
camera axes). Images and depth are read lazily through the loader's reader functions, so opening a scene of
thousands of frames only parses metadata.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SPLITS = ("train", "val", "test")


class SceneError(ValueError):
    """A scene that cannot be used (missing or corrupt files, no frames, inconsistent shapes)."""


@dataclass
class Scene:
    """Frames of one scene at one resolution, with lazy image/depth readers and a train/val/test split."""

    name: str
    """Scene identifier, e.g. ``synthetic-seed0`` or ``7scenes/chess``."""
    frame_names: list[str]
    """One name per frame, unique; used as cache keys."""
    image_size: tuple[int, int]
    """(H, W) of every image and depth map returned by the readers."""
    K_N33: np.ndarray
    """Pinhole intrinsics per frame at ``image_size``, pixels."""
    read_image: Callable[[int], np.ndarray]
    """Frame index -> (H, W, 3) uint8 RGB."""
    split: dict[str, np.ndarray]
    """'train', 'val', 'test' -> sorted frame indices; every frame is in exactly one split."""
    cam2world_N44: np.ndarray | None = None
    """Camera-to-world poses (metres when ``metric``), or None when unknown."""
    read_depth: Callable[[int], np.ndarray] | None = None
    """Frame index -> (H, W) float32 z-depth in metres, 0 where invalid; None when the scene has no depth."""
    metric: bool = True
    """Whether poses and depth are in metres."""
    source: dict = field(default_factory=dict)
    """What identifies the scene's content (loader, root, options); hashed into the label cache manifest."""
    input_files: list[list] = field(default_factory=list)
    """Files the readers read: one list of paths per kind (images, depth maps), each in frame order. Their sizes and
    modification times give :meth:`frame_stamps`, so that a label cache notices a file edited in place, and their
    content :meth:`frame_digest`. Empty for generated scenes."""

    def __post_init__(self) -> None:
        n = len(self.frame_names)
        if n == 0:
            raise SceneError(f"scene {self.name!r} has no frames ({self.source.get('root', 'no root')})")
        if len(set(self.frame_names)) != n:
            raise SceneError(f"scene {self.name!r} has duplicate frame names")
        if self.K_N33.shape != (n, 3, 3):
            raise SceneError(f"scene {self.name!r}: intrinsics have shape {self.K_N33.shape}, expected ({n}, 3, 3)")
        if self.cam2world_N44 is not None:
            if self.cam2world_N44.shape != (n, 4, 4):
                raise SceneError(f"scene {self.name!r}: poses have shape {self.cam2world_N44.shape}, expected ({n}, 4, 4)")
            if not np.all(np.isfinite(self.cam2world_N44)):
                raise SceneError(f"scene {self.name!r}: poses contain NaN/inf")
        covered = np.sort(np.concatenate([np.asarray(self.split.get(s, []), dtype=int) for s in SPLITS]))
        if not np.array_equal(covered, np.arange(n)):
            raise SceneError(f"scene {self.name!r}: the train/val/test split must cover every frame exactly once")
        self.split = {s: np.asarray(self.split.get(s, []), dtype=int) for s in SPLITS}
        self.input_files = [list(kind) for kind in self.input_files if len(kind)]
        if any(len(kind) != n for kind in self.input_files):
            raise SceneError(f"scene {self.name!r}: every list of input files must have one file per frame")

    def __len__(self) -> int:
        return len(self.frame_names)

    @property
    def has_depth(self) -> bool:
        return self.read_depth is not None

    @property
    def has_poses(self) -> bool:
        return self.cam2world_N44 is not None

    def fingerprint(self) -> str:
        """Hash of what determines the scene as the pipeline sees it: names, sizes, K, poses and the loader's
        options. The content of the input files is tracked per frame by :meth:`frame_stamps`."""
        h = hashlib.sha256()
        h.update(json.dumps({"name": self.name, "size": self.image_size, "frames": self.frame_names,
                             "source": self.source}, sort_keys=True, default=str).encode())
        h.update(np.ascontiguousarray(self.K_N33, dtype=np.float64).tobytes())
        if self.cam2world_N44 is not None:
            h.update(np.ascontiguousarray(self.cam2world_N44, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def frame_stamps(self) -> list[str]:
        """Per frame, a hash of its input files' paths, sizes and mtime_ns (one ``stat`` per file, no content read):
        it changes when a file is edited or replaced. Empty strings for a scene without input files."""
        stamps = []
        for files in zip(*self.input_files) if self.input_files else [()] * len(self):
            h = hashlib.sha256()
            for path in files:
                try:
                    st = os.stat(path)
                except OSError as e:
                    raise SceneError(f"{path}: cannot read input file ({e.strerror})") from None
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            stamps.append(h.hexdigest()[:16] if files else "")
        return stamps

    def frame_digest(self, i: int) -> str:
        """SHA-256 of the content of frame ``i``'s input files: tells a copied or touched file (new
        :meth:`frame_stamps`, same content) from an edited one. Reads the files; empty for a generated scene."""
        h = hashlib.sha256()
        for kind in self.input_files:
            try:
                with open(kind[i], "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
            except OSError as e:
                raise SceneError(f"{kind[i]}: cannot read input file ({e.strerror})") from None
        return h.hexdigest() if self.input_files else ""


def split_every(n: int, test_every: int, val_every: int = 0, offset: int = 0) -> dict[str, np.ndarray]:
    """Interleaved split: every ``test_every``-th frame is test, every ``val_every``-th of the rest is val.

    Frames are consecutive along a camera path, so held-out frames sit between training frames (as in 7-Scenes'
    sample and the paper's setup); with 0 a split is empty.
    """
    idx = np.arange(n)
    test = idx[(idx - offset) % test_every == test_every // 2] if test_every > 0 else idx[:0]
    rest = np.setdiff1d(idx, test)
    val = rest[::val_every][1:] if val_every > 0 else idx[:0]
    # val is subsampled from the rest so it never collides with test
    train = np.setdiff1d(rest, val)
    return {"train": train, "val": val, "test": test}
