"""Localization: PnP + RANSAC recovers known poses; failures are reported, not raised; errors and summary."""
import cv2
import numpy as np
import pytest

from lit3d.geometry import backproject_depth, invert_pose, look_at, project, transform_points
from lit3d.metrics.localization import choose_setting, localize, pose_errors, summarize, tuning_grid

H, W = 48, 64
K_33 = np.array([[70.0, 0.0, 31.5], [0.0, 72.0, 23.5], [0.0, 0.0, 1.0]])
CAM2WORLD_44 = look_at(np.array([1.0, -2.0, 1.5]), np.array([0.2, 0.5, 0.3]))


def scene_points() -> np.ndarray:
    """World points (H, W, 3) of a non-planar synthetic depth map seen by CAM2WORLD_44 through K_33."""
    v, u = np.mgrid[0:H, 0:W]
    depth_HW = 2.5 + 0.4 * np.sin(u / 9.0) + 0.3 * np.cos(v / 7.0) + 0.002 * u
    return transform_points(CAM2WORLD_44, backproject_depth(depth_HW, K_33).astype(np.float64))


def test_recovers_pose_exactly_from_ground_truth_points():
    pts_HW3 = scene_points()
    res = localize(pts_HW3, np.ones((H, W), bool), K_33)
    assert res.ok and res.reason == ""
    assert res.n_points == H * W and res.n_inliers == H * W and res.inlier_ratio == 1.0
    assert res.seconds > 0
    t_cm, r_deg = pose_errors(res.cam2world_44, CAM2WORLD_44)
    assert t_cm < 1e-4 and r_deg < 1e-4
    # independent check: the estimated pose reprojects every world point onto its own pixel
    uv_N2, z_N = project(transform_points(invert_pose(res.cam2world_44), pts_HW3.reshape(-1, 3)), K_33)
    v, u = np.mgrid[0:H, 0:W]
    np.testing.assert_allclose(uv_N2, np.stack([u, v], -1).reshape(-1, 2), atol=1e-5)
    assert np.all(z_N > 0)


def test_robust_to_outliers_nan_and_invalid_pixels():
    rng = np.random.default_rng(1)
    pts_HW3 = scene_points()
    bad_HW = rng.random((H, W)) < 0.3
    pts_HW3[bad_HW] += rng.normal(0, 1.0, (bad_HW.sum(), 3))  # 30 % gross outliers
    pts_HW3[:5, :] = np.nan  # non-finite rows are ignored, never propagated
    valid_HW = np.ones((H, W), bool)
    valid_HW[-5:] = False
    # a tight threshold: outliers that happen to reproject within it would bias the least-squares refinement
    res = localize(pts_HW3, valid_HW, K_33, reprojection_px=2.0)
    assert res.ok
    assert res.n_points == (H - 10) * W
    assert 0.6 < res.inlier_ratio < 0.8
    t_cm, r_deg = pose_errors(res.cam2world_44, CAM2WORLD_44)
    assert t_cm < 0.1 and r_deg < 0.1


def test_max_points_subsamples_deterministically():
    pts_HW3 = scene_points()
    a = localize(pts_HW3, None, K_33, max_points=500)
    b = localize(pts_HW3, None, K_33, max_points=500)
    assert a.ok and a.n_points == 500
    np.testing.assert_array_equal(a.cam2world_44, b.cam2world_44)


def test_fewer_than_four_valid_points_fails_gracefully():
    valid_HW = np.zeros((H, W), bool)
    valid_HW[10, 10:13] = True
    res = localize(scene_points(), valid_HW, K_33)
    assert not res.ok and res.cam2world_44 is None
    assert "fewer than 4" in res.reason and res.n_points == 3 and res.n_inliers == 0


@pytest.mark.parametrize(
    "case",
    ["all_nan", "collinear", "coincident", "bad_shape", "bad_mask_shape", "nan_K", "ransac_noise"],
)
def test_degenerate_inputs_report_failure(case):
    pts_HW3, valid_HW, K = scene_points(), np.ones((H, W), bool), K_33.copy()
    thr = 10.0
    if case == "all_nan":
        pts_HW3[:] = np.nan
    elif case == "collinear":
        pts_HW3 = np.linspace(0, 1, H * W)[:, None] * np.array([1.0, 2.0, 3.0]) + 0.5
        pts_HW3 = pts_HW3.reshape(H, W, 3)
    elif case == "coincident":
        pts_HW3[:] = 1.0
    elif case == "bad_shape":
        pts_HW3 = pts_HW3[..., :2]
    elif case == "bad_mask_shape":
        valid_HW = np.ones((3, 3), bool)
    elif case == "nan_K":
        K[0, 0] = np.nan
    elif case == "ransac_noise":  # no pose explains random correspondences to within 1e-4 px
        pts_HW3 = np.random.default_rng(0).normal(0, 1, (H, W, 3)) + np.array([0, 0, 5.0])
        thr = 1e-4
    res = localize(pts_HW3, valid_HW, K, reprojection_px=thr, iterations=200)
    assert not res.ok and res.cam2world_44 is None and res.reason
    if case == "ransac_noise":
        assert res.reason.startswith("RANSAC failed")


