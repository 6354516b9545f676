"""The label cache: reuse, rebuild on config change, resume, integrity."""
import json

import numpy as np
import pytest

from lit3d.cache import CacheError, LabelCache, build_labels, cache_for


def _frames(cache):
    return {n: cache.load_frame(n) for n in cache.frames}


def test_reused_when_the_manifest_matches_and_separate_when_it_does_not(tiny_cfg):
    cache, first = build_labels(tiny_cfg())
    assert not first["reused"] and first["frames"] == 16 + 4  # training path + test path (data.test_path_frames)
    manifest = json.loads(cache.manifest_path.read_text())
    assert {"format_version", "scene", "teacher", "label_size", "frames", "hash"} <= set(manifest)
    again, second = build_labels(tiny_cfg())
    assert second["reused"] and again.root == cache.root
    other, _ = build_labels(tiny_cfg("teacher.confidence=5.0"))
    assert other.root != cache.root
    assert other.load_frame(other.frames[0])["conf"].max() == 5.0


def test_interrupted_build_resumes_to_the_same_cache(tiny_cfg):
    cache, _ = build_labels(tiny_cfg())
    reference = _frames(cache)
    # simulate a kill: some teacher shards and frames never written, labels.json missing
    for shard in sorted(cache.root.glob("pairs/shard-*.npz"))[::2]:
        shard.unlink()
    for name in cache.frames[::3]:
        cache.frame_path(name).unlink()
    (cache.root / "labels.json").unlink()
    resumed, summary = build_labels(tiny_cfg())
    assert not summary["reused"]
    for name, arrays in _frames(resumed).items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, reference[name][key], err_msg=f"{name}/{key}")


def test_corrupt_entries_are_rebuilt_never_used(tiny_cfg):
    cache, _ = build_labels(tiny_cfg())
    name = cache.frames[1]
    good = cache.load_frame(name)
    cache.frame_path(name).write_bytes(b"garbage")
    with pytest.raises(CacheError, match=f"label cache entry .*{name}.npz is corrupt"):
        cache.load_frame(name)
    assert not cache.is_complete()
    # same size, flipped bytes: loads fine as npz perhaps, but fails its checksum
    build_labels(tiny_cfg())
    data = bytearray(cache.frame_path(name).read_bytes())
    data[-100] ^= 0xFF
    cache.frame_path(name).write_bytes(bytes(data))
    rebuilt, summary = build_labels(tiny_cfg())
    assert not summary["reused"]
    np.testing.assert_array_equal(rebuilt.load_frame(name)["pts_world"], good["pts_world"])


def test_corrupt_manifest_and_shard_are_reported(tiny_cfg):
    cache, _ = build_labels(tiny_cfg())
    text = cache.manifest_path.read_text()
    cache.manifest_path.write_text(text.replace('"format_version": 1', '"format_version": 1, "x": 2'))
    with pytest.raises(CacheError, match="manifest.json is corrupt"):
        LabelCache(cache.root).manifest
    cache.manifest_path.write_text(text)
    shard = sorted(cache.root.glob("pairs/shard-*.npz"))[0]
    shard.write_bytes(b"\0" * 10)
    (cache.root / "labels.json").unlink()
    _, summary = build_labels(tiny_cfg())  # the unreadable shard is recomputed
    assert not summary["reused"]


def test_label_cache_knows_its_frame_and_unit(tiny_cfg):
    cfg = tiny_cfg()
    *_, cache = cache_for(cfg)
    build_labels(cfg)
    assert cache.labels_info["frame"] == "dataset" and cache.labels_info["unit"] == "m"
    assert set(cache.split) == {"train", "val", "test"}
