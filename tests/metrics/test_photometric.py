"""Direct alignment: a textured plane's query pose recovered from perturbed starts (also under another exposure),
the sampled views against their labels, failures reported; in refinement, alignment that the matches contradict
is refused, and a views file keeps the sampled views (a version 1 file refines by matching alone)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from lit3d.files import atomic_save_npz
from lit3d.geometry import invert_pose, transform_points
from lit3d.metrics.localization import PnPResult, pose_errors
from lit3d.metrics.matching import ViewDatabase, refine_by_matching
from lit3d.metrics.photometric import align_photometric, dense_view
from textured_plane import K_33, camera, render, texture

EYES = ([0.3, 0.2, 1.6], [-0.3, 0.1, 1.7], [0.1, -0.3, 1.5])
TRUE_44 = camera([0.05, 0.35, 1.4])


def _moved(cam2world_44: np.ndarray, rot_deg, shift_m) -> np.ndarray:
    out = cam2world_44.copy()
    out[:3, :3] = out[:3, :3] @ cv2.Rodrigues(np.radians(rot_deg))[0]
    out[:3, 3] += shift_m
    return out


@pytest.fixture(scope="module")
def views():
    tex = texture()
    return [dense_view(render(camera(eye), tex), camera(eye)) for eye in EYES], tex


@pytest.mark.parametrize("rot_deg, shift_m", [([0.0, 0.0, 0.0], [0.04, -0.03, 0.02]),
                                              ([1.5, -1.0, 2.0], [0.0, 0.0, 0.0]),
                                              ([1.0, 1.0, -1.0], [-0.03, 0.04, -0.05])])
def test_alignment_recovers_the_true_pose_from_a_start_centimetres_off(views, rot_deg, shift_m):
    dense, tex = views
    start_44 = _moved(TRUE_44, rot_deg, shift_m)
    assert max(pose_errors(start_44, TRUE_44)) > 1.5
    for gain, offset in ((1.0, 0.0), (0.7, 30.0)):  # another exposure: a gain and an offset per view absorb it
        image = np.clip(gain * render(TRUE_44, tex)["image"].astype(np.float32) + offset, 0, 255).astype(np.uint8)
        out = align_photometric(image, K_33, start_44, dense)
        assert out.cam2world_44 is not None and out.pixels > 5000
        t_cm, r_deg = pose_errors(out.cam2world_44, TRUE_44)
        assert t_cm < 0.2 and r_deg < 0.05, (gain, t_cm, r_deg)


def test_dense_view_samples_the_labels_in_the_views_camera():
    view = render(camera(EYES[0]), texture())
    wide = {k: cv2.resize(v.astype(np.uint8) if k == "valid" else v, None, fx=2, fy=2,
                          interpolation=cv2.INTER_NEAREST).astype(v.dtype) for k, v in view.items()}
    for frame, stride in ((view, 1), (wide, 2)):  # 160 and 320 columns: every pixel, every second one
        d = dense_view(frame, camera(EYES[0]))
        assert d.stride == stride and d.gray_hw.dtype == np.uint8 and d.pts_cam_hw3.dtype == np.float16
        assert d.gray_hw.shape == d.pts_cam_hw3.shape[:2] == (120, 160)
        expected = transform_points(invert_pose(camera(EYES[0])), frame["pts_world"][::stride, ::stride])
        ok = frame["valid"][::stride, ::stride]
        assert np.array_equal(d.labelled(), ok) and np.isnan(d.pts_cam_hw3[~ok]).all()
        np.testing.assert_allclose(d.pts_cam_hw3[ok], expected[ok], atol=2e-3)  # float16 at depths of ~1.6
        np.testing.assert_allclose(d.world_points(), frame["pts_world"][::stride, ::stride][ok], atol=2e-3)
    far = dict(view, pts_world=view["pts_world"] * 1e5)  # beyond float16: kept as float32
    assert dense_view(far, camera(EYES[0])).pts_cam_hw3.dtype == np.float32


def test_alignment_reports_why_it_fails(views):
    dense, tex = views
    image = render(TRUE_44, tex)["image"]
    away = camera([0.05, 0.35, 1.4]) @ np.diag([1.0, -1.0, -1.0, 1.0])  # looking away from the plane
    out = align_photometric(image, K_33, away, dense)
    assert out.cam2world_44 is None and "fewer than 100" in out.reason
    flat = align_photometric(np.full_like(image, 128), K_33, TRUE_44, dense)
    assert flat.cam2world_44 is None and "textureless" in flat.reason


def _prior(cam2world_44) -> PnPResult:
    return PnPResult(cam2world_44, True, "", 100, 100, 1.0, 0.0)


def test_refinement_aligns_a_matched_pose_only_where_the_matches_agree(tmp_path):
    tex = texture()
    frames = [render(camera(eye), tex) for eye in EYES]
    poses_M44 = np.stack([camera(eye) for eye in EYES])
    image = render(TRUE_44, tex)["image"]
    prior = _prior(_moved(TRUE_44, [2.0, -2.0, 1.0], [0.1, -0.05, 0.05]))
    db = ViewDatabase(poses_M44, lambda j: frames[j])
    matched = refine_by_matching(image, K_33, prior, db, 2.0, views=3, align=False)
    aligned = refine_by_matching(image, K_33, prior, db, 2.0, views=3)
    assert matched.adopted and not matched.aligned and aligned.adopted and aligned.aligned
    t_matched, t_aligned = pose_errors(matched.result.cam2world_44, TRUE_44)[0], pose_errors(
        aligned.result.cam2world_44, TRUE_44)[0]
    assert t_aligned < 0.2 and t_aligned < t_matched
    # labels 6 cm away from where the images show them (depth not registered to colour): alignment follows
    # them off the true pose, the matches (lifted by the right labels) refuse the result
    mixed = ViewDatabase(poses_M44, lambda j: frames[j])
    [mixed.view(j) for j in range(3)]  # keypoints from the right labels, then the sampled views replaced
    mixed._dense = {j: dense_view(dict(frames[j], pts_world=frames[j]["pts_world"] + [0.06, 0.0, 0.0]),
                                  poses_M44[j]) for j in range(3)}
    assert pose_errors(align_photometric(image, K_33, matched.result.cam2world_44,
                                         list(mixed._dense.values())).cam2world_44, TRUE_44)[0] > 4
    refused = refine_by_matching(image, K_33, prior, mixed, 2.0, views=3)
    assert refused.adopted and not refused.aligned
    np.testing.assert_array_equal(refused.result.cam2world_44, matched.result.cam2world_44)
    # the views file keeps the sampled views; a version 1 file (without them) refines by matching alone
    back = ViewDatabase.open(db.save(tmp_path / "views.npz"))
    for j in range(3):
        np.testing.assert_array_equal(back.dense(j).gray_hw, db.dense(j).gray_hw)
        np.testing.assert_array_equal(back.dense(j).pts_cam_hw3, db.dense(j).pts_cam_hw3)
    np.testing.assert_allclose(refine_by_matching(image, K_33, prior, back, 2.0, views=3).result.cam2world_44,
                               aligned.result.cam2world_44, atol=1e-9)
    with np.load(tmp_path / "views.npz") as z:
        atomic_save_npz(tmp_path / "v1.npz", **{k: z[k] for k in z.files if not k.startswith("dense_")
                                                 and k != "version"}, version=np.array(1))
    old = ViewDatabase.open(tmp_path / "v1.npz")
    assert old.dense(0) is None
    plain = refine_by_matching(image, K_33, prior, old, 2.0, views=3)
    assert plain.adopted and not plain.aligned
    np.testing.assert_allclose(plain.result.cam2world_44, matched.result.cam2world_44, atol=1e-6)
    with np.load(tmp_path / "views.npz") as z:  # sampled views that disagree with the poses: corrupt
        atomic_save_npz(tmp_path / "bad.npz", **{k: z[k] for k in z.files if k != "dense_gray"},
                        dense_gray=z["dense_gray"][:-5])
    with pytest.raises(ValueError, match="bad.npz is corrupt"):
        ViewDatabase.open(tmp_path / "bad.npz")
