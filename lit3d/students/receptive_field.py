"""Empirical receptive field: which input pixels one output pixel depends on, measured by its gradient.

``receptive_field(model, (H, W))`` backpropagates one output location (a random mix of its channels, at the centre
of the output map by default) to a random input and returns the height and width of the box of pixels with a nonzero
gradient, clipped to the image. The model runs in eval mode (batch statistics would couple all pixels) and is
restored to its mode afterwards. Per-image constants without a gradient (e.g. XFeat's image standardisation) do not
count; a network whose ReLUs are all inactive for the chosen input would under-report, so use a random input.
"""
from __future__ import annotations

import torch
from torch import nn


def receptive_field(model: nn.Module, input_size: tuple[int, int], at: tuple[int, int] | None = None,
                    tol: float = 0.0, seed: int = 0) -> tuple[int, int]:
    """(height, width) in input pixels of the receptive field of the output at ``at`` (default: the centre).

    ``model`` maps (1, 3, H, W) to (1, C, h, w) (any h, w: full-resolution outputs or strided feature maps).
    Pixels whose absolute gradient exceeds ``tol`` count.
    """
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        x = torch.rand(1, 3, *input_size, generator=gen).requires_grad_(True)
        out = model(x)
        h, w = out.shape[-2:]
        i, j = at if at is not None else (h // 2, w // 2)
        mix = torch.rand(out.shape[1], generator=gen) + 0.5
        (out[0, :, i, j] * mix).sum().backward()
    finally:
        model.train(was_training)
    hit = x.grad[0].abs().amax(0) > tol
    rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
    if len(rows) == 0:
        return 0, 0
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
