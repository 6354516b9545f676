"""Global alignment: exact and noisy recovery, known quantities, anchoring, no collapse, bad inputs, scale."""
import logging
import re

import numpy as np
import pytest
import torch

from lit3d.align import AlignConfig, align_predictions, global_alignment
from lit3d.align.global_alignment import fit_sim3_to_poses
from lit3d.align.init import State
from lit3d.align.inputs import Samples
from lit3d.align.inputs import conf_weight
from lit3d.align.optimize import Adam, Objective, OptimConfig, robust_rho, so3_exp
from lit3d.align.synthetic import make_predictions, make_scene, scene_graph
from lit3d.geometry import umeyama_sim3

H, W = 24, 32
FAST = dict(iterations=100, n_pixels=256)


def case(n: int = 6, graph: str = "complete", noise: float = 0.0, seed: int = 0, **kw):
    scene = make_scene(n, H, W, seed=seed)
    edges = scene_graph(n, graph)
    return scene, edges, make_predictions(scene, edges, noise=noise, seed=seed + 1, **kw)


def run(edges, pred, **options):
    return global_alignment(edges, pred["pts_i"], pred["pts_j_in_i"], pred["conf_i"], pred["conf_j"], **options)


def centre_errors(scene, cam2world_N44, sim3: bool = True) -> np.ndarray:
    """Camera-centre errors relative to the scene size, after a Sim(3) fit when ``sim3``."""
    est, true = cam2world_N44[:, :3, 3], scene.cam2world_N44[:, :3, 3]
    if sim3:
        s, R, t = umeyama_sim3(est, true)
        est = s * est @ R.T + t
    return np.linalg.norm(est - true, axis=1) / scene.scene_size


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(2, 50, 3))
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    R *= np.linalg.det(R)
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 0.5])
    s, R_est, t = umeyama_sim3(src, dst, rng.uniform(0.5, 1, (2, 50)))
    np.testing.assert_allclose(s, [2.5, 2.5], rtol=1e-10)
    np.testing.assert_allclose(R_est, np.stack([R, R]), atol=1e-10)
    s_t, R_t, _ = umeyama_sim3(torch.as_tensor(src[0]), torch.as_tensor(dst[0]))
    assert isinstance(R_t, torch.Tensor) and abs(float(s_t) - 2.5) < 1e-9


def test_exact_recovery_on_noiseless_predictions():
    scene, edges, pred = case(6, "complete")
    res = run(edges, pred)  # default settings
    assert centre_errors(scene, res.cam2world_N44).max() < 1e-4
    assert res.frame == "first_camera" and res.unit == "normalised"
    np.testing.assert_allclose(res.cam2world_N44[0], np.eye(4), atol=1e-9)
    np.testing.assert_allclose(res.focals_N, scene.K_33[0, 0], rtol=1e-4)
    # relative rotations are exact too
    R_est, R_true = res.cam2world_N44[:, :3, :3], scene.cam2world_N44[:, :3, :3]
    np.testing.assert_allclose(R_est[0].T @ R_est[3], R_true[0].T @ R_true[3], atol=1e-4)
    # dense points: true points after the camera-centre Sim(3)
    s, R, t = umeyama_sim3(res.cam2world_N44[:, :3, 3], scene.cam2world_N44[:, :3, 3])
    pts = s * res.pts_world_NHW3.astype(np.float64) @ R.T + t
    err = np.linalg.norm(pts - np.stack([scene.world_points(k) for k in range(6)]), axis=-1)
    assert res.valid_NHW.all() and err.max() / scene.scene_size < 1e-4
    assert res.residual < 1e-4 and res.edge_residual_E.shape == (len(edges),)


