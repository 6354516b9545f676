"""``resize_frame``: labels sampled at the student pixel centres that the image and the returned K describe; the
datamodule's preloaded and lazily read frames."""
import logging
import os

import numpy as np
import pytest
import torch

from lit3d.cache.datamodule import resize_frame
from lit3d.geometry import backproject_depth, invert_pose, look_at, pixel_grid, project, transform_points

H, W = 96, 128
K_33 = np.array([[110.0, 0.0, 63.5], [0.0, 105.0, 47.5], [0.0, 0.0, 1.0]], np.float32)
CAM2WORLD_44 = look_at(np.array([0.3, -2.0, 1.2]), np.array([0.0, 0.5, 1.0])).astype(np.float32)
NORMAL_3, OFFSET = np.array([0.25, -0.3, 1.0]) / np.linalg.norm([0.25, -0.3, 1.0]), 2.5
"""A tilted plane n . x = d in the camera frame (metres), seen by every pixel."""


def plane_depth(normal_3: np.ndarray, offset: float) -> np.ndarray:
    """z-depth (H, W) of the plane n . x = d (camera frame) at the label pixel centres."""
    rays_HW3 = np.dstack([pixel_grid(H, W), np.ones((H, W))]) @ np.linalg.inv(K_33.astype(np.float64)).T
    return offset / (rays_HW3 @ normal_3)


