"""Safe checkpoint loading: malicious pickles, truncated and mismatched files, folders, pins, missing weights."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit3d.teachers.dust3r import CheckpointError, Dust3rArch, Dust3rNet, get_preset, load_into, read_checkpoint
from lit3d.teachers.dust3r.checkpoint import CHECKPOINT_DIR_ENV

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "docs" / "dust3r" / "golden"
PRESET = get_preset("DUSt3R_ViTLarge_BaseDecoder_512_dpt")
TINY = Dust3rArch(enc_embed_dim=16, enc_depth=1, enc_num_heads=1, dec_embed_dim=16, dec_depth=1, dec_num_heads=1,
                  head_type="linear")




class _Payload:
    """Unpickling this runs ``os.makedirs(marker)``: a stand-in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def _one_line_error(spec: str | Path, preset=PRESET) -> str:
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(spec), preset)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_payload_is_live(tmp_path: Path) -> None:
    """Guards the next test: a plain unpickle of the payload does run it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle"])
def test_malicious_pth_fails_safely(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": Dust3rNet(TINY).state_dict(), "args": _Payload(marker)}
    if fmt == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # torch.load's own protocol
    msg = _one_line_error(path)
    assert "refusing to load" in msg
    assert not marker.exists()


def test_official_layout_with_namespace_args_loads(tmp_path: Path) -> None:
    import argparse

    state = Dust3rNet(TINY).state_dict()
    model_str = "AsymmetricCroCo3DStereo(pos_embed='RoPE100', __import__('os').system('touch pwned'))"
    torch.save({"model": state, "args": argparse.Namespace(model=model_str, epochs=100)}, tmp_path / "ok.pth")
    ckpt = read_checkpoint(str(tmp_path / "ok.pth"), PRESET)
    assert set(ckpt.state_dict) == set(state)
    assert ckpt.sha256 == hashlib.sha256((tmp_path / "ok.pth").read_bytes()).hexdigest()
    load_into(Dust3rNet(TINY), ckpt.state_dict, "ok.pth")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"model": Dust3rNet(TINY).state_dict()}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated" in _one_line_error(path)


def test_missing_and_mismatched_keys_are_named() -> None:
    state = Dust3rNet(TINY).state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("dec_blocks2.")}
    with pytest.raises(CheckpointError) as err:
        load_into(Dust3rNet(TINY), partial, "partial.pth")
    assert "\n" not in str(err.value) and "missing: dec_blocks2.0." in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_into(Dust3rNet(TINY.replace(dec_embed_dim=32, dec_num_heads=2)), state, "small.pth")
    msg = str(err.value)
    assert "\n" not in msg and "mismatched" in msg and "decoder_embed.weight (16, 16) vs (32, 16)" in msg


def test_sha256_pin(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(Dust3rNet(TINY).state_dict(), path)  # a bare state dict is accepted too
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_checkpoint(str(path), PRESET, sha256=digest.upper()).sha256 == digest
    with pytest.raises(CheckpointError, match="expected 00"):
        read_checkpoint(str(path), PRESET, sha256="00" * 32)


def test_missing_weights_say_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path / "none"))
    msg = _one_line_error("")
    assert PRESET.url in msg and "random_init=true" in msg and str(tmp_path / "none") in msg
    assert "does not exist" in _one_line_error(tmp_path / "absent.pth")


def test_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(tmp_path))
    torch.save({"model": Dust3rNet(TINY).state_dict()}, tmp_path / f"{PRESET.name}.pth")
    assert read_checkpoint("", PRESET).path == tmp_path / f"{PRESET.name}.pth"


@pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden vectors not found at {GOLDEN}")
def test_safetensors_folder_with_config(tmp_path: Path) -> None:
    shutil.copy(GOLDEN / "tiny_dpt.weights_fp16.safetensors", tmp_path / "model.safetensors")
    shutil.copy(GOLDEN / "tiny_dpt.config.json", tmp_path / "config.json")
    ckpt = read_checkpoint(str(tmp_path), PRESET)
    assert ckpt.config == json.loads((GOLDEN / "tiny_dpt.config.json").read_text())
    assert ".layer_rn.0.weight" not in " ".join(ckpt.state_dict)  # the aliases the file dropped
    load_into(Dust3rNet(Dust3rArch(**_tiny_dpt_kwargs())), ckpt.state_dict, str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    assert "truncated" in _one_line_error(tmp_path)


def _tiny_dpt_kwargs() -> dict:
    from lit3d.teachers.dust3r import arch_from_hub_config

    arch, _ = arch_from_hub_config(json.loads((GOLDEN / "tiny_dpt.config.json").read_text()))
    return {k: getattr(arch, k) for k in arch.__dataclass_fields__}


@pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden vectors not found at {GOLDEN}")
def test_differing_aliases_are_rejected() -> None:
    state = load_file(str(GOLDEN / "tiny_dpt.weights_fp16.safetensors"))
    key = "downstream_head1.dpt.scratch.layer1_rn.weight"
    state["downstream_head1.dpt.scratch.layer_rn.0.weight"] = state[key] + 1
    with pytest.raises(CheckpointError, match="aliased keys"):
        load_into(Dust3rNet(Dust3rArch(**_tiny_dpt_kwargs())), state, "bad")
