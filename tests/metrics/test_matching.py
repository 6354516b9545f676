"""The classical matching yardstick: ratio test, label lookup and view ranking against brute force; poses of a
textured plane rendered from known cameras recovered from SIFT matches, from the true views or from views picked by
a perturbed prior pose (refinement); the notebook helper on a tiny cache."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from lit3d.geometry import invert_pose
from lit3d.metrics.localization import PnPResult, localize_points, pose_errors
from lit3d.metrics.matching import (Keypoints, ViewDatabase, labelled_keypoints, lift, match_correspondences,
                                    nearest_views, ratio_matches, refine_by_matching, sift_keypoints)
from textured_plane import K_33, camera, render, texture

def test_ratio_matches_equal_a_brute_force_ratio_test():
    rng = np.random.default_rng(1)
    other = Keypoints(rng.normal(size=(40, 2)), rng.normal(size=(40, 128)).astype(np.float32))
    # queries: noisy copies of some descriptors (clear matches) and random ones (mostly ambiguous)
    desc = np.concatenate([other.desc_N128[:15] + 0.05 * rng.normal(size=(15, 128)), rng.normal(size=(10, 128))])
    query = Keypoints(rng.normal(size=(25, 2)), desc.astype(np.float32))
    q, o = ratio_matches(query, other, ratio=0.8)
    expected = []
    for i, d in enumerate(query.desc_N128):
        dist = np.linalg.norm(other.desc_N128 - d, axis=1)
        first, second = np.sort(dist)[:2]
        if first < 0.8 * second:
            expected.append((i, int(np.argmin(dist))))
    assert list(zip(q.tolist(), o.tolist())) == expected
    assert set(range(15)) <= set(q.tolist())  # every clear copy matched, to its own original
    empty = Keypoints(np.zeros((1, 2)), np.zeros((1, 128), np.float32))
    assert all(len(x) == 0 for x in ratio_matches(query, empty))  # one descriptor: no second nearest to compare


def test_lift_reads_the_label_of_the_nearest_pixel_and_rejects_invalid_ones():
    rng = np.random.default_rng(2)
    pts_HW3, valid_HW = rng.normal(size=(6, 8, 3)), rng.random((6, 8)) > 0.3
    pts_HW3[0, 0] = np.nan
    valid_HW[0, 0] = True  # valid but not finite: rejected too
    uv_N2 = np.array([[0.2, 0.4], [3.6, 2.49], [7.4, 5.4], [-0.6, 1.0], [8.0, 2.0], [2.0, 5.6]])
    got, ok = lift(uv_N2, pts_HW3, valid_HW)
    for (u, v), p, k in zip(uv_N2, got, ok):
        col, row = int(np.floor(u + 0.5)), int(np.floor(v + 0.5))
        inside = 0 <= col < 8 and 0 <= row < 6
        assert k == (inside and bool(valid_HW[row, col]) and bool(np.isfinite(pts_HW3[row, col]).all()))
        if k:
            np.testing.assert_array_equal(p, pts_HW3[row, col])


def test_nearest_views_rank_distance_and_angle_together():
    query = camera([0.0, 0.0, 2.0])
    views = np.stack([camera([0.0, 0.0, 2.05]),  # near, same direction: first
                      camera([1.5, 0.0, 1.0]),  # far and turned: last
                      camera([0.3, 0.0, 2.0]),  # a little further, a little turned
                      query @ _roll(40)])  # same centre, rolled 40 deg
    order = nearest_views(query, views, k=4)
    assert order[0] == 0 and order[-1] == 1
    assert list(nearest_views(query, views, k=2)) == list(order[:2])


def _roll(deg: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.array([0.0, 0.0, np.radians(deg)]))[0]
    return T


def test_matching_recovers_the_pose_of_a_rendered_view():
    tex = texture()
    training = [render(camera(eye), tex) for eye in ([0.3, 0.2, 1.6], [-0.3, 0.1, 1.7])]
    true_44 = camera([0.05, 0.35, 1.4])  # between and below the training cameras, nearer the plane
    query = render(true_44, tex)
    training = [labelled_keypoints(view) for view in training]
    uv_N2, pts_N3, view_N = match_correspondences(sift_keypoints(query["image"]), training)
    assert len(uv_N2) > 50
    for k, view in enumerate(training):  # each match's view: as many per view as its own labelled matches
        q, o = ratio_matches(sift_keypoints(query["image"]), view.keypoints)
        assert (view_N == k).sum() == np.isfinite(view.pts_N3[o]).all(axis=1).sum() > 20
    # independent check of the matches: most world points project onto their query pixel
    w2c = invert_pose(true_44)
    cam_N3 = pts_N3 @ w2c[:3, :3].T + w2c[:3, 3]
    proj_N2 = cam_N3[:, :2] / cam_N3[:, 2:] * K_33[0, 0] + K_33[:2, 2]
    assert np.median(np.linalg.norm(proj_N2 - uv_N2, axis=1)) < 0.8
    res = localize_points(pts_N3, uv_N2, K_33, reprojection_px=2.0)
    assert res.ok and res.n_inliers > 0.6 * len(uv_N2)
    t_cm, r_deg = pose_errors(res.cam2world_44, true_44)
    assert t_cm < 1.0 and r_deg < 0.5
    # an unrelated texture: few matches, none consistent with the true pose; a failure is reported, not raised
    other = render(true_44, texture(seed=1))
    bad = localize_points(*match_correspondences(sift_keypoints(other["image"]), training)[1::-1], K_33,
                          reprojection_px=2.0)
    assert not bad.ok or pose_errors(bad.cam2world_44, true_44)[0] > 5


def _prior(cam2world_44) -> PnPResult:
    return PnPResult(cam2world_44, True, "", 100, 100, 1.0, 0.0)


def test_refinement_matches_the_views_nearest_a_prior_pose_and_replaces_it():
    tex = texture()
    # two views above the query's side of the plane, and two looking at it from far off (never useful)
    eyes = ([0.3, 0.2, 1.6], [-0.3, 0.1, 1.7], [1.8, -1.5, 0.4], [-1.8, 1.6, 0.5])
    views = [render(camera(eye), tex) for eye in eyes]
    loads: list[int] = []

    def load(j: int) -> dict:
        loads.append(j)
        return views[j]

    poses_M44 = np.stack([camera(eye) for eye in eyes] + [np.full((4, 4), np.nan)])  # the last: unposed
    db = ViewDatabase(poses_M44, lambda j: load(j) if j < 4 else pytest.fail("an unposed view was read"))
    true_44 = camera([0.05, 0.35, 1.4])
    query = render(true_44, tex)
    prior_44 = true_44.copy()
    prior_44[:3, :3] = prior_44[:3, :3] @ cv2.Rodrigues(np.radians([3.0, -4.0, 2.0]))[0]
    prior_44[:3, 3] += [0.12, -0.08, 0.10]  # 18 cm and about 5 deg off
    assert pose_errors(prior_44, true_44)[0] > 15
    ref = refine_by_matching(query["image"], K_33, _prior(prior_44), db, reprojection_px=2.0, views=2)
    assert ref.adopted and ref.result.ok and ref.inliers >= 30 and ref.matches >= ref.inliers
    t_cm, r_deg = pose_errors(ref.result.cam2world_44, true_44)
    assert t_cm < 1.0 and r_deg < 0.5
    assert sorted(set(loads)) == [0, 1] and len(loads) == 2  # the two nearest views, each read once
    # too few inliers for the threshold, no prior pose, an unrelated image: the prior is kept as it was
    strict = refine_by_matching(query["image"], K_33, _prior(prior_44), db, 2.0, views=2, min_inliers=10**6)
    assert not strict.adopted and strict.result.cam2world_44 is prior_44 and strict.inliers > 0
    failed = PnPResult(None, False, "RANSAC failed", 0, 0, 0.0, 0.0)
    assert refine_by_matching(query["image"], K_33, failed, db, 2.0, retrieval=False).result is failed
    other = render(true_44, texture(seed=1))  # (a rotated copy of the texture would match, rotated)
    kept = refine_by_matching(other["image"], K_33, _prior(prior_44), db, 2.0, views=2)
    assert not kept.adopted and kept.result.cam2world_44 is prior_44 and kept.seconds > 0


def test_retrieval_finds_the_views_a_far_off_or_missing_prior_cannot_pick():
    tex = texture()
    # two views of the query's plane, and two near the far prior that see another texture (another wall)
    eyes = ([0.3, 0.2, 1.6], [-0.3, 0.1, 1.7], [1.5, -1.2, 1.0], [1.2, -1.5, 1.1])
    views = [render(camera(eye), tex if j < 2 else texture(seed=2)) for j, eye in enumerate(eyes)]
    db = ViewDatabase(np.stack([camera(eye) for eye in eyes]), lambda j: views[j])
    true_44 = camera([0.05, 0.35, 1.4])
    query = sift_keypoints(render(true_44, tex)["image"])
    # independent ranking: ratio-test matches counted view by view
    counts = [len(ratio_matches(query, sift_keypoints(v["image"]))[0]) for v in views]
    assert db.retrieve(query, 2) == sorted(range(4), key=lambda j: -counts[j])[:2] == [0, 1]
    image = render(true_44, tex)["image"]
    far = _prior(camera([1.4, -1.4, 1.0]))  # picks the two views of the other wall, which give no pose
    alone = refine_by_matching(image, K_33, far, db, 2.0, views=2, retrieval=False)
    assert not alone.adopted and alone.result is far
    found = refine_by_matching(image, K_33, far, db, 2.0, views=2)
    assert found.adopted and found.retrieved
    assert all(e < b for e, b in zip(pose_errors(found.result.cam2world_44, true_44), (1.0, 0.5)))
    failed = PnPResult(None, False, "RANSAC failed", 0, 0, 0.0, 0.0)  # no prior at all: retrieval only
    rescued = refine_by_matching(image, K_33, failed, db, 2.0, views=2)
    assert rescued.adopted and rescued.retrieved and pose_errors(rescued.result.cam2world_44, true_44)[0] < 1.0


def test_a_saved_view_database_reads_back_and_refines_alike(tmp_path):
    tex = texture()
    eyes = ([0.3, 0.2, 1.6], [-0.3, 0.1, 1.7], [1.8, -1.5, 0.4])
    views = [render(camera(eye), tex) for eye in eyes]
    poses_M44 = np.stack([camera(eye) for eye in eyes] + [np.full((4, 4), np.nan)])
    db = ViewDatabase(poses_M44, lambda j: views[j], max_features=500)
    path = db.save(tmp_path / "views.npz")
    back = ViewDatabase.open(path)
    assert back.max_features == 500 and np.array_equal(back.cam2world_M44, db.cam2world_M44, equal_nan=True)
    for j in range(3):
        a, b = db.view(j), back.view(j)
        np.testing.assert_array_equal(b.keypoints.desc_N128, a.keypoints.desc_N128)
        np.testing.assert_array_equal(b.keypoints.uv_N2, a.keypoints.uv_N2)
        np.testing.assert_array_equal(b.pts_N3, a.pts_N3.astype(np.float32))  # labels: float32 in the cache
        assert np.isnan(a.pts_N3).any(axis=1).sum() == np.isnan(b.pts_N3).any(axis=1).sum()
    with pytest.raises(KeyError, match="view 3"):
        back.view(3)  # unposed: not stored, and nothing to load it from
    true_44 = camera([0.05, 0.35, 1.4])
    prior = _prior(true_44 @ _roll(3.0))
    image = render(true_44, tex)["image"]
    ref_a, ref_b = (refine_by_matching(image, K_33, prior, d, 2.0, views=2) for d in (db, back))
    assert ref_a.adopted and ref_b.adopted and ref_a.inliers == ref_b.inliers
    np.testing.assert_allclose(ref_b.result.cam2world_44, ref_a.result.cam2world_44, atol=1e-6)
    (tmp_path / "torn.npz").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="torn.npz is corrupt"):
        ViewDatabase.open(tmp_path / "torn.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz does not exist"):
        ViewDatabase.open(tmp_path / "nope.npz")


def test_view_database_needs_a_posed_view():
    with pytest.raises(ValueError, match="none of them has one"):
        ViewDatabase(np.full((3, 4, 4), np.nan), lambda j: {})


def test_localize_points_reports_bad_correspondences():
    assert localize_points(np.zeros((5, 3)), np.zeros((4, 2)), K_33).reason == "5 world points but 4 pixels"
    assert "fewer than 4 valid points" in localize_points(np.full((6, 3), np.nan), np.zeros((6, 2)), K_33).reason
    assert "intrinsics" in localize_points(np.zeros((6, 3)), np.zeros((6, 2)), np.eye(2)).reason


@pytest.mark.slow
def test_matching_reference_of_a_tiny_synthetic_cache(tiny_cfg):
    from lit3d import analysis
    from lit3d.cache import build_labels

    cache, _ = build_labels(tiny_cfg("data.num_frames=40", "data.resolution=[96,128]"))
    frames = analysis.matching_reference(cache, "val", views=4)
    assert list(frames.index) == cache.split["val"]
    assert list(frames.columns) == ["ok", "t_cm", "r_deg", "matches", "inliers", "reason"]
    assert (frames["inliers"] <= frames["matches"]).all()
    # frames between the training path's, exact labels: every frame localizes, most within 5 cm / 5 deg (SIFT on
    # the 96x128 renders is coarse: 1-8 cm here, against under 1 cm on the textured plane above)
    assert frames["ok"].all() and frames["t_cm"].median() < 5
    assert ((frames["t_cm"] < 5) & (frames["r_deg"] < 5)).mean() >= 2 / 3
    one = analysis.matching_reference(cache, "val", views=4, n_frames=1)
    assert len(one) == 1 and one.index[0] == cache.split["val"][0]
    with pytest.raises(ValueError, match="has no 'nope'"):
        analysis.matching_reference(cache, "nope")
