"""``python -m lit3d.evaluate`` on a tiny run: metrics, per-frame CSV, figures, exports, and the wiring of
frames and intrinsics checked by localizing the synthetic scene's exact teacher labels."""
import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import lit3d.evaluate
from lit3d import runs
from lit3d.cache import build_labels
from lit3d.config import to_yaml
from lit3d.data.synthetic import MIN_TEST_PATH_DISTANCE
from lit3d.evaluate import (EvalOptions, evaluate_run, labels_to_gt, main, nearest_rigid, parse_args, pose_to_gt,
                            run_config)
from lit3d.export import read_ply
from lit3d.fit import fit
from lit3d.geometry import look_at, quaternion_to_rotation, transform_points
from lit3d.localize import load_model
from lit3d.metrics.localization import choose_setting, localize, pose_errors, tuning_grid
from lit3d.metrics.matching import ViewDatabase
from lit3d.students.tta import TestTimeOptions
from testkit import one_line_error

LOC_KEYS = ("acc_2cm2deg", "acc_5cm5deg", "acc_10cm10deg", "median_t_cm", "median_r_deg", "inlier_ratio",
            "time_ms_per_frame", "failure_rate")


def test_pose_to_gt_maps_a_pose_through_a_similarity():
    cam2world_44 = look_at(np.array([1.0, 2.0, 0.5]), np.array([0.0, 0.0, 1.0]))
    S_44 = np.eye(4)
    S_44[:3, :3] = 2.5 * look_at(np.zeros(3), np.array([1.0, 1.0, 0.3]))[:3, :3]
    S_44[:3, 3] = [0.3, -1.0, 2.0]
    out = pose_to_gt(S_44, cam2world_44)
    np.testing.assert_allclose(out[:3, 3], S_44[:3, :3] @ cam2world_44[:3, 3] + S_44[:3, 3])
    np.testing.assert_allclose(out[:3, :3] @ out[:3, :3].T, np.eye(3), atol=1e-12)
    assert pose_to_gt(S_44, None) is None


def test_nearly_orthonormal_true_poses_cost_no_rotation_error():
    est_44 = look_at(np.array([1.0, 2.0, 0.5]), np.array([0.0, 0.0, 1.0]))
    true_44 = est_44.copy()
    true_44[:3, :3] *= 0.99995  # 7-Scenes poses: det R ~ 0.99985
    assert pose_errors(est_44, true_44) == pytest.approx((0.0, 0.0), abs=1e-5)  # the trace formula read ~1 degree
    assert pose_errors(est_44, nearest_rigid(true_44)) == pytest.approx((0.0, 0.0), abs=1e-5)
    assert np.isnan(nearest_rigid(np.full((4, 4), np.nan))).all()


class MovedLabels:
    """A cache whose labels a similarity moved out of the dataset frame, as a non-metric teacher's would be."""

    labels_info = {"frame": "first_camera", "unit": "normalised"}

    def __init__(self, cache, T_44: np.ndarray):
        self.cache, self.T_44 = cache, T_44

    def load_frame(self, name: str) -> dict:
        f = dict(self.cache.load_frame(name))
        f["pts_world"] = transform_points(self.T_44, f["pts_world"].astype(np.float64)).astype(np.float32)
        return f


def test_point_errors_report_each_frames_offset_in_its_camera_axes():
    rng = np.random.default_rng(0)
    cam2world_N44 = np.stack([look_at(np.array([1.0, 2.0, 0.5]), np.array([0.0, 0.3, 1.0])), np.full((4, 4), np.nan)])
    gt_NHW3 = rng.normal(size=(2, 4, 5, 3))
    offset_cam_3 = np.array([0.01, -0.02, 0.03])  # metres, camera axes
    noise_NHW3 = rng.normal(scale=0.05, size=gt_NHW3.shape)
    noise_NHW3 -= noise_NHW3.mean((1, 2), keepdims=True)  # zero mean: only the offset survives averaging
    student_NHW3 = gt_NHW3 + noise_NHW3 + cam2world_N44[0, :3, :3] @ offset_cam_3
    valid_NHW = np.ones((2, 4, 5), bool)
    fr = runs.Frames(names=["a", "b"], images_NHW3=np.zeros((2, 4, 5, 3), np.uint8), teacher_NHW3=gt_NHW3,
                     valid_NHW=valid_NHW, student_NHW3=student_NHW3, gt_NHW3=gt_NHW3, gt_valid_NHW=valid_NHW,
                     K_N33=np.stack([np.eye(3)] * 2), cam2world_N44=cam2world_N44, ms_per_image=0.0)
    rows, metrics = runs.point_errors(fr, np.eye(4))
    np.testing.assert_allclose([rows[0][f"student_offset_{a}_cm"] for a in "xyz"], [1.0, -2.0, 3.0], atol=1e-9)
    assert all(np.isnan(rows[1][f"student_offset_{a}_cm"]) for a in "xyz")  # no pose: no camera axes
    assert metrics["eval/student_vs_gt/frame_offset_cm_median"] == pytest.approx(np.sqrt(14))


