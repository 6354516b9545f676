"""A procedurally rendered indoor scene: the offline default dataset.

A room (textured walls, floor, ceiling) with boxes and spheres, rendered by vectorised ray casting on the CPU.
Texture is a function of the 3D surface point (a per-surface Fourier noise over world coordinates, times a
per-surface base colour, times view-independent Lambertian shading), so every view of a surface point agrees
in colour, as in a real static scene. The camera circles the room looking across it, so frames overlap; with
``data.split=path`` (the default) the test cameras follow a second path (other heights, headings and distances).
Everything is deterministic in ``seed``; renders are cached under ``cache_dir/scenes``.

World frame: metres, z up, the room spans [0, 6] x [0, 5] x [0, 2.8].
"""
from __future__ import annotations

import hashlib
import json
import logging
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit3d.data import FORMATS
from lit3d.data.config import DataConfig
from lit3d.data.folder import subsample
from lit3d.data.scene import Scene, SceneError
from lit3d.data.splits import make_split, split_mode
from lit3d.files import atomic_output
from lit3d.geometry import look_at

log = logging.getLogger(__name__)

RENDERER_VERSION = 2
TEST_PATH_VERSION = 1
"""Version of :func:`_test_path` (part of the test-path render cache key)."""
MIN_TEST_PATH_DISTANCE = 0.25
"""Metres: every test-path camera is at least this far from every training-path camera centre."""
ROOM_MAX = np.array([6.0, 5.0, 2.8])
HFOV_DEG = 70.0
LIGHT = np.array([3.0, 2.5, 2.6])


@dataclass
class Primitive:
    kind: str  # "box" (axis-aligned, seen from outside) or "sphere"
    lo: np.ndarray  # box min corner, or sphere centre
    hi: np.ndarray  # box max corner, or (radius, 0, 0)


def _layout(rng: np.random.Generator) -> list[Primitive]:
    """Boxes along the walls (cabinets, tables) and spheres, clear of the camera path in the middle."""
    prims = []
    for k in range(5):
        size = rng.uniform([0.5, 0.5, 0.4], [1.2, 1.0, 1.4])
        side = k % 4
        along = rng.uniform(0.3, 0.7)
        if side == 0:
            lo = np.array([0.1, along * (ROOM_MAX[1] - size[1]), 0.0])
        elif side == 1:
            lo = np.array([ROOM_MAX[0] - 0.1 - size[0], along * (ROOM_MAX[1] - size[1]), 0.0])
        elif side == 2:
            lo = np.array([along * (ROOM_MAX[0] - size[0]), 0.1, 0.0])
        else:
            lo = np.array([along * (ROOM_MAX[0] - size[0]), ROOM_MAX[1] - 0.1 - size[1], 0.0])
        prims.append(Primitive("box", lo, lo + size))
    # a pedestal with a ball in the middle of the room: seen from everywhere, it ties views together
    prims.append(Primitive("box", np.array([2.75, 2.3, 0.0]), np.array([3.25, 2.7, 0.7])))
    prims.append(Primitive("sphere", np.array([3.0, 2.5, 1.0]), np.array([0.3, 0, 0])))
    for _ in range(2):
        c = np.array([rng.uniform(0.6, 5.4), rng.choice([0.5, 4.5]), rng.uniform(1.6, 2.2)])
        prims.append(Primitive("sphere", c, np.array([rng.uniform(0.15, 0.3), 0, 0])))
    return prims


