"""VGGT: golden conformance with the official code, the released state-dict layout, safe loading, chunk stitching,
and the teacher labelling the synthetic scene end to end."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lit3d.align.optimize import so3_exp
from lit3d.geometry import backproject_depth, transform_points
from lit3d.teachers import TEACHERS, create_teacher
from lit3d.teachers.dust3r import CheckpointError, load_into
from lit3d.teachers.dust3r.checkpoint import CHECKPOINT_DIR_ENV
from lit3d.teachers.vggt import VggtArch, VggtNet, VggtTeacher, decode_pose, vggt_frame_transform
from lit3d.teachers.vggt.model import drop_unused
from lit3d.align.init import maximum_spanning_tree
from lit3d.teachers.vggt.stitch import (ViewSet, anchor_to_poses, apply_sim3, chain_tree, chunk_frames, chunk_graph,
                                     chunk_ranges, refine_sim3s, stitch)
from lit3d.teachers.vggt.teacher import HUB_NAME, RELEASE_URL
from state_tables import tsv_state_dict

GOLDEN = Path(__file__).resolve().parent / "golden"
TSV = GOLDEN / "vggt_1b_state_dict.tsv"
TINY = dict(img_size=56, embed_dim=32, dino_depth=2, dino_num_heads=2, depth=4, num_heads=2, camera_depth=1,
            camera_num_heads=2, dpt_features=16, dpt_out_channels=[8, 16, 32, 32], dpt_layers=[0, 1, 2, 3])
TINY_ARGS = ["teacher=vggt", *(f"teacher.{k}={v}".replace(" ", "") for k, v in TINY.items())]


def assert_close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """Relative to the tensor's largest magnitude: near-zero entries carry no relative precision."""
    actual = actual.detach().cpu().numpy().astype(np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = np.abs(actual - expected).max()
    assert err <= rtol * np.abs(expected).max(), err / np.abs(expected).max()


def assert_same_cameras(K: torch.Tensor, expected: np.ndarray, height: int, width: int) -> None:
    """Intrinsics compared as half fields of view, the quantity the camera head predicts: the tiny random model
    predicts fields near 360 deg, where focal = size / 2 / tan(fov / 2) turns float32 rounding of the network (one
    CPU thread against two) into focal errors of 4e-4 of the largest."""
    actual = K.detach().cpu().numpy().astype(np.float64)
    for axis, size in ((0, width), (1, height)):
        half_fov = np.arctan2(size / 2, actual[..., axis, axis])  # continuous through f = +-inf
        assert_close(torch.from_numpy(half_fov), np.arctan2(size / 2, expected[..., axis, axis].astype(np.float64)))
    off_focal = ~np.eye(3, dtype=bool) | (np.arange(3)[:, None] == 2)  # all but fx, fy
    np.testing.assert_allclose(actual[..., off_focal], expected[..., off_focal], atol=1e-5)


def golden_net() -> tuple[VggtNet, dict[str, np.ndarray]]:
    cfg = json.loads((GOLDEN / "vggt_tiny.config.json").read_text())
    arch = VggtArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["arch"].items()})
    net = load_into(VggtNet(arch), load_file(str(GOLDEN / "vggt_tiny.weights_fp16.safetensors")), "golden").eval()
    with np.load(GOLDEN / "vggt_tiny.io.npz") as f:
        io = {k: f[k] for k in f.files}
    return net, io


def test_golden_conformance() -> None:
    net, io = golden_net()
    images = torch.from_numpy(io["images"])
    assert images.shape == (1, 3, 3, 42, 56)  # 3 views on a 3x4 patch grid: the position embedding is resized
    with torch.no_grad():
        out = net(images)
        tokens = net.aggregator(images, {net.arch.depth - 1})[net.arch.depth - 1]
    assert_close(tokens, io["last_tokens"])
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert_close(out[key], io[key])
    world2cam, K = decode_pose(out["pose_enc"], 42, 56)
    assert_close(world2cam[..., :3, :], io["extrinsic"])
    assert_same_cameras(K, io["intrinsic"], 42, 56)


