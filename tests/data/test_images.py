"""``images`` loader: plain photos, no depth, no poses, K from a field of view or a file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lit3d.cache import cache_for
from lit3d.config import load_config
from lit3d.data import DataConfig, SceneError, load_scene


def load(root, **kw):
    return load_scene(DataConfig(format="images", root=str(root), **{"resolution": [24, 32], **kw}))


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(root / f"IMG_{k:04d}.jpg")
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), np.uint8)).save(root / "IMG_0005.PNG")
    (root / "notes.txt").write_text("not an image")
    return root


def test_loads_with_fov_intrinsics(photos):
    scene = load(photos, test_every=3, val_every=0)
    assert scene.frame_names == [f"IMG_{k:04d}" for k in range(6)]
    assert not scene.has_depth and not scene.has_poses and not scene.metric
    np.testing.assert_array_equal(scene.split["test"], [1, 4])
    # 60 deg horizontal field of view: f = (W / 2) / tan(30 deg) at any resolution
    np.testing.assert_allclose(scene.K_N33[:, 0, 0], 16 / np.tan(np.radians(30)))
    np.testing.assert_allclose(scene.K_N33[:, :2, 2], [[15.5, 11.5]] * 6)
    assert scene.read_image(5).shape == (24, 32, 3)
    wide = load(photos, hfov_deg=90)
    np.testing.assert_allclose(wide.K_N33[0, 0, 0], 16)


def test_exif_orientation(photos):
    image = Image.fromarray(np.zeros((48, 64, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees: the photo is 48 wide, 64 tall
    image.save(photos / "IMG_0002.jpg", exif=exif)
    scene = load(photos, resolution=[32, 24])
    np.testing.assert_allclose(scene.K_N33[2, 0, 0], 12 / np.tan(np.radians(30)))
    assert scene.read_image(2).shape == (32, 24, 3)


def test_intrinsics_file(photos, tmp_path):
    np.savetxt(tmp_path / "K.txt", [[50, 0, 32], [0, 50, 24], [0, 0, 1]])
    scene = load(photos, intrinsics=str(tmp_path / "K.txt"))
    np.testing.assert_allclose(scene.K_N33[0, 0, 0], 25)
    (tmp_path / "K.txt").write_text("50 0 32\n0 50 24\n")
    with pytest.raises(SceneError) as e:
        load(photos, intrinsics=str(tmp_path / "K.txt"))
    assert str(tmp_path / "K.txt") in str(e.value)


def test_truncated_and_empty(photos, tmp_path):
    path = photos / "IMG_0003.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SceneError) as e:
        load(photos).read_image(3)
    assert str(path) in str(e.value)
    (tmp_path / "none").mkdir()
    with pytest.raises(SceneError, match="no frames") as e:
        load(tmp_path / "none")
    assert str(tmp_path / "none") in str(e.value)


def test_depth_teacher_refuses_images(photos, tmp_path):
    cfg = load_config(["data.format=images", f"data.root={photos}", f"cache_dir={tmp_path}/cache"])
    with pytest.raises(ValueError, match="needs depth"):
        cache_for(cfg)
