"""MASt3R: golden conformance with the official code, the released state-dict layout, safe loading, the teacher."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lit3d.teachers import OUTPUT_KEYS, TEACHERS, create_teacher
from lit3d.teachers.dust3r import CheckpointError, load_into
from lit3d.teachers.dust3r.checkpoint import CHECKPOINT_DIR_ENV
from lit3d.teachers.mast3r import Mast3rArch, Mast3rNet, Mast3rTeacher, get_mast3r_preset, mast3r_arch_from_hub_config
from state_tables import tsv_state_dict

GOLDEN = Path(__file__).resolve().parent / "golden"
TSV = GOLDEN / "mast3r_512_catmlpdpt_metric_state_dict.tsv"
DUST3R_TSV = Path(__file__).resolve().parents[2].parent / "shared" / "docs" / "dust3r" / "dust3r_512_dpt_state_dict.tsv"
PRESET = get_mast3r_preset("MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric")
TINY = dict(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=4, dec_num_heads=2,
            dpt_feature_dim=16, dpt_last_dim=8, dpt_layer_dims=[8, 8, 16, 16])
OUTPUTS = {"pred1": ("pts3d", "conf", "desc", "desc_conf"),
           "pred2": ("pts3d_in_other_view", "conf", "desc", "desc_conf")}


def assert_close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """Relative to the tensor's largest magnitude: near-zero entries carry no relative precision."""
    assert tuple(actual.shape) == expected.shape
    err = np.abs(actual.detach().numpy().astype(np.float64) - expected).max()
    assert err <= rtol * np.abs(expected).max(), err / np.abs(expected).max()


def test_golden_conformance() -> None:
    cfg = json.loads((GOLDEN / "mast3r_tiny.config.json").read_text())
    arch, resolution = mast3r_arch_from_hub_config(cfg)
    assert (arch.desc_dim, arch.two_confs, arch.desc_conf_min, resolution) == (2, True, 0.0, 64)
    net = load_into(Mast3rNet(arch), load_file(str(GOLDEN / "mast3r_tiny.weights_fp16.safetensors")), "golden").eval()
    assert sum(p.numel() for p in net.parameters()) == cfg["n_params"]
    io = dict(np.load(GOLDEN / "mast3r_tiny.io.npz"))
    img1, img2 = torch.from_numpy(io["view1_img"]), torch.from_numpy(io["view2_img"])
    with torch.no_grad():
        feat1, pos1 = net.encode(img1)
        feat2, pos2 = net.encode(img2)
        dec1, dec2 = net.decode(feat1, pos1, feat2, pos2)
        preds = dict(zip(("pred1", "pred2"), net({"img": img1}, {"img": img2})))
    assert torch.equal(pos1, torch.from_numpy(io["enc_pos1"]).to(pos1.dtype))
    for actual, key in ((feat1, "enc_feat1"), (feat2, "enc_feat2"), (dec1[-1], "dec1_last"), (dec2[-1], "dec2_last")):
        assert_close(actual, io[key])
    for pred, keys in OUTPUTS.items():
        assert set(preds[pred]) == set(keys)
        for key in keys:
            assert_close(preds[pred][key], io[f"{pred}_{key}"])
    torch.testing.assert_close(preds["pred1"]["desc"].norm(dim=-1), torch.ones(2, 32, 48))


def test_released_state_dict_loads_strictly() -> None:
    """The full-size listing (official constructor, released kwargs) loads with and without the DPT aliases."""
    state = tsv_state_dict(TSV)
    with torch.device("meta"):
        net = Mast3rNet(PRESET.arch)
    assert set(net.state_dict()) == set(state)
    load_into(net, state, TSV.name)
    assert sum(p.numel() for p in net.parameters()) == 688_638_856
    load_into(net, {k: v for k, v in state.items() if ".layer_rn." not in k}, TSV.name)
    assert state["downstream_head1.head_local_features.fc2.weight"].shape == (25 * 16 * 16, 4 * 1792)


@pytest.mark.skipif(not DUST3R_TSV.is_file(), reason=f"DUSt3R listing not found at {DUST3R_TSV}")
def test_dust3r_weights_are_named_as_missing_descriptor_head() -> None:
    with torch.device("meta"):
        net = Mast3rNet(PRESET.arch)
    with pytest.raises(CheckpointError) as err:
        load_into(net, tsv_state_dict(DUST3R_TSV), "dust3r.pth")
    msg = str(err.value)
    assert "\n" not in msg and "Mast3rNet" in msg and "missing: downstream_head1.head_local_features" in msg


