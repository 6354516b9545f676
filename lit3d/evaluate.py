"""``lit3d evaluate RUN_DIR [checkpoint=best|last|PATH] [option=value ...] [key=value ...]``.

Scores a trained student on the test frames of its label cache: point errors against the teacher's labels and,
where the scene has depth and poses, of teacher and student against the ground truth; camera localization by
PnP-RANSAC from the student's points (averaged over rolled and zoomed copies of each image, ``tta``) and, as the
reference, from the teacher's labels (settings chosen on the validation frames with ``tune=true``) and, with
``matching=true``, from SIFT matches against the training labels; the student's poses refined by such matches
(``matching_refine``, on by default; ``loc/*`` stays the student alone); how far each test frame is from the
training cameras (``gen/*``,
:mod:`lit3d.metrics.coverage`). Writes into the run directory: ``metrics.json`` (fit's keys kept; ``eval/*``,
``loc/*``, ``loc_teacher/*``, ``loc_matching/*``, ``loc_refined/*``, ``gen/*``, ``export/*`` replaced), ``eval_frames.csv`` (one row per frame),
``eval_tuning.csv`` (with ``tune=true``), figures (``eval_frames.png``, ``eval_loc_cdf_t.png``,
``eval_loc_cdf_r.png``, ``eval_generalisation.png``: where frames fail against the training cameras,
``eval_pointclouds.html``) and ``exports/`` (PLY clouds, ONNX and TorchScript student
with their metadata).

Any config key (``data.*``, ``cache_dir``, ...) overrides the run's ``config.yaml``; the options are
:class:`EvalOptions`. ``evaluate_run(run_dir, overrides) -> metrics`` is the same entry for notebooks. The
pieces (frames, predictions, errors, localization) live in :mod:`lit3d.runs`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lit3d.cache import LabelCache, build_labels
from lit3d.geometry import transform_points
from lit3d.metrics.coverage import generalisation, summarize_generalisation
from lit3d.metrics.localization import choose_setting, tuning_grid
from lit3d.metrics.matching import VIEWS_FILE, ViewDatabase
from lit3d.runs import (Frames, checkpoint_path, default_reprojection_px, labels_to_gt, load_frames, localize_frames,
                        match_frames, merge_metrics, nearest_rigid, point_errors, pose_to_gt, refine_frames,
                        resolve_device, run_config, training_views, with_ensemble, write_csv)
from lit3d.students.checkpoints import CheckpointFileError
from lit3d.students.module import StudentModule
from lit3d.students.tta import TestTimeOptions

__all__ = ["EvalOptions", "evaluate_run", "labels_to_gt", "main", "nearest_rigid", "parse_args", "pose_to_gt",
           "run_config"]

log = logging.getLogger("lit3d.evaluate")

EVAL_PREFIXES = ("eval/", "loc/", "loc_teacher/", "loc_matching/", "loc_refined/", "gen/")
"""metrics.json keys owned by this command: replaced on every evaluation (``export/`` too when it exports)."""


@dataclass
class EvalOptions(TestTimeOptions):
    checkpoint: str = "best"
    """best (falls back to last.ckpt when the run had no validation), last, or a .ckpt path."""
    split: str = "test"
    """Split of the label cache to evaluate."""
    reprojection_px: float = 0.0
    """RANSAC inlier threshold in student pixels (0 = 10 px at 640 px width scaled to the student's, >= 1 px)."""
    tune: bool = False
    """Choose the localization settings on the validation frames (RANSAC threshold 5 / 10 / 20 px at 640 px width,
    256 / 1000 iterations, LM refinement on / off: highest fraction within 5 cm / 5 deg, ties: lower median
    translation error; table in eval_tuning.csv) and use them for the evaluated split; overrides reprojection_px."""
    exports: bool = True
    """Write PLY clouds and the ONNX / TorchScript student, each checked against PyTorch."""
    export_atol: float = 1e-4
    """Largest accepted |exported - PyTorch| output difference, in the labels' unit."""
    figure_frames: int = 4
    """Frames shown in eval_frames.png (evenly spaced over the split)."""
    device: str = "auto"
    """Device of the student's forward pass: auto, cpu, cuda."""
    matching: bool = False
    """Also localize each frame by a classical yardstick: SIFT matches against the matching_views training frames
    nearest its true pose, lifted by their labels, PnP-RANSAC (matching_* columns, loc_matching/* metrics). A frame
    it misses too is one whose image and the training labels disagree, not only the student's miss."""
    matching_refine: bool = True
    """Also refine the student's pose of each frame by SIFT matches against the matching_views training frames
    nearest THAT pose (no true pose used: what lit3d localize does with new photos), kept where at
    least 30 matches agree on it (refined_* columns, loc_refined/* metrics; loc/* stays the student alone)."""
    matching_views: int = 10
    """Training frames each frame is matched against (by matching=true and matching_refine)."""
    matching_retrieval: bool = True
    """With matching_refine: where the views nearest the student's pose give no pose that 30 matches
    support, match against the matching_views training frames sharing the most matches with the frame."""
    matching_align: bool = True
    """With matching_refine: refine each matched pose by direct alignment, every labelled pixel of the 4 training
    frames holding the most of its inlier matches compared with the frame's grey values; kept where 90 % of the
    matches still agree (refined_aligned column, loc_refined/aligned_rate)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.matching_views < 1:
            raise ValueError(f"evaluate: matching_views must be at least 1, got {self.matching_views}")


# --- evaluation -------------------------------------------------------------------------------------------------
def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None,
                 options: EvalOptions | None = None) -> dict[str, float | str]:
    """Evaluate a run directory (see module doc); returns the evaluation's metrics (also merged into metrics.json)."""
    opt = options or EvalOptions()
    run_dir = Path(run_dir)
    device = resolve_device(opt.device)  # a device this machine lacks fails before any work
    cfg = run_config(run_dir, overrides)
    ckpt = checkpoint_path(run_dir, opt.checkpoint)
    module = StudentModule.load(ckpt)
    check_run_student(module, cfg, ckpt)
    predictor = with_ensemble(run_dir, module, opt.ensemble)  # the exports stay the run's own student
    size = tuple(module.hparams.img_size)
    cache, _ = build_labels(cfg)
    names = cache.split.get(opt.split) or []
    if not names:
        raise ValueError(f"label cache {cache.root} has no {opt.split!r} frames")
    info = cache.labels_info
    log.info("evaluating %s (%s) on %d %s frames of %s", run_dir, ckpt.name, len(names), opt.split, cache.root)
    fr = load_frames(cache, names, predictor, cfg.loader.batch_size, device, tta=opt)
    check_finite_predictions(fr, ckpt, opt.split)
    S_44, alignment = (labels_to_gt(cache, cache.split.get("train") or names) if fr.gt_valid_NHW.any()
                       else (None, "none (no depth and poses)"))
    loc = {"reprojection_px": opt.reprojection_px or default_reprojection_px(size[1]), "iterations": 1000,
           "refine": True}
    if opt.tune:
        loc = tune_localization(run_dir, cache, predictor, cfg.loader.batch_size, device, S_44, opt)
    else:
        (run_dir / "eval_tuning.csv").unlink(missing_ok=True)  # a stale table would not describe these settings
    err_rows, metrics = point_errors(fr, S_44)
    loc_rows, loc_metrics, poses = localize_frames(fr, S_44, **loc)
    metrics.update(loc_metrics)
    train_cam2world: list[np.ndarray] = []  # kept for the map while the frames stream past (they may be GiBs)

    def training_frames():
        for n in cache.split.get("train") or []:
            frame = cache.load_frame(n)
            train_cam2world.append(frame["cam2world"].astype(np.float64))
            yield frame

    gen_rows = generalisation([cache.load_frame(n) for n in names], training_frames(),
                              labels_in_pose_frame=info.get("frame") == "dataset")
    metrics.update(summarize_generalisation(gen_rows))
    match_rows: list[dict] = [{} for _ in names]
    if opt.matching:
        if S_44 is None or not np.all(np.isfinite(fr.cam2world_N44)):
            raise ValueError(f"matching=true needs the true poses of the {opt.split} frames (the scene has none)")
        match_rows, match_metrics = match_frames(cache, names, S_44, opt.matching_views)
        metrics.update(match_metrics)
    refined_rows: list[dict] = [{} for _ in names]
    views = None  # the training views' keypoints, computed once for the refinement and the export
    if opt.matching_refine:
        views = training_views(cache)
        refined_rows, refined_metrics = refine_frames(fr, poses["student_pnp"], views, S_44, loc["reprojection_px"],
                                                      opt.matching_views, retrieval=opt.matching_retrieval,
                                                      align=opt.matching_align)
        metrics.update(refined_metrics)
    metrics.update({
        "eval/checkpoint": str(ckpt), "eval/split": opt.split, "eval/n_frames": float(len(names)),
        "eval/reprojection_px": loc["reprojection_px"], "eval/ransac_iterations": float(loc["iterations"]),
        "eval/refine": loc["refine"], "eval/tuned": opt.tune, "eval/tta_views": float(opt.views()),
        **{f"eval/{k}": v for k, v in opt.record().items()},
        "eval/student_ms_per_image": fr.ms_per_image,
        "eval/device": str(device), "eval/gt_alignment": alignment, "eval/labels_frame": info.get("frame"),
        "eval/labels_unit": info.get("unit"),
    })
    check_finite_metrics(metrics, ckpt)
    write_csv(run_dir / "eval_frames.csv", [{"frame": n, **e, **p, **m, **r, **g} for n, e, p, m, r, g
                                             in zip(names, err_rows, loc_rows, match_rows, refined_rows, gen_rows)])
    _figures(run_dir, fr, S_44, loc_rows, poses, opt.figure_frames)
    _generalisation_map(run_dir, train_cam2world, loc_rows, gen_rows, poses)
    if opt.exports:
        metrics.update(_exports(run_dir, module, opt.split, fr, info, opt.export_atol,
                                lambda: views if views is not None else training_views(cache)))
    merge_metrics(run_dir, metrics, EVAL_PREFIXES + (("export/",) if opt.exports else ()))
    nan = float("nan")
    log.info("%s: student %.1f %% at 5 cm / 5 deg (teacher labels %.1f %%), median %.2f cm / %.2f deg", run_dir,
             100 * metrics.get("loc/acc_5cm5deg", nan), 100 * metrics.get("loc_teacher/acc_5cm5deg", nan),
             metrics.get("loc/median_t_cm", nan), metrics.get("loc/median_r_deg", nan))
    if opt.matching:
        log.info("classical yardstick (SIFT matches against training labels): %.1f %% at 5 cm / 5 deg, median %.2f cm",
                 100 * metrics["loc_matching/acc_5cm5deg"], metrics["loc_matching/median_t_cm"])
    if "loc_refined/acc_5cm5deg" in metrics:
        log.info("student refined by matching: %.1f %% at 5 cm / 5 deg, median %.2f cm (matching adopted on %.1f %% "
                 "of the frames)", 100 * metrics["loc_refined/acc_5cm5deg"], metrics["loc_refined/median_t_cm"],
                 100 * metrics["loc_refined/adopted_rate"])
    if "gen/coverage_mean" in metrics or "gen/nearest_train_m_median" in metrics:
        log.info("test frames vs training cameras: median nearest %.3f (poses' unit), %.1f deg to it, %.1f deg to the "
                 "closest in rotation; surface seen by training frames %.1f %%, at %.2f-%.2fx (median %.2fx) the "
                 "depth of the training view nearest in scale",
                 *(metrics.get(f"gen/{k}", nan) for k in ("nearest_train_m_median", "nearest_train_deg_median",
                                                          "min_train_deg_median")),
                 100 * metrics.get("gen/coverage_mean", nan),
                 *(metrics.get(f"gen/depth_ratio_{k}", nan) for k in ("min", "max", "median")))
    return metrics


def check_run_student(module: StudentModule, cfg, ckpt: Path) -> None:
    """The checkpoint must hold the run's student (name, settings and input size): scores of another student would
    be merged into this run's metrics.json as its own."""
    theirs, ours = dict(module.hparams.student), dataclasses.asdict(cfg.student)
    differ = [k for k in ours if k in theirs and theirs[k] != ours[k]]
    if differ:
        k = differ[0]
        raise CheckpointFileError(f"checkpoint {ckpt} holds another student than the run's config.yaml "
                                  f"(student.{k}={theirs[k]!r} there, {ours[k]!r} here); evaluate it in its own run")
    size = tuple(module.hparams.img_size)
    if size != tuple(cfg.loader.resolution):
        raise ValueError(f"the checkpoint's student takes {size}, not loader.resolution={cfg.loader.resolution}")


def check_finite_predictions(fr: Frames, ckpt: Path, split: str) -> None:
    """Non-finite student points (corrupt weights, a diverged training) are an error, not NaN metrics."""
    bad = ~np.isfinite(fr.student_NHW3).all(axis=(1, 2, 3))
    if bad.any():
        raise ValueError(f"checkpoint {ckpt}: the student predicts non-finite points on {int(bad.sum())} of "
                         f"{len(bad)} {split} frames (e.g. {fr.names[int(np.argmax(bad))]}): corrupt weights or a "
                         f"diverged training")


def check_finite_metrics(metrics: dict, ckpt: Path) -> None:
    """Every numeric ``eval/*`` metric must be finite (NaN would be written, and reported, as a score)."""
    bad = [k for k, v in metrics.items() if k.startswith("eval/") and isinstance(v, float) and not np.isfinite(v)]
    if bad:
        raise ValueError(f"evaluating {ckpt} gave non-finite {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}; "
                         f"nothing was written")


def tune_localization(run_dir: Path, cache: LabelCache, module: torch.nn.Module, batch_size: int, device,
                      S_44: np.ndarray | None, tta: TestTimeOptions | None = None) -> dict:
    """Localization settings (``reprojection_px``, ``iterations``, ``refine``) chosen on the validation frames from
    :func:`tuning_grid` by :func:`choose_setting` (their points predicted as the evaluated split's, ``tta``);
    writes ``eval_tuning.csv`` and logs the table."""
    names = cache.split.get("val") or []
    if not names:
        raise ValueError(f"tune=true needs validation frames, and label cache {cache.root} has none (data.val_every)")
    fr = load_frames(cache, names, module, batch_size, device, tta=tta)
    if S_44 is None or not np.all(np.isfinite(fr.cam2world_N44)):
        raise ValueError("tune=true needs true poses of the validation frames (the scene has no depth and poses)")
    table = []
    for setting in tuning_grid(fr.images_NHW3.shape[2]):
        _, m, _ = localize_frames(fr, S_44, **setting, who=("student",))
        table.append({**setting, "reprojection_px_640": setting["reprojection_px"] * 640 / fr.images_NHW3.shape[2],
                      **{k: m[f"loc/{k}"] for k in ("acc_5cm5deg", "acc_10cm10deg", "median_t_cm", "median_r_deg",
                                                     "failure_rate", "time_ms_per_frame")}})
    best = choose_setting(table)
    for k, row in enumerate(table):
        row["chosen"] = k == best
        log.info("tune on %d val frames: %5.2f px, %4d iterations, refine %-5s: %5.1f %% at 5 cm / 5 deg, median "
                 "%.2f cm%s", len(names), row["reprojection_px"], row["iterations"], row["refine"],
                 100 * row["acc_5cm5deg"], row["median_t_cm"], "  <- chosen" if k == best else "")
    write_csv(run_dir / "eval_tuning.csv", table)
    return {k: table[best][k] for k in ("reprojection_px", "iterations", "refine")}


# --- outputs ----------------------------------------------------------------------------------------------------
def _figures(run_dir: Path, fr: Frames, S_44: np.ndarray | None, rows: list[dict], poses: dict[str, list],
             n_panels: int) -> None:
    """Panels, localization CDFs and the interactive clouds with cameras (never fatal: numbers come first).

    Points are shown in the dataset's metric frame when ``S_44`` maps them there, else in the labels' frame.
    """
    from lit3d.viz.figures import error_cdf, pointmap_panels
    from lit3d.viz.pointcloud import pointcloud_html

    view = (lambda p: transform_points(S_44, p.astype(np.float64))) if S_44 is not None else (lambda p: p)
    teacher_NHW3, student_NHW3 = view(fr.teacher_NHW3), view(fr.student_NHW3)
    try:
        n = len(fr.names)
        idx = np.unique(np.linspace(0, n - 1, min(n_panels, n)).round().astype(int))
        pointmap_panels(run_dir / "eval_frames.png", fr.images_NHW3[idx], teacher_NHW3[idx], student_NHW3[idx],
                        fr.valid_NHW[idx], titles=[fr.names[k] for k in idx])
        if any(t is not None for t in poses["true"]):
            for key, tag, xlabel in (("t_cm", "t", "translation error (cm)"), ("r_deg", "r", "rotation error (deg)")):
                error_cdf(run_dir / f"eval_loc_cdf_{tag}.png",
                          {"student": np.array([r[f"student_{key}"] for r in rows]),
                           "teacher labels": np.array([r[f"teacher_{key}"] for r in rows])}, xlabel=xlabel)
        hw = fr.valid_NHW.shape[1:]
        cams = {("true" if who == "true" else f"{who} PnP"): [(T, K, hw) for T, K in zip(poses[who], fr.K_N33)
                                                             if T is not None]
                for who in ("true", "student", "teacher")}
        pointcloud_html(run_dir / "eval_pointclouds.html",
                        {"teacher": (teacher_NHW3[fr.valid_NHW], fr.images_NHW3[fr.valid_NHW]),
                         "student": (student_NHW3, fr.images_NHW3)},
                        cameras={k: v for k, v in cams.items() if v},
                        title=f"teacher vs student, {n} frames; true and estimated cameras", shared_js=True)
    except Exception as e:
        log.warning("could not write evaluation figures: %s", e)


def _generalisation_map(run_dir: Path, train_cam2world: list[np.ndarray], loc_rows: list[dict],
                        gen_rows: list[dict], poses: dict[str, list]) -> None:
    """``eval_generalisation.png`` (:func:`lit3d.viz.figures.generalisation_map`) when the test frames have true
    poses; a stale one is removed otherwise. Never fatal."""
    from lit3d.viz.figures import generalisation_map

    path = run_dir / "eval_generalisation.png"
    path.unlink(missing_ok=True)
    if not poses["true"] or any(T is None for T in poses["true"]):
        return
    nan_44 = np.full((4, 4), np.nan)
    try:
        generalisation_map(path, np.array(train_cam2world).reshape(-1, 4, 4), np.stack(poses["true"]),
                           np.stack([nan_44 if T is None else T for T in poses["student"]]),
                           np.array([r["student_t_cm"] for r in loc_rows], dtype=np.float64),
                           np.array([r["nearest_train_m"] for r in gen_rows], dtype=np.float64),
                           np.array([r["coverage"] for r in gen_rows], dtype=np.float64))
    except Exception as e:
        log.warning("could not write %s: %s", path, e)


def _exports(run_dir: Path, module: StudentModule, split: str, fr: Frames, labels_info: dict,
             atol: float, views: Callable[[], ViewDatabase]) -> dict[str, float | str]:
    """PLY clouds of the split (labels' frame), the student as ONNX / TorchScript, and the training views' keypoints
    that refine its poses by matching (``training_views.npz``, for lit3d localize); failures are recorded."""
    from lit3d.export import export_student, write_ply

    out_dir = run_dir / "exports"
    write_ply(out_dir / f"teacher_{split}.ply", fr.teacher_NHW3[fr.valid_NHW], fr.images_NHW3[fr.valid_NHW])
    write_ply(out_dir / f"student_{split}.ply", fr.student_NHW3, fr.images_NHW3)
    metrics = export_student(module, out_dir, fr.images_NHW3[:2], labels_info, fr.K_N33[0], atol)
    try:
        path = views().save(out_dir / VIEWS_FILE)
        metrics.update({"export/views_path": str(path), "export/views_size_mb": path.stat().st_size / 2**20})
    except Exception as e:  # noqa: BLE001  (recorded like a failed student export: the evaluation stays)
        log.warning("training views export failed: %s", e)
        metrics["export/views_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return metrics


# --- command line -----------------------------------------------------------------------------------------------
USAGE = "lit3d evaluate RUN_DIR [option=value ...] [key=value ...]"


def parse_args(argv: list[str]) -> tuple[str, EvalOptions, list[str]]:
    """(run dir, options, config overrides) of ``RUN_DIR|run_dir=RUN_DIR [option=value ...] [key=value ...]``."""
    from lit3d.cli import parse_options

    (run_dir,), options, overrides = parse_options(argv, EvalOptions, "run_dir", USAGE)
    return run_dir, options, overrides


def main(argv: list[str] | None = None) -> int:
    from lit3d.cli import command, options_help

    def body(args: list[str]) -> int:
        if "-h" in args or "--help" in args:
            print(options_help(EvalOptions, USAGE, (__doc__ or "").split("\n\n")[1],
                               "key=value: any config key overriding the run's config.yaml (lit3d fit --help)."))
            return 0
        run_dir, options, overrides = parse_args(args)
        metrics = evaluate_run(run_dir, overrides, options)
        print(json.dumps({k: v for k, v in metrics.items() if k.startswith(("loc", "eval/student_vs"))}, indent=1))
        return 0

    return command("lit3d.evaluate", body, argv)


if __name__ == "__main__":
    sys.exit(main())
