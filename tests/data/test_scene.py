"""``Scene.frame_stamps`` / ``frame_digest``: each frame's input files (size, mtime_ns; content), so a file edited in
place is noticed."""
import os

import pytest

from lit3d.data import DataConfig, SceneError, load_scene


def load(fmt: str, root) -> object:
    return load_scene(DataConfig(format=fmt, root=str(root), resolution=[24, 32]))


@pytest.mark.parametrize("fmt, fixture, edited", [
    ("folder", "frame_folder", "frame-000020.depth.png"),
    ("twelvescenes", "twelvescenes_room", "data/frame-000002.color.jpg"),
    ("sevenscenes", "sevenscenes_scene", "seq-01/frame-000002.color.png"),
])
def test_editing_a_file_in_place_changes_its_frames_stamp_only(fmt, fixture, edited, request):
    root = request.getfixturevalue(fixture)
    scene = load(fmt, root)
    before, digests = scene.frame_stamps(), [scene.frame_digest(i) for i in range(len(scene))]
    assert len(before) == len(scene) and len(set(before)) == len(scene)
    path = root / edited
    path.write_bytes(path.read_bytes())  # same bytes, new modification time: what an editor's save looks like
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = load(fmt, root)
    changed = [name for name, a, b in zip(scene.frame_names, before, after.frame_stamps()) if a != b]
    edited_frame = next(k for kind in after.input_files for k, f in enumerate(kind) if str(f) == str(path))
    assert changed == [scene.frame_names[edited_frame]]
    assert after.fingerprint() == scene.fingerprint()  # the cache folder stays: only that frame is relabelled
    assert [after.frame_digest(i) for i in range(len(after))] == digests  # same bytes: the labels can stay
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [i for i in range(len(after)) if after.frame_digest(i) != digests[i]] == [edited_frame]


def test_a_missing_input_file_is_named(frame_folder):
    scene = load("folder", frame_folder)
    (frame_folder / "frame-000010.color.jpg").unlink()
    with pytest.raises(SceneError, match="frame-000010.color.jpg: cannot read input file"):
        scene.frame_stamps()


def test_generated_scene_has_empty_stamps(tmp_path):
    scene = load_scene(DataConfig(num_frames=4, resolution=[24, 32], test_path_frames=1), tmp_path)
    assert scene.frame_stamps() == [""] * len(scene) and scene.frame_digest(0) == ""
