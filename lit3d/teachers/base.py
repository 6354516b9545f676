"""The teacher contract: a batch of image pairs (i, j) -> DUSt3R-style pairwise pointmaps.

Input batch (B pairs, frames already mapped to the teacher's grid by :meth:`Teacher.frame_transform`):
    ``img_i``, ``img_j``        (B, 3, H, W) float RGB in [0, 1]
    ``K_i``, ``K_j``            (B, 3, 3) intrinsics on the teacher grid, pixels
    ``depth_i``, ``depth_j``    (B, H, W) metres, 0 = invalid      (only when the scene has depth)
    ``cam2world_i``, ``..._j``  (B, 4, 4) metres                     (only when the scene has poses)
    ``idx_i``, ``idx_j``        (B,) frame indices
Output (all in the teacher's own scale; metres when ``teacher.metric``):
    ``pts_i``       (B, H, W, 3) points of image i's pixels in camera-i frame
    ``pts_j_in_i``  (B, H, W, 3) points of image j's pixels in camera-i frame
    ``conf_i``, ``conf_j``   (B, H, W) confidences >= 1
    ``valid_i``, ``valid_j`` (B, H, W) bool, False where the teacher has no answer (conf is 1 there)

Multi-view teachers (``vggt``) instead take a whole view set at once (:meth:`Teacher.predict_views`): (S, 3, H, W)
RGB in [0, 1] -> ``pts_world`` (S, H, W, 3) in the first view's frame, ``conf`` (S, H, W) >= 1, ``cam2world``
(S, 4, 4) and ``K`` (S, 3, 3); they give world labels themselves (``gives_world_labels``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lit3d.geometry import scale_intrinsics

OUTPUT_KEYS = ("pts_i", "pts_j_in_i", "conf_i", "conf_j", "valid_i", "valid_j")


@dataclass(frozen=True)
class FrameTransform:
    """Resize a (H, W) frame to ``resized`` (h, w), then crop ``crop`` = (top, left, height, width).

    Maps scene frames onto the grid a teacher predicts on, so labels, images and intrinsics line up pixel for
    pixel. The identity transform keeps frames as they are.
    """

    source: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]

    @staticmethod
    def identity(height: int, width: int) -> "FrameTransform":
        return FrameTransform((height, width), (height, width), (0, 0, height, width))

    @property
    def output_size(self) -> tuple[int, int]:
        return self.crop[2], self.crop[3]

    def _crop(self, array: np.ndarray) -> np.ndarray:
        top, left, h, w = self.crop
        return array[top : top + h, left : left + w]

    def image(self, rgb_HW3: np.ndarray) -> np.ndarray:
        """uint8 image on the output grid (LANCZOS when shrinking, BICUBIC when enlarging, like DUSt3R)."""
        if self.resized != self.source:
            shrink = self.resized[1] < self.source[1]
            resample = Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC
            rgb_HW3 = np.asarray(Image.fromarray(rgb_HW3).resize(self.resized[::-1], resample))
        return np.ascontiguousarray(self._crop(rgb_HW3))

    def depth(self, depth_HW: np.ndarray) -> np.ndarray:
        """Depth on the output grid; nearest neighbour so that no depth is invented across edges."""
        if self.resized != self.source:
            depth_HW = np.asarray(
                Image.fromarray(depth_HW.astype(np.float32)).resize(self.resized[::-1], Image.Resampling.NEAREST)
            )
        return np.ascontiguousarray(self._crop(depth_HW))

    def intrinsics(self, K_33: np.ndarray) -> np.ndarray:
        """Intrinsics of the output grid."""
        K = scale_intrinsics(K_33, self.resized[1] / self.source[1], self.resized[0] / self.source[0])
        K[0, 2] -= self.crop[1]
        K[1, 2] -= self.crop[0]
        return K


class Teacher(torch.nn.Module):
    """Base class of teachers. Subclasses implement :meth:`forward` on a batch of pairs (see module doc)."""

    metric: bool = False
    """True when outputs are in metres for a metric scene (then no scale needs to be solved)."""
    needs_depth: bool = False
    needs_poses: bool = False
    gives_world_labels: bool = False
    """True for a teacher that gives every frame's world pointmap itself (:meth:`world_labels`), without pairs or
    alignment (e.g. ``external``)."""

    def frame_transform(self, height: int, width: int) -> FrameTransform:
        """How scene frames of size (H, W) are mapped onto the teacher's grid."""
        return FrameTransform.identity(height, width)

    def manifest(self) -> dict:
        """What identifies this teacher's outputs (config, weights hash); written into the label cache."""
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict_views(self, images_S3HW: torch.Tensor) -> dict[str, torch.Tensor]:
        """Multi-view teachers only: one view set -> points in the first view's frame, cameras (see module doc)."""
        raise NotImplementedError

    def world_labels(self, scene, names: list[str], transform: FrameTransform, min_conf: float):
        """Only when ``gives_world_labels``: the ``AlignResult`` of the frames ``names`` on the label grid."""
        raise NotImplementedError
