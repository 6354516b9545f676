"""``folder`` loader (the shared 7-Scenes sample's flat layout) on generated frames."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from scene_fixtures import N_FRAMES, make_folder, write_pose
from lit3d.data import DataConfig, SceneError, folder, load_scene
from lit3d.data.io import image_size
from lit3d.data.synthetic import synthetic_intrinsics
from lit3d.geometry import scale_intrinsics


def load(root, **kw):
    return load_scene(DataConfig(format="folder", root=str(root), **{"resolution": [24, 32], **kw}))


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_loads_at_native_and_other_resolutions(tmp_path, renders, ext):
    root = make_folder(tmp_path / "f", renders, ext)
    scene = load(root, test_every=4, val_every=0)
    assert scene.name == "folder/f" and scene.frame_names[1] == "frame-000010"
    np.testing.assert_array_equal(scene.split["test"], [2, 6])
    np.testing.assert_allclose(scene.cam2world_N44, renders["poses"], atol=1e-8)
    np.testing.assert_allclose(scene.read_depth(3), renders["small_depths"][3], atol=1e-3)  # mm PNG
    if ext == "png":
        np.testing.assert_array_equal(scene.read_image(3), renders["small_images"][3])
    half = load(root, resolution=[12, 16])
    np.testing.assert_allclose(half.K_N33[0], scale_intrinsics(synthetic_intrinsics(24, 32), 0.5, 0.5))
    np.testing.assert_array_equal(half.read_depth(3), scene.read_depth(3)[1::2, 1::2])  # nearest: pixel centres
    assert half.read_image(3).shape == (12, 16, 3)


def test_recorded_frames_default_to_192x256_with_k_scaled(frame_folder):
    """An empty ``data.resolution`` is the format's default; K scales with the 24x32 renders' native size."""
    scene = load_scene(DataConfig(format="folder", root=str(frame_folder)))
    assert scene.read_image(0).shape == (192, 256, 3) and scene.read_depth(0).shape == (192, 256)
    np.testing.assert_allclose(scene.K_N33[0], scale_intrinsics(synthetic_intrinsics(24, 32), 8, 8))


def test_split_by_test_frames_stride_and_max_frames(frame_folder):
    scene = load(frame_folder, test_frames=["frame-000020", "frame-000050"], val_every=3)
    np.testing.assert_array_equal(scene.split["test"], [2, 5])
    np.testing.assert_array_equal(scene.split["val"], [4])  # every 3rd of 0 1 3 4 6 7, skipping the first
    with pytest.raises(SceneError, match="data.test_frames: 'frame-999999'"):  # was a warning and fewer test frames
        load(frame_folder, test_frames=["frame-000020", "frame-999999"])
    scene = load(frame_folder, stride=3, max_frames=2)
    assert scene.frame_names == ["frame-000000", "frame-000030"]


def test_without_poses_or_depth(frame_folder):
    for f in frame_folder.glob("*.pose.txt"):
        f.unlink()
    for f in frame_folder.glob("*.depth.png"):
        f.unlink()
    scene = load(frame_folder)
    assert not scene.has_poses and not scene.has_depth and not scene.metric


def test_some_frames_without_pose(frame_folder):
    (frame_folder / "frame-000030.pose.txt").unlink()
    with pytest.raises(SceneError, match="missing") as e:
        load(frame_folder)
    assert str(frame_folder / "frame-000030.pose.txt") in str(e.value)


@pytest.mark.parametrize("text", ["inf 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "NaN " * 16, "1 0 0\n0 1 0\n0 0 1\n"])
def test_bad_pose(frame_folder, text):
    path = frame_folder / "frame-000040.pose.txt"
    path.write_text(text)
    with pytest.raises(SceneError) as e:
        load(frame_folder)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["585 0 320 0 585 240 0 0 1 0 0 0", "585 0 320\n0 585 240\n", "a b c\nd e f\ng h i\n"])
def test_intrinsics_not_3x3(frame_folder, text):
    path = frame_folder / "camera-intrinsics.txt"
    path.write_text(text)
    with pytest.raises(SceneError) as e:
        load(frame_folder)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_intrinsics(frame_folder):
    (frame_folder / "camera-intrinsics.txt").unlink()
    with pytest.raises(SceneError, match="not found") as e:
        load(frame_folder)
    assert str(frame_folder / "camera-intrinsics.txt") in str(e.value)


def test_depth_wrong_size_or_type(frame_folder):
    path = frame_folder / "frame-000010.depth.png"
    Image.fromarray(np.ones((12, 16), np.uint16)).save(path)
    scene = load(frame_folder)
    with pytest.raises(SceneError, match="32x24") as e:
        scene.read_depth(1)
    assert str(path) in str(e.value)
    Image.fromarray(np.ones((24, 32), np.uint8)).save(path)  # an 8-bit PNG
    with pytest.raises(SceneError, match="uint16") as e:
        scene.read_depth(1)
    assert str(path) in str(e.value)


def test_truncated_jpeg(frame_folder):
    path = frame_folder / "frame-000070.color.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])
    scene = load(frame_folder)
    with pytest.raises(SceneError, match="truncated") as e:
        scene.read_image(7)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_no_frames(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(SceneError, match="no frames") as e:
        load(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)
    with pytest.raises(SceneError, match="not found") as e:
        load(tmp_path / "absent")
    assert "absent" in str(e.value)


def test_metadata_of_1000_frames_reads_one_image_header_and_no_pixels(tmp_path, renders, monkeypatch):
    """Only file names, poses, the intrinsics and one image header are read; images stay on disk until asked for
    (what the loading time of a large folder depends on, checked without a clock)."""
    src = make_folder(tmp_path / "src", renders)
    root = tmp_path / "big"
    root.mkdir()
    color, depth = (src / "frame-000000.color.jpg").read_bytes(), (src / "frame-000000.depth.png").read_bytes()
    shutil.copy(src / "camera-intrinsics.txt", root)
    for k in range(1000):
        (root / f"frame-{k:06d}.color.jpg").write_bytes(color)
        (root / f"frame-{k:06d}.depth.png").write_bytes(depth)
        write_pose(root / f"frame-{k:06d}.pose.txt", renders["poses"][k % N_FRAMES])

    def refuse(path, *args, **kwargs):
        raise AssertionError(f"{path} decoded while loading the metadata")

    headers = []
    monkeypatch.setattr(folder, "read_rgb", refuse)
    monkeypatch.setattr(folder, "read_depth_png", refuse)
    monkeypatch.setattr(folder, "image_size", lambda path: headers.append(path) or image_size(path))
    scene = load(root)
    assert len(scene) == 1000 and len(headers) == 1
    monkeypatch.undo()
    assert scene.read_image(999).shape == (24, 32, 3) and scene.read_depth(999).shape == (24, 32)


def test_depth_intrinsics_register_depth_to_colour(frame_folder):
    """Raw 7-Scenes-like frames: a narrower depth camera (same centre) re-sampled into the colour camera."""
    K_color = np.loadtxt(frame_folder / "camera-intrinsics.txt")
    K_depth = K_color.copy()
    K_depth[0, 0] = K_depth[1, 1] = K_color[0, 0] * 585 / 525
    np.savetxt(frame_folder / "depth-intrinsics.txt", K_depth)

    def plane_depth(K, u):  # z of the plane z = 2 + 0.3 x seen through column u of camera K
        return 2.0 / (1.0 - 0.3 * (u - K[0, 2]) / K[0, 0])

    u = np.arange(32)
    write_depth = np.repeat(plane_depth(K_depth, u)[None], 24, 0)
    for k in range(N_FRAMES):
        Image.fromarray(np.round(write_depth * 1000).astype(np.uint16)).save(frame_folder / f"frame-{k * 10:06d}.depth.png")
    got = load(frame_folder, depth_intrinsics=str(frame_folder / "depth-intrinsics.txt")).read_depth(2)
    expected = plane_depth(K_color, u)
    # pixels whose ray leaves the depth camera's narrower view have no depth
    def seen(n, c):  # colour pixel -> depth pixel of the same ray, within the n depth pixels
        src = (np.arange(n) - c) * K_depth[0, 0] / K_color[0, 0] + c
        return (src >= -0.5) & (src < n - 0.5)

    inside = seen(24, K_color[1, 2])[:, None] & seen(32, K_color[0, 2])[None]
    assert 0 < inside.sum() < inside.size and np.all(got[~inside] == 0)
    step = np.abs(np.diff(expected)).max() * K_color[0, 0] / K_depth[0, 0]  # depth change per depth pixel
    expected_HW = np.broadcast_to(expected, (24, 32))
    tolerance = step / 2 + 1e-3  # nearest neighbour, millimetre PNG
    np.testing.assert_allclose(got[inside], expected_HW[inside], atol=tolerance)
    # treating the same files as registered puts wrong depths towards the image edges
    registered = load(frame_folder)
    assert np.abs(registered.read_depth(2) - expected_HW)[inside].max() > 2 * tolerance
    # the depth K's values identify the scene (labels depend on them), not its file name
    prints = {load(frame_folder, depth_intrinsics=str(frame_folder / "depth-intrinsics.txt")).fingerprint()}
    shutil.copy(frame_folder / "depth-intrinsics.txt", frame_folder / "copy.txt")
    prints.add(load(frame_folder, depth_intrinsics=str(frame_folder / "copy.txt")).fingerprint())
    assert len(prints) == 1 and registered.fingerprint() not in prints
    K_depth[0, 0] += 1.0
    np.savetxt(frame_folder / "copy.txt", K_depth)
    assert load(frame_folder, depth_intrinsics=str(frame_folder / "copy.txt")).fingerprint() not in prints
    with pytest.raises(SceneError, match="not found") as e:
        load(frame_folder, depth_intrinsics=str(frame_folder / "nope.txt"))
    assert "nope.txt" in str(e.value) and "\n" not in str(e.value)


def test_depth_extrinsics_put_depth_and_poses_in_the_colour_camera(frame_folder):
    """Sensors apart (raw 7-Scenes: 2.5 cm): depth of a world plane rendered by the DEPTH camera, whose pose the
    files give, must land on that plane again when lifted at colour pixels with the colour K and loaded pose."""
    K = np.loadtxt(frame_folder / "camera-intrinsics.txt")
    depth_cam2world = np.loadtxt(frame_folder / "frame-000020.pose.txt")
    # the plane z = 2 + 0.3 x of the depth camera, in world coordinates: n . X = c
    n_cam = np.array([-0.3, 0.0, 1.0])
    n_world, c = depth_cam2world[:3, :3] @ n_cam, 2.0 + n_cam @ depth_cam2world[:3, :3].T @ depth_cam2world[:3, 3]
    u = np.arange(32)
    z = 2.0 / (1.0 - 0.3 * (u - K[0, 2]) / K[0, 0])
    depth_mm = np.round(np.tile(z, (24, 1)) * 1000).astype(np.uint16)
    Image.fromarray(depth_mm).save(frame_folder / "frame-000020.depth.png")
    color_from_depth = np.eye(4)
    color_from_depth[:3, :3] = np.array([[np.cos(0.05), 0, np.sin(0.05)], [0, 1, 0], [-np.sin(0.05), 0, np.cos(0.05)]])
    color_from_depth[:3, 3] = [-0.1, 0.02, 0.1]
    write_pose(frame_folder / "extrinsics.txt", color_from_depth)

    def plane_distance(scene):
        d = scene.read_depth(2)
        v, u = np.nonzero(d > 0)
        X_cam = (np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(scene.K_N33[2]).T) * d[v, u, None]
        X_world = X_cam @ scene.cam2world_N44[2][:3, :3].T + scene.cam2world_N44[2][:3, 3]
        return np.abs(X_world @ n_world - c) / np.linalg.norm(n_world), len(u) / d.size

    ext = str(frame_folder / "extrinsics.txt")
    scene = load(frame_folder, depth_extrinsics=ext, pose_camera="depth")
    R, t = color_from_depth[:3, :3], color_from_depth[:3, 3]  # the colour centre is at -R^T t in the depth camera
    np.testing.assert_allclose(scene.cam2world_N44[2][:3, 3], depth_cam2world[:3, :3] @ (-R.T @ t) +
                               depth_cam2world[:3, 3], atol=1e-6)
    distance, covered = plane_distance(scene)
    step = np.abs(np.diff(z)).max()  # depth change per pixel: splatting and re-sampling are nearest neighbour
    assert covered > 0.6 and distance.max() < step / 2 + 2e-3
    wrong, _ = plane_distance(load(frame_folder, depth_extrinsics=ext))  # poses read as the colour camera's
    assert np.median(wrong) > 4 * (step / 2 + 2e-3)
    with pytest.raises(SceneError, match="data.pose_camera=depth needs data.depth_extrinsics"):
        load(frame_folder, pose_camera="depth")
    (frame_folder / "extrinsics.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    with pytest.raises(SceneError, match="extrinsics.txt: extrinsics is not a 4x4"):
        load(frame_folder, depth_extrinsics=ext)