def make_frame(depth_HW: np.ndarray, valid_HW: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A cached frame (dtypes as in the cache) whose labels are the back-projected ``depth_HW``."""
    pts_cam_HW3 = backproject_depth(depth_HW.astype(np.float64), K_33.astype(np.float64))
    return {"image": np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8),
            "pts_world": transform_points(CAM2WORLD_44.astype(np.float64), pts_cam_HW3.astype(np.float64)
                                          ).astype(np.float32),
            "conf": (1 + depth_HW).astype(np.float32), "valid": np.ones((H, W), bool) if valid_HW is None else valid_HW,
            "K": K_33, "cam2world": CAM2WORLD_44, "depth": depth_HW.astype(np.float32)}


def camera_points(out: dict[str, np.ndarray]) -> np.ndarray:
    return transform_points(invert_pose(out["cam2world"].astype(np.float64)), out["pts_world"].astype(np.float64))


def reprojection_px(out: dict[str, np.ndarray]) -> np.ndarray:
    """Distance (h, w) from each resized label's projection through the returned K and pose to its pixel centre."""
    uv_hw2, _ = project(camera_points(out), out["K"].astype(np.float64))
    return np.linalg.norm(uv_hw2 - pixel_grid(*out["valid"].shape), axis=-1)


def centres(n_label: int, n_student: int) -> np.ndarray:
    """Label index coordinates (n_student,) of the student pixel centres (box filter), unclamped."""
    return (np.arange(n_student) + 0.5) * n_label / n_student - 0.5


def inside(size: tuple[int, int]) -> np.ndarray:
    """(h, w): student pixel centres within the label centres (the others, when upsampling, are clamped)."""
    y_h, x_w = centres(H, size[0]), centres(W, size[1])
    return np.outer((y_h >= 0) & (y_h <= H - 1), (x_w >= 0) & (x_w <= W - 1))


def nearest_bound_px(size: tuple[int, int]) -> float:
    """Largest distance, student pixels, from a sample to the nearest corner of its label cell (half a diagonal)."""
    return np.sqrt(0.5) * max(size[0] / H, size[1] / W) + 1e-3


def neighbours_valid(valid_HW: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w): whether one of the (up to 4) label pixels around each student pixel centre is valid."""
    y_h, x_w = np.clip(centres(H, size[0]), 0, H - 1), np.clip(centres(W, size[1]), 0, W - 1)
    out = np.zeros(size, bool)
    for ys in (np.floor(y_h), np.ceil(y_h)):
        for xs in (np.floor(x_w), np.ceil(x_w)):
            out |= valid_HW[np.ix_(ys.astype(int), xs.astype(int))]
    return out


SIZES = [(48, 64), (24, 32), (32, 43), (36, 48), (120, 160)]
"""Ratios 2, 4, 3 x 2.98 (odd, non-integer), 8/3, and upsampling by 1.25."""


@pytest.mark.parametrize("size", SIZES)
def test_labels_of_a_plane_reproject_onto_the_student_pixel_centres(size):
    out = resize_frame(make_frame(plane_depth(NORMAL_3, OFFSET)), size)
    assert out["pts_world"].shape == (*size, 3) and out["pts_world"].dtype == np.float32 and out["valid"].all()
    assert reprojection_px(out)[inside(size)].max() < 1e-3
    pts_cam_hw3 = camera_points(out)
    np.testing.assert_allclose(pts_cam_hw3 @ NORMAL_3, OFFSET, atol=1e-5)  # on the plane, not just on the ray
    np.testing.assert_allclose(out["depth"], pts_cam_hw3[..., 2], rtol=1e-5)  # depth sampled at the same points


@pytest.mark.parametrize("size", SIZES)
def test_a_depth_step_gives_no_points_in_mid_air(size):
    far_HW = plane_depth(NORMAL_3, OFFSET)
    near_HW = np.full((H, W), 1.5)
    step_HW = np.where(np.arange(W)[None, :] < 61, near_HW, far_HW)  # column 61: inside a student pixel at ratio 2
    step_HW[:37] = far_HW[:37]  # and a horizontal edge
    out = resize_frame(make_frame(step_HW), size)
    pts_cam_hw3 = camera_points(out)
    on_near_hw = np.abs(pts_cam_hw3[..., 2] - 1.5) < 1e-5
    on_far_hw = np.abs(pts_cam_hw3 @ NORMAL_3 - OFFSET) < 1e-5
    assert out["valid"].all() and (on_near_hw | on_far_hw).all()
    # away from the edges the labels are interpolated, hence exact; at them a true label of the footprint is kept
    err_hw = reprojection_px(out)
    assert np.mean(err_hw < 1e-3) > 0.85 and err_hw[inside(size)].max() < nearest_bound_px(size)


@pytest.mark.parametrize("size", SIZES)
def test_invalid_labels_never_become_valid(size):
    rng = np.random.default_rng(1)
    valid_HW = np.kron(rng.random((12, 16)) < 0.6, np.ones((8, 8), bool)) & (rng.random((H, W)) < 0.9)
    frame = make_frame(plane_depth(NORMAL_3, OFFSET), valid_HW)
    frame["pts_world"][~valid_HW] = np.nan  # what invalid labels hold must never leak out
    frame["conf"][~valid_HW] = -1.0
    out = resize_frame(frame, size)
    np.testing.assert_array_equal(out["valid"], neighbours_valid(valid_HW, size))
    assert np.isfinite(out["pts_world"][out["valid"]]).all() and (out["conf"][out["valid"]] >= 1).all()
    # the nearest valid corner of the label cell may be its farthest one
    np.testing.assert_array_less(reprojection_px(out)[out["valid"] & inside(size)], 2 * nearest_bound_px(size))


def test_depth_is_sampled_by_its_own_holes():
    depth_HW = plane_depth(NORMAL_3, OFFSET)
    depth_HW[:, :50] = 0.0  # no measurement
    out = resize_frame(make_frame(depth_HW), (48, 64))
    np.testing.assert_array_equal(out["depth"] > 0, neighbours_valid(depth_HW > 0, (48, 64)))
    known_hw = out["depth"] > 0
    assert out["valid"].all() and (out["depth"][known_hw] > 2).all()  # no blend with the zeros


@pytest.mark.parametrize("how", ["no pose", "labels in another frame"])
def test_without_a_pose_that_describes_the_labels_the_nearest_valid_label_is_taken(how):
    frame = make_frame(plane_depth(NORMAL_3, OFFSET), np.random.default_rng(2).random((H, W)) < 0.7)
    if how == "no pose":
        frame["cam2world"] = np.full((4, 4), np.nan, np.float32)
    else:  # a first-camera labelling: the dataset pose does not project them onto their pixels
        frame["pts_world"] = (0.5 * frame["pts_world"] + np.float32([1.0, -2.0, 0.3])).astype(np.float32)
    out = resize_frame(frame, (36, 48))
    y_h, x_w = centres(H, 36), centres(W, 48)
    # every valid label is one of the labels around it, unchanged
    d_hw = np.full((36, 48), np.inf)
    for ys in (np.floor(y_h), np.ceil(y_h)):
        for xs in (np.floor(x_w), np.ceil(x_w)):
            taps_hw3 = frame["pts_world"][np.ix_(ys.astype(int), xs.astype(int))]
            d_hw = np.minimum(d_hw, np.abs(out["pts_world"] - taps_hw3).max(-1))
    assert (d_hw[out["valid"]] == 0).all()
    np.testing.assert_array_equal(out["valid"], neighbours_valid(frame["valid"], (36, 48)))


def test_the_label_grid_itself_is_returned_unchanged():
    frame = make_frame(plane_depth(NORMAL_3, OFFSET))
    assert resize_frame(frame, (H, W)) is frame


# --- preloaded and lazily read frames -------------------------------------------------------------------------
def _batches(cfg, cache, seed: int = 3) -> list[dict]:
    from lit3d.cache.datamodule import PointmapDataModule

    dm = PointmapDataModule(cache, cfg.loader, seed=cfg.seed)
    dm.setup()
    torch.manual_seed(seed)  # the photometric and geometric augmentation draw from it
    return dm, [batch for _ in range(2) for batch in dm.train_dataloader()]


def test_lazy_loader_gives_the_preloaded_batches(tiny_cfg):
    from lit3d.cache import build_labels

    cfg_pre, cfg_lazy = tiny_cfg("loader.preload=true", "loader.resolution=[16,24]"), tiny_cfg(
        "loader.preload=false", "loader.resolution=[16,24]")
    cache, _ = build_labels(cfg_pre)
    dm_pre, preloaded = _batches(cfg_pre, cache)
    dm_lazy, lazy = _batches(cfg_lazy, cache)
    assert dm_pre.datasets["train"].frames is not None and dm_lazy.datasets["train"].frames is None
    assert len(preloaded) == len(lazy) > 2 and cfg_pre.loader.geometric and cfg_pre.loader.color_jitter > 0
    for a, b in zip(preloaded, lazy):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(dm_pre.train_stats()["mean"], dm_lazy.train_stats()["mean"])  # every frame: < 256


def test_training_views_with_another_zoom_share_the_frames(tiny_cfg):
    from lit3d.cache import build_labels

    cfg = tiny_cfg("loader.preload=true")
    cache, _ = build_labels(cfg)
    dm, default = _batches(cfg, cache)
    fixed = dm.train_dataloader(scale_range=[2.0, 2.0])  # every view zoomed 2x: the focal length doubles exactly
    assert fixed.dataset.frames is dm.datasets["train"].frames  # the same preloaded frames, not a second copy
    base_K = torch.stack([dm.datasets["train"].item(k, geometric=False)["K"] for k in range(len(fixed.dataset))])
    for batch in fixed:
        torch.testing.assert_close(batch["K"][:, 0, 0], 2 * base_K[batch["index"], 0, 0])
        torch.testing.assert_close(batch["K"][:, 1, 1], 2 * base_K[batch["index"], 1, 1])
    # the loader's own views stay within loader.scale_range (2/3..3/2) and the datamodule's augmentation is unchanged
    ratio = torch.cat([b["K"][:, 0, 0] / base_K[b["index"], 0, 0] for b in default])
    assert ratio.min() >= 2 / 3 - 1e-5 and ratio.max() <= 1.5 + 1e-5 and ratio.std() > 0.01
    assert dm.datasets["train"].geometric.scale_range == tuple(cfg.loader.scale_range)


def test_preload_auto_follows_the_memory_budget(tiny_cfg, caplog):
    from lit3d.cache import build_labels
    from lit3d.cache.datamodule import FRAME_BYTES_PER_PIXEL, PointmapDataModule

    cache, _ = build_labels(tiny_cfg())
    n = sum(len(v) for v in cache.split.values())
    need_gb = n * 24 * 32 * FRAME_BYTES_PER_PIXEL / 2**30
    for budget, preloaded in ((need_gb * 1.01, True), (need_gb * 0.99, False)):
        dm = PointmapDataModule(cache, tiny_cfg(f"loader.memory_budget_gb={budget}").loader)
        with caplog.at_level(logging.INFO, logger="lit3d.cache.datamodule"):
            dm.setup()
        assert (dm.datasets["train"].frames is not None) == preloaded
    assert "reading them lazily per item" in caplog.text


def test_frame_flipped_in_place_is_detected_at_fit_start(tiny_cfg):
    from lit3d.cache import CacheError, build_labels
    from lit3d.cache.datamodule import PointmapDataModule

    cache, _ = build_labels(tiny_cfg())
    path = cache.frame_path(cache.split["train"][1])
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and time as they were: only the bytes differ
    cache, summary = build_labels(tiny_cfg())
    assert summary["reused"]
    with pytest.raises(CacheError, match=f"{path} is corrupt and was removed.*Bad CRC-32"):
        PointmapDataModule(cache, tiny_cfg().loader).setup()  # preload=auto: every frame is decoded at start
    assert not build_labels(tiny_cfg())[1]["reused"]  # the next run rebuilds it
    PointmapDataModule(cache, tiny_cfg().loader).setup()


def test_corrupt_frame_read_lazily_in_a_worker_is_one_line_naming_it(tiny_cfg):
    from lit3d.cache import CacheError, build_labels
    from lit3d.cache.datamodule import PointmapDataModule
    from lit3d.cli import one_line

    cfg = tiny_cfg("loader.preload=false", "loader.num_workers=1")
    cache, _ = build_labels(cfg)
    path = cache.frame_path(cache.split["train"][0])
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))  # after the start-up check: found when the worker decodes it
    dm = PointmapDataModule(cache, cfg.loader)
    dm.setup()
    with pytest.raises(CacheError) as e:
        list(dm.train_dataloader())
    assert one_line(e.value).startswith(f"label cache entry {path} is corrupt and was removed")
