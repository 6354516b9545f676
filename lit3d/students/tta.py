"""Test-time augmentation: a student's world points averaged over rotated and zoomed copies of its input image.

A world point does not move when the image does (why geometric augmentation is valid for world labels,
:mod:`lit3d.cache.augment`): the student's prediction on a copy of the image rolled by ``angle`` and zoomed by
``scale`` about the image centre, read back at the position each original pixel moved to, estimates the same world
point. Averaging those estimates over a few copies cancels much of the error that depends on the exact view, which
the training augmentation made the student see rolled and zoomed within its ranges. The README measures it.

Pixel centres are at integer coordinates; the warp of a copy maps an original pixel ``p`` to
``c + scale * R(angle) (p - c)``, ``c`` the image centre: for square pixels and a centred principal point it is the
roll-and-zoom camera of :func:`lit3d.cache.augment.warp_camera` (an off-centre principal point adds a shift, which
training covers too). Where a copy does not see an original pixel (its corners leave the frame when rolled or
zoomed in) the pixel averages the copies that do; the unwarped image is always one of them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
import torch.nn.functional as F


@dataclass
class TestTimeOptions:
    """Options of the commands that predict points for localization (``evaluate``, ``localize``)."""

    __test__ = False  # a name pytest would otherwise collect

    tta: bool = True
    """Average the student's points over rolled and zoomed copies of each image (every ``tta_rotations_deg`` x
    ``tta_scales``, about the image centre; ``lit3d.students.tta``): a ninefold forward for more precise points.
    false = one forward per image, as the exported student alone gives."""
    tta_rotations_deg: list[float] = field(default_factory=lambda: [-10.0, 0.0, 10.0])
    """In-plane rotations of the copies, degrees (inside the training's ``loader.rotation_deg``, 15)."""
    tta_scales: list[float] = field(default_factory=lambda: [0.85, 1.0, 1.18])
    """Zooms of the copies (inside the training's ``loader.scale_range``, 2/3 to 3/2)."""
    tta_reduce: str = "mean"
    """How a pixel's estimates from the copies that see it become one point: mean, or median (per coordinate; the
    lower middle value where an even number of copies sees the pixel), which ignores a copy far off the others."""
    tta_original: bool = True
    """Count the unwarped image's points among a pixel's estimates. false (a diagnostic) scores the copies alone:
    a pixel takes the copies that see it, and the unwarped image's points only where none does; with one rotation
    and one scale (``tta_rotations_deg=[10] tta_scales=[1]``) that scores a single copy."""

    ensemble: list[str] = field(default_factory=list)
    """Run directories of further students trained on the same label cache (e.g. other seeds): each pixel's point
    is the mean of every student's (each over the copies when ``tta`` is on), one forward per student
    (``lit3d.students.ensemble``)."""

    def __post_init__(self) -> None:
        similarity_warps(self.tta_rotations_deg, self.tta_scales)  # bad values fail where the options are read
        if self.tta_reduce not in REDUCTIONS:
            raise ValueError(f"test-time augmentation: invalid value for 'tta_reduce': {self.tta_reduce!r}; "
                             f"valid values: {', '.join(REDUCTIONS)}")

    def views(self) -> int:
        """Forwards per image: 1 without test-time augmentation."""
        return len(similarity_warps(self.tta_rotations_deg, self.tta_scales)) if self.tta else 1

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model``, behind :class:`TestTimeAugmentation` when ``tta`` is on."""
        return (TestTimeAugmentation(model, self.tta_rotations_deg, self.tta_scales, self.tta_reduce,
                                     self.tta_original) if self.tta else model)

    def record(self) -> dict[str, object]:
        """How the copies were combined, as the commands record it (``none`` for both without test-time
        augmentation), and the further students averaged in (``none``: the run's alone)."""
        return {"tta_reduce": self.tta_reduce if self.tta else "none",
                "tta_original": self.tta_original if self.tta else "none",
                "ensemble": ",".join(self.ensemble) or "none"}


REDUCTIONS = ("mean", "median")
"""Values of ``TestTimeOptions.tta_reduce``."""


def similarity_warps(rotations_deg: Sequence[float], scales: Sequence[float]) -> list[tuple[float, float]]:
    """Every (angle in radians, scale) pair of ``rotations_deg`` x ``scales``, the identity first and once."""
    if not rotations_deg or not scales:
        raise ValueError("test-time augmentation: tta_rotations_deg and tta_scales need one value each at least "
                         "([0] and [1]: no copies; tta=false: none)")
    if not all(math.isfinite(s) and s > 0 for s in scales):
        raise ValueError(f"test-time augmentation: tta_scales must be positive, got {list(scales)}")
    if not all(math.isfinite(r) for r in rotations_deg):
        raise ValueError(f"test-time augmentation: tta_rotations_deg must be finite, got {list(rotations_deg)}")
    warps = [(0.0, 1.0)] + [(math.radians(r), float(s)) for r in rotations_deg for s in scales]
    return list(dict.fromkeys(warps))


def warp_matrix(angle: float, scale: float, size: tuple[int, int]) -> torch.Tensor:
    """(3, 3) float64 map of original pixels (u, v, 1) to the warped copy's: a roll by ``angle`` radians and a zoom
    by ``scale`` about the centre of an (h, w) image."""
    h, w = size
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    cu, cv = (w - 1) / 2, (h - 1) / 2
    return torch.tensor([[c, -s, cu - c * cu + s * cv], [s, c, cv - s * cu - c * cv], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)


def _sample_grid(A_33: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, h, w, 2) grid_sample grid (align_corners=True) reading, at every pixel p of an (h, w) image, position A p."""
    h, w = size
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    q_hw3 = torch.stack([u, v, torch.ones_like(u)], -1) @ A_33.T
    uv_hw2 = q_hw3[..., :2] / q_hw3[..., 2:]
    scale = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=torch.float64)
    return (uv_hw2 / scale * 2 - 1)[None]


class TestTimeAugmentation(nn.Module):
    """``model`` (images (B, 3, h, w) in [0, 1] -> world points (B, 3, h, w)) averaged over rolled and zoomed copies
    of each image (or their per-coordinate median, ``reduce='median'``): one forward of B x views images. Any module
    with that contract (a StudentModule, an exported student behind a module) can be wrapped; the points keep the
    model's frame and unit. ``original=False`` leaves the unwarped image's points out wherever a copy sees the
    pixel (to score copies alone)."""

    __test__ = False  # a name pytest would otherwise collect

    def __init__(self, model: nn.Module, rotations_deg: Sequence[float] = (-10.0, 0.0, 10.0),
                 scales: Sequence[float] = (0.85, 1.0, 1.18), reduce: str = "mean", original: bool = True):
        super().__init__()
        if reduce not in REDUCTIONS:
            raise ValueError(f"test-time augmentation: reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
        self.model = model
        self.reduce = reduce
        self.original = original
        self.warps = similarity_warps(rotations_deg, scales)
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def grids(self, size: tuple[int, int], device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the V warps but the identity: (V, h, w, 2) grids that make the copies (a copy's pixel q reads the
        image at A^-1 q) and that read each copy's prediction back at A p, and (V, 1, h, w) masks of the original
        pixels each copy sees: those whose four neighbours at A p all show the image, not padding."""
        key = (size, str(device))  # built once per input size and device, not copied to the device every batch
        if key not in self._grids:
            mats = [warp_matrix(a, s, size) for a, s in self.warps[1:]]
            to_copy = torch.cat([_sample_grid(torch.linalg.inv(A), size) for A in mats]).float()
            back = torch.cat([_sample_grid(A, size) for A in mats]).float()
            ones = torch.ones(len(mats), 1, *size)
            shown = F.grid_sample(ones, to_copy, mode="bilinear", padding_mode="zeros", align_corners=True)
            seen = F.grid_sample(shown, back, mode="bilinear", padding_mode="zeros", align_corners=True)
            self._grids[key] = tuple(g.to(device) for g in (to_copy, back, (seen > 1 - 1e-4).float()))
        return self._grids[key]

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        B, _, H, W = img_B3HW.shape
        V = len(self.warps) - 1
        if V == 0:
            return self.model(img_B3HW)
        to_copy_VHW2, back_VHW2, seen_V1HW = self.grids((H, W), img_B3HW.device)
        copies = F.grid_sample(img_B3HW.repeat(V, 1, 1, 1), to_copy_VHW2.repeat_interleave(B, 0), mode="bilinear",
                               padding_mode="zeros", align_corners=True)
        pts_all = self.model(torch.cat([img_B3HW, copies])).float()
        back = F.grid_sample(pts_all[B:], back_VHW2.repeat_interleave(B, 0), mode="bilinear", align_corners=True)
        seen = seen_V1HW.repeat_interleave(B, 0)  # copy v of image b at row v * B + b, as the copies
        n_seen_B1HW = seen.reshape(V, B, 1, H, W).sum(0)
        own_B1HW = torch.ones_like(n_seen_B1HW) if self.original else (n_seen_B1HW == 0).float()
        total = own_B1HW * pts_all[:B] + (back * seen).reshape(V, B, 3, H, W).sum(0)  # 0 x NaN stays NaN: visible
        if self.reduce == "median":  # a copy that does not see a pixel has no vote there
            votes = torch.where(seen > 0, back, torch.nan).reshape(V, B, 3, H, W)
            own = torch.where(own_B1HW > 0, pts_all[:B], torch.nan)[None]
            median = torch.cat([own, votes]).nanmedian(0).values
            return torch.where(torch.isfinite(total), median, total)  # a non-finite prediction stays visible
        return total / (own_B1HW + n_seen_B1HW)
