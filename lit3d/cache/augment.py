"""Geometric augmentation of training views whose labels are WORLD points.

A view is rotated about its camera centre (in plane about the principal point, and optionally tilted out of plane),
rescaled and shifted. For world-coordinate labels this is exact: the label map is warped together with the image
(nearest neighbour) and its values stay unchanged, because each pixel still sees the same world point. The camera
changes with the image: a rotation ``R`` of the camera about its centre (``R_z`` for an in-plane roll about the
optical axis) needs no depth, a scale is a focal change and a shift moves the principal point, so the warp between
old and new pixels is the homography ``A = K' R K^-1`` (affine for a pure roll). The new pose is
``cam2world @ R^T``. Pixels that fall outside the source image are padding: black, invalid and ``inside = False``.

A camera that also MOVES (:func:`move_view`) sees the scene with parallax; that view is re-rendered from the labels
themselves (each labelled pixel's world point projected into the moved camera, the nearest surface winning), so it
needs labels with depth and leaves disoccluded pixels as padding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Warp:
    """One in-plane camera rotation (radians, about the optical axis), focal scale and principal-point shift (px)."""

    angle: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    pitch: float = 0.0
    """Out-of-plane rotation about the camera's x axis (radians): the view tilts up or down."""
    yaw: float = 0.0
    """Out-of-plane rotation about the camera's y axis (radians): the view pans left or right."""


@dataclass(frozen=True)
class Augmentation:
    """The geometric augmentation of training views (``loader.*`` keys of the same names)."""

    rotation_deg: float
    scale_range: tuple[float, float]
    shift: float
    tilt_deg: float = 0.0
    view_shift: float = 0.0
    view_shift_prob: float = 1.0
    """Fraction of views that are moved (the rest keep their camera centre and are only warped)."""
    view_shift_until: float = 1.0
    """Views are moved only while ``progress`` is below this fraction of training."""
    progress: torch.Tensor = field(default_factory=lambda: torch.zeros(1).share_memory_(), compare=False)
    """Fraction of training done (epoch / max_epochs), set by :class:`~lit3d.cache.datamodule.TrainingProgress`;
    in shared memory, so DataLoader workers (persistent ones too) read the value the trainer sets."""

    def __call__(self, item: dict[str, torch.Tensor], generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor]:
        """``item`` moved (when ``view_shift`` > 0, with probability ``view_shift_prob``, until ``view_shift_until``
        of training), then rotated, tilted, scaled and shifted at random."""
        moving = self.view_shift > 0 and self.progress.item() < self.view_shift_until
        # the coin is drawn only when it can come up tails, so runs with every view moved keep their random numbers
        if moving and (self.view_shift_prob >= 1 or torch.rand(1, generator=generator).item() < self.view_shift_prob):
            item = move_view(item, sample_move(self.view_shift, generator))
        size = tuple(item["image"].shape[-2:])
        return warp_view(item, sample_warp(self.rotation_deg, self.scale_range, self.shift, size, generator,
                                           self.tilt_deg))


def sample_warp(rotation_deg: float, scale_range: tuple[float, float], shift: float, size: tuple[int, int],
                generator: torch.Generator | None = None, tilt_deg: float = 0.0) -> Warp:
    """A random warp: angle uniform in +-``rotation_deg``, scale log-uniform in ``scale_range``, shift uniform in
    +-``shift`` of the image size (h, w), pitch and yaw uniform in +-``tilt_deg`` (drawn only when it is > 0, so
    that runs without tilt draw the same random numbers as before it existed)."""
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    pitch = yaw = 0.0
    if tilt_deg > 0:
        pitch, yaw = (math.radians(tilt_deg) * (2 * x - 1)
                      for x in torch.rand(2, generator=generator, dtype=torch.float64).tolist())
    return Warp(angle=math.radians(rotation_deg) * (2 * u[0] - 1), scale=math.exp(lo + (hi - lo) * u[1]),
                shift_x=shift * size[1] * (2 * u[2] - 1), shift_y=shift * size[0] * (2 * u[3] - 1),
                pitch=pitch, yaw=yaw)


