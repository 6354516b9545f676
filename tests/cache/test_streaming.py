"""Teacher shards read lazily by edge (``PairShards``), and alignment from them in bounded memory."""
import tracemalloc

import numpy as np
import pytest

from lit3d.align import AlignConfig, align_predictions
from lit3d.align.known_poses import KnownPoseFusion
from lit3d.align.synthetic import make_predictions, make_scene, scene_graph
from lit3d.cache import CacheError, LabelCache
from lit3d.files import atomic_save_npz


def write_shards(root, edges_E2, pred: dict, shard_size: int) -> LabelCache:
    """A cache folder whose ``pairs/`` holds ``pred`` in shards of ``shard_size`` edges, as the teacher writes them."""
    cache = LabelCache(root)
    for s, k0 in enumerate(range(0, len(edges_E2), shard_size)):
        atomic_save_npz(cache.shard_path(s), edges=edges_E2[k0 : k0 + shard_size],
                        **{k: v[k0 : k0 + shard_size] for k, v in pred.items()})
    return cache


def random_pred(E: int, hw=(4, 5), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"pts_i": rng.normal(size=(E, *hw, 3)).astype(np.float32),
            "pts_j_in_i": rng.normal(size=(E, *hw, 3)).astype(np.float32),
            "conf_i": rng.uniform(1, 3, (E, *hw)).astype(np.float32),
            "conf_j": rng.uniform(1, 3, (E, *hw)).astype(np.float32),
            "valid_i": rng.random((E, *hw)) > 0.1, "valid_j": rng.random((E, *hw)) > 0.1}


def test_rows_slices_and_masks_read_the_right_edges(tmp_path):
    E = 23  # shards of 5: the last one holds 3
    edges = np.stack([np.arange(E), np.arange(1, E + 1)], 1)
    pred = random_pred(E)
    member = pred["pts_i"][0].nbytes
    edges_read, pairs = write_shards(tmp_path, edges, pred, 5).load_pairs(5, budget_bytes=7 * 5 * member)
    np.testing.assert_array_equal(edges_read, edges)
    assert set(pairs) == set(pred) and "valid_j" in pairs and pairs.get("depth") is None
    pts = pairs["pts_i"]
    assert pts.shape == (E, 4, 5, 3) and pts.dtype == np.float32 and len(pts) == E
    rng = np.random.default_rng(1)
    for index in (rng.integers(0, E, 40), slice(3, 17), slice(None, None, -4), 7, -1, np.arange(E) % 3 == 0,
                  (slice(2, 9), 1), [22, 0, 11]):
        for key in pred:
            np.testing.assert_array_equal(pairs[key][index], pred[key][index], err_msg=f"{key}[{index}]")
    np.testing.assert_array_equal(np.asarray(pairs["conf_j"]), pred["conf_j"])
    assert pairs._cached_bytes <= 7 * 5 * member  # the arrays kept stay within the budget
    with pytest.raises(IndexError):
        pts[E]


def test_a_corrupt_or_missing_shard_is_a_cache_error_naming_it(tmp_path):
    edges = np.stack([np.arange(10), np.arange(1, 11)], 1)
    cache = write_shards(tmp_path, edges, random_pred(10), 4)
    with pytest.raises(CacheError, match="shard-00003.npz"):
        cache.load_pairs(4)
    cache.shard_path(1).write_bytes(cache.shard_path(1).read_bytes()[:-50])
    with pytest.raises(CacheError, match="shard-00001.npz"):
        cache.load_pairs(3)


def test_alignment_from_shards_equals_alignment_from_arrays(tmp_path):
    """Both methods read the predictions through ``PairShards`` exactly as from arrays held in memory."""
    scene = make_scene(6, 12, 16, seed=0)
    edges = scene_graph(6, "swin-2")
    pred = make_predictions(scene, edges, noise=0.01, seed=1)
    pred = {k: pred[k] for k in ("pts_i", "pts_j_in_i", "conf_i", "conf_j")}
    _, pairs = write_shards(tmp_path, edges, pred, 4).load_pairs(-(-len(edges) // 4), budget_bytes=1)
    for cfg, metric in ((AlignConfig("known_poses"), True), (AlignConfig("global", iterations=30, n_pixels=64), False)):
        a = align_predictions(cfg, edges, pred, 6, None, scene.cam2world_N44, metric=metric)
        b = align_predictions(cfg, edges, pairs, 6, None, scene.cam2world_N44, metric=metric)
        np.testing.assert_allclose(b.pts_world_NHW3, a.pts_world_NHW3, atol=1e-6, err_msg=cfg.method)
        np.testing.assert_array_equal(b.valid_NHW, a.valid_NHW)
        assert b.residual == pytest.approx(a.residual, rel=1e-6)


def traced_peak(tmp_path, n_frames: int) -> tuple[int, int]:
    """Peak traced bytes of fusing every frame of an ``n_frames`` swin-3 scene from its shards (frames dropped as
    they come, as the cache build writes them), and the bytes of all its predictions."""
    edges = scene_graph(n_frames, "swin-3")  # both directions: a frame's views lie in both halves of the shards
    pred = random_pred(len(edges), hw=(24, 32), seed=n_frames)
    cache = write_shards(tmp_path / str(n_frames), edges, pred, 8)
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    total = sum(v.nbytes for v in pred.values())
    del pred
    tracemalloc.start()
    try:
        _, pairs = cache.load_pairs(-(-len(edges) // 8), budget_bytes=1 << 20)
        for _ in KnownPoseFusion(edges, pairs, n_frames, poses, metric=True).frames():
            pass
        return tracemalloc.get_traced_memory()[1], total
    finally:
        tracemalloc.stop()


def test_known_pose_alignment_memory_does_not_grow_with_the_frames(tmp_path):
    """4x the frames: the peak grows by the per-frame bookkeeping only (edge ids, residual sums), far from the
    4x of the predictions that the old implementation held (and its float64 sums of every frame)."""
    peak_n, total_n = traced_peak(tmp_path, 30)
    peak_4n, total_4n = traced_peak(tmp_path, 120)
    assert peak_4n < 1.2 * peak_n
    assert peak_4n < 0.25 * total_4n  # the old implementation's peak was above total_4n
