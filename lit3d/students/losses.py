"""Training losses of the students: the paper's MSE, and a scene-coordinate-regression reprojection loss.

Shapes follow the batch: predicted and label world points ``(B, 3, H, W)`` in the labels' frame and unit, masks
``(B, H, W)``, intrinsics ``K_B33`` (pixels, centres at integers) and poses ``cam2world_B44`` of the (augmented)
views. Pixel thresholds are given for a 640-px-wide image and scaled with the actual width.
"""
from __future__ import annotations

import math

import torch

REFERENCE_WIDTH = 640.0
"""Image width (px) at which pixel thresholds are stated (as DSAC* and ACE state theirs)."""


def mse_loss(pred_norm_B3HW: torch.Tensor, target_norm_B3HW: torch.Tensor, weight_BHW: torch.Tensor) -> torch.Tensor:
    """The paper's loss: squared error of normalised coordinates, averaged over channels and weighted pixels."""
    sq_err_BHW = ((pred_norm_B3HW - target_norm_B3HW) ** 2).mean(1)
    return (sq_err_BHW * weight_BHW).sum() / weight_BHW.sum().clamp_min(1.0)


def camera_points(pts_world_B3HW: torch.Tensor, cam2world_B44: torch.Tensor) -> torch.Tensor:
    """World points (B, 3, H, W) in their camera's frame (B, 3, H, W)."""
    R_B33, t_B3 = cam2world_B44[:, :3, :3], cam2world_B44[:, :3, 3]
    # x_cam = R^T (x_world - t)
    return torch.einsum("bji,bjhw->bihw", R_B33, pts_world_B3HW - t_B3[:, :, None, None])