def test_one_percent_noise_keeps_cameras_within_one_percent(caplog, monkeypatch):
    scene, edges, pred = case(10, "swin-2", noise=0.01)
    threads, real_optimise = [], global_alignment.__globals__["optimise"]
    monkeypatch.setitem(global_alignment.__globals__, "optimise",
                        lambda *a, **k: threads.append(torch.get_num_threads()) or real_optimise(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with caplog.at_level(logging.INFO, logger="lit3d.align"):
            res = run(edges, pred, **FAST)
        assert threads == [1] and torch.get_num_threads() == 2  # a small problem runs on one thread, then restores
    finally:
        torch.set_num_threads(before)
    assert centre_errors(scene, res.cam2world_N44).max() < 0.01
    assert res.conf_NHW.shape == (10, H, W) and res.pts_world_NHW3.dtype == np.float32
    progress = [r.getMessage() for r in caplog.records if re.search(r"iteration \d+/", r.getMessage())]
    assert len(progress) == 11 and progress[-1].startswith("global alignment: iteration 100/100, loss ")
    assert "iteration 10/100" in progress[1] and "lr 0.00" in progress[1]  # every 10 %, with the learning rate


def test_known_poses_are_kept_exactly_and_anchor_the_metric_frame():
    scene, edges, pred = case(6, "complete", noise=0.01)
    known = np.full((6, 4, 4), np.nan)
    known[[0, 2, 5]] = scene.cam2world_N44[[0, 2, 5]]
    res = run(edges, pred, known_poses=known, **FAST)
    assert np.array_equal(res.cam2world_N44[[0, 2, 5]], scene.cam2world_N44[[0, 2, 5]])
    assert res.frame == "dataset" and res.unit == "m"
    assert centre_errors(scene, res.cam2world_N44, sim3=False).max() < 0.01  # no Sim(3): already metric
    true = np.stack([scene.world_points(k) for k in range(6)])
    err = np.linalg.norm(res.pts_world_NHW3 - true, axis=-1)[res.valid_NHW]
    assert np.median(err) / scene.scene_size < 0.01


def test_all_poses_known_and_known_intrinsics():
    scene, edges, pred = case(5, "complete")
    K = np.tile(scene.K_33, (5, 1, 1))
    res = run(edges, pred, known_poses=scene.cam2world_N44, known_intrinsics=K, **FAST)
    assert np.array_equal(res.cam2world_N44, scene.cam2world_N44)
    np.testing.assert_array_equal(res.focals_N, scene.K_33[0, 0])
    err = np.linalg.norm(res.pts_world_NHW3 - np.stack([scene.world_points(k) for k in range(5)]), axis=-1)
    assert err.max() / scene.scene_size < 1e-4


def test_anchor_mode_fits_the_estimate_to_the_known_centres():
    scene, edges, pred = case(6, "complete", noise=0.01)
    res = run(edges, pred, known_poses=scene.cam2world_N44, known_pose_mode="anchor", **FAST)
    assert res.frame == "dataset" and res.unit == "m"
    assert not np.array_equal(res.cam2world_N44, scene.cam2world_N44)  # solved, then anchored
    assert centre_errors(scene, res.cam2world_N44, sim3=False).max() < 0.01


def test_fit_sim3_to_two_poses_uses_orientations():
    rng = np.random.default_rng(1)
    R_est = np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(2)])
    R_est *= np.linalg.det(R_est)[:, None, None]
    t_est = rng.normal(size=(2, 3))
    R = so3_exp(torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64))[0].numpy()
    s, R_fit, t_fit = fit_sim3_to_poses(R_est, t_est, R @ R_est, 2.0 * t_est @ R.T + 1.0)
    assert abs(s - 2.0) < 1e-9 and np.allclose(R_fit, R) and np.allclose(t_fit, 1.0)


def _objective(normalise: bool, robust: str = "none", free_N=(True, True, True), free_focal: bool = True):
    """A tiny random objective; returns it with the state, samples, edges and pixels it was built from."""
    rng = np.random.default_rng(0)
    N, E, P = 3, 4, 16
    state = State(np.tile(np.eye(3), (N, 1, 1)), rng.normal(size=(N, 3)), rng.uniform(1, 2, (N, P)),
                  np.tile(np.diag([30.0, 30.0, 1.0]), (N, 1, 1)), rng.uniform(0.5, 2, E),
                  np.tile(np.eye(3), (E, 1, 1)), rng.normal(size=(E, 3)))
    state.K_N33[:, :2, 2] = 16.0, 12.0
    smp = Samples(torch.randn(E, P, 3), torch.randn(E, P, 3), torch.rand(E, P) * 5 + 1, torch.rand(E, P) * 5 + 1,
                  1.0, 0, 0)
    edges = np.array([[0, 1], [1, 2], [2, 0], [1, 0]])
    uv = rng.uniform(0, 32, (N, P, 2))
    cfg = OptimConfig(10, 0.01, 1e-6, "cosine", robust, 0.5, free_focal=free_focal, normalise_scale=normalise)
    obj = Objective(state, smp, edges, uv, np.array(free_N), cfg, torch.device("cpu"), chunk=3)
    return obj, state, smp, edges, uv


