"""The depth teacher's outputs against an independent computation from the renderer."""
import numpy as np
import torch

from lit3d.cache.build import FrameSource, ShardDataset
from lit3d.data import load_scene
from lit3d.data.synthetic import _intersect, _layout
from lit3d.geometry import invert_pose, project, transform_points
from lit3d.teachers import OUTPUT_KEYS, create_teacher


def test_pts_j_in_i_reprojects_where_the_renderer_says(tiny_cfg):
    cfg = tiny_cfg("data.resolution=[48,64]")
    scene = load_scene(cfg.data, cfg.cache_dir)
    teacher = create_teacher(cfg.teacher)
    edges = np.array([[0, 1], [1, 0], [2, 3]])
    batch = ShardDataset(FrameSource(scene, teacher.frame_transform(48, 64)), edges, [0], 3)[0]
    out = teacher(batch)
    assert set(OUTPUT_KEYS) <= set(out)
    assert out["pts_i"].shape == (3, 48, 64, 3) and out["conf_j"].shape == (3, 48, 64)
    assert (out["conf_i"] >= 1).all()
    i, j = 0, 1
    # independent: world points of frame j's pixels by ray casting, projected into camera i with its pose
    T_j = scene.cam2world_N44[j]
    v, u = np.mgrid[0:48, 0:64]
    K = scene.K_N33[j]
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1).reshape(-1, 3) @ T_j[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    t, _, _ = _intersect(T_j[:3, 3], d, _layout(np.random.default_rng(cfg.data.seed)))
    X_cam_i = transform_points(invert_pose(scene.cam2world_N44[i]), T_j[:3, 3] + t[:, None] * d)
    uv_expected, _ = project(X_cam_i, scene.K_N33[i])
    uv_teacher, _ = project(out["pts_j_in_i"][0].reshape(-1, 3).double().numpy(), scene.K_N33[i])
    np.testing.assert_allclose(uv_teacher, uv_expected, atol=1e-3)
    # and pts_i is camera-i frame: its z is frame i's depth
    np.testing.assert_allclose(out["pts_i"][0, ..., 2].numpy(), scene.read_depth(i), rtol=1e-6)


def test_invalid_depth_gets_confidence_one_and_is_masked():
    from lit3d.config import load_config

    teacher = create_teacher(load_config([]).teacher)
    depth = torch.full((1, 4, 5), 2.0)
    depth[0, 0, 0] = 0.0
    depth[0, 1, 1] = float("nan")
    K = torch.tensor([[[4.0, 0, 2], [0, 4, 1.5], [0, 0, 1]]])
    batch = {"depth_i": depth, "depth_j": depth, "K_i": K, "K_j": K,
             "cam2world_i": torch.eye(4)[None], "cam2world_j": torch.eye(4)[None]}
    out = teacher(batch)
    assert not out["valid_i"][0, 0, 0] and not out["valid_i"][0, 1, 1] and out["valid_i"].sum() == 18
    assert out["conf_i"][0, 0, 0] == 1 and out["conf_i"][0, 2, 2] == 10
    assert torch.isfinite(out["pts_i"]).all()
