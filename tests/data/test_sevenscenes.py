"""7-Scenes loader on a generated scene (640x480 frames, two sequences, official split files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lit3d.data import DataConfig, SceneError, load_scene
from lit3d.data.sevenscenes import K_COLOR_33


def load(root, **kw):
    return load_scene(DataConfig(format="sevenscenes", root=str(root), **kw))


def test_loads_with_official_split(sevenscenes_scene):
    scene = load(sevenscenes_scene, resolution=[24, 32], val_every=2)
    assert scene.name == "7scenes/chess"
    assert scene.frame_names == [f"seq-0{s}_frame-00000{k}" for s in (1, 2) for k in range(3)]
    np.testing.assert_array_equal(scene.split["test"], [3, 4, 5])  # TestSplit.txt: Sequence2
    np.testing.assert_array_equal(scene.split["val"], [2])
    np.testing.assert_allclose(scene.K_N33[0], [[26.25, 0, 15.525], [0, 26.25, 11.525], [0, 0, 1]])
    assert scene.read_image(0).shape == (24, 32, 3) and scene.read_depth(0).shape == (24, 32)
    assert scene.cam2world_N44.shape == (6, 4, 4)


def test_depth_invalid_code_and_registration_to_colour(sevenscenes_scene):
    scene = load(sevenscenes_scene, resolution=[480, 640])
    np.testing.assert_allclose(scene.K_N33[0], K_COLOR_33)
    depth = scene.read_depth(1)
    # colour pixel u sees depth pixel (u - 320) 585 / 525 + 320 (same centre, other focal)
    u = np.arange(640)
    u_d = np.floor((u - 320) * 585 / 525 + 320 + 0.5)
    inside = (u_d >= 0) & (u_d < 640)
    np.testing.assert_allclose(depth[240, inside], 1.5 + 0.001 * u_d[inside] + 0.1, atol=1e-3)
    assert (depth[240, ~inside] == 0).all()
    # the 65535 block of depth pixels [0, 40) maps to colour pixels < 320 + (40 - 320) 525 / 585 = 68.7
    v_d = np.floor((np.arange(480) - 240) * 585 / 525 + 240 + 0.5)
    v, u = np.nonzero((depth == 0) & inside[None, :] & ((v_d >= 0) & (v_d < 480))[:, None])
    assert u.max() < 70 and v.max() < 70 and not (depth[100:380, 100:540] == 0).any()


def test_stride_runs_over_sequences(sevenscenes_scene):
    scene = load(sevenscenes_scene, resolution=[24, 32], stride=2)
    assert scene.frame_names == ["seq-01_frame-000000", "seq-01_frame-000002", "seq-02_frame-000001"]
    np.testing.assert_array_equal(scene.split["test"], [2])


@pytest.mark.parametrize("name", ["TrainSplit.txt", "TestSplit.txt"])
def test_missing_split_file(sevenscenes_scene, name):
    (sevenscenes_scene / name).unlink()
    with pytest.raises(SceneError) as e:
        load(sevenscenes_scene)
    assert str(sevenscenes_scene / name) in str(e.value) and "\n" not in str(e.value)


def test_bad_split_line(sevenscenes_scene):
    (sevenscenes_scene / "TestSplit.txt").write_text("seq-02\n")
    with pytest.raises(SceneError, match="not a sequence name") as e:
        load(sevenscenes_scene)
    assert str(sevenscenes_scene / "TestSplit.txt") in str(e.value)


def test_missing_sequence_folder(sevenscenes_scene):
    (sevenscenes_scene / "TestSplit.txt").write_text("sequence2\nsequence3\n")
    with pytest.raises(SceneError, match="not found") as e:
        load(sevenscenes_scene)
    assert str(sevenscenes_scene / "seq-03") in str(e.value)


@pytest.mark.parametrize("text", ["INF INF INF INF\n" * 4, "1 0 0 nan\n0 1 0 0\n0 0 1 0\n0 0 0 1\n",
                                  "1 0 0 0\n0 1 0 0\n0 0 1 0\n"])
def test_bad_pose_is_an_error(sevenscenes_scene, text):
    """7-Scenes has no corrupt-pose convention: INF/NaN or a non-4x4 pose is an error naming the file."""
    path = sevenscenes_scene / "seq-02" / "frame-000001.pose.txt"
    path.write_text(text)
    with pytest.raises(SceneError) as e:
        load(sevenscenes_scene)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_depth_of_wrong_size(sevenscenes_scene):
    from PIL import Image

    path = sevenscenes_scene / "seq-01" / "frame-000002.depth.png"
    Image.fromarray(np.ones((240, 320), np.uint16)).save(path)
    with pytest.raises(SceneError, match="640x480") as e:
        load(sevenscenes_scene, resolution=[24, 32]).read_depth(2)
    assert str(path) in str(e.value)


def test_intrinsics_override(sevenscenes_scene, tmp_path):
    np.savetxt(tmp_path / "K.txt", [[530, 0, 321], [0, 531, 241], [0, 0, 1]])
    scene = load(sevenscenes_scene, resolution=[480, 640], intrinsics=str(tmp_path / "K.txt"))
    np.testing.assert_allclose(scene.K_N33[0, 0], [530, 0, 321])
    (tmp_path / "K.txt").write_text("530 0 321 0 531 241\n")
    with pytest.raises(SceneError) as e:
        load(sevenscenes_scene, intrinsics=str(tmp_path / "K.txt"))
    assert str(tmp_path / "K.txt") in str(e.value)


def test_no_frames(tmp_path):
    (tmp_path / "seq-01").mkdir()
    (tmp_path / "TrainSplit.txt").write_text("sequence1\n")
    (tmp_path / "TestSplit.txt").write_text("")
    with pytest.raises(SceneError, match="no frames") as e:
        load(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_sensor_offset_moves_depth_and_poses_into_the_colour_camera(sevenscenes_scene):
    """The repository's 7-Scenes extrinsics: the colour camera 2.5 cm along the depth camera's +x."""
    ext = "experiments/cameras/7scenes_depth_to_color.txt"
    root = Path(__file__).resolve().parents[2]
    plain = load(sevenscenes_scene, resolution=[480, 640])
    moved = load(sevenscenes_scene, resolution=[480, 640], depth_extrinsics=str(root / ext), pose_camera="depth")
    # colour centre = depth centre + 2.5 cm along the depth camera's x axis; same orientation
    np.testing.assert_allclose(moved.cam2world_N44[:, :3, 3],
                               plain.cam2world_N44[:, :3, 3] + 0.025 * plain.cam2world_N44[:, :3, 0], atol=1e-9)
    np.testing.assert_allclose(moved.cam2world_N44[:, :3, :3], plain.cam2world_N44[:, :3, :3])
    d_plain, d_moved = plain.read_depth(1), moved.read_depth(1)
    both = (d_plain > 0) & (d_moved > 0)
    assert both.mean() > 0.5 and not np.array_equal(d_plain[both], d_moved[both])
    with pytest.raises(SceneError, match="data.depth_intrinsics is set but data.format=sevenscenes"):
        load(sevenscenes_scene, depth_intrinsics=str(root / ext))
