"""The label cache: reuse, rebuild on config change, resume, integrity (cheap at start, full with verify), errors."""
import errno
import json
import logging
import os

import numpy as np
import pytest

import lit3d.cache.build as build
import lit3d.cache.store as store
from lit3d.cache import CacheError, LabelCache, build_labels, cache_for
from lit3d.config import load_config


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


def _flip_keeping_size_and_time(path) -> None:
    """One flipped byte inside an array (pts_world), with the file's size and modification time as they were."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_start_checks_sizes_and_times_only_and_hashes_what_changed(tiny_cfg, monkeypatch):
    cache, _ = build_labels(tiny_cfg())
    hashed = []
    monkeypatch.setattr(store, "file_sha256", lambda path: hashed.append(path) or store.hashlib.sha256(
        path.read_bytes()).hexdigest())
    assert build_labels(tiny_cfg())[1]["reused"] and hashed == []  # no frame is read at start
    frame = cache.frame_path(cache.frames[3])
    os.utime(frame, ns=(1, 1))  # same bytes, other time (e.g. a copied cache): hashed once, then recorded
    assert build_labels(tiny_cfg())[1]["reused"] and hashed == [frame]
    assert build_labels(tiny_cfg())[1]["reused"] and hashed == [frame]
    frame.write_bytes(frame.read_bytes()[:-50])  # truncated
    rebuilt, summary = build_labels(tiny_cfg())
    assert not summary["reused"] and rebuilt.load_frame(cache.frames[3])["pts_world"].shape[-1] == 3


def test_flip_that_keeps_size_and_time_is_caught_when_decoded_and_by_verify(tiny_cfg):
    cache, _ = build_labels(tiny_cfg())
    name = cache.frames[2]
    good = cache.load_frame(name)
    _flip_keeping_size_and_time(cache.frame_path(name))
    assert cache.is_complete()  # the cheap check cannot see it ...
    with pytest.raises(CacheError, match=f"{name}.npz is corrupt and was removed .*CRC.*run python -m lit3d.label"):
        cache.load_frame(name)  # ... the zip CRC does, and the entry is never used
    rebuilt, summary = build_labels(tiny_cfg())
    assert not summary["reused"]
    np.testing.assert_array_equal(rebuilt.load_frame(name)["pts_world"], good["pts_world"])
    _flip_keeping_size_and_time(cache.frame_path(name))
    _, summary = build_labels(tiny_cfg(), verify=True)  # --verify: every frame's SHA-256
    assert summary["verified"] == len(cache.frames) - 1 and not summary["reused"]
    np.testing.assert_array_equal(cache.load_frame(name)["pts_world"], good["pts_world"])


@pytest.mark.parametrize("damage", ["checksums.json", "labels.json", "manifest.json"])
def test_corrupt_bookkeeping_file_is_rebuilt_without_the_teacher(tiny_cfg, damage):
    cache, _ = build_labels(tiny_cfg())
    reference = _frames(cache)
    (cache.root / damage).write_text('{"truncated": ')
    rebuilt, summary = build_labels(tiny_cfg())
    assert not summary["reused"] and summary["predicted_pairs"] == 0  # teacher shards kept
    assert rebuilt.root == cache.root and LabelCache(cache.root).is_complete()
    for name, arrays in _frames(rebuilt).items():
        np.testing.assert_array_equal(arrays["pts_world"], reference[name]["pts_world"], err_msg=name)
    assert build_labels(tiny_cfg())[1]["reused"]


def test_checksums_of_older_caches_are_checked_in_full_once(tiny_cfg):
    cache, _ = build_labels(tiny_cfg())
    sums = json.loads((cache.root / "checksums.json").read_text())
    (cache.root / "checksums.json").write_text(json.dumps({n: s["sha256"] for n, s in sums.items()}))  # digest only
    assert build_labels(tiny_cfg())[1]["reused"]
    assert json.loads((cache.root / "checksums.json").read_text()) == sums


def _one_error_line(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def test_full_disk_and_read_only_cache_dir_are_one_line_naming_the_path(tiny_cfg, monkeypatch, caplog):
    from lit3d.cli import run

    args = ["data.num_frames=16", "data.resolution=[24,32]", "trainer.enable_progress_bar=false",
            f"cache_dir={tiny_cfg().cache_dir}"]
    *_, cache = cache_for(load_config(args))

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "atomic_write_bytes", full)
    with caplog.at_level(logging.ERROR):
        assert run("lit3d.label", build_labels, args) == 2
    assert f"cannot write the label cache {cache.root}: No space left on device" in _one_error_line(caplog)
    monkeypatch.undo()

    def read_only(path, what):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(build, "file_lock", read_only)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run("lit3d.label", build_labels, args) == 2  # nothing to read: the cache must be built
    assert f"{cache.root}: Read-only file system ({cache.root}/.lock)" in _one_error_line(caplog)
    monkeypatch.undo()
    build_labels(load_config(args))
    monkeypatch.setattr(build, "file_lock", read_only)
    assert build_labels(load_config(args))[1]["reused"]  # a complete cache on a read-only disk is still read
