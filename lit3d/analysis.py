"""Helpers for notebooks: a sweep directory's study and trials, runs' curves, a run's predictions and poses.

Runs are read through :mod:`lit3d.runs` (the same frames, predictions and localization as ``lit3d evaluate``).

Tables come back as pandas DataFrames (pandas is in the ``dev`` extra); figures as plotly figures or PNG paths.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from lit3d import runs
from lit3d.cache.store import LabelCache
from lit3d.metrics.localization import summarize
from lit3d.metrics.retrieval import cell_points, retrieval_distances
from lit3d.students.tta import TestTimeOptions
from lit3d.sweeps.spec import SweepConfig
from lit3d.sweeps.spec import from_yaml as sweep_from_yaml
from lit3d.viz.pointcloud import subsample

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

log = logging.getLogger(__name__)


# --- sweeps ---------------------------------------------------------------------------------------------------
def sweep_config(sweep_dir: str | Path) -> SweepConfig:
    """The resolved sweep (``sweep.yaml``) of a directory written by ``python -m lit3d.sweep``."""
    return sweep_from_yaml(Path(sweep_dir) / "sweep.yaml")


def load_study(sweep_dir: str | Path, storage_url: str | None = None) -> optuna.Study:
    """The study of a sweep directory; ``storage_url`` where sweep.yaml hides a database password."""
    cfg = sweep_config(sweep_dir)
    url = storage_url or cfg.storage.url
    if "***" in url:
        raise ValueError(f"{sweep_dir}/sweep.yaml hides the database password: pass storage_url=...")
    return optuna.load_study(study_name=cfg.name, storage=url)


def trials_frame(study: optuna.Study) -> "pd.DataFrame":
    """One row per trial (index: number): state, value, duration, retry_of, parameters, user attributes
    (run_dir, worker, fail_reason, final metrics such as test/l2_mean)."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        history = t.system_attrs.get("retry_history") or [None]
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "duration_s": duration,
                     "retry_of": history[-1], **t.params, **t.user_attrs})
    return pd.DataFrame(rows).set_index("number") if rows else pd.DataFrame()


def marginals(trials: "pd.DataFrame", params: Iterable[str], column: str = "value") -> dict[str, "pd.DataFrame"]:
    """For each parameter, ``column`` of completed trials grouped by its values (mean, min, max, count)."""
    done = trials[trials["state"] == "COMPLETE"]
    return {p: done.groupby(p)[column].agg(["mean", "min", "max", "count"]) for p in params if p in done}


def sweep_figures(study: optuna.Study) -> dict[str, "go.Figure"]:
    """Plotly figures: optimisation history, and with two or more completed trials over varying parameters,
    parameter importances (PED-ANOVA), parallel coordinates and slice plots."""
    from optuna import visualization as vis

    figs = {"history": vis.plot_optimization_history(study)}
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = sorted(p for p in {k for t in done for k in t.params} if len({repr(t.params.get(p)) for t in done}) > 1)
    if len(done) < 2 or not varying:
        return figs
    try:
        figs["importances"] = vis.plot_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varying)
    except Exception as e:  # too few or too similar trials for the evaluator: the other plots still say a lot
        log.warning("no parameter importances: %s", e)
    figs["parallel_coordinate"] = vis.plot_parallel_coordinate(study, params=varying)
    figs["slice"] = vis.plot_slice(study, params=varying)
    return figs


