"""Initialisation of global alignment: connected components, maximum spanning tree, chained Umeyama fits.

Works on the sampled pixels only (``Samples``). Steps: (1) a maximum spanning tree over edge confidences (pairs
whose two directions disagree demoted) chains Umeyama registrations of the shared view into world pointmaps,
rooted at image 0; (2) each image's own frame (its best edge as image i) is registered onto them, and similarity
averaging over every edge removes the tree's drift; (3) focals, camera poses and depths follow, images seen only
as image j are placed by PnP; (4) each edge's similarity is fitted to the image points.
"""
from __future__ import annotations

import logging
import warnings
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


class DisjointSets:
    """Union-find over ``n`` items with path halving; ``union`` keeps the smaller root (components numbered by
    their smallest member)."""

    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> bool:
        """Joins the sets of ``a`` and ``b``; False when they were one already."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[max(ra, rb)] = min(ra, rb)
        return True


def connected_components(n_images: int, edges_E2: np.ndarray) -> np.ndarray:
    """(N,) component label per image, numbered by smallest member (union-find)."""
    sets = DisjointSets(n_images)
    for i, j in edges_E2:
        sets.union(i, j)
    roots = np.array([sets.find(a) for a in range(n_images)])
    return np.unique(roots, return_inverse=True)[1]


def maximum_spanning_tree(n_images: int, edges_E2: np.ndarray, score_E: np.ndarray) -> np.ndarray:
    """Edge ids of a maximum spanning tree (Kruskal, best directed edge of each pair wins)."""
    sets = DisjointSets(n_images)
    tree = [e for e in np.argsort(-score_E, kind="stable") if sets.union(edges_E2[e, 0], edges_E2[e, 1])]
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


def estimate_focal(pts_P3: np.ndarray, uv_P2: np.ndarray, w_P: np.ndarray, centre_2: np.ndarray):
    """Least-squares focal (fx = fy) so that pixels = f * (x/z, y/z) + centre, for camera-frame points; batched
    over leading dimensions (a float for one image)."""
    ok = (w_P > 0) & (pts_P3[..., 2] > 1e-9)
    xy = pts_P3[..., :2] / np.where(ok, pts_P3[..., 2], 1.0)[..., None]
    w = np.where(ok, w_P, 0.0)[..., None]
    f = (w * (uv_P2 - centre_2) * xy).sum((-1, -2)) / np.maximum((w * xy**2).sum((-1, -2)), 1e-12)
    return float(f) if np.ndim(f) == 0 else f


def _chain_tree(A: np.ndarray, B: np.ndarray, wa_init: np.ndarray, wb_init: np.ndarray, edges_E2: np.ndarray,
                tree: np.ndarray, n_images: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Chain world pointmaps along the spanning tree, rooted at image 0's best tree edge: each tree edge's view
    of its known image is registered (Umeyama) onto that image's world points and carries the other view.

    Returns, per image, the edge and side (0: image i's view, 1: image j's) of the view that placed it (-1: not
    reached) and the similarities ``(s, R, t)`` taking that view to the world. A registration onto points moved
    by a similarity is that similarity after the registration onto the unmoved points, so every tree edge is
    fitted at once against the view that placed its known image, and the fits are composed along the tree."""
    view_e, view_side = np.full(n_images, -1), np.zeros(n_images, np.int64)
    s_N, R_N, t_N = np.ones(n_images), np.tile(np.eye(3), (n_images, 1, 1)), np.zeros((n_images, 3))
    if not len(tree):
        return view_e, view_side, (s_N, R_N, t_N)
    adjacency: dict[int, list[int]] = {k: [] for k in range(n_images)}
    for e in tree:
        adjacency[edges_E2[e, 0]].append(e)
        adjacency[edges_E2[e, 1]].append(e)
    e0 = next(e for e in tree if 0 in edges_E2[e])  # the best tree edge of image 0 defines the gauge
    view_e[edges_E2[e0]], view_side[edges_E2[e0]] = e0, (0, 1)
    steps = []  # (new image, known image, edge, side of the known image in the edge), breadth first
    queue = deque(edges_E2[e0])
    while queue:
        k = queue.popleft()
        for e in adjacency[k]:
            new, side_k = (edges_E2[e, 1], 0) if edges_E2[e, 0] == k else (edges_E2[e, 0], 1)
            if view_e[new] < 0:
                view_e[new], view_side[new] = e, 1 - side_k
                steps.append((new, k, e, side_k))
                queue.append(new)
    new, known, e, side = np.array(steps, np.int64).reshape(-1, 4).T
    s_U, R_U, t_U = np.ones(len(e)), np.tile(np.eye(3), (len(e), 1, 1)), np.zeros((len(e), 3))
    for k0 in range(0, len(e), chunk):
        sl = slice(k0, k0 + chunk)
        src, w_src = _views(A, B, wa_init, wb_init, e[sl], side[sl])
        dst, w_dst = _views(A, B, wa_init, wb_init, view_e[known[sl]], view_side[known[sl]])
        s_U[sl], R_U[sl], t_U[sl] = umeyama_sim3(src, dst, w_src * w_dst)
    for n, k, s, R, t in zip(new, known, s_U, R_U, t_U):  # parents come first
        s_N[n], R_N[n], t_N[n] = s_N[k] * s, R_N[k] @ R, s_N[k] * R_N[k] @ t + t_N[k]
    return view_e, view_side, (s_N, R_N, t_N)


