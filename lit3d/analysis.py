"""Helpers for notebooks: a sweep directory's study and trials, runs' curves, a run's predictions and poses.

Tables come back as pandas DataFrames (pandas is in the ``dev`` extra); figures as plotly figures or PNG paths.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from lit3d.cache.datamodule import CachedFrames
from lit3d.cache.store import LabelCache
from lit3d.metrics.localization import localize, pose_errors, summarize
from lit3d.students.module import StudentModule
from lit3d.sweeps.spec import SweepConfig
from lit3d.sweeps.spec import from_yaml as sweep_from_yaml
from lit3d.viz.pointcloud import subsample
from lit3d.viz.run import predict_frames

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

    path = Path(run_dir) / "metrics.csv"
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    frame = pd.DataFrame(rows)
    if frame.empty or "epoch" not in frame:
        return frame
    keep = [c for c in frame.columns if c.startswith(("train/", "val")) and not c.endswith("_step")]
    return frame.groupby("epoch")[keep].last().dropna(how="all")


@dataclass
class Run:
    """A finished run: its config (as written: plain data, so old runs load whatever the config keys are now),
    metrics, trained student (on the CPU) and label cache."""

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    module: StudentModule
    cache: LabelCache


def load_run(run_dir: str | Path, checkpoint: str = "best", cache_dir: str | Path | None = None) -> Run:
    """Load a run directory. ``checkpoint``: best or last. ``cache_dir`` finds the label cache when the run
    recorded a path relative to another working directory."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    if not ckpt.is_file():
        ckpt = run_dir / "checkpoints" / "last.ckpt"
    module = StudentModule.load(ckpt)
    module.eval()
    cache_root = Path(metrics["labels/cache"])
    if not cache_root.is_dir() and cache_dir is not None:
        cache_root = Path(cache_dir) / "labels" / cache_root.name
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    return Run(run_dir, config, metrics, module, LabelCache(cache_root))


def predict_split(run: Run, split: str = "test", n_frames: int = 0) -> dict[str, Any]:
    """Student predictions on ``split`` frames (all, or ``n_frames`` evenly spaced) at the student resolution:
    arrays ``image``, ``student``, ``teacher`` (N, H, W, 3), ``valid``, ``K``, ``cam2world``, and ``names``."""
    names = run.cache.split.get(split) or []
    if not names:
        raise ValueError(f"the label cache {run.cache.root} has no {split!r} frames")
    dataset = CachedFrames(run.cache, names, tuple(run.module.hparams.img_size))
    idx = np.arange(len(dataset)) if n_frames <= 0 else np.unique(np.linspace(0, len(dataset) - 1, n_frames).round())
    pred = predict_frames(run.module, dataset, [int(i) for i in idx])
    pred["names"] = [names[int(i)] for i in idx]
    return pred


def point_errors(pred: dict[str, Any]) -> "pd.DataFrame":
    """Per-frame distance between student and teacher points over valid pixels (labels' unit)."""
    import pandas as pd

    err = np.linalg.norm(pred["student"] - pred["teacher"], axis=-1)
    rows = [{"frame": n, "l2_mean": float(e[v].mean()), "l2_median": float(np.median(e[v]))}
            for n, e, v in zip(pred["names"], err, pred["valid"]) if v.any()]
    return pd.DataFrame(rows).set_index("frame")


def localize_frames(pred: dict[str, Any], reprojection_px: float | None = None) -> "pd.DataFrame":
    """Camera poses by PnP-RANSAC from the student's and the teacher's points, and their errors (cm, degrees).

    The inlier threshold defaults to 10 px at 640 px width, scaled to the frames' width (at least 1 px).
    """
    import pandas as pd

    width = pred["student"].shape[2]
    px = reprojection_px or max(1.0, 10.0 * width / 640)
    rows = []
    for i, name in enumerate(pred["names"]):
        for who, mask in (("student", None), ("teacher", pred["valid"][i])):
            res = localize(pred[who][i], mask, pred["K"][i], reprojection_px=px)
            t_cm, r_deg = pose_errors(res.cam2world_44, pred["cam2world"][i])
            rows.append({"frame": name, "points": who, "ok": res.ok, "t_cm": t_cm, "r_deg": r_deg,
                         "inlier_ratio": res.inlier_ratio, "reason": res.reason})
    return pd.DataFrame(rows)


def localization_summary(poses: "pd.DataFrame") -> "pd.DataFrame":
    """:func:`lit3d.metrics.localization.summarize` per source of points (rows: student, teacher)."""
    import pandas as pd

    return pd.DataFrame({who: summarize(g["t_cm"].to_numpy(), g["r_deg"].to_numpy())
                         for who, g in poses.groupby("points")}).T


def pointcloud_figure(pred: dict[str, Any], max_points: int = 20_000) -> "go.Figure":
    """Teacher and student points of the predicted frames in one 3D plotly figure, coloured by the image."""
    import plotly.graph_objects as go

    fig = go.Figure()
    valid = pred["valid"]
    colours = pred["image"][valid]
    for who in ("teacher", "student"):
        pts = pred[who][valid]
        idx = subsample(len(pts), max_points)
        rgb = [f"rgb({r},{g},{b})" for r, g, b in colours[idx].tolist()]
        fig.add_trace(go.Scatter3d(x=pts[idx, 0], y=pts[idx, 1], z=pts[idx, 2], mode="markers", name=who,
                                   marker=dict(size=1.5, color=rgb), hoverinfo="skip"))
    fig.update_layout(scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=30, b=0),
                      title=f"teacher vs student, {len(pred['names'])} frames")
    return fig
