"""lit3d's VGGT against the official implementation (not run in CI; needs a checkout of facebookresearch/vggt).

    python -m lit3d.teachers.vggt.compare_official --official /path/to/vggt golden tests/teachers/golden
    python -m lit3d.teachers.vggt.compare_official --official /path/to/vggt full [--tsv FILE]

``golden`` writes the tiny conformance vectors the tests read; ``full`` builds the released VGGT-1B architecture in
both implementations from ONE random state dict, runs both on the same 2 views at 392x518 and prints the largest
difference of every output relative to its largest magnitude (``--tsv`` writes the official state-dict listing:
key, shape, dtype; needs ~10 GB of memory and, for the forward, a GPU or a lot of patience).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from lit3d.teachers.dust3r.checkpoint import load_into
from lit3d.teachers.vggt.model import VggtArch, VggtNet, drop_unused

TINY = VggtArch(img_size=56, embed_dim=32, dino_depth=2, dino_num_heads=2, depth=4, num_heads=2, camera_depth=1,
                camera_num_heads=2, dpt_features=16, dpt_out_channels=(8, 16, 32, 32), dpt_layers=(0, 1, 2, 3))
"""The golden configuration: the official modules with narrow widths."""
FULL_STRENGTH = 0.2
"""Perturbation strength at full size: layer scales 0.1-0.2 (10x the release's init), noise 0.02 (its init std)."""
OUTPUTS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def official_model(root: Path, arch: VggtArch) -> torch.nn.Module:
    """The official ``VGGT`` (no tracking head) whose aggregator and heads are built with ``arch``.

    The official ``VGGT`` constructor fixes everything but image size, patch size and width, and its aggregator
    fixes the DINOv2 depth and heads (``vit_large``); for other sizes the modules are built from the official
    classes with ``arch``'s arguments and the ViT factory is swapped for the official ``DinoVisionTransformer``
    with the given depth and heads. Nothing else is changed.
    """
    sys.path.insert(0, str(root))
    import vggt.layers.vision_transformer as vt
    import vggt.models.aggregator as agg
    from vggt.heads.camera_head import CameraHead
    from vggt.heads.dpt_head import DPTHead
    from vggt.models.vggt import VGGT

    agg.vit_large = lambda **kw: vt.DinoVisionTransformer(
        **kw, embed_dim=arch.embed_dim, depth=arch.dino_depth, num_heads=arch.dino_num_heads, mlp_ratio=4,
        block_fn=partial(vt.Block, attn_class=vt.MemEffAttention))
    model = VGGT(arch.img_size, arch.patch_size, arch.embed_dim, enable_camera=False, enable_point=False,
                 enable_depth=False, enable_track=False)
    model.aggregator = agg.Aggregator(img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim,
                                      depth=arch.depth, num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio,
                                      num_register_tokens=arch.num_register_tokens, rope_freq=arch.rope_freq)
    model.camera_head = CameraHead(dim_in=2 * arch.embed_dim, trunk_depth=arch.camera_depth,
                                   num_heads=arch.camera_num_heads)
    dpt = dict(dim_in=2 * arch.embed_dim, patch_size=arch.patch_size, features=arch.dpt_features,
               out_channels=list(arch.dpt_out_channels), intermediate_layer_idx=list(arch.dpt_layers))
    model.point_head = DPTHead(**dpt, output_dim=4, activation="inv_log", conf_activation="expp1")
    model.depth_head = DPTHead(**dpt, output_dim=2, activation="exp", conf_activation="expp1")
    return model.eval()


def perturb(model: torch.nn.Module, seed: int, strength: float = 1.0) -> None:
    """Make every parameter matter: the release's init leaves layer scales at 0.01 and tokens at 1e-6; the camera
    head's field-of-view biases are raised by 2 so that the decoded focal lengths are finite (ReLU'd fov > 0).
    ``strength`` scales the layer scales and the added noise: 1 for the golden configuration; the full-size model's
    72 residual blocks overflow to inf with it (every output non-finite), hence ``FULL_STRENGTH`` there."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):
                p.copy_(strength * (0.5 + 0.5 * noise.abs()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.add_(0.1 * strength * noise)
        model.camera_head.pose_branch.fc2.bias[7:] += 2.0


def golden(root: Path, out: Path) -> None:
    torch.manual_seed(0)
    model = official_model(root, TINY)
    perturb(model, 1)
    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state.items()})
    from safetensors.torch import save_file
    from vggt.utils.pose_enc import pose_encoding_to_extri_intri

    save_file(state, str(out / "vggt_tiny.weights_fp16.safetensors"))
    gen = torch.Generator().manual_seed(2)
    images = torch.nn.functional.interpolate(torch.rand(3, 3, 6, 7, generator=gen), size=(42, 56), mode="bicubic",
                                             align_corners=False).clamp(0, 1)[None]
    with torch.no_grad():
        pred = model(images)
        tokens, start = model.aggregator(images)
    extrinsic, intrinsic = pose_encoding_to_extri_intri(pred["pose_enc"], images.shape[-2:])
    io = {"images": images, **{k: pred[k] for k in OUTPUTS}, "last_tokens": tokens[-1],
          "extrinsic": extrinsic, "intrinsic": intrinsic}
    np.savez_compressed(out / "vggt_tiny.io.npz", **{k: v.numpy() for k, v in io.items()})
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY).items()}
    config = {"arch": arch, "patch_start_idx": start,
              "n_params": sum(v.numel() for v in state.values())}
    (out / "vggt_tiny.config.json").write_text(json.dumps(config, indent=1) + "\n")
    ours = load_into(VggtNet(TINY), dict(state), "golden").eval()
    with torch.no_grad():
        mine = ours(images)
    for k in OUTPUTS:
        print(f"{k}: {((mine[k] - pred[k]).abs().max() / pred[k].abs().max()).item():.2e} relative")


def full(root: Path, tsv: Path | None, hw: tuple[int, int] = (392, 518)) -> None:
    sys.path.insert(0, str(root))
    from vggt.models.vggt import VGGT as Official

    torch.manual_seed(0)
    model = Official().eval()
    if tsv is not None:
        rows = [f"{k}\t{tuple(v.shape)}\t{str(v.dtype).replace('torch.', '')}" for k, v in model.state_dict().items()]
        tsv.write_text("key\tshape\tdtype\n" + "\n".join(rows) + "\n")
    perturb(model, 1, FULL_STRENGTH)
    ours = load_into(VggtNet(VggtArch()), drop_unused(model.state_dict()), "official").eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, ours = model.to(device), ours.to(device)
    images = torch.rand(1, 2, 3, *hw, generator=torch.Generator().manual_seed(2)).to(device)
    print(f"{sum(p.numel() for p in ours.parameters()) / 1e6:.1f} M parameters (lit3d), 2 views {hw[0]}x{hw[1]} "
          f"on {device}", flush=True)
    with torch.no_grad():
        theirs, official_s = timed(model, images, device)
        mine, lit3d_s = timed(ours, images, device)
    print(f"forward seconds: official {official_s:.1f}, lit3d {lit3d_s:.1f} ({official_s / lit3d_s:.2f}x)")
    for k in OUTPUTS:
        finite = torch.isfinite(theirs[k]).float().mean().item()
        print(f"{k}: {((mine[k] - theirs[k]).abs().max() / theirs[k].abs().max()).item():.2e} relative "
              f"(max |official| {theirs[k].abs().max().item():.3g}, {100 * finite:.1f} % finite)")


def timed(model: torch.nn.Module, images: torch.Tensor, device: str) -> tuple[dict, float]:
    """``model(images)`` and its wall-clock seconds (synchronised on GPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model(images)
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of facebookresearch/vggt")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("golden").add_argument("out", type=Path)
    full_args = sub.add_parser("full")
    full_args.add_argument("--tsv", type=Path)
    full_args.add_argument("--size", default="392x518", help="HxW of the 2 views (multiples of 14)")
    args = parser.parse_args()
    if args.cmd == "golden":
        golden(args.official, args.out)
    else:
        full(args.official, args.tsv, tuple(int(v) for v in args.size.split("x")))


if __name__ == "__main__":
    main()