def test_point_errors_report_how_far_each_frames_cloud_is_turned():
    rng = np.random.default_rng(1)
    gt_NHW3 = rng.normal(size=(2, 6, 8, 3))
    axis_3 = rng.normal(size=3)
    axis_3 /= np.linalg.norm(axis_3)
    turn_33 = quaternion_to_rotation(np.r_[np.cos(np.radians(3.5)), np.sin(np.radians(3.5)) * axis_3])  # 7 deg
    pivot_3 = np.array([2.0, -1.0, 0.5])  # a turn about any point is one about the centroid plus a shift
    student_NHW3 = gt_NHW3.copy()
    student_NHW3[0] = (gt_NHW3[0] - pivot_3) @ turn_33.T + pivot_3 + rng.normal(scale=1e-3, size=(6, 8, 3))
    student_NHW3[1] += np.array([0.1, 0.2, -0.3])  # shifted, not turned
    valid_NHW = np.ones((2, 6, 8), bool)
    fr = runs.Frames(names=["a", "b"], images_NHW3=np.zeros((2, 6, 8, 3), np.uint8), teacher_NHW3=gt_NHW3,
                     valid_NHW=valid_NHW, student_NHW3=student_NHW3, gt_NHW3=gt_NHW3, gt_valid_NHW=valid_NHW,
                     K_N33=np.stack([np.eye(3)] * 2), cam2world_N44=np.stack([np.eye(4)] * 2), ms_per_image=0.0)
    rows, metrics = runs.point_errors(fr, np.eye(4))
    assert rows[0]["student_turn_deg"] == pytest.approx(7.0, abs=0.05)
    assert rows[1]["student_turn_deg"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["eval/student_vs_gt/frame_turn_deg_median"] == pytest.approx(3.5, abs=0.03)


def test_ensemble_members_must_be_run_directories_trained_on_the_same_labels(tiny_cfg, tmp_path):
    student = torch.nn.Identity()
    ours, other_seed, other_split = (tiny_cfg(f"run_dir={tmp_path / n}", *extra) for n, extra in (
        ("a", []), ("b", ["seed=3"]), ("c", ["data.test_path_frames=2"])))
    for cfg in (ours, other_seed, other_split):
        Path(cfg.run_dir).mkdir()
        (Path(cfg.run_dir) / "config.yaml").write_text(to_yaml(cfg))
    assert runs.with_ensemble(ours.run_dir, student, []) is student
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):  # same labels: passes the check, loads
        runs.with_ensemble(ours.run_dir, student, [other_seed.run_dir])
    with pytest.raises(ValueError, match=r"ensemble member .*c: trained on other labels .*\(its data differs\)"):
        runs.with_ensemble(ours.run_dir, student, [other_split.run_dir])
    with pytest.raises(ValueError, match="not a run directory"):
        load_model(tmp_path / "student.onnx", tta=TestTimeOptions(ensemble=[ours.run_dir]))


def test_labels_in_another_frame_are_mapped_back_for_gt_errors_and_poses(tiny_cfg):
    cache, _ = build_labels(tiny_cfg())
    T_44 = np.eye(4)
    T_44[:3, :3] = 0.4 * look_at(np.zeros(3), np.array([0.3, 1.0, -0.2]))[:3, :3]
    T_44[:3, 3] = [1.0, -2.0, 0.5]
    moved = MovedLabels(cache, T_44)
    S_44, how = labels_to_gt(moved, cache.split["train"])
    assert how.startswith("sim3") and "scale 2.5" in how
    np.testing.assert_allclose(S_44 @ T_44, np.eye(4), atol=1e-4)
    f = moved.load_frame(cache.split["test"][0])
    res = localize(f["pts_world"], f["valid"], f["K"], reprojection_px=1.0)
    t_cm, r_deg = pose_errors(pose_to_gt(S_44, res.cam2world_44), f["cam2world"].astype(np.float64))
    assert t_cm < 0.1 and r_deg < 0.1


