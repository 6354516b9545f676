"""DUSt3R-style global alignment that scales: pairwise pointmaps -> poses, focals and world pointmaps.

Pipeline per connected component: sample pixels -> spanning-tree init (chained Umeyama) -> Adam on the samples
(per image pose, focal, log-depth; per edge pose and scale) -> express in the output frame -> dense closed-form
fusion, frame by frame (:class:`lit3d.align.dense.DenseFusion`: :func:`solve_global` gives the small solution,
from which the label cache streams frames to disk; :func:`global_alignment` collects them in memory). Output
frames: ``dataset`` (known poses fixed, or a final Sim(3) fit to their centres), else ``first_camera`` (camera 0
at the origin; scale normalised so the median distance of the points to it is 1, or the teacher's metres when
``metric``).
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from lit3d.align.config import AlignConfig
from lit3d.align.dense import DenseFusion, SolvedAlignment, Solution, one_torch_thread
from lit3d.align.init import State, connected_components, fit_edges, init_state, world_points
from lit3d.align.inputs import EdgeInputs, check_inputs, conf_weight, gather_samples, sample_pixels
from lit3d.align.optimize import OptimConfig, optimise, robust_weight
from lit3d.align.result import AlignResult
from lit3d.geometry import is_valid_pose, umeyama_sim3

log = logging.getLogger(__name__)
KNOWN_POSE_MODES = ("fixed", "anchor", "ignore")
SINGLE_THREAD_VIEWS = 2**19
"""CPU alignments with fewer sampled point views per iteration (2 x edges x pixels per image) run on one torch
thread: threads gain little on operations this small (N=24, swin-3, 150k views: 1.07 s with 2 threads, 1.17 s
with 1 on an idle 2-core machine; the complete graph, 574k views: 2.5 s vs 3.2 s), while an operation that waits
for a thread another job preempted costs more than the whole operation (swin-3 on a busy machine: 23 s vs 1.2 s)."""


def global_alignment(edges, pts_i, pts_j_in_i, conf_i, conf_j, known_poses=None, known_intrinsics=None, *,
                     valid_i=None, valid_j=None, n_images: int | None = None, metric: bool = False,
                     **options) -> AlignResult:
    """Align E pairwise predictions (DUSt3R contract) into one world frame.

    ``edges`` (E, 2) image indices (i, j); ``pts_i``/``pts_j_in_i`` (E, H, W, 3) both in camera-i frame, any unit;
    ``conf_i``/``conf_j`` (E, H, W) (weights log(conf)); numpy arrays, memory maps or tensors. ``known_poses``
    (N, 4, 4) camera-to-world, rows with NaN unknown; ``known_intrinsics`` (N, 3, 3), (N,) focals or one focal
    (principal point then (W/2, H/2)). ``metric``: predictions are in metres. ``options``: any
    :class:`AlignConfig` field (``iterations``, ``lr``, ``n_pixels``, ``robust``, ``known_pose_mode``, ...).
    Returns poses (N, 4, 4), ``focals_N``, world pointmaps (N, H, W, 3), confidences (N, H, W) and per-edge
    residuals as an :class:`AlignResult`.
    """
    names = {f.name for f in dataclasses.fields(AlignConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"global_alignment: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    cfg = AlignConfig(**{**options, "method": "global"})
    inp = check_inputs(edges, pts_i, pts_j_in_i, conf_i, conf_j, valid_i, valid_j, n_images)
    return align_global(cfg, inp, known_poses, known_intrinsics, metric)


def _known_arrays(inp: EdgeInputs, known_poses, known_intrinsics, mode: str):
    N, (H, W) = inp.n_images, inp.hw
    poses = None
    if known_poses is not None and mode != "ignore":
        poses = np.asarray(known_poses.cpu() if isinstance(known_poses, torch.Tensor) else known_poses, np.float64)
        if poses.shape != (N, 4, 4):
            raise ValueError(f"global_alignment: known_poses has shape {poses.shape}, expected ({N}, 4, 4)")
        bad = [k for k in range(N) if np.isfinite(poses[k]).all() and not is_valid_pose(poses[k])]
        if bad:
            raise ValueError(f"global_alignment: known pose of image {bad[0]} is not a rigid camera-to-world matrix")
        if not np.isfinite(poses).all(axis=(1, 2)).any():
            poses = None
    K = None
    if known_intrinsics is not None:
        k = np.asarray(known_intrinsics.cpu() if isinstance(known_intrinsics, torch.Tensor) else known_intrinsics,
                       np.float64)
        if k.shape == (N, 3, 3):
            K = k
        elif k.shape in ((N,), (), (1,)):
            K = np.tile(np.eye(3), (N, 1, 1))
            K[:, 0, 0] = K[:, 1, 1] = np.broadcast_to(k.reshape(-1), (N,))
            K[:, 0, 2], K[:, 1, 2] = W / 2, H / 2
        else:
            raise ValueError(f"global_alignment: known_intrinsics has shape {k.shape}, expected ({N}, 3, 3) or ({N},)")
        if not (np.isfinite(K).all() and (K[:, 0, 0] > 0).all() and (K[:, 1, 1] > 0).all()):
            raise ValueError("global_alignment: known_intrinsics must be finite with positive focals")
        outside = (K[:, 0, 2] < 0) | (K[:, 0, 2] > W) | (K[:, 1, 2] < 0) | (K[:, 1, 2] > H)
        if outside.any():  # most likely intrinsics of another resolution than the predictions'
            k = int(np.flatnonzero(outside)[0])
            raise ValueError(f"global_alignment: known_intrinsics of image {k} put the principal point at "
                             f"({K[k, 0, 2]:g}, {K[k, 1, 2]:g}), outside the {H}x{W} predictions")
    return poses, K


def align_global(cfg: AlignConfig, inp: EdgeInputs, known_poses=None, known_intrinsics=None,
                 metric: bool = False) -> AlignResult:
    """Checked inputs -> :class:`AlignResult` with every frame's pointmap in memory; disconnected graphs per
    ``cfg.on_disconnected``."""
    return DenseFusion(inp, solve_global(cfg, inp, known_poses, known_intrinsics, metric)).result()


def solve_global(cfg: AlignConfig, inp: EdgeInputs, known_poses=None, known_intrinsics=None,
                 metric: bool = False) -> SolvedAlignment:
    """The sparse stage: cameras and edge similarities in the output frame, for :class:`DenseFusion` (memory: the
    pixel subsample of every edge, never the dense predictions)."""
    if cfg.known_pose_mode not in KNOWN_POSE_MODES:
        raise ValueError(f"align.known_pose_mode: unknown mode {cfg.known_pose_mode!r}; "
                         f"valid: {', '.join(KNOWN_POSE_MODES)}")
    poses, K = _known_arrays(inp, known_poses, known_intrinsics, cfg.known_pose_mode)
    labels = connected_components(inp.n_images, inp.edges_E2)
    in_edges = np.zeros(inp.n_images, bool)
    in_edges[inp.edges_E2.ravel()] = True
    comps = np.unique(labels[in_edges])
    if len(comps) == 1 and in_edges.all():
        return _solve_connected(cfg, inp, poses, K, metric)
    members = [np.flatnonzero(labels == c) for c in comps]  # images in no edge have nothing to align
    if len(comps) > 1 and cfg.on_disconnected != "components":
        shown = "; ".join(_ranges(m) for m in members[:8]) + ("; ..." if len(comps) > 8 else "")
        raise ValueError(f"global_alignment: the edge graph is not connected: {len(comps)} components of images "
                         f"[{shown}]; add edges between them or set on_disconnected='components'")
    if len(comps) > 1:
        log.warning("global alignment: %d connected components aligned separately", len(comps))
    if not in_edges.all():
        log.info("global alignment: %d of %d images are in no edge and stay invalid", (~in_edges).sum(), inp.n_images)
    return _merge_components(cfg, inp, poses, K, metric, labels, members)


def _ranges(ids: np.ndarray) -> str:
    """Compact text of sorted indices, e.g. ``0-3,7``."""
    breaks = np.flatnonzero(np.diff(ids) != 1)
    starts, ends = np.r_[ids[0], ids[breaks + 1]], np.r_[ids[breaks], ids[-1]]
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts, ends))


def _merge_components(cfg, inp, poses, K, metric, labels, members) -> SolvedAlignment:
    """Each component solved on its own, gathered into one solution of every frame and edge."""
    N, E = inp.n_images, inp.n_edges
    cam2world, K_out = np.full((N, 4, 4), np.nan), np.full((N, 3, 3), np.nan)
    s_E, R_E33, t_E3, side_w_E2 = np.zeros(E), np.tile(np.eye(3), (E, 1, 1)), np.zeros((E, 3)), np.zeros((E, 2))
    one_thread = np.zeros(N, bool)
    if poses is not None:  # images in no edge keep their known pose
        cam2world[np.isfinite(poses).all(axis=(1, 2))] = poses[np.isfinite(poses).all(axis=(1, 2))]
    if K is not None:
        K_out = K.copy()
    component = np.full(N, -1)
    frames, units, stats = set(), set(), {}
    for c, ids in enumerate(members):
        emask = labels[inp.edges_E2[:, 0]] == labels[ids[0]]
        sub = _solve_connected(cfg, inp.subset(emask, ids), None if poses is None else poses[ids],
                               None if K is None else K[ids], metric)
        cam2world[ids], K_out[ids], one_thread[ids] = sub.sol.cam2world_N44, sub.sol.K_N33, sub.one_thread_N
        s_E[emask], R_E33[emask], t_E3[emask] = sub.sol.s_E, sub.sol.R_E33, sub.sol.t_E3
        side_w_E2[emask] = sub.sol.side_weight_E2
        component[ids] = c
        frames.add(sub.frame)
        units.add(sub.unit)
        stats[f"component_{c}"] = sub.stats
    return SolvedAlignment(Solution(cam2world, K_out, s_E, R_E33, t_E3, side_w_E2),
                           frame=frames.pop() if len(frames) == 1 else "first_camera",
                           unit=units.pop() if len(units) == 1 else "normalised", min_conf=cfg.min_conf,
                           chunk=cfg.chunk_edges, device=sub.device, one_thread_N=one_thread, component_N=component,
                           stats=stats)


def fit_sim3_to_poses(R_est_K33, t_est_K3, R_known_K33, t_known_K3) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) taking estimated cameras onto known ones: Umeyama on the centres when there are 3 or
    more non-collinear ones; otherwise the rotation from the orientations and the scale from the centres."""
    n = len(t_est_K3)
    if n >= 3:
        sv = np.linalg.svd(t_known_K3 - t_known_K3.mean(0), compute_uv=False)
        if sv[1] > 1e-3 * sv[0]:
            s, R, t = umeyama_sim3(t_est_K3, t_known_K3)
            return float(s), R, t
    U, _, Vt = np.linalg.svd(np.einsum("kij,klj->il", R_known_K33, R_est_K33))  # chordal mean of R_known R_est^T
    R = U @ np.diag([1, 1, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    mu_e, mu_k = t_est_K3.mean(0), t_known_K3.mean(0)
    de, dk = (t_est_K3 - mu_e) @ R.T, t_known_K3 - mu_k
    s = float((de * dk).sum() / (de**2).sum()) if n >= 2 and (de**2).sum() > 0 else 1.0
    return s, R, mu_k - s * R @ mu_e


def _median_distance(X_NP3: np.ndarray, w_NP: np.ndarray, centre_3: np.ndarray) -> float:
    d = np.linalg.norm(X_NP3 - centre_3, axis=-1)[w_NP > 0]
    return float(np.median(d)) if len(d) else 1.0


def _to_output_frame(state: State, poses, known, fixed, to_out, scale_fixed: bool, metric: bool, pred_scale: float,
                     uv_NP2: np.ndarray, w_NP: np.ndarray) -> tuple[State, str, str]:
    """Move the solution from the optimisation frame to the output frame; returns it with ``frame`` and ``unit``.
    ``uv_NP2`` are the sampled pixels, ``w_NP`` their weights."""
    frame, unit = "first_camera", "normalised"
    if fixed.any():  # the optimisation frame was the dataset's, shifted and scaled
        frame, unit = "dataset", "m" if scale_fixed else unit
        state = state.apply_sim3(*to_out)
    elif known.any():  # anchor: a final Sim(3) fit of the estimated cameras to the known ones
        s, R, t = fit_sim3_to_poses(state.R_N33[known], state.t_N3[known], poses[known, :3, :3], poses[known, :3, 3])
        state = state.apply_sim3(s, R, t)
        frame, unit = "dataset", "m" if known.sum() >= 2 else unit
    else:  # the first camera becomes the origin
        R0, c0 = state.R_N33[0], state.t_N3[0]
        state = state.apply_sim3(1.0, R0.T, -R0.T @ c0)
    if unit == "m":
        return state, frame, unit
    anchor = np.flatnonzero(known)[0] if known.any() else 0
    if metric:  # edge scales (acting on the teacher's metres) get geometric mean 1
        scale, unit = float(np.exp(-np.log(state.s_E / pred_scale).mean())), "m"
    else:  # the median distance of the points to the anchor camera becomes 1
        scale = 1 / _median_distance(world_points(state, uv_NP2), w_NP, state.t_N3[anchor])
    c = state.t_N3[anchor]
    return state.apply_sim3(scale, np.eye(3), c - scale * c), frame, unit


def _one_thread(device: torch.device, n_views: int) -> bool:
    """Whether a problem of ``n_views`` sampled point views runs on one torch CPU thread (``SINGLE_THREAD_VIEWS``)."""
    return device.type == "cpu" and n_views < SINGLE_THREAD_VIEWS


def _solve_connected(cfg: AlignConfig, inp: EdgeInputs, poses, K, metric: bool) -> SolvedAlignment:
    t0 = time.perf_counter()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    idx_NP = sample_pixels(inp, cfg.n_pixels, cfg.sampling, cfg.chunk_edges)
    one_thread = _one_thread(device, 2 * inp.n_edges * idx_NP.shape[1])
    with one_torch_thread(one_thread):
        solved = _solve_sampled(cfg, inp, poses, K, metric, device, idx_NP, t0)
    solved.one_thread_N = np.full(inp.n_images, one_thread)
    return solved


def _solve_sampled(cfg: AlignConfig, inp: EdgeInputs, poses, K, metric: bool, device: torch.device,
                   idx_NP: np.ndarray, t0: float) -> SolvedAlignment:
    """Alignment of a connected graph on the pixels ``idx_NP`` (N, P); ``t0`` its start (perf_counter)."""
    N, (H, W) = inp.n_images, inp.hw
    uv_NP2 = np.stack([idx_NP % W, idx_NP // W], -1).astype(np.float64)
    smp = gather_samples(inp, idx_NP, cfg.chunk_edges)
    if smp.nonfinite:
        log.warning("global alignment: masked %d non-finite predicted pixels in %d of %d edges",
                     smp.nonfinite, smp.nonfinite_edges, inp.n_edges)
    state = init_state(smp, inp.edges_E2, N, uv_NP2, (H, W), K, cfg.init_min_conf)
    wa, wb = conf_weight(smp.conf_a_EP).numpy(), conf_weight(smp.conf_b_EP).numpy()
    w_NP = np.zeros((N, idx_NP.shape[1]))
    np.add.at(w_NP, inp.edges_E2[:, 0], wa)
    np.add.at(w_NP, inp.edges_E2[:, 1], wb)
    # work in a frame of scene size ~1 so that one learning rate fits every unknown
    X = world_points(state, uv_NP2)
    centre = (w_NP[..., None] * X).sum((0, 1)) / max(w_NP.sum(), 1e-12)
    size = _median_distance(X, w_NP, centre)
    state = state.apply_sim3(1 / size, np.eye(3), -centre / size)

    known = np.zeros(N, bool) if poses is None else np.isfinite(poses).all(axis=(1, 2))
    fixed = known if cfg.known_pose_mode == "fixed" else np.zeros(N, bool)
    to_out = None  # (s, R, t) from the optimisation frame to the output frame, when known in advance
    if fixed.any():
        # move the init onto the known cameras, then optimise in that frame shifted and scaled to size ~1
        s, R, t = fit_sim3_to_poses(state.R_N33[fixed], state.t_N3[fixed], poses[fixed, :3, :3], poses[fixed, :3, 3])
        c_k, L_k = poses[fixed, :3, 3].mean(0), s  # the state has size 1, so the dataset size is s
        state = state.apply_sim3(s, R, t).apply_sim3(1 / L_k, np.eye(3), -c_k / L_k)
        state.R_N33[fixed], state.t_N3[fixed] = poses[fixed, :3, :3], (poses[fixed, :3, 3] - c_k) / L_k
        state = fit_edges(state, smp.pts_a_EP3.numpy(), smp.pts_b_EP3.numpy(), wa, wb, inp.edges_E2, uv_NP2)
        to_out = (L_k, np.eye(3), c_k)
    centres = poses[fixed, :3, 3] if fixed.any() else np.zeros((0, 3))
    scale_fixed = len(centres) >= 2 and np.ptp(centres, axis=0).max() > 1e-9 * (1 + np.abs(centres).max())
    ocfg = OptimConfig(cfg.iterations, cfg.lr, cfg.lr_min, cfg.schedule, cfg.robust, cfg.robust_scale,
                       free_focal=K is None, normalise_scale=not scale_fixed)
    t1 = time.perf_counter()
    log.info("global alignment: initialised %d images, %d edges (%d px/image) in %.1f s; %d Adam iterations on %s",
             N, inp.n_edges, idx_NP.shape[1], t1 - t0, cfg.iterations, device)
    # small chunks stay in cache on a CPU; a GPU wants large launches
    chunk = cfg.chunk_edges if device.type == "cpu" else 32 * cfg.chunk_edges
    state, side_dist_E2, loss = optimise(state, smp, inp.edges_E2, uv_NP2, ~fixed, ocfg, device, chunk)
    t2 = time.perf_counter()

    state, frame, unit = _to_output_frame(state, poses, known, fixed, to_out, scale_fixed, metric, smp.pred_scale,
                                          uv_NP2, w_NP)
    cam2world = np.tile(np.eye(4), (N, 1, 1))
    cam2world[:, :3, :3], cam2world[:, :3, 3] = state.R_N33, state.t_N3
    if fixed.any():
        cam2world[fixed] = poses[fixed]  # exactly the given matrices, not a float32 round trip
    side_w = robust_weight(side_dist_E2, cfg.robust, cfg.robust_scale)
    sol = Solution(cam2world, state.K_N33, state.s_E / smp.pred_scale, state.R_E33, state.t_E3, side_w)
    stats = {"nonfinite_pixels": smp.nonfinite, "nonfinite_edges": smp.nonfinite_edges,
             "iterations": cfg.iterations, "n_pixels": int(idx_NP.shape[1]), **loss, "seconds_init": t1 - t0,
             "seconds_optimise": t2 - t1, "device": str(device)}
    log.info("global alignment: solved %d images, %d edges, %d px/image, loss %.4g -> %.4g, %.1f s (init %.1f, "
             "optimise %.1f); dense fusion follows frame by frame", N, inp.n_edges, idx_NP.shape[1],
             loss["loss_first"], loss["loss_final"], time.perf_counter() - t0, t1 - t0, t2 - t1)
    return SolvedAlignment(sol, frame, unit, cfg.min_conf, cfg.chunk_edges, str(device),
                           one_thread_N=np.zeros(N, bool), stats=stats)
