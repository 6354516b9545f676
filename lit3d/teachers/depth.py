"""``depth`` teacher: exact pairwise pointmaps from depth, intrinsics and poses (a geometric oracle).

Useful as the metric reference, for RGB-D datasets with poses and to test every later stage, since its outputs
are known in closed form.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lit3d.teachers import TEACHERS
from lit3d.teachers.base import Teacher
from lit3d.teachers.config import TeacherConfig


@dataclass
class DepthTeacherConfig(TeacherConfig):
    name: str = "depth"
    confidence: float = 10.0
    """Confidence given to pixels with valid depth (invalid ones get 1, DUSt3R's minimum)."""
    max_depth: float = 10.0
    """Depths beyond this (metres) are treated as invalid."""


def backproject_batch(depth_BHW: torch.Tensor, K_B33: torch.Tensor) -> torch.Tensor:
    """Camera-frame points (B, H, W, 3) of z-depth maps (same unit as the depth)."""
    B, H, W = depth_BHW.shape
    v, u = torch.meshgrid(
        torch.arange(H, dtype=depth_BHW.dtype, device=depth_BHW.device),
        torch.arange(W, dtype=depth_BHW.dtype, device=depth_BHW.device),
        indexing="ij",
    )
    fx, fy = K_B33[:, 0, 0, None, None], K_B33[:, 1, 1, None, None]
    cx, cy = K_B33[:, 0, 2, None, None], K_B33[:, 1, 2, None, None]
    return torch.stack([(u - cx) / fx * depth_BHW, (v - cy) / fy * depth_BHW, depth_BHW], dim=-1)


class DepthTeacher(Teacher):
    metric = True
    needs_depth = True
    needs_poses = True

    def __init__(self, cfg: DepthTeacherConfig):
        super().__init__()
        self.cfg = cfg

    def manifest(self) -> dict:
        return {"name": "depth", "confidence": self.cfg.confidence, "max_depth": self.cfg.max_depth}

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        # transform taking camera-j points to camera i: inv(cam2world_i) @ cam2world_j
        j2i_B44 = torch.linalg.inv(batch["cam2world_i"].double()) @ batch["cam2world_j"].double()
        for side in ("i", "j"):
            depth = batch[f"depth_{side}"].float()
            valid = torch.isfinite(depth) & (depth > 0) & (depth <= self.cfg.max_depth)
            depth = torch.where(valid, depth, torch.zeros_like(depth))
            pts = backproject_batch(depth, batch[f"K_{side}"].float())
            if side == "j":
                R, t = j2i_B44[:, :3, :3].float(), j2i_B44[:, :3, 3].float()
                pts = torch.einsum("bij,bhwj->bhwi", R, pts) + t[:, None, None, :]
                key = "pts_j_in_i"
            else:
                key = "pts_i"
            out[key] = torch.where(valid[..., None], pts, torch.zeros_like(pts))
            out[f"conf_{side}"] = torch.where(valid, torch.full_like(depth, self.cfg.confidence), torch.ones_like(depth))
            out[f"valid_{side}"] = valid
        return out


@TEACHERS.register("depth", DepthTeacherConfig)
def _build(cfg: DepthTeacherConfig) -> DepthTeacher:
    return DepthTeacher(cfg)
