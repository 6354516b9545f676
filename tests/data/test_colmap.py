"""``colmap`` loader: text and binary models (ours and a hand-packed blob) give the same K and poses; undistortion;
one-line errors naming the file."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from lit3d.cameras import ColmapCamera, ColmapImage, ColmapModel
from lit3d.data import DataConfig, SceneError, load_scene
from lit3d.export.cameras import write_colmap_binary, write_colmap_text

SIZE = (30, 40)  # (H, W) of the images on disk
# camera id -> (model id, model, params in COLMAP pixels: centres at +0.5)
CAMERAS = {3: (0, "SIMPLE_PINHOLE", [35.0, 20.0, 15.0]), 7: (1, "PINHOLE", [36.0, 34.5, 19.5, 15.5])}
FRAMES = [("b.jpg", 7), ("a.png", 3), ("sub/c.png", 7)]  # (name, camera id); frames come sorted by name


def poses_w2c() -> list[tuple[np.ndarray, np.ndarray]]:
    """World-to-camera (quaternion w x y z, translation) of each frame, from scipy rotations."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(len(FRAMES)):
        x, y, z, w = Rotation.random(random_state=10 + k).as_quat()
        out.append((np.array([w, x, y, z]), rng.normal(size=3)))
    return out


def pack_binary_model(folder) -> None:
    """cameras.bin / images.bin / points3D.bin packed by hand, following COLMAP's documented binary layout."""
    folder.mkdir(parents=True, exist_ok=True)
    cams = struct.pack("<Q", len(CAMERAS))
    for cam_id, (model_id, _, params) in CAMERAS.items():
        cams += struct.pack("<iiQQ", cam_id, model_id, SIZE[1], SIZE[0]) + struct.pack(f"<{len(params)}d", *params)
    (folder / "cameras.bin").write_bytes(cams)
    images = struct.pack("<Q", len(FRAMES))
    for image_id, ((name, cam_id), (q, t)) in enumerate(zip(FRAMES, poses_w2c()), start=5):
        images += struct.pack("<idddddddi", image_id, *q, *t, cam_id) + name.encode() + b"\x00"
        images += struct.pack("<Q", 1) + struct.pack("<ddq", 3.5, 4.5, -1)  # one 2D point without a 3D point
    (folder / "images.bin").write_bytes(images)
    (folder / "points3D.bin").write_bytes(struct.pack("<Q", 0))


def our_model() -> ColmapModel:
    cameras = {cid: ColmapCamera(model, SIZE[1], SIZE[0], np.array(p)) for cid, (_, model, p) in CAMERAS.items()}
    images = {5 + k: ColmapImage(name, cid, q, t) for k, ((name, cid), (q, t)) in enumerate(zip(FRAMES, poses_w2c()))}
    return ColmapModel(cameras, images)


def write_images(root) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for name, _ in FRAMES:
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        out[name] = rng.integers(0, 255, (*SIZE, 3), np.uint8)
        Image.fromarray(out[name]).save(root / "images" / name, quality=100)
    return out


def load(root, **kw):
    return load_scene(DataConfig(format="colmap", root=str(root), **{"resolution": [15, 20], "test_every": 2, **kw}))


@pytest.mark.parametrize("kind", ["text", "binary", "packed"])
def test_models_give_the_same_K_and_poses(tmp_path, kind):
    root = tmp_path / kind
    {"text": write_colmap_text, "binary": write_colmap_binary}.get(kind, lambda f, m: pack_binary_model(f))(
        root / "sparse" / "0", our_model())
    write_images(root)
    scene = load(root)
    assert scene.frame_names == ["a", "b", "sub_c"] and not scene.metric and not scene.has_depth
    assert scene.source["unit"] == "colmap"
    by_name = {name: (cid, q, t) for (name, cid), (q, t) in zip(FRAMES, poses_w2c())}
    for k, name in enumerate(["a.png", "b.jpg", "sub/c.png"]):
        cid, (w, x, y, z), t = by_name[name]
        R_w2c = Rotation.from_quat([x, y, z, w]).as_matrix()
        np.testing.assert_allclose(scene.cam2world_N44[k][:3, :3], R_w2c.T, atol=1e-12)
        np.testing.assert_allclose(scene.cam2world_N44[k][:3, 3], -R_w2c.T @ t, atol=1e-12)
        p = CAMERAS[cid][2]
        fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if len(p) == 3 else p
        # half resolution: focal halves, COLMAP's principal point (centres at +0.5) halves too, then -0.5
        np.testing.assert_allclose(scene.K_N33[k], [[fx / 2, 0, cx / 2 - 0.5], [0, fy / 2, cy / 2 - 0.5], [0, 0, 1]])
    assert scene.read_image(2).shape == (15, 20, 3)
    np.testing.assert_array_equal(scene.split["test"], [1])