def test_released_state_dict_loads_strictly() -> None:
    """The full-size listing (official ``VGGT()`` constructor) loads strictly once the tracking head is dropped."""
    state = tsv_state_dict(TSV)
    assert len(state) == 1797 and sum(v.numel() for v in state.values()) == 1_256_537_516
    kept = drop_unused(state)
    assert {k.split(".")[0] for k in set(state) - set(kept)} == {"track_head"}
    with torch.device("meta"):
        net = VggtNet(VggtArch())
    assert set(net.state_dict()) == set(kept)
    load_into(net, state=kept, source=TSV.name)
    assert sum(p.numel() for p in net.parameters()) == sum(v.numel() for v in kept.values()) == 1_190_596_120
    with pytest.raises(CheckpointError, match=r"1 missing: aggregator\.frame_blocks\.0\.attn\.q_norm\.weight"):
        load_into(net, {k: v for k, v in kept.items() if k != "aggregator.frame_blocks.0.attn.q_norm.weight"}, "x")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_crafted_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": VggtNet(VggtArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()}))
                .state_dict(), "args": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        create_teacher(TEACHERS.config("vggt", checkpoint=str(tmp_path / "evil.pt"), **TINY))
    assert not marker.exists()


def test_missing_weights_say_how_to_provide_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        create_teacher(TEACHERS.config("vggt"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("VGGT weights not found")
    assert RELEASE_URL in msg and HUB_NAME in msg and "teacher.random_init=true" in msg


def test_frame_transform_is_the_official_crop_preprocessing() -> None:
    """Width 518, height round(h * 518 / w / 14) * 14 (bicubic), centre-cropped to 518 when taller."""
    t = vggt_frame_transform(480, 640)
    assert (t.resized, t.crop) == ((392, 518), (0, 0, 392, 518))  # 480 * 518 / 640 = 388.5 -> 392
    t = vggt_frame_transform(640, 480)  # 690.7 -> 686 rows, 84 cropped above
    assert (t.resized, t.crop) == ((686, 518), (84, 0, 518, 518))
    rgb = np.random.default_rng(0).integers(0, 256, (64, 80, 3), np.uint8)
    t = vggt_frame_transform(64, 80)
    expected = np.asarray(Image.fromarray(rgb).resize((518, 420), Image.Resampling.BICUBIC))
    assert t.resized == (420, 518) and np.array_equal(t.image(rgb), expected)  # shrinking or not: bicubic
    K = t.intrinsics(np.array([[50.0, 0, 40], [0, 50, 32], [0, 0, 1]]))
    sx, sy = 518 / 80, 420 / 64  # pixel centres at integer coordinates: c' = (c + 1/2) s - 1/2
    assert np.allclose(K[:2, :3], [[50 * sx, 0, 40.5 * sx - 0.5], [0, 50 * sy, 32.5 * sy - 0.5]])


def test_teacher_reproduces_golden_outputs(tmp_path: Path) -> None:
    """Folder with model.safetensors -> teacher -> the official outputs; depth points = depth unprojected through the
    official decoded cameras; hash in the manifest."""
    shutil.copy(GOLDEN / "vggt_tiny.weights_fp16.safetensors", tmp_path / "model.safetensors")
    _, io = golden_net()
    images = torch.from_numpy(io["images"][0])
    for points in ("point_head", "depth"):
        teacher = create_teacher(TEACHERS.config("vggt", checkpoint=str(tmp_path), points=points, device="cpu",
                                                 **TINY))
        assert isinstance(teacher, VggtTeacher) and teacher.gives_world_labels
        out = teacher.predict_views(images)
        assert_same_cameras(out["K"], io["intrinsic"][0], 42, 56)
        world2cam = np.linalg.inv(out["cam2world"].double().numpy())
        assert_close(torch.from_numpy(world2cam[:, :3]), io["extrinsic"][0])
        if points == "point_head":
            assert_close(out["pts_world"], io["world_points"][0])
            assert_close(out["conf"], io["world_points_conf"][0])
            continue
        assert_close(out["conf"], io["depth_conf"][0])
        for s in range(3):  # official convention: pixel (u, v) at integer coordinates, x_cam = (u - cx) z / fx
            ext = np.vstack([io["extrinsic"][0, s], [0, 0, 0, 1]]).astype(np.float64)
            cam = backproject_depth(io["depth"][0, s, ..., 0].astype(np.float64), io["intrinsic"][0, s])
            assert_close(out["pts_world"][s], transform_points(np.linalg.inv(ext), cam), rtol=1e-4)
    manifest = teacher.manifest()
    assert manifest["checkpoint_sha256"] and manifest["random_init"] is False and manifest["points"] == "depth"
    with pytest.raises(CheckpointError, match="expected 00ff"):
        create_teacher(TEACHERS.config("vggt", checkpoint=str(tmp_path / "model.safetensors"), sha256="00ff", **TINY))


def test_chunk_ranges() -> None:
    assert chunk_ranges(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert chunk_ranges(12, 6, 2) == [(0, 6), (4, 10), (8, 12)]
    assert chunk_ranges(3, 6, 2) == [(0, 3)]
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_ranges(10, 4, 4)


def _random_sim3(rng: np.random.Generator) -> tuple[float, np.ndarray, np.ndarray]:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    return float(rng.uniform(0.3, 3.0)), R, rng.normal(size=3) * 2


def test_chunk_frames_closes_the_loop() -> None:
    chain = chunk_frames(10, 4, 1)
    assert [c.tolist() for c in chain] == [list(range(a, b)) for a, b in chunk_ranges(10, 4, 1)]
    ring = chunk_frames(10, 4, 1, loop=True)
    assert len(ring) == 4 and ring[-1].tolist() == [0, 1, 8, 9]
    assert len(chunk_frames(3, 6, 2, loop=True)) == 1  # one chunk holds every view: nothing to close


def test_one_chunk_stitches_to_itself() -> None:
    rng = np.random.default_rng(0)
    view_set = ViewSet(np.arange(3), rng.random((3, 4, 5, 3)), np.ones((3, 4, 5)), np.ones((3, 4, 5), bool),
                       np.tile(np.eye(4), (3, 1, 1)))
    out = stitch([view_set])
    assert np.array_equal(out.frames, view_set.frames) and np.array_equal(out.pts_SHW3, view_set.pts_SHW3)


def _scene_truth(tiny_cfg):
    """The synthetic scene, its true world points (N, H, W, 3) and their validity."""
    from lit3d.data import load_scene

    cfg = tiny_cfg()
    scene = load_scene(cfg.data, cfg.cache_dir)
    depth = np.stack([scene.read_depth(i) for i in range(len(scene))]).astype(np.float64)
    truth = np.stack([transform_points(scene.cam2world_N44[i], backproject_depth(depth[i], scene.K_N33[i]))
                      for i in range(len(scene))])
    return scene, truth, depth > 0


def _chunks(scene, truth, valid, frame_lists, rng, view_noise: float = 0.0):
    """Chunks holding the true points of their views, each in its own random Sim(3) frame; ``view_noise`` moves
    each chunk's view of each frame rigidly (radians and scene units: a chunk's per-view pose error)."""
    chunks, sims = [], []
    for frames in frame_lists:
        pts = truth[frames].copy()
        for k, f in enumerate(frames):
            axis = rng.normal(size=3) * view_noise
            R = so3_exp(torch.from_numpy(axis[None])).numpy()[0]
            centre = pts[k][valid[f]].mean(0)
            pts[k] = (pts[k] - centre) @ R.T + centre + rng.normal(size=3) * view_noise
        sims.append(_random_sim3(rng))
        view_set = ViewSet(frames, pts, np.full(valid[frames].shape, 5.0), valid[frames],
                           scene.cam2world_N44[frames].astype(np.float64))
        chunks.append(view_set.transformed(*sims[-1]))
    return chunks, sims


@pytest.mark.parametrize("overlap, loop", [(2, False), (2, True), (4, False)])
def test_stitching_recovers_one_frame(tiny_cfg, overlap: int, loop: bool) -> None:
    """Noise-free chunks, each in its own known Sim(3) frame, stitch exactly into the first chunk's frame -- a chain,
    a ring closed by a loop chunk, and chunks sharing views with non-consecutive ones (overlap 4 of 6) -- and
    anchoring to the dataset poses recovers the true points."""
    scene, truth, valid = _scene_truth(tiny_cfg)
    n = len(scene)
    frame_lists = chunk_frames(n, 6, overlap, loop)
    chunks, sims = _chunks(scene, truth, valid, frame_lists, np.random.default_rng(0))
    edges, _ = chunk_graph(chunks)
    assert len(chunks) >= 3 and (len(edges) > len(chunks) - 1) == (loop or overlap > 3)  # loops where expected
    stitched = stitch(chunks)
    assert np.array_equal(stitched.frames, np.arange(n)) and np.array_equal(stitched.valid_SHW, valid)
    in_first = apply_sim3(sims[0], truth)
    assert np.abs(stitched.pts_SHW3 - in_first)[valid].max() < 1e-6 * np.abs(in_first).max()
    anchored, rms = anchor_to_poses(stitched, scene.cam2world_N44.astype(np.float64))
    assert rms < 1e-6 and np.abs(anchored.pts_SHW3 - truth)[valid].max() < 1e-6
    assert np.allclose(anchored.cam2world_S44, scene.cam2world_N44, atol=1e-6)
    on_a_line = scene.cam2world_N44.astype(np.float64).copy()
    on_a_line[:, :3, 3] = np.linspace(0, 1, n)[:, None] * [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="3 non-collinear dataset camera centres"):
        anchor_to_poses(stitched, on_a_line)


def _sim3_errors(sims, truth_sims, truth, valid, frame_lists) -> float:
    """RMS distance, relative to chunk 0's scale, between every chunk's true points mapped by ``sims`` and where
    they belong in chunk 0's frame."""
    sq = []
    for sim, true_sim, frames in zip(sims, truth_sims, frame_lists):
        pts = truth[frames][valid[frames]]
        sq.append(((apply_sim3(sim, apply_sim3(true_sim, pts)) - apply_sim3(truth_sims[0], pts)) ** 2).sum(-1))
    return float(np.sqrt(np.concatenate(sq).mean()) / truth_sims[0][0])


def _chained(chunks):
    edges, points = chunk_graph(chunks)
    tree = maximum_spanning_tree(len(chunks), edges, np.array([w.sum() for *_, w in points]))
    return chain_tree(len(chunks), edges, points, tree), edges, points


def test_loop_refinement_recovers_exact_sim3s_from_a_perturbed_start(tiny_cfg) -> None:
    scene, truth, valid = _scene_truth(tiny_cfg)
    frame_lists = chunk_frames(len(scene), 6, 2, loop=True)
    chunks, sims = _chunks(scene, truth, valid, frame_lists, np.random.default_rng(1))
    chained, edges, points = _chained(chunks)
    assert _sim3_errors(chained, sims, truth, valid, frame_lists) < 1e-9
    rng = np.random.default_rng(2)
    start = [chained[0]] + [(s * np.exp(0.05 * rng.normal()), so3_exp(torch.from_numpy(0.05 * rng.normal(size=(1, 3))))
                             .numpy()[0] @ R, t + 0.1 * rng.normal(size=3)) for s, R, t in chained[1:]]
    assert _sim3_errors(start, sims, truth, valid, frame_lists) > 1e-2
    assert _sim3_errors(refine_sim3s(start, edges, points), sims, truth, valid, frame_lists) < 1e-9


def test_loop_refinement_beats_chaining_under_noise(tiny_cfg) -> None:
    """With per-view pose noise in every chunk, chaining leaves the loop's drift at one seam; refining all chunk
    Sim(3)s on every shared view lowers their error against the truth (each seed, and by > 15 % overall)."""
    scene, truth, valid = _scene_truth(tiny_cfg)
    frame_lists = chunk_frames(len(scene), 6, 2, loop=True)
    chained_err, refined_err = [], []
    for seed in range(4):
        chunks, sims = _chunks(scene, truth, valid, frame_lists, np.random.default_rng(seed), view_noise=0.02)
        chained, edges, points = _chained(chunks)
        chained_err.append(_sim3_errors(chained, sims, truth, valid, frame_lists))
        refined_err.append(_sim3_errors(refine_sim3s(chained, edges, points), sims, truth, valid, frame_lists))
    assert all(r < c for r, c in zip(refined_err, chained_err)), (refined_err, chained_err)
    assert sum(refined_err) < 0.85 * sum(chained_err), (refined_err, chained_err)


@pytest.mark.slow
def test_labels_synthetic_scene_in_chunks_and_trains(tiny_cfg) -> None:
    """Tiny random VGGT -> chunks closed into a loop, stitched and anchored to the poses -> label cache -> ``fit``
    trains on it."""
    from lit3d.cache import build_labels
    from lit3d.fit import fit

    cfg = tiny_cfg(*TINY_ARGS, "teacher.random_init=true", "teacher.image_width=56", "teacher.chunk_size=6",
                   "teacher.chunk_overlap=2", "teacher.loop_closure=true",
                   "loss.name=mse", "loader.view_shift=0")  # random-weight labels do not reproject
    cache, summary = build_labels(cfg)
    assert summary["pairs"] == 0 and summary["valid_fraction"] > 0.5
    assert (summary["frame"], summary["unit"]) == ("dataset", "m")
    manifest = json.loads(cache.manifest_path.read_text())
    assert manifest["teacher"]["name"] == "vggt" and manifest["teacher"]["loop_closure"] is True
    assert manifest["label_size"] == [42, 56] and len(chunk_frames(len(cache.frames), 6, 2, loop=True)) >= 3
    frame = cache.load_frame(cache.frames[0])
    assert frame["pts_world"].shape == (42, 56, 3) and np.isfinite(frame["pts_world"]).all()
    metrics = fit(cfg)
    assert np.isfinite(metrics["test/l2_mean"])
