"""Do an encoder's features of one surface point stay alike across viewpoints? (feature retrieval, torch)

A scene-coordinate head can only place a pixel of a new view where the pixel's features resemble those of the
same surface point in the training views. For every labelled feature cell of a query view this module finds the
training cell whose features are most alike (cosine similarity) and measures how far apart the two cells' world
points are: small where the features identify the surface point from the new viewpoint, large where they match
some other place of the scene. The distance to the nearest labelled training point, whatever its features, is
the floor this can reach (the coverage of the surface by the training labels).

Points are in the labels' world frame and unit. A cell of a stride-``s`` feature map covers pixels
``[i s, (i + 1) s)``; its point is the label at its centre (the mean of the central 2x2 labels for even ``s``,
the central label for odd ``s``), as ``student.output=cells`` predicts it.
"""
from __future__ import annotations

import numpy as np
import torch


def cell_points(pts_HW3: np.ndarray, valid_HW: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels at the centres of the stride-``stride`` cells that lie wholly inside the image: (pts_hw3, ok_hw);
    a cell is ok when every label it averages is valid."""
    H, W = valid_HW.shape
    h, w = H // stride, W // stride
    lo, n = (stride - 1) // 2, 2 - stride % 2  # the central 2x2 (even stride) or 1x1 (odd) pixels
    rows = np.arange(h)[:, None] * stride + lo + np.arange(n)[None]  # (h, n)
    cols = np.arange(w)[:, None] * stride + lo + np.arange(n)[None]  # (w, n)
    pts = pts_HW3[rows[:, None, :, None], cols[None, :, None, :]]  # (h, w, n, n, 3)
    ok = valid_HW[rows[:, None, :, None], cols[None, :, None, :]].all(axis=(2, 3))
    return pts.reshape(h, w, n * n, 3).mean(axis=2), ok


def retrieval_distances(query_NC: torch.Tensor, query_pts_N3: torch.Tensor, key_MC: torch.Tensor,
                        key_pts_M3: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query cell: (retrieved_N, nearest_N, index_N): the world distance to the point of the key cell with the
    most similar features (cosine; the first on ties), the distance to the nearest key point whatever its features,
    and that most similar key's index. Features are compared after L2 normalisation."""
    if len(key_MC) == 0:
        raise ValueError("feature retrieval needs at least one labelled training cell")
    q = torch.nn.functional.normalize(query_NC.float(), dim=1)
    k = torch.nn.functional.normalize(key_MC.float(), dim=1)
    qp, kp = query_pts_N3.double(), key_pts_M3.double()
    retrieved, nearest, index = [], [], []
    for a in range(0, len(q), chunk):  # a query chunk against every key: memory ~ 12 chunk M bytes
        best = (q[a:a + chunk] @ k.T).argmax(dim=1)
        retrieved.append((qp[a:a + chunk] - kp[best]).norm(dim=1))
        exact = torch.cdist(qp[a:a + chunk], kp, compute_mode="donot_use_mm_for_euclid_dist")  # no |a|^2+|b|^2-2ab
        nearest.append(exact.min(dim=1).values)
        index.append(best)
    return torch.cat(retrieved), torch.cat(nearest), torch.cat(index)
