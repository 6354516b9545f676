"""VGGT (Wang et al., CVPR 2025) in plain PyTorch: N views -> cameras, depth maps and pointmaps in view 0's frame.

Module and parameter names follow the released ``facebook/VGGT-1B`` state dict (``aggregator.frame_blocks.3.attn.
q_norm.weight``, ``depth_head.scratch.refinenet4.out_conv.bias`` ...), so it loads strictly; the tracking head
(``track_head.*``) is not built and its tensors are dropped when loading (:func:`drop_unused`).

Shapes: ``B`` scenes, ``S`` views, ``P`` tokens per view, ``C`` width; images (B, S, 3, H, W) in [0, 1] with H and W
multiples of the patch size.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit3d.teachers.dust3r.layers import Mlp, PatchEmbed, _merge, apply_rope, patch_positions, rope_tables

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNUSED_PREFIXES = ("track_head.",)
"""Released tensors of heads lit3d does not build (dropped before strict loading)."""


@dataclass(frozen=True)
class VggtArch:
    """VGGT hyperparameters (defaults: the released VGGT-1B); widths are channels, sizes pixels."""

    img_size: int = 518
    """Square image side the DINOv2 position embedding is stored for (interpolated to other grids)."""
    patch_size: int = 14
    embed_dim: int = 1024
    """Width of the DINOv2 patch embedder and of the aggregator (the heads read 2 x this: frame + global)."""
    dino_depth: int = 24
    """Blocks of the DINOv2 ViT-L/14 patch embedder."""
    dino_num_heads: int = 16
    depth: int = 24
    """Frame/global attention block pairs of the aggregator."""
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    rope_freq: float = 100.0
    camera_depth: int = 4
    """Transformer blocks of the camera head's trunk."""
    camera_num_heads: int = 16
    dpt_features: int = 256
    """DPT fusion width."""
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    """DPT widths of the 4 tapped layers."""
    dpt_layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    """Aggregator block pairs whose outputs feed the DPT heads."""

    def __post_init__(self) -> None:
        if (self.embed_dim // self.num_heads) % 4 or self.embed_dim % self.num_heads:
            raise ValueError(f"VGGT embed_dim {self.embed_dim} / {self.num_heads} heads must give a head dim "
                             "divisible by 4 (2D RoPE)")
        if max(self.dpt_layers) >= self.depth:
            raise ValueError(f"VGGT dpt_layers {self.dpt_layers} must be below depth {self.depth}")

    def replace(self, **changes) -> "VggtArch":
        return dataclasses.replace(self, **changes)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Self-attention; optional LayerNorm on each head's queries and keys (qk-norm), then optional 2D RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        if qk_norm:
            self.q_norm = nn.LayerNorm(dim // num_heads)
            self.k_norm = nn.LayerNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BNC: Tensor, rope=None) -> Tensor:
        B, N, C = x_BNC.shape
        q, k, v = self.qkv(x_BNC).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class Block(nn.Module):
    """Pre-norm transformer block with layer scale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: float, norm_eps: float = 1e-5,
                 qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm)
        self.ls1 = LayerScale(dim, layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layer_scale)

    def forward(self, x: Tensor, rope=None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    """DINOv2 ViT with register tokens (``dinov2_vitl14_reg`` at full size); returns normalised patch tokens."""

    def __init__(self, arch: VggtArch):
        super().__init__()
        C, grid = arch.embed_dim, arch.img_size // arch.patch_size
        self.grid = grid
        self.patch_embed = PatchEmbed(arch.patch_size, C)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, C))
        self.register_tokens = nn.Parameter(torch.zeros(1, arch.num_register_tokens, C))
        self.mask_token = nn.Parameter(torch.zeros(1, C))  # training-time masking only; kept for the names
        self.blocks = nn.ModuleList(Block(C, arch.dino_num_heads, arch.mlp_ratio, 1.0, norm_eps=1e-6)
                                    for _ in range(arch.dino_depth))
        self.norm = nn.LayerNorm(C, eps=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """(1, 1 + gh*gw, C): the stored square grid, resized bicubically (antialiased) to (gh, gw) when different."""
        if (grid_h, grid_w) == (self.grid, self.grid):
            return self.pos_embed
        pe = self.pos_embed.float()
        C = pe.shape[-1]
        patch = pe[:, 1:].reshape(1, self.grid, self.grid, C).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        return torch.cat([pe[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, C)], 1).to(self.pos_embed.dtype)

    def forward(self, img_B3HW: Tensor) -> Tensor:
        p = self.patch_embed.patch_size
        x, _ = self.patch_embed(img_B3HW)
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], 1)
        x = x + self.position_embedding(img_B3HW.shape[-2] // p, img_B3HW.shape[-1] // p).to(x.dtype)
        x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], 1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.register_tokens.shape[1]:]


def first_and_others(token_12XC: Tensor, B: int, S: int) -> Tensor:
    """(B*S, X, C): slot 0 of a (1, 2, X, C) token pair for each scene's first view, slot 1 for the others."""
    t = token_12XC
    return torch.cat([t[:, :1].expand(B, 1, *t.shape[2:]), t[:, 1:].expand(B, S - 1, *t.shape[2:])], 1).flatten(0, 1)


class Aggregator(nn.Module):
    """Patch tokens + camera and register tokens, then alternating frame (per view) and global (all views) blocks."""

    def __init__(self, arch: VggtArch):
        super().__init__()
        C = arch.embed_dim
        self.arch = arch
        self.patch_embed = DinoV2(arch)
        self.frame_blocks = nn.ModuleList(Block(C, arch.num_heads, arch.mlp_ratio, 0.01, qk_norm=True)
                                          for _ in range(arch.depth))
        self.global_blocks = nn.ModuleList(Block(C, arch.num_heads, arch.mlp_ratio, 0.01, qk_norm=True)
                                           for _ in range(arch.depth))
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, C))
        self.register_token = nn.Parameter(torch.zeros(1, 2, arch.num_register_tokens, C))

    @property
    def patch_start(self) -> int:
        """Index of the first patch token (after the camera token and the register tokens)."""
        return 1 + self.arch.num_register_tokens

    def forward(self, images_BS3HW: Tensor, keep: set[int]) -> dict[int, Tensor]:
        """Outputs (B, S, P, 2C: frame block output | global block output) of the block pairs in ``keep``."""
        B, S, _, H, W = images_BS3HW.shape
        p = self.arch.patch_size
        if H % p or W % p:
            raise ValueError(f"VGGT input {H}x{W} is not a multiple of the patch size {p}")
        mean, std = (torch.tensor(v, dtype=images_BS3HW.dtype, device=images_BS3HW.device).view(3, 1, 1)
                     for v in (IMAGENET_MEAN, IMAGENET_STD))
        x = ((images_BS3HW - mean) / std).flatten(0, 1)
        patches = self.patch_embed(x)
        tokens = torch.cat([first_and_others(self.camera_token, B, S), first_and_others(self.register_token, B, S),
                            patches], 1)
        P, C = tokens.shape[1:]
        # patches at (row, col) + 1, camera and register tokens at 0
        pos = patch_positions(B * S, H // p, W // p, x.device) + 1
        pos = torch.cat([torch.zeros(B * S, self.patch_start, 2, dtype=pos.dtype, device=pos.device), pos], 1)
        rope_frame = rope_tables(pos, C // self.arch.num_heads, self.arch.rope_freq)
        rope_global = tuple(t.reshape(B, 1, S * P, -1) for t in rope_frame)
        out = {}
        for i, (frame_block, global_block) in enumerate(zip(self.frame_blocks, self.global_blocks)):
            tokens = frame_block(tokens.reshape(B * S, P, C), rope_frame)
            frame_out = tokens.view(B, S, P, C)
            tokens = global_block(tokens.reshape(B, S * P, C), rope_global)
            if i in keep:
                out[i] = torch.cat([frame_out, tokens.view(B, S, P, C)], -1)
        return out


class CameraHead(nn.Module):
    """Camera tokens -> pose encoding (translation 3, quaternion xyzw 4, field of view (y, x) 2), refined 4 times."""

    POSE_DIM = 9

    def __init__(self, arch: VggtArch):
        super().__init__()
        dim = 2 * arch.embed_dim
        self.trunk = nn.Sequential(*(Block(dim, arch.camera_num_heads, arch.mlp_ratio, 0.01)
                                     for _ in range(arch.camera_depth)))
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, self.POSE_DIM))
        self.embed_pose = nn.Linear(self.POSE_DIM, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, self.POSE_DIM)

    def forward(self, tokens_BSPC: Tensor, iterations: int = 4) -> Tensor:
        """(B, S, 9) pose encoding of the last refinement (field of view through ReLU)."""
        cam = self.token_norm(tokens_BSPC[:, :, 0])
        raw = None
        for _ in range(iterations):
            previous = self.empty_pose_tokens.expand(*cam.shape[:2], -1) if raw is None else raw
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(previous)).chunk(3, dim=-1)
            x = cam + gate * (self.adaln_norm(cam) * (1 + scale) + shift)
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw = delta if raw is None else raw + delta
        return torch.cat([raw[..., :7], F.relu(raw[..., 7:])], -1)


