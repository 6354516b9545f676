"""The ``external`` teacher: labels made elsewhere round-trip into an identical cache; malformed files are named."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lit3d.cache import build_labels
from lit3d.cache.store import FRAME_KEYS
from lit3d.data import load_scene
from lit3d.teachers import TEACHERS, create_teacher
from lit3d.teachers.base import FrameTransform
from lit3d.teachers.external import ExternalLabelError, export_cache, read_frame


def test_depth_labels_round_trip_into_an_identical_cache(tiny_cfg, tmp_path: Path) -> None:
    depth_cache, _ = build_labels(tiny_cfg())
    folder = export_cache(depth_cache, tmp_path / "external")
    cache, summary = build_labels(tiny_cfg("teacher=external", f"teacher.path={folder}"))
    assert cache.root != depth_cache.root and summary["pairs"] == 0
    assert cache.frames == depth_cache.frames and cache.split == depth_cache.split
    for name in cache.frames:
        ours, theirs = cache.load_frame(name), depth_cache.load_frame(name)
        for key in FRAME_KEYS:
            assert ours[key].dtype == theirs[key].dtype and np.array_equal(ours[key], theirs[key]), (name, key)
    info, depth_info = cache.labels_info, depth_cache.labels_info
    assert (info["frame"], info["unit"], info["valid_fraction"]) == ("dataset", "m", depth_info["valid_fraction"])
    teacher = cache.manifest["teacher"]
    assert teacher["name"] == "external" and (teacher["frame"], teacher["unit"]) == ("dataset", "m")
    # a changed label file is a different teacher output: a new cache
    frame = dict(np.load(folder / f"{cache.frames[0]}.npz"))
    np.savez(folder / f"{cache.frames[0]}.npz", **{**frame, "conf": frame["conf"] + 1})
    assert build_labels(tiny_cfg("teacher=external", f"teacher.path={folder}"))[0].root != cache.root


def test_depth_maps_at_twice_the_resolution(tiny_cfg, tmp_path: Path) -> None:
    """Depth + K + pose of a 48x64 render, imported onto the 24x32 label grid: the 48x64 depth teacher's labels
    resampled as the data module resamples them; on planes, the 24x32 depth teacher's labels."""
    from lit3d.cache.datamodule import resize_frame

    fine_cfg = tiny_cfg("data.resolution=[48,64]")
    fine = load_scene(fine_cfg.data, fine_cfg.cache_dir)
    folder = tmp_path / "external"
    folder.mkdir()
    (folder / "external.json").write_text(json.dumps({"frame": "dataset", "unit": "m", "source": "render x2"}))
    for i, name in enumerate(fine.frame_names):
        np.savez(folder / f"{name}.npz", depth=fine.read_depth(i), K=fine.K_N33[i], cam2world=fine.cam2world_N44[i])
    fine_cache, _ = build_labels(fine_cfg)
    coarse_cache, _ = build_labels(tiny_cfg())
    cache, _ = build_labels(tiny_cfg("teacher=external", f"teacher.path={folder}"))
    resampled_err, plane_err = [], []
    for name in cache.frames:
        ours = cache.load_frame(name)
        expected = resize_frame(fine_cache.load_frame(name), (24, 32))
        assert np.array_equal(ours["valid"], expected["valid"]) and (ours["conf"][ours["valid"]] == 10).all()
        resampled_err.append(np.linalg.norm(ours["pts_world"] - expected["pts_world"], axis=-1)[ours["valid"]])
        truth = coarse_cache.load_frame(name)
        plane_err.append(np.linalg.norm(ours["pts_world"] - truth["pts_world"], axis=-1)[truth["valid"]])
    assert np.quantile(np.concatenate(resampled_err), 0.99) < 1e-5
    # planes are interpolated exactly (perspective-correct); pixels at depth edges take the nearest label
    assert np.median(np.concatenate(plane_err)) < 1e-5


def _write(folder: Path, meta: dict | None = None, **arrays: np.ndarray) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "external.json").write_text(json.dumps(meta or {"frame": "other", "unit": "normalised"}))
    np.savez(folder / "f0.npz", **arrays)
    return folder / "f0.npz"