def _skew(v_B3: torch.Tensor) -> torch.Tensor:
    x, y, z = v_B3.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)


def _reference_loss(obj: Objective, state: State, smp: Samples, edges: np.ndarray, uv: np.ndarray,
                    rot_N3, rot_E3, trans_N3, trans_E3, log_f_N, log_s_E, log_d_NP) -> torch.Tensor:
    """The objective written directly with autograd in float64, from the raw inputs and the unknowns."""
    f64 = dict(dtype=torch.float64)
    K = torch.as_tensor(state.K_N33, **f64)
    uv = torch.as_tensor(uv, **f64)
    R_N = torch.as_tensor(state.R_N33, **f64) @ torch.linalg.matrix_exp(_skew(rot_N3))
    t_N = torch.as_tensor(state.t_N3, **f64) + trans_N3
    f = torch.exp(log_f_N)[:, None]  # focals relative to the initial ones
    ray = torch.stack([(uv[..., 0] - K[:, None, 0, 2]) / (K[:, None, 0, 0] * f),
                       (uv[..., 1] - K[:, None, 1, 2]) / (K[:, None, 1, 1] * f), torch.ones_like(uv[..., 0])], -1)
    X = torch.einsum("nij,npj->npi", R_N, ray * torch.exp(log_d_NP)[..., None]) + t_N[:, None]
    live = (conf_weight(smp.conf_a_EP).sum(1) + conf_weight(smp.conf_b_EP).sum(1)) > 0
    log_s = log_s_E - log_s_E[live].mean() + float(np.log(state.s_E).mean()) if obj.cfg.normalise_scale else log_s_E
    M = torch.exp(log_s)[:, None, None] * torch.as_tensor(state.R_E33, **f64) @ torch.linalg.matrix_exp(_skew(rot_E3))
    t_E = torch.as_tensor(state.t_E3, **f64) + trans_E3
    total = 0
    for pts, conf, img in ((smp.pts_a_EP3, smp.conf_a_EP, edges[:, 0]), (smp.pts_b_EP3, smp.conf_b_EP, edges[:, 1])):
        y = torch.einsum("eij,epj->epi", M, pts.double()) + t_E[:, None]
        d = torch.linalg.vector_norm(y - X[img], dim=-1)
        total = total + (conf_weight(conf).double() * robust_rho(d, obj.cfg.robust, obj.cfg.robust_scale)).sum()
    return total / (2 * len(edges) * pts.shape[1])


def test_collapse_to_zero_is_impossible():
    for normalise in (False, True):
        obj, state, *_ = _objective(normalise)
        with torch.no_grad():
            loss = float(obj())
            # shrink the whole solution towards the origin
            obj.log_depth_NP -= 20.0
            obj.log_scale_E -= 20.0
            obj.t0_N3 *= np.exp(-20.0)
            obj.t0_E3 *= np.exp(-20.0)
            collapsed = float(obj())
        if normalise:  # the edge scales' geometric mean is pinned, so shrinking cannot lower the loss to zero
            assert collapsed > 0.1 * loss
            assert abs(obj.edge_scale().log().mean().item() - np.log(state.s_E).mean()) < 1e-5
        else:  # without the normalisation the trivial solution exists
            assert collapsed < 1e-6 * loss


@pytest.mark.parametrize("robust, normalise, free_N, free_focal", [
    ("none", True, (True, True, True), True), ("cauchy", False, (True, False, True), False)])
