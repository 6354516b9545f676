"""The synthetic scene: deterministic, multi-view consistent colour and depth, read lazily from its render cache."""
import logging
from pathlib import Path

import numpy as np

from lit3d.data import load_scene
from lit3d.data.synthetic import _intersect, _layout, render, synthetic_intrinsics
from lit3d.geometry import backproject_depth, invert_pose, project, transform_points


def test_render_is_deterministic_and_cached(tiny_cfg):
    cfg = tiny_cfg()
    a = load_scene(cfg.data, cfg.cache_dir)
    b = load_scene(cfg.data, cfg.cache_dir)  # read back from the render cache
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(a.read_image(3), b.read_image(3))
    assert a.read_image(0).shape == (24, 32, 3) and a.read_image(0).dtype == np.uint8
    assert set(a.split) == {"train", "val", "test"} and len(a.split["test"]) == 4
    other = load_scene(tiny_cfg("data.seed=1").data, cfg.cache_dir)
    assert not np.array_equal(other.read_image(0), a.read_image(0))


def test_depth_is_z_of_the_ray_hit_and_views_agree_in_colour(tiny_cfg):
    cfg = tiny_cfg("data.resolution=[48,64]")
    scene = load_scene(cfg.data, cfg.cache_dir)
    i, j = 0, 1
    depth_i = scene.read_depth(i)
    # independent: intersect the ray through each pixel centre of frame i with the scene
    T = scene.cam2world_N44[i]
    v, u = np.mgrid[0:48, 0:64]
    rays = np.stack([(u - scene.K_N33[i][0, 2]) / scene.K_N33[i][0, 0],
                     (v - scene.K_N33[i][1, 2]) / scene.K_N33[i][1, 1], np.ones_like(u, float)], -1).reshape(-1, 3)
    d = rays @ T[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    t, _, _ = _intersect(T[:3, 3], d, _layout(np.random.default_rng(cfg.data.seed)))
    hit_world = T[:3, 3] + t[:, None] * d
    np.testing.assert_allclose(transform_points(invert_pose(T), hit_world)[:, 2], depth_i.ravel(), rtol=1e-5)
    # a surface point seen by both frames has the same colour in both (texture is a function of the 3D point)
    pts_world = transform_points(T, backproject_depth(depth_i, scene.K_N33[i]).reshape(-1, 3))
    uv, z = project(transform_points(invert_pose(scene.cam2world_N44[j]), pts_world), scene.K_N33[j])
    px = np.round(uv).astype(int, copy=False) if np.isfinite(uv).all() else np.nan_to_num(uv, nan=-1).round().astype(int)
    inside = (px[:, 0] >= 0) & (px[:, 0] < 64) & (px[:, 1] >= 0) & (px[:, 1] < 48) & (z > 0)
    depth_j = scene.read_depth(j)
    visible = inside.copy()
    visible[inside] = np.abs(depth_j[px[inside, 1], px[inside, 0]] - z[inside]) < 0.02 * z[inside]
    assert visible.mean() > 0.5
    col_i = scene.read_image(i).reshape(-1, 3)[visible].astype(float)
    col_j = scene.read_image(j)[px[visible, 1], px[visible, 0]].astype(float)
    assert np.median(np.abs(col_i - col_j)) < 12  # sub-pixel offsets only (0..255 scale)


def test_empty_scene_is_an_error(tiny_cfg):
    import pytest

    from lit3d.data import SceneError

    cfg = tiny_cfg("data.max_frames=0", "data.num_frames=0")
    with pytest.raises(SceneError, match="has no frames"):
        load_scene(cfg.data, cfg.cache_dir)


def test_frames_are_read_lazily_from_the_render_cache_and_a_corrupt_one_is_redone(tiny_cfg, caplog):
    """Frames are read from the render cache one at a time (a scene of thousands of frames is not held in
    memory), equal to a fresh render; a flipped byte in the cache fails its CRC and it is rendered again."""
    cfg = tiny_cfg()
    scene = load_scene(cfg.data, cfg.cache_dir)
    images, depths = render(scene.cam2world_N44[:16], synthetic_intrinsics(24, 32), (24, 32), seed=0)
    for k in range(16):
        assert type(scene.read_image(k)) is np.ndarray and type(scene.read_depth(k)) is np.ndarray
        np.testing.assert_array_equal(scene.read_image(k), images[k])
        np.testing.assert_array_equal(scene.read_depth(k), depths[k])
    path = next((Path(cfg.cache_dir) / "scenes").glob("synthetic-[0-9a-f]*.npz"))
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = load_scene(cfg.data, cfg.cache_dir)
    assert f"synthetic render cache {path} is unreadable" in caplog.text
    for k in (0, 7, 15):
        np.testing.assert_array_equal(again.read_image(k), images[k])
