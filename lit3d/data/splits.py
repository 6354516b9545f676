"""Train/val/test splits of a scene: the one place every loader gets its split from (``data.split``).

Modes (``SPLIT_MODES``):

- ``interleaved``: every ``data.test_every``-th frame is test (held-out frames sit between training frames);
- ``block``: a contiguous held-out block ``data.test_block``, two frame names ``[first, last]`` (inclusive) or two
  fractions ``[start, end)`` of the kept frames (after ``data.stride`` / ``data.max_frames``);
- ``frames``: the frames named in ``data.test_frames``;
- ``path``: the synthetic scene's test frames, rendered along a second camera path (the loader passes them);
- ``official``: the dataset's own protocol (7-Scenes test sequences, 12Scenes' ``split.txt``).

``auto`` is ``official`` where the format has one, else ``frames`` when ``data.test_frames`` is set, else ``block``
when ``data.test_block`` is set, else ``path`` for the synthetic scene, else ``interleaved``. Except for
``interleaved`` (which keeps its historical validation rule), validation is every ``data.val_every``-th of the
remaining frames, skipping the first (:func:`official_split`). ``data.val_block`` replaces that rule in every mode
with a contiguous validation block (same form as ``data.test_block``), so that what is tuned or selected on
validation frames is judged on views held out like the test views (:func:`with_val_block`).
"""
from __future__ import annotations

import numpy as np

from lit3d.data.config import DataConfig
from lit3d.data.scene import SceneError, split_every

SPLIT_MODES = ("auto", "interleaved", "block", "frames", "path", "official")


def split_mode(cfg: DataConfig, fmt: str, official: bool = False, path: bool = False) -> str:
    """The concrete split mode of ``cfg`` for format ``fmt`` (``official``/``path``: what the format offers).

    Raises a one-line :class:`SceneError` naming the key for an unknown mode, a mode the format lacks, or a
    ``test_frames`` / ``test_block`` the chosen mode would silently ignore.
    """
    mode = cfg.split
    if mode not in SPLIT_MODES:
        raise SceneError(f"data.split: {mode!r} is not one of {', '.join(SPLIT_MODES)}")
    valid = [m for m in SPLIT_MODES if (m != "official" or official) and (m != "path" or path)]
    if mode not in valid:
        raise SceneError(f"data.split={mode}: data.format={fmt} has no {mode} split (valid: {', '.join(valid)})")
    if mode == "auto":
        mode = ("official" if official else "frames" if cfg.test_frames else "block" if cfg.test_block
                else "path" if path else "interleaved")
    for key, value, wants in (("test_frames", cfg.test_frames, "frames"), ("test_block", cfg.test_block, "block")):
        if value and mode != wants:
            raise SceneError(f"data.{key} is set but data.split={cfg.split} uses the {mode} split "
                             f"(set data.split={wants} to use it, or clear data.{key})")
    return mode


def official_split(n: int, test_N: np.ndarray, val_every: int) -> dict[str, np.ndarray]:
    """Given test frames, every ``val_every``-th remaining frame (skipping the first) is val, the rest train."""
    rest = np.setdiff1d(np.arange(n), test_N)
    val = rest[::val_every][1:] if val_every > 0 else rest[:0]
    return {"train": np.setdiff1d(rest, val), "val": val, "test": np.asarray(test_N, dtype=int)}


def block_indices(names: list[str], block: list, key: str = "data.test_block") -> np.ndarray:
    """Indices of the contiguous block ``key`` (two frame names, inclusive, or two fractions [start, end))."""
    if len(block) != 2:
        raise SceneError(f"{key} must be two frame names [first, last] or two fractions [start, end], "
                         f"got {len(block)} item(s)")
    first, last = (str(b) for b in block)
    n = len(names)
    if first in names and last in names:
        lo, hi = names.index(first), names.index(last) + 1
        if lo >= hi:
            raise SceneError(f"{key}: first frame {first} comes after last frame {last}")
        return np.arange(lo, hi)
    try:
        start, end = float(first), float(last)
    except ValueError:
        bad = first if first not in names else last
        raise SceneError(f"{key}: {bad!r} is not a frame of this scene (after data.stride / "
                         "data.max_frames) nor a fraction") from None
    if not (0.0 <= start < end <= 1.0):
        raise SceneError(f"{key}: fractions [{start:g}, {end:g}] must satisfy 0 <= start < end <= 1")
    lo, hi = int(np.ceil(start * n - 1e-9)), int(np.ceil(end * n - 1e-9))  # frames k with start <= k / n < end
    if hi <= lo:
        raise SceneError(f"{key}: [{start:g}, {end:g}) of {n} frames holds no frame")
    return np.arange(lo, hi)


def frame_indices(names: list[str], test_frames: list) -> np.ndarray:
    """Indices of the frames named in ``data.test_frames``; an unknown name is an error naming the first."""
    index = {name: k for k, name in enumerate(names)}
    unknown = [str(t) for t in test_frames if str(t) not in index]
    if unknown:
        raise SceneError(f"data.test_frames: {unknown[0]!r} is not a frame of this scene (after data.stride / "
                         f"data.max_frames; {len(unknown)} unknown name(s); frames look like {names[0]!r})")
    return np.unique([index[str(t)] for t in test_frames]).astype(int)


def make_split(names: list[str], cfg: DataConfig, mode: str, test_N: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """The train/val/test split of the frames ``names`` in a concrete ``mode`` (from :func:`split_mode`).

    ``test_N``: the test frame indices of ``official`` and ``path`` modes, given by the loader.
    """
    split = _test_split(names, cfg, mode, test_N)
    return with_val_block(names, split, cfg.val_block) if cfg.val_block else split


def with_val_block(names: list[str], split: dict[str, np.ndarray], block: list) -> dict[str, np.ndarray]:
    """``split`` with the contiguous block ``data.val_block`` as its validation frames (replacing ``val_every``'s)
    and every other non-test frame training. A block that overlaps the test frames or leaves no training frame is
    a one-line error."""
    val = block_indices(names, block, "data.val_block")
    common = np.intersect1d(val, split["test"])
    if len(common):
        raise SceneError(f"data.val_block overlaps the test frames ({len(common)} frame(s) in common, the first "
                         f"{names[common[0]]}): validation frames must not be test frames")
    train = np.setdiff1d(np.arange(len(names)), np.union1d(split["test"], val))
    if len(train) == 0:
        raise SceneError(f"data.val_block and the test frames hold all {len(names)} frames: no training frames "
                         "are left")
    return {"train": train, "val": val, "test": split["test"]}


def _test_split(names: list[str], cfg: DataConfig, mode: str, test_N: np.ndarray | None) -> dict[str, np.ndarray]:
    n = len(names)
    if mode == "interleaved":
        return split_every(n, cfg.test_every, cfg.val_every)
    if mode in ("official", "path"):
        if test_N is None:
            raise ValueError(f"split mode {mode} needs the loader's test frames")
        return official_split(n, np.asarray(test_N, dtype=int), cfg.val_every)
    if mode == "frames":
        if not cfg.test_frames:
            raise SceneError("data.test_frames is empty: data.split=frames needs the test frame names")
        test, key = frame_indices(names, cfg.test_frames), "data.test_frames"
    elif mode == "block":
        test, key = block_indices(names, cfg.test_block), "data.test_block"
    else:
        raise SceneError(f"data.split: {mode!r} is not one of {', '.join(SPLIT_MODES)}")
    if len(test) >= n:
        raise SceneError(f"{key} holds all {n} frames: no training frames are left")
    return official_split(n, test, cfg.val_every)
