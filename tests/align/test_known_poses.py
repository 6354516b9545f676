"""Known-pose alignment: two views of one surface point get the same world label; frame-by-frame fusion equals a
pixel-by-pixel computation."""
from collections import defaultdict

import numpy as np
import pytest

from lit3d.align.known_poses import KnownPoseFusion, align_known_poses
from lit3d.cache import build_labels
from lit3d.geometry import invert_pose, project, transform_points


def test_aligned_world_points_of_two_views_agree(tiny_cfg):
    cfg = tiny_cfg("data.resolution=[48,64]", "pairs.graph=swin-2")
    cache, summary = build_labels(cfg)
    assert summary["frame"] == "dataset" and summary["unit"] == "m"
    assert summary["residual"] < 1e-5  # every edge predicts the same metric points
    a, b = (cache.load_frame(n) for n in cache.frames[:2])
    # world points of frame a projected into frame b land on pixels whose label is the same world point
    uv, z = project(transform_points(invert_pose(b["cam2world"].astype(np.float64)), a["pts_world"].reshape(-1, 3)),
                    b["K"].astype(np.float64))
    px = np.nan_to_num(uv, nan=-10).round().astype(int)
    inside = (px[:, 0] >= 0) & (px[:, 0] < 64) & (px[:, 1] >= 0) & (px[:, 1] < 48) & a["valid"].ravel()
    other = b["pts_world"][px[inside, 1], px[inside, 0]]
    dist = np.linalg.norm(other - a["pts_world"].reshape(-1, 3)[inside], axis=1)
    visible = np.abs(b["depth"][px[inside, 1], px[inside, 0]] - z[inside]) < 0.05 * z[inside]
    assert visible.mean() > 0.5
    # what is left is rounding to the nearest pixel, in pixel footprints (depth / focal); measured 0.52 and 0.88
    footprints = dist[visible] / (z[inside][visible] / b["K"][0, 0])
    assert np.median(footprints) < 0.6
    assert np.percentile(footprints, 90) < 1.2


def random_problem(seed: int = 0, n: int = 7, hw=(5, 6)):
    """Random edges (both directions, frame n-1 in none), rigid poses and predictions with NaN, masks and
    confidences on both sides of 1.5."""
    from lit3d.geometry import look_at

    rng = np.random.default_rng(seed)
    edges = np.array([(i, j) for i in range(n - 1) for j in range(n - 1) if i != j and rng.random() < 0.5])
    E = len(edges)
    pred = {"pts_i": rng.normal(size=(E, *hw, 3)).astype(np.float32),
            "pts_j_in_i": rng.normal(size=(E, *hw, 3)).astype(np.float32),
            "conf_i": rng.uniform(0.3, 2.5, (E, *hw)).astype(np.float32),
            "conf_j": rng.uniform(0.3, 2.5, (E, *hw)).astype(np.float32),
            "valid_i": rng.random((E, *hw)) > 0.2, "valid_j": rng.random((E, *hw)) > 0.2}
    pred["pts_i"][0, 0, 0, 1] = np.nan
    pred["conf_j"][1, 1, 1] = np.inf
    poses = np.stack([look_at(rng.normal(size=3), rng.normal(size=3) + 5) for _ in range(n)])
    return edges, pred, poses


def brute_force(edges, pred, n, poses, min_conf):
    """Pixel by pixel: every usable prediction of the pixel in the world, their conf-weighted mean, residuals."""
    E, H, W = pred["conf_i"].shape
    views, of_pixel = [], defaultdict(list)  # (edge, frame, y, x, world point, conf); (frame, y, x) -> (point, conf)
    for e, (i, j) in enumerate(edges):
        for frame, p, c, v in ((i, "pts_i", "conf_i", "valid_i"), (j, "pts_j_in_i", "conf_j", "valid_j")):
            for y in range(H):
                for x in range(W):
                    q, w = pred[p][e, y, x].astype(np.float64), float(pred[c][e, y, x])
                    if pred[v][e, y, x] and np.isfinite(q).all() and np.isfinite(w):
                        views.append((e, frame, y, x, poses[i][:3, :3] @ q + poses[i][:3, 3], w))
                        of_pixel[frame, y, x].append(views[-1][-2:])
    pts, conf, valid = np.zeros((n, H, W, 3)), np.ones((n, H, W)), np.zeros((n, H, W), bool)
    for f in range(n):
        for y in range(H):
            for x in range(W):
                mine = of_pixel[f, y, x]
                total = sum(w for _, w in mine)
                if total > 0:
                    conf[f, y, x] = sum(w * w for _, w in mine) / total
                    valid[f, y, x] = conf[f, y, x] >= min_conf
                    if valid[f, y, x]:
                        pts[f, y, x] = sum(w * q for q, w in mine) / total
    num, den = np.zeros(E), np.zeros(E)
    for e, f, y, x, q, w in views:
        if valid[f, y, x]:
            num[e] += w * np.linalg.norm(q - pts[f, y, x])
            den[e] += w
    return pts, conf, valid, num / np.maximum(den, 1e-12), num.sum() / den.sum()


@pytest.mark.parametrize("max_views", [1, 32])
def test_frame_by_frame_fusion_matches_a_pixel_by_pixel_computation(max_views):
    """max_views=1 reads each view twice (fusion, then residuals); 32 keeps a frame's views between the two."""
    edges, pred, poses = random_problem()
    pts, conf, valid, edge_res, res = brute_force(edges, pred, 7, poses, min_conf=1.5)
    fusion = KnownPoseFusion(edges, pred, 7, poses, metric=True, min_conf=1.5, max_views=max_views)
    frames = list(fusion.frames())
    assert [f.index for f in frames] == list(range(7))
    np.testing.assert_allclose(np.stack([f.pts_world_HW3 for f in frames]), pts, atol=1e-5)
    np.testing.assert_allclose(np.stack([f.conf_HW for f in frames]), conf, rtol=1e-6)
    np.testing.assert_array_equal(np.stack([f.valid_HW for f in frames]), valid)
    assert 0.2 < valid[:6].mean() < 0.9 and not valid[6].any()  # frame 6 is in no edge
    np.testing.assert_allclose(fusion.edge_residual_E, edge_res, rtol=1e-9)
    assert fusion.residual == pytest.approx(res, rel=1e-9)
    result = align_known_poses(edges, pred, 7, poses, metric=True)  # the whole-scene entry point
    np.testing.assert_array_equal(result.pts_world_NHW3, np.stack([f.pts_world_HW3 for f in frames]))
    assert result.residual == pytest.approx(res, rel=1e-9) and result.frame == "dataset"


def test_bad_edges_and_missing_poses_are_one_line_errors():
    edges, pred, poses = random_problem()
    with pytest.raises(ValueError, match="outside 0..3"):
        KnownPoseFusion(edges, pred, 4, poses, metric=True)
    with pytest.raises(ValueError, match="predictions for"):
        KnownPoseFusion(edges[:-1], pred, 7, poses, metric=True)
    with pytest.raises(ValueError, match="needs camera poses"):
        KnownPoseFusion(edges, pred, 7, None, metric=True)
