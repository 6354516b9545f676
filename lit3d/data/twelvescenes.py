"""``twelvescenes``: one room of 12Scenes (Valentin et al., 3DV 2016), e.g. ``data.root=.../apt1/kitchen``.

Layout of ``data.root``::

    info.txt                        ``key = value`` lines, parsed by key: m_colorWidth/Height (1296x968),
                                    m_depthWidth/Height (640x480), m_depthShift (1000 = mm),
                                    m_calibrationColorIntrinsic (4x4 row-major, fx 0 cx 0 0 fy cy 0 ...)
    split.txt                       first line ``sequence0 [frames=N] ...``: the first N frames are TEST
    data/frame-XXXXXX.color.jpg     colour at m_colorWidth x m_colorHeight
    data/frame-XXXXXX.depth.png     uint16 depth at m_depthWidth x m_depthHeight, 0 = no measurement
    data/frame-XXXXXX.pose.txt      4x4 camera-to-world, metres; INF/NaN = untracked frame (skipped, counted)

Depth is registered to colour at the lower resolution (depth K = colour K scaled by 640/1296, 480/968), so both
are resized to ``data.resolution`` and share the scaled colour K. ``data.stride`` / ``data.max_frames`` act on
the sorted frame list before corrupt poses are dropped, so the kept frame numbers do not depend on them.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from lit3d.data import FORMATS
from lit3d.data.config import DataConfig
from lit3d.data.folder import lazy_depth, lazy_rgb, subsample
from lit3d.data.io import CorruptPoseError, list_frame_files, read_pose, rigid_error
from lit3d.data.scene import Scene, SceneError
from lit3d.data.splits import make_split, split_mode
from lit3d.geometry import scale_intrinsics

log = logging.getLogger(__name__)


def read_info(path: Path) -> dict[str, str]:
    """``key = value`` pairs of a 12Scenes ``info.txt``."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SceneError(f"{path}: not found (a 12Scenes room folder has info.txt, split.txt and data/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: cannot read ({e})") from None
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines) if k.strip() and _}


def info_number(info: dict[str, str], key: str, path: Path, default: float | None = None) -> float:
    if key not in info:
        if default is not None:
            return default
        raise SceneError(f"{path}: key {key} is missing")
    try:
        return float(info[key])
    except ValueError:
        raise SceneError(f"{path}: {key} = {info[key]!r} is not a number") from None


def info_intrinsics(info: dict[str, str], key: str, path: Path) -> np.ndarray:
    """3x3 K out of the 4x4 row-major matrix stored under ``key``."""
    if key not in info:
        raise SceneError(f"{path}: key {key} is missing")
    try:
        M = np.array([float(v) for v in info[key].split()])
    except ValueError:
        raise SceneError(f"{path}: {key} has a non-numeric entry") from None
    if M.size != 16 or not np.all(np.isfinite(M)):
        raise SceneError(f"{path}: {key} must be 16 finite numbers (a 4x4 matrix), found {M.size}")
    K_33 = M.reshape(4, 4)[:3, :3]
    if K_33[0, 0] <= 0 or K_33[1, 1] <= 0 or not np.allclose(K_33[2], [0, 0, 1]):
        raise SceneError(f"{path}: {key} is not a pinhole matrix")
    return K_33


def read_test_count(path: Path) -> int:
    """N of ``[frames=N]`` on the first line of ``split.txt``: the first N frames are the test set."""
    try:
        first = path.read_text().split("\n", 1)[0]
    except FileNotFoundError:
        raise SceneError(f"{path}: not found (a 12Scenes room folder has info.txt, split.txt and data/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: cannot read ({e})") from None
    m = re.search(r"frames\s*=\s*(\d+)", first)
    if not m:
        raise SceneError(f"{path}: first line {first.strip()!r} has no [frames=N]")
    return int(m.group(1))


@FORMATS.register("twelvescenes", DataConfig)
def load_twelvescenes(cfg: DataConfig, cache_dir: Path) -> Scene:
    """One 12Scenes room folder (see the module doc) at ``data.resolution``, with the standard split."""
    root = Path(cfg.root).expanduser()
    if not cfg.root or not root.is_dir():
        raise SceneError(f"data.root: folder {cfg.root!r} not found (data.format=twelvescenes needs a room folder)")
    mode = split_mode(cfg, "twelvescenes", official=True)
    info_path = root / "info.txt"
    info = read_info(info_path)
    n_test = read_test_count(root / "split.txt")
    color_size = (int(info_number(info, "m_colorHeight", info_path)), int(info_number(info, "m_colorWidth", info_path)))
    depth_size = (int(info_number(info, "m_depthHeight", info_path)), int(info_number(info, "m_depthWidth", info_path)))
    shift = info_number(info, "m_depthShift", info_path, default=1000.0)
    K_color = info_intrinsics(info, "m_calibrationColorIntrinsic", info_path)

    frames = list_frame_files(root / "data")
    frames = {n: f for n, f in frames.items() if "color.jpg" in f}
    if not frames:
        raise SceneError(f"{root / 'data'}: no frames (expected frame-XXXXXX.color.jpg files)")
    all_names = list(frames)
    names, poses, is_test, corrupt = [], [], [], []
    for k in subsample(len(all_names), cfg):
        name = all_names[k]
        for kind in ("depth.png", "pose.txt"):
            if kind not in frames[name]:
                raise SceneError(f"{root / 'data' / name}.{kind}: missing")
        try:
            poses.append(read_pose(root / "data" / f"{name}.pose.txt", atol=None))  # rigidity: checked below
        except CorruptPoseError:
            corrupt.append(name)
            continue
        names.append(name)
        is_test.append(k < n_test)  # the standard protocol counts frames in the full sorted list
    if corrupt:
        log.warning("12Scenes %s: skipped %d of %d frames with corrupt (INF/NaN) poses, e.g. %s", root,
                    len(corrupt), len(corrupt) + len(names), corrupt[0])
    if not names:
        raise SceneError(f"{root / 'data'}: every selected frame has a corrupt pose")
    bad = np.flatnonzero(rigid_error(np.stack(poses)) > 1e-2)
    if len(bad):
        raise SceneError(f"{root / 'data' / names[bad[0]]}.pose.txt: pose is not a rigid camera-to-world transform")
    H, W = cfg.resolution
    K_33 = scale_intrinsics(K_color, W / color_size[1], H / color_size[0])
    # depth is registered to colour: its K is the colour K scaled to the depth resolution
    K_depth = scale_intrinsics(K_color, depth_size[1] / color_size[1], depth_size[0] / color_size[0])
    stems = [root / "data" / n for n in names]
    test = np.flatnonzero(is_test)
    log.info("12Scenes %s: %d frames (%d test) at %dx%d", root, len(names), len(test), W, H)
    return Scene(
        name=f"12scenes/{root.resolve().name}", frame_names=names, image_size=(H, W),
        K_N33=np.repeat(K_33[None], len(names), 0), cam2world_N44=np.stack(poses),
        read_image=lazy_rgb([Path(f"{s}.color.jpg") for s in stems], color_size, (H, W)),
        read_depth=lazy_depth([Path(f"{s}.depth.png") for s in stems], depth_size, K_depth, K_33, (H, W),
                              scale=shift),
        split=make_split(names, cfg, mode, test), metric=True,
        input_files=[[Path(f"{s}.{kind}") for s in stems] for kind in ("color.jpg", "depth.png")],
        source={"format": "twelvescenes", "root": str(root.resolve()), "stride": cfg.stride,
                "max_frames": cfg.max_frames, "skipped_corrupt_poses": len(corrupt)},
    )