def completed_runs(study: optuna.Study) -> dict[str, Path]:
    """``{'trial N (name=value, ...)': run_dir}`` of the completed trials, naming the parameters that vary."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "run_dir" in t.user_attrs]
    varying = [p for p in done[0].params if len({repr(t.params.get(p)) for t in done}) > 1] if done else []

    def label(t: optuna.trial.FrozenTrial) -> str:
        changed = ", ".join(f"{p.split('.')[-1]}={t.params.get(p)}" for p in varying)
        return f"trial {t.number}" + (f" ({changed})" if changed else "")

    return {label(t): Path(t.user_attrs["run_dir"]) for t in done}


# --- runs -----------------------------------------------------------------------------------------------------
def metric_curves(run_dir: str | Path) -> "pd.DataFrame":
    """Epoch-level metrics of a run (index: epoch; columns such as train/loss_epoch, val/loss, val/l2_mean)."""
    import pandas as pd

    frame = pd.DataFrame(runs.read_log(run_dir))
    if frame.empty or "epoch" not in frame:
        return frame
    keep = [c for c in frame.columns if c.startswith(("train/", "val")) and not c.endswith("_step")]
    return frame.groupby("epoch")[keep].last().dropna(how="all")


Run = runs.Run
"""A finished run (:class:`lit3d.runs.Run`): config as written, metrics, student (CPU), label cache."""


def load_run(run_dir: str | Path, checkpoint: str = "best", cache_dir: str | Path | None = None) -> Run:
    """Load a run directory (:func:`lit3d.runs.open_run`). ``checkpoint``: best, last or a path. ``cache_dir``
    finds the label cache when the run recorded a path relative to another working directory."""
    return runs.open_run(run_dir, checkpoint, cache_dir)


def predict_split(run: Run, split: str = "test", n_frames: int = 0, tta: bool = True) -> runs.Frames:
    """The student's predictions on ``split`` frames (all, or ``n_frames`` evenly spaced) at its resolution, with
    images, teacher labels, ground truth, K and true poses (:class:`lit3d.runs.Frames`); with ``tta`` averaged
    over ``evaluate``'s default copies of each image (:class:`lit3d.students.tta.TestTimeOptions`), as it
    localizes."""
    names = run.cache.split.get(split) or []
    if not names:
        raise ValueError(f"the label cache {run.cache.root} has no {split!r} frames")
    idx = range(len(names)) if n_frames <= 0 else np.unique(np.linspace(0, len(names) - 1, n_frames).round())
    batch = int(run.config.get("loader", {}).get("batch_size", 8))
    return runs.load_frames(run.cache, [names[int(i)] for i in idx], run.module, batch,
                            tta=TestTimeOptions(tta=tta))


def point_errors(run: Run, frames: runs.Frames) -> "pd.DataFrame":
    """Per-frame mean and median distance of the student's points to the teacher's (labels' unit) and, where the
    scene has depth and poses, of both to the ground truth (metres, labels mapped by :meth:`Run.to_gt`)."""
    import pandas as pd

    rows, _ = runs.point_errors(frames, run.to_gt()[0])
    return pd.DataFrame([{"frame": n, **r} for n, r in zip(frames.names, rows)]).set_index("frame")


def localize_frames(run: Run, frames: runs.Frames, reprojection_px: float | None = None, matching: bool = False,
                    matching_views: int = 10) -> "pd.DataFrame":
    """Camera poses by PnP-RANSAC from the student's and the teacher's points with ``evaluate``'s settings, and
    their errors (cm, degrees) after mapping the labels' frame onto the dataset's (:meth:`Run.to_gt`); with
    ``matching``, also the student's poses refined by SIFT matches against the ``matching_views`` training frames
    nearest them, or those sharing the most matches where the nearest give no pose (rows ``refined``, reason
    ``matched``, ``retrieved`` or ``student``: which pose was kept; :func:`lit3d.runs.refine_frames`, as
    ``evaluate``'s ``matching_refine``).

    The inlier threshold defaults to :func:`lit3d.runs.default_reprojection_px` of the frames' width.
    """
    import pandas as pd

    px = reprojection_px or runs.default_reprojection_px(frames.images_NHW3.shape[2])
    S_44 = run.to_gt()[0]
    rows, _, poses = runs.localize_frames(frames, S_44, px)
    out = [{"frame": name, "points": who, "ok": r[f"{who}_loc_ok"], "t_cm": r[f"{who}_t_cm"],
            "r_deg": r[f"{who}_r_deg"], "inlier_ratio": r[f"{who}_inlier_ratio"], "reason": r[f"{who}_loc_reason"]}
           for name, r in zip(frames.names, rows) for who in ("student", "teacher")]
    if matching:
        refined, _ = runs.refine_frames(frames, poses["student_pnp"], runs.training_views(run.cache), S_44, px,
                                        matching_views)
        out += [{"frame": name, "points": "refined", "ok": r["refined_loc_ok"], "t_cm": r["refined_t_cm"],
                 "r_deg": r["refined_r_deg"],
                 "reason": "retrieved" if r["refined_retrieved"] else "matched" if r["refined_adopted"] else "student",
                 "inlier_ratio": (r["refined_inliers"] / r["refined_matches"] if r["refined_adopted"]
                                  else s["student_inlier_ratio"])}  # of the pose kept
                for name, r, s in zip(frames.names, refined, rows)]
    return pd.DataFrame(out)


def localization_summary(poses: "pd.DataFrame") -> "pd.DataFrame":
    """:func:`lit3d.metrics.localization.summarize` per source of points (rows: student, teacher)."""
    import pandas as pd

    return pd.DataFrame({who: summarize(g["t_cm"].to_numpy(), g["r_deg"].to_numpy())
                         for who, g in poses.groupby("points")}).T


def pointcloud_figure(frames: runs.Frames, max_points: int = 20_000) -> "go.Figure":
    """Teacher and student points of the predicted frames in one 3D plotly figure, coloured by the image."""
    import plotly.graph_objects as go

    fig = go.Figure()
    valid = frames.valid_NHW
    colours = frames.images_NHW3[valid]
    for who, pts_NHW3 in (("teacher", frames.teacher_NHW3), ("student", frames.student_NHW3)):
        pts = pts_NHW3[valid]
        idx = subsample(len(pts), max_points)
        rgb = [f"rgb({r},{g},{b})" for r, g, b in colours[idx].tolist()]
        fig.add_trace(go.Scatter3d(x=pts[idx, 0], y=pts[idx, 1], z=pts[idx, 2], mode="markers", name=who,
                                   marker=dict(size=1.5, color=rgb), hoverinfo="skip"))
    fig.update_layout(scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=30, b=0),
                      title=f"teacher vs student, {len(frames.names)} frames")
    return fig


def matching_reference(cache: LabelCache, split: str = "test", views: int = 10, max_features: int = 2000,
                       ratio: float = 0.8, reprojection_px: float | None = None, n_frames: int = 0) -> "pd.DataFrame":
    """A classical yardstick per ``split`` frame of a label cache (a run's: ``run.cache``; no student involved;
    :mod:`lit3d.metrics.matching`): the pose from SIFT matches of the frame's image against its ``views`` nearest
    training frames, lifted to world points by their labels, by PnP-RANSAC (:func:`lit3d.runs.match_frames`,
    which ``evaluate matching=true`` runs too); columns ``ok``, ``t_cm``, ``r_deg`` (cm and degrees against the
    true pose, dataset frame), ``matches``, ``inliers``, ``reason``. Frames at the label cache's resolution; the
    inlier threshold defaults to :func:`lit3d.runs.default_reprojection_px` of its width.

    The training views are chosen by the frame's TRUE pose (the matcher's best case: no retrieval error), so a
    frame this misses is one whose image and the training labels disagree (colour not registered to depth, a
    viewpoint too far for local features); a frame it localizes and the student does not is the student's miss.
    """
    import pandas as pd

    names = cache.split.get(split) or []
    if not names or not cache.split.get("train"):
        raise ValueError(f"the label cache {cache.root} has no {split!r} or no 'train' frames")
    idx = range(len(names)) if n_frames <= 0 else np.unique(np.linspace(0, len(names) - 1, n_frames).round())
    names = [names[int(i)] for i in idx]
    S_44 = runs.labels_to_gt(cache, cache.split["train"])[0]
    if S_44 is None:
        raise ValueError(f"the label cache {cache.root} has no true poses to score against (no depth and poses)")
    rows, _ = runs.match_frames(cache, names, S_44, views, max_features, ratio, reprojection_px)
    columns = {"ok": "matching_loc_ok", "t_cm": "matching_t_cm", "r_deg": "matching_r_deg",
               "matches": "matching_matches", "inliers": "matching_inliers", "reason": "matching_loc_reason"}
    return pd.DataFrame([{"frame": n, **{c: r[k] for c, k in columns.items()}}
                         for n, r in zip(names, rows)]).set_index("frame")


def feature_retrieval(run: Run, split: str = "test", encoder: torch.nn.Module | None = None,
                      n_frames: int = 0) -> "pd.DataFrame":
    """Per labelled feature cell of ``split``'s frames (:mod:`lit3d.metrics.retrieval`): ``retrieved``, the world
    distance from its label to the label of the training cell whose ``encoder`` features are most alike;
    ``nearest``, to the nearest training cell's label; ``predicted``, from its label to the student's point at the
    cell centre (one forward). Labels' unit; frames at the student's resolution.

    ``encoder`` (images (B, 3, h, w) in [0, 1] -> features (B, C, h/s, w/s), with a ``stride`` attribute, such as
    ``lit3d.students.encoders.create_encoder(...)``) defaults to the run's own ``scr`` encoder. A ``retrieved``
    well above ``nearest`` on new views and not on validation frames means the features do not recognise a
    surface point from the new viewpoint, which no head can repair.
    """
    import pandas as pd
    from lit3d.cache.datamodule import resize_frame

    encoder = encoder if encoder is not None else getattr(run.module.student, "encoder", None)
    if encoder is None or not hasattr(encoder, "stride"):
        raise ValueError(f"student {type(run.module.student).__name__} has no encoder with a stride (student=scr "
                         f"has one): pass encoder=")
    names = run.cache.split.get(split) or []
    train = run.cache.split.get("train") or []
    if not names or not train:
        raise ValueError(f"the label cache {run.cache.root} has no {split!r} or no 'train' frames")
    idx = range(len(names)) if n_frames <= 0 else np.unique(np.linspace(0, len(names) - 1, n_frames).round())
    names = [names[int(i)] for i in idx]
    size, s = tuple(run.module.hparams.img_size), int(encoder.stride)
    batch = int(run.config.get("loader", {}).get("batch_size", 8))

    def cells(frame_names: list[str], with_student: bool) -> dict[str, np.ndarray]:
        """Encoder features, labelled points and (``with_student``) the student's points of the labelled cells."""
        frames = [resize_frame(run.cache.load_frame(n), size) for n in frame_names]
        images_NHW3 = np.stack([f["image"] for f in frames])
        pts_Nhw3, ok_Nhw = map(np.stack, zip(*(cell_points(f["pts_world"], f["valid"], s) for f in frames)))
        at = np.nonzero(ok_Nhw)  # (frame, row, col) of each labelled cell
        feats_NhwC = runs.predict(encoder, images_NHW3, batch, warmup=False)[0]
        out = {"at": at, "feats": feats_NhwC[at], "pts": pts_Nhw3[at]}
        if with_student:
            pred_NHW3 = runs.predict(run.module, images_NHW3, batch, warmup=False)[0]
            out["pred"] = np.stack([cell_points(p, np.ones(size, bool), s)[0] for p in pred_NHW3])[at]
        return out

    keys, queries = cells(train, False), cells(names, True)
    if not len(queries["pts"]):
        raise ValueError(f"no labelled {s}x{s} cell in the {split!r} frames")
    retrieved, nearest, _ = retrieval_distances(*(torch.from_numpy(d[k]) for d in (queries, keys)
                                                  for k in ("feats", "pts")))
    k, i, j = queries["at"]
    return pd.DataFrame({"frame": [names[n] for n in k], "row": i, "col": j, "retrieved": retrieved.numpy(),
                         "nearest": nearest.numpy(),
                         "predicted": np.linalg.norm(queries["pred"] - queries["pts"], axis=1)})
