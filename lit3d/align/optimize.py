"""First-order refinement of global alignment (Adam + cosine decay) on the sampled pixels, batched in torch.

Unknowns are increments on the initial ``State``: rotations as axis-angle (radians), translations in world units
(the world is normalised to scene size ~1 before this runs), log-focal, log-depth per sampled pixel, and per edge
a rotation, translation and log-scale. Fixed cameras simply have their increments masked to zero.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from lit3d.align.init import State
from lit3d.align.inputs import Samples, conf_weight

log = logging.getLogger(__name__)


def so3_exp(omega_B3: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B, 3, 3) of axis-angle vectors (radians); exactly the identity at 0."""
    theta2 = (omega_B3**2).sum(-1)[..., None, None]
    small = theta2 < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta**2)
    x, y, z = omega_B3.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(omega_B3.shape[:-1] + (3, 3))
    eye = torch.eye(3, dtype=omega_B3.dtype, device=omega_B3.device)
    return eye + a * K + b * (K @ K)


def orthonormalise(R_B33: np.ndarray) -> np.ndarray:
    """Nearest rotations (float64) of nearly orthonormal matrices, e.g. products accumulated in float32."""
    U, _, Vt = np.linalg.svd(R_B33)
    D = np.ones(R_B33.shape[:-1])
    D[..., 2] = np.sign(np.linalg.det(U @ Vt))
    return U @ (D[..., None] * Vt)


def robust_rho(dist: torch.Tensor, kind: str, scale: float) -> torch.Tensor:
    """Per-pixel loss of a 3-D distance: ``none`` = the distance (DUSt3R), ``cauchy`` = c^2/2 log(1 + (d/c)^2).
    Reference (autograd) form of what ``EdgeLoss`` differentiates by hand."""
    if kind == "none":
        return dist
    if kind == "cauchy":
        return 0.5 * scale**2 * torch.log1p((dist / scale) ** 2)
    raise ValueError(f"align.robust: unknown loss {kind!r}; valid: none, cauchy")


def robust_weight(dist, kind: str, scale: float):
    """IRLS weight of a distance under ``robust_rho`` relative to the plain distance (1 for ``none``)."""
    if kind == "none":
        return np.ones_like(dist)
    return 1.0 / (1.0 + (np.asarray(dist) / scale) ** 2)


class EdgeLoss(torch.autograd.Function):
    """Sum over edges and sides of ``w * rho(|X[img] - (M @ pred + t)|)``, forward and gradient in one pass over
    edge chunks: no (E, 3, P) intermediate is kept, so memory stays O(N * P + E) beyond the samples. Points are
    stored planar, (.., 3, P), where batched 3x3 products are several times faster on a CPU than (.., P, 3)."""

    @staticmethod
    def forward(ctx, X_N3P, M_E33, t_E3, obj: "Objective"):
        gX, gM, gt = torch.zeros_like(X_N3P), torch.zeros_like(M_E33), torch.zeros_like(t_E3)
        loss = X_N3P.new_zeros((), dtype=torch.float64)
        c2 = obj.cfg.robust_scale**2
        for k0 in range(0, len(M_E33), obj.chunk):
            sl = slice(k0, k0 + obj.chunk)
            for pts, w, img in ((obj.A, obj.wa, obj.i_E), (obj.B, obj.wb, obj.j_E)):
                r = X_N3P.index_select(0, img[sl]).sub_(torch.baddbmm(t_E3[sl, :, None], M_E33[sl], pts[sl]))
                d2 = (r * r).sum(1)
                d = torch.sqrt(d2 + 1e-14)  # the epsilon keeps the gradient finite at an exact fit
                if obj.cfg.robust == "cauchy":
                    loss += (w[sl] * 0.5 * c2 * torch.log1p(d2 / c2)).sum(dtype=torch.float64)
                    g = r.mul_((w[sl] / (1 + d2 / c2))[:, None])
                else:
                    loss += (w[sl] * d).sum(dtype=torch.float64)
                    g = r.mul_((w[sl] / d)[:, None])
                gX.index_add_(0, img[sl], g)
                gM[sl] -= torch.bmm(g, pts[sl].transpose(1, 2))
                gt[sl] -= g.sum(-1)
        ctx.save_for_backward(gX, gM, gt)
        return loss.to(X_N3P.dtype)

    @staticmethod
    def backward(ctx, grad):
        gX, gM, gt = ctx.saved_tensors
        return grad * gX, grad * gM, grad * gt, None


