"""``vit``: encoder-decoder Vision Transformer over non-overlapping patches + ConvHead.

Patches are unfolded and linearly embedded, a class token and learned positional embeddings are added, then
``depth`` pre-norm encoder blocks and ``depth`` decoder blocks of the same form; patch tokens go back to a grid
and the convolutional head upsamples them to a point per pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from lit3d.students import STUDENTS
from lit3d.students.config import StudentConfig
from lit3d.students.head import ConvHead, normalize_image


@dataclass
class ViTConfig(StudentConfig):
    name: str = "vit"
    patch_size: int = 16
    """Side of the square patches in pixels (a power of two; inputs are padded to a multiple of it)."""
    depth: int = 6
    """Number of encoder blocks, and of decoder blocks."""
    num_heads: int = 4
    """Attention heads per block; must divide ``latent_dim``."""
    latent_dim: int = 256
    """Token width."""
    mlp_ratio: float = 2.0
    """Hidden width of each block's MLP, as a multiple of ``latent_dim``."""
    dropout: float = 0.0
    """Dropout in the MLPs and on the embeddings."""
    head_width: int = 32
    """Channel width of the head at full resolution (twice that at coarser strides)."""


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` (fused kernels on CPU and GPU)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        B, N, D = x_BND.shape
        q, k, v = self.qkv(x_BND).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out_BhNd = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out_BhNd.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x)) with GELU and dropout."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x_BND: torch.Tensor) -> torch.Tensor:
        x_BND = x_BND + self.attn(self.norm1(x_BND))
        return x_BND + self.mlp(self.norm2(x_BND))


class ViTStudent(nn.Module):
    def __init__(self, cfg: ViTConfig, img_size: tuple[int, int]):
        super().__init__()
        if cfg.latent_dim % cfg.num_heads:
            raise ValueError(f"student.latent_dim={cfg.latent_dim} is not divisible by student.num_heads={cfg.num_heads}")
        self.cfg = cfg
        p = cfg.patch_size
        self.grid = (-(-img_size[0] // p), -(-img_size[1] // p))  # ceil: inputs are padded to whole patches
        n_tokens = self.grid[0] * self.grid[1]
        self.patch_embed = nn.Linear(3 * p * p, cfg.latent_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.latent_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens + 1, cfg.latent_dim) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.Sequential(*[Block(cfg.latent_dim, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)])
        self.decoder = nn.Sequential(*[Block(cfg.latent_dim, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(cfg.latent_dim)
        self.head = ConvHead(cfg.latent_dim, p, width=cfg.head_width, out_stride=cfg.head_stride,
                             per_cell=cfg.output == "cells")

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        B, _, H, W = img_B3HW.shape
        p, (gh, gw) = self.cfg.patch_size, self.grid
        x = normalize_image(img_B3HW, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        x = F.pad(x, (0, gw * p - W, 0, gh * p - H))
        patches_BNP = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, gh*gw, 3*p*p)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), self.patch_embed(patches_BNP)], dim=1)
        tokens = self.norm(self.decoder(self.encoder(self.drop(tokens + self.pos_embed))))
        grid_BDhw = tokens[:, 1:].transpose(1, 2).reshape(B, -1, gh, gw)
        return self.head(grid_BDhw, (gh * p, gw * p))[..., :H, :W]


@STUDENTS.register("vit", ViTConfig)
def _build(cfg: ViTConfig, img_size: tuple[int, int] | None = None) -> ViTStudent:
    if img_size is None:
        raise ValueError("the vit student needs the input size (its positional embeddings are learned per patch)")
    return ViTStudent(cfg, tuple(img_size))
