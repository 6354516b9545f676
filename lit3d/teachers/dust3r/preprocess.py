"""DUSt3R's official image preprocessing (``dust3r.utils.image.load_images``) as a :class:`FrameTransform`.

512 models: resize so the long side is 512 (each side rounded), then centre-crop each side down to a multiple
of the patch size; a square image is cropped to 4:3 unless ``square_ok``. 224 models: resize so the short side
is about 224, then centre-crop 224 x 224. Images are then RGB / 255 and (x - 0.5) / 0.5, i.e. in [-1, 1].
``FrameTransform.intrinsics`` gives the network grid's intrinsics and ``FrameTransform.image`` resamples with
LANCZOS when shrinking and BICUBIC otherwise, as the official code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from lit3d.teachers.base import FrameTransform


def _resized(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) with the long side scaled to ``long_side``; Python's round, as ``_resize_pil_image``."""
    scale = long_side / max(width, height)
    return int(round(width * scale)), int(round(height * scale))


def dust3r_frame_transform(height: int, width: int, resolution: int, patch_size: int = 16,
                           square_ok: bool = False) -> FrameTransform:
    """Resize + crop of an (H, W) frame for a DUSt3R model of the given ``resolution`` (224 or long side)."""
    if resolution == 224:
        long_side = round(resolution * max(width / height, height / width))
        w, h = _resized(width, height, long_side)
        cx, cy = w // 2, h // 2
        half = min(cx, cy)
        return FrameTransform((height, width), (h, w), (cy - half, cx - half, 2 * half, 2 * half))
    w, h = _resized(width, height, resolution)
    cx, cy = w // 2, h // 2
    half_w, half_h = (2 * cx) // patch_size * (patch_size // 2), (2 * cy) // patch_size * (patch_size // 2)
    if not square_ok and w == h:
        half_h = 3 * half_w // 4
    return FrameTransform((height, width), (h, w), (cy - half_h, cx - half_w, 2 * half_h, 2 * half_w))


def source_to_grid(transform: FrameTransform, uv_N2: np.ndarray) -> np.ndarray:
    """Source-frame pixel coordinates (u, v) -> continuous coordinates on the network grid (pixel centres)."""
    (rh, rw), (sh, sw), (top, left) = transform.resized, transform.source, transform.crop[:2]
    return np.stack([(uv_N2[..., 0] + 0.5) * rw / sw - 0.5 - left, (uv_N2[..., 1] + 0.5) * rh / sh - 0.5 - top], -1)


def grid_to_source(transform: FrameTransform, uv_N2: np.ndarray) -> np.ndarray:
    """Inverse of :func:`source_to_grid`: where a network-grid pixel (labels live there) lies in the source."""
    (rh, rw), (sh, sw), (top, left) = transform.resized, transform.source, transform.crop[:2]
    return np.stack([(uv_N2[..., 0] + left + 0.5) * sw / rw - 0.5, (uv_N2[..., 1] + top + 0.5) * sh / rh - 0.5], -1)


def normalize(img_B3HW: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> DUSt3R's input range [-1, 1] (mean 0.5, std 0.5 per channel)."""
    return (img_B3HW - 0.5) / 0.5


def load_image(path: str | Path, resolution: int, patch_size: int = 16) -> tuple[torch.Tensor, FrameTransform]:
    """An image file as the official ``load_images`` prepares it: (1, 3, h, w) in [-1, 1], and its transform.

    EXIF orientation is applied first, so the transform's source size is that of the upright image.
    """
    with Image.open(path) as im:
        rgb_HW3 = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    transform = dust3r_frame_transform(*rgb_HW3.shape[:2], resolution, patch_size)
    img_hw3 = torch.from_numpy(transform.image(rgb_HW3).copy()).float() / 255.0  # PIL arrays are read-only
    return normalize(img_hw3.permute(2, 0, 1)[None]), transform
