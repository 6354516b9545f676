"""12Scenes loader on a generated room (colour 162x121 and depth 80x60: the real 1296x968 / 640x480 ratios)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from scene_fixtures import COLOR_12S, N_FRAMES
from lit3d.data import DataConfig, SceneError, load_scene
from lit3d.data.synthetic import render
from lit3d.geometry import scale_intrinsics


def load(root, **kw):
    return load_scene(DataConfig(format="twelvescenes", root=str(root), resolution=[24, 32], **kw))


def test_loads_with_standard_split_and_registered_depth(twelvescenes_room, renders):
    scene = load(twelvescenes_room, val_every=2)
    assert scene.name == "12scenes/kitchen" and len(scene) == N_FRAMES
    assert scene.frame_names[0] == "frame-000000"
    np.testing.assert_array_equal(scene.split["test"], [0, 1, 2])  # split.txt: frames=3 -> the first 3 are test
    assert set(scene.split["val"]) | set(scene.split["train"]) == set(range(3, N_FRAMES)) and len(scene.split["val"])
    K = scale_intrinsics(renders["K_color"], 32 / COLOR_12S[1], 24 / COLOR_12S[0])
    np.testing.assert_allclose(scene.K_N33[4], K)
    np.testing.assert_allclose(scene.cam2world_N44, renders["poses"], atol=1e-8)
    image, depth = scene.read_image(4), scene.read_depth(4)
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    assert depth.shape == (24, 32) and depth.dtype == np.float32
    # what a camera with the scaled colour K sees: depth (from the 80x60 map) and colour (from 162x121) line up
    ref_image, ref_depth = render(renders["poses"][4:5], K, (24, 32), seed=0, supersample=5)
    rel = np.abs(depth - ref_depth[0]) / ref_depth[0]
    assert np.median(rel) < 0.01 and (rel < 0.05).mean() > 0.9
    err = np.abs(image.astype(float) - ref_image[0]).mean()  # measured 2.8 (grey levels)
    err_shifted = np.abs(image[:, 1:].astype(float) - ref_image[0, :, :-1]).mean()  # 20: off by one pixel
    assert err < 6 and err_shifted > 3 * err


def test_stride_and_max_frames(twelvescenes_room):
    scene = load(twelvescenes_room, stride=2, max_frames=3)
    assert scene.frame_names == ["frame-000000", "frame-000002", "frame-000004"]
    np.testing.assert_array_equal(scene.split["test"], [0, 1])  # frame numbers 0 and 2 are < 3


@pytest.mark.parametrize("text", ["INF INF INF INF\n" * 4, "-inf nan 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"])
def test_corrupt_poses_are_skipped_and_counted(twelvescenes_room, caplog, text):
    for k in (1, 5):
        (twelvescenes_room / "data" / f"frame-{k:06d}.pose.txt").write_text(text)
    with caplog.at_level(logging.WARNING):
        scene = load(twelvescenes_room)
    assert "frame-000001" not in scene.frame_names and "frame-000005" not in scene.frame_names
    assert len(scene) == N_FRAMES - 2
    assert scene.source["skipped_corrupt_poses"] == 2
    assert "skipped 2 of 8 frames with corrupt" in caplog.text
    np.testing.assert_array_equal(scene.split["test"], [0, 1])  # frames 0 and 2: frame 1 is gone


@pytest.mark.parametrize("name", ["info.txt", "split.txt"])
def test_missing_info_or_split(twelvescenes_room, name):
    (twelvescenes_room / name).unlink()
    with pytest.raises(SceneError) as e:
        load(twelvescenes_room)
    assert str(twelvescenes_room / name) in str(e.value) and "\n" not in str(e.value)


def test_info_missing_key_or_bad_intrinsics(twelvescenes_room):
    info = twelvescenes_room / "info.txt"
    text = info.read_text()
    info.write_text("\n".join(line for line in text.splitlines() if not line.startswith("m_colorWidth")))
    with pytest.raises(SceneError, match="m_colorWidth") as e:
        load(twelvescenes_room)
    assert str(info) in str(e.value)
    info.write_text(text.replace("m_calibrationColorIntrinsic = ", "m_calibrationColorIntrinsic = 1 2 3 "))
    with pytest.raises(SceneError, match="m_calibrationColorIntrinsic") as e:
        load(twelvescenes_room)
    assert str(info) in str(e.value)


def test_split_without_frames_count(twelvescenes_room):
    (twelvescenes_room / "split.txt").write_text("sequence0 start=0\n")
    with pytest.raises(SceneError, match=r"frames=N") as e:
        load(twelvescenes_room)
    assert str(twelvescenes_room / "split.txt") in str(e.value)


def test_pose_not_4x4_is_an_error(twelvescenes_room):
    path = twelvescenes_room / "data" / "frame-000002.pose.txt"
    path.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(SceneError, match="not a 4x4") as e:
        load(twelvescenes_room)
    assert str(path) in str(e.value)


def test_depth_of_wrong_size_or_type(twelvescenes_room):
    path = twelvescenes_room / "data" / "frame-000003.depth.png"
    Image.fromarray(np.ones((121, 162), np.uint16)).save(path)  # colour-sized depth
    scene = load(twelvescenes_room)
    scene.read_depth(2)
    with pytest.raises(SceneError, match="80x60") as e:
        scene.read_depth(3)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    Image.fromarray(np.ones((60, 80), np.uint8)).save(path)
    with pytest.raises(SceneError, match="uint16") as e:
        scene.read_depth(3)
    assert str(path) in str(e.value)


def test_truncated_jpeg(twelvescenes_room):
    path = twelvescenes_room / "data" / "frame-000006.color.jpg"
    path.write_bytes(path.read_bytes()[:300])
    scene = load(twelvescenes_room)
    with pytest.raises(SceneError, match="truncated") as e:
        scene.read_image(6)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_colour_of_wrong_size(twelvescenes_room):
    path = twelvescenes_room / "data" / "frame-000000.color.jpg"
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(path)
    with pytest.raises(SceneError, match="162x121") as e:
        load(twelvescenes_room).read_image(0)
    assert str(path) in str(e.value)


def test_no_frames(twelvescenes_room):
    for f in (twelvescenes_room / "data").iterdir():
        f.unlink()
    with pytest.raises(SceneError, match="no frames") as e:
        load(twelvescenes_room)
    assert str(twelvescenes_room / "data") in str(e.value)


def test_missing_depth_file(twelvescenes_room):
    path = twelvescenes_room / "data" / "frame-000004.depth.png"
    path.unlink()
    with pytest.raises(SceneError, match="missing") as e:
        load(twelvescenes_room)
    assert str(path) in str(e.value)