def _norm(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over channels (B, H, W), smooth at 0 (a 1e-12 floor under the root: exact labels give a zero
    gradient, not NaN); much faster on CPU than ``vector_norm`` over a strided dimension."""
    return (x_BCHW * x_BCHW).sum(1).add(1e-12).sqrt()


def reprojection_errors(pts_cam_B3HW: torch.Tensor, K_B33: torch.Tensor) -> torch.Tensor:
    """Pixel distance (B, H, W) between each camera point's projection and its own pixel centre (inf behind)."""
    B, _, H, W = pts_cam_B3HW.shape
    z_BHW = pts_cam_B3HW[:, 2]
    uvw_B3HW = torch.einsum("bij,bjhw->bihw", K_B33, pts_cam_B3HW)
    # points at or behind the camera are divided by 1 instead: finite values (and gradients) that are masked out
    z_safe_BHW = torch.where(z_BHW > 1e-6, z_BHW, torch.ones_like(z_BHW))
    uv_B2HW = uvw_B3HW[:, :2] / z_safe_BHW[:, None]
    v, u = torch.meshgrid(torch.arange(H, device=z_BHW.device, dtype=z_BHW.dtype),
                          torch.arange(W, device=z_BHW.device, dtype=z_BHW.dtype), indexing="ij")
    err_BHW = _norm(uv_B2HW - torch.stack([u, v])[None])
    return torch.where(z_BHW > 0, err_BHW, torch.full_like(err_BHW, math.inf))


def clamp_schedule(progress: float, start: float, end: float, schedule: str = "circle") -> float:
    """Soft-clamp value at training ``progress`` in [0, 1]: ``start`` at 0, ``end`` at 1.

    ``circle`` keeps it high for long and tightens late (sqrt(1 - p^2)), ``linear`` interpolates.
    """
    p = min(max(progress, 0.0), 1.0)
    if schedule == "circle":
        keep = math.sqrt(1.0 - p * p)
    elif schedule == "linear":
        keep = 1.0 - p
    else:
        raise ValueError(f"loss.schedule: unknown schedule {schedule!r}; valid: circle, linear")
    return end + (start - end) * keep


def ray_points(K_B33: torch.Tensor, cam2world_B44: torch.Tensor, depth: float, size: tuple[int, int]) -> torch.Tensor:
    """World points (B, 3, H, W) at camera depth ``depth`` on every pixel's ray."""
    H, W = size
    v, u = torch.meshgrid(torch.arange(H, device=K_B33.device, dtype=K_B33.dtype),
                          torch.arange(W, device=K_B33.device, dtype=K_B33.dtype), indexing="ij")
    pix_3HW = torch.stack([u, v, torch.ones_like(u)])
    rays_B3HW = torch.einsum("bij,jhw->bihw", torch.linalg.inv(K_B33), pix_3HW)
    pts_cam_B3HW = rays_B3HW * depth  # rays have z = 1
    R_B33, t_B3 = cam2world_B44[:, :3, :3], cam2world_B44[:, :3, 3]
    return torch.einsum("bij,bjhw->bihw", R_B33, pts_cam_B3HW) + t_B3[:, :, None, None]


def reprojection_loss(pred_world_B3HW: torch.Tensor, target_world_B3HW: torch.Tensor, valid_BHW: torch.Tensor,
                      inside_BHW: torch.Tensor, K_B33: torch.Tensor, cam2world_B44: torch.Tensor, progress: float,
                      cfg, weight_BHW: torch.Tensor | None = None,
                      image_width: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scene coordinate regression loss in the image, per pixel that shows the scene (``inside``).

    - Valid predictions (in front of the camera between ``min_depth`` and ``max_depth``, reprojecting within
      ``max_reprojection_px``): ``c * tanh(e / c)`` of the reprojection error e, c shrinking with ``progress``
      from ``clamp_px[0]`` to ``clamp_px[1]``: early on every pixel pulls, later only near-inliers refine.
    - Invalid predictions: the L1 distance to the label (where there is one, else to the point at
      ``invalid_depth`` on the pixel's ray), in pixel-equivalent units, which pulls them back to valid depths.
    - Plus ``weight_3d`` times the 3-D distance to the label in pixel-equivalent units (distance * f / label
      depth) where a label exists: the reprojection error alone leaves depth along the ray free.
    Returns the loss and detached statistics. ``cfg`` is a :class:`lit3d.config.LossConfig` (or its dict).
    ``image_width``: width of the views the pixel thresholds scale with, when the batch holds crops of them (the
    cells of :mod:`lit3d.students.buffer`); default W.
    """
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
    B, _, H, W = pred_world_B3HW.shape
    px = (image_width or W) / REFERENCE_WIDTH
    clamp = clamp_schedule(progress, get("clamp_px")[0] * px, get("clamp_px")[1] * px, get("schedule"))
    f_B = K_B33[:, 0, 0]

    pred_cam_B3HW = camera_points(pred_world_B3HW, cam2world_B44)
    err_BHW = reprojection_errors(pred_cam_B3HW, K_B33)
    z_BHW = pred_cam_B3HW[:, 2]
    ok_pred_BHW = (z_BHW > get("min_depth")) & (z_BHW < get("max_depth")) & (err_BHW < get("max_reprojection_px") * px)
    weight_BHW = inside_BHW.float() if weight_BHW is None else weight_BHW * inside_BHW
    n = weight_BHW.sum().clamp_min(1.0)

    robust_BHW = clamp * torch.tanh(torch.where(ok_pred_BHW, err_BHW, torch.zeros_like(err_BHW)) / clamp)
    # invalid predictions: pulled to the label, or to a point at a plausible depth where there is no label
    label_cam_z_BHW = camera_points(target_world_B3HW, cam2world_B44)[:, 2]
    has_label_BHW = valid_BHW & (label_cam_z_BHW > 0)
    anchor_B3HW = torch.where(has_label_BHW[:, None], target_world_B3HW,
                              ray_points(K_B33, cam2world_B44, get("invalid_depth"), (H, W)))
    anchor_z_BHW = torch.where(has_label_BHW, label_cam_z_BHW, torch.full_like(label_cam_z_BHW, get("invalid_depth")))
    to_px_BHW = f_B[:, None, None] / anchor_z_BHW.clamp_min(get("min_depth"))  # metres -> pixels at that depth
    dist_px_BHW = (pred_world_B3HW - anchor_B3HW).abs().sum(1) * to_px_BHW
    per_px_BHW = torch.where(ok_pred_BHW, robust_BHW, dist_px_BHW)
    loss = (per_px_BHW * weight_BHW).sum() / n
    stats = {"clamp_px": torch.tensor(clamp), "valid_pred": (ok_pred_BHW.float() * weight_BHW).sum() / n}
    w3 = get("weight_3d")
    if w3 > 0:
        w_label_BHW = weight_BHW * has_label_BHW
        if get("depth_3d") == "view":  # one scale per view: the 3-D term's minimiser along a ray is unweighted
            z_label_B = torch.where(has_label_BHW, label_cam_z_BHW, math.nan).flatten(1).nanmedian(1).values
            to_px_3d = (f_B / z_label_B.nan_to_num(1.0).clamp_min(get("min_depth")))[:, None, None]
        else:
            to_px_3d = to_px_BHW
        d3_px_BHW = _norm(pred_world_B3HW - target_world_B3HW) * to_px_3d
        term_3d = (d3_px_BHW * w_label_BHW).sum() / w_label_BHW.sum().clamp_min(1.0)
        loss = loss + w3 * term_3d
        stats["error_3d_px"] = term_3d.detach()
    with torch.no_grad():
        shown = err_BHW[(weight_BHW > 0) & ok_pred_BHW]
        stats["reprojection_px_median"] = shown.median() if shown.numel() else torch.tensor(math.nan)
    return loss, stats
