"""Dense world pointmaps from a solved alignment, fused image by image (memory: one image's views at a time).

With poses, intrinsics and edge similarities fixed, the depth of a pixel that minimises the weighted squared
distance to every edge's prediction of it is closed-form: d = sum w (r . q) / (|r|^2 sum w), with r the pixel's
z = 1 ray and q a prediction in that camera's frame. Confidences are fused like the known-pose method (the
confidence-weighted mean confidence). An image's label depends only on its own views
(:class:`lit3d.align.frame_views.FrameViews`), so images are fused one after the other, each from its views read
by edge id; residuals of those views follow at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from lit3d.align.frame_views import EdgeResiduals, FrameViews
from lit3d.align.inputs import EdgeInputs, conf_weight


@dataclass
class Solution:
    """A solved alignment in the output frame; edge similarities act on the raw (teacher-unit) predictions."""

    cam2world_N44: np.ndarray
    K_N33: np.ndarray
    s_E: np.ndarray
    R_E33: np.ndarray
    t_E3: np.ndarray
    side_weight_E2: np.ndarray
    """Extra weight of each edge's view of image i / image j (robust down-weighting of outlier edges)."""


def _rays(K_B33: torch.Tensor, uv_Q2: torch.Tensor) -> torch.Tensor:
    x = (uv_Q2[None, :, 0] - K_B33[:, None, 0, 2]) / K_B33[:, None, 0, 0]
    y = (uv_Q2[None, :, 1] - K_B33[:, None, 1, 2]) / K_B33[:, None, 1, 1]
    return torch.stack([x, y, torch.ones_like(x)], -1)


