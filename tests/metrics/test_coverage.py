"""Nearest training camera and surface coverage against brute-force loops on a tiny scene of planes."""
import numpy as np

from lit3d.geometry import look_at, rotation_angle_deg
from lit3d.metrics.coverage import (frame_depth, generalisation, nearest_cameras, surface_coverage, surface_points,
                                   training_depth)

H, W = 12, 16
K_33 = np.array([[10.0, 0.0, 7.5], [0.0, 10.0, 5.5], [0.0, 0.0, 1.0]])


def random_poses(rng, n):
    return np.stack([look_at(rng.normal(size=3), rng.normal(size=3) + [0, 0, 3]) for _ in range(n)])


def test_nearest_cameras_against_brute_force():
    rng = np.random.default_rng(0)
    test, train = random_poses(rng, 7), random_poses(rng, 11)
    train[3, :3, :3] *= 0.9999  # a not-quite-orthonormal dataset pose
    dist, angle, min_angle = nearest_cameras(test, train, chunk=3)
    for i in range(7):
        d = [np.linalg.norm(test[i, :3, 3] - T[:3, 3]) for T in train]
        a = [rotation_angle_deg(test[i, :3, :3], T[:3, :3]) for T in train]
        k = int(np.argmin(d))
        assert np.isclose(dist[i], d[k]) and np.isclose(angle[i], a[k], atol=1e-6)
        assert np.isclose(min_angle[i], min(a), atol=1e-6)
    d0, a0, m0 = nearest_cameras(test[:1], test[:1])
    assert d0[0] == 0 and a0[0] < 1e-6 and m0[0] < 1e-6
    assert np.isnan(nearest_cameras(test, train[:0])[0]).all()


