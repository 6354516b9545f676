"""``python -m lit3d.label``: resumable label cache builds (interrupted anywhere -> same cache) and 2-process DDP."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lit3d.cache.build as build
from lit3d.cache import LabelCache, build_labels
from lit3d.cache.store import FRAME_KEYS
from lit3d.config import load_config
from lit3d.data import load_scene
from lit3d.data.synthetic import _camera_path, render, synthetic_intrinsics
from lit3d.label import main

REPO = Path(__file__).resolve().parents[1]
# 12 frames, swin-3 symmetrised: 72 pairs in 18 shards of 4
ARGS = ["data.num_frames=12", "data.split=interleaved", "data.resolution=[24,32]", "teacher.batch_size=4", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "trainer.devices=1"]
N_SHARDS = 18


class Killed(Exception):
    """Stands for a kill at a chosen point of the build."""


def build_in(cache_dir: Path, *extra: str, **kw) -> tuple[LabelCache, dict]:
    return build_labels(load_config([*ARGS, f"cache_dir={cache_dir}", *extra]), **kw)


def frames_of(cache: LabelCache) -> dict[str, dict[str, np.ndarray]]:
    assert cache.is_complete()
    return {name: cache.load_frame(name) for name in cache.frames}


def assert_same_cache(cache: LabelCache, reference: dict) -> None:
    frames = frames_of(cache)
    assert list(frames) == list(reference)
    for name, arrays in frames.items():
        for key in FRAME_KEYS:
            np.testing.assert_array_equal(arrays[key], reference[name][key], err_msg=f"{name}/{key}")
    assert not (cache.root / build.ALIGNED_FILE).exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    cache, summary = build_in(tmp_path_factory.mktemp("reference"))
    assert summary["pairs"] == 72 and summary["predicted_pairs"] == 72 and summary["frames"] == 12
    return frames_of(cache)


def test_summary_and_reuse(tmp_path, reference, caplog):
    with caplog.at_level(logging.INFO):
        assert main([*ARGS, f"cache_dir={tmp_path}"]) == 0
    assert "12 frames, 72 pairs (72 predicted)" in caplog.text
    assert "pairs/s" in caplog.text and "residual" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main([*ARGS, f"cache_dir={tmp_path}"]) == 0
    assert "is complete" in caplog.text
    cache, summary = build_in(tmp_path)
    assert summary["reused"] and summary["residual"] < 1e-6
    assert_same_cache(cache, reference)


def test_killed_during_teacher_inference(tmp_path, reference, monkeypatch):
    write = build.ShardWriter.write_on_batch_end

    def write_then_die(self, *args, **kwargs):
        if self.written == 5:
            raise Killed
        write(self, *args, **kwargs)

    monkeypatch.setattr(build.ShardWriter, "write_on_batch_end", write_then_die)
    with pytest.raises(Killed):
        build_in(tmp_path)
    monkeypatch.setattr(build.ShardWriter, "write_on_batch_end", write)
    cache, summary = build_in(tmp_path)
    assert summary["predicted_pairs"] == (N_SHARDS - 5) * 4  # finished shards are not recomputed
    assert_same_cache(cache, reference)


def count_written(monkeypatch) -> list[str]:
    """Names of the frames ``LabelCache.write_frames`` writes from now on."""
    written, write_frames = [], LabelCache.write_frames

    def counting(self, frames):
        written.extend(frames)
        write_frames(self, frames)

    monkeypatch.setattr(LabelCache, "write_frames", counting)
    return written


def test_killed_during_alignment_keeps_the_frames_fused_so_far(tmp_path, reference, monkeypatch):
    """known_poses fuses and commits frame by frame: a kill mid-way keeps the committed frames."""
    monkeypatch.setattr(build, "FRAMES_PER_COMMIT", 4)
    fuse = build.KnownPoseFusion.fuse

    def die_at_frame_10(self, frame):
        if frame == 10:
            raise Killed
        return fuse(self, frame)

    monkeypatch.setattr(build.KnownPoseFusion, "fuse", die_at_frame_10)
    with pytest.raises(Killed):
        build_in(tmp_path)
    monkeypatch.undo()
    cache = LabelCache(next((tmp_path / "labels").iterdir()))
    assert len(cache.verified_frames()) == 8 and not (cache.root / build.ALIGNED_FILE).exists()
    written = count_written(monkeypatch)
    cache, summary = build_in(tmp_path)
    assert summary["predicted_pairs"] == 0 and len(written) == 4  # only the frames not committed
    assert_same_cache(cache, reference)


def kill_on_second_commit(monkeypatch) -> None:
    """``write_frames`` dies on its 2nd call, after writing the files and before recording their checksums."""
    write_frames = LabelCache.write_frames
    calls = []

    def write_then_die(self, frames):
        calls.append(list(frames))
        if len(calls) == 2:  # killed after writing these files, before their checksums were recorded
            for name, arrays in frames.items():
                build.atomic_save_npz(self.frame_path(name), **{k: arrays[k] for k in FRAME_KEYS})
            self.frame_path(next(iter(frames))).write_bytes(b"half a file")
            raise Killed
        write_frames(self, frames)

    monkeypatch.setattr(build, "FRAMES_PER_COMMIT", 4)
    monkeypatch.setattr(LabelCache, "write_frames", write_then_die)


def test_killed_while_writing_frames_resumes_with_the_missing_frames(tmp_path, reference, monkeypatch):
    kill_on_second_commit(monkeypatch)
    with pytest.raises(Killed):
        build_in(tmp_path)
    monkeypatch.undo()
    cache = LabelCache(next((tmp_path / "labels").iterdir()))
    assert len(cache.verified_frames()) == 4
    written = count_written(monkeypatch)
    cache, summary = build_in(tmp_path)
    assert summary["predicted_pairs"] == 0 and len(written) == 8
    assert_same_cache(cache, reference)


def test_killed_while_writing_frames_resumes_from_the_stored_alignment(tmp_path, monkeypatch):
    """Global alignment (not bit-reproducible in general) stores its solution, and a resumed build fuses the
    remaining frames from it: the cache of a build that was never killed."""
    method = ["align.method=global", "align.iterations=20"]
    reference = frames_of(build_in(tmp_path / "reference", *method)[0])
    kill_on_second_commit(monkeypatch)
    with pytest.raises(Killed):
        build_in(tmp_path / "killed", *method)
    monkeypatch.undo()
    cache = LabelCache(next((tmp_path / "killed" / "labels").iterdir()))
    assert len(cache.verified_frames()) == 4 and (cache.root / build.ALIGNED_FILE).is_file()

    def must_not_align(*args, **kwargs):
        raise AssertionError("the stored alignment must be reused")

    monkeypatch.setattr(build, "solve_global", must_not_align)
    cache, summary = build_in(tmp_path / "killed", *method)
    assert summary["predicted_pairs"] == 0
    assert_same_cache(cache, reference)


def test_corrupt_and_missing_files_are_rebuilt(tmp_path, reference):
    cache, _ = build_in(tmp_path)
    shard = cache.shard_path(7)
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    data = bytearray(cache.shard_path(3).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside an array: caught by the zip CRC
    cache.shard_path(3).write_bytes(bytes(data))
    frame = cache.frame_path(cache.frames[2])
    data = bytearray(frame.read_bytes())
    data[-200] ^= 0xFF
    frame.write_bytes(bytes(data))
    cache.frame_path(cache.frames[5]).unlink()
    (cache.root / "labels.json").unlink()
    cache, summary = build_in(tmp_path)
    assert summary["predicted_pairs"] == 8  # the two bad shards only
    assert_same_cache(cache, reference)


def test_config_change_rebuilds_in_its_own_cache(tmp_path, reference):
    cache_a, _ = build_in(tmp_path)
    cache_b, summary = build_in(tmp_path, "pairs.graph=swin-2")
    assert cache_b.root != cache_a.root and summary["pairs"] == 48
    assert_same_cache(build_in(tmp_path)[0], reference)


def write_frame_folder(root: Path, n: int = 8) -> Path:
    """A flat RGB-D folder (frame-XXXXXX.{color.jpg,depth.png,pose.txt}, camera-intrinsics.txt) at 32x24."""
    root.mkdir(parents=True)
    K = synthetic_intrinsics(24, 32)
    poses = _camera_path(n, np.random.default_rng(3))
    images, depths = render(poses, K, (24, 32), seed=3)
    for k in range(n):
        Image.fromarray(images[k]).save(root / f"frame-{k:06d}.color.jpg", quality=95)
        Image.fromarray(np.round(depths[k] * 1000).astype(np.uint16)).save(root / f"frame-{k:06d}.depth.png")
        np.savetxt(root / f"frame-{k:06d}.pose.txt", poses[k])
    np.savetxt(root / "camera-intrinsics.txt", K)
    return root


def test_truncated_jpeg_stops_with_one_line_and_keeps_finished_shards(tmp_path, caplog):
    root = write_frame_folder(tmp_path / "scene")
    args = ["data.format=folder", f"data.root={root}", "data.resolution=[24,32]", "teacher.batch_size=2",
            "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=1"]
    good = (root / "frame-000006.color.jpg").read_bytes()
    (root / "frame-000006.color.jpg").write_bytes(good[:-60])
    with caplog.at_level(logging.ERROR):
        assert main([*args, f"cache_dir={tmp_path / 'cache'}"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and str(root / "frame-000006.color.jpg") in errors[0]
    cache_root = next((tmp_path / "cache" / "labels").iterdir())
    kept = len(list((cache_root / "pairs").glob("shard-*.npz")))
    assert kept > 0  # nothing already labelled is lost
    (root / "frame-000006.color.jpg").write_bytes(good)
    cache, summary = build_labels(load_config([*args, f"cache_dir={tmp_path / 'cache'}"]))
    assert summary["predicted_pairs"] == summary["pairs"] - 2 * kept
    fresh, _ = build_labels(load_config([*args, f"cache_dir={tmp_path / 'fresh'}"]))
    assert_same_cache(cache, frames_of(fresh))


def run_label(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LOCAL_RANK", None)  # in case pytest itself runs under a launcher
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


SLOW_WRITER = """
import sys, time
import lit3d.cache.build as b
write = b.ShardWriter.write_on_batch_end
def slow(self, *a, **k):
    write(self, *a, **k)
    time.sleep(0.4)