class DenseFusion:
    """Closed-form dense fusion of a :class:`Solution`, one image at a time: iterate :meth:`images`; residuals
    then cover the views of the images fused so far."""

    def __init__(self, inp: EdgeInputs, sol: Solution, min_conf: float, chunk: int, device: torch.device):
        self.inp, self.sol, self.min_conf, self.chunk, self.device = inp, sol, min_conf, max(1, chunk), device
        self.dev = dict(device=device, dtype=torch.float32)
        H, W = inp.hw
        v, u = torch.meshgrid(torch.arange(H, **self.dev), torch.arange(W, **self.dev), indexing="ij")
        self.uv_Q2 = torch.stack([u.reshape(-1), v.reshape(-1)], -1)
        self.views = FrameViews(inp.edges_E2, inp.n_images)
        self.residuals = EdgeResiduals(inp.n_edges)

    @property
    def residual(self) -> float:
        return self.residuals.residual

    @property
    def edge_residual_E(self) -> np.ndarray:
        return self.residuals.edge_residual_E

    def images(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: index, world points (H, W, 3) float32 (0 where invalid), confidence (H, W), valid (H, W)."""
        H, W = self.inp.hw
        for n in range(self.inp.n_images):
            pts, conf, valid = self.fuse(n)
            yield n, pts.reshape(H, W, 3), conf.reshape(H, W), valid.reshape(H, W)

    def _views(self, edge_V: np.ndarray, side_V: np.ndarray):
        """World points (V, Q, 3), pixel weights log(conf) (V, Q), robust view weights (V, 1) and confidences
        (V, Q) (0 = masked) of the views ``edge_V`` / ``side_V`` (local edge ids, 0: image i, 1: image j)."""
        inp, sol, dev = self.inp, self.sol, self.dev
        d = EdgeInputs(inp.edges_E2[edge_V], inp.n_images, inp.pts_i, inp.pts_j_in_i, inp.conf_i, inp.conf_j,
                       inp.valid_i, inp.valid_j, inp.edge_ids[edge_V]).read(0, len(edge_V))
        side_b = torch.as_tensor(side_V == 1, device=self.device)
        pts = torch.where(side_b[:, None, None], torch.as_tensor(d["pts_b"], **dev), torch.as_tensor(d["pts_a"], **dev))
        conf = torch.where(side_b[:, None], torch.as_tensor(d["conf_b"], **dev), torch.as_tensor(d["conf_a"], **dev))
        sR = torch.as_tensor(sol.s_E[edge_V], **dev)[:, None, None] * torch.as_tensor(sol.R_E33[edge_V], **dev)
        Y = torch.einsum("eij,eqj->eqi", sR, pts) + torch.as_tensor(sol.t_E3[edge_V], **dev)[:, None]
        side_w = torch.as_tensor(sol.side_weight_E2[edge_V, side_V], **dev)[:, None]
        return Y, conf_weight(conf), side_w, conf

    def fuse(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``n``: world points (Q, 3), confidence (Q,) and valid mask (Q,) as numpy; adds its residuals."""
        edge_V, side_V = self.views.of(n)
        dev = self.dev
        K = torch.as_tensor(self.sol.K_N33[n : n + 1], **dev)
        R = torch.as_tensor(self.sol.cam2world_N44[n, :3, :3], **dev)
        t = torch.as_tensor(self.sol.cam2world_N44[n, :3, 3], **dev)
        rays_Q3 = _rays(K, self.uv_Q2)[0]
        Q = len(rays_Q3)
        num, den, conf_num, conf_den = (torch.zeros(Q, **dev) for _ in range(4))
        chunks = [slice(k, k + self.chunk) for k in range(0, len(edge_V), self.chunk)]
        kept = None  # the views, when they fit in one chunk: no second read for the residuals
        for c in chunks:
            Y, w, side_w, conf = self._views(edge_V[c], side_V[c])
            ws = w * side_w  # outlier views do not pull the fused depth
            rq = ((Y - t) @ R * rays_Q3).sum(-1)  # world -> this camera, dotted with the pixel's ray
            num += (ws * rq).sum(0)
            den += ws.sum(0)
            conf_num += (conf**2).sum(0)  # conf is 0 where masked
            conf_den += conf.sum(0)
            kept = (Y, w) if len(chunks) == 1 else None
        depth = num / (den * (rays_Q3**2).sum(-1)).clamp_min(1e-30)
        conf = torch.where(conf_den > 0, conf_num / conf_den.clamp_min(1e-30), torch.ones_like(depth))
        valid = (den > 0) & (depth > 0) & (conf >= self.min_conf)
        pts = torch.where(valid[:, None], (rays_Q3 * depth[:, None]) @ R.T + t, torch.zeros_like(rays_Q3))
        for c in chunks:
            Y, w = kept if kept is not None else self._views(edge_V[c], side_V[c])[:2]
            w = w * valid  # residuals ignore the robust weights, so that outlier edges stand out
            self.residuals.add(edge_V[c], (w * torch.linalg.norm(Y - pts, dim=-1)).sum(1).cpu().numpy(),
                               w.sum(1).cpu().numpy())
        return pts.cpu().numpy(), conf.cpu().numpy(), valid.cpu().numpy()


def fuse_dense(inp: EdgeInputs, sol: Solution, min_conf: float, chunk: int, device: torch.device) -> dict:
    """World pointmaps (N, H, W, 3) float32 (0 where invalid), confidences, valid masks and residuals per edge.

    ``chunk`` bounds the views of one image processed at once."""
    N, (H, W) = inp.n_images, inp.hw
    pts, conf, valid = np.zeros((N, H, W, 3), np.float32), np.ones((N, H, W), np.float32), np.zeros((N, H, W), bool)
    fusion = DenseFusion(inp, sol, min_conf, chunk, device)
    for n, pts_HW3, conf_HW, valid_HW in fusion.images():
        pts[n], conf[n], valid[n] = pts_HW3, conf_HW, valid_HW
    return {"pts_NHW3": pts, "conf_NHW": conf, "valid_NHW": valid, "edge_residual_E": fusion.edge_residual_E,
            "residual": fusion.residual}