def _camera_path(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4, 4) camera-to-world poses circling the room centre and looking across it."""
    phase = rng.uniform(0, 2 * np.pi)
    poses = []
    for k in range(n):
        a = phase + 2 * np.pi * k / n
        eye = np.array([3.0 + 1.5 * np.cos(a), 2.5 + 1.1 * np.sin(a), 1.45 + 0.15 * np.sin(3 * a)])
        look = a + np.pi + 0.6 * np.sin(2 * a + 1.0)  # look across the room, swinging left and right
        target = np.array([3.0 + 2.5 * np.cos(look), 2.5 + 2.0 * np.sin(look), 1.0 + 0.3 * np.cos(2 * a)])
        poses.append(look_at(eye, target))
    return np.stack(poses)


def _intersect(origin_3: np.ndarray, dirs_R3: np.ndarray, prims: list[Primitive]):
    """Nearest hit per ray: distance (R,), surface id (R,), normal (R, 3). Id 0..5 = room faces, 6+ = prims."""
    R = dirs_R3.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs_R3
        # room: the ray leaves the box through the nearest face in its direction of travel
        t_face = np.where(dirs_R3 > 0, (ROOM_MAX - origin_3) * inv, -origin_3 * inv)
        t_face = np.where(np.isfinite(t_face) & (t_face > 0), t_face, np.inf)
    axis = np.argmin(t_face, axis=1)
    t_best = t_face[np.arange(R), axis]
    positive = dirs_R3[np.arange(R), axis] > 0
    sid = axis * 2 + positive  # faces: 0 x=0, 1 x=max, 2 y=0, 3 y=max, 4 floor, 5 ceiling
    normal = np.zeros((R, 3))
    normal[np.arange(R), axis] = np.where(positive, -1.0, 1.0)
    for p_id, prim in enumerate(prims, start=6):
        if prim.kind == "box":
            with np.errstate(divide="ignore", invalid="ignore"):
                t1, t2 = (prim.lo - origin_3) * inv, (prim.hi - origin_3) * inv
            tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = np.nan_to_num(tmin, nan=-np.inf)
            tmax = np.nan_to_num(tmax, nan=np.inf)
            t_near, t_far = tmin.max(1), tmax.min(1)
            hit = (t_near <= t_far) & (t_near > 1e-6) & (t_near < t_best)
            ax = np.argmax(tmin, axis=1)
            n = np.zeros((R, 3))
            n[np.arange(R), ax] = -np.sign(dirs_R3[np.arange(R), ax])
        else:
            oc = origin_3 - prim.lo
            b = dirs_R3 @ oc
            disc = b * b - (oc @ oc - prim.hi[0] ** 2)
            t_near = -b - np.sqrt(np.maximum(disc, 0))
            hit = (disc > 0) & (t_near > 1e-6) & (t_near < t_best)
            n = (origin_3 + t_near[:, None] * dirs_R3 - prim.lo) / prim.hi[0]
        t_best = np.where(hit, t_near, t_best)
        sid = np.where(hit, p_id, sid)
        normal = np.where(hit[:, None], n, normal)
    return t_best, sid, normal


class _Texture:
    """Per-surface colour as a smooth random function of the world point (a sum of plane waves)."""

    def __init__(self, rng: np.random.Generator, n_surfaces: int, n_waves: int = 12):
        self.base = rng.uniform(0.25, 0.95, (n_surfaces, 3))
        self.freq = rng.normal(0, 1, (n_surfaces, n_waves, 3))
        self.freq *= (rng.uniform(0.5, 3.0, (n_surfaces, n_waves)) * 2 * np.pi)[..., None] / np.linalg.norm(
            self.freq, axis=-1, keepdims=True)
        self.phase = rng.uniform(0, 2 * np.pi, (n_surfaces, n_waves))
        self.mix = rng.uniform(-1, 1, (n_surfaces, n_waves, 3)) / np.sqrt(n_waves)

    def __call__(self, pts_R3: np.ndarray, sid_R: np.ndarray) -> np.ndarray:
        waves = np.sin(np.einsum("rkc,rc->rk", self.freq[sid_R], pts_R3) + self.phase[sid_R])
        pattern = np.einsum("rk,rkc->rc", waves, self.mix[sid_R])
        return np.clip(self.base[sid_R] * (0.75 + 0.6 * pattern), 0, 1)


def render(poses_N44: np.ndarray, K_33: np.ndarray, size: tuple[int, int], seed: int,
           supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Render RGB (N, H, W, 3) uint8 and z-depth (N, H, W) float32 metres for cameras ``poses_N44``.

    ``supersample`` > 1 anti-aliases the colours with s x s rays per pixel (depth stays at pixel centres).
    """
    H, W = size
    rng = np.random.default_rng(seed)
    prims = _layout(rng)
    texture = _Texture(rng, 6 + len(prims))
    s = supersample
    # sub-pixel sample positions inside each pixel, box-filtered afterwards (anti-aliasing)
    offsets = (np.arange(s) + 0.5) / s - 0.5
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    su = (u[:, :, None, None] + offsets[None, None, None, :]).repeat(s, 2)
    sv = (v[:, :, None, None] + offsets[None, None, :, None]).repeat(s, 3)
    rays_cam = np.stack([(su - K_33[0, 2]) / K_33[0, 0], (sv - K_33[1, 2]) / K_33[1, 1], np.ones_like(su)], -1)
    centre_cam = np.stack([(u - K_33[0, 2]) / K_33[0, 0], (v - K_33[1, 2]) / K_33[1, 1], np.ones_like(u)], -1)
    images = np.empty((len(poses_N44), H, W, 3), np.uint8)  # filled in place: no second copy of every frame
    depths = np.empty((len(poses_N44), H, W), np.float32)
    for k, T in enumerate(poses_N44):
        R, o = T[:3, :3], T[:3, 3]
        d = rays_cam.reshape(-1, 3) @ R.T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        t, sid, normal = _intersect(o, d, prims)
        p = o + t[:, None] * d
        to_light = LIGHT - p
        to_light /= np.linalg.norm(to_light, axis=1, keepdims=True)
        shade = 0.45 + 0.55 * np.clip((normal * to_light).sum(1), 0, 1)
        rgb = (texture(p, sid) * shade[:, None]).reshape(H, W, s * s, 3).mean(2)
        images[k] = np.round(255 * rgb)
        # depth at pixel centres: z of the hit point in camera frame
        if s > 1:
            d = centre_cam.reshape(-1, 3) @ R.T
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            t, _, _ = _intersect(o, d, prims)
        depths[k] = ((t[:, None] * d) @ R[:, 2]).reshape(H, W)
    return images, depths


