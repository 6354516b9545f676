"""``lit3d export-cameras``: the label cache keeps its cameras, and they come back from COLMAP files and as a scene."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from lit3d.cache import CacheError, build_labels
from lit3d.cache.store import CAMERAS_FILE
from lit3d.cameras import read_colmap_model
from lit3d.cli import main as lit3d
from lit3d.data import DataConfig, load_scene
from lit3d.export.cameras import cache_cameras
from lit3d.export_cameras import ExportCamerasOptions, export_cameras
from lit3d.geometry import invert_pose, project, transform_points

GLOBAL = ["align.method=global", "align.use_known_intrinsics=false", "align.known_pose_mode=ignore"]


def frames(cache):
    return [cache.load_frame(n) for n in cache.frames]


def reprojection_px(cams, cache) -> np.ndarray:
    """Pixel distance between every valid label point projected with its frame's stored camera and its pixel."""
    err = []
    for k, f in enumerate(frames(cache)):
        v, u = np.nonzero(f["valid"])
        cam = transform_points(invert_pose(cams.cam2world_N44[k]), f["pts_world"][v, u].astype(np.float64))
        uv, _ = project(cam, cams.K_N33[k])
        err.append(np.linalg.norm(uv - np.stack([u, v], -1), axis=1))
    return np.concatenate(err)


def test_cache_exports_a_colmap_model_that_loads_back_as_a_scene(tiny_cfg, tmp_path):
    cache, _ = build_labels(tiny_cfg())
    assert (cache.root / CAMERAS_FILE).is_file() and "cameras_sha256" in cache.labels_info
    out = tmp_path / "export"
    assert lit3d(["export-cameras", str(cache.root), f"out={out}", "points=500"]) == 0
    model = read_colmap_model(out / "sparse" / "0")
    fr = frames(cache)
    assert len(model.cameras) == 1 and len(model.images) == len(fr) and len(model.points.ids_P) == 500
    for im, f in zip(sorted(model.images.values(), key=lambda im: im.name), fr):
        np.testing.assert_allclose(model.cameras[im.camera_id].K, f["K"], rtol=1e-6)  # the label grid's K
        np.testing.assert_allclose(im.cam2world_44, f["cam2world"], atol=1e-6)  # the dataset poses alignment used
    assert np.all(model.points.error_P < 1e-3)  # labels sit on their pixels' rays
    assert (out / "poses_tum.txt").is_file()
    # the folder is a COLMAP scene: the same frames, cameras and images (PNG: lossless)
    H, W = fr[0]["image"].shape[:2]
    scene = load_scene(DataConfig(format="colmap", root=str(out), resolution=[H, W]))
    assert scene.frame_names == cache.frames
    for k, f in enumerate(fr):
        np.testing.assert_allclose(scene.K_N33[k], f["K"], rtol=1e-6)
        np.testing.assert_allclose(scene.cam2world_N44[k], f["cam2world"], atol=1e-6)
        np.testing.assert_array_equal(scene.read_image(k), f["image"])


def test_global_alignment_keeps_its_solved_cameras(tiny_cfg, tmp_path, caplog):
    cache, summary = build_labels(tiny_cfg(*GLOBAL))
    cams = cache_cameras(cache)
    assert cams.frame == summary["frame"] == "first_camera" and not cams.derived
    np.testing.assert_allclose(cams.cam2world_N44[0], np.eye(4), atol=1e-6)  # the first camera is the origin
    assert not np.allclose(cams.K_N33[:, 0, 0], frames(cache)[0]["K"][0, 0])  # solved focals, not the scene's
    assert np.median(reprojection_px(cams, cache)) < 0.05  # the labels were fused with exactly these cameras
    # a run directory finds its cache through metrics.json
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("experiment: default\n")
    (run / "metrics.json").write_text(json.dumps({"labels/cache": str(cache.root)}))
    written = export_cameras(run, ExportCamerasOptions(format="tum"))
    assert written["tum"] == str(run / "cameras" / "poses_tum.txt") and "colmap" not in written
    rows = np.loadtxt(written["tum"])
    np.testing.assert_allclose(rows[:, 1:4], cams.cam2world_N44[:, :3, 3], atol=1e-12)
    # a cache from before caches kept cameras: solved poses cannot be derived, the error says how to rebuild
    (cache.root / CAMERAS_FILE).unlink()
    with caplog.at_level(logging.ERROR):
        assert lit3d(["export-cameras", str(run)]) == 2
    assert f"delete {cache.root / 'labels.json'} and run lit3d label" in caplog.text


