"""Writers of tiny scenes in the 12Scenes, 7-Scenes and flat-folder layouts (used by conftest.py and the tests)."""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from lit3d.data.synthetic import _camera_path, render, synthetic_intrinsics
from lit3d.geometry import scale_intrinsics

COLOR_12S = (121, 162)  # (H, W): 12Scenes' 968x1296 / 8
DEPTH_12S = (60, 80)  # 480x640 / 8
N_FRAMES = 8


def write_pose(path: Path, T_44: np.ndarray) -> None:
    path.write_text("\n".join(" ".join(f"{v:.9f}" for v in row) for row in T_44) + "\n")


def write_depth_mm(path: Path, depth_HW: np.ndarray, invalid: int = 0) -> None:
    raw = np.where(depth_HW > 0, np.round(depth_HW * 1000), invalid).astype(np.uint16)
    Image.fromarray(raw).save(path)


def make_renders() -> dict[str, np.ndarray]:
    """Synthetic frames at 12Scenes-like colour and depth sizes: registered, same poses."""
    poses = _camera_path(N_FRAMES, np.random.default_rng(1))
    K_color = synthetic_intrinsics(*COLOR_12S)
    K_depth = scale_intrinsics(K_color, DEPTH_12S[1] / COLOR_12S[1], DEPTH_12S[0] / COLOR_12S[0])
    images, _ = render(poses, K_color, COLOR_12S, seed=0)
    _, depths = render(poses, K_depth, DEPTH_12S, seed=0)
    small_images, small_depths = render(poses, synthetic_intrinsics(24, 32), (24, 32), seed=0)
    return {"poses": poses, "K_color": K_color, "images": images, "depths": depths,
            "small_images": small_images, "small_depths": small_depths}


def make_12scenes(root: Path, r: dict, n_test: int = 3) -> Path:
    """A 12Scenes room: data/frame-*.{color.jpg,depth.png,pose.txt}, info.txt, split.txt."""
    (root / "data").mkdir(parents=True)
    for k in range(N_FRAMES):
        stem = root / "data" / f"frame-{k:06d}"
        Image.fromarray(r["images"][k]).save(f"{stem}.color.jpg", quality=95)
        write_depth_mm(Path(f"{stem}.depth.png"), r["depths"][k])
        write_pose(Path(f"{stem}.pose.txt"), r["poses"][k])
    K44 = np.eye(4)
    K44[:3, :3] = r["K_color"]
    # keys in a shuffled order with extra ones: the loader must parse by key
    (root / "info.txt").write_text(
        f"m_versionNumber = 4\nm_sensorName = StructureSensor\nm_depthWidth = {DEPTH_12S[1]}\n"
        f"m_calibrationColorIntrinsic = {' '.join(f'{v:g}' for v in K44.ravel())}\n"
        f"m_depthHeight = {DEPTH_12S[0]}\nm_colorWidth = {COLOR_12S[1]}\nm_colorHeight = {COLOR_12S[0]}\n"
        f"m_depthShift = 1000\nm_calibrationDepthIntrinsic = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\n"
        f"m_frames.size = {N_FRAMES}\n")
    (root / "split.txt").write_text(f"sequence0 [frames={n_test}]  [start=0 ; end={n_test - 1}]\n"
                                    f"sequence1 [frames={N_FRAMES - n_test}]  [start={n_test} ; end={N_FRAMES - 1}]\n")
    return root


@lru_cache(maxsize=None)
def _7scenes_frame(k: int) -> tuple[bytes, bytes]:
    """Encoded colour and depth PNGs of frame k (640x480), made once: encoding dominates the fixture's cost."""
    v, u = np.mgrid[0:480, 0:640]
    rgb = np.stack([(u // 3) % 256, (v // 2) % 256, np.full_like(u, 40 * k)], -1).astype(np.uint8)
    depth = (1.5 + 0.001 * u + 0.1 * k).astype(np.float32)  # a tilted plane, metres
    depth[:40, :40] = 0  # no measurement: 7-Scenes writes 65535
    out = []
    for array in (rgb, np.where(depth > 0, np.round(depth * 1000), 65535).astype(np.uint16)):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG", compress_level=1)
        out.append(buf.getvalue())
    return out[0], out[1]


def make_7scenes(root: Path, train=(1,), test=(2,), frames_per_seq: int = 3) -> Path:
    """A 7-Scenes scene: seq-XX/frame-*.{color.png,depth.png,pose.txt} at 640x480, Train/TestSplit.txt."""
    rng = np.random.default_rng(0)
    for seq in (*train, *test):
        folder = root / f"seq-{seq:02d}"
        folder.mkdir(parents=True)
        for k in range(frames_per_seq):
            stem = folder / f"frame-{k:06d}"
            color, depth = _7scenes_frame(k)
            Path(f"{stem}.color.png").write_bytes(color)
            Path(f"{stem}.depth.png").write_bytes(depth)
            T = np.eye(4)
            T[:3, 3] = rng.normal(size=3)
            write_pose(Path(f"{stem}.pose.txt"), T)
    (root / "TrainSplit.txt").write_text("".join(f"sequence{s}\n" for s in train))
    (root / "TestSplit.txt").write_text("".join(f"Sequence{s}\n" for s in test))
    return root


def make_folder(root: Path, r: dict, ext: str = "jpg") -> Path:
    """The shared sample's flat layout at 32x24: frame-*.{color.jpg,depth.png,pose.txt}, camera-intrinsics.txt."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(N_FRAMES):
        stem = root / f"frame-{10 * k:06d}"
        Image.fromarray(r["small_images"][k]).save(f"{stem}.color.{ext}", **({"quality": 95} if ext == "jpg" else {}))
        write_depth_mm(Path(f"{stem}.depth.png"), r["small_depths"][k])
        write_pose(Path(f"{stem}.pose.txt"), r["poses"][k])
    np.savetxt(root / "camera-intrinsics.txt", synthetic_intrinsics(24, 32))
    return root
