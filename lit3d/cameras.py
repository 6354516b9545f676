"""Camera files: intrinsics (K.txt, per-image lists), COLMAP models (text and binary) and pose files (hloc, TUM).

Conventions: K (3, 3) in pixels of the image as stored after its EXIF orientation, pixel centres at integer
coordinates (COLMAP's pixel centres are at +0.5: converted on reading). Poses are camera-to-world 4x4 in the
model's world frame and unit (OpenCV camera axes); files store them as their tools expect:

- hloc / visuallocalization.net: ``name qw qx qy qz tx ty tz``, the world-to-camera rotation (quaternion) and
  translation, one image per line (what ``hloc`` writes and the benchmark reads);
- TUM RGB-D: ``timestamp tx ty tz qx qy qz qw``, the camera-to-world pose (camera centre and orientation);
- COLMAP (``cameras``, ``images``, ``points3D`` as ``.txt`` or ``.bin``, https://colmap.github.io/format.html):
  :class:`ColmapModel` holds them as stored (world-to-camera ``qvec``/``tvec``, COLMAP pixels); its cameras give K
  and poses in lit3d's conventions. Writers: :mod:`lit3d.export.cameras`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lit3d.files import atomic_write_bytes
from lit3d.geometry import invert_pose, quaternion_to_rotation, rotation_to_quaternion

COLMAP_MODELS = {  # model name -> number of parameters; the first ones are f (or fx, fy), cx, cy
    "SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8, "OPENCV_FISHEYE": 8,
    "FULL_OPENCV": 12, "FOV": 5, "SIMPLE_RADIAL_FISHEYE": 4, "RADIAL_FISHEYE": 5, "THIN_PRISM_FISHEYE": 12,
    "RAD_TAN_THIN_PRISM_FISHEYE": 16,
}
"""COLMAP camera models, in COLMAP's model-id order (the id ``cameras.bin`` stores)."""
ONE_FOCAL = ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")
"""Models with one focal length (params f, cx, cy, ...); the others start fx, fy, cx, cy."""
POINT2D_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("point3D_id", "<i8")])
"""One 2D point of ``images.bin``."""


class CameraFileError(ValueError):
    """A camera or pose file that cannot be used; the message starts with the file's path."""


def check_intrinsics(K_33: np.ndarray, what: str) -> np.ndarray:
    """``K_33`` as float64 if it is a finite pinhole matrix with positive focal lengths, else CameraFileError."""
    K = np.asarray(K_33, dtype=np.float64)
    if (K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0
            or not np.allclose(K[2], [0, 0, 1]) or abs(np.linalg.det(K)) < 1e-12):
        raise CameraFileError(f"{what}: intrinsics are not an invertible pinhole matrix [[fx, 0, cx], [0, fy, cy], "
                              f"[0, 0, 1]] with fx, fy > 0")
    return K


def world_to_camera(cam2world_44: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera rotation as a unit quaternion (w, x, y, z), w >= 0, and translation of a camera-to-world
    pose: what hloc files and COLMAP's ``images`` store."""
    w2c = invert_pose(np.asarray(cam2world_44, dtype=np.float64))
    return rotation_to_quaternion(w2c[:3, :3]), w2c[:3, 3]


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CameraFileError(f"{path}: cannot read ({e})") from None


def _lines(path: Path) -> list[list[str]]:
    lines = _read_text(path).splitlines()
    return [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _floats(path: Path, words: list[str]) -> list[float]:
    try:
        return [float(w) for w in words]
    except ValueError as e:
        raise CameraFileError(f"{path}: non-numeric entry ({e})") from None


def _ints(path: Path, words: list[str]) -> list[int]:
    try:
        return [int(w) for w in words]
    except ValueError as e:
        raise CameraFileError(f"{path}: expected an integer ({e})") from None


# --- COLMAP models --------------------------------------------------------------------------------------------
@dataclass
class ColmapCamera:
    """One COLMAP camera as stored: model, image size and parameters (COLMAP pixels: centres at +0.5)."""

    model: str
    width: int
    height: int
    params: np.ndarray
    """Focal length(s), principal point, then the model's distortion parameters."""

    @staticmethod
    def pinhole(K_33: np.ndarray, size_hw: tuple[int, int]) -> "ColmapCamera":
        """PINHOLE camera of ``K_33`` (lit3d's pixel centres) for images of ``size_hw`` (H, W)."""
        K = np.asarray(K_33, dtype=np.float64)
        return ColmapCamera("PINHOLE", int(size_hw[1]), int(size_hw[0]),
                            np.array([K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]))

    @property
    def K(self) -> np.ndarray:
        """(3, 3) pinhole part in lit3d's pixel convention (centres at integers); distortion not included."""
        p = self.params
        fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if self.model in ONE_FOCAL else p[:4]
        return np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]], dtype=np.float64)

    @property
    def distortion(self) -> np.ndarray:
        """Parameters after the focal length(s) and principal point (empty for the pinhole models)."""
        return self.params[3 if self.model in ONE_FOCAL else 4 :]

    def line(self, camera_id: int) -> str:
        """This camera's ``cameras.txt`` line (shortest round-trip numbers)."""
        return " ".join([str(camera_id), self.model, str(self.width), str(self.height),
                         *(repr(float(v)) for v in self.params)])