def test_old_dataset_pose_cache_is_derived_and_a_corrupt_file_is_refused(tiny_cfg, tmp_path):
    cache, _ = build_labels(tiny_cfg())
    stored = cache_cameras(cache)
    path = cache.root / CAMERAS_FILE
    data = path.read_bytes()
    path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(CacheError, match="corrupt or stale"):
        cache_cameras(cache)
    path.unlink()
    derived = cache_cameras(cache)
    assert derived.derived and derived.names == stored.names
    np.testing.assert_allclose(derived.cam2world_N44, stored.cam2world_N44, atol=1e-6)
    np.testing.assert_allclose(derived.K_N33, stored.K_N33, rtol=1e-6)


def test_options_are_checked(tiny_cfg, tmp_path, capsys):
    assert lit3d(["export-cameras", "--help"]) == 0
    assert "format='all'" in capsys.readouterr().out
    cache, _ = build_labels(tiny_cfg())
    assert lit3d(["export-cameras", str(cache.root), "format=ply"]) == 2
    assert lit3d(["export-cameras", str(cache.root), "points=many"]) == 2
    assert lit3d(["export-cameras", str(tmp_path)]) == 2  # neither a run nor a cache


TINY_DUST3R = ["teacher=dust3r", "teacher.random_init=true", "teacher.resolution=64", "teacher.enc_embed_dim=32",
               "teacher.enc_depth=1", "teacher.enc_num_heads=2", "teacher.dec_embed_dim=32", "teacher.dec_depth=4",
               "teacher.dec_num_heads=2", "teacher.dpt_feature_dim=16", "teacher.dpt_last_dim=8",
               "teacher.dpt_layer_dims=[8,8,16,16]", "align.method=global", "align.iterations=20"]


def test_a_colmap_scene_is_labelled_in_its_own_frame_and_unit(tiny_cfg, tmp_path):
    """Known COLMAP poses are kept (global alignment, fixed poses) and the labels say their unit is COLMAP's."""
    from lit3d.cameras import ColmapCamera, ColmapImage, ColmapModel
    from lit3d.export.cameras import write_colmap_text, write_png

    synthetic = load_scene(DataConfig(num_frames=6, resolution=[48, 64], test_path_frames=2), tmp_path / "cache")
    images = {}
    for k, name in enumerate(synthetic.frame_names):
        write_png(tmp_path / "scene" / "images" / f"{name}.png", synthetic.read_image(k))
        images[k + 1] = ColmapImage.from_pose(f"{name}.png", 1, synthetic.cam2world_N44[k])
    write_colmap_text(tmp_path / "scene" / "sparse" / "0",
                      ColmapModel({1: ColmapCamera.pinhole(synthetic.K_N33[0], (48, 64))}, images))
    cfg = tiny_cfg(*TINY_DUST3R, "data.format=colmap", f"data.root={tmp_path / 'scene'}", "data.resolution=[48,64]",
                   "data.test_every=3")
    cache, summary = build_labels(cfg)
    assert summary["frame"] == "dataset" and summary["unit"] == "colmap"
    cams = cache_cameras(cache)
    index = {name: k for k, name in enumerate(synthetic.frame_names)}
    np.testing.assert_allclose(cams.cam2world_N44, synthetic.cam2world_N44[[index[n] for n in cams.names]], atol=1e-9)
    np.testing.assert_allclose(cams.K_N33, synthetic.K_N33[: len(cams.names)], atol=1e-9)


def test_known_intrinsics_reach_global_alignment_on_the_teachers_grid(tiny_cfg):
    """The tiny DUSt3R predicts on a 48x64 grid for the 24x32 scene: alignment must fix the focals of THAT grid, so
    the labels it fuses reproject onto their pixels through the stored cameras (the scene's K would be off 2x)."""
    cache, _ = build_labels(tiny_cfg(*TINY_DUST3R, "align.known_pose_mode=ignore"))
    fr = frames(cache)
    assert fr[0]["image"].shape[:2] == (48, 64) != tuple(tiny_cfg().data.resolution)
    cams = cache_cameras(cache)
    np.testing.assert_allclose(cams.K_N33[0], fr[0]["K"], rtol=1e-6)  # known, not solved
    assert np.median(reprojection_px(cams, cache)) < 0.05