def _rot_x(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def test_pose_errors_known_shift_and_rotation():
    gt = CAM2WORLD_44
    shifted = gt.copy()
    shifted[:3, 3] += np.array([0.018, -0.024, 0.0])  # 3 cm = norm of (1.8, -2.4, 0) cm
    t_cm, r_deg = pose_errors(shifted, gt)
    assert t_cm == pytest.approx(3.0, abs=1e-9) and r_deg == pytest.approx(0.0, abs=1e-6)

    rotated = gt.copy()
    rotated[:3, :3] = gt[:3, :3] @ _rot_x(4.0)  # rotation about the camera centre: centre unchanged
    t_cm, r_deg = pose_errors(rotated, gt)
    angle_cv2 = np.degrees(np.linalg.norm(cv2.Rodrigues(rotated[:3, :3].T @ gt[:3, :3])[0]))
    assert t_cm == pytest.approx(0.0, abs=1e-9)
    assert r_deg == pytest.approx(4.0, abs=1e-6) and r_deg == pytest.approx(angle_cv2, abs=1e-6)

    assert pose_errors(None, gt) == (float("inf"), float("inf"))
    assert pose_errors(np.full((4, 4), np.nan), gt) == (float("inf"), float("inf"))


def test_summarize_thresholds_and_failures():
    t = np.array([1.0, 3.0, 6.0, 1.0, np.inf])
    r = np.array([1.0, 1.0, 1.0, 7.0, np.inf])
    s = summarize(t, r)
    assert s["loc/acc_2cm2deg"] == pytest.approx(0.2)
    assert s["loc/acc_5cm5deg"] == pytest.approx(0.4)
    assert s["loc/acc_10cm10deg"] == pytest.approx(0.8)
    assert s["loc/median_t_cm"] == 3.0 and s["loc/median_r_deg"] == 1.0
    assert s["loc/failure_rate"] == pytest.approx(0.2)
    # NaN counts as a failure; strictly-under comparison at the threshold
    s = summarize([5.0, np.nan], [1.0, 1.0])
    assert s["loc/acc_5cm5deg"] == 0.0 and s["loc/acc_10cm10deg"] == 0.5
    assert all(isinstance(v, float) for v in s.values())
    assert np.isnan(summarize([], [])["loc/acc_5cm5deg"])


def test_refinement_can_be_switched_off():
    rng = np.random.default_rng(3)
    pts_HW3 = scene_points() + rng.normal(0, 0.01, (H, W, 3))  # noisy points: LM moves the RANSAC pose
    on = localize(pts_HW3, None, K_33, reprojection_px=3.0, iterations=50)
    off = localize(pts_HW3, None, K_33, reprojection_px=3.0, iterations=50, refine=False)
    assert on.ok and off.ok and not np.allclose(on.cam2world_44, off.cam2world_44, atol=1e-9)
    assert pose_errors(off.cam2world_44, CAM2WORLD_44)[0] < 5


def test_tuning_grid_and_choice():
    grid = tuning_grid(640)
    assert len(grid) == 12 and {g["reprojection_px"] for g in grid} == {5.0, 10.0, 20.0}
    assert {g["iterations"] for g in grid} == {256, 1000} and {g["refine"] for g in grid} == {True, False}
    assert len(tuning_grid(32)) == 4  # 5, 10 and 20 px at 640 all clamp to 1 px at 32 px: duplicates dropped
    rows = [{"acc_5cm5deg": 0.5, "median_t_cm": 3.0}, {"acc_5cm5deg": 0.7, "median_t_cm": 4.0},
            {"acc_5cm5deg": 0.7, "median_t_cm": 2.0}, {"acc_5cm5deg": float("nan"), "median_t_cm": 1.0},
            {"acc_5cm5deg": 0.7, "median_t_cm": 2.0}]
    assert choose_setting(rows) == 2  # highest accuracy; tie -> lower median translation error; then the first