class ResidualConvUnit(nn.Module):
    """relu -> conv3x3 -> relu -> conv3x3, added to relu(input) (the released block's in-place ReLU)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FusionBlock(nn.Module):
    def __init__(self, dim: int, has_skip: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(dim, dim, 1)
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(dim)
        self.resConfUnit2 = ResidualConvUnit(dim)

    def forward(self, x: Tensor, skip: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        return self.out_conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


def uv_embedding(h: int, w: int, aspect: float, channels: int, dtype: torch.dtype, device) -> Tensor:
    """(channels, h, w) sin/cos embedding of normalised pixel coordinates (u, v), scaled by 0.1.

    u spans +-aspect/diag and v +-1/diag (diag = sqrt(aspect^2 + 1)) at cell centres; each coordinate gets
    channels/2 values: sin then cos of coord / 100^(2k/(channels/2)).
    """
    diag = math.sqrt(aspect**2 + 1)
    sx, sy = aspect / diag, 1 / diag
    u = torch.linspace(-sx * (w - 1) / w, sx * (w - 1) / w, w, dtype=dtype, device=device)
    v = torch.linspace(-sy * (h - 1) / h, sy * (h - 1) / h, h, dtype=dtype, device=device)
    uu, vv = torch.meshgrid(u, v, indexing="xy")  # (h, w)
    half = channels // 2
    omega = 1.0 / 100.0 ** (torch.arange(half // 2, dtype=torch.float64, device=device) / (half / 2))

    def embed(coord: Tensor) -> Tensor:
        angle = coord.reshape(-1, 1).double() * omega
        return torch.cat([angle.sin(), angle.cos()], 1).float()

    emb = torch.cat([embed(uu), embed(vv)], 1).view(h, w, channels)
    return 0.1 * emb.permute(2, 0, 1).to(dtype)


class DPTHead(nn.Module):
    """Dense head on 4 aggregator layers: (B, S, H, W, out_dim - 1) values and (B, S, H, W) confidence (1 + exp)."""

    def __init__(self, arch: VggtArch, out_dim: int, activation: str):
        super().__init__()
        dim_in, oc, feat = 2 * arch.embed_dim, arch.dpt_out_channels, arch.dpt_features
        self.layers, self.patch_size, self.activation = arch.dpt_layers, arch.patch_size, activation
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList([nn.ConvTranspose2d(oc[0], oc[0], 4, stride=4),
                                            nn.ConvTranspose2d(oc[1], oc[1], 2, stride=2), nn.Identity(),
                                            nn.Conv2d(oc[3], oc[3], 3, stride=2, padding=1)])
        self.scratch = nn.Module()
        for i, c in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, feat, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(feat, has_skip=i != 4))
        self.scratch.output_conv1 = nn.Conv2d(feat, feat // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(nn.Conv2d(feat // 2, 32, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(32, out_dim, 1))

    def forward(self, tokens: dict[int, Tensor], patch_start: int, H: int, W: int, views_per_pass: int = 8
                ) -> tuple[Tensor, Tensor]:
        S = tokens[self.layers[0]].shape[1]
        outs = [self._views(tokens, patch_start, H, W, s, min(s + views_per_pass, S))
                for s in range(0, S, views_per_pass)]
        return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1)

    def _views(self, tokens: dict[int, Tensor], patch_start: int, H: int, W: int, s0: int, s1: int
               ) -> tuple[Tensor, Tensor]:
        gh, gw = H // self.patch_size, W // self.patch_size
        feats = []
        for k, layer in enumerate(self.layers):
            x = tokens[layer][:, s0:s1, patch_start:]
            B, S = x.shape[:2]
            x = self.norm(x.flatten(0, 1)).permute(0, 2, 1).reshape(B * S, -1, gh, gw)
            x = self.projects[k](x)
            x = x + uv_embedding(gh, gw, W / H, x.shape[1], x.dtype, x.device)
            feats.append(self.resize_layers[k](x))
        sc = self.scratch
        l1, l2, l3, l4 = (getattr(sc, f"layer{i}_rn")(f) for i, f in enumerate(feats, start=1))
        x = sc.refinenet4(l4, size=l3.shape[-2:])
        x = sc.refinenet3(x, l3, size=l2.shape[-2:])
        x = sc.refinenet2(x, l2, size=l1.shape[-2:])
        x = sc.output_conv1(sc.refinenet1(x, l1))
        x = F.interpolate(x, size=(gh * self.patch_size, gw * self.patch_size), mode="bilinear", align_corners=True)
        x = x + uv_embedding(x.shape[-2], x.shape[-1], W / H, x.shape[1], x.dtype, x.device)
        x = sc.output_conv2(x).permute(0, 2, 3, 1)
        values, conf = x[..., :-1], 1 + x[..., -1].exp()
        if self.activation == "exp":
            values = values.exp()
        else:  # inv_log
            values = values.sign() * values.abs().expm1()
        return values.unflatten(0, (B, S)), conf.unflatten(0, (B, S))


class VggtNet(nn.Module):
    """Aggregator + camera, depth and point heads (the released model without its tracking head)."""

    def __init__(self, arch: VggtArch = VggtArch()):
        super().__init__()
        self.arch = arch
        self.aggregator = Aggregator(arch)
        self.camera_head = CameraHead(arch)
        self.point_head = DPTHead(arch, 4, "inv_log")
        self.depth_head = DPTHead(arch, 2, "exp")

    def init_weights(self, seed: int = 0) -> "VggtNet":
        """Random weights (tests, benchmarks): truncated-normal linears, small special tokens, as the release's init."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("gamma"):
                    p.fill_(1.0 if ".patch_embed." in name else 0.01)
                elif p.dim() > 1 and "token" not in name:
                    p.copy_(torch.randn(p.shape, generator=gen).clamp(-2, 2) * 0.02)
                elif "token" in name or "pos_embed" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                elif "norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
        return self

    def forward(self, images_BS3HW: Tensor) -> dict[str, Tensor]:
        """``pose_enc`` (B, S, 9), ``depth`` (B, S, H, W, 1), ``depth_conf``, ``world_points`` (B, S, H, W, 3),
        ``world_points_conf`` (B, S, H, W). Only the aggregator runs under an enclosing autocast; the heads run in
        fp32, as released."""
        if images_BS3HW.dim() == 4:
            images_BS3HW = images_BS3HW[None]
        H, W = images_BS3HW.shape[-2:]
        keep = set(self.arch.dpt_layers) | {self.arch.depth - 1}
        tokens = self.aggregator(images_BS3HW, keep)
        start = self.aggregator.patch_start
        with torch.autocast(images_BS3HW.device.type, enabled=False):
            tokens = {k: v.float() for k, v in tokens.items()}
            out = {"pose_enc": self.camera_head(tokens[self.arch.depth - 1])}
            out["depth"], out["depth_conf"] = self.depth_head(tokens, start, H, W)
            out["world_points"], out["world_points_conf"] = self.point_head(tokens, start, H, W)
        return out


