"""Initialisation of global alignment: connected components, maximum spanning tree, chained Umeyama fits.

Works on the sampled pixels only (``Samples``). Steps: (1) a maximum spanning tree over edge confidences (pairs
whose two directions disagree demoted) chains Umeyama registrations of the shared view into world pointmaps,
rooted at image 0; (2) each image's own frame (its best edge as image i) is registered onto them, and similarity
averaging over every edge removes the tree's drift; (3) focals, camera poses and depths follow, images seen only
as image j are placed by PnP; (4) each edge's similarity is fitted to the image points.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from lit3d.align.averaging import average_similarities, relative_scale, relative_similarities
from lit3d.align.inputs import Samples, conf_weight
from lit3d.geometry import umeyama_sim3

log = logging.getLogger(__name__)
MIN_INIT_PIXELS = 8
"""Edges with fewer pixels above ``init_min_conf`` are registered with every valid pixel instead."""
CYCLE_TOL = 0.05
"""Relative i -> j -> i cycle error of a pair beyond which its edges are demoted in the spanning tree."""


@dataclass
class State:
    """Every unknown of the alignment, in one world frame (float64)."""

    R_N33: np.ndarray
    """Camera-to-world rotations."""
    t_N3: np.ndarray
    """Camera centres, world unit."""
    depth_NP: np.ndarray
    """z-depth of each image's sampled pixels, world unit."""
    K_N33: np.ndarray
    """Intrinsics (pixels)."""
    s_E: np.ndarray
    """Edge scales: world = s R pred + t, for the predictions as stored in ``Samples`` (divided by pred_scale)."""
    R_E33: np.ndarray
    t_E3: np.ndarray

    def apply_sim3(self, s: float, R_33: np.ndarray, t_3: np.ndarray) -> "State":
        """The same solution in the world frame ``x' = s R x + t``."""
        return replace(self, R_N33=R_33 @ self.R_N33, t_N3=s * self.t_N3 @ R_33.T + t_3, depth_NP=s * self.depth_NP,
                       s_E=s * self.s_E, R_E33=R_33 @ self.R_E33, t_E3=s * self.t_E3 @ R_33.T + t_3)


def rays(uv_NP2: np.ndarray, K_N33: np.ndarray) -> np.ndarray:
    """(N, P, 3) camera-frame rays with z = 1 through pixels (u, v)."""
    x = (uv_NP2[..., 0] - K_N33[:, None, 0, 2]) / K_N33[:, None, 0, 0]
    y = (uv_NP2[..., 1] - K_N33[:, None, 1, 2]) / K_N33[:, None, 1, 1]
    return np.stack([x, y, np.ones_like(x)], -1)


def world_points(state: State, uv_NP2: np.ndarray) -> np.ndarray:
    """(N, P, 3) world points of the sampled pixels from depths, intrinsics and poses."""
    cam = rays(uv_NP2, state.K_N33) * state.depth_NP[..., None]
    return np.einsum("nij,npj->npi", state.R_N33, cam) + state.t_N3[:, None]


def connected_components(n_images: int, edges_E2: np.ndarray) -> np.ndarray:
    """(N,) component label per image, numbered by smallest member (union-find)."""
    parent = np.arange(n_images)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in edges_E2:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(a) for a in range(n_images)])
    return np.unique(roots, return_inverse=True)[1]


def maximum_spanning_tree(n_images: int, edges_E2: np.ndarray, score_E: np.ndarray) -> np.ndarray:
    """Edge ids of a maximum spanning tree (Kruskal, best directed edge of each pair wins)."""
    parent = np.arange(n_images)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tree = []
    for e in np.argsort(-score_E, kind="stable"):
        ri, rj = find(edges_E2[e, 0]), find(edges_E2[e, 1])
        if ri != rj:
            parent[ri] = rj
            tree.append(e)
    return np.asarray(tree, dtype=np.int64)


