"""Geometric augmentation of world-labelled views, checked against camera geometry computed independently."""
import math

import numpy as np
import pytest
import torch

from lit3d.cache.augment import Warp, sample_warp, warp_view
from lit3d.geometry import backproject_depth, look_at, transform_points

H, W = 48, 64
K_33 = np.array([[58.0, 0.0, 31.5], [0.0, 56.0, 23.5], [0.0, 0.0, 1.0]])
CAM2WORLD_44 = look_at(np.array([0.4, -2.0, 1.3]), np.array([0.1, 0.5, 0.9]))


def make_item(seed: int = 0) -> dict[str, torch.Tensor]:
    """A view of a bumpy surface: world labels back-projected from depth, some labels invalid."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W]
    depth_HW = 2.0 + 0.3 * np.sin(u / 7.0) + 0.2 * np.cos(v / 5.0)
    pts_world_HW3 = transform_points(CAM2WORLD_44, backproject_depth(depth_HW, K_33).astype(np.float64))
    valid_HW = rng.random((H, W)) > 0.1
    return {"image": torch.from_numpy(rng.random((3, H, W))).float(),
            "pts_world": torch.from_numpy(pts_world_HW3).float().permute(2, 0, 1).contiguous(),
            "conf": torch.from_numpy(1 + rng.random((H, W))).float(),
            "valid": torch.from_numpy(valid_HW), "depth": torch.from_numpy(depth_HW).float(),
            "K": torch.from_numpy(K_33).float(), "cam2world": torch.from_numpy(CAM2WORLD_44).float()}


def source_pixel(u_new: float, v_new: float, warp: Warp) -> tuple[float, float]:
    """Where a new pixel's ray meets the OLD image, from the camera model alone (no matrices of the module)."""
    fx, fy, cx, cy = K_33[0, 0], K_33[1, 1], K_33[0, 2], K_33[1, 2]
    # ray in the new camera: focal scaled, principal point shifted
    x_new = (u_new - cx - warp.shift_x) / (fx * warp.scale)
    y_new = (v_new - cy - warp.shift_y) / (fy * warp.scale)
    # the new camera is the old one rolled by +angle about z: old ray = roll by -angle
    c, s = math.cos(warp.angle), math.sin(warp.angle)
    x_old, y_old = c * x_new + s * y_new, -s * x_new + c * y_new
    return fx * x_old + cx, fy * y_old + cy


WARPS = [Warp(math.radians(12), 1.3, 3.0, -2.0), Warp(math.radians(-25), 0.7, -4.0, 1.5), Warp(0.0, 1.0, 0.0, 0.0)]


@pytest.mark.parametrize("warp", WARPS)
def test_label_at_p_is_the_original_label_at_the_inverse_warped_pixel(warp):
    item = make_item()
    out = warp_view(item, warp)
    for v_new in range(0, H, 5):
        for u_new in range(0, W, 5):
            u, v = source_pixel(u_new, v_new, warp)
            iu, iv = round(u), round(v)
            if 0 <= iu < W and 0 <= iv < H:
                assert bool(out["valid"][v_new, u_new]) == bool(item["valid"][iv, iu])
                assert torch.equal(out["pts_world"][:, v_new, u_new], item["pts_world"][:, iv, iu])
                assert out["conf"][v_new, u_new] == item["conf"][iv, iu]
                assert out["inside"][v_new, u_new]
            elif min(u, v) < -0.5 - 1e-6 or u > W - 0.5 + 1e-6 or v > H - 0.5 + 1e-6:
                assert not out["valid"][v_new, u_new] and not out["inside"][v_new, u_new]


@pytest.mark.parametrize("warp", WARPS)
def test_augmented_labels_project_onto_their_own_pixels(warp):
    out = warp_view(make_item(), warp)
    K, T = out["K"].double().numpy(), out["cam2world"].double().numpy()
    pts_cam = transform_points(np.linalg.inv(T), out["pts_world"].double().permute(1, 2, 0).numpy())
    uv = (pts_cam @ K.T)[..., :2] / pts_cam[..., 2:]
    v, u = np.mgrid[0:H, 0:W]
    err = np.linalg.norm(uv - np.stack([u, v], -1), axis=-1)[out["valid"].numpy()]
    assert out["valid"].sum() > 0.3 * H * W
    # nearest labels sit at most half a source pixel off along each axis: sqrt(0.5) * scale new pixels
    assert err.max() < math.sqrt(0.5) * warp.scale + 1e-3
    assert np.median(err) < 0.5 * warp.scale
    # camera depths are unchanged by a roll about the optical axis: depth map and labels still agree
    depth = out["depth"].numpy()[out["valid"].numpy()]
    np.testing.assert_allclose(pts_cam[..., 2][out["valid"].numpy()], depth, rtol=1e-5, atol=1e-5)