def _one_line(fn, *args) -> str:
    with pytest.raises(ExternalLabelError) as err:
        fn(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


PTS = np.ones((6, 8, 3))


@pytest.mark.parametrize("arrays, expected", [
    ({"pts_world": np.ones((6, 8))}, "pts_world has shape (6, 8), expected (h, w, 3)"),
    ({"pts_world": PTS, "conf": np.ones((6, 7))}, "conf has shape (6, 7), expected (6, 8)"),
    ({"pts_world": np.where(np.eye(6, 8)[..., None] > 0, np.nan, PTS)}, "pts_world has 18 non-finite values"),
    ({"pts_world": PTS, "conf": np.full((6, 8), 0.5)}, "conf has values below 1"),
    ({"pts_world": PTS, "valid": np.ones((6, 8))}, "valid has dtype float64, expected bool"),
    ({"depth": np.ones((6, 8)), "K": np.eye(3)}, "a depth map needs cam2world too"),
    ({"depth": -np.ones((6, 8)), "K": np.eye(3), "cam2world": np.eye(4)}, "depth has negative values"),
    ({"depth": np.ones((6, 8)), "K": np.eye(4), "cam2world": np.eye(4)}, "K has shape (4, 4), expected (3, 3)"),
    ({"points": PTS}, "needs pts_world (h, w, 3), or depth (h, w) + K + cam2world; it has points"),
])
def test_malformed_files_are_named(tmp_path: Path, arrays: dict, expected: str) -> None:
    path = _write(tmp_path / "ext", **arrays)
    msg = _one_line(read_frame, path, 10.0)
    assert str(path) in msg and expected in msg


def test_invalid_pixels_may_hold_anything_and_depth_backprojects(tmp_path: Path) -> None:
    valid = np.ones((6, 8), bool)
    valid[0, 0] = False
    pts = PTS.copy()
    pts[0, 0] = np.nan
    frame = read_frame(_write(tmp_path / "a", pts_world=pts, valid=valid), 7.0)
    assert frame["valid"].sum() == 47 and (frame["pts_world"][0, 0] == 0).all() and frame["conf"][0, 0] == 1
    assert (frame["conf"][valid] == 7).all()
    depth = np.full((6, 8), 2.0)
    depth[1, 2] = 0  # no depth: invalid
    pose = np.eye(4)
    pose[:3, 3] = [1, 2, 3]
    K = np.array([[4.0, 0, 3.5], [0, 4, 2.5], [0, 0, 1]])
    frame = read_frame(_write(tmp_path / "b", depth=depth, K=K, cam2world=pose), 7.0)
    assert not frame["valid"][1, 2] and frame["valid"].sum() == 47
    np.testing.assert_allclose(frame["pts_world"][5, 7], [(7 - 3.5) / 4 * 2 + 1, (5 - 2.5) / 4 * 2 + 2, 2 + 3])


def test_folder_and_meta_errors(tmp_path: Path) -> None:
    cfg = TEACHERS.config("external")
    assert "needs teacher.path" in _one_line(create_teacher, cfg)
    cfg.path = str(tmp_path / "absent")
    assert "is not a folder" in _one_line(create_teacher, cfg)
    cfg.path = str(tmp_path)
    assert "external.json is missing" in _one_line(create_teacher, cfg)
    (tmp_path / "external.json").write_text('{"frame": "dataset", "unit": "mm"}')
    assert "unit must be one of m, normalised, got 'mm'" in _one_line(create_teacher, cfg)
    (tmp_path / "external.json").write_text('{"frame": "dataset", "unit": "m"}')
    assert "holds no <frame>.npz files" in _one_line(create_teacher, cfg)


def test_missing_frame_and_aspect_ratio(tmp_path: Path, tiny_cfg) -> None:
    scene = load_scene(tiny_cfg().data, tmp_path / "cache")
    _write(tmp_path / "ext", pts_world=np.ones((24, 24, 3)))
    teacher = create_teacher(TEACHERS.config("external", path=str(tmp_path / "ext")))
    assert not teacher.metric and teacher.manifest()["unit"] == "normalised"
    grid = FrameTransform.identity(*scene.image_size)
    msg = _one_line(teacher.world_labels, scene, [scene.frame_names[0]], grid, 1.5)
    assert f"{scene.frame_names[0]}.npz is missing" in msg
    (tmp_path / "ext" / "f0.npz").rename(tmp_path / "ext" / f"{scene.frame_names[0]}.npz")
    msg = _one_line(teacher.world_labels, scene, [scene.frame_names[0]], grid, 1.5)
    assert "is 24x24, whose aspect ratio differs from the 24x32 label grid's" in msg
