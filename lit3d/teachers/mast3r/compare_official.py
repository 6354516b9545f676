"""lit3d's MASt3R against the official implementation (not run in CI; needs a checkout of the official code).

    python -m lit3d.teachers.mast3r.compare_official --official /path/to/mast3r golden tests/teachers/golden
    python -m lit3d.teachers.mast3r.compare_official --official /path/to/mast3r full [--tsv FILE]

``--official`` is a checkout of naver/mast3r with its ``dust3r`` submodule (and dust3r's ``croco``) filled in;
it imports ``einops`` and ``huggingface_hub``. ``golden`` writes the tiny conformance vectors the tests read;
``full`` builds the released ``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric`` architecture in both
implementations from ONE random state dict, runs both on the same 384x512 pair and prints the largest difference
of every output relative to its largest magnitude (``--tsv`` also writes the state-dict listing: key, shape, dtype).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from lit3d.teachers.dust3r.checkpoint import load_into
from lit3d.teachers.mast3r.model import Mast3rNet, mast3r_arch_from_hub_config

RELEASED = dict(pos_embed="RoPE100", patch_embed_cls="PatchEmbedDust3R", img_size=[512, 512], head_type="catmlp+dpt",
                output_mode="pts3d+desc24", depth_mode=["exp", "-inf", "inf"], conf_mode=["exp", 1, "inf"],
                enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12,
                dec_num_heads=12, two_confs=True, desc_conf_mode=["exp", 0, "inf"], landscape_only=False)
"""Constructor arguments of the released metric model (naver/mast3r README, as JSON)."""
TINY = {**RELEASED, "img_size": [64, 64], "output_mode": "pts3d+desc2", "enc_embed_dim": 32, "enc_depth": 2,
        "enc_num_heads": 2, "dec_embed_dim": 16, "dec_depth": 10, "dec_num_heads": 2,
        "dpt_widths": {"feature_dim": 16, "last_dim": 8, "layer_dims": [8, 16, 32, 64]}}
"""The golden configuration: the official code with narrow widths (the DPT widths patched in, see below)."""
OUTPUTS = ("pred1_pts3d", "pred1_conf", "pred1_desc", "pred1_desc_conf", "pred2_pts3d_in_other_view", "pred2_conf",
           "pred2_desc", "pred2_desc_conf")


def official_model(root: Path, cfg: dict) -> torch.nn.Module:
    """``AsymmetricMASt3R`` of the checkout at ``root``, built from JSON kwargs (DPT widths patched when given)."""
    sys.path.insert(0, str(root))
    from mast3r.model import AsymmetricMASt3R  # puts the dust3r submodule on the path

    from dust3r.heads import dpt_head

    widths = cfg.get("dpt_widths")
    if widths:  # the official factory fixes the DPT widths; narrow them for the tiny golden model
        init = dpt_head.DPTOutputAdapter_fix.__init__

        def narrow(self, *args, **kwargs):
            init(self, *args, **{**kwargs, **widths})

        dpt_head.DPTOutputAdapter_fix.__init__ = narrow
    kwargs = {k: v for k, v in cfg.items() if k not in ("dpt_widths", "n_params")}
    for key in ("depth_mode", "conf_mode", "desc_conf_mode"):
        mode, low, high = kwargs[key]
        kwargs[key] = (mode, float(low), float(high))  # JSON spells infinities as strings
    kwargs["img_size"] = tuple(kwargs["img_size"])
    try:
        return AsymmetricMASt3R(**kwargs).eval()
    finally:
        if widths:
            dpt_head.DPTOutputAdapter_fix.__init__ = init


def run_official(net: torch.nn.Module, img1: torch.Tensor, img2: torch.Tensor) -> dict[str, np.ndarray]:
    shape = torch.tensor([img1.shape[-2:]] * len(img1), dtype=torch.int32)
    views = [{"img": img, "true_shape": shape, "instance": [f"{v}{i}" for i in range(len(img))]}
             for v, img in (("a", img1), ("b", img2))]
    with torch.no_grad():
        pred1, pred2 = net(*views)
        (_, _), (feat1, feat2), (pos1, pos2) = net._encode_symmetrized(*views)
        dec1, dec2 = net._decoder(feat1, pos1, feat2, pos2)
    out = {f"pred1_{k}": v for k, v in pred1.items()} | {f"pred2_{k}": v for k, v in pred2.items()}
    out |= {"enc_feat1": feat1, "enc_feat2": feat2, "enc_pos1": pos1, "dec1_last": dec1[-1], "dec2_last": dec2[-1]}
    return {k: v.numpy() for k, v in out.items()}


def run_lit3d(net: Mast3rNet, img1: torch.Tensor, img2: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        pred1, pred2 = net({"img": img1}, {"img": img2})
    out = {f"pred1_{k}": v for k, v in pred1.items()} | {f"pred2_{k}": v for k, v in pred2.items()}
    return {k: v.numpy() for k, v in out.items()}


def relative_errors(ours: dict, theirs: dict) -> dict[str, float]:
    return {k: float(np.abs(ours[k].astype(np.float64) - theirs[k]).max() / np.abs(theirs[k]).max())
            for k in OUTPUTS}


def golden(root: Path, out: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = official_model(root, TINY)
    # weights exactly representable in fp16, so that the fp16 file reproduces the fp32 model
    state = {k: v.half() for k, v in net.state_dict().items()}
    net.load_state_dict({k: v.float() for k, v in state.items()})
    # dpt.scratch.layer_rn.{0..3} are the same tensors as layer{1..4}_rn
    aliases = {k: re.sub(r"layer_rn\.(\d)\.", lambda m: f"layer{int(m[1]) + 1}_rn.", k) for k in state
               if ".layer_rn." in k}
    saved = {k: v.contiguous() for k, v in state.items() if k not in aliases}  # safetensors keeps one alias name
    g = torch.Generator().manual_seed(1)
    img1, img2 = (torch.rand(2, 3, 32, 48, generator=g) * 2 - 1 for _ in range(2))
    io = {"view1_img": img1.numpy(), "view2_img": img2.numpy(), **run_official(net, img1, img2)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(saved, str(out / "mast3r_tiny.weights_fp16.safetensors"))
    np.savez_compressed(out / "mast3r_tiny.io.npz", **io)
    n_params = sum(p.numel() for p in net.parameters())
    (out / "mast3r_tiny.config.json").write_text(json.dumps({**TINY, "n_params": n_params,
                                                              "aliases_dropped": aliases}, indent=1))
    ours = load_into(Mast3rNet(mast3r_arch_from_hub_config(TINY)[0]), saved, "golden").eval()
    print("golden written;", json.dumps(relative_errors(run_lit3d(ours, img1, img2), io), indent=1))


def full(root: Path, tsv: Path | None) -> None:
    torch.manual_seed(0)
    official = official_model(root, RELEASED)
    state = official.state_dict()
    if tsv:
        rows = [f"{k}\t{tuple(v.shape)}\t{str(v.dtype).removeprefix('torch.')}" for k, v in state.items()]
        tsv.write_text("key\tshape\tdtype\n" + "\n".join(rows) + "\n")
    with torch.device("meta"):
        ours = Mast3rNet(mast3r_arch_from_hub_config(RELEASED)[0])
    load_into(ours, state, "official random state dict").eval()
    n_params = sum(p.numel() for p in ours.parameters())
    g = torch.Generator().manual_seed(1)
    img1, img2 = (torch.rand(1, 3, 384, 512, generator=g) * 2 - 1 for _ in range(2))
    theirs = run_official(official, img1, img2)
    del official
    errors = relative_errors(run_lit3d(ours, img1, img2), theirs)
    print(json.dumps({"params": n_params, "state_dict_entries": len(state), "max_relative_error": errors}, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="naver/mast3r checkout with submodules")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("golden").add_argument("out", type=Path)
    sub.add_parser("full").add_argument("--tsv", type=Path)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.command == "golden":
        golden(args.official.resolve(), args.out)
    else:
        full(args.official.resolve(), args.tsv)


if __name__ == "__main__":
    main()
