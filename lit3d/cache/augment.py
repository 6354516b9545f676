"""Geometric augmentation of training views whose labels are WORLD points.

A view is rotated in plane about its principal point, rescaled and shifted. For world-coordinate labels this is
exact: the label map is warped together with the image (nearest neighbour) and its values stay unchanged, because
each pixel still sees the same world point. The camera changes with the image: an in-plane rotation about the
principal point is a rotation ``R_z`` of the camera about its optical axis, a scale is a focal change and a shift
moves the principal point, so the warp between old and new pixels is the homography ``A = K' R_z K^-1`` (affine,
since ``R_z`` keeps z). The new pose is ``cam2world @ R_z^T``; camera depths are unchanged. Pixels that fall
outside the source image are padding: black, invalid and marked ``inside = False``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Warp:
    """One in-plane camera rotation (radians, about the optical axis), focal scale and principal-point shift (px)."""

    angle: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0


def sample_warp(rotation_deg: float, scale_range: tuple[float, float], shift: float, size: tuple[int, int],
                generator: torch.Generator | None = None) -> Warp:
    """A random warp: angle uniform in +-``rotation_deg``, scale log-uniform in ``scale_range``, shift uniform in
    +-``shift`` of the image size (h, w)."""
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    return Warp(angle=math.radians(rotation_deg) * (2 * u[0] - 1), scale=math.exp(lo + (hi - lo) * u[1]),
                shift_x=shift * size[1] * (2 * u[2] - 1), shift_y=shift * size[0] * (2 * u[3] - 1))


def camera_rotation(angle: float) -> torch.Tensor:
    """(3, 3) rotation of camera coordinates about the optical axis (z) by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def warp_camera(K_33: torch.Tensor, cam2world_44: torch.Tensor, warp: Warp
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """New intrinsics, new camera-to-world pose and the pixel map ``A_33`` (old pixel -> new pixel), float64."""
    K = K_33.double()
    R_z = camera_rotation(warp.angle)
    K_new = K.clone()
    K_new[:2, :2] *= warp.scale  # fx, fy (and any skew) scale about the principal point
    K_new[0, 2] += warp.shift_x
    K_new[1, 2] += warp.shift_y
    A_33 = K_new @ R_z @ torch.linalg.inv(K)
    undo_44 = torch.eye(4, dtype=torch.float64)
    undo_44[:3, :3] = R_z.T  # x_cam_old = R_z^T x_cam_new
    return K_new, cam2world_44.double() @ undo_44, A_33


def source_pixels(A_33: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w, 2) source pixel (u, v) of every new pixel centre: ``A^-1 p`` (pixel centres at integers)."""
    h, w = size
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    p_hw3 = torch.stack([u, v, torch.ones_like(u)], -1)
    src_hw3 = p_hw3 @ torch.linalg.inv(A_33).T
    return src_hw3[..., :2] / src_hw3[..., 2:]


def warp_view(item: dict[str, torch.Tensor], warp: Warp) -> dict[str, torch.Tensor]:
    """``item`` (a dataset item: image (3, H, W) float, pts_world (3, H, W), conf / valid / depth (H, W), K, cam2world)
    seen through ``warp``, at the same size. Image bilinear, labels nearest, padding invalid."""
    H, W = item["image"].shape[-2:]
    K_new, cam2world_new, A_33 = warp_camera(item["K"], item["cam2world"], warp)
    src_hw2 = source_pixels(A_33, (H, W))
    # image: bilinear, zeros outside (grid_sample's align_corners=True puts -1/+1 on the first/last pixel centre)
    grid = torch.stack([src_hw2[..., 0] / max(W - 1, 1), src_hw2[..., 1] / max(H - 1, 1)], -1) * 2 - 1
    image = F.grid_sample(item["image"][None].float(), grid[None].float(), mode="bilinear", padding_mode="zeros",
                          align_corners=True)[0]
    # labels: the nearest source pixel, when it exists
    iu, iv = torch.round(src_hw2[..., 0]).long(), torch.round(src_hw2[..., 1]).long()
    inside = (iu >= 0) & (iu < W) & (iv >= 0) & (iv < H)
    flat = (iv.clamp(0, H - 1) * W + iu.clamp(0, W - 1)).view(-1)
    out = dict(item)

    def take(t: torch.Tensor, fill) -> torch.Tensor:
        vals = t.reshape(*t.shape[:-2], H * W)[..., flat].reshape(t.shape)
        return torch.where(inside, vals, torch.as_tensor(fill, dtype=t.dtype))

    out["image"] = image.clamp(0, 1)
    out["pts_world"] = take(item["pts_world"], 0.0)
    out["conf"] = take(item["conf"], 0.0)
    out["valid"] = take(item["valid"], False)
    out["depth"] = take(item["depth"], 0.0)
    out["inside"] = inside & take(item.get("inside", torch.ones(H, W, dtype=torch.bool)), False)
    out["K"] = K_new.to(item["K"].dtype)
    out["cam2world"] = cam2world_new.to(item["cam2world"].dtype)
    return out
