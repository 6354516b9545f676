"""Dense world pointmaps from a solved alignment, streamed over edge chunks (memory O(N * H * W + chunk)).

With poses, intrinsics and edge similarities fixed, the depth of a pixel that minimises the weighted squared
distance to every edge's prediction of it is closed-form: d = sum w (r . q) / (|r|^2 sum w), with r the pixel's
z = 1 ray and q a prediction in that camera's frame. Confidences are fused like the known-pose method (the
confidence-weighted mean confidence).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


def _edge_views(inp: EdgeInputs, sol: Solution, k0: int, k1: int, device: torch.device):
    """For edges k0:k1, each view's image index, world points (e, Q, 3), pixel weight log(conf) (e, Q), robust
    weight of the view (e, 1) and confidence (e, Q) (0 = masked)."""
    d = inp.read(k0, k1)
    dev = dict(device=device, dtype=torch.float32)
    s = torch.as_tensor(sol.s_E[k0:k1], **dev)[:, None, None]
    sR = s * torch.as_tensor(sol.R_E33[k0:k1], **dev)
    t = torch.as_tensor(sol.t_E3[k0:k1], **dev)[:, None]
    for col, side in ((0, "a"), (1, "b")):
        pts = torch.as_tensor(d[f"pts_{side}"], **dev)
        conf = torch.as_tensor(d[f"conf_{side}"], **dev)
        side_w = torch.as_tensor(sol.side_weight_E2[k0:k1, col], **dev)[:, None]
        idx = torch.as_tensor(inp.edges_E2[k0:k1, col], device=device)
        yield idx, torch.einsum("eij,eqj->eqi", sR, pts) + t, conf_weight(conf), side_w, conf


def fuse_dense(inp: EdgeInputs, sol: Solution, min_conf: float, chunk: int, device: torch.device) -> dict:
    """World pointmaps (N, H, W, 3) float32 (0 where invalid), confidences, valid masks and residuals per edge."""
    N, (H, W) = inp.n_images, inp.hw
    dev = dict(device=device, dtype=torch.float32)
    v, u = torch.meshgrid(torch.arange(H, **dev), torch.arange(W, **dev), indexing="ij")
    uv_Q2 = torch.stack([u.reshape(-1), v.reshape(-1)], -1)
    K = torch.as_tensor(sol.K_N33, **dev)
    R_N33 = torch.as_tensor(sol.cam2world_N44[:, :3, :3], **dev)
    t_N3 = torch.as_tensor(sol.cam2world_N44[:, :3, 3], **dev)
    acc = {k: torch.zeros(N, H * W, **dev) for k in ("num", "den", "conf_num", "conf_den")}
    for k0 in range(0, inp.n_edges, chunk):
        for idx, Y, w, side_w, conf in _edge_views(inp, sol, k0, min(k0 + chunk, inp.n_edges), device):
            w = w * side_w  # outlier views do not pull the fused depth
            q = torch.einsum("eji,eqj->eqi", R_N33[idx], Y - t_N3[idx][:, None])  # world -> camera of that image
            rq = (_rays(K[idx], uv_Q2) * q).sum(-1)
            acc["num"].index_add_(0, idx, w * rq)
            acc["den"].index_add_(0, idx, w)
            acc["conf_num"].index_add_(0, idx, conf**2)  # conf is 0 where masked
            acc["conf_den"].index_add_(0, idx, conf)
    ray2 = (_rays(K, uv_Q2) ** 2).sum(-1)
    seen = acc["den"] > 0
    depth = acc["num"] / (acc["den"] * ray2).clamp_min(1e-30)
    conf = torch.where(acc["conf_den"] > 0, acc["conf_num"] / acc["conf_den"].clamp_min(1e-30), torch.ones_like(depth))
    valid = seen & (depth > 0) & (conf >= min_conf)
    pts = torch.einsum("nij,nqj->nqi", R_N33, _rays(K, uv_Q2) * depth[..., None]) + t_N3[:, None]
    pts = torch.where(valid[..., None], pts, torch.zeros_like(pts))

    res_num, res_den = np.zeros(inp.n_edges), np.zeros(inp.n_edges)
    for k0 in range(0, inp.n_edges, chunk):
        k1 = min(k0 + chunk, inp.n_edges)
        for idx, Y, w, _, _ in _edge_views(inp, sol, k0, k1, device):
            w = w * valid[idx]  # residuals ignore the robust weights, so that outlier edges stand out
            res_num[k0:k1] += (w * torch.linalg.norm(Y - pts[idx], dim=-1)).sum(1).cpu().numpy()
            res_den[k0:k1] += w.sum(1).cpu().numpy()
    return {"pts_NHW3": pts.reshape(N, H, W, 3).float().cpu().numpy(),
            "conf_NHW": conf.reshape(N, H, W).float().cpu().numpy(),
            "valid_NHW": valid.reshape(N, H, W).cpu().numpy(),
            "edge_residual_E": res_num / np.maximum(res_den, 1e-12),
            "residual": float(res_num.sum() / max(res_den.sum(), 1e-12))}