def test_hand_written_gradient_matches_autograd(robust, normalise, free_N, free_focal):
    obj, state, smp, edges, uv = _objective(normalise, robust, free_N, free_focal)
    rng = np.random.default_rng(1)
    named = ("rot_N3", "rot_E3", "trans_N3", "trans_E3", "log_focal_N", "log_scale_E", "log_depth_NP")
    with torch.no_grad():  # away from the start, rotations of every size: 0, tiny (series) and large
        obj.rot_E3.copy_(torch.tensor([[0.0, 0.0, 0.0], [1e-5, -2e-5, 0.0], [0.02, -0.05, 0.01], [0.4, -0.9, 0.3]]))
        for name in named[2:]:
            getattr(obj, name).add_(torch.as_tensor(0.05 * rng.normal(size=getattr(obj, name).shape)))
        obj.rot_N3.copy_(torch.as_tensor(0.3 * rng.normal(size=(3, 3))) * torch.tensor(free_N)[:, None])
        obj.trans_N3.mul_(torch.tensor(free_N)[:, None])
        obj.log_focal_N.mul_(float(free_focal))
    value, grad = obj.value_and_grad()
    params = [getattr(obj, name).double().clone().requires_grad_() for name in named]
    ref = _reference_loss(obj, state, smp, edges, uv, *params)
    assert abs(float(value) - float(ref.detach())) < 1e-5 * float(ref.detach())
    ref_grads = torch.autograd.grad(ref, params)
    for name, ref_grad in zip(named, ref_grads):
        view = getattr(obj, name)
        hand = grad.as_strided(view.shape, view.stride(), view.storage_offset()).double()
        frozen = {"rot_N3": ~torch.tensor(free_N), "trans_N3": ~torch.tensor(free_N),
                  "log_focal_N": torch.tensor([not free_focal] * 3)}.get(name)
        if frozen is not None:  # frozen unknowns get no gradient, the others the true one
            assert (hand[frozen] == 0).all()
            ref_grad = torch.where(frozen.view(-1, *([1] * (ref_grad.dim() - 1))), 0.0, ref_grad)
        torch.testing.assert_close(hand, ref_grad, rtol=1e-3, atol=1e-4 * float(ref_grad.abs().max()), msg=name)


def test_so3_exp_is_the_matrix_exponential():
    omega = torch.tensor([[0.0, 0.0, 0.0], [1e-6, 0.0, -2e-6], [0.05, 0.02, -0.03], [1.0, -2.0, 0.5]],
                         dtype=torch.float64)
    torch.testing.assert_close(so3_exp(omega), torch.linalg.matrix_exp(_skew(omega)), rtol=0, atol=1e-12)
    assert torch.equal(so3_exp(torch.zeros(1, 3))[0], torch.eye(3))


def test_adam_matches_torch_adam():
    rng = np.random.default_rng(2)
    ours, ref = torch.zeros(50), torch.zeros(50).requires_grad_()
    opt, torch_opt = Adam(ours, betas=(0.9, 0.9)), torch.optim.Adam([ref], betas=(0.9, 0.9))
    for lr in (0.01, 0.005, 0.001):
        grad = torch.as_tensor(rng.normal(size=50), dtype=torch.float32)
        grad[:5] = 0  # frozen entries stay exactly where they are
        opt.step(grad, lr)
        torch_opt.param_groups[0]["lr"] = lr
        ref.grad = grad
        torch_opt.step()
    torch.testing.assert_close(ours, ref.detach())
    assert (ours[:5] == 0).all()


def test_robust_loss_resists_outlier_pairs():
    scene, edges, pred = case(10, "swin-3", noise=0.01, n_outliers=4)
    res = run(edges, pred, robust="cauchy", **FAST)
    assert centre_errors(scene, res.cam2world_N44).max() < 0.01
    # residuals ignore robust weights: outlier edges stand out
    assert res.edge_residual_E[pred["outlier_E"]].min() > 5 * np.median(res.edge_residual_E)