@dataclass
class ColmapImage:
    """One registered image as stored: world-to-camera rotation ``qvec`` (w, x, y, z) and translation ``tvec`` in
    the model's world unit, its camera, file name (relative to the images folder) and 2D points."""

    name: str
    camera_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    xys_P2: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """2D points, COLMAP pixels (centres at +0.5)."""
    point3D_ids_P: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """The 3D point of each 2D point, -1 for none."""

    @staticmethod
    def from_pose(name: str, camera_id: int, cam2world_44: np.ndarray, xys_P2: np.ndarray | None = None,
                  point3D_ids_P: np.ndarray | None = None) -> "ColmapImage":
        q, t = world_to_camera(cam2world_44)
        return ColmapImage(name, camera_id, q, t, np.zeros((0, 2)) if xys_P2 is None else np.asarray(xys_P2, float),
                           np.zeros(0, np.int64) if point3D_ids_P is None else np.asarray(point3D_ids_P, np.int64))

    @property
    def cam2world_44(self) -> np.ndarray:
        """Camera-to-world pose (OpenCV camera axes, as COLMAP's) in the model's world frame and unit."""
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = quaternion_to_rotation(self.qvec), self.tvec
        return invert_pose(w2c)


@dataclass
class ColmapPoints:
    """3D points: ids (P,), positions (P, 3) in the model's world, colours (P, 3) uint8, mean reprojection error
    (P,) in pixels, and per point its track (T, 2): (image id, index of the 2D point in that image)."""

    ids_P: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    xyz_P3: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    rgb_P3: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    error_P: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tracks: list[np.ndarray] = field(default_factory=list)