b.ShardWriter.write_on_batch_end = slow
from lit3d.label import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_mid_way_then_resume(tmp_path, reference):
    """A real kill (no cleanup) of ``python -m lit3d.label`` while it writes shards."""
    proc = run_label("-c", SLOW_WRITER, *ARGS, f"cache_dir={tmp_path}")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(tmp_path.glob("labels/*/pairs/shard-*.npz"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be killed:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = len(list(tmp_path.glob("labels/*/pairs/shard-*.npz")))
    assert 3 <= shards < N_SHARDS
    cache, summary = build_in(tmp_path)
    assert summary["predicted_pairs"] == (N_SHARDS - shards) * 4
    assert_same_cache(cache, reference)


@pytest.mark.slow
def test_two_cpu_processes_ddp_give_the_single_process_cache(tmp_path, reference):
    ddp = [a for a in ARGS if not a.startswith("trainer.devices")]
    proc = run_label("-m", "lit3d.label", *ddp, f"cache_dir={tmp_path}", "trainer.devices=2", "trainer.strategy=ddp")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    # both ranks predicted a share of the 18 shards (Lightning's distributed sampler splits them 9 + 9)
    assert "rank 0 of 2 wrote 9 teacher shards" in out and "rank 1 of 2 wrote 9 teacher shards" in out, out
    cache = LabelCache(next((tmp_path / "labels").iterdir()))
    assert_same_cache(cache, reference)


FOLDER_ARGS = ["data.format=folder", "data.resolution=[24,32]", "teacher.batch_size=2",
               "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=1"]


def test_input_file_edited_in_place_is_relabelled(tmp_path, caplog):
    root = write_frame_folder(tmp_path / "scene")
    args = [*FOLDER_ARGS, f"data.root={root}", f"cache_dir={tmp_path / 'cache'}"]
    cache, _ = build_labels(load_config(args))
    before = cache.load_frame("frame-000003")["image"]
    image = np.asarray(Image.open(root / "frame-000003.color.jpg")).copy()
    image[4:12, 8:20] = 255  # painted over, saved in place under the same name
    Image.fromarray(image).save(root / "frame-000003.color.jpg", quality=95)
    depth = np.asarray(Image.open(root / "frame-000003.depth.png")).copy()
    depth[10:20, 5:15] += 300  # a depth edit changes the teacher's pairs, hence the neighbours' fused labels too
    Image.fromarray(depth).save(root / "frame-000003.depth.png")
    with caplog.at_level(logging.WARNING):
        relabelled, summary = build_labels(load_config(args))
    assert not summary["reused"] and relabelled.root == cache.root
    assert "input files of 1 frames changed" in caplog.text and "frame-000003.color.jpg" in caplog.text
    edges, size = np.array(cache.manifest["edges"]), cache.manifest["shard_size"]
    k = 3  # scene index of frame-000003
    stale = {e // size for e in np.flatnonzero((edges == k).any(1))}
    assert summary["predicted_pairs"] == sum(len(edges[s * size:(s + 1) * size]) for s in stale) < len(edges)
    assert not np.array_equal(relabelled.load_frame("frame-000003")["image"], before)
    fresh, _ = build_labels(load_config([*args[:-1], f"cache_dir={tmp_path / 'fresh'}"]))
    assert_same_cache(relabelled, frames_of(fresh))


def test_input_files_copied_with_new_times_keep_their_labels(tmp_path, caplog):
    root = write_frame_folder(tmp_path / "scene")
    args = [*FOLDER_ARGS, f"data.root={root}", f"cache_dir={tmp_path / 'cache'}"]
    cache, _ = build_labels(load_config(args))
    inputs = cache.root / "inputs.json"
    legacy = {name: rec["stat"] for name, rec in json.loads(inputs.read_text()).items()}
    inputs.write_text(json.dumps(legacy))  # what caches written before content digests hold: trusted as they are
    _, summary = build_labels(load_config(args))
    assert summary["reused"] and all(rec["sha256"] for rec in json.loads(inputs.read_text()).values())
    for path in root.iterdir():  # what a copy without -p, a restore or a re-provisioned share does
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with caplog.at_level(logging.WARNING):
        again, summary = build_labels(load_config(args))
    assert summary["reused"] and "changed since" not in caplog.text and again.root == cache.root
    scene = load_scene(load_config(args).data)
    assert {name: rec["stat"] for name, rec in json.loads(inputs.read_text()).items()} == dict(
        zip(scene.frame_names, scene.frame_stamps()))  # the new times are recorded: the next start hashes nothing


@pytest.mark.parametrize("content", ["{not json", '{"frame-000000": 3}'])
def test_a_corrupt_record_of_input_files_relabels_every_frame(tmp_path, caplog, content):
    root = write_frame_folder(tmp_path / "scene")
    args = [*FOLDER_ARGS, f"data.root={root}", f"cache_dir={tmp_path / 'cache'}"]
    cache, _ = build_labels(load_config(args))
    (cache.root / "inputs.json").write_text(content)
    with caplog.at_level(logging.WARNING):
        _, summary = build_labels(load_config(args))
    assert f"{cache.root / 'inputs.json'}" in caplog.text and "every frame counts as changed" in caplog.text
    assert summary["predicted_pairs"] == len(cache.manifest["edges"])


def test_verify_checks_every_checksum(tmp_path, reference, caplog):
    cache, _ = build_in(tmp_path)
    path = cache.frame_path(cache.frames[4])
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # invisible to the cheap check at start
    with caplog.at_level(logging.INFO):
        assert main([*ARGS, f"cache_dir={tmp_path}", "--verify"]) == 0
    assert "11 of 12 frames match their SHA-256; rebuilding the others" in caplog.text
    assert_same_cache(cache, reference)


GATED_WRITER = """
import os, sys, time
import lit3d.cache.build as b
write = b.ShardWriter.write_on_batch_end
def gated(self, *a, **k):  # holds the build (and its lock) after the first shard until the test lets it go on
    write(self, *a, **k)
    while not os.path.exists({go!r}):
        time.sleep(0.05)
b.ShardWriter.write_on_batch_end = gated
from lit3d.label import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_label_processes_give_one_cache_and_one_teacher_pass(tmp_path, reference):
    go, cache_dir = tmp_path / "go", tmp_path / "cache"
    first = run_label("-c", GATED_WRITER.format(go=str(go)), *ARGS, f"cache_dir={cache_dir}")
    deadline = time.time() + 120
    while time.time() < deadline and first.poll() is None and not list(cache_dir.glob("labels/*/pairs/*.npz")):
        time.sleep(0.05)  # the first holds the lock once it predicts
    second = run_label("-m", "lit3d.label", *ARGS, f"cache_dir={cache_dir}")
    try:
        waiting = ""
        for line in second.stdout:
            waiting += line
            if "is in use by pid" in line:
                break
        go.touch()
        outs = [p.communicate(timeout=300)[0] for p in (first, second)]
    finally:
        go.touch()
        for p in (first, second):
            p.kill()
    outs[1] = waiting + outs[1]
    assert [first.returncode, second.returncode] == [0, 0], "\n".join(outs)
    assert "rank 0 of 1 wrote 18 teacher shards" in outs[0]
    assert "teacher shards" not in outs[1] and f"is in use by pid {first.pid}" in outs[1], outs[1]
    assert "is complete: reusing it" in outs[1]
    assert_same_cache(LabelCache(next((cache_dir / "labels").iterdir())), reference)