def test_disconnected_graph_error_names_the_components():
    _, edges, pred = case(8, "complete")
    keep = (edges < 4).all(1) | (edges >= 4).all(1)
    sub = {k: v[keep] for k, v in pred.items() if k.startswith(("pts", "conf"))}
    with pytest.raises(ValueError, match=r"not connected: 2 components of images \[0-3; 4-7\]") as err:
        run(edges[keep], sub)
    assert "\n" not in str(err.value)
    res = run(edges[keep], sub, on_disconnected="components", **FAST)
    assert list(res.component_N) == [0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(res.cam2world_N44[[0, 4]], np.stack([np.eye(4)] * 2), atol=1e-9)


def test_non_finite_predictions_are_masked_and_counted(caplog):
    scene, edges, pred = case(5, "complete")
    pred["pts_i"][3, 2:4, 5] = np.nan
    pred["pts_j_in_i"][7, 0, :3] = np.inf
    pred["conf_j"][9, 10, 10] = np.nan
    with caplog.at_level(logging.WARNING):
        res = run(edges, pred, **FAST)
    assert res.stats["nonfinite_pixels"] == 6 and res.stats["nonfinite_edges"] == 3
    assert "masked 6 non-finite predicted pixels in 3 of 20 edges" in caplog.text
    assert np.isfinite(res.pts_world_NHW3).all() and np.isfinite(res.cam2world_N44).all()
    assert centre_errors(scene, res.cam2world_N44).max() < 1e-3


def test_mismatched_shapes_give_one_line_errors():
    _, edges, pred = case(4, "complete")
    args = [edges, pred["pts_i"], pred["pts_j_in_i"], pred["conf_i"], pred["conf_j"]]
    bad = {1: pred["pts_i"][:, :, :-1], 2: pred["pts_j_in_i"][:-1], 3: pred["conf_i"][..., None],
           0: edges[:, :1]}
    for pos, value in bad.items():
        with pytest.raises(ValueError) as err:
            global_alignment(*[value if k == pos else a for k, a in enumerate(args)])
        assert "\n" not in str(err.value) and "shape" in str(err.value)
    with pytest.raises(ValueError, match="known_poses has shape"):
        global_alignment(*args, known_poses=np.eye(4)[None])
    K_big = np.tile(np.array([[90.0, 0, 64], [0, 90, 48], [0, 0, 1]]), (4, 1, 1))  # for 96x128, not 24x32
    with pytest.raises(ValueError, match="outside the 24x32 predictions"):
        global_alignment(*args, known_intrinsics=K_big)
    with pytest.raises(ValueError, match="with itself"):
        global_alignment(np.array([[0, 0]] * len(edges)), *args[1:])
    with pytest.raises(TypeError, match="unknown option"):
        global_alignment(*args, iteration=3)


def test_torch_inputs_and_confident_sampling():
    scene, edges, pred = case(5, "complete")
    t = {k: torch.as_tensor(v) for k, v in pred.items() if k.startswith(("pts", "conf"))}
    res = run(edges, t, sampling="confident", **FAST)
    assert centre_errors(scene, res.cam2world_N44).max() < 1e-3


def test_pipeline_entry_uses_scene_intrinsics_and_poses_and_skips_frames_without_edges():
    scene, edges, pred = case(5, "complete", scale_range=(1.0, 1.0))
    pred["valid_i"] = np.ones(pred["conf_i"].shape, bool)
    pred["valid_j"] = pred["valid_i"]
    K = np.tile(scene.K_33, (6, 1, 1))
    poses = np.concatenate([scene.cam2world_N44, np.eye(4)[None]])  # frame 5 is in no edge
    cfg = AlignConfig(method="global", iterations=50, n_pixels=256)
    res = align_predictions(cfg, edges, pred, 6, K, poses, metric=True)
    assert res.frame == "dataset" and res.unit == "m"
    assert np.array_equal(res.cam2world_N44, poses) and not res.valid_NHW[5].any()
    res = align_predictions(cfg, edges, pred, 6, K, None, metric=True)
    assert res.frame == "first_camera" and res.unit == "m"  # metric teacher: edge scales stay ~1
    assert np.allclose(res.edge_scale_E, 1.0, rtol=1e-3)
    with pytest.raises(ValueError, match="valid methods: known_poses, global"):
        align_predictions(AlignConfig(method="nope"), edges, pred, 6, K)


@pytest.mark.slow
def test_hundreds_of_images_on_a_sparse_graph():
    scene, edges, pred = case(300, "swin-3", noise=0.01)
    res = run(edges, pred, n_pixels=256)
    assert centre_errors(scene, res.cam2world_N44).max() < 0.01


def test_spanning_tree_chain_is_exact_on_noiseless_predictions():
    """The tree's registrations, fitted at once and composed along the tree, put every image's points in one
    frame: the true world up to one similarity (a long sparse chain: a wrong composition would drift)."""
    from lit3d.align.init import _chain_tree, _views, init_state, maximum_spanning_tree
    from lit3d.align.inputs import check_inputs, gather_samples, sample_pixels

    n = 12
    scene, edges, pred = case(n, "swin-2")
    inp = check_inputs(edges, pred["pts_i"], pred["pts_j_in_i"], pred["conf_i"], pred["conf_j"])
    idx = sample_pixels(inp, 128, "grid", 256)
    smp = gather_samples(inp, idx, 256)
    A, B = smp.pts_a_EP3.numpy(), smp.pts_b_EP3.numpy()
    wa, wb = conf_weight(smp.conf_a_EP.numpy()), conf_weight(smp.conf_b_EP.numpy())
    tree = maximum_spanning_tree(n, edges, np.random.default_rng(0).uniform(size=len(edges)))
    view_e, view_side, (s, R, t) = _chain_tree(A, B, wa, wb, edges, tree, n)
    pts, _ = _views(A, B, wa, wb, view_e, view_side)
    world = (s[:, None, None] * pts @ R.transpose(0, 2, 1) + t[:, None]).reshape(-1, 3)
    true = np.stack([scene.world_points(k).reshape(-1, 3)[idx[k]] for k in range(n)]).reshape(-1, 3)
    s_fit, R_fit, t_fit = umeyama_sim3(world, true)
    err = np.linalg.norm(s_fit * world @ R_fit.T + t_fit - true, axis=-1)
    assert (view_e >= 0).all() and err.max() < 1e-5 * scene.scene_size
    # and the whole init: cameras and focals before any optimisation
    state = init_state(smp, edges, n, np.stack([idx % W, idx // W], -1).astype(float), (H, W), None, 3.0)
    cam2world = np.tile(np.eye(4), (n, 1, 1))
    cam2world[:, :3, :3], cam2world[:, :3, 3] = state.R_N33, state.t_N3
    assert centre_errors(scene, cam2world).max() < 1e-6
    np.testing.assert_allclose(state.K_N33[:, 0, 0], scene.K_33[0, 0], rtol=1e-6)


def test_images_seen_only_as_second_view_are_placed_by_pnp():
    scene = make_scene(5, H, W, seed=3)
    edges = np.array([[0, j] for j in range(1, 5)])  # one reference image, no reverse pairs
    pred = make_predictions(scene, edges, noise=0.0, seed=4)
    res = run(edges, pred, **FAST)
    assert centre_errors(scene, res.cam2world_N44).max() < 1e-3


def test_similarity_averaging_closes_the_loop():
    from lit3d.align.averaging import average_similarities

    rng = np.random.default_rng(0)
    n = 40
    R_true = so3_exp(torch.as_tensor(rng.normal(size=(n, 3)), dtype=torch.float64)).numpy()
    s_true, t_true = np.exp(rng.normal(size=n)), rng.normal(size=(n, 3))
    edges = np.array([(k, (k + d) % n) for k in range(n) for d in (1, 2)])
    i, j = edges[:, 0], edges[:, 1]
    # M_e = G_i^-1 o G_j
    R_e = np.einsum("eji,ejk->eik", R_true[i], R_true[j])
    s_e = s_true[j] / s_true[i]
    t_e = np.einsum("eji,ej->ei", R_true[i], t_true[j] - t_true[i]) / s_true[i, None]
    drift = so3_exp(torch.as_tensor(0.05 * rng.normal(size=(n, 3)), dtype=torch.float64)).numpy()
    s0, t0 = s_true * np.exp(0.1 * rng.normal(size=n)), t_true + 0.1 * rng.normal(size=(n, 3))
    s, R, t = average_similarities(n, edges, s_e, R_e, t_e, np.ones(len(edges)), s0, R_true @ drift, t0, anchors=[0])
    # the anchor stays at its (perturbed) start: compare up to that gauge
    G = np.linalg.inv(np.block([[s[0] * R[0], t[0][:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]))
    T = np.block([[s_true[0] * R_true[0], t_true[0][:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]) @ G
    np.testing.assert_allclose(t @ T[:3, :3].T + T[:3, 3], t_true, atol=1e-6)
    np.testing.assert_allclose(s * np.cbrt(np.linalg.det(T[:3, :3])), s_true, rtol=1e-6)
