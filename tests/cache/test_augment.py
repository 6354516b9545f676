"""Geometric augmentation of world-labelled views, checked against camera geometry computed independently."""
import math

import numpy as np
import pytest
import torch

from scipy.spatial.transform import Rotation

from lit3d.cache.augment import Augmentation, Warp, move_view, sample_move, sample_warp, warp_view
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
    # the new camera's coordinates are R (old ones), R = roll about z after pitch about x and yaw about y
    # (intrinsic Z-X-Y Euler angles): the old ray is R^T times the new one
    R = Rotation.from_euler("ZXY", [warp.angle, warp.pitch, warp.yaw]).as_matrix()
    x_old, y_old, z_old = R.T @ np.array([x_new, y_new, 1.0])
    return fx * x_old / z_old + cx, fy * y_old / z_old + cy


def label_pixel_errors(item: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an (augmented) item: the distance (h, w) between each label's projection through the item's own K and
    pose and its pixel centre, the labels' camera depths (h, w), and the valid mask (h, w)."""
    K, T = item["K"].double().numpy(), item["cam2world"].double().numpy()
    pts_cam = transform_points(np.linalg.inv(T), item["pts_world"].double().permute(1, 2, 0).numpy())
    ok = item["valid"].numpy()
    with np.errstate(divide="ignore", invalid="ignore"):  # unlabelled pixels may hold anything
        uv = (pts_cam @ K.T)[..., :2] / pts_cam[..., 2:]
    v, u = np.mgrid[0 : ok.shape[0], 0 : ok.shape[1]]
    return np.linalg.norm(uv - np.stack([u, v], -1), axis=-1), pts_cam[..., 2], ok


def tiny_datamodule(tiny_cfg, *overrides: str):
    """The set-up datamodule of the tiny synthetic scene with ``loader.*`` ``overrides``."""
    from lit3d.cache import build_labels
    from lit3d.cache.datamodule import PointmapDataModule

    cfg = tiny_cfg("student=mobilenetv3", "loader.color_jitter=0", *overrides)
    cache, _ = build_labels(cfg)
    dm = PointmapDataModule(cache, cfg.loader)
    dm.setup()
    return dm


WARPS = [Warp(math.radians(12), 1.3, 3.0, -2.0), Warp(math.radians(-25), 0.7, -4.0, 1.5), Warp(0.0, 1.0, 0.0, 0.0),
         Warp(math.radians(5), 1.1, 1.0, 2.0, pitch=math.radians(9), yaw=math.radians(-7))]


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
    err_HW, z_HW, ok = label_pixel_errors(out)
    err = err_HW[ok]
    assert ok.mean() > 0.3
    # nearest labels sit at most half a source pixel off along each axis: sqrt(0.5) * scale new pixels (a tilt
    # magnifies the image by up to ~1 / cos^2 of the ray's angle to the new axis: a 20 % margin)
    magnification = warp.scale * (1.2 if warp.pitch or warp.yaw else 1.0)
    assert err.max() < math.sqrt(0.5) * magnification + 1e-3
    assert np.median(err) < 0.5 * magnification
    # the depth map is the labels' depth in the new camera (unchanged by a roll, recomputed for a tilt)
    np.testing.assert_allclose(z_HW[ok], out["depth"].numpy()[ok], rtol=1e-5, atol=1e-5)


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
    from lit3d.cache.datamodule import PointmapDataModule

    dm = tiny_datamodule(tiny_cfg)
    cache = dm.cache
    torch.manual_seed(0)
    train = dm.datasets["train"]
    raw, warped = train.item(0, geometric=False), train[0]
    assert raw["inside"].all() and not torch.equal(raw["K"], warped["K"])
    assert not torch.equal(raw["cam2world"], warped["cam2world"])
    # the warped view still projects its labels onto their own pixels through its own camera
    err_HW, _, ok = label_pixel_errors(warped)
    assert ok.sum() > 0 and err_HW[ok].max() < math.sqrt(0.5) * 1.5 + 1e-3
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
    with pytest.raises(ValueError, match="^loader.view_shift needs camera poses .* set loader.view_shift=0$"):
        check_poses_describe_labels(Cache(moved), ["a"], need="loader.view_shift", remedy="set loader.view_shift=0")


@pytest.mark.parametrize("bad", [["loader.scale_range=[1.5,0.5]"], ["loader.scale_range=[0,1]"], ["loader.shift=1.0"],
                                 ["loader.rotation_deg=-1"], ["loader.scale_range=[1.0]"], ["loader.tilt_deg=-2"],
                                 ["loader.view_shift=1.5"], ["loader.view_shift_prob=1.5"],
                                 ["loader.view_shift_until=-0.1"]])
def test_bad_augmentation_ranges_are_one_line_errors(bad):
    from lit3d.cache.datamodule import geometric_augmentation
    from lit3d.config import load_config

    with pytest.raises(ValueError, match="loader.geometric: need"):
        geometric_augmentation(load_config(bad).loader)
    assert geometric_augmentation(load_config([*bad, "loader.geometric=false"]).loader) is None


@pytest.mark.parametrize("pitch_deg", [30.0, 80.0])
def test_tilted_views_show_exactly_the_rays_that_meet_the_source_image(pitch_deg):
    """A strong tilt sends some new rays behind the source camera: they are padding, never wrapped around."""
    warp = Warp(pitch=math.radians(pitch_deg))
    out = warp_view(make_item(), warp)
    R = Rotation.from_euler("ZXY", [0.0, warp.pitch, 0.0]).as_matrix()
    seen, behind = [], []
    for v_new in range(0, H, 3):
        for u_new in range(0, W, 7):
            ray_old = R.T @ np.array([(u_new - K_33[0, 2]) / K_33[0, 0], (v_new - K_33[1, 2]) / K_33[1, 1], 1.0])
            u, v = source_pixel(u_new, v_new, warp)
            seen.append(ray_old[2] > 0 and -0.5 < u < W - 0.5 and -0.5 < v < H - 0.5)
            behind.append(ray_old[2] <= 0)
            assert bool(out["inside"][v_new, u_new]) == seen[-1]
    assert any(seen) if pitch_deg == 30.0 else any(behind)


def two_planes_item(fg_depth: float = 1.5, bg_depth: float = 3.0) -> dict[str, torch.Tensor]:
    """A camera at the origin looking down +z (world = camera frame) at a square at ``fg_depth`` in front of a wall
    at ``bg_depth``; every pixel labelled."""
    K = np.array([[60.0, 0.0, (W - 1) / 2], [0.0, 60.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    depth = np.where(front_square(rays * fg_depth), fg_depth, bg_depth)
    return {"image": torch.from_numpy(np.stack([depth == fg_depth, depth != fg_depth, u / W])).float(),
            "pts_world": torch.from_numpy((rays * depth[..., None]).transpose(2, 0, 1).copy()).float(),
            "conf": torch.ones(H, W), "valid": torch.ones(H, W, dtype=torch.bool),
            "depth": torch.from_numpy(depth).float(), "K": torch.from_numpy(K).float(), "cam2world": torch.eye(4)}


def front_square(pts_3: np.ndarray) -> np.ndarray:
    return (np.abs(pts_3[..., 0]) < 0.3) & (np.abs(pts_3[..., 1]) < 0.25)


def ray_cast_depth(K: np.ndarray, centre_3: np.ndarray, fg_depth: float = 1.5, bg_depth: float = 3.0) -> np.ndarray:
    """(H, W) depth of the first surface of :func:`two_planes_item` seen by each pixel of an axis-aligned camera
    at ``centre_3``, computed analytically."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    hit_fg = front_square(centre_3 + rays * (fg_depth - centre_3[2]))
    return np.where(hit_fg, fg_depth, bg_depth) - centre_3[2]


def test_a_moved_view_keeps_no_offset_identity():
    item = make_item()
    out = move_view(item, torch.zeros(3))
    ok = item["valid"]
    assert torch.equal(out["valid"], ok) and torch.equal(out["cam2world"], item["cam2world"])
    assert torch.equal(out["pts_world"][:, ok], item["pts_world"][:, ok])
    assert torch.equal(out["image"][:, ok], item["image"][:, ok])


@pytest.mark.parametrize("offset", [(0.08, 0.0, 0.0), (-0.05, 0.06, 0.0), (0.0, 0.0, 0.15), (0.04, -0.03, -0.1)])
def test_a_moved_view_shows_the_nearest_surface_and_projects_onto_its_own_pixels(offset):
    item = two_planes_item()
    out = move_view(item, torch.tensor(offset))
    median_depth = float(item["depth"].median())
    centre = np.array(offset) * median_depth
    np.testing.assert_allclose(out["cam2world"][:3, 3].numpy(), centre, atol=1e-6)
    assert torch.equal(out["cam2world"][:3, :3], torch.eye(3)) and torch.equal(out["K"], item["K"])
    K, ok = out["K"].double().numpy(), out["valid"].numpy()
    pts_cam = out["pts_world"].double().permute(1, 2, 0).numpy() - centre
    with np.errstate(divide="ignore", invalid="ignore"):  # unlabelled pixels hold zeros
        uv = (pts_cam @ K.T)[..., :2] / pts_cam[..., 2:]
    v, u = np.mgrid[0:H, 0:W]
    err = np.linalg.norm(uv - np.stack([u, v], -1), axis=-1)[ok]
    assert ok.mean() > 0.6 and err.max() <= math.sqrt(0.5) + 1e-4
    np.testing.assert_allclose(out["depth"].numpy()[ok], pts_cam[..., 2][ok], rtol=1e-5)
    # no label shows a point hidden behind the square: each lies on the first surface along its pixel's ray
    # (except within a pixel of the square's silhouette, where rounding can pick either)
    truth = ray_cast_depth(K, centre)
    edge = np.zeros_like(ok)
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            edge |= np.roll(truth, (dv, du), (0, 1)) != truth
    assert np.all(np.abs(pts_cam[..., 2] - truth)[ok & ~edge] < 1e-4)
    # disoccluded wall (hidden in the source view) has no label (its colour may come from a neighbour within the
    # 2x2 splat footprint); padding is black
    src_depth = item["depth"].numpy()
    hidden = np.zeros_like(ok)
    wall = (truth == 3.0 - centre[2]) & ~edge
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], -1)
    wall_pts = centre + rays * truth[..., None]  # seen from the source camera at the origin:
    su = np.round(wall_pts[..., 0] / wall_pts[..., 2] * K[0, 0] + K[0, 2]).astype(int)
    sv = np.round(wall_pts[..., 1] / wall_pts[..., 2] * K[1, 1] + K[1, 2]).astype(int)
    inside_src = (su >= 0) & (su < W) & (sv >= 0) & (sv < H)
    hidden[inside_src] = src_depth[sv[inside_src], su[inside_src]] < 2.0
    hidden &= wall
    if hidden.any():
        assert not out["valid"].numpy()[hidden].any()
        assert out["image"].numpy()[:, ~out["inside"].numpy()].max() == 0


def test_sampled_moves_and_tilts_stay_in_their_ranges():
    g = torch.Generator().manual_seed(1)
    moves = torch.stack([sample_move(0.2, g) for _ in range(500)])
    assert moves.abs().max() <= 0.2 and moves.abs().max() > 0.19 and moves.mean(0).abs().max() < 0.02
    tilts = np.degrees([[w.pitch, w.yaw] for w in (sample_warp(0.0, (1, 1), 0.0, (H, W), g, 10.0) for _ in range(500))])
    assert np.abs(tilts).max() <= 10 and np.abs(tilts).max() > 9.5
    # no tilt: the same random numbers as before tilts existed
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert sample_warp(15.0, (0.5, 2), 0.1, (H, W), a) == sample_warp(15.0, (0.5, 2), 0.1, (H, W), b, 0.0)
    assert torch.equal(torch.rand(2, generator=a), torch.rand(2, generator=b))


def test_augmentation_with_tilt_and_move_keeps_labels_on_their_pixels():
    aug = Augmentation(10.0, (0.8, 1.25), 0.05, tilt_deg=8.0, view_shift=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        out = aug(make_item(), g)
        err_HW, z_HW, ok = label_pixel_errors(out)
        err = err_HW[ok]
        # two nearest-neighbour resamplings: half a pixel each, magnified by the zoom and tilt
        assert ok.mean() > 0.3 and np.median(err) < 0.6 and err.max() < 2.0
        np.testing.assert_allclose(out["depth"].numpy()[ok], z_HW[ok], rtol=1e-4)
        assert not ok[~out["inside"].numpy()].any()


@pytest.mark.parametrize("prob, lo, hi", [(0.0, 0, 0), (0.5, 10, 30), (1.0, 40, 40)])
def test_view_shift_prob_moves_that_fraction_of_views(prob, lo, hi):
    aug = Augmentation(0.0, (1.0, 1.0), 0.0, view_shift=0.1, view_shift_prob=prob)
    g, item = torch.Generator().manual_seed(0), make_item()
    centres = torch.stack([aug(item, g)["cam2world"][:3, 3] for _ in range(40)])
    moved = int(((centres - item["cam2world"][:3, 3]).norm(dim=1) > 1e-6).sum())
    assert lo <= moved <= hi


def test_view_shift_until_moves_views_only_before_that_fraction_of_training():
    aug = Augmentation(0.0, (1.0, 1.0), 0.0, view_shift=0.1, view_shift_until=0.6)
    g, item = torch.Generator().manual_seed(0), make_item()

    def moved() -> int:
        centres = torch.stack([aug(item, g)["cam2world"][:3, 3] for _ in range(10)])
        return int(((centres - item["cam2world"][:3, 3]).norm(dim=1) > 1e-6).sum())

    assert moved() == 10  # progress 0
    aug.progress.fill_(0.59)
    assert moved() == 10
    aug.progress.fill_(0.6)
    assert moved() == 0


def test_datamodule_tilts_and_moves_training_views_from_the_config(tiny_cfg):
    dm = tiny_datamodule(tiny_cfg, "loader.tilt_deg=10", "loader.view_shift=0.1", "loader.view_shift_prob=1")
    torch.manual_seed(0)
    train = dm.datasets["train"]
    raw, moved = train.item(0, geometric=False), train[0]
    # the camera centre moved (a roll, zoom or shift alone never moves it)
    assert (moved["cam2world"][:3, 3] - raw["cam2world"][:3, 3]).norm() > 1e-4
    err_HW, _, ok = label_pixel_errors(moved)
    assert ok.mean() > 0.2 and np.median(err_HW[ok]) < 0.6 and err_HW[ok].max() < 2.5