def pair_consistency(A: np.ndarray, B: np.ndarray, wa: np.ndarray, wb: np.ndarray, edges_E2: np.ndarray,
                     chunk: int = 512) -> np.ndarray:
    """(E,) relative error of the cycle i -> j -> i through edge (i, j) and its reverse (j, i); NaN without one.

    Each direction gives a similarity between the two camera frames (Umeyama of one image's own-frame points onto
    the same pixels as the other edge predicts them); a confidently wrong pair breaks the cycle.
    """
    index = {(int(i), int(j)): e for e, (i, j) in enumerate(edges_E2)}
    rev = np.array([index.get((int(j), int(i)), -1) for i, j in edges_E2])
    err = np.full(len(edges_E2), np.nan)
    todo = np.flatnonzero(rev >= 0)
    for k0 in range(0, len(todo), chunk):
        e = todo[k0:k0 + chunk]
        r = rev[e]
        s1, R1, t1 = umeyama_sim3(A[r], B[e], wa[r] * wb[e])  # frame j -> frame i
        s2, R2, t2 = umeyama_sim3(A[e], B[r], wa[e] * wb[r])  # frame i -> frame j
        p = A[e].astype(np.float64)
        q = s2[:, None, None] * p @ R2.transpose(0, 2, 1) + t2[:, None]
        q = s1[:, None, None] * q @ R1.transpose(0, 2, 1) + t1[:, None]
        w = wa[e]
        norm = np.maximum((w * np.linalg.norm(p, axis=-1)).sum(1), 1e-12)
        err[e] = (w * np.linalg.norm(q - p, axis=-1)).sum(1) / norm
    return err


def estimate_focal(pts_P3: np.ndarray, uv_P2: np.ndarray, w_P: np.ndarray, centre_2: np.ndarray) -> float:
    """Least-squares focal (fx = fy) so that pixels = f * (x/z, y/z) + centre, for camera-frame points."""
    ok = (w_P > 0) & (pts_P3[:, 2] > 1e-9)
    xy = pts_P3[ok, :2] / pts_P3[ok, 2:3]
    uvc = uv_P2[ok] - centre_2
    return float((w_P[ok, None] * uvc * xy).sum() / max((w_P[ok, None] * xy**2).sum(), 1e-12))


def _pnp(world_P3: np.ndarray, uv_P2: np.ndarray, w_P: np.ndarray, K_33: np.ndarray) -> tuple | None:
    """Camera-to-world (R, t) from 2-D/3-D correspondences (OpenCV SQPnP), None on failure."""
    import cv2

    ok = w_P > 0
    if ok.sum() < 6:
        return None
    found, rvec, tvec = cv2.solvePnP(world_P3[ok], uv_P2[ok].astype(np.float64), K_33, None,
                                     flags=cv2.SOLVEPNP_SQPNP)
    if not found:
        return None
    R_w2c = cv2.Rodrigues(rvec)[0]
    return R_w2c.T, -R_w2c.T @ tvec[:, 0]


