"""Similarity averaging: globally consistent camera similarities from all pairwise ones (not just a tree).

Chaining registrations along a spanning tree accumulates drift (a random walk over hundreds of hops on long
trajectories), and a first-order optimiser removes such low-frequency errors only over thousands of iterations.
Here every edge's relative similarity constrains its two images at once: rotations by chordal least squares,
then log-scales, then translations, each a sparse linear least-squares problem solved by preconditioned
conjugate gradients (memory O(N + E), iterations ~ graph diameter).
"""
from __future__ import annotations

import numpy as np
import torch

from lit3d.geometry import umeyama_sim3

CG_ITERS_PER_IMAGE = 10
"""Cap of conjugate-gradient iterations per image (a ring of n images needs about n)."""


def relative_scale(ref_P3: np.ndarray, pts_P3: np.ndarray, w_P: np.ndarray) -> float:
    """Least-squares ``a`` with ``pts ~ a * ref`` (two pointmaps of the same pixels in the same camera frame)."""
    return float((w_P[:, None] * pts_P3 * ref_P3).sum() / max((w_P[:, None] * ref_P3**2).sum(), 1e-30))


def relative_similarities(A: np.ndarray, B: np.ndarray, wa: np.ndarray, wb: np.ndarray, edges_E2: np.ndarray,
                          edge_ids: np.ndarray, own_edge: np.ndarray, chunk: int = 512):
    """For each edge (i, j) (rows ``edge_ids`` of the samples ``A``, ``B``), the similarity taking image j's own
    frame to image i's own frame, where an image's own frame is its pointmap in ``own_edge`` (its best edge as
    image i): Umeyama of j's own points onto the edge's view of j, divided by the edge's scale relative to i's."""
    E = len(edge_ids)
    s, R, t = np.ones(E), np.tile(np.eye(3), (E, 1, 1)), np.zeros((E, 3))
    for k0 in range(0, E, chunk):
        sl = slice(k0, k0 + chunk)
        e, oi, oj = edge_ids[sl], own_edge[edges_E2[sl, 0]], own_edge[edges_E2[sl, 1]]
        w = (wa[oi] * wa[e])[..., None]
        a = (w * A[e] * A[oi]).sum((1, 2), dtype=np.float64)
        a /= np.maximum((w * A[oi] ** 2).sum((1, 2), dtype=np.float64), 1e-30)
        s_T, R[sl], t_T = umeyama_sim3(A[oj], B[e], wa[oj] * wb[e])
        s[sl], t[sl] = s_T / a, t_T / a[:, None]
    return s, R, t


def _pcg(apply, b: torch.Tensor, x0: torch.Tensor, diag: torch.Tensor, iters: int, tol: float = 1e-24) -> torch.Tensor:
    """Solve ``apply(x) = b`` (SPD) by Jacobi-preconditioned conjugate gradients; ``diag`` broadcasts to x.
    Stops when the squared residual is ``tol`` times that of ``b`` (float64 round-off) or after ``iters``."""
    x = x0.clone()
    r = b - apply(x)
    z = r / diag
    p = z.clone()
    rz = (r * z).sum()
    b_norm = float((b * b).sum()) + 1e-300
    for _ in range(iters):
        if float((r * r).sum()) <= tol * b_norm:
            break
        Ap = apply(p)
        alpha = rz / (p * Ap).sum()
        x += alpha * p
        r -= alpha * Ap
        z = r / diag
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def _project_so3(M_K33: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(M_K33)
    D = torch.ones(M_K33.shape[:-1], dtype=M_K33.dtype)
    D[..., 2] = torch.sign(torch.linalg.det(U @ Vh))
    return U @ (D[..., None] * Vh)


def average_similarities(n: int, edges_E2: np.ndarray, s_E: np.ndarray, R_E33: np.ndarray, t_E3: np.ndarray,
                         w_E: np.ndarray, s0_N: np.ndarray, R0_N33: np.ndarray, t0_N3: np.ndarray,
                         anchors=(0,)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarities ``G_k = (s, R, t)`` (image frame -> world) with ``G_i o M_e ~ G_j`` for every edge (i, j), where
    ``M_e = (s_E, R_E33, t_E3)`` maps frame j to frame i; weighted by ``w_E``, starting from ``(s0, R0, t0)``.

    ``anchors`` (one image per connected component) stay where they are, which fixes the gauge.
    """
    f64 = dict(dtype=torch.float64)
    i, j = torch.as_tensor(edges_E2[:, 0]), torch.as_tensor(edges_E2[:, 1])
    w = torch.as_tensor(w_E, **f64)
    deg = torch.zeros(n, **f64).index_add_(0, i, w).index_add_(0, j, w)
    prior = torch.zeros(n, **f64)
    prior[list(anchors)] = float(deg.max())  # a pull on one image per part fixes the gauge without bias
    diag = deg + prior
    iters = CG_ITERS_PER_IMAGE * n + 100

    def laplacian(x: torch.Tensor, Q_i=None, Q_j=None) -> torch.Tensor:
        """(L x)_k for sum_e w |x_j - Q x_i|^2 + prior |x_k|^2; Q_i / Q_j apply Q and Q^T (identity if None)."""
        xi, xj = x[i], x[j]
        to_j = xi if Q_i is None else Q_i(xi)
        to_i = xj if Q_j is None else Q_j(xj)
        wv = w.view(-1, *([1] * (x.dim() - 1)))
        out = diag.view(-1, *([1] * (x.dim() - 1))) * x
        return out.index_add_(0, j, -wv * to_j).index_add_(0, i, -wv * to_i)

    pv = lambda v: prior.view(-1, *([1] * (v.dim() - 1))) * v  # noqa: E731
    dv = lambda v: diag.view(-1, *([1] * (v.dim() - 1)))  # noqa: E731
    # rotations: X_k = R_k^T satisfies X_j = Q X_i with Q = R_e^T
    Q = torch.as_tensor(R_E33, **f64).transpose(1, 2)
    X0 = torch.as_tensor(R0_N33, **f64).transpose(1, 2)
    apply_R = lambda x: laplacian(x, lambda a: Q @ a, lambda b: Q.transpose(1, 2) @ b)  # noqa: E731
    X = _pcg(apply_R, pv(X0), X0, dv(X0), iters)
    R = _project_so3(X.transpose(1, 2))
    R[list(anchors)] = torch.as_tensor(R0_N33[list(anchors)], **f64)
    # log-scales: l_j - l_i = log s_e
    ls = torch.as_tensor(np.log(s_E), **f64)
    l0 = torch.as_tensor(np.log(s0_N), **f64)
    b = pv(l0).index_add_(0, j, w * ls).index_add_(0, i, -w * ls)
    lvec = _pcg(laplacian, b, l0, diag, iters)
    s = torch.exp(lvec)
    # translations: t_j - t_i = s_i R_i t_e
    be = s[i, None] * (R[i] @ torch.as_tensor(t_E3, **f64)[..., None])[..., 0]
    T0 = torch.as_tensor(t0_N3, **f64)
    b = pv(T0).index_add_(0, j, w[:, None] * be).index_add_(0, i, -w[:, None] * be)
    t = _pcg(laplacian, b, T0, diag[:, None], iters)
    return s.numpy(), R.numpy(), t.numpy()
