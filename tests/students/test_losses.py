"""The reprojection loss: exact labels cost nothing, its gradient, the invalid-depth pull, the clamp schedule."""
import math

import numpy as np
import pytest
import torch

from lit3d.config import LossConfig
from lit3d.geometry import backproject_depth, look_at, transform_points
from lit3d.students.losses import clamp_schedule, reprojection_errors, reprojection_loss, camera_points

H, W = 12, 16
K_33 = np.array([[15.0, 0.0, 7.5], [0.0, 14.0, 5.5], [0.0, 0.0, 1.0]])


def scene(B: int = 2, dtype=torch.float64):
    """Exact world labels, intrinsics and poses of B views of a slanted surface (metres)."""
    rng = np.random.default_rng(0)
    pts, poses = [], []
    for b in range(B):
        T = look_at(rng.normal(0, 0.5, 3) + [0, -2.0, 1.0], np.array([0.0, 0.5, 1.0]))
        v, u = np.mgrid[0:H, 0:W]
        depth = 1.5 + 0.05 * u + 0.03 * v
        pts.append(transform_points(T, backproject_depth(depth, K_33).astype(np.float64)))
        poses.append(T)
    t = lambda a: torch.tensor(np.stack(a), dtype=dtype)
    return (t(pts).permute(0, 3, 1, 2).contiguous(), torch.tensor(K_33, dtype=dtype).expand(B, 3, 3).clone(),
            t(poses))


def test_exact_labels_and_poses_cost_nothing():
    pts, K, T = scene()
    valid = torch.ones(2, H, W, dtype=torch.bool)
    err = reprojection_errors(camera_points(pts, T), K)
    assert err.max() < 1e-5  # float32 back-projection
    loss, stats = reprojection_loss(pts, pts, valid, valid, K, T, 0.3, LossConfig())
    assert loss.item() < 1e-5 and stats["valid_pred"] == 1


def test_crops_with_their_cameras_and_the_views_width_cost_what_their_view_costs():
    """The head refinement's cells are crops: with the crop's K and the view's width for the pixel thresholds, the
    mean loss of equal crops is the view's loss (clamp, invalid pull and 3-D term alike)."""
    pts, K, T = scene(1)
    pred = pts + torch.randn(pts.shape, generator=torch.Generator().manual_seed(0), dtype=pts.dtype) * 0.05
    pred[..., :2, :3] = pts[..., :2, :3] * -1  # some behind the camera: the invalid pull
    valid = torch.ones(1, H, W, dtype=torch.bool)
    cfg = LossConfig()
    full, _ = reprojection_loss(pred, pts, valid, valid, K, T, 0.4, cfg)
    crops = []
    for r in range(0, H, 4):
        for c in range(0, W, 4):
            K_crop = K.clone()
            K_crop[:, 0, 2] -= c
            K_crop[:, 1, 2] -= r
            crop = (slice(None), slice(None), slice(r, r + 4), slice(c, c + 4))
            crops.append(reprojection_loss(pred[crop], pts[crop], valid[crop[:1] + crop[2:]],
                                           valid[crop[:1] + crop[2:]], K_crop, T, 0.4, cfg, image_width=W)[0])
    torch.testing.assert_close(torch.stack(crops).mean(), full)
    without_width = torch.stack([reprojection_loss(pred[..., :4, :4], pts[..., :4, :4], valid[:, :4, :4],
                                                   valid[:, :4, :4], K, T, 0.4, cfg)[0]])
    assert not torch.allclose(without_width, crops[0])  # the thresholds would shrink to the crop's width