def learning_rate(it: int, iterations: int, lr: float, lr_min: float, schedule: str) -> float:
    frac = it / max(iterations - 1, 1)
    if schedule == "cosine":
        return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * frac))
    if schedule == "linear":
        return lr + (lr_min - lr) * frac
    if schedule == "constant":
        return lr
    raise ValueError(f"align.schedule: unknown schedule {schedule!r}; valid: cosine, linear, constant")


@dataclass
class OptimConfig:
    iterations: int
    lr: float
    lr_min: float
    schedule: str
    robust: str
    robust_scale: float
    """Cauchy scale in world units (the world has scene size ~1 here)."""
    free_focal: bool
    normalise_scale: bool
    """Fix the geometric mean of the edge scales (no pose fixes the scale: prevents shrinking to zero)."""


class Objective(torch.nn.Module):
    """Confidence-weighted distance between the image points and every edge's transformed predictions."""

    def __init__(self, state: State, smp: Samples, edges_E2: np.ndarray, uv_NP2: np.ndarray,
                 free_N: np.ndarray, cfg: OptimConfig, device: torch.device, chunk: int = 256):
        super().__init__()
        robust_rho(torch.zeros(1), cfg.robust, cfg.robust_scale)  # rejects an unknown loss name early
        self.chunk = chunk
        f32 = dict(dtype=torch.float32, device=device)
        N, P = state.depth_NP.shape
        E = len(edges_E2)
        self.cfg = cfg
        self.i_E = torch.as_tensor(edges_E2[:, 0], device=device)
        self.j_E = torch.as_tensor(edges_E2[:, 1], device=device)
        self.A = smp.pts_a_EP3.to(**f32).transpose(1, 2).contiguous()  # planar (E, 3, P)
        self.B = smp.pts_b_EP3.to(**f32).transpose(1, 2).contiguous()
        self.wa, self.wb = conf_weight(smp.conf_a_EP).to(**f32), conf_weight(smp.conf_b_EP).to(**f32)
        self.live_E = (self.wa.sum(1) + self.wb.sum(1)) > 0
        uvc = uv_NP2 - state.K_N33[:, None, :2, 2]
        xy = uvc / np.stack([state.K_N33[:, 0, 0], state.K_N33[:, 1, 1]], -1)[:, None]
        self.xy_N2P = torch.as_tensor(xy.transpose(0, 2, 1), **f32)  # initial-focal rays, planar
        self.free_N1 = torch.as_tensor(free_N, **f32)[:, None]
        self.R0_N33, self.t0_N3 = torch.as_tensor(state.R_N33, **f32), torch.as_tensor(state.t_N3, **f32)
        self.R0_E33, self.t0_E3 = torch.as_tensor(state.R_E33, **f32), torch.as_tensor(state.t_E3, **f32)
        self.log_base = float(np.log(state.s_E[self.live_E.cpu().numpy()]).mean()) if self.live_E.any() else 0.0
        self.rot_N3 = torch.nn.Parameter(torch.zeros(N, 3, **f32))
        self.trans_N3 = torch.nn.Parameter(torch.zeros(N, 3, **f32))
        self.log_focal_N = torch.nn.Parameter(torch.zeros(N, **f32), requires_grad=cfg.free_focal)
        self.log_depth_NP = torch.nn.Parameter(torch.as_tensor(np.log(state.depth_NP), **f32))
        self.rot_E3 = torch.nn.Parameter(torch.zeros(E, 3, **f32))
        self.trans_E3 = torch.nn.Parameter(torch.zeros(E, 3, **f32))
        self.log_scale_E = torch.nn.Parameter(torch.as_tensor(np.log(state.s_E), **f32))

    def edge_scale(self) -> torch.Tensor:
        if not self.cfg.normalise_scale:
            return self.log_scale_E.exp()
        # only relative edge scales are free: shrinking every edge (and thus the world) to zero is impossible
        mean = self.log_scale_E[self.live_E].mean() if self.live_E.any() else 0.0
        return (self.log_scale_E - mean + self.log_base).exp()

    def image_points(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World points (N, 3, P) of the sampled pixels, plus rotations and centres of the cameras."""
        R = self.R0_N33 @ so3_exp(self.rot_N3 * self.free_N1)
        t = self.t0_N3 + self.trans_N3 * self.free_N1
        xy = self.xy_N2P * torch.exp(-self.log_focal_N)[:, None, None]
        ray = torch.cat([xy, torch.ones_like(xy[:, :1])], 1)
        return torch.baddbmm(t[:, :, None], R, ray * self.log_depth_NP.exp()[:, None]), R, t

    def edge_transforms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per edge ``M = s R`` (E, 3, 3) and ``t`` (E, 3): world = M @ pred + t."""
        R = self.R0_E33 @ so3_exp(self.rot_E3)
        return self.edge_scale()[:, None, None] * R, self.t0_E3 + self.trans_E3

    def forward(self) -> torch.Tensor:
        X, _, _ = self.image_points()
        M, t = self.edge_transforms()
        return EdgeLoss.apply(X, M, t, self) / (2 * self.A.shape[0] * self.A.shape[2])

    @torch.no_grad()
    def side_distances(self) -> np.ndarray:
        """(E, 2) weighted mean distance of each edge's view of image i and of image j to the image points."""
        X, _, _ = self.image_points()
        M, t = self.edge_transforms()
        out = np.zeros((len(M), 2))
        for k0 in range(0, len(M), self.chunk):
            sl = slice(k0, k0 + self.chunk)
            for col, (pts, w, img) in enumerate(((self.A, self.wa, self.i_E), (self.B, self.wb, self.j_E))):
                y = torch.baddbmm(t[sl, :, None], M[sl], pts[sl])
                d = torch.linalg.vector_norm(X[img[sl]] - y, dim=1)
                out[sl, col] = ((w[sl] * d).sum(1) / w[sl].sum(1).clamp_min(1e-12)).double().cpu().numpy()
        return out

    @torch.no_grad()
    def state(self, like: State) -> State:
        _, R, t = self.image_points()
        fscale = torch.exp(self.log_focal_N).double().cpu().numpy()
        K = like.K_N33.copy()
        K[:, 0, 0] *= fscale
        K[:, 1, 1] *= fscale
        d = lambda x: x.double().cpu().numpy()  # noqa: E731
        return replace(like, R_N33=orthonormalise(d(R)), t_N3=d(t), depth_NP=d(self.log_depth_NP.exp()), K_N33=K,
                       s_E=d(self.edge_scale()), R_E33=orthonormalise(d(self.R0_E33 @ so3_exp(self.rot_E3))),
                       t_E3=d(self.t0_E3 + self.trans_E3))


def optimise(state: State, smp: Samples, edges_E2: np.ndarray, uv_NP2: np.ndarray, free_N: np.ndarray,
             cfg: OptimConfig, device: torch.device, chunk: int = 256) -> tuple[State, np.ndarray, dict]:
    """Refine ``state`` with Adam (betas 0.9, 0.9 as DUSt3R). Returns the state, the (E, 2) weighted mean
    distance of each edge's two views at the end (world units) and loss statistics."""
    obj = Objective(state, smp, edges_E2, uv_NP2, free_N, cfg, device, chunk)
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.9), foreach=True)
    loss0 = loss = float("nan")
    for it in range(cfg.iterations):
        for group in opt.param_groups:
            group["lr"] = learning_rate(it, cfg.iterations, cfg.lr, cfg.lr_min, cfg.schedule)
        opt.zero_grad(set_to_none=True)
        value = obj()
        value.backward()
        opt.step()
        loss = value.item()
        if it == 0:
            loss0 = loss
        if it % 100 == 0:
            log.debug("global alignment: iteration %d, loss %.6g", it, loss)
    with torch.no_grad():
        final = obj().item()
    return obj.state(state), obj.side_distances(), {"loss_first": loss0, "loss_final": final}