def synthetic_intrinsics(height: int, width: int) -> np.ndarray:
    f = (width / 2) / np.tan(np.radians(HFOV_DEG / 2))
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])


def _clearance(eye_3: np.ndarray, prims: list[Primitive]) -> float:
    """Distance (m) from a point inside the room to the nearest wall, floor, ceiling or object surface."""
    d = min(float(eye_3.min()), float((ROOM_MAX - eye_3).min()))
    for prim in prims:
        if prim.kind == "box":
            d = min(d, float(np.linalg.norm(np.maximum(np.maximum(prim.lo - eye_3, eye_3 - prim.hi), 0))))
        else:
            d = min(d, float(np.linalg.norm(eye_3 - prim.lo) - prim.hi[0]))
    return d


def _test_path(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4, 4) test cameras on a second path that the training path (:func:`_camera_path`) never visits.

    Frames alternate between a high outer ring (radii 1.95 x 1.45 m, ~1.9 m up, pitched 12-20 deg down, headings
    swinging +-0.9 rad around the room centre) and a low inner ring (0.8 x 0.6 m, ~1.05 m up, pitched 3-9 deg up,
    looking out at the walls); the training ring is 1.5 x 1.1 m at 1.3-1.6 m, looking across the room. Both look
    at surfaces the training frames see (the room is closed). Roll-free (image x horizontal).
    """
    phase = rng.uniform(0, 2 * np.pi)
    poses = []
    for k in range(n):
        a = phase + 2 * np.pi * k / n
        if k % 2 == 0:  # high, outside the training ring, looking down across the room
            eye = np.array([3.0 + 1.95 * np.cos(a), 2.5 + 1.45 * np.sin(a), 1.9 + 0.08 * np.sin(2 * a)])
            heading, pitch = a + np.pi + 0.9 * np.sin(3 * a + 0.5), -(0.28 + 0.07 * np.sin(a))
        else:  # low, inside the training ring, looking out at the nearer walls
            eye = np.array([3.0 + 0.8 * np.cos(a), 2.5 + 0.6 * np.sin(a), 1.05 + 0.08 * np.sin(2 * a)])
            heading, pitch = a + 0.5 * np.sin(2 * a), 0.1 + 0.05 * np.cos(a)
        forward = np.array([np.cos(pitch) * np.cos(heading), np.cos(pitch) * np.sin(heading), np.sin(pitch)])
        poses.append(look_at(eye, eye + forward))
    return np.stack(poses)


def _cached_render(path: Path, make_poses, K_33: np.ndarray, size: tuple[int, int], seed: int, what: str):
    """Images, depths and poses of ``path``, rendered (and saved atomically) when missing or unreadable. Images and
    depths are read from the file frame by frame (:class:`_Rows`), so a scene of thousands of frames is not held."""
    if path.is_file():
        try:
            images, depths = _npz_rows(path, ("images", "depths"))
            with np.load(path) as f:
                return images, depths, f["poses"]
        except Exception as e:  # a corrupt render cache is rebuilt, never trusted
            log.warning("synthetic render cache %s is unreadable (%s): re-rendering", path, e)
            path.unlink()
    poses = make_poses()
    log.info("rendering %d synthetic %s at %dx%d", len(poses), what, size[1], size[0])
    images, depths = render(poses, K_33, size, seed)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, depths=depths, poses=poses)  # streamed to the file, no copy in memory
    del images, depths
    return (*_npz_rows(path, ("images", "depths")), poses)


class _Rows:
    """Rows of one array stored uncompressed in an ``.npz``, read from the file one at a time (no memory map: the
    pages read do not stay in the process's resident memory)."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, dtype
        self.row_items = int(np.prod(shape[1:]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> np.ndarray:
        if not 0 <= k < len(self):
            raise IndexError(f"row {k} of {len(self)} in {self.path}")
        return np.fromfile(self.path, self.dtype, self.row_items,
                           offset=self.offset + k * self.row_items * self.dtype.itemsize).reshape(self.shape[1:])


def _npz_rows(path: Path, keys: tuple[str, ...]) -> tuple[_Rows, ...]:
    """Arrays ``keys`` of an uncompressed ``.npz`` (as ``np.savez`` writes them), read row by row, after checking
    every CRC once."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()  # streams through every member
        if bad is not None:
            raise ValueError(f"{bad} fails its CRC")
        infos = {info.filename: info for info in z.infolist()}
    arrays = []
    with open(path, "rb") as f:
        for key in keys:
            info = infos[f"{key}.npy"]
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{key} is compressed")
            f.seek(info.header_offset + 26)  # local file header: name and extra-field lengths, then the data
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran and len(shape) > 1:
                raise ValueError(f"{key} is stored in Fortran order")
            arrays.append(_Rows(path, f.tell(), shape, dtype))
    return tuple(arrays)


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@FORMATS.register("synthetic", DataConfig)
def load_synthetic(cfg: DataConfig, cache_dir: Path) -> Scene:
    """Render (or read back from ``cache_dir/scenes``) the synthetic scene of ``cfg``.

    ``num_frames`` frames along the training path (``frame-XXXXXX``, subsampled by ``stride`` / ``max_frames``);
    with ``split=path`` (the default through ``auto``) also ``test_path_frames`` test frames along
    :func:`_test_path` (``test-XXXXXX``), each at least ``MIN_TEST_PATH_DISTANCE`` from every training camera.
    """
    if cfg.num_frames < 1:
        raise SceneError(f"synthetic scene has no frames (data.num_frames={cfg.num_frames})")
    mode = split_mode(cfg, "synthetic", path=True)
    H, W = cfg.resolution
    key = {"version": RENDERER_VERSION, "seed": cfg.seed, "num_frames": cfg.num_frames, "resolution": [H, W]}
    K = synthetic_intrinsics(H, W)
    scenes = Path(cache_dir) / "scenes"
    train_path = lambda: _camera_path(cfg.num_frames, np.random.default_rng(cfg.seed + 1))  # noqa: E731
    images, depths, poses = _cached_render(scenes / f"synthetic-{_digest(key)}.npz", train_path, K, (H, W), cfg.seed,
                                           "frames")
    keep = subsample(cfg.num_frames, cfg)
    names = [f"frame-{k:06d}" for k in keep]
    rows = [(images, depths, k) for k in keep]  # per frame: the arrays that hold it and its row there
    poses = poses[keep]
    source = {"format": "synthetic", **key, "stride": cfg.stride, "max_frames": cfg.max_frames}
    test = None
    if mode == "path":
        if cfg.test_path_frames < 1:
            raise SceneError(f"data.test_path_frames must be >= 1 with data.split=path, got {cfg.test_path_frames}")
        tkey = {"version": RENDERER_VERSION, "test_path_version": TEST_PATH_VERSION, "seed": cfg.seed,
                "test_path_frames": cfg.test_path_frames, "resolution": [H, W]}
        t_images, t_depths, t_poses = _cached_render(
            scenes / f"synthetic-test-{_digest(tkey)}.npz",
            lambda: _test_path(cfg.test_path_frames, np.random.default_rng(cfg.seed + 2)), K, (H, W), cfg.seed,
            "test-path frames")
        check_test_path(t_poses, train_path(), cfg.seed)
        test = np.arange(len(names), len(names) + len(t_poses))
        names += [f"test-{k:06d}" for k in range(len(t_poses))]
        rows += [(t_images, t_depths, k) for k in range(len(t_poses))]
        poses = np.concatenate([poses, t_poses])
        source.update(split="path", test_path=tkey)

    def reader(kind: int):  # one frame read from the render cache: the scene never holds every frame
        return lambda i: rows[i][kind][rows[i][2]]

    return Scene(
        name=f"synthetic-seed{cfg.seed}", frame_names=names, image_size=(H, W),
        K_N33=np.repeat(K[None], len(names), 0), cam2world_N44=poses,
        read_image=reader(0), read_depth=reader(1), split=make_split(names, cfg, mode, test),
        metric=True, source=source,
    )


def check_test_path(test_N44: np.ndarray, train_M44: np.ndarray, seed: int, clearance: float = 0.2) -> None:
    """Raise unless every test camera is >= ``MIN_TEST_PATH_DISTANCE`` from every training camera and at least
    ``clearance`` metres from every surface of the room (layout of ``seed``)."""
    dist_NM = np.linalg.norm(test_N44[:, None, :3, 3] - train_M44[None, :, :3, 3], axis=-1)
    if dist_NM.min() < MIN_TEST_PATH_DISTANCE:
        raise SceneError(f"synthetic test path: a test camera is {dist_NM.min():.3f} m from a training camera "
                         f"(< MIN_TEST_PATH_DISTANCE = {MIN_TEST_PATH_DISTANCE} m)")
    prims = _layout(np.random.default_rng(seed))
    worst = min(_clearance(T[:3, 3], prims) for T in test_N44)
    if worst < clearance:
        raise SceneError(f"synthetic test path: a test camera is {worst:.3f} m from a surface (< {clearance} m)")