@dataclass
class ColmapModel:
    """A COLMAP sparse model: cameras and images by id, and 3D points."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: ColmapPoints = field(default_factory=ColmapPoints)


def _camera_from_words(path: Path, words: list[str]) -> tuple[int, ColmapCamera]:
    if len(words) < 5 or words[1] not in COLMAP_MODELS:
        raise CameraFileError(f"{path}: not a COLMAP cameras.txt line: {' '.join(words)!r} (models: "
                              f"{', '.join(COLMAP_MODELS)})")
    (cam_id,), model = _ints(path, words[:1]), words[1]
    w, h, *params = _floats(path, words[2:])
    if len(params) != COLMAP_MODELS[model]:
        raise CameraFileError(f"{path}: camera {cam_id} ({model}) has {len(params)} parameters, expected "
                              f"{COLMAP_MODELS[model]}")
    return cam_id, ColmapCamera(model, int(w), int(h), np.array(params, dtype=np.float64))


def _cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras = dict(_camera_from_words(path, words) for words in _lines(path))
    if not cameras:
        raise CameraFileError(f"{path}: no cameras")
    return cameras


def _images_txt(path: Path) -> dict[int, ColmapImage]:
    """Two lines per image (as COLMAP reads them: blank and comment lines before an image line are skipped, the
    line after it always holds its 2D points, ``X Y POINT3D_ID`` triples)."""
    lines, k, images = _read_text(path).splitlines(), 0, {}
    while k < len(lines):
        line, k = lines[k].strip(), k + 1
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if len(words) < 10:
            raise CameraFileError(f"{path}: not a COLMAP images.txt line: {line!r} (expected IMAGE_ID QW QX QY QZ "
                                  "TX TY TZ CAMERA_ID NAME)")
        (image_id, cam_id), v = _ints(path, [words[0], words[8]]), _floats(path, words[1:8])
        pts = _floats(path, lines[k].split()) if k < len(lines) else []
        k += 1
        if len(pts) % 3:
            raise CameraFileError(f"{path}: the 2D points of image {image_id} are not X Y POINT3D_ID triples")
        pts_P3 = np.reshape(pts, (-1, 3))
        images[image_id] = ColmapImage(" ".join(words[9:]), cam_id, np.array(v[:4]), np.array(v[4:]), pts_P3[:, :2],
                                       pts_P3[:, 2].astype(np.int64))
    return images


def _points(rows: list[tuple], tracks: list[np.ndarray]) -> ColmapPoints:
    """Points of rows ``(id, x, y, z, r, g, b, error)`` and their tracks."""
    values = np.array([row[1:] for row in rows], dtype=np.float64).reshape(-1, 7)
    return ColmapPoints(np.array([row[0] for row in rows], np.int64), values[:, :3], values[:, 3:6].astype(np.uint8),
                        values[:, 6], tracks)


def _points_txt(path: Path) -> ColmapPoints:
    rows = _lines(path)
    bad = next((r for r in rows if len(r) < 8 or len(r) % 2), None)
    if bad is not None:
        raise CameraFileError(f"{path}: not a COLMAP points3D.txt line: {' '.join(bad)!r} (expected POINT3D_ID X Y Z "
                              "R G B ERROR and IMAGE_ID POINT2D_IDX pairs)")
    return _points([(_ints(path, r[:1])[0], *_floats(path, r[1:8])) for r in rows],
                   [np.reshape(_ints(path, r[8:]), (-1, 2)) for r in rows])


class _Reader:
    """Sequential little-endian reads of a COLMAP binary file; a short file is a CameraFileError naming it."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise CameraFileError(f"{path}: cannot read ({e})") from None
        self.offset = 0

    def _need(self, size: int) -> None:
        if self.offset + size > len(self.data):
            raise CameraFileError(f"{self.path}: truncated (not a complete COLMAP binary file)")

    def unpack(self, fmt: str) -> tuple:
        fmt = "<" + fmt
        self._need(struct.calcsize(fmt))
        values = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += struct.calcsize(fmt)
        return values

    def array(self, dtype: np.dtype | str, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        self._need(dtype.itemsize * count)
        out = np.frombuffer(self.data, dtype, count=count, offset=self.offset).copy()
        self.offset += dtype.itemsize * count
        return out

    def string(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise CameraFileError(f"{self.path}: truncated (image name without its terminating zero byte)")
        text, self.offset = self.data[self.offset : end].decode("utf-8", errors="replace"), end + 1
        return text

    def done(self) -> None:
        if self.offset != len(self.data):
            raise CameraFileError(f"{self.path}: {len(self.data) - self.offset} bytes after the last record (not a "
                                  "COLMAP binary file of this kind)")


def _cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r, models, cameras = _Reader(path), list(COLMAP_MODELS), {}
    for _ in range(r.unpack("Q")[0]):
        cam_id, model_id, width, height = r.unpack("iiQQ")
        if not 0 <= model_id < len(models):
            raise CameraFileError(f"{path}: camera {cam_id} has unknown model id {model_id}")
        model = models[model_id]
        cameras[cam_id] = ColmapCamera(model, width, height, r.array("<f8", COLMAP_MODELS[model]))
    r.done()
    if not cameras:
        raise CameraFileError(f"{path}: no cameras")
    return cameras


def _images_bin(path: Path) -> dict[int, ColmapImage]:
    r, images = _Reader(path), {}
    for _ in range(r.unpack("Q")[0]):
        image_id, *v, cam_id = r.unpack("i7di")
        name = r.string()
        pts = r.array(POINT2D_DTYPE, r.unpack("Q")[0])
        images[image_id] = ColmapImage(name, cam_id, np.array(v[:4]), np.array(v[4:]),
                                       np.stack([pts["x"], pts["y"]], -1), pts["point3D_id"].astype(np.int64))
    r.done()
    return images


def _points_bin(path: Path) -> ColmapPoints:
    r, rows, tracks = _Reader(path), [], []
    for _ in range(r.unpack("Q")[0]):
        rows.append(r.unpack("Q3d3Bd"))
        tracks.append(r.array("<i4", 2 * r.unpack("Q")[0]).reshape(-1, 2).astype(np.int64))
    r.done()
    return _points(rows, tracks)


COLMAP_READERS = {".txt": (_cameras_txt, _images_txt, _points_txt), ".bin": (_cameras_bin, _images_bin, _points_bin)}


def read_colmap_model(folder: str | Path, points: bool = True) -> ColmapModel:
    """The COLMAP model in ``folder``: text (``cameras.txt``, ``images.txt``, ``points3D.txt``) where cameras.txt
    exists, else binary (``.bin``). ``points=False`` skips points3D (it can be large). Missing files, unknown
    models and images of a camera the model lacks are CameraFileErrors naming the file."""
    folder = Path(folder)
    ext = ".txt" if (folder / "cameras.txt").is_file() else ".bin"
    names = ("cameras", "images", "points3D")[: 3 if points else 2]
    for name in names:
        if not (folder / f"{name}{ext}").is_file():
            also = " (nor cameras.bin)" if name == "cameras" else ""
            raise CameraFileError(f"{folder / (name + ('.txt' if name == 'cameras' else ext))}: not found{also}; a "
                                  "COLMAP model folder holds cameras, images and points3D as .txt or .bin")
    read_cameras, read_images, read_points = COLMAP_READERS[ext]
    model = ColmapModel(read_cameras(folder / f"cameras{ext}"), read_images(folder / f"images{ext}"))
    for image in model.images.values():
        if image.camera_id not in model.cameras:
            raise CameraFileError(f"{folder / f'images{ext}'}: image {image.name} uses camera {image.camera_id}, "
                                  f"which cameras{ext} lacks")
    if points:
        model.points = read_points(folder / f"points3D{ext}")
    return model


def read_colmap_cameras(path: str | Path) -> dict[int, tuple[np.ndarray, tuple[int, int]]]:
    """COLMAP ``cameras.txt``: camera id -> (K (3, 3) with lit3d's pixel centres, (height, width)); distortion
    parameters are ignored."""
    path = Path(path)
    return {cam_id: (check_intrinsics(cam.K, f"{path} camera {cam_id}"), (cam.height, cam.width))
            for cam_id, cam in _cameras_txt(path).items()}


def read_colmap_image_cameras(path: str | Path) -> dict[str, int]:
    """COLMAP ``images.txt``: image name -> camera id."""
    return {image.name: image.camera_id for image in _images_txt(Path(path)).values()}


def write_colmap_cameras(path: str | Path, cameras: dict[int, tuple[np.ndarray, tuple[int, int]]]) -> None:
    """COLMAP ``cameras.txt`` of PINHOLE cameras: id -> (K with lit3d's pixel centres, (height, width))."""
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [ColmapCamera.pinhole(K, hw).line(cam_id) for cam_id, (K, hw) in sorted(cameras.items())]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_intrinsics_list(path: str | Path) -> dict[str, np.ndarray]:
    """Per-image intrinsics, one image a line: ``NAME fx fy cx cy`` or ``NAME k11 k12 ... k33``."""
    path = Path(path)
    out = {}
    for words in _lines(path):
        if len(words) not in (5, 10):
            raise CameraFileError(f"{path}: expected 'NAME fx fy cx cy' or 'NAME' and 9 numbers per line, got "
                                  f"{' '.join(words)!r}")
        v = _floats(path, words[1:])
        K = np.array([[v[0], 0, v[2]], [0, v[1], v[3]], [0, 0, 1]]) if len(v) == 4 else np.reshape(v, (3, 3))
        out[words[0]] = check_intrinsics(K, f"{path} ({words[0]})")
    if not out:
        raise CameraFileError(f"{path}: no intrinsics")
    return out


# --- pose files -----------------------------------------------------------------------------------------------
def hloc_line(name: str, cam2world_44: np.ndarray) -> str:
    """``name qw qx qy qz tx ty tz`` of the world-to-camera transform (hloc / visuallocalization.net)."""
    q, t = world_to_camera(cam2world_44)
    return " ".join([name, *(repr(float(x)) for x in (*q, *t))])


def tum_line(timestamp: float, cam2world_44: np.ndarray) -> str:
    """``timestamp tx ty tz qx qy qz qw`` of the camera-to-world pose (TUM RGB-D trajectory)."""
    T = np.asarray(cam2world_44, dtype=np.float64)
    qw, qx, qy, qz = rotation_to_quaternion(T[:3, :3])
    return " ".join(repr(float(x)) for x in (timestamp, *T[:3, 3], qx, qy, qz, qw))


def read_hloc_poses(path: str | Path) -> dict[str, np.ndarray]:
    """Camera-to-world poses of an hloc pose file (inverse of :func:`hloc_line`)."""
    path = Path(path)
    out = {}
    for words in _lines(path):
        if len(words) != 8:
            raise CameraFileError(f"{path}: expected 'name qw qx qy qz tx ty tz', got {' '.join(words)!r}")
        v = _floats(path, words[1:])
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = quaternion_to_rotation(v[:4]), v[4:]
        out[words[0]] = invert_pose(w2c)
    return out


def write_lines(path: str | Path, lines: list[str], header: str = "") -> None:
    """Text file of ``lines`` (after ``# header`` lines), written atomically."""
    head = [f"# {h}" for h in header.splitlines()] if header else []
    atomic_write_bytes(path, ("\n".join(head + lines) + ("\n" if head or lines else "")).encode())
