"""Several students' world points averaged pixel by pixel (students trained on the same labels, e.g. other seeds).
The mean cancels the part of their errors on new viewpoints that differs between them: much for half-trained
students, nothing on the kitchen stretch for finished ones, which erred alike there (the README measures both)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PointEnsemble(nn.Module):
    """Images (B, 3, h, w) in [0, 1] -> the mean of ``members``' world points (B, 3, h, w), in their common frame
    and unit: one forward per member. The members must take the same input size (``hparams.img_size``; the
    ensemble's ``hparams`` are the first member's) and have learnt the same label cache's frame, which the
    caller checks (:func:`lit3d.runs.with_ensemble`)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        sizes = sorted({tuple(m.hparams.img_size) for m in members})
        if len(sizes) != 1:
            raise ValueError(f"ensemble: the students take different input sizes {sizes}; average students of one "
                             f"resolution")
        self.members = nn.ModuleList(members)
        self.hparams = members[0].hparams

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(img_B3HW).float() for m in self.members]).mean(0)