def test_zoom_out_pads_with_invalid_black_pixels():
    out = warp_view(make_item(), Warp(0.0, 0.5, 0.0, 0.0))
    # the source image covers the centre half of the new one; the borders are padding
    assert not out["inside"][:, :10].any() and not out["valid"][:, :10].any()
    assert not out["inside"][:5].any() and out["inside"][H // 2, W // 2]
    assert torch.all(out["image"][:, :, :10] == 0)
    assert torch.all(out["pts_world"][:, :5] == 0) and torch.all(out["depth"][:5] == 0)


def test_image_is_resampled_bilinearly_at_the_source_position():
    item = make_item()
    warp = Warp(math.radians(7), 1.1, 1.0, 0.5)
    out = warp_view(item, warp)
    img = item["image"].numpy()
    for v_new, u_new in [(10, 12), (30, 40), (24, 33)]:
        u, v = source_pixel(u_new, v_new, warp)
        u0, v0 = int(math.floor(u)), int(math.floor(v))
        fu, fv = u - u0, v - v0
        expect = ((1 - fu) * (1 - fv) * img[:, v0, u0] + fu * (1 - fv) * img[:, v0, u0 + 1]
                  + (1 - fu) * fv * img[:, v0 + 1, u0] + fu * fv * img[:, v0 + 1, u0 + 1])
        np.testing.assert_allclose(out["image"][:, v_new, u_new].numpy(), expect, atol=1e-5)


def test_sampled_warps_stay_in_their_ranges():
    g = torch.Generator().manual_seed(0)
    warps = [sample_warp(15.0, (2 / 3, 3 / 2), 0.1, (H, W), g) for _ in range(500)]
    angles = np.degrees([w.angle for w in warps])
    scales = np.array([w.scale for w in warps])
    assert np.abs(angles).max() <= 15 and np.abs(angles).max() > 14
    assert scales.min() >= 2 / 3 - 1e-9 and scales.max() <= 1.5 + 1e-9
    assert abs(np.median(np.log(scales))) < 0.05  # log-uniform: as much zoom in as out
    assert max(abs(w.shift_x) for w in warps) <= 0.1 * W and max(abs(w.shift_y) for w in warps) <= 0.1 * H


def test_datamodule_augments_training_views_only_and_can_be_turned_off(tiny_cfg):
    from lit3d.cache import build_labels
    from lit3d.cache.datamodule import PointmapDataModule

    cfg = tiny_cfg("student=mobilenetv3", "loader.color_jitter=0")
    cache, _ = build_labels(cfg)
    dm = PointmapDataModule(cache, cfg.loader)
    dm.setup()
    torch.manual_seed(0)
    train = dm.datasets["train"]
    raw, warped = train.item(0, geometric=False), train[0]
    assert raw["inside"].all() and not torch.equal(raw["K"], warped["K"])
    assert not torch.equal(raw["cam2world"], warped["cam2world"])
    # the warped view still projects its labels onto their own pixels through its own camera
    T, K = warped["cam2world"].double(), warped["K"].double()
    pts_cam = (torch.linalg.inv(T)[:3, :3] @ warped["pts_world"].double().flatten(1)).T + torch.linalg.inv(T)[:3, 3]
    uv = (pts_cam @ K.T)[:, :2] / pts_cam[:, 2:]
    h, w = warped["valid"].shape
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ok = warped["valid"].flatten()
    err = (uv - torch.stack([u.flatten(), v.flatten()], 1).double()).norm(dim=1)[ok]
    assert ok.sum() > 0 and err.max() < math.sqrt(0.5) * 1.5 + 1e-3
    for split in ("val", "test"):  # never augmented
        item = dm.datasets[split][0]
        assert item["inside"].all() and torch.equal(item["K"], dm.datasets[split].frames[0]["K"])

    # off: photometric only (here none), items equal the stored frames
    cfg_off = tiny_cfg("student=mobilenetv3", "loader.color_jitter=0", "loader.geometric=false")
    dm_off = PointmapDataModule(cache, cfg_off.loader)
    dm_off.setup()
    item, stored = dm_off.datasets["train"][0], dm_off.datasets["train"].frames[0]
    assert torch.equal(item["image"], stored["image"].float() / 255) and item["inside"].all()
    assert torch.equal(item["pts_world"], stored["pts_world"]) and torch.equal(item["K"], stored["K"])
    # photometric only: the image changes, the geometry does not
    cfg_photo = tiny_cfg("student=mobilenetv3", "loader.color_jitter=0.3", "loader.geometric=false")
    dm_photo = PointmapDataModule(cache, cfg_photo.loader)
    dm_photo.setup()
    item = dm_photo.datasets["train"][0]
    assert not torch.equal(item["image"], stored["image"].float() / 255)
    assert torch.equal(item["pts_world"], stored["pts_world"]) and torch.equal(item["valid"], stored["valid"])


def test_reprojection_loss_needs_poses_that_describe_the_labels():
    from lit3d.cache.datamodule import check_poses_describe_labels

    frame = {k: v.numpy() for k, v in make_item().items()}
    frame["pts_world"] = frame["pts_world"].transpose(1, 2, 0)
    frame["image"] = (frame["image"].transpose(1, 2, 0) * 255).astype(np.uint8)

    class Cache:  # the two things the check reads of a LabelCache
        root = "cache/labels/x"

        def __init__(self, frame):
            self.frame = frame

        def load_frame(self, name):
            return self.frame

    check_poses_describe_labels(Cache(frame), ["a", "b"])
    moved = dict(frame, cam2world=np.eye(4, dtype=np.float32))  # e.g. labels in the first camera's frame
    with pytest.raises(ValueError, match="loss.name=reprojection needs camera poses .* frame a .* use loss.name=mse"):
        check_poses_describe_labels(Cache(moved), ["a", "b"])


@pytest.mark.parametrize("bad", [["loader.scale_range=[1.5,0.5]"], ["loader.scale_range=[0,1]"], ["loader.shift=1.0"],
                                 ["loader.rotation_deg=-1"], ["loader.scale_range=[1.0]"]])
def test_bad_augmentation_ranges_are_one_line_errors(bad):
    from lit3d.cache.datamodule import geometric_augmentation
    from lit3d.config import load_config

    with pytest.raises(ValueError, match="loader.geometric: need"):
        geometric_augmentation(load_config(bad).loader)
    assert geometric_augmentation(load_config([*bad, "loader.geometric=false"]).loader) is None
