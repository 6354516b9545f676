"""Transformer building blocks of DUSt3R (CroCo): patch embedding, 2D RoPE, encoder and decoder blocks.

Attribute names follow the released checkpoints (``attn.qkv``, ``cross_attn.projq``, ``norm_y`` ...), so that
their state dicts load with ``strict=True``. Tokens are ``(B, N, C)`` with N = (H/p) * (W/p) in row-major order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Rope = tuple[Tensor, Tensor]
"""(cos, sin) tables of shape (B, 1, N, head_dim), from :func:`rope_tables`."""


def patch_positions(batch: int, grid_h: int, grid_w: int, device: torch.device | str) -> Tensor:
    """(B, N, 2) int64 patch positions (row y, column x), row-major like CroCo's ``PositionGetter``."""
    y, x = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
    return torch.stack([y.flatten(), x.flatten()], dim=-1).expand(batch, -1, -1)


def rope_tables(pos_BN2: Tensor, head_dim: int, base: float) -> Rope:
    """cos/sin tables of CroCo's RoPE2D: the first half of each head rotates with y, the second half with x.

    Within a half of size D, channel pairs (k, k + D/2) rotate by pos / base^(2k/D), k < D/2. The sign of the
    rotation is folded into ``sin`` (negative on the first channel of each pair), see :func:`apply_rope`.
    Computed in fp32 (bf16 angles would lose the position precision) and cast when applied.
    """
    half = head_dim // 2
    inv_freq_Q = 1.0 / base ** (torch.arange(0, half, 2, device=pos_BN2.device, dtype=torch.float32) / half)
    angle_BN2Q = pos_BN2.float()[..., None] * inv_freq_Q
    angle_BN22Q = torch.stack([angle_BN2Q, angle_BN2Q], dim=-2)  # (axis, pair half, Q)
    sign_22Q = torch.tensor([-1.0, 1.0], device=pos_BN2.device)[:, None].expand(2, 2, angle_BN2Q.shape[-1])
    return angle_BN22Q.cos().flatten(-3)[:, None], (angle_BN22Q.sin() * sign_22Q).flatten(-3)[:, None]


def apply_rope(t_BhND: Tensor, rope: Rope) -> Tensor:
    """Rotate query/key channels (B, heads, N, head_dim) by their token's 2D position.

    Per axis, with t = (a, b) halves: (a, b) -> (a cos - b sin, b cos + a sin), i.e. t * cos + swap(t) * signed sin.
    """
    cos, signed_sin = (r.to(t_BhND.dtype) for r in rope)
    swapped = t_BhND.unflatten(-1, (2, 2, -1)).flip(-2).flatten(-3)
    return t_BhND * cos + swapped * signed_sin


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (B, N, C); any H, W that are multiples of p."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img_B3HW: Tensor) -> tuple[Tensor, Tensor]:
        B, _, H, W = img_B3HW.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"DUSt3R input {H}x{W} is not a multiple of the patch size {p}")
        x_BCgh = self.proj(img_B3HW)
        return x_BCgh.flatten(2).transpose(1, 2), patch_positions(B, H // p, W // p, img_B3HW.device)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int = 0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _heads(x_BNC: Tensor, num_heads: int) -> Tensor:
    B, N, C = x_BNC.shape
    return x_BNC.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def _merge(x_BhNd: Tensor) -> Tensor:
    return x_BhNd.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on queries and keys (softmax scale head_dim^-1/2)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BNC: Tensor, rope: Rope) -> Tensor:
        B, N, C = x_BNC.shape
        q, k, v = self.qkv(x_BNC).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(apply_rope(q, rope), apply_rope(k, rope), v)
        return self.proj(_merge(out))


class CrossAttention(nn.Module):
    """Queries from one view, keys/values from the other; each side rotated by its own positions."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BNC: Tensor, y_BMC: Tensor, rope_x: Rope, rope_y: Rope) -> Tensor:
        h = self.num_heads
        q = apply_rope(_heads(self.projq(x_BNC), h), rope_x)
        k = apply_rope(_heads(self.projk(y_BMC), h), rope_y)
        out = F.scaled_dot_product_attention(q, k, _heads(self.projv(y_BMC), h))
        return self.proj(_merge(out))


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class Block(nn.Module):
    """Pre-norm ViT encoder block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x_BNC: Tensor, rope: Rope) -> Tensor:
        x_BNC = x_BNC + self.attn(self.norm1(x_BNC), rope)
        return x_BNC + self.mlp(self.norm2(x_BNC))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to the other view's (normalised) tokens, MLP; all pre-norm."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = _norm(dim)
        self.norm3 = _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = _norm(dim)

    def forward(self, x_BNC: Tensor, y_BMC: Tensor, rope_x: Rope, rope_y: Rope) -> Tensor:
        x_BNC = x_BNC + self.attn(self.norm1(x_BNC), rope_x)
        y_BMC = self.norm_y(y_BMC)
        x_BNC = x_BNC + self.cross_attn(self.norm2(x_BNC), y_BMC, rope_x, rope_y)
        return x_BNC + self.mlp(self.norm3(x_BNC))