def init_state(smp: Samples, edges_E2: np.ndarray, n_images: int, uv_NP2: np.ndarray, hw: tuple[int, int],
               K_known_N33: np.ndarray | None, min_conf: float) -> State:
    """Spanning-tree initialisation (DUSt3R's ``init='mst'``): chain world pointmaps along the tree, then fit each
    camera (focal, pose, depth) to its own-frame prediction and each edge's similarity to the image points."""
    A, B = smp.pts_a_EP3.numpy(), smp.pts_b_EP3.numpy()  # float32 views; fits run in float64 per edge
    ca, cb = smp.conf_a_EP.numpy(), smp.conf_b_EP.numpy()
    wa, wb = conf_weight(ca), conf_weight(cb)
    score_E = ca.mean(1, dtype=np.float64) * cb.mean(1, dtype=np.float64)
    # pairs whose two directions disagree go last in the spanning tree: one wrong tree edge misplaces a subtree
    cycle_E = pair_consistency(A, B, wa, wb, edges_E2)
    bad = np.nan_to_num(cycle_E) > CYCLE_TOL
    if bad.any():
        log.info("global alignment init: %d of %d edges in pairs whose directions disagree by > %.0f%%",
                 bad.sum(), len(bad), 100 * CYCLE_TOL)
    score_E = score_E / (1 + (np.nan_to_num(cycle_E) / CYCLE_TOL) ** 2)
    # confident pixels only, unless an edge has too few of them
    wa_init, wb_init = np.where(ca > min_conf, wa, 0.0), np.where(cb > min_conf, wb, 0.0)
    few = ((wa_init > 0).sum(1) < MIN_INIT_PIXELS) | ((wb_init > 0).sum(1) < MIN_INIT_PIXELS)
    wa_init[few], wb_init[few] = wa[few], wb[few]

    world_NP3 = np.zeros(uv_NP2.shape[:2] + (3,))
    world_w_NP = np.zeros(uv_NP2.shape[:2])  # registration weights (confident pixels)
    world_ok_NP = np.zeros(uv_NP2.shape[:2], bool)  # every valid pixel
    known = np.zeros(n_images, bool)
    tree = maximum_spanning_tree(n_images, edges_E2, score_E)
    adjacency: dict[int, list[int]] = {k: [] for k in range(n_images)}
    for e in tree:
        adjacency[edges_E2[e, 0]].append(e)
        adjacency[edges_E2[e, 1]].append(e)
    if len(tree):
        e0 = next(e for e in tree if 0 in edges_E2[e])  # the best tree edge of image 0 defines the gauge
        i, j = edges_E2[e0]
        world_NP3[i], world_w_NP[i], world_NP3[j], world_w_NP[j] = A[e0], wa_init[e0], B[e0], wb_init[e0]
        world_ok_NP[i], world_ok_NP[j] = wa[e0] > 0, wb[e0] > 0
        known[[i, j]] = True
        queue = deque([i, j])
    else:
        queue = deque()
    while queue:
        k = queue.popleft()
        for e in adjacency[k]:
            i, j = edges_E2[e]
            new = j if i == k else i
            if known[new]:
                continue
            # register the edge's view of the known image onto its world points, then carry the other view
            src, w_src, dst, w_new, ok_new = ((A[e], wa_init[e], B[e], wb_init[e], wb[e] > 0) if i == k else
                                              (B[e], wb_init[e], A[e], wa_init[e], wa[e] > 0))
            s, R, t = umeyama_sim3(src, world_NP3[k], w_src * world_w_NP[k])
            world_NP3[new], world_w_NP[new], world_ok_NP[new] = s * dst @ R.T + t, w_new, ok_new
            known[new] = True
            queue.append(new)

    H, W = hw
    centre = np.array([W / 2, H / 2])
    order = np.argsort(-score_E, kind="stable")
    firsts, pos = np.unique(edges_E2[order, 0], return_index=True)
    own_edge = np.full(n_images, -1)
    own_edge[firsts] = order[pos]  # each image's best edge in which it is image i (own camera frame)
    if K_known_N33 is None:
        focal = np.array([estimate_focal(A[e], uv_NP2[k], wa[e], centre) if e >= 0 else np.nan
                          for k, e in enumerate(own_edge)])
        focal = np.where(np.isfinite(focal) & (focal > 0), focal, np.nanmedian(focal) if np.isfinite(focal).any()
                         else max(H, W))
        K = np.tile(np.eye(3), (n_images, 1, 1))
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2] = focal, focal, centre[0], centre[1]
    else:
        K = np.asarray(K_known_N33, np.float64)

    # each image's own frame (its best edge as image i) -> world, from the chained points
    own = own_edge >= 0
    G_s, G_R, G_t = np.ones(n_images), np.tile(np.eye(3), (n_images, 1, 1)), np.zeros((n_images, 3))
    for k in np.flatnonzero(own):
        e = own_edge[k]
        G_s[k], G_R[k], G_t[k] = umeyama_sim3(A[e], world_NP3[k], wa[e] * world_w_NP[k])
    both = np.flatnonzero(own[edges_E2[:, 0]] & own[edges_E2[:, 1]])
    if len(both):  # remove the tree's drift with every edge
        ids = np.flatnonzero(own)
        remap = np.cumsum(own) - 1
        s_rel, R_rel, t_rel = relative_similarities(A, B, wa, wb, edges_E2[both], both, own_edge)
        w_rel = wa[both].mean(1) * wb[both].mean(1) / (1 + (np.nan_to_num(cycle_E[both]) / CYCLE_TOL) ** 2)
        sub_edges = remap[edges_E2[both]]
        labels = connected_components(len(ids), sub_edges)
        anchors = np.unique(labels, return_index=True)[1]  # first image of each part; image 0 when it has a frame
        G_s[ids], G_R[ids], G_t[ids] = average_similarities(len(ids), sub_edges, s_rel, R_rel, t_rel, w_rel,
                                                            G_s[ids], G_R[ids], G_t[ids], anchors=anchors)

    R_N33, t_N3 = G_R.copy(), G_t.copy()
    depth = np.ones(uv_NP2.shape[:2])
    for k in range(n_images):
        e = own_edge[k]
        if e >= 0:
            z, w = G_s[k] * A[e, :, 2], wa[e]
        else:  # seen only as image j: its points through the best partner's frame, then PnP
            cand = np.flatnonzero((edges_E2[:, 1] == k) & own[edges_E2[:, 0]])
            if len(cand):
                e = cand[np.argmax(score_E[cand])]
                i = edges_E2[e, 0]
                a = relative_scale(A[own_edge[i]], A[e], wa[own_edge[i]] * wa[e])
                world_NP3[k] = G_s[i] * (B[e] / a) @ G_R[i].T + G_t[i]
                world_w_NP[k], world_ok_NP[k] = wb_init[e], wb[e] > 0
            pose = _pnp(world_NP3[k], uv_NP2[k], world_w_NP[k], K[k])
            if pose is None:
                log.warning("global alignment init: image %d has no own-frame prediction and PnP failed; "
                            "starting from the first camera's pose", k)
            else:
                R_N33[k], t_N3[k] = pose
            z, w = ((world_NP3[k] - t_N3[k]) @ R_N33[k])[:, 2], world_ok_NP[k]
        good = (w > 0) & (z > 0)
        depth[k] = np.where(good, z, np.median(z[good]) if good.any() else 1.0)
    state = State(R_N33, t_N3, depth, K, np.ones(len(edges_E2)), np.tile(np.eye(3), (len(edges_E2), 1, 1)),
                  np.zeros((len(edges_E2), 3)))
    return fit_edges(state, A, B, wa, wb, edges_E2, uv_NP2)


def fit_edges(state: State, A: np.ndarray, B: np.ndarray, wa: np.ndarray, wb: np.ndarray, edges_E2: np.ndarray,
              uv_NP2: np.ndarray, chunk: int = 512) -> State:
    """Each edge's similarity by a weighted Umeyama fit of both its pointmaps onto the current image points."""
    X = world_points(state, uv_NP2)
    s_E, R_E, t_E = state.s_E.copy(), state.R_E33.copy(), state.t_E3.copy()
    for k0 in range(0, len(edges_E2), chunk):
        sl = slice(k0, k0 + chunk)
        i, j = edges_E2[sl, 0], edges_E2[sl, 1]
        w = np.concatenate([wa[sl], wb[sl]], 1)
        s, R, t = umeyama_sim3(np.concatenate([A[sl], B[sl]], 1), np.concatenate([X[i], X[j]], 1), w)
        live = w.sum(1) > 0  # an edge without any weight keeps the identity
        s_E[sl][live], R_E[sl][live], t_E[sl][live] = s[live], R[live], t[live]
    return replace(state, s_E=s_E, R_E33=R_E, t_E3=t_E)
