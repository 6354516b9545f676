"""Shared readers of lit3d.data.io: poses, intrinsics, depth PNGs, images, depth resampling."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from lit3d.data.io import (CorruptPoseError, project_depth, read_depth_png, read_extrinsics, read_intrinsics,
                           read_pose, read_rgb, resample_depth, resize_rgb)
from lit3d.data.scene import SceneError
from lit3d.geometry import look_at, scale_intrinsics


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_read_pose_roundtrip_and_layouts(tmp_path):
    T = look_at(np.array([1.0, 2, 3]), np.array([0.0, 0, 1]))
    (tmp_path / "a.txt").write_text("\n".join(" ".join(map(str, r)) for r in T) + "\n\n")
    (tmp_path / "b.txt").write_text(" ".join(map(str, T.ravel())))
    np.testing.assert_allclose(read_pose(tmp_path / "a.txt"), T)
    np.testing.assert_allclose(read_pose(tmp_path / "b.txt"), T)


@pytest.mark.parametrize("text", ["INF INF INF INF\n" * 4, "1 0 0 nan\n0 1 0 0\n0 0 1 0\n0 0 0 1\n",
                                  "-inf 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"])
def test_read_pose_corrupt_is_distinguishable(tmp_path, text):
    path = tmp_path / "frame-000003.pose.txt"
    path.write_text(text)
    with pytest.raises(CorruptPoseError) as e:
        read_pose(path)
    assert str(path) in one_line(e)


@pytest.mark.parametrize("text", ["1 0 0 0\n0 1 0 0\n0 0 1 0\n", "1 0 0\n0 1 0\n0 0 1\n",
                                  "1 0 0 0\n0 2 0 0\n0 0 1 0\n0 0 0 1\n", "1 0 0 x\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", ""])
def test_read_pose_not_rigid_4x4(tmp_path, text):
    path = tmp_path / "frame-000001.pose.txt"
    path.write_text(text)
    with pytest.raises(SceneError) as e:
        read_pose(path)
    assert not isinstance(e.value, CorruptPoseError)
    assert str(path) in one_line(e)


def test_read_pose_missing(tmp_path):
    with pytest.raises(SceneError) as e:
        read_pose(tmp_path / "nope.pose.txt")
    assert "nope.pose.txt" in one_line(e)


@pytest.mark.parametrize("text", ["585 0 320 0\n0 585 240 0\n0 0 1 0\n", "585 0 320\n0 585 240\n", "1 2 3 4 5 6 7 8 9",
                                  "585 0 320\n0 585 240\n0 0 0\n"])
def test_read_intrinsics_not_3x3(tmp_path, text):
    path = tmp_path / "camera-intrinsics.txt"
    path.write_text(text)
    with pytest.raises(SceneError) as e:
        read_intrinsics(path)
    assert str(path) in one_line(e)


def test_read_intrinsics(tmp_path):
    np.savetxt(tmp_path / "K.txt", [[585, 0, 320], [0, 585, 240], [0, 0, 1]])
    np.testing.assert_allclose(read_intrinsics(tmp_path / "K.txt")[:2], [[585, 0, 320], [0, 585, 240]])


def test_read_depth_png(tmp_path):
    raw = np.array([[0, 1000, 65535], [2500, 1, 400]], np.uint16)
    Image.fromarray(raw).save(tmp_path / "d.png")
    depth = read_depth_png(tmp_path / "d.png", (2, 3))
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, [[0, 1, 0], [2.5, 0.001, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(read_depth_png(tmp_path / "d.png", None, scale=5000, invalid=(0,))[0, 2], 13.107)


def test_read_depth_png_wrong_size_or_type(tmp_path):
    Image.fromarray(np.ones((4, 6), np.uint16)).save(tmp_path / "size.png")
    Image.fromarray(np.ones((4, 6), np.uint8)).save(tmp_path / "u8.png")
    Image.fromarray(np.ones((4, 6, 3), np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    for name, size in (("size.png", (4, 5)), ("u8.png", (4, 6)), ("rgb.png", (4, 6)), ("junk.png", (4, 6))):
        with pytest.raises(SceneError) as e:
            read_depth_png(tmp_path / name, size)
        assert str(tmp_path / name) in one_line(e)


def test_read_rgb_truncated_jpeg_is_an_error_even_if_pil_is_told_to_accept(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) - 40])
    assert read_rgb(tmp_path / "ok.jpg").shape == (48, 64, 3)
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # as some libraries set it globally
    try:
        with pytest.raises(SceneError) as e:
            read_rgb(tmp_path / "cut.jpg")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert str(tmp_path / "cut.jpg") in one_line(e)


def test_read_rgb_converts_modes(tmp_path):
    Image.fromarray(np.full((5, 7), 9, np.uint8)).save(tmp_path / "grey.png")
    rgb = read_rgb(tmp_path / "grey.png")
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and (rgb == 9).all()


def test_resize_rgb_is_area_average():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[::2, ::2] = 200  # a checkerboard-like pattern averages out, not aliases
    out = resize_rgb(rgb, (2, 2))
    assert out.shape == (2, 2, 3) and (out == 50).all()


def test_resample_depth_resize_matches_pixel_centres():
    depth = np.arange(12, dtype=np.float32).reshape(4, 3)
    K = np.array([[3.0, 0, 1], [0, 3.0, 1.5], [0, 0, 1]])
    out = resample_depth(depth, K, scale_intrinsics(K, 2, 2), (8, 6))
    np.testing.assert_array_equal(out, depth.repeat(2, 0).repeat(2, 1))
    out = resample_depth(out, scale_intrinsics(K, 2, 2), K, (4, 3))
    np.testing.assert_array_equal(out, depth)


def test_resample_depth_registers_cameras_that_differ_in_focal():
    """7-Scenes: depth camera f=585, colour f=525, same principal point: a tilted plane lines up."""
    K_d = np.array([[585.0, 0, 320], [0, 585, 240], [0, 0, 1]])
    K_c = np.array([[525.0, 0, 320], [0, 525, 240], [0, 0, 1]])
    # plane z = 2 + 0.5 x (camera frame): depth at pixel u is 2 / (1 - 0.5 (u - cx) / f)
    u = np.arange(640)
    depth_d = np.tile(2 / (1 - 0.5 * (u - 320) / 585), (480, 1)).astype(np.float32)
    out = resample_depth(depth_d, K_d, K_c, (480, 640))
    expected = 2 / (1 - 0.5 * (u - 320) / 525)
    u_d = np.floor((u - 320) * 585 / 525 + 320 + 0.5)
    inside = (u_d >= 0) & (u_d < 640)  # the colour camera sees wider than the depth camera
    assert 0.85 < inside.mean() < 0.92  # 525 / 585 of the width
    v_d = np.floor((np.arange(480) - 240) * 585 / 525 + 240 + 0.5)
    inside_2d = ((v_d >= 0) & (v_d < 480))[:, None] & inside[None, :]
    assert (out[~inside_2d] == 0).all() and (out[inside_2d] > 0).all()
    np.testing.assert_allclose(out[240, inside], expected[inside], rtol=2e-3)  # nearest neighbour: < 1 px


def test_project_depth_moves_the_camera_and_keeps_the_nearest_surface():
    """A 1 m square in front of a 3 m wall, seen from a camera 0.3 m to the right: the square shifts by f 0.3 / 1
    = 6 px, the wall by 2 px; where both land the square wins, and the wall strip the square hid stays 0."""
    f, h, w = 20.0, 10, 40
    K = np.array([[f, 0, 20.0], [0, f, 5.0], [0, 0, 1]])
    src = np.full((h, w), 3.0, np.float32)
    src[:, 15:25] = 1.0
    dst_from_src = np.eye(4)
    dst_from_src[0, 3] = -0.3  # the destination centre sits at x = +0.3 m in the source camera
    out = project_depth(src, K, K, dst_from_src, (h, w))
    expected = np.zeros(w)
    for u in range(w):  # independent: which source pixel shows what at destination column u
        fg, bg = u + 6, u + 2  # source columns whose square / wall points land on u
        if 15 <= fg < 25:
            expected[u] = 1.0
        elif 0 <= bg < w and not 15 <= bg < 25:
            expected[u] = 3.0
    assert (expected == 0).sum() == 6  # 4 disoccluded wall columns and 2 beyond the source's right edge
    np.testing.assert_array_equal(out, np.tile(expected, (h, 1)))
    np.testing.assert_array_equal(project_depth(src, K, K, np.eye(4), (h, w)), src)  # the same camera


def test_read_extrinsics_rejects_what_is_not_rigid(tmp_path):
    path = tmp_path / "depth_to_color.txt"
    path.write_text("1 0 0 -0.025\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    np.testing.assert_array_equal(read_extrinsics(path)[:3, 3], [-0.025, 0, 0])
    for text in ("2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "1 0 0 nan\n0 1 0 0\n0 0 1 0\n0 0 0 1\n", "1 0 0\n0 1 0\n"):
        path.write_text(text)
        with pytest.raises(SceneError) as e:
            read_extrinsics(path)
        assert str(path) in one_line(e)