class _Payload:
    """Unpickling this runs ``os.makedirs(marker)``: a stand-in for code in a hostile checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_crafted_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": Mast3rNet(Mast3rArch(**{**TINY, "dpt_layer_dims": (8, 8, 16, 16)})).state_dict(),
                "args": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to load"):
        create_teacher(TEACHERS.config("mast3r", checkpoint=str(tmp_path / "evil.pth")))
    assert not marker.exists()


def test_missing_weights_say_how_to_provide_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        create_teacher(TEACHERS.config("mast3r"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("MASt3R weights not found")
    assert PRESET.url == ("https://download.europe.naverlabs.com/ComputerVision/MASt3R/"
                          "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth")
    assert PRESET.url in msg and PRESET.hub_name in msg and "teacher.random_init=true" in msg
    with pytest.raises(ValueError, match="unknown MASt3R preset 'DUSt3R_ViTLarge_BaseDecoder_512_dpt'"):
        create_teacher(TEACHERS.config("mast3r", preset="DUSt3R_ViTLarge_BaseDecoder_512_dpt"))


def test_teacher_reproduces_golden_outputs_and_is_metric(tmp_path: Path) -> None:
    """Hub-format folder -> teacher (images in [0, 1]) -> the official outputs; metric and hash in the manifest."""
    shutil.copy(GOLDEN / "mast3r_tiny.weights_fp16.safetensors", tmp_path / "model.safetensors")
    shutil.copy(GOLDEN / "mast3r_tiny.config.json", tmp_path / "config.json")
    teacher = create_teacher(TEACHERS.config("mast3r", checkpoint=str(tmp_path)))
    assert isinstance(teacher, Mast3rTeacher) and teacher.metric
    io = np.load(GOLDEN / "mast3r_tiny.io.npz")
    ids = torch.arange(2)
    out = teacher({"img_i": (torch.from_numpy(io["view1_img"]) + 1) / 2, "idx_i": ids,
                   "img_j": (torch.from_numpy(io["view2_img"]) + 1) / 2, "idx_j": ids + 2})
    assert set(out) == set(OUTPUT_KEYS)
    for key, golden in (("pts_i", "pred1_pts3d"), ("conf_i", "pred1_conf"),
                        ("pts_j_in_i", "pred2_pts3d_in_other_view"), ("conf_j", "pred2_conf")):
        assert_close(out[key], io[golden])
    manifest = teacher.manifest()
    assert manifest["name"] == "mast3r" and manifest["metric"] is True and manifest["arch"]["desc_dim"] == 2
    assert manifest["checkpoint_sha256"] == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    assert teacher.frame_transform(480, 640).output_size == (48, 64)  # the file's img_size: long side 64
    tiny = create_teacher(TEACHERS.config("mast3r", random_init=True, **TINY))
    assert tiny.metric and tiny.frame_transform(480, 640).output_size == (384, 512)  # the preset's 512
    out = tiny({"img_i": torch.rand(3, 3, 48, 64), "img_j": torch.rand(3, 3, 48, 64)})
    assert out["pts_i"].shape == (3, 48, 64, 3) and (out["conf_j"] >= 1).all() and out["valid_i"].all()


TINY_ARGS = ["teacher=mast3r", "teacher.random_init=true", "teacher.resolution=64", "teacher.enc_embed_dim=32",
             "teacher.enc_depth=1", "teacher.enc_num_heads=2", "teacher.dec_embed_dim=32", "teacher.dec_depth=4",
             "teacher.dec_num_heads=2", "teacher.dpt_feature_dim=16", "teacher.dpt_last_dim=8",
             "teacher.dpt_layer_dims=[8,8,16,16]", "align.method=known_poses",
             "loss.name=mse", "loader.view_shift=0"]  # random-weight points do not reproject through the poses


@pytest.mark.slow
def test_labels_synthetic_scene_with_known_poses_and_trains(tiny_cfg) -> None:
    """Tiny random MASt3R -> metric known-pose alignment (no scale solved) -> label cache -> ``fit`` trains on it."""
    from lit3d.cache import build_labels
    from lit3d.fit import fit

    cfg = tiny_cfg(*TINY_ARGS)
    cache, summary = build_labels(cfg)
    assert summary["pairs"] > 0 and summary["valid_fraction"] > 0.5 and summary["unit"] == "m"
    manifest = json.loads(cache.manifest_path.read_text())
    assert manifest["teacher"]["name"] == "mast3r" and manifest["teacher"]["metric"] is True
    metrics = fit(cfg)
    assert np.isfinite(metrics["test/l2_mean"])
