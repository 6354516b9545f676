"""``sevenscenes``: one scene of Microsoft 7-Scenes (Shotton et al., CVPR 2013), e.g. ``data.root=.../chess``.

Layout of ``data.root``::

    TrainSplit.txt, TestSplit.txt   one sequence per line: ``sequence1`` -> ``seq-01/``
    seq-XX/frame-XXXXXX.color.png   640x480 RGB
    seq-XX/frame-XXXXXX.depth.png   640x480 uint16 millimetres, 65535 (and 0) = no measurement
    seq-XX/frame-XXXXXX.pose.txt    4x4 camera-to-world (of the depth sensor), metres

There is no calibration file. The documented cameras share the principal point (320, 240); the depth camera has
f = 585 px, the colour camera f ~ 525 px (``data.intrinsics`` overrides the colour K). Frames are delivered in the
colour camera: depth is registered to it by re-sampling through the two intrinsics (nearest neighbour); colour
pixels outside the depth camera's narrower view get depth 0. By default the sensors' baseline is ignored and
poses are used as given, as common pipelines do; ``data.depth_extrinsics`` (``experiments/cameras/
7scenes_depth_to_color.txt``: 2.5 cm, measured on the kitchen) with ``data.pose_camera=depth`` moves depth into
the colour camera and the depth sensor's poses onto it (``experiment=sevenscenes`` sets both). Split
(``data.split=auto`` or ``official``): frames of the test sequences are test, every ``data.val_every``-th frame of
the others is val; interleaved, block and frames work on the frame list too. Frame names are ``seq-XX_frame-XXXXXX``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from lit3d.data import FORMATS
from lit3d.data.config import DataConfig
from lit3d.data.folder import depth_extrinsics, lazy_depth, lazy_rgb, subsample
from lit3d.data.io import list_frame_files, read_intrinsics, read_poses
from lit3d.data.scene import Scene, SceneError
from lit3d.data.splits import make_split, split_mode
from lit3d.geometry import scale_intrinsics

log = logging.getLogger(__name__)

NATIVE_SIZE = (480, 640)
K_DEPTH_33 = np.array([[585.0, 0, 320], [0, 585.0, 240], [0, 0, 1]])
K_COLOR_33 = np.array([[525.0, 0, 320], [0, 525.0, 240], [0, 0, 1]])


def read_split_file(path: Path) -> list[str]:
    """Sequence folder names (``seq-XX``) listed in a 7-Scenes split file."""
    try:
        lines = path.read_text().split()
    except FileNotFoundError:
        raise SceneError(f"{path}: split file not found (a 7-Scenes scene has TrainSplit.txt and TestSplit.txt)"
                         ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: cannot read split file ({e})") from None
    seqs = []
    for token in lines:
        m = re.fullmatch(r"sequence(\d+)", token, flags=re.IGNORECASE)
        if not m:
            raise SceneError(f"{path}: {token!r} is not a sequence name like 'sequence1'")
        seqs.append(f"seq-{int(m.group(1)):02d}")
    return seqs


@FORMATS.register("sevenscenes", DataConfig)
def load_sevenscenes(cfg: DataConfig, cache_dir: Path) -> Scene:
    """One 7-Scenes scene folder (see the module doc) at ``data.resolution``, with the official split."""
    root = Path(cfg.root).expanduser()
    if not cfg.root or not root.is_dir():
        raise SceneError(f"data.root: folder {cfg.root!r} not found (data.format=sevenscenes needs a scene folder)")
    mode = split_mode(cfg, "sevenscenes", official=True)
    train_seqs, test_seqs = read_split_file(root / "TrainSplit.txt"), read_split_file(root / "TestSplit.txt")
    if set(train_seqs) & set(test_seqs):
        raise SceneError(f"{root / 'TestSplit.txt'}: sequences {sorted(set(train_seqs) & set(test_seqs))} are "
                         "also in TrainSplit.txt")
    names, files, is_test = [], [], []
    for seq in sorted(set(train_seqs) | set(test_seqs)):
        for frame, kinds in list_frame_files(root / seq).items():
            stem = root / seq / frame
            for kind in ("color.png", "depth.png", "pose.txt"):
                if kind not in kinds:
                    raise SceneError(f"{stem}.{kind}: missing")
            names.append(f"{seq}_{frame}")
            files.append(stem)
            is_test.append(seq in test_seqs)
    if not names:
        raise SceneError(f"{root}: no frames in the sequences of its split files ({', '.join(train_seqs + test_seqs)})")
    keep = subsample(len(names), cfg)
    names, files = [names[k] for k in keep], [files[k] for k in keep]
    test = np.flatnonzero(np.asarray(is_test)[keep])
    H, W = cfg.resolution
    K_color = read_intrinsics(cfg.intrinsics) if cfg.intrinsics else K_COLOR_33
    K_33 = scale_intrinsics(K_color, W / NATIVE_SIZE[1], H / NATIVE_SIZE[0])
    color_from_depth_44 = depth_extrinsics(cfg)
    poses = read_poses([Path(f"{f}.pose.txt") for f in files])
    if cfg.pose_camera == "depth":
        poses = poses @ np.linalg.inv(color_from_depth_44)  # the colour camera's cam2world
    log.info("7-Scenes %s: %d frames (%d test) at %dx%d", root, len(names), len(test), W, H)
    return Scene(
        name=f"7scenes/{root.resolve().name}", frame_names=names, image_size=(H, W),
        K_N33=np.repeat(K_33[None], len(names), 0), cam2world_N44=poses,
        read_image=lazy_rgb([Path(f"{f}.color.png") for f in files], NATIVE_SIZE, (H, W)),
        read_depth=lazy_depth([Path(f"{f}.depth.png") for f in files], NATIVE_SIZE, K_DEPTH_33, K_33, (H, W),
                              scale=1000.0, invalid=(0, 65535), dst_from_src_44=color_from_depth_44,
                              K_dst_native_33=K_color),
        split=make_split(names, cfg, mode, test), metric=True,
        input_files=[[Path(f"{f}.{kind}.png") for f in files] for kind in ("color", "depth")],
        source={"format": "sevenscenes", "root": str(root.resolve()), "stride": cfg.stride,
                "max_frames": cfg.max_frames, "intrinsics": cfg.intrinsics,
                # only when set, so the label caches made before these keys keep their hash
                **({"color_from_depth": color_from_depth_44.round(6).tolist(), "pose_camera": cfg.pose_camera}
                   if color_from_depth_44 is not None else {})},
    )
