"""The ``dust3r`` teacher: registration, output contract, shared encoder passes, weights and manifest."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lit3d.teachers import OUTPUT_KEYS, TEACHERS, create_teacher
from lit3d.teachers.dust3r import CheckpointError, DUSt3RTeacher, Dust3rTeacherConfig
from lit3d.teachers.dust3r.checkpoint import CHECKPOINT_DIR_ENV

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "docs" / "dust3r" / "golden"
TINY = dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=4, dec_num_heads=2,
            dpt_feature_dim=16, dpt_last_dim=8, dpt_layer_dims=[8, 8, 16, 16])




def tiny_teacher(**overrides) -> DUSt3RTeacher:
    torch.manual_seed(0)
    return create_teacher(TEACHERS.config("dust3r", random_init=True, **{**TINY, **overrides}))


def pair_batch(idx_i: list[int], idx_j: list[int], n_images: int = 3, hw: tuple[int, int] = (48, 64)) -> dict:
    images = torch.rand(n_images, 3, *hw, generator=torch.Generator().manual_seed(1))
    i, j = torch.tensor(idx_i), torch.tensor(idx_j)
    return {"img_i": images[i], "img_j": images[j], "idx_i": i, "idx_j": j}


@pytest.mark.parametrize("head_type", ["dpt", "linear"])
def test_output_contract(head_type: str) -> None:
    teacher = tiny_teacher(head_type=head_type)
    batch = pair_batch([0, 1], [1, 2])
    out = teacher(batch)
    assert set(out) == set(OUTPUT_KEYS)
    assert out["pts_i"].shape == out["pts_j_in_i"].shape == (2, 48, 64, 3)
    for side in "ij":
        assert out[f"conf_{side}"].shape == out[f"valid_{side}"].shape == (2, 48, 64)
        assert out[f"valid_{side}"].dtype == torch.bool and out[f"valid_{side}"].all()
        assert (out[f"conf_{side}"] >= 1).all()
    # frames: pts_i is the official pred1 (view i in camera i), pts_j_in_i the official pred2 (view j in camera i)
    views = [{"img": batch[f"img_{s}"] * 2 - 1} for s in "ij"]
    with torch.no_grad():
        pred1, pred2 = teacher.net(*views)
    torch.testing.assert_close(out["pts_i"], pred1["pts3d"])
    torch.testing.assert_close(out["pts_j_in_i"], pred2["pts3d_in_other_view"])
    torch.testing.assert_close(out["conf_j"], pred2["conf"])


def test_shared_encoder_matches_unshared() -> None:
    """A symmetrised batch with repeats: each distinct image is encoded once, with the same outputs."""
    shared, unshared = tiny_teacher(), tiny_teacher(share_encoder=False)
    encoded: list[int] = []
    shared.net.patch_embed.register_forward_hook(lambda m, args, out: encoded.append(args[0].shape[0]))
    batch = pair_batch([0, 1, 0, 2, 2], [1, 0, 0, 1, 0])
    out_shared, out_unshared = shared(batch), unshared(batch)
    assert encoded == [3]  # not 10
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(out_shared[key], out_unshared[key], rtol=1e-5, atol=1e-5)


def test_config_and_frame_transform() -> None:
    cfg = TEACHERS.config("dust3r")
    assert isinstance(cfg, Dust3rTeacherConfig) and cfg.preset == "DUSt3R_ViTLarge_BaseDecoder_512_dpt"
    teacher = tiny_teacher()
    assert teacher.frame_transform(480, 640).output_size == (384, 512)
    assert tiny_teacher(preset="DUSt3R_ViTLarge_BaseDecoder_224_linear").frame_transform(1080, 1920).output_size \
        == (224, 224)
    assert not teacher.metric and teacher.fit_batch_size(384, 512) == 8
    manifest = teacher.manifest()
    assert manifest["random_init"] is True and manifest["checkpoint_sha256"] is None
    assert manifest["arch"]["enc_embed_dim"] == 32 and manifest["resolution"] == 512


def test_missing_weights_fail_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        create_teacher(TEACHERS.config("dust3r"))
    assert "\n" not in str(err.value) and "teacher.random_init=true" in str(err.value)


@pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden vectors not found at {GOLDEN}")
@pytest.mark.parametrize("name", ["tiny_linear", "tiny_dpt"])
def test_teacher_reproduces_golden_outputs(tmp_path: Path, name: str) -> None:
    """Hub-format folder -> teacher (images in [0, 1]) -> the official outputs; the hash goes to the manifest."""
    shutil.copy(GOLDEN / f"{name}.weights_fp16.safetensors", tmp_path / "model.safetensors")
    shutil.copy(GOLDEN / f"{name}.config.json", tmp_path / "config.json")
    teacher = create_teacher(TEACHERS.config("dust3r", checkpoint=str(tmp_path)))
    io = np.load(GOLDEN / f"{name}.io.npz")
    ids = torch.arange(2)
    out = teacher({"img_i": (torch.from_numpy(io["view1_img"]) + 1) / 2, "idx_i": ids,
                   "img_j": (torch.from_numpy(io["view2_img"]) + 1) / 2, "idx_j": ids + 2})
    for key, golden in (("pts_i", "pred1_pts3d"), ("conf_i", "pred1_conf"),
                        ("pts_j_in_i", "pred2_pts3d_in_other_view"), ("conf_j", "pred2_conf")):
        err = np.abs(out[key].numpy() - io[golden]).max()
        assert err <= 1e-4 * np.abs(io[golden]).max()
    manifest = teacher.manifest()
    assert manifest["random_init"] is False and manifest["arch"]["enc_embed_dim"] == 64
    assert manifest["checkpoint_sha256"] == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()


def test_benchmark_row_and_table() -> None:
    from lit3d.bench.teacher import run_one

    row = run_one(tiny_teacher(), "tiny", (48, 64), "fp32", pairs=3, batch_size=2, warmup=0)
    assert row.pairs == 4 and row.batch == 2 and row.seconds > 0 and row.peak_mb > 0


TINY_ARGS = ["teacher=dust3r", "teacher.random_init=true", "teacher.resolution=64", "teacher.enc_embed_dim=32",
             "teacher.enc_depth=1", "teacher.enc_num_heads=2", "teacher.dec_embed_dim=32", "teacher.dec_depth=4",
             "teacher.dec_num_heads=2", "teacher.dpt_feature_dim=16", "teacher.dpt_last_dim=8",
             "teacher.dpt_layer_dims=[8,8,16,16]", "align.method=global",
             "loss.name=mse"]  # first-camera labels of random weights: no pose describes them


@pytest.mark.slow
def test_labels_synthetic_scene_and_trains(tiny_cfg, tmp_path) -> None:
    """Tiny random DUSt3R -> Lightning predict -> global alignment -> label cache -> ``fit`` trains on it; moved
    views, which need a pose that describes the labels, are refused on it."""
    import json

    from lit3d.cache import build_labels
    from lit3d.fit import fit

    cfg = tiny_cfg(*TINY_ARGS)
    cache, summary = build_labels(cfg)
    assert summary["pairs"] > 0 and summary["valid_fraction"] > 0.5
    manifest = json.loads(cache.manifest_path.read_text())
    assert manifest["teacher"]["name"] == "dust3r" and manifest["teacher"]["random_init"] is True
    metrics = fit(cfg)
    assert np.isfinite(metrics["test/l2_mean"])
    with pytest.raises(ValueError, match="loader.view_shift needs camera poses .* set loader.view_shift=0"):
        fit(tiny_cfg(*TINY_ARGS, "align.known_pose_mode=ignore", "loader.view_shift=0.1",
                     f"run_dir={tmp_path / 'moved'}"))