def camera_rotation(angle: float, pitch: float = 0.0, yaw: float = 0.0) -> torch.Tensor:
    """(3, 3) rotation ``R`` of camera coordinates (``x_new = R x_old``): a roll of ``angle`` radians about the
    optical axis (z) after a pitch about x and a yaw about y."""
    c, s = math.cos(angle), math.sin(angle)
    R_z = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    if pitch == 0.0 and yaw == 0.0:
        return R_z
    cp, sp, cy, sy = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    R_x = torch.tensor([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]], dtype=torch.float64)
    R_y = torch.tensor([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], dtype=torch.float64)
    return R_z @ R_x @ R_y


def warp_camera(K_33: torch.Tensor, cam2world_44: torch.Tensor, warp: Warp
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """New intrinsics, new camera-to-world pose and the pixel map ``A_33`` (old pixel -> new pixel), float64."""
    K = K_33.double()
    R = camera_rotation(warp.angle, warp.pitch, warp.yaw)
    K_new = K.clone()
    K_new[:2, :2] *= warp.scale  # fx, fy (and any skew) scale about the principal point
    K_new[0, 2] += warp.shift_x
    K_new[1, 2] += warp.shift_y
    A_33 = K_new @ R @ torch.linalg.inv(K)
    undo_44 = torch.eye(4, dtype=torch.float64)
    undo_44[:3, :3] = R.T  # x_cam_old = R^T x_cam_new
    return K_new, cam2world_44.double() @ undo_44, A_33


def source_pixels(A_33: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w, 2) source pixel (u, v) of every new pixel centre: ``A^-1 p`` (pixel centres at integers); a new ray
    that points behind the source camera (only possible when tilted) gets a position far outside the image."""
    h, w = size
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    p_hw3 = torch.stack([u, v, torch.ones_like(u)], -1)
    src_hw3 = p_hw3 @ torch.linalg.inv(A_33).T
    ahead_hw1 = src_hw3[..., 2:] > 1e-9
    return torch.where(ahead_hw1, src_hw3[..., :2] / torch.where(ahead_hw1, src_hw3[..., 2:], 1.0), -1e9)


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
    if warp.pitch or warp.yaw:  # a tilt changes camera depths (a roll keeps them): the labels' z in the new camera
        pts_cam_3HW = torch.einsum("ji,jhw->ihw", cam2world_new[:3, :3],
                                   out["pts_world"].double() - cam2world_new[:3, 3, None, None])
        out["depth"] = torch.where(out["depth"] > 0, pts_cam_3HW[2].to(out["depth"].dtype), 0.0)
    out["inside"] = inside & take(item.get("inside", torch.ones(H, W, dtype=torch.bool)), False)
    out["K"] = K_new.to(item["K"].dtype)
    out["cam2world"] = cam2world_new.to(item["cam2world"].dtype)
    return out


def sample_move(view_shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random camera offset (3,) in the camera's own axes, each uniform in +-``view_shift`` (a fraction of the
    view's median label depth, see :func:`move_view`)."""
    return view_shift * (2 * torch.rand(3, generator=generator, dtype=torch.float64) - 1)


OCCLUSION_TOLERANCE = 0.05
"""Relative depth margin: a pixel's nearest-rounded label is kept only when no surface within one pixel (its 2x2
splat footprint) is nearer by more than this; otherwise it would show a point hidden behind a crack."""


def move_view(item: dict[str, torch.Tensor], offset_3: torch.Tensor) -> dict[str, torch.Tensor]:
    """``item`` seen from its camera moved by ``offset_3`` times the median depth of its labels (camera axes, so
    the offset is in the labels' unit whatever it is), same orientation and K: a view with parallax, re-rendered by
    projecting every labelled pixel's world point into the moved camera.

    Each new pixel takes the label (values unchanged), confidence and colour of the nearest point whose projection
    rounds to it. A pixel with no such point but one within its 2x2 splat footprint (a crack where the surface
    stretches) takes that point's colour and shows the scene, but has no label; one with nothing (disocclusions,
    source pixels without a label, leaving the frame) is padding: black, invalid, ``inside = False``.
    """
    H, W = item["image"].shape[-2:]
    cam2world = item["cam2world"].double()
    src_N = (item["valid"] & item.get("inside", torch.ones(H, W, dtype=torch.bool))).reshape(-1)
    out = dict(item)
    if not src_N.any():
        return out
    pts_N3 = item["pts_world"].reshape(3, -1)[:, src_N].T.double()
    z_old_N = ((pts_N3 - cam2world[:3, 3]) @ cam2world[:3, :3])[:, 2]
    cam2world_new = cam2world.clone()
    cam2world_new[:3, 3] += cam2world[:3, :3] @ (offset_3.double() * z_old_N.median())
    cam_N3 = (pts_N3 - cam2world_new[:3, 3]) @ cam2world_new[:3, :3]  # R^T (x - t), as rows
    z_N = cam_N3[:, 2]
    uv_N2 = (cam_N3 @ item["K"].double().T)[:, :2] / torch.where(z_N > 1e-9, z_N, 1.0)[:, None]
    ahead_N = z_N > 1e-9

    def splat(iu_M: torch.Tensor, iv_M: torch.Tensor, point_M: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Z-buffer of points ``point_M`` landing on new pixels (iu, iv): the nearest depth per new pixel (inf where
        none) and that point's index (-1 where none)."""
        keep = ahead_N[point_M] & (iu_M >= 0) & (iu_M < W) & (iv_M >= 0) & (iv_M < H)
        # points that miss the image go to one extra bin instead of being masked out (cheaper)
        pix = torch.where(keep, iv_M * W + iu_M, H * W)
        z = z_N[point_M]
        zmin = torch.full((H * W + 1,), math.inf, dtype=z.dtype).scatter_reduce(0, pix, z, "amin")
        win = torch.where(z == zmin[pix], point_M, -1)  # ties: the highest point index wins, deterministically
        pick = torch.full((H * W + 1,), -1, dtype=torch.long).scatter_reduce(0, pix, win, "amax")
        return zmin[:-1], pick[:-1]

    points_N = torch.arange(len(z_N))
    near_z, near_pick = splat(torch.round(uv_N2[:, 0]).long(), torch.round(uv_N2[:, 1]).long(), points_N)
    # the 2x2 footprint: every point also lands on the four pixels around its projection
    u0_N, v0_N = torch.floor(uv_N2[:, 0]).long(), torch.floor(uv_N2[:, 1]).long()
    foot_z, foot_pick = splat(torch.cat([u0_N, u0_N + 1, u0_N, u0_N + 1]), torch.cat([v0_N, v0_N, v0_N + 1, v0_N + 1]),
                              points_N.repeat(4))
    labelled = (near_pick >= 0) & (near_z <= foot_z * (1 + OCCLUSION_TOLERANCE))
    shown = labelled | (foot_pick >= 0)
    pick = torch.where(labelled, near_pick, foot_pick).clamp_min(0)
    src_index = torch.nonzero(src_N)[:, 0][pick]  # flat source pixel of every new pixel's point

    def take(t: torch.Tensor, where: torch.Tensor, fill) -> torch.Tensor:
        vals = t.reshape(*t.shape[:-2], H * W)[..., src_index]
        return torch.where(where, vals, torch.as_tensor(fill, dtype=t.dtype)).reshape(t.shape)

    out["image"] = take(item["image"], shown, 0.0)
    out["pts_world"] = take(item["pts_world"], labelled, 0.0)
    out["conf"] = take(item["conf"], labelled, 0.0)
    out["valid"] = labelled.reshape(H, W)
    out["depth"] = torch.where(labelled, near_z, 0.0).to(item["depth"].dtype).reshape(H, W)
    out["inside"] = shown.reshape(H, W)
    out["cam2world"] = cam2world_new.to(item["cam2world"].dtype)
    return out
