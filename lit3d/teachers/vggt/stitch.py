"""Scenes larger than one forward pass: overlapping chunks of views, each predicted in its own first view's frame,
brought into one frame through the views they share (Sim(3)), then optionally anchored to known camera centres.

Chunks sharing views form a graph. A spanning tree of it (most shared confident pixels first) chains the chunks'
Sim(3)s from the first chunk; where the graph has loops (a closing chunk joining a trajectory's end to its start,
or views held by non-consecutive chunks), all chunk Sim(3)s are then refined jointly by least squares on every
shared pixel's points, which spreads the drift accumulated along the chain over the loop instead of leaving it
at one seam.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from lit3d.align.init import maximum_spanning_tree
from lit3d.align.optimize import so3_exp
from lit3d.geometry import umeyama_sim3

log = logging.getLogger(__name__)

MAX_FIT_POINTS = 50_000
"""Points (evenly strided) of one pair of chunks used to fit and refine their Sim(3)s."""
REFINE_ITERATIONS = 30
"""Most Levenberg-Marquardt steps of the joint refinement (from the tree's start it converges in a few)."""

Sim3 = tuple[float, np.ndarray, np.ndarray]
"""``(s, R_33, t_3)``: the map x -> s R x + t."""


@dataclass
class ViewSet:
    """Predictions for a set of views in one frame (a chunk's own, or the stitched one)."""

    frames: np.ndarray
    """(S,) indices of the views (into the list of views being labelled)."""
    pts_SHW3: np.ndarray
    """World points of every pixel (float32 or float64; transforms keep the dtype)."""
    conf_SHW: np.ndarray
    valid_SHW: np.ndarray
    cam2world_S44: np.ndarray
    """Camera-to-world poses (rotation orthonormal; the frame's scale is in the translations)."""

    def transformed(self, s: float, R: np.ndarray, t: np.ndarray) -> "ViewSet":
        """The same views in the frame x -> s R x + t."""
        poses = self.cam2world_S44.copy()
        poses[:, :3, :3] = R @ poses[:, :3, :3]
        poses[:, :3, 3] = s * poses[:, :3, 3] @ R.T + t
        pts = (s * self.pts_SHW3 @ R.T + t).astype(self.pts_SHW3.dtype)
        return ViewSet(self.frames, pts, self.conf_SHW, self.valid_SHW, poses)


def chunk_ranges(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive chunks of at most ``size`` views, each sharing ``overlap`` views with the last."""
    if not 0 < overlap < size:
        raise ValueError(f"teacher.chunk_overlap must be in [1, chunk_size - 1] = [1, {size - 1}], got {overlap}")
    ranges, start = [], 0
    while True:
        end = min(start + size, n)
        ranges.append((start, end))
        if end == n:
            return ranges
        start = end - overlap


def chunk_frames(n: int, size: int, overlap: int, loop: bool = False) -> list[np.ndarray]:
    """Sorted view indices of each chunk: those of :func:`chunk_ranges` and, with ``loop`` (a trajectory that
    returns to its start) and more views than one chunk holds, one more chunk of the first ``size - size // 2``
    and last ``size // 2`` views, which closes the chain of chunks into a ring."""
    chunks = [np.arange(start, end) for start, end in chunk_ranges(n, size, overlap)]
    if loop and len(chunks) > 1:
        tail = size // 2
        chunks.append(np.concatenate([np.arange(size - tail), np.arange(n - tail, n)]))
    return chunks


def shared_points(src: ViewSet, dst: ViewSet, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``src``'s and ``dst``'s points (P, 3) of the pixels of the shared ``frames`` valid in both, each in its own
    set's frame (float64), and their weights (P,): the lower confidence. At most ~``MAX_FIT_POINTS``, evenly strided."""
    i_src = np.searchsorted(src.frames, frames)
    i_dst = np.searchsorted(dst.frames, frames)
    both = src.valid_SHW[i_src] & dst.valid_SHW[i_dst]
    if both.sum() < 3:
        raise ValueError(f"chunks sharing views {frames.tolist()} have fewer than 3 valid pixels in common: raise "
                         "teacher.chunk_overlap or lower align.min_conf")
    step = max(1, int(both.sum()) // MAX_FIT_POINTS)
    a, b = src.pts_SHW3[i_src][both][::step], dst.pts_SHW3[i_dst][both][::step]
    w = np.minimum(src.conf_SHW[i_src][both], dst.conf_SHW[i_dst][both])[::step]
    return a.astype(np.float64), b.astype(np.float64), w.astype(np.float64)


def fit_sim3(src: ViewSet, dst: ViewSet, frames: np.ndarray) -> Sim3:
    """Sim(3) taking ``src``'s points of the shared ``frames`` onto ``dst``'s (confidence-weighted least squares)."""
    s, R, t = umeyama_sim3(*shared_points(src, dst, frames))
    return float(s), np.asarray(R), np.asarray(t)


def compose(outer: Sim3, inner: Sim3) -> Sim3:
    """The Sim(3) ``outer o inner`` (``inner`` applied first)."""
    (s1, R1, t1), (s2, R2, t2) = outer, inner
    return s1 * s2, R1 @ R2, s1 * R1 @ t2 + t1


def apply_sim3(sim: Sim3, pts_P3: np.ndarray) -> np.ndarray:
    s, R, t = sim
    return s * pts_P3 @ R.T + t


def chunk_graph(chunks: list[ViewSet]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Edges (E, 2) ``(a, b)``, a < b, between chunks sharing views, and per edge the :func:`shared_points` of
    chunk b (source) and chunk a (target)."""
    edges, points = [], []
    for a in range(len(chunks)):
        for b in range(a + 1, len(chunks)):
            shared = np.intersect1d(chunks[a].frames, chunks[b].frames)
            if len(shared):
                edges.append((a, b))
                points.append(shared_points(chunks[b], chunks[a], shared))
    return np.array(edges, dtype=np.int64).reshape(-1, 2), points


def chain_tree(n_chunks: int, edges_E2: np.ndarray, points: list, tree: np.ndarray) -> list[Sim3 | None]:
    """Each chunk's Sim(3) into chunk 0's frame, chained from chunk 0 along the ``tree`` (edge ids): every tree
    edge registers the new chunk's shared points onto the placed one's (Umeyama). None: not reached."""
    incident: dict[int, list[int]] = {k: [] for k in range(n_chunks)}
    for e in tree:
        for k in edges_E2[e]:
            incident[int(k)].append(int(e))
    sims: list[Sim3 | None] = [None] * n_chunks
    sims[0] = (1.0, np.eye(3), np.zeros(3))
    todo = deque([0])
    while todo:
        k = todo.popleft()
        for e in incident[k]:
            a, b = (int(v) for v in edges_E2[e])
            new = b if k == a else a
            if sims[new] is not None:
                continue
            pts_b, pts_a, w = points[e]
            src, dst = (pts_b, pts_a) if new == b else (pts_a, pts_b)
            s, R, t = umeyama_sim3(src, dst, w)
            sims[new] = compose(sims[k], (float(s), np.asarray(R), np.asarray(t)))
            todo.append(new)
    return sims


def _jacobian_P37(y_P3: np.ndarray) -> np.ndarray:
    """d y / d (dt, omega, ds) of y -> e^ds Exp(omega) y + dt at 0: ``[I | -[y]x | y]`` per point."""
    J = np.zeros(y_P3.shape[:-1] + (3, 7))
    J[..., [0, 1, 2], [0, 1, 2]] = 1.0
    x, y, z = y_P3[..., 0], y_P3[..., 1], y_P3[..., 2]
    J[..., 0, 4], J[..., 0, 5], J[..., 1, 3], J[..., 1, 5], J[..., 2, 3], J[..., 2, 4] = z, -y, -z, x, y, -x
    J[..., 6] = y_P3
    return J


def points_cost(sims: list[Sim3], edges_E2: np.ndarray, points: list) -> float:
    """Weighted sum of squared distances between the two chunks' predictions of every shared pixel, in chunk 0's
    frame (its units)."""
    return float(sum((w * ((apply_sim3(sims[b], pb) - apply_sim3(sims[a], pa)) ** 2).sum(-1)).sum()
                     for (a, b), (pb, pa, w) in zip(edges_E2, points)))


def refine_sim3s(sims: list[Sim3], edges_E2: np.ndarray, points: list,
                 iterations: int = REFINE_ITERATIONS) -> list[Sim3]:
    """The chunks' Sim(3)s minimising :func:`points_cost` jointly, chunk 0's fixed (the gauge): Levenberg-Marquardt
    on left-multiplied Sim(3) increments, 7 unknowns per chunk (dense 7K x 7K normal equations: K is small)."""
    K = len(sims)
    cost, damping = points_cost(sims, edges_E2, points), 1e-9
    for _ in range(iterations):
        H, g = np.zeros((7 * K, 7 * K)), np.zeros(7 * K)
        for (a, b), (pb, pa, w) in zip(edges_E2, points):
            ya, yb = apply_sim3(sims[a], pa), apply_sim3(sims[b], pb)
            r = yb - ya
            blocks = ((b, _jacobian_P37(yb)), (a, -_jacobian_P37(ya)))
            for i, Ji in blocks:
                g[7 * i:7 * i + 7] += np.einsum("p,pki,pk->i", w, Ji, r)
                for j, Jj in blocks:
                    H[7 * i:7 * i + 7, 7 * j:7 * j + 7] += np.einsum("p,pki,pkj->ij", w, Ji, Jj)
        H, g = H[7:, 7:], g[7:]  # chunk 0 stays where it is
        while True:  # damp until the step lowers the cost (a Gauss-Newton step almost always does)
            step = -np.linalg.solve(H + damping * np.diag(np.diag(H)), g).reshape(K - 1, 7)
            R_inc = so3_exp(torch.from_numpy(step[:, 3:6])).numpy()
            trial = [sims[0]] + [compose((float(np.exp(d[6])), Ri, d[:3]), sim)
                                 for d, Ri, sim in zip(step, R_inc, sims[1:])]
            trial_cost = points_cost(trial, edges_E2, points)
            if trial_cost <= cost or damping > 1e6:
                break
            damping *= 10
        if trial_cost > cost:
            break
        converged = cost - trial_cost <= 1e-12 * cost
        sims, cost, damping = trial, trial_cost, max(damping / 10, 1e-9)
        if converged:
            break
    return sims


def stitch(chunks: list[ViewSet], refine: bool = True) -> ViewSet:
    """All views in the first chunk's frame: the chunks' Sim(3)s chained along a maximum spanning tree of the chunk
    graph (weight: shared confidence) and, where the graph has loops and ``refine`` is set, refined jointly
    (:func:`refine_sim3s`). A view keeps the prediction of the first chunk holding it. Chunk ``frames`` must be
    sorted."""
    edges, points = chunk_graph(chunks)
    scores = np.array([w.sum() for _, _, w in points])
    sims = chain_tree(len(chunks), edges, points, maximum_spanning_tree(len(chunks), edges, scores))
    if None in sims:
        k = sims.index(None)
        raise ValueError(f"chunk of views {chunks[k].frames[0]}..{chunks[k].frames[-1]} shares no view with the "
                         "chunks joined to the first one")
    loops = len(edges) - (len(chunks) - 1)
    if loops and refine:
        before = points_cost(sims, edges, points)
        sims = refine_sim3s(sims, edges, points)
        log.info("vggt: %d chunks with %d loop(s): joint Sim(3) refinement, shared-point cost %.4g -> %.4g",
                 len(chunks), loops, before, points_cost(sims, edges, points))
    placed = [chunk.transformed(*sim) for chunk, sim in zip(chunks, sims)]
    first: dict[int, tuple[int, int]] = {}
    for k, chunk in enumerate(chunks):
        for i, f in enumerate(chunk.frames):
            first.setdefault(int(f), (k, i))
    frames = np.array(sorted(first))
    pick = [first[f] for f in frames]
    return ViewSet(frames, *(np.stack([getattr(placed[k], name)[i] for k, i in pick])
                             for name in ("pts_SHW3", "conf_SHW", "valid_SHW", "cam2world_S44")))


def anchor_to_poses(views: ViewSet, cam2world_S44: np.ndarray) -> tuple[ViewSet, float]:
    """``views`` in the frame of the known poses (Sim(3) between camera centres), and the centres' RMS residual."""
    ours, known = views.cam2world_S44[:, :3, 3], cam2world_S44[:, :3, 3]
    for centres, whose in ((known, "dataset"), (ours, "predicted")):
        spread = np.linalg.svd(centres - centres.mean(0), compute_uv=False) if len(centres) >= 3 else np.zeros(2)
        if not spread[1] > 1e-6 * max(spread[0], 1e-12):
            raise ValueError(f"anchoring needs at least 3 non-collinear {whose} camera centres")
    s, R, t = (np.asarray(x) for x in umeyama_sim3(ours, known))
    anchored = views.transformed(float(s), R, t)
    residual = float(np.sqrt(((anchored.cam2world_S44[:, :3, 3] - known) ** 2).sum(-1).mean()))
    return anchored, residual
