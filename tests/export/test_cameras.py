"""COLMAP (text, binary) and TUM writers: round trips through the reader and an independent quaternion computation."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from lit3d.cameras import CameraFileError, read_colmap_model
from lit3d.export.cameras import (LabelPoints, SceneCameras, colmap_model, write_colmap_binary, write_colmap_text,
                                  write_tum)

K_A = np.array([[30.0, 0, 15.5], [0, 31.0, 11.25], [0, 0, 1]])
K_B = np.array([[28.5, 0, 16.0], [0, 28.5, 12.0], [0, 0, 1]])


def random_pose(rng: np.random.Generator, k: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rotation.random(random_state=k).as_matrix(), rng.normal(size=3)
    return T


@pytest.fixture
def scene_cameras() -> SceneCameras:
    """Five frames, two sharing K_A and two K_B, one without a pose (skipped by the writers)."""
    rng = np.random.default_rng(0)
    poses = np.stack([random_pose(rng, k) for k in range(5)])
    poses[3] = np.nan
    K = np.stack([K_A, K_B, K_A, K_A, K_B])
    return SceneCameras([f"f{k}" for k in range(5)], poses, K, (24, 32), "first_camera", "normalised",
                        np.zeros(5, int))


def points_in_view(cams: SceneCameras, n_per_frame: int = 6) -> LabelPoints:
    """Points in front of each posed camera at known pixels (their labels), coloured at random."""
    rng = np.random.default_rng(1)
    parts = []
    for k in cams.posed:
        uv = rng.integers(0, [32, 24], (n_per_frame, 2)).astype(float)
        z = rng.uniform(1, 3, n_per_frame)
        K = cams.K_N33[k]
        cam = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0] * z, (uv[:, 1] - K[1, 2]) / K[1, 1] * z, z], -1)
        world = cam @ cams.cam2world_N44[k][:3, :3].T + cams.cam2world_N44[k][:3, 3]
        parts.append(LabelPoints(world, rng.integers(0, 256, (n_per_frame, 3), np.uint8), np.full(n_per_frame, k), uv))
    return LabelPoints.concat(parts)


@pytest.mark.parametrize("writer", [write_colmap_text, write_colmap_binary])
def test_colmap_model_round_trip(tmp_path, scene_cameras, writer):
    cams, pts = scene_cameras, points_in_view(scene_cameras)
    writer(tmp_path, colmap_model(cams, pts))
    back = read_colmap_model(tmp_path)
    assert len(back.cameras) == 2 and all(c.model == "PINHOLE" for c in back.cameras.values())  # equal K: shared
    images = sorted(back.images.items())
    assert [im.name for _, im in images] == ["f0.png", "f1.png", "f2.png", "f4.png"]
    for (image_id, im), k in zip(images, cams.posed):
        np.testing.assert_allclose(back.cameras[im.camera_id].K, cams.K_N33[k], rtol=0, atol=1e-12)
        assert (back.cameras[im.camera_id].width, back.cameras[im.camera_id].height) == (32, 24)
        np.testing.assert_allclose(im.cam2world_44, cams.cam2world_N44[k], atol=1e-12)
    # every point's single observation is the pixel it labels (COLMAP pixel centres at +0.5), consistently in
    # points3D (track) and images (2D point -> point id)
    assert len(back.points.ids_P) == len(pts.xyz_P3)
    np.testing.assert_array_equal(back.points.xyz_P3, pts.xyz_P3)
    np.testing.assert_array_equal(back.points.rgb_P3, pts.rgb_P3)
    assert np.all(back.points.error_P < 1e-9)  # the points lie on their pixels' rays
    for p, (pid, track) in enumerate(zip(back.points.ids_P, back.points.tracks)):
        (image_id, idx), = track
        im = back.images[image_id]
        assert im.name == f"f{pts.frame_P[p]}.png" and im.point3D_ids_P[idx] == pid
        np.testing.assert_array_equal(im.xys_P2[idx], pts.uv_P2[p] + 0.5)


def test_text_and_binary_models_agree(tmp_path, scene_cameras):
    model = colmap_model(scene_cameras, points_in_view(scene_cameras))
    write_colmap_text(tmp_path / "txt", model)
    write_colmap_binary(tmp_path / "bin", model)
    a, b = read_colmap_model(tmp_path / "txt"), read_colmap_model(tmp_path / "bin")
    assert a.cameras.keys() == b.cameras.keys() and a.images.keys() == b.images.keys()
    for i in a.images:
        np.testing.assert_array_equal(a.images[i].qvec, b.images[i].qvec)
        np.testing.assert_array_equal(a.images[i].xys_P2, b.images[i].xys_P2)
    for x, y in zip(a.points.tracks, b.points.tracks):
        np.testing.assert_array_equal(x, y)


def test_images_txt_quaternion_convention(tmp_path, scene_cameras):
    """images.txt holds world-to-camera (qw qx qy qz, t) as COLMAP defines them; checked with scipy on the raw text."""
    write_colmap_text(tmp_path, colmap_model(scene_cameras))
    lines = [line for line in (tmp_path / "images.txt").read_text().splitlines() if not line.startswith("#")]
    image_lines = lines[::2]
    assert len(image_lines) == 4 and all(line == "" for line in lines[1::2])  # no 2D points: empty second lines
    for line, k in zip(image_lines, scene_cameras.posed):
        words = line.split()
        qw, qx, qy, qz, tx, ty, tz = map(float, words[1:8])
        R_c2w, c = scene_cameras.cam2world_N44[k][:3, :3], scene_cameras.cam2world_N44[k][:3, 3]
        q_ref = Rotation.from_matrix(R_c2w.T).as_quat()  # scipy: (x, y, z, w)
        q = np.array([qx, qy, qz, qw])
        assert np.allclose(q, q_ref, atol=1e-10) or np.allclose(q, -q_ref, atol=1e-10)
        np.testing.assert_allclose([tx, ty, tz], -R_c2w.T @ c, atol=1e-10)
    assert (tmp_path / "points3D.txt").read_text().count("\n") == 3  # header only


def test_tum_is_camera_to_world_with_named_indices(tmp_path, scene_cameras):
    path = write_tum(tmp_path / "poses_tum.txt", scene_cameras)
    text = path.read_text().splitlines()
    names = dict(line[2:].split() for line in text if line.startswith("# ") and line[2:3].isdigit())
    rows = [list(map(float, line.split())) for line in text if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 4] and names == {"0": "f0", "1": "f1", "2": "f2", "4": "f4"}
    for r in rows:
        T = scene_cameras.cam2world_N44[int(r[0])]
        np.testing.assert_allclose(r[1:4], T[:3, 3], atol=1e-12)
        q_ref = Rotation.from_matrix(T[:3, :3]).as_quat()  # x y z w, as TUM orders them
        assert np.allclose(r[4:], q_ref, atol=1e-10) or np.allclose(r[4:], -q_ref, atol=1e-10)


def test_truncated_binary_and_missing_camera_name_the_file(tmp_path, scene_cameras):
    write_colmap_binary(tmp_path, colmap_model(scene_cameras, points_in_view(scene_cameras)))
    data = (tmp_path / "images.bin").read_bytes()
    (tmp_path / "images.bin").write_bytes(data[:-5])
    with pytest.raises(CameraFileError, match=r"images\.bin: truncated"):
        read_colmap_model(tmp_path)
    write_colmap_text(tmp_path / "txt", colmap_model(scene_cameras))
    cams = (tmp_path / "txt" / "cameras.txt").read_text().splitlines()
    (tmp_path / "txt" / "cameras.txt").write_text("\n".join(line for line in cams if not line.startswith("2 ")))
    with pytest.raises(CameraFileError, match=r"images\.txt: image f1\.png uses camera 2, which cameras\.txt lacks"):
        read_colmap_model(tmp_path / "txt")
    with pytest.raises(CameraFileError, match=r"empty/cameras\.txt: not found \(nor cameras\.bin\)"):
        read_colmap_model(tmp_path / "empty")