def test_full_resolution_images_are_the_files(tmp_path):
    write_colmap_text(tmp_path / "sparse" / "0", our_model())
    pixels = write_images(tmp_path)
    scene = load(tmp_path, resolution=list(SIZE))
    np.testing.assert_array_equal(scene.read_image(0), pixels["a.png"])


def test_radial_distortion_is_removed(tmp_path):
    """A dot drawn where SIMPLE_RADIAL distorts a chosen pixel comes back at that pixel after undistortion."""
    f, cx, cy, k1 = 30.0, 20.0, 15.0, 0.6  # COLMAP pixels
    target = np.array([33.0, 24.0])  # undistorted pixel, lit3d convention (COLMAP - 0.5)
    x, y = (target + 0.5 - [cx, cy]) / f
    r2 = x * x + y * y
    dot = np.array([x, y]) * (1 + k1 * r2) * f + [cx, cy] - 0.5  # where the lens puts it (independent formula)
    assert np.linalg.norm(dot - target) > 2  # the distortion moves it by pixels
    v, u = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    blob = np.exp(-((u - dot[0]) ** 2 + (v - dot[1]) ** 2) / (2 * 1.2**2))
    (tmp_path / "images").mkdir()
    Image.fromarray(np.repeat((255 * blob)[..., None], 3, -1).astype(np.uint8)).save(tmp_path / "images" / "d.png")
    cam = ColmapCamera("SIMPLE_RADIAL", SIZE[1], SIZE[0], np.array([f, cx, cy, k1]))
    x_, y_, z_, w_ = Rotation.identity().as_quat()
    write_colmap_text(tmp_path / "sparse" / "0", ColmapModel({1: cam}, {1: ColmapImage("d.png", 1, np.array(
        [w_, x_, y_, z_]), np.zeros(3))}))
    scene = load(tmp_path, resolution=list(SIZE), test_every=0, val_every=0)
    np.testing.assert_allclose(scene.K_N33[0], [[f, 0, cx - 0.5], [0, f, cy - 0.5], [0, 0, 1]])
    img = scene.read_image(0)[..., 0].astype(float)
    w = np.where(img > 0.3 * img.max(), img, 0)
    centroid = np.array([(w * u).sum(), (w * v).sum()]) / w.sum()
    assert np.linalg.norm(centroid - target) < 0.5, (centroid, target, dot)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(SceneError, match=r"sparse/0/cameras\.txt: not found"):
        load(tmp_path)
    write_colmap_text(tmp_path / "sparse" / "0", our_model())
    with pytest.raises(SceneError, match=rf"{tmp_path / 'images'}: images folder not found"):
        load(tmp_path)
    write_images(tmp_path)
    (tmp_path / "images" / "b.jpg").unlink()
    with pytest.raises(SceneError, match=rf"{tmp_path / 'images' / 'b.jpg'}: image not found"):
        load(tmp_path)
    write_images(tmp_path)
    (tmp_path / "sparse" / "0" / "images.txt").unlink()
    with pytest.raises(SceneError, match=r"sparse/0/images\.txt: not found"):
        load(tmp_path)
    model = our_model()
    model.cameras[3] = ColmapCamera("OPENCV_FISHEYE", SIZE[1], SIZE[0], np.array([35.0, 35, 20, 15, 0.1, 0, 0, 0]))
    write_colmap_text(tmp_path / "sparse" / "0", model)
    with pytest.raises(SceneError, match=r"camera 3 uses the OPENCV_FISHEYE model"):
        load(tmp_path)
    (tmp_path / "sparse" / "0" / "cameras.txt").write_text("1 PINHOLE 40 30 35 35 20\n")
    with pytest.raises(SceneError, match=r"cameras\.txt: camera 1 \(PINHOLE\) has 3 parameters, expected 4"):
        load(tmp_path)