def test_arguments_and_one_line_errors(tmp_path, caplog):
    run_dir, opts, overrides = parse_args(["runs/x", "checkpoint=last", "exports=false", "data.stride=2",
                                           "reprojection_px=2.5", "tune=true"])
    assert run_dir == "runs/x" and overrides == ["data.stride=2"]
    assert opts == EvalOptions(checkpoint="last", exports=False, reprojection_px=2.5, tune=True)
    with pytest.raises(ValueError, match="matching_views must be at least 1"):
        parse_args(["runs/x", "matching_views=0"])
    assert main(["--help"]) == 0
    with caplog.at_level(logging.ERROR):
        assert main([str(tmp_path / "missing")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "not a run directory" in errors[0]


@pytest.mark.slow
def test_evaluate_a_tiny_run(tiny_cfg, caplog, monkeypatch):
    # labels at 48x64, student at 24x32: the label -> student intrinsics scaling is part of what is checked
    cfg = tiny_cfg("data.resolution=[48,64]")
    fit(cfg)
    run = Path(cfg.run_dir)
    assert main([str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/l2_mean" in metrics and "model/size_mb" in metrics  # fit's keys survive the merge
    for prefix in ("loc/", "loc_teacher/"):
        assert all(prefix + k in metrics for k in LOC_KEYS), prefix
    for who in ("student_vs_teacher", "teacher_vs_gt", "student_vs_gt"):
        assert f"eval/{who}/l2_mean" in metrics and f"eval/{who}/acc_5cm" in metrics
    assert metrics["eval/gt_alignment"] == "identity" and metrics["eval/student_ms_per_image"] > 0
    # the student's poses refined by matching are reported by default, beside the student's own (loc/*)
    assert all(f"loc_refined/{k}" in metrics for k in LOC_KEYS if k != "inlier_ratio")

    # the depth teacher's labels are exact: PnP on them must give the true poses back (frames, K scaling)
    assert metrics["eval/teacher_vs_gt/l2_mean"] < 1e-5
    assert metrics["loc_teacher/acc_2cm2deg"] == 1.0 and metrics["loc_teacher/inlier_ratio"] > 0.99
    names = build_labels(run_config(run))[0].split["test"]
    with open(run / "eval_frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["frame"] for r in rows] == names
    # not exactly 0: pixels at depth edges keep their nearest label, up to 0.35 student px off (here 0.07-0.11 deg);
    # labels or K a quarter pixel off everywhere (nearest labels with the box filter's K) gave ~0.7 deg; the
    # test-path cameras see walls up to ~4 m away, where 0.1 deg moves the centre ~0.5 cm (measured 0.09-1.03 cm)
    assert all(float(r["teacher_t_cm"]) < 1.5 and float(r["teacher_r_deg"]) < 0.25 for r in rows)

    for name in ("eval_frames.png", "eval_loc_cdf_t.png", "eval_loc_cdf_r.png", "eval_generalisation.png",
                 "eval_pointclouds.html", "exports/student.onnx", "exports/student.ts"):
        assert (run / name).stat().st_size > 0, name
    for fmt in ("onnx", "torchscript"):
        assert metrics[f"export/{fmt}_max_abs_diff"] <= metrics[f"export/{fmt}_atol"]
        assert 0 < metrics[f"export/{fmt}_size_mb"] < 5
    # the training views' keypoints beside the student, for localize matching=true without the label cache
    views = ViewDatabase.open(metrics["export/views_path"])
    assert Path(metrics["export/views_path"]) == run / "exports" / "training_views.npz"
    train = build_labels(run_config(run))[0].split["train"]
    assert len(views.posed_P) == len(train) and metrics["export/views_size_mb"] > 0
    pts_N3, rgb_N3 = read_ply(run / "exports" / "teacher_test.ply")
    assert len(pts_N3) == len(rgb_N3) == len(names) * 24 * 32  # every synthetic pixel has depth
    assert len(read_ply(run / "exports" / "student_test.ply")[0]) == len(names) * 24 * 32

    # generalisation: the synthetic scene's test frames lie on its second camera path, away from training cameras
    assert all(n.startswith("test-") for n in names)
    for r in rows:
        assert float(r["nearest_train_m"]) >= MIN_TEST_PATH_DISTANCE and 0.8 < float(r["coverage"]) <= 1.0
        assert 0 <= float(r["min_train_deg"]) <= float(r["nearest_train_deg"]) <= 180
    assert metrics["gen/nearest_train_m_median"] >= MIN_TEST_PATH_DISTANCE and metrics["gen/coverage_mean"] > 0.8
    assert metrics["gen/nearest_train_deg_median"] >= metrics["gen/min_train_deg_median"] > 0
    # the low test ring looks at the nearer walls: closer than any training frame saw them
    ratios = [float(r["depth_ratio"]) for r in rows]  # 0.59-0.99 on the tiny scene's 4 test frames
    assert min(ratios[1::2]) == metrics["gen/depth_ratio_min"] < 0.8 and 0.8 < min(ratios[::2])
    assert metrics["gen/depth_ratio_max"] == max(ratios) <= 1.05
    assert (metrics["eval/ransac_iterations"], metrics["eval/refine"], metrics["eval/tuned"]) == (1000, True, False)
    # points averaged over 9 rolled / zoomed copies by default; tta=false is the single forward of the student
    assert (metrics["eval/tta_views"], metrics["eval/tta_reduce"], metrics["eval/tta_original"]) == (9, "mean", True)
    single = evaluate_run(run, options=EvalOptions(tta=False, exports=False, figure_frames=1))
    assert (single["eval/tta_views"], single["eval/tta_reduce"], single["eval/tta_original"]) == (1, "none", "none")
    assert single["eval/student_vs_teacher/l2_mean"] != metrics["eval/student_vs_teacher/l2_mean"]
    # the run's student averaged with itself is that student: checks the plumbing (the mean: test_ensemble.py)
    pair = evaluate_run(run, options=EvalOptions(tta=False, exports=False, figure_frames=1, ensemble=[str(run)]))
    assert pair["eval/ensemble"] == str(run) and single["eval/ensemble"] == "none"
    assert pair["eval/student_vs_teacher/l2_mean"] == pytest.approx(single["eval/student_vs_teacher/l2_mean"])

    # matching=true adds the classical yardstick's columns and loc_matching/* (its accuracy: test_matching.py)
    matched = evaluate_run(run, options=EvalOptions(tta=False, exports=False, figure_frames=1, matching=True,
                                                    matching_views=3))
    assert all(f"loc_matching/{k}" in matched for k in ("acc_5cm5deg", "median_t_cm", "n_frames", "failure_rate"))
    assert matched["loc_matching/n_frames"] == len(names)
    with open(run / "eval_frames.csv", newline="") as f:
        matched_rows = list(csv.DictReader(f))
    assert [r["frame"] for r in matched_rows] == names
    assert all(int(r["matching_inliers"]) <= int(r["matching_matches"]) for r in matched_rows)
    assert all((r["matching_loc_ok"] == "True") == (r["matching_loc_reason"] == "") for r in matched_rows)
    # matching_refine=true: the student's pose kept, or replaced by a matched one that 30 inliers support
    refined = evaluate_run(run, options=EvalOptions(tta=False, exports=False, figure_frames=1, matching_refine=True,
                                                    matching_views=3))
    assert all(f"loc_refined/{k}" in refined for k in ("acc_5cm5deg", "n_frames", "adopted_rate", "retrieved_rate",
                                                       "time_ms_per_frame"))
    with open(run / "eval_frames.csv", newline="") as f:
        refined_rows = list(csv.DictReader(f))
    assert refined["loc_refined/adopted_rate"] == np.mean([r["refined_adopted"] == "True" for r in refined_rows])
    assert refined["loc_refined/retrieved_rate"] == np.mean([r["refined_retrieved"] == "True" for r in refined_rows])
    assert all(r["refined_adopted"] == "True" for r in refined_rows if r["refined_retrieved"] == "True")
    for r in refined_rows:
        if r["refined_adopted"] == "True":
            assert int(r["refined_inliers"]) >= 30 and int(r["refined_matches"]) >= int(r["refined_inliers"])
        else:
            assert (r["refined_t_cm"], r["refined_r_deg"]) == (r["student_t_cm"], r["student_r_deg"])
    assert not any(k.startswith("loc_matching/") for k in refined)

    # a re-run without exports keeps the export keys and replaces the rest (the yardstick's keys go with it)
    again = evaluate_run(run, options=EvalOptions(checkpoint="last", exports=False, figure_frames=1,
                                                  matching_refine=False))
    merged = json.loads((run / "metrics.json").read_text())
    assert merged["eval/checkpoint"].endswith("last.ckpt") and "export/onnx_size_mb" in merged
    assert not any(k.startswith(("loc_matching/", "loc_refined/")) for k in merged)
    assert merged["loc/median_t_cm"] == again["loc/median_t_cm"]

    # tune=true: settings chosen on the validation frames, table written, the choice used for the test frames
    loaded = []
    real_load_frames = lit3d.evaluate.load_frames
    monkeypatch.setattr(lit3d.evaluate, "load_frames",
                        lambda c, n, *a, **kw: loaded.append(list(n)) or real_load_frames(c, n, *a, **kw))
    with caplog.at_level(logging.INFO, logger="lit3d.evaluate"):
        tuned = evaluate_run(run, options=EvalOptions(tune=True, exports=False, figure_frames=1))
    val = build_labels(run_config(run))[0].split["val"]
    assert loaded == [names, val] and f"tune on {len(val)} val frames" in caplog.text
    with open(run / "eval_tuning.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(tuning_grid(32)) and [r["chosen"] for r in table].count("True") == 1
    best = table[choose_setting([{k: float(r[k]) for k in ("acc_5cm5deg", "median_t_cm")} for r in table])]
    assert best["chosen"] == "True" and tuned["eval/tuned"] is True
    assert (tuned["eval/reprojection_px"], tuned["eval/ransac_iterations"], str(tuned["eval/refine"])) == (
        float(best["reprojection_px"]), float(best["iterations"]), best["refine"])
    with pytest.raises(ValueError, match="tune=true needs validation frames"):
        evaluate_run(run, ["data.val_every=0"], EvalOptions(tune=True, exports=False, figure_frames=1))


def test_a_device_this_machine_lacks_is_one_line_before_any_work(tmp_path, caplog):
    import torch

    assert "invalid value for 'device': 'gpu0'" in one_line_error(caplog, main, [str(tmp_path / "missing"), "device=gpu0"])
    if not torch.cuda.is_available():
        assert "device=cuda: no CUDA GPU is available here" in one_line_error(
            caplog, main, [str(tmp_path / "missing"), "device=cuda"])


@pytest.mark.slow
def test_corrupt_foreign_and_non_finite_checkpoints_are_one_line_errors(tiny_cfg, tmp_path, caplog):
    import shutil

    import torch

    from lit3d.students.checkpoints import sidecar, write_checkpoint

    cfg = tiny_cfg()
    fit(cfg)
    run = Path(cfg.run_dir)
    best = run / "checkpoints" / "best.ckpt"
    assert sidecar(best).is_file()
    metrics_before = (run / "metrics.json").read_text()

    def copy(name: str, data: bytes, with_sidecar: bool) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        if with_sidecar:
            shutil.copy(sidecar(best), sidecar(path))
        return path

    data = best.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10  # one bit of the weights: evaluated to NaN metrics with exit 0 before
    cases = {copy("flipped.ckpt", bytes(flipped), True): "is corrupt: its SHA-256 does not match",
             copy("truncated.ckpt", data[: len(data) // 3], False): "is unreadable",
             copy("random.ckpt", np.random.default_rng(0).bytes(5000), False): "is unreadable"}
    for path, what in cases.items():
        assert f"checkpoint {path} {what}" in one_line_error(caplog, main, [str(run), f"checkpoint={path}", "exports=false"])

    # a checkpoint whose weights are not finite (verified file, diverged training): an error, not NaN metrics
    ckpt = torch.load(best, weights_only=False)
    ckpt["state_dict"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    nan_ckpt = tmp_path / "nan.ckpt"
    torch.save(ckpt, nan_ckpt)
    write_checkpoint(nan_ckpt, nan_ckpt.read_bytes())
    assert "the student predicts non-finite points on" in one_line_error(
        caplog, main, [str(run), f"checkpoint={nan_ckpt}", "exports=false"])

    # another student's checkpoint (same cache and input size)
    other = tiny_cfg("student=vanilla_cnn", "student.channels=[4,4,8,8,8,8]", f"run_dir={tmp_path / 'other'}")
    fit(other)
    foreign = tmp_path / "other" / "checkpoints" / "best.ckpt"
    assert f"checkpoint {foreign} holds another student than the run's config.yaml (student.name='vanilla_cnn' " \
           f"there, 'vit' here)" in one_line_error(caplog, main, [str(run), f"checkpoint={foreign}", "exports=false"])
    assert (run / "metrics.json").read_text() == metrics_before and not (run / "eval_frames.csv").exists()