def quaternion_to_matrix(q_XYZW: Tensor) -> Tensor:
    """(..., 3, 3) rotation of (possibly unnormalised) scalar-last quaternions."""
    x, y, z, w = q_XYZW.unbind(-1)
    s = 2.0 / (q_XYZW * q_XYZW).sum(-1)
    rows = (1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
            s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
            s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y))
    return torch.stack(rows, -1).unflatten(-1, (3, 3))


def decode_pose(pose_enc: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pose encoding (..., 9) -> world-to-camera (..., 4, 4) (OpenCV axes) and intrinsics (..., 3, 3) in pixels.

    As released: focal lengths from the fields of view, principal point at (W/2, H/2).
    """
    world2cam = torch.zeros(*pose_enc.shape[:-1], 4, 4, dtype=pose_enc.dtype, device=pose_enc.device)
    world2cam[..., :3, :3] = quaternion_to_matrix(pose_enc[..., 3:7])
    world2cam[..., :3, 3] = pose_enc[..., :3]
    world2cam[..., 3, 3] = 1
    K = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    K[..., 0, 0] = (width / 2) / torch.tan(pose_enc[..., 8] / 2)
    K[..., 1, 1] = (height / 2) / torch.tan(pose_enc[..., 7] / 2)
    K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = width / 2, height / 2, 1
    return world2cam, K


def drop_unused(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The released state dict without the heads lit3d does not build (``track_head``)."""
    return {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