def test_reprojection_error_against_an_independent_projection():
    pts, K, T = scene()
    pred = pts + 0.05 * torch.randn_like(pts, generator=torch.Generator().manual_seed(0))
    err = reprojection_errors(camera_points(pred, T), K)
    for b in range(2):
        p = pred[b].permute(1, 2, 0).numpy().reshape(-1, 3)
        cam = (np.linalg.inv(T[b].numpy()) @ np.c_[p, np.ones(len(p))].T).T[:, :3]
        uv = (cam @ K_33.T)[:, :2] / cam[:, 2:]
        v, u = np.mgrid[0:H, 0:W]
        np.testing.assert_allclose(err[b].numpy().ravel(), np.linalg.norm(uv - np.c_[u.ravel(), v.ravel()], axis=1),
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("weight_3d, depth_3d", [(0.0, "pixel"), (1.0, "pixel"), (1.0, "view")])
def test_gradient_matches_finite_differences(weight_3d, depth_3d):
    pts, K, T = scene(B=1)
    pts = pts[..., :5, :6].contiguous()  # a corner of the view (same K): few inputs keep finite differences fast
    g = torch.Generator().manual_seed(1)
    pred = (pts + 0.02 * torch.randn(pts.shape, generator=g, dtype=pts.dtype)).requires_grad_(True)
    valid = torch.rand(1, 5, 6, generator=g) > 0.2
    inside = torch.ones(1, 5, 6, dtype=torch.bool)
    cfg = LossConfig(weight_3d=weight_3d, depth_3d=depth_3d)

    def f(p):
        return reprojection_loss(p, pts, valid, inside, K, T, 0.5, cfg)[0]

    assert torch.autograd.gradcheck(f, (pred,), eps=1e-7, atol=1e-5, rtol=1e-4)


def test_invalid_predictions_are_pulled_to_their_labels():
    pts, K, T = scene(B=1)
    valid = torch.ones(1, H, W, dtype=torch.bool)
    cfg = LossConfig(weight_3d=0.0)
    pred = pts.clone()
    # one pixel's prediction behind the camera: it costs its L1 distance to the label in pixel-equivalent units
    cam_centre = T[0, :3, 3]
    behind = cam_centre - 0.5 * (pts[0, :, 3, 4] - cam_centre)
    pred[0, :, 3, 4] = behind
    pred.requires_grad_(True)
    loss, stats = reprojection_loss(pred, pts, valid, valid, K, T, 0.0, cfg)
    label_z = camera_points(pts, T)[0, 2, 3, 4]
    expect = (behind - pts[0, :, 3, 4]).abs().sum() * K_33[0, 0] / label_z / (H * W)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert stats["valid_pred"] == pytest.approx(1 - 1 / (H * W))
    loss.backward()
    step = -pred.grad[0, :, 3, 4]
    assert torch.dot(step, pts[0, :, 3, 4] - behind) > 0  # descent moves it toward the label


def test_invalid_predictions_without_label_go_to_the_default_depth_on_their_ray():
    pts, K, T = scene(B=1)
    valid = torch.zeros(1, H, W, dtype=torch.bool)
    inside = torch.ones(1, H, W, dtype=torch.bool)
    pred = pts.clone()
    pred[0, :, 2, 2] = T[0, :3, 3]  # at the camera centre: depth 0, invalid
    cfg = LossConfig(weight_3d=0.0, invalid_depth=10.0)
    pred.requires_grad_(True)
    reprojection_loss(pred, pts, valid, inside, K, T, 0.0, cfg)[0].backward()
    ray = torch.linalg.inv(K[0]) @ torch.tensor([2.0, 2.0, 1.0], dtype=K.dtype)
    target = T[0, :3, :3] @ (ray * 10.0) + T[0, :3, 3]
    assert torch.all(torch.sign(-pred.grad[0, :, 2, 2]) == torch.sign(target - pred[0, :, 2, 2]).detach())


def test_padding_pixels_do_not_count():
    pts, K, T = scene(B=1)
    valid = torch.ones(1, H, W, dtype=torch.bool)
    inside = valid.clone()
    inside[:, :, :8] = False
    pred = pts.clone()
    pred[0, :, :, :8] += 1.0  # garbage where the view is padding
    loss, _ = reprojection_loss(pred, pts, valid & inside, inside, K, T, 0.0, LossConfig())
    assert loss.item() < 1e-5


def test_clamp_schedule():
    assert clamp_schedule(0.0, 50, 1) == 50 and clamp_schedule(1.0, 50, 1) == 1
    ps = np.linspace(0, 1, 21)
    circle = [clamp_schedule(p, 50, 1, "circle") for p in ps]
    linear = [clamp_schedule(p, 50, 1, "linear") for p in ps]
    assert all(a >= b for a, b in zip(circle, circle[1:])) and all(a >= b for a, b in zip(linear, linear[1:]))
    assert all(c >= lin - 1e-12 for c, lin in zip(circle, linear))  # the circle tightens late
    assert clamp_schedule(0.5, 50, 1, "circle") == pytest.approx(1 + 49 * math.sqrt(0.75))
    with pytest.raises(ValueError, match="loss.schedule"):
        clamp_schedule(0.5, 50, 1, "cosine")


def test_soft_clamp_bounds_the_pull_of_outliers():
    pts, K, T = scene(B=1)
    valid = torch.ones(1, H, W, dtype=torch.bool)
    cfg = LossConfig(weight_3d=0.0, clamp_px=[2.0 * 640 / W, 2.0 * 640 / W])  # 2 px at this width
    pred = pts.clone()
    pred[0, :, 5, 5] = pts[0, :, 5, 7]  # an outlier two pixels off: near the clamp
    far = pts.clone()
    far[0, :, 5, 5] = pts[0, :, 5, 15]  # ten pixels off: the clamp caps its cost near 2 px
    l_near = reprojection_loss(pred, pts, valid, valid, K, T, 0.0, cfg)[0].item() * H * W
    l_far = reprojection_loss(far, pts, valid, valid, K, T, 0.0, cfg)[0].item() * H * W
    assert l_near == pytest.approx(2 * math.tanh(1.0), rel=0.05)
    assert l_far < 2.0 + 1e-3 and l_far == pytest.approx(2 * math.tanh(5.0), rel=0.05)


@pytest.mark.parametrize("depth_3d", ["pixel", "view"])
def test_where_depth_is_uncertain_the_3d_term_settles_at_a_weighted_median(depth_3d):
    """One image pixel, seen in many views, whose label lies at a different depth on the same ray in each (the
    student cannot tell them apart). The reprojection term is zero anywhere on the ray, so the best shared
    prediction is where the 3-D term is least: the median of the label depths weighted by 1 / depth (``pixel``:
    nearer than the median) or unweighted (``view``; each view's median label depth is 2.5 from two fixed pixels)."""
    z_N = torch.linspace(1.5, 3.5, 41, dtype=torch.float64)
    N, f = len(z_N), 100.0
    K_N33 = torch.tensor([[f, 0, 0], [0, f, 0], [0, 0, 1]], dtype=torch.float64).expand(N, 3, 3)
    cam2world_N44 = torch.eye(4, dtype=torch.float64).expand(N, 4, 4)
    target_N313 = torch.zeros(N, 3, 1, 3, dtype=torch.float64)
    target_N313[:, 2, 0, 0] = z_N  # pixel u = 0 is on the optical axis
    for u in (1, 2):  # two pixels with the same label in every view, predicted exactly
        target_N313[:, :, 0, u] = torch.tensor([u * 2.5 / f, 0.0, 2.5], dtype=torch.float64)
    valid = torch.ones(N, 1, 3, dtype=torch.bool)
    cfg = LossConfig(depth_3d=depth_3d, clamp_px=[1.0, 1.0])
    depths = torch.linspace(1.5, 3.5, 401, dtype=torch.float64)
    losses = []
    for d in depths:
        pred = target_N313.clone()
        pred[:, 2, 0, 0] = d
        losses.append(reprojection_loss(pred, target_N313, valid, valid, K_N33, cam2world_N44, 1.0, cfg)[0])
    best = depths[int(torch.stack(losses).argmin())].item()
    w_N = 1.0 / z_N.numpy() if depth_3d == "pixel" else np.ones(N)
    order = np.argsort(z_N.numpy())
    cum = np.cumsum(w_N[order])
    weighted_median = z_N.numpy()[order][np.searchsorted(cum, cum[-1] / 2)]
    assert best == pytest.approx(weighted_median, abs=0.06)
    assert (best < 2.4) if depth_3d == "pixel" else best == pytest.approx(2.5, abs=0.06)
