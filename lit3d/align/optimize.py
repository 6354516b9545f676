"""First-order refinement of global alignment (Adam + cosine decay) on the sampled pixels, batched in torch.

Unknowns are increments on the initial ``State``: rotations as axis-angle (radians), translations in world units
(the world is normalised to scene size ~1 before this runs), log-focal, log-depth per sampled pixel, and per edge
a rotation, translation and log-scale. Fixed cameras simply have their increments frozen at zero.

The gradient is written by hand for one flat vector of all unknowns: a small sparse problem (tens of images, a
few hundred edges) spends most of an autograd step in per-operation overheads, whereas one iteration here is a
short fixed sequence of batched tensor operations (the tests check it against autograd).
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
PROGRESS_STEPS = 10
"""The optimisation logs iteration, loss and learning rate this many times (every 10 %)."""


def _skew_basis(like: torch.Tensor) -> torch.Tensor:
    """(3, 9) matrix G with ``[v]_x`` = ``(v @ G).view(3, 3)`` (row-major): one product builds many skew matrices."""
    G = torch.zeros(3, 9, dtype=like.dtype, device=like.device)
    G[0, 7], G[0, 5], G[1, 2], G[1, 6], G[2, 3], G[2, 1] = 1, -1, 1, -1, 1, -1
    return G


def _so3_terms(omega_B3: torch.Tensor, G_39: torch.Tensor | None = None):
    """Rotations (B, 3, 3) of axis-angle vectors (radians) and, for their gradient, the transposed right
    Jacobians ``J_r^T = I + b K + c K^2`` (B, 3, 3), where ``R = I + a K + b K^2`` and K = [omega]_x; exactly
    the identity at 0. Few operations: at tens of images their count, not their size, sets the time."""
    G_39 = _skew_basis(omega_B3) if G_39 is None else G_39
    theta2 = (omega_B3 * omega_B3).sum(-1, keepdim=True)[..., None]
    # a = sin(x) / x and b = (1 - cos(x)) / x^2 = sinc(x / 2)^2 / 2 without cancellation, both 1 at 0
    ab = torch.sinc(theta2.sqrt() * theta2.new_tensor([1 / math.pi, 0.5 / math.pi]))
    a, b = ab[..., :1], ab[..., 1:].square().mul_(0.5)
    # c = (x - sin(x)) / x^3 cancels in float32 for small angles, but it multiplies K^2 ~ x^2: the error of
    # the product stays at round-off, and it is 0 where K is
    c = (1 - a) / theta2.clamp_min(1e-30)
    K = (omega_B3 @ G_39).view(omega_B3.shape[:-1] + (3, 3))
    KK = K @ K
    eye = torch.eye(3, dtype=omega_B3.dtype, device=omega_B3.device)
    return torch.addcmul(torch.addcmul(eye, a, K), b, KK), torch.addcmul(torch.addcmul(eye, b, K), c, KK)


def so3_exp(omega_B3: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B, 3, 3) of axis-angle vectors (radians); exactly the identity at 0."""
    return _so3_terms(omega_B3)[0]


def orthonormalise(R_B33: np.ndarray) -> np.ndarray:
    """Nearest rotations (float64) of nearly orthonormal matrices, e.g. products accumulated in float32."""
    U, _, Vt = np.linalg.svd(R_B33)
    D = np.ones(R_B33.shape[:-1])
    D[..., 2] = np.sign(np.linalg.det(U @ Vt))
    return U @ (D[..., None] * Vt)


def robust_rho(dist: torch.Tensor, kind: str, scale: float) -> torch.Tensor:
    """Per-pixel loss of a 3-D distance: ``none`` = the distance (DUSt3R), ``cauchy`` = c^2/2 log(1 + (d/c)^2).
    Reference (autograd) form of what ``Objective`` differentiates by hand."""
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



