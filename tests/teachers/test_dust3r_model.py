"""DUSt3R network: golden conformance with the official implementation, released state-dict layouts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lit3d.teachers.dust3r import Dust3rNet, arch_from_hub_config, get_preset, load_into
from lit3d.teachers.dust3r.checkpoint import CheckpointError
from lit3d.teachers.dust3r.layers import apply_rope, patch_positions, rope_tables

DOCS = Path(__file__).resolve().parents[2].parent / "shared" / "docs" / "dust3r"
GOLDEN = DOCS / "golden"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden vectors not found at {GOLDEN}")
TSV = {"DUSt3R_ViTLarge_BaseDecoder_512_dpt": ("dust3r_512_dpt_state_dict.tsv", 571_171_208),
       "DUSt3R_ViTLarge_BaseDecoder_224_linear": ("dust3r_224_linear_state_dict.tsv", 532_342_784)}




def golden_net(name: str) -> tuple[Dust3rNet, dict]:
    cfg = json.loads((GOLDEN / f"{name}.config.json").read_text())
    arch, _ = arch_from_hub_config(cfg)
    net = load_into(Dust3rNet(arch), load_file(str(GOLDEN / f"{name}.weights_fp16.safetensors")), name).eval()
    assert sum(p.numel() for p in net.parameters()) == cfg["n_params"]
    return net, dict(np.load(GOLDEN / f"{name}.io.npz"))


def assert_close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-4) -> None:
    """Relative to the tensor's largest magnitude: near-zero entries carry no relative precision."""
    assert tuple(actual.shape) == expected.shape
    err = np.abs(actual.detach().numpy().astype(np.float64) - expected).max()
    assert err <= rtol * np.abs(expected).max(), err / np.abs(expected).max()


@needs_golden
@pytest.mark.parametrize("name", ["tiny_linear", "tiny_dpt"])
def test_golden_conformance(name: str) -> None:
    net, io = golden_net(name)
    views = [{"img": torch.from_numpy(io[f"view{v}_img"]), "true_shape": torch.from_numpy(io["true_shape"])}
             for v in (1, 2)]
    with torch.no_grad():
        feat1, pos1 = net.encode(views[0]["img"])
        feat2, pos2 = net.encode(views[1]["img"])
        dec1, dec2 = net.decode(feat1, pos1, feat2, pos2)
        pred1, pred2 = net(*views)
    assert torch.equal(pos1, torch.from_numpy(io["enc_pos1"]).to(pos1.dtype))
    for actual, key in ((feat1, "enc_feat1"), (feat2, "enc_feat2"), (dec1[-1], "dec1_last"), (dec2[-1], "dec2_last"),
                        (pred1["pts3d"], "pred1_pts3d"), (pred1["conf"], "pred1_conf"),
                        (pred2["pts3d_in_other_view"], "pred2_pts3d_in_other_view"), (pred2["conf"], "pred2_conf")):
        assert_close(actual, io[key])


def test_rope_matches_croco_formulation() -> None:
    """At the positions of a 512x384 input (the golden inputs only reach 3x4 patches)."""
    def rope1d(t: torch.Tensor, pos_BN: torch.Tensor, base: float = 100.0) -> torch.Tensor:
        d = t.shape[-1]
        inv_freq = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
        freqs = pos_BN.float()[..., None] * inv_freq
        freqs = torch.cat([freqs, freqs], -1)[:, None]  # (B, 1, N, d)
        rotated = torch.cat([-t[..., d // 2:], t[..., : d // 2]], -1)
        return t * freqs.cos() + rotated * freqs.sin()

    pos = patch_positions(2, 24, 32, "cpu")
    t = torch.randn(2, 3, 24 * 32, 64, dtype=torch.float64)
    y, x = t.chunk(2, dim=-1)
    expected = torch.cat([rope1d(y, pos[..., 0]), rope1d(x, pos[..., 1])], -1)
    torch.testing.assert_close(apply_rope(t, rope_tables(pos, 64, 100.0)), expected, rtol=1e-5, atol=1e-5)


def tsv_state_dict(path: Path) -> dict[str, torch.Tensor]:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:] if line]
    # shapes are written as Python tuples, e.g. "(1024,)" or "(1, 1, 768)"
    return {key: torch.empty([int(n) for n in shape.strip("()").split(",") if n.strip()], device="meta")
            for key, shape, _ in rows}


@pytest.mark.skipif(not DOCS.is_dir(), reason=f"state-dict listings not found at {DOCS}")
@pytest.mark.parametrize("preset", list(TSV))
def test_released_state_dict_loads_strictly(preset: str) -> None:
    file, n_params = TSV[preset]
    state = tsv_state_dict(DOCS / file)
    with torch.device("meta"):  # shapes only: the full model would take 2.3 GB
        net = Dust3rNet(get_preset(preset).arch)
    assert set(net.state_dict()) == set(state)
    load_into(net, state, file)
    assert sum(p.numel() for p in net.parameters()) == n_params
    # the file without one name of each DPT alias (as safetensors stores it) loads as well
    dropped = {k: v for k, v in state.items() if ".layer_rn." not in k}
    load_into(net, dropped, file)


def test_wrong_preset_names_mismatched_keys() -> None:
    state = tsv_state_dict(DOCS / TSV["DUSt3R_ViTLarge_BaseDecoder_224_linear"][0]) if DOCS.is_dir() else None
    if state is None:
        pytest.skip("state-dict listings not found")
    with torch.device("meta"):
        net = Dust3rNet(get_preset("DUSt3R_ViTLarge_BaseDecoder_512_dpt").arch)
    with pytest.raises(CheckpointError) as err:
        load_into(net, state, "224.pth")
    msg = str(err.value)
    assert "\n" not in msg and "missing" in msg and "downstream_head1.dpt" in msg and "downstream_head1.proj" in msg


@pytest.mark.slow
def test_full_224_linear_forward_on_cpu() -> None:
    torch.manual_seed(0)
    net = Dust3rNet(get_preset("DUSt3R_ViTLarge_BaseDecoder_224_linear").arch).init_weights().eval()
    img = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        pred1, pred2 = net({"img": img[:1]}, {"img": img[1:]})
    assert pred1["pts3d"].shape == (1, 224, 224, 3) and pred2["pts3d_in_other_view"].shape == (1, 224, 224, 3)
    assert pred1["conf"].shape == pred2["conf"].shape == (1, 224, 224)
    assert all(torch.isfinite(t).all() for t in (*pred1.values(), *pred2.values()))
    assert (pred1["conf"] >= 1).all()
