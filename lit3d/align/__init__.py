"""Global alignment: pairwise teacher predictions -> one world-frame pointmap and confidence per frame.

``align_predictions`` is the pipeline's entry; ``method`` selects ``known_poses`` (closed form with the
dataset's poses) or ``global`` (DUSt3R-style optimisation, see :mod:`lit3d.align.global_alignment`).
"""
from lit3d.align.config import AlignConfig
from lit3d.align.result import AlignResult
from lit3d.align.known_poses import align_known_poses
from lit3d.align.global_alignment import align_global, global_alignment
from lit3d.align.inputs import check_inputs


def align_predictions(cfg: AlignConfig, edges_E2, pred: dict, n_frames: int, K_N33, cam2world_N44=None,
                      metric: bool = False) -> AlignResult:
    """Fuse pairwise predictions (DUSt3R contract, arrays of E edges) into world pointmaps of ``n_frames``.

    ``pred`` holds ``pts_i``, ``pts_j_in_i`` (E, H, W, 3), ``conf_i``, ``conf_j`` (E, H, W) and optionally
    ``valid_i``, ``valid_j``. ``metric`` says the teacher's unit is already the scene's (metres).
    """
    if cfg.method == "known_poses":
        return align_known_poses(edges_E2, pred, n_frames, cam2world_N44, metric=metric, min_conf=cfg.min_conf)
    if cfg.method == "global":
        inp = check_inputs(edges_E2, pred["pts_i"], pred["pts_j_in_i"], pred["conf_i"], pred["conf_j"],
                           pred.get("valid_i"), pred.get("valid_j"), n_images=n_frames)
        return align_global(cfg, inp, cam2world_N44, K_N33 if cfg.use_known_intrinsics else None, metric=metric)
    raise ValueError(f"align.method: unknown method {cfg.method!r}; valid methods: known_poses, global")


__all__ = ["AlignConfig", "AlignResult", "align_predictions", "align_known_poses", "global_alignment"]