def plane_scene():
    """Cameras looking +z at the wall z = 4. Camera A (at the origin) has an occluder at z = 2 over its left half
    and no depth in its top rows; camera B (x = 3) sees the wall; camera C (z = 6) has the wall behind it."""
    eye = np.eye(4)
    A, B, C = eye.copy(), eye.copy(), eye.copy()
    B[0, 3], C[2, 3] = 3.0, 6.0
    dA = np.full((H, W), 4.0)
    dA[:, : W // 2] = 2.0
    dA[:2] = 0.0
    dB, dC = np.full((H, W), 4.0), np.full((H, W), 1.0)
    test = look_at(np.array([1.0, 0.0, -1.0]), np.array([1.5, 0.0, 4.0]))
    return test, np.stack([A, B, C]), np.stack([K_33] * 3), np.stack([dA, dB, dC])


def brute_force_depths(X_3, poses, Ks, depths, rtol=0.05, atol=0.05):
    """The depths at which the training cameras that see X (in front, inside, depth agrees) see it."""
    seen_at = []
    for T, K, D in zip(poses, Ks, depths):
        R, t = T[:3, :3], T[:3, 3]
        x, y, z = R.T @ (X_3 - t)
        if z <= 0:
            continue
        u, v = int(np.round(K[0, 0] * x / z + K[0, 2])), int(np.round(K[1, 1] * y / z + K[1, 2]))
        if 0 <= u < D.shape[1] and 0 <= v < D.shape[0] and D[v, u] > 0 and abs(D[v, u] - z) <= max(rtol * z, atol):
            seen_at.append(z)
    return seen_at


def brute_force_seen(pts_P3, poses, Ks, depths, rtol=0.05, atol=0.05):
    return np.array([len(brute_force_depths(X, poses, Ks, depths, rtol, atol)) > 0 for X in pts_P3])


def test_surface_coverage_against_brute_force():
    test, poses, Ks, depths = plane_scene()
    # the test camera's view of the wall z = 4: depth = distance along its axis to the plane
    v, u = np.mgrid[0:H, 0:W]
    rays_cam = np.stack([(u - K_33[0, 2]) / K_33[0, 0], (v - K_33[1, 2]) / K_33[1, 1], np.ones((H, W))], -1)
    depth_test = (4.0 - test[2, 3]) / (rays_cam @ test[:3, :3].T)[..., 2]  # camera z-depth of the wall z = 4
    pts = surface_points(depth_test, K_33, test, step=1)
    np.testing.assert_allclose(pts[:, 2], 4.0, atol=1e-9)
    expected = brute_force_seen(pts, poses, Ks, depths)
    assert 0.1 < expected.mean() < 0.9  # some seen, some occluded / outside / without depth
    for max_elements in (4_000_000, 7):  # one chunk, and many chunks of cameras
        np.testing.assert_array_equal(surface_coverage(pts, poses, Ks, depths, max_elements=max_elements), expected)
    # only camera C (wall behind it) or only the occluded, depth-less parts: nothing is seen
    assert not surface_coverage(pts, poses[2:], Ks[2:], depths[2:]).any()
    # the labels' camera depth stands in for missing depth when labels share the poses' frame
    pts_world = surface_points(depths[1], K_33, poses[1], step=1).reshape(H, W, 3)
    frame = {"cam2world": poses[1], "depth": np.zeros((H, W), np.float32), "pts_world": pts_world,
             "valid": np.ones((H, W), bool), "K": K_33}
    np.testing.assert_allclose(frame_depth(frame, True), depths[1], rtol=1e-6)
    assert frame_depth(frame, False) is None
    assert frame_depth({**frame, "cam2world": np.full((4, 4), np.nan)}, True) is None


def test_generalisation_rows():
    test, poses, Ks, depths = plane_scene()
    frames = [{"cam2world": T, "K": K, "depth": D.astype(np.float32), "pts_world": np.zeros((H, W, 3)),
               "valid": np.ones((H, W), bool)} for T, K, D in zip(poses, Ks, depths)]
    rows = generalisation(frames[1:2] + [{**frames[0], "cam2world": np.full((4, 4), np.nan)}], iter(frames[:1]),
                          labels_in_pose_frame=False, step=1)
    assert np.isclose(rows[0]["nearest_train_m"], 3.0) and rows[0]["nearest_train_deg"] < 1e-6
    # B's wall as seen by A: A's left half is occluded, its top rows have no depth, B's right part is outside A
    pts = surface_points(depths[1], K_33, poses[1], step=1)
    assert np.isclose(rows[0]["coverage"], brute_force_seen(pts, poses[:1], Ks[:1], depths[:1]).mean())
    assert all(np.isnan(v) for v in rows[1].values())  # unknown pose: skipped


def test_training_depth_keeps_the_camera_nearest_in_scale():
    _, poses, _, depths = plane_scene()
    # two more cameras facing the wall z = 4 from nearer (z = 2.5, depth 1.5) and farther (z = -2, depth 6)
    near, far = np.eye(4), np.eye(4)
    near[2, 3], far[2, 3] = 2.5, -2.0
    poses = np.concatenate([poses, near[None], far[None]])
    depths = np.concatenate([depths, np.full((1, H, W), 1.5), np.full((1, H, W), 6.0)])
    Ks = np.stack([K_33] * len(poses))
    pts = surface_points(np.full((H, W), 4.0), K_33, np.eye(4), step=1)  # the wall as A would see it unoccluded
    near_P = np.random.default_rng(0).uniform(1.0, 7.0, len(pts))
    for max_elements in (4_000_000, 5):
        got = training_depth(pts, poses, Ks, depths, near_P, max_elements=max_elements)
        for X, z_near, z_got in zip(pts, near_P, got):
            seen_at = brute_force_depths(X, poses, Ks, depths)
            if not seen_at:
                assert np.isnan(z_got)
                continue
            gaps = np.abs(np.log(z_near / np.array(seen_at)))
            assert np.isclose(z_got, seen_at[int(np.argmin(gaps))])
    assert len({round(float(z), 6) for z in got[np.isfinite(got)]}) == 3  # each of 1.5, 4 and 6 wins somewhere


def test_generalisation_depth_ratio():
    """A test camera at z = 2 sees the wall at depth 2; training cameras A (z = 0, depth 4) and one at z = -2 (depth
    6): the training view nearest in scale is A, ratio 0.5 on the surface A sees."""
    cam = np.eye(4)
    cam[2, 3] = 2.0
    far = np.eye(4)
    far[2, 3] = -2.0
    dA = np.full((H, W), 4.0)  # A without occluder or holes
    frames = [{"cam2world": T, "K": K_33, "depth": D.astype(np.float32), "pts_world": np.zeros((H, W, 3)),
               "valid": np.ones((H, W), bool)} for T, D in ((np.eye(4), dA), (far, np.full((H, W), 6.0)))]
    query = {**frames[0], "cam2world": cam, "depth": np.full((H, W), 2.0, np.float32)}
    rows = generalisation([query], frames, labels_in_pose_frame=False, step=1)
    assert rows[0]["coverage"] == 1.0 and np.isclose(rows[0]["depth_ratio"], 0.5)
    rows = generalisation([query], frames[1:], labels_in_pose_frame=False, step=1)
    assert np.isclose(rows[0]["depth_ratio"], 2.0 / 6.0)