def _fill_depth(z_KP: np.ndarray, w_KP: np.ndarray) -> np.ndarray:
    """Depths with the unusable ones (weight 0 or depth <= 0) replaced by the median of the usable ones of their
    row (1 when there are none)."""
    good = (w_KP > 0) & (z_KP > 0)
    with warnings.catch_warnings():  # rows without a usable depth: all-NaN median
        warnings.simplefilter("ignore", RuntimeWarning)
        fill = np.nan_to_num(np.nanmedian(np.where(good, z_KP, np.nan), axis=-1), nan=1.0)
    return np.where(good, z_KP, np.asarray(fill)[..., None])


def _views(A: np.ndarray, B: np.ndarray, wa: np.ndarray, wb: np.ndarray, e: np.ndarray, side: np.ndarray):
    """Points (K, P, 3) and weights (K, P) of the views ``side`` (0: image i's, 1: image j's) of edges ``e``."""
    first = side[:, None] == 0
    return np.where(first[..., None], A[e], B[e]), np.where(first, wa[e], wb[e])


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

    tree = maximum_spanning_tree(n_images, edges_E2, score_E)
    view_e, view_side, (s_T, R_T, t_T) = _chain_tree(A, B, wa_init, wb_init, edges_E2, tree, n_images)
    world_NP3 = np.zeros(uv_NP2.shape[:2] + (3,))
    world_w_NP = np.zeros(uv_NP2.shape[:2])  # registration weights (confident pixels)
    world_ok_NP = np.zeros(uv_NP2.shape[:2], bool)  # every valid pixel
    placed = np.flatnonzero(view_e >= 0)
    pts, world_w_NP[placed] = _views(A, B, wa_init, wb_init, view_e[placed], view_side[placed])
    world_NP3[placed] = s_T[placed, None, None] * pts @ R_T[placed].transpose(0, 2, 1) + t_T[placed, None]
    world_ok_NP[placed] = _views(A, B, wa, wb, view_e[placed], view_side[placed])[1] > 0

    H, W = hw
    centre = np.array([W / 2, H / 2])
    order = np.argsort(-score_E, kind="stable")
    firsts, pos = np.unique(edges_E2[order, 0], return_index=True)
    own_edge = np.full(n_images, -1)
    own_edge[firsts] = order[pos]  # each image's best edge in which it is image i (own camera frame)
    if K_known_N33 is None:
        # (images without an own edge read some other edge's row here; np.where drops them)
        focal = np.where(own_edge >= 0, estimate_focal(A[own_edge], uv_NP2, wa[own_edge], centre), np.nan)
        focal = np.where(np.isfinite(focal) & (focal > 0), focal, np.nanmedian(focal) if np.isfinite(focal).any()
                         else max(H, W))
        K = np.tile(np.eye(3), (n_images, 1, 1))
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2] = focal, focal, centre[0], centre[1]
    else:
        K = np.asarray(K_known_N33, np.float64)

    # each image's own frame (its best edge as image i) -> world, from the chained points
    own = own_edge >= 0
    G_s, G_R, G_t = np.ones(n_images), np.tile(np.eye(3), (n_images, 1, 1)), np.zeros((n_images, 3))
    own_ids = np.flatnonzero(own)
    for k0 in range(0, len(own_ids), 512):
        ids = own_ids[k0:k0 + 512]
        e = own_edge[ids]
        G_s[ids], G_R[ids], G_t[ids] = umeyama_sim3(A[e], world_NP3[ids], wa[e] * world_w_NP[ids])
    both = np.flatnonzero(own[edges_E2[:, 0]] & own[edges_E2[:, 1]])
    if len(both):  # remove the tree's drift with every edge
        ids = own_ids
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
    depth[own_ids] = _fill_depth(G_s[own_ids, None] * A[own_edge[own_ids], :, 2], wa[own_edge[own_ids]])
    for k in np.flatnonzero(~own):  # seen only as image j: its points through the best partner's frame, then PnP
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
        depth[k] = _fill_depth(z, w)
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