class Objective:
    """Confidence-weighted mean distance between the image points and every edge's transformed predictions, and
    its gradient in closed form. ``theta`` holds every unknown; the named unknowns are views of it.

    Each edge's two views are laid out side by side, planar and homogeneous: (E, 4, V) with V = 2P (image i's
    sampled pixels, then image j's), so that one batched product with ``[M | t]`` per edge transforms both (planar
    products are several times faster on a CPU than (.., V, 4)), and one gather of the rows of the image points
    (N * 3, P) lines them up."""

    def __init__(self, state: State, smp: Samples, edges_E2: np.ndarray, uv_NP2: np.ndarray,
                 free_N: np.ndarray, cfg: OptimConfig, device: torch.device, chunk: int = 256):
        robust_rho(torch.zeros(1), cfg.robust, cfg.robust_scale)  # rejects an unknown loss name early
        f32 = dict(dtype=torch.float32, device=device)
        N, P = state.depth_NP.shape
        E = len(edges_E2)
        self.cfg, self.n_images, self.chunk = cfg, N, chunk
        # homogeneous (E, 4, V): one product [M | t] @ pts transforms, one product with g gives both gradients
        pts_EV3 = torch.cat([smp.pts_a_EP3, smp.pts_b_EP3], 1).to(**f32)
        self.pts_E4V = torch.cat([pts_EV3.transpose(1, 2), torch.ones(E, 1, 2 * P, **f32)], 1).contiguous()
        e = min(chunk, E)  # per chunk: gathered image points, then residuals in place; squared distances
        self._r_buf, self._d_buf = torch.empty(6 * e, P, **f32), torch.empty(e, 2 * P, **f32)
        w_EV = conf_weight(torch.cat([smp.conf_a_EP, smp.conf_b_EP], 1)).to(**f32)
        live_E = w_EV.sum(1) > 0
        self.w_EV = w_EV / (2 * E * P)  # the loss is a mean over views and pixels
        self.live_E, self.n_live = live_E.to(**f32), int(live_E.sum())
        # rows of the image points (N * 3, P) that line up with (E, 3, V): (image of the side) * 3 + coordinate
        rows = edges_E2[:, None, :] * 3 + np.arange(3)[None, :, None]  # (E, 3, 2)
        self.rows_E6 = torch.as_tensor(rows.reshape(E, 6), device=device)
        xy_N2P = ((uv_NP2 - state.K_N33[:, None, :2, 2]) /
                  np.stack([state.K_N33[:, 0, 0], state.K_N33[:, 1, 1]], -1)[:, None]).transpose(0, 2, 1)
        self.ray_N3P = torch.as_tensor(np.concatenate([xy_N2P, np.ones((N, 1, P))], 1), **f32)  # initial focals
        # images then edges: rotations and translations share the same code
        self.R0_K33 = torch.as_tensor(np.concatenate([state.R_N33, state.R_E33]), **f32)
        self.t0_K3 = torch.as_tensor(np.concatenate([state.t_N3, state.t_E3]), **f32)
        self.R0_N33, self.R0_E33 = self.R0_K33[:N], self.R0_K33[N:]
        self.t0_N3, self.t0_E3 = self.t0_K3[:N], self.t0_K3[N:]
        self.log_base = float(np.log(state.s_E[live_E.cpu().numpy()]).mean()) if self.n_live else 0.0
        self.G_39 = _skew_basis(self.R0_K33)
        n_k = N + E
        self.theta = torch.zeros(6 * n_k + N + E + N * P, **f32)
        rot, trans, self.log_focal_N, self.log_scale_E, log_depth = self.theta.split([3 * n_k, 3 * n_k, N, E, N * P])
        self.rot_K3, self.trans_K3, self.log_depth_NP = rot.view(n_k, 3), trans.view(n_k, 3), log_depth.view(N, P)
        self.rot_N3, self.rot_E3 = self.rot_K3[:N], self.rot_K3[N:]
        self.trans_N3, self.trans_E3 = self.trans_K3[:N], self.trans_K3[N:]
        self.log_scale_E.copy_(torch.as_tensor(np.log(state.s_E), **f32))
        self.log_depth_NP.copy_(torch.as_tensor(np.log(state.depth_NP), **f32))
        # unknowns with a zero gradient mask stay exactly at their start under Adam
        self.trainable = torch.ones_like(self.theta)
        mask_rot, mask_trans, mask_focal = self.trainable[:6 * n_k + N].split([3 * n_k, 3 * n_k, N])
        mask_rot.view(n_k, 3)[:N] = mask_trans.view(n_k, 3)[:N] = torch.as_tensor(free_N, **f32)[:, None]
        mask_focal.fill_(float(cfg.free_focal))

    def edge_scale(self) -> torch.Tensor:
        if not self.cfg.normalise_scale:
            return self.log_scale_E.exp()
        # only relative edge scales are free: shrinking every edge (and thus the world) to zero is impossible
        mean = torch.dot(self.log_scale_E, self.live_E) / self.n_live if self.n_live else 0.0
        return (self.log_scale_E - mean + self.log_base).exp()

    def camera_points(self) -> torch.Tensor:
        """Camera-frame points (N, 3, P) of the sampled pixels from focals and depths."""
        cam_N3P = self.ray_N3P * self.log_depth_NP.exp()[:, None]
        cam_N3P[:, :2] *= torch.exp(-self.log_focal_N)[:, None, None]
        return cam_N3P

    def image_points(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World points (N, 3, P) of the sampled pixels, plus rotations and centres of the cameras."""
        R = self.R0_N33 @ so3_exp(self.rot_N3)
        t = self.t0_N3 + self.trans_N3
        return torch.baddbmm(t[:, :, None], R, self.camera_points()), R, t

    def edge_transforms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per edge ``M = s R`` (E, 3, 3) and ``t`` (E, 3): world = M @ pred + t."""
        R = self.R0_E33 @ so3_exp(self.rot_E3)
        return self.edge_scale()[:, None, None] * R, self.t0_E3 + self.trans_E3

    def _residuals(self, X_N3P: torch.Tensor, T_E34: torch.Tensor, sl: slice) -> torch.Tensor:
        """(e, 3, V) image points minus transformed predictions of the edges ``sl``, in a reused buffer."""
        e = len(T_E34[sl])
        r = torch.index_select(X_N3P.view(-1, X_N3P.shape[-1]), 0, self.rows_E6[sl].reshape(-1),
                               out=self._r_buf[:6 * e]).view(e, 3, -1)
        return r.baddbmm_(T_E34[sl], self.pts_E4V[sl], alpha=-1)

    def edge_terms(self, X_N3P: torch.Tensor, T_E34: torch.Tensor, with_value: bool = True):
        """Loss (float64 scalar, None unless ``with_value``) and its gradients with respect to the image points
        (N, 3, P) and the edge transforms ``T = [M | t]`` (E, 3, 4), in one pass over chunks of edges.

        Large temporaries live in buffers allocated once and every step works in place: at this size memory
        traffic and allocations, not arithmetic, bound the time."""
        gX = torch.zeros_like(X_N3P)
        gX_rows = gX.view(-1, X_N3P.shape[-1])
        gT = torch.empty_like(T_E34)
        value = X_N3P.new_zeros((), dtype=torch.float64) if with_value else None
        c2 = self.cfg.robust_scale**2
        for k0 in range(0, len(T_E34), self.chunk):
            sl = slice(k0, k0 + self.chunk)
            r, w = self._residuals(X_N3P, T_E34, sl), self.w_EV[sl]
            d2 = torch.mul(r[:, 0], r[:, 0], out=self._d_buf[:len(r)]).addcmul_(r[:, 1], r[:, 1])
            d2.addcmul_(r[:, 2], r[:, 2])
            if self.cfg.robust == "cauchy":
                if with_value:
                    value += (w * torch.log1p(d2 / c2)).sum(dtype=torch.float64) * (0.5 * c2)
                coef = d2.div_(c2).add_(1).reciprocal_().mul_(w)
            else:
                d2.add_(1e-14)  # the epsilon keeps the gradient finite at an exact fit
                if with_value:
                    value += (w * d2.sqrt()).sum(dtype=torch.float64)
                coef = d2.rsqrt_().mul_(w)
            g = r.mul_(coef[:, None])
            gX_rows.index_add_(0, self.rows_E6[sl].reshape(-1), g.view(-1, X_N3P.shape[-1]))
            torch.bmm(g, self.pts_E4V[sl].transpose(1, 2), out=gT[sl])
        return value, gX, gT.neg_()  # last column: the gradient of t

    def value_and_grad(self, with_value: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Loss (None unless ``with_value``) and its gradient with respect to ``theta`` (frozen entries 0)."""
        N = self.n_images
        R_rel, JT_K33 = _so3_terms(self.rot_K3, self.G_39)
        R_K33 = torch.bmm(self.R0_K33, R_rel)
        t_K3 = self.t0_K3 + self.trans_K3
        cam_N3P = self.camera_points()
        X_N3P = torch.baddbmm(t_K3[:N, :, None], R_K33[:N], cam_N3P)
        s_E = self.edge_scale()
        T_E34 = torch.cat([s_E[:, None, None] * R_K33[N:], t_K3[N:, :, None]], 2)
        value, gX, gT = self.edge_terms(X_N3P, T_E34, with_value)
        gM, gt = gT[:, :, :3], gT[:, :, 3]
        # images: X = R cam + t with cam = depth * (x / f, y / f, 1)
        gR_K33 = torch.empty_like(R_K33)
        torch.bmm(gX, cam_N3P.transpose(1, 2), out=gR_K33[:N])
        g_cam = torch.bmm(R_K33[:N].transpose(1, 2), gX).mul_(cam_N3P)  # per coordinate, d/d log-depth
        g_log_focal = -g_cam[:, :2].sum((1, 2))
        # edges: M = s R
        torch.mul(gM, s_E[:, None, None], out=gR_K33[N:])
        g_log_scale = (gM * T_E34[:, :, :3]).sum((1, 2))
        if self.cfg.normalise_scale and self.n_live:  # through the mean log-scale of the live edges
            g_log_scale -= self.live_E * (g_log_scale.sum() / self.n_live)
        # R = R0 Exp(omega): dL/domega = J_r(omega)^T vee(R^T G - G^T R) for G = dL/dR; <A, [v]_x> = v . (G_39 A)
        A = torch.bmm(R_K33.transpose(1, 2), gR_K33).view(-1, 9)
        g_rot = torch.bmm(JT_K33, (A @ self.G_39.T)[:, :, None])
        grad = torch.cat([g_rot.view(-1), gX.sum(-1).view(-1), gt.reshape(-1), g_log_focal, g_log_scale,
                          g_cam.sum(1).view(-1)])
        return value, grad.mul_(self.trainable)

    def __call__(self) -> torch.Tensor:
        """The loss (float64 scalar)."""
        return self.value_and_grad(True)[0]

    @torch.no_grad()
    def side_distances(self) -> np.ndarray:
        """(E, 2) weighted mean distance of each edge's view of image i and of image j to the image points."""
        X, _, _ = self.image_points()
        M, t = self.edge_transforms()
        T = torch.cat([M, t[:, :, None]], 2)
        out = torch.empty(len(M), 2, dtype=torch.float64, device=X.device)
        for k0 in range(0, len(M), self.chunk):
            sl = slice(k0, k0 + self.chunk)
            r = self._residuals(X, T, sl)
            d, w = (r * r).sum(1).sqrt_().view(len(r), 2, -1), self.w_EV[sl].view(len(r), 2, -1)
            out[sl] = (w * d).sum(-1, dtype=torch.float64) / w.sum(-1, dtype=torch.float64).clamp_min(1e-300)
        return out.cpu().numpy()

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


class Adam:
    """Adam on one tensor, the update of ``torch.optim.Adam`` (no weight decay, no amsgrad) without its per-step
    bookkeeping, which costs as much as a whole small alignment iteration."""

    def __init__(self, param: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param, self.betas, self.eps, self.steps = param, betas, eps, 0
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: float) -> None:
        (b1, b2), self.steps = self.betas, self.steps + 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / math.sqrt(1 - b2**self.steps)).add_(self.eps)
        self.param.addcdiv_(self.m, denom, value=-lr / (1 - b1**self.steps))


def optimise(state: State, smp: Samples, edges_E2: np.ndarray, uv_NP2: np.ndarray, free_N: np.ndarray,
             cfg: OptimConfig, device: torch.device, chunk: int = 256) -> tuple[State, np.ndarray, dict]:
    """Refine ``state`` with Adam (betas 0.9, 0.9 as DUSt3R); logs progress every 10 % of the iterations.
    Returns the state, the (E, 2) weighted mean distance of each edge's two views at the end (world units) and
    loss statistics."""
    obj = Objective(state, smp, edges_E2, uv_NP2, free_N, cfg, device, chunk)
    opt = Adam(obj.theta, betas=(0.9, 0.9))
    every = max(1, math.ceil(cfg.iterations / PROGRESS_STEPS))
    loss0 = float("nan")
    for it in range(cfg.iterations):
        lr = learning_rate(it, cfg.iterations, cfg.lr, cfg.lr_min, cfg.schedule)
        report = it == 0 or (it + 1) % every == 0 or it + 1 == cfg.iterations
        value, grad = obj.value_and_grad(with_value=report)
        opt.step(grad, lr)
        if it == 0:
            loss0 = float(value)
        if report:
            log.info("global alignment: iteration %d/%d, loss %.6g, lr %.3g", it + 1, cfg.iterations, value, lr)
    final = float(obj())
    return obj.state(state), obj.side_distances(), {"loss_first": loss0, "loss_final": final}
