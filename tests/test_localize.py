"""``lit3d localize``: intrinsics sources, the K scaling chain, pose files read back by an independent reader,
failed queries reported by status, one-line errors; on the shared kitchen sample (slow), evaluate's poses exactly
and ONNX Runtime's poses like PyTorch's."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

import lit3d
from lit3d.cameras import CameraFileError, read_colmap_cameras, read_hloc_poses, write_colmap_cameras
from lit3d.export import export_onnx, student_metadata
from lit3d.geometry import backproject_depth, look_at, scale_intrinsics, transform_points
from lit3d.localize import PointmapModel, PoseResult, load_model, main, query_intrinsics, write_results
from lit3d.students.tta import TestTimeOptions

K_NATIVE = np.array([[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
INPUT_HW = (24, 32)


def _true_pose(k: int) -> np.ndarray:
    return look_at(np.array([0.3 * k, -2.0, 1.0 + 0.1 * k]), np.array([0.0, 0.0, 0.8]))


def box_model(fail_dark: bool = True) -> PointmapModel:
    """A stand-in student that knows the scene: a query whose pixels all hold the value k is camera ``k`` of
    :func:`_true_pose`, looking at a tilted plane; it returns that camera's exact world points on its input grid
    (K of the native photo scaled to the input). Images of value 0 get one repeated point: PnP cannot work."""
    h, w = INPUT_HW
    K_grid = scale_intrinsics(K_NATIVE, w / 640, h / 480)

    def forward(images_NHW3: np.ndarray) -> np.ndarray:
        out = []
        for im in images_NHW3:
            k = int(round(float(np.median(im))))
            if k == 0 and fail_dark:
                out.append(np.ones((h, w, 3), np.float32))
                continue
            v = np.arange(h)[:, None] / h
            depth_hw = (2.0 + 0.5 * v + 0.3 * np.arange(w)[None] / w).astype(np.float32)
            out.append(transform_points(_true_pose(k), backproject_depth(depth_hw, K_grid).astype(np.float64)))
        return np.stack(out).astype(np.float32)

    return PointmapModel(forward, INPUT_HW, "dataset", "m", "test", "box")


def _photo(path: Path, value: int, size=(480, 640), exif_orientation: int | None = None) -> Path:
    image = Image.fromarray(np.full((*size, 3), value, np.uint8))
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    else:
        image.save(path)
    return path


def test_poses_through_resizing_and_a_failed_query_in_the_batch(tmp_path):
    photos = [_photo(tmp_path / f"q{k}.png", k) for k in (1, 2, 0, 3)]
    res = lit3d.localize(box_model(), photos, K_NATIVE, batch_size=3)
    assert [r.name for r in res] == ["q1.png", "q2.png", "q0.png", "q3.png"]
    assert res[2].status.startswith("degenerate points") and res[2].cam2world_44 is None and not res[2].ok
    for r, k in zip([res[0], res[1], res[3]], (1, 2, 3)):
        assert r.status == "ok" and r.n_inliers == r.n_points == 24 * 32
        np.testing.assert_allclose(r.cam2world_44, _true_pose(k), atol=1e-4)
        assert r.reprojection_error_px < 0.05 and r.image_size == (480, 640)


def test_intrinsics_sources(tmp_path):
    names, sizes = ["a.jpg", "b.jpg"], [(480, 640), (240, 320)]
    (tmp_path / "K.txt").write_text("525 0 319.5\n0 525 239.5\n0 0 1\n")
    assert all(np.array_equal(K, K_NATIVE) for K in query_intrinsics(names, sizes, tmp_path / "K.txt"))
    (tmp_path / "list.txt").write_text("# per image\na.jpg 500 501 320 240\nb 250 250 160 120\n")
    K_a, K_b = query_intrinsics(names, sizes, str(tmp_path / "list.txt"))
    assert (K_a[0, 0], K_a[1, 1], K_a[0, 2], K_b[0, 0]) == (500, 501, 320, 250)
    # COLMAP: pixel centres at +0.5, one camera scaled to a resized copy of the photo
    (tmp_path / "cameras.txt").write_text("# c\n1 SIMPLE_RADIAL 640 480 525 320 240 0.01\n")
    K_a, K_b = query_intrinsics(names, sizes, tmp_path / "cameras.txt")
    np.testing.assert_allclose(K_a, K_NATIVE)
    np.testing.assert_allclose(K_b, scale_intrinsics(K_NATIVE, 0.5, 0.5))
    fov = query_intrinsics(names[:1], sizes[:1], None, hfov_deg=90.0)[0]
    assert fov[0, 0] == pytest.approx(320.0) and fov[0, 2] == 319.5
    with pytest.raises(ValueError, match="no intrinsics"):
        query_intrinsics(names, sizes)
    (tmp_path / "bad.txt").write_text("0 0 319.5\n0 0 239.5\n0 0 1\n")
    with pytest.raises(CameraFileError, match=r"bad.txt: intrinsics are not an invertible pinhole"):
        query_intrinsics(names, sizes, tmp_path / "bad.txt")


def test_colmap_cameras_round_trip(tmp_path):
    cams = {1: (K_NATIVE, (480, 640)), 7: (np.array([[300.0, 0, 100.25], [0, 310.0, 80.5], [0, 0, 1]]), (160, 200))}
    write_colmap_cameras(tmp_path / "cameras.txt", cams)
    back = read_colmap_cameras(tmp_path / "cameras.txt")
    assert set(back) == {1, 7}
    for cid, (K, hw) in cams.items():
        np.testing.assert_array_equal(back[cid][0], K)
        assert back[cid][1] == hw


def test_pose_files_read_back_by_an_independent_reader(tmp_path):
    rng = np.random.default_rng(0)
    results = []
    for k in range(4):
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = Rotation.random(random_state=k).as_matrix(), rng.normal(size=3)
        results.append(PoseResult(f"img{k}.jpg", "ok" if k != 2 else "RANSAC failed (3 inliers)",
                                  T if k != 2 else None, 100, 90, 0.9, 0.5, K_NATIVE, (480, 640), 0.01))
    files = write_results(tmp_path, results, box_model(), {"reprojection_px": 1.0})
    data = json.loads(files["json"].read_text())
    assert [q["status"] for q in data["queries"]][2].startswith("RANSAC failed") and data["unit"] == "m"
    # hloc: name qw qx qy qz tx ty tz of world-to-camera, read with scipy (quaternion order x, y, z, w)
    hloc = [line.split() for line in files["hloc"].read_text().splitlines() if not line.startswith("#")]
    assert [h[0] for h in hloc] == ["img0.jpg", "img1.jpg", "img3.jpg"]  # failed queries: poses.json only
    for words, r in zip(hloc, [results[0], results[1], results[3]]):
        qw, qx, qy, qz, tx, ty, tz = map(float, words[1:])
        R_w2c = Rotation.from_quat([qx, qy, qz, qw]).as_matrix()
        np.testing.assert_allclose(R_w2c.T, r.cam2world_44[:3, :3], atol=1e-12)
        np.testing.assert_allclose(-R_w2c.T @ [tx, ty, tz], r.cam2world_44[:3, 3], atol=1e-12)
    assert set(read_hloc_poses(files["hloc"])) == {"img0.jpg", "img1.jpg", "img3.jpg"}
    # TUM: timestamp tx ty tz qx qy qz qw of camera-to-world
    tum = np.loadtxt(files["tum"], comments="#")
    assert list(tum[:, 0]) == [0.0, 1.0, 3.0]
    for row, r in zip(tum, [results[0], results[1], results[3]]):
        np.testing.assert_allclose(row[1:4], r.cam2world_44[:3, 3], atol=1e-12)
        np.testing.assert_allclose(Rotation.from_quat(row[4:]).as_matrix(), r.cam2world_44[:3, :3], atol=1e-12)


def test_exif_orientation_turns_the_photo_and_its_size(tmp_path):
    photo = _photo(tmp_path / "turned.jpg", 2, size=(640, 480), exif_orientation=6)  # stored 480 wide, shown 640
    (r,) = lit3d.localize(box_model(), [photo], K_NATIVE)
    assert r.image_size == (480, 640) and r.ok
    np.testing.assert_allclose(r.cam2world_44, _true_pose(2), atol=1e-3)


def _one_error(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def test_one_line_errors(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    photo = _photo(tmp_path / "q.png", 1)
    (tmp_path / "K.txt").write_text("525 0 319.5\n0 525 239.5\n0 0 1\n")
    (tmp_path / "singular.txt").write_text("525 0 319.5\n0 0 239.5\n0 0 1\n")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cases = [([str(run), str(photo), f"intrinsics={tmp_path / 'K.txt'}"], "no best checkpoint"),
             ([str(tmp_path / "nothing"), str(photo)], "neither a run directory nor an exported student"),
             ([str(run), str(tmp_path / "missing.png")], "query image not found")]
    for argv, message in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(argv) == 2
        assert message in _one_error(caplog)
    model = box_model()
    for kwargs, message in [({"K": tmp_path / "singular.txt"}, "singular.txt: intrinsics are not an invertible"),
                            ({}, "no intrinsics")]:
        with pytest.raises(ValueError, match=message):
            lit3d.localize(model, [photo], **kwargs)
    with pytest.raises(ValueError, match=r"broken.jpg: not a readable image"):
        lit3d.localize(model, [tmp_path / "broken.jpg"], K_NATIVE)
    assert load_model  # the public entry points exist


class ShiftedPlane(torch.nn.Module):
    """An exportable stand-in student with exact geometry: camera 1's world points of a tilted plane, moved along
    x by the image's mean value (so each image of a batch has its own pose: camera 1 moved by that much)."""

    def __init__(self):
        super().__init__()
        h, w = INPUT_HW
        depth_hw = (2.0 + 0.5 * np.arange(h)[:, None] / h + 0.3 * np.arange(w)[None] / w).astype(np.float32)
        K_grid = scale_intrinsics(K_NATIVE, w / 640, h / 480)
        pts = transform_points(_true_pose(1), backproject_depth(depth_hw, K_grid).astype(np.float64))
        self.register_buffer("pts_3HW", torch.from_numpy(pts.astype(np.float32)).permute(2, 0, 1).contiguous())
        self.hparams = SimpleNamespace(img_size=INPUT_HW, student={"name": "plane"})

    def forward(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        shift_B = image_B3HW.mean(dim=(1, 2, 3))
        offset_B311 = torch.stack([shift_B, torch.zeros_like(shift_B), torch.zeros_like(shift_B)], 1)[..., None, None]
        return self.pts_3HW[None] + offset_B311


def test_onnx_runtime_gives_the_pytorch_poses(tmp_path):
    """The exported path (metadata, NCHW float input in [0, 1], onnxruntime) against the PyTorch module."""
    pytest.importorskip("onnxruntime")
    net = ShiftedPlane()
    export_onnx(net, torch.rand(2, 3, *INPUT_HW), tmp_path / "plane.onnx",
                metadata=student_metadata(net, {"frame": "dataset", "unit": "m"}))
    photos = [_photo(tmp_path / f"q{k}.png", v) for k, v in enumerate((0, 51, 255))]
    info = {"frame": "dataset", "unit": "m"}
    eager = lit3d.localize(load_model(net, labels_info=info), photos, K_NATIVE)
    onnx = lit3d.localize(tmp_path / "plane.onnx", photos, K_NATIVE, tta=TestTimeOptions(tta=False))
    assert load_model(tmp_path / "plane.onnx").runtime == "onnxruntime"
    for a, b, v in zip(eager, onnx, (0, 51, 255)):
        assert a.ok and b.ok
        expected = _true_pose(1).copy()
        expected[0, 3] += v / 255
        np.testing.assert_allclose(a.cam2world_44, expected, atol=1e-4)
        np.testing.assert_allclose(b.cam2world_44, a.cam2world_44, atol=1e-5)  # the stated ONNX tolerance
    # test-time augmentation (on by default) runs the ONNX student as it runs the module: the same averaged points.
    # This "student" draws its plane by pixel position, not by content, so its rolled and zoomed copies disagree:
    # the points move off the plane (and RANSAC's pose with them, by amounts too chaotic to compare)
    eager = lit3d.localize(load_model(net, labels_info=info, tta=TestTimeOptions()), photos, K_NATIVE,
                           keep_points=True)
    onnx = lit3d.localize(tmp_path / "plane.onnx", photos, K_NATIVE, keep_points=True)
    plain = lit3d.localize(load_model(net, labels_info=info), photos, K_NATIVE, keep_points=True)
    for a, b, c in zip(eager, onnx, plain):
        np.testing.assert_allclose(b.points_HW3, a.points_HW3, atol=1e-5)
        assert np.abs(a.points_HW3 - c.points_HW3).max() > 1e-3


REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "7scenes-kitchen-sample"


@pytest.mark.slow
@pytest.mark.skipif(not (SAMPLE / "camera-intrinsics.txt").is_file(), reason=f"7-Scenes kitchen sample not found at {SAMPLE}")
def test_localize_the_kitchen_sample_like_evaluate(tmp_path, caplog):
    """A run trained on the sample's training frames (labels at the student's size, so the photo pipeline is the
    label cache's): localizing the test frames' photo files gives exactly the poses that evaluate computes."""
    from lit3d.cache import build_labels
    from lit3d.config import load_config
    from lit3d.evaluate import EvalOptions, evaluate_run
    from lit3d.fit import fit
    from lit3d.runs import default_reprojection_px, load_frames, load_student, localize_frames, run_config

    run = tmp_path / "run"
    fit(load_config(["data.format=folder", f"data.root={SAMPLE}", "data.resolution=[48,64]",
                     "loader.resolution=[48,64]", "student=vanilla_cnn", "student.channels=[8,16,16,32,32,32]",
                     "student.head_hidden=32", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                     "trainer.accelerator=cpu", "trainer.devices=1", f"cache_dir={tmp_path / 'cache'}",
                     f"run_dir={run}"]))
    evaluate_run(run, options=EvalOptions(exports=False, figure_frames=1))
    cache, _ = build_labels(run_config(run))
    names = cache.split["test"]
    fr = load_frames(cache, names, load_student(run), run_config(run).loader.batch_size, tta=TestTimeOptions())
    _, _, poses = localize_frames(fr, np.eye(4), default_reprojection_px(64), who=("student",))

    (tmp_path / "queries.txt").write_text("".join(f"{SAMPLE / n}.color.jpg\n" for n in names))
    assert main([str(run), str(tmp_path / "queries.txt"), f"intrinsics={SAMPLE / 'camera-intrinsics.txt'}",
                 "ply=true", "matching=false"]) == 0
    out = json.loads((run / "localize" / "poses.json").read_text())
    assert [q["name"] for q in out["queries"]] == [f"{n}.color.jpg" for n in names]
    assert (out["frame"], out["unit"]) == ("dataset", "m")
    assert {k: out["settings"][k] for k in ("tta_views", "tta_reduce", "tta_original")} == {
        "tta_views": 9, "tta_reduce": "mean", "tta_original": True}
    for q, expected in zip(out["queries"], poses["student"]):
        assert q["status"] == "ok" and np.array_equal(np.array(q["cam2world"]), expected)
    # the run's student averaged with itself (ensemble) is that student: the same poses through the CLI
    assert main([str(run), str(tmp_path / "queries.txt"), f"intrinsics={SAMPLE / 'camera-intrinsics.txt'}",
                 f"ensemble=[{run}]", f"out={tmp_path / 'pair'}", "matching=false"]) == 0
    pair = json.loads((tmp_path / "pair" / "poses.json").read_text())
    assert [q["cam2world"] for q in pair["queries"]] == [q["cam2world"] for q in out["queries"]]
    # and evaluate's per-frame errors (eval_frames.csv) are those of these poses
    import csv

    from lit3d.metrics.localization import pose_errors

    with open(run / "eval_frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["frame"] for r in rows] == names
    for r, q, true_44 in zip(rows, out["queries"], fr.cam2world_N44):
        t_cm, r_deg = pose_errors(np.array(q["cam2world"]), true_44)
        assert (float(r["student_t_cm"]), float(r["student_r_deg"])) == (t_cm, r_deg)
    assert (run / "localize" / "poses_hloc.txt").is_file() and len(list((run / "localize" / "ply").glob("*.ply"))) == 12

    # by default each pose is refined against the run's training frames: the poses evaluate's loc_refined scores
    evaluate_run(run, options=EvalOptions(figure_frames=1, matching_views=4))
    assert main([str(run), str(tmp_path / "queries.txt"), f"intrinsics={SAMPLE / 'camera-intrinsics.txt'}",
                 "matching_views=4", f"out={tmp_path / 'matched'}"]) == 0
    matched = json.loads((tmp_path / "matched" / "poses.json").read_text())
    assert matched["settings"]["matching"] is True and matched["settings"]["matching_views"] == 4
    with open(run / "eval_frames.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r, q, plain, true_44 in zip(rows, matched["queries"], out["queries"], fr.cam2world_N44):
        assert q["matched"] == (r["refined_adopted"] == "True") and q["aligned"] == (r["refined_aligned"] == "True")
        if not q["matched"]:
            assert q["cam2world"] == plain["cam2world"]
        t_cm, r_deg = pose_errors(np.array(q["cam2world"]), true_44)
        assert (float(r["refined_t_cm"]), float(r["refined_r_deg"])) == pytest.approx((t_cm, r_deg), abs=1e-9)
    # the training views that evaluate exported (training_views.npz) refine exactly as the label cache does
    from lit3d.localize import localize
    from lit3d.metrics.matching import ViewDatabase

    views = ViewDatabase.open(run / "exports" / "training_views.npz")
    via_file = localize(run, [SAMPLE / f"{n}.color.jpg" for n in names], SAMPLE / "camera-intrinsics.txt",
                        matching=views, matching_views=4)
    for got, q in zip(via_file, matched["queries"]):
        assert (got.matched, got.aligned) == (q["matched"], q["aligned"])
        assert np.array_equal(got.cam2world_44, np.array(q["cam2world"]))
    # and the exported student finds them beside itself (no label cache): matched poses that 30 inliers support
    assert main([str(run / "exports" / "student.onnx"), str(tmp_path / "queries.txt"),
                 f"intrinsics={SAMPLE / 'camera-intrinsics.txt'}", "matching=true", "matching_views=4",
                 f"out={tmp_path / 'exported'}"]) == 0
    exported = json.loads((tmp_path / "exported" / "poses.json").read_text())
    assert exported["settings"]["matching"] is True and exported["settings"]["matching_retrieval"] is True
    assert any(q["matched"] for q in exported["queries"])
    assert all(q["n_inliers"] >= 30 for q in exported["queries"] if q["matched"])

    (tmp_path / "singular.txt").write_text("525 0 319.5\n0 0 239.5\n0 0 1\n")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    photo = SAMPLE / f"{names[0]}.color.jpg"
    (tmp_path / "lone").mkdir()  # an exported student without the training views beside it
    shutil.copy(run / "exports" / "student.onnx", tmp_path / "lone")
    moved = tmp_path / "moved"  # a run whose label cache is gone
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("exports", "localize"))
    metrics = json.loads((moved / "metrics.json").read_text())
    (moved / "metrics.json").write_text(json.dumps({**metrics, "labels/cache": str(tmp_path / "gone")}))
    for argv, message in [([str(run), str(photo), f"intrinsics={tmp_path / 'singular.txt'}"], "not an invertible"),
                          ([str(run), str(tmp_path / "broken.jpg"), "hfov_deg=60"], "broken.jpg: not a readable image"),
                          ([str(run), str(photo)], "no intrinsics"),
                          ([str(run), str(photo), "hfov_deg=60", "batch_size=two"], "invalid value for 'batch_size'"),
                          ([str(run), str(photo), "hfov_deg=60", "matching_views=0"], "matching_views must be at least 1"),
                          ([str(tmp_path / "lone" / "student.onnx"), str(photo), "hfov_deg=60"],
                           "training_views.npz (lit3d evaluate RUN_DIR writes it into RUN_DIR/exports/); "
                           "matching=false localizes with the student alone"),
                          ([str(moved), str(photo), "hfov_deg=60"],
                           "not found (cache_dir=DIR finds a moved cache); matching=false localizes with the student")]:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(argv) == 2
        assert message in _one_error(caplog)
