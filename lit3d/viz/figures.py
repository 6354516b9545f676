"""Static matplotlib figures (PNG): pointmap panels, loss curves, localization error CDFs, the map of where
localization fails against the training cameras.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly, so nothing touches pyplot's global state and it is
safe in headless runs and threads. Every function writes its PNG atomically (:func:`lit3d.files.atomic_output`)
and returns the path.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lit3d.files import atomic_output

log = logging.getLogger(__name__)

_INVALID_RGB = np.array([0.5, 0.5, 0.5])  # grey: pixels without a valid point


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG at ``path`` atomically, so a reader never sees a half-written file."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    log.info("wrote %s", path)
    return path


def points_to_rgb(pts_NHW3: np.ndarray, mask_NHW: np.ndarray, lo_3: np.ndarray, hi_3: np.ndarray) -> np.ndarray:
    """Colours (N, H, W, 3) in [0, 1]: x, y, z mapped linearly from [lo, hi] to red, green, blue; grey if masked."""
    rgb = np.clip((pts_NHW3 - lo_3) / np.maximum(hi_3 - lo_3, 1e-9), 0.0, 1.0)
    return np.where(mask_NHW[..., None], np.nan_to_num(rgb), _INVALID_RGB)


def pointmap_panels(
    path: str | os.PathLike,
    images_NHW3: np.ndarray,
    teacher_NHW3: np.ndarray,
    student_NHW3: np.ndarray,
    valid_NHW: np.ndarray,
    titles: Sequence[str] | None = None,
    unit_to_cm: float = 100.0,
) -> Path:
    """One row per frame: image | teacher points as colours | student points as colours | error map (cm).

    Points are world coordinates (metres by default; ``unit_to_cm`` converts the error). The coordinate-to-colour
    mapping (1st-99th percentile per axis) is shared by teacher and student over the whole figure, so equal colours
    mean equal points; the error colour scale (0 to its 99th percentile) is shared by all rows.
    """
    teacher = np.asarray(teacher_NHW3, dtype=np.float64)
    student = np.asarray(student_NHW3, dtype=np.float64)
    n = teacher.shape[0]
    ok_t = np.asarray(valid_NHW, bool) & np.all(np.isfinite(teacher), -1)
    ok_s = np.asarray(valid_NHW, bool) & np.all(np.isfinite(student), -1)
    both = ok_t & ok_s
    all_pts = np.concatenate([teacher[ok_t], student[ok_s]]).reshape(-1, 3)
    if len(all_pts):
        lo_3, hi_3 = np.percentile(all_pts, 1, axis=0), np.percentile(all_pts, 99, axis=0)
    else:
        lo_3, hi_3 = np.zeros(3), np.ones(3)
    err_NHW = np.where(both, np.linalg.norm(np.nan_to_num(student - teacher), axis=-1) * unit_to_cm, np.nan)
    vmax = float(np.nanpercentile(err_NHW, 99)) if both.any() else 1.0
    vmax = vmax if vmax > 0 else 1.0

    h, w = teacher.shape[1:3]
    fig = Figure(figsize=(4 * 3.2, n * 3.2 * h / w + 0.6))
    axes = fig.subplots(n, 4, squeeze=False)
    cols = ("image", "teacher points", "student points", "|student - teacher| (cm)")
    rgb_t, rgb_s = points_to_rgb(teacher, ok_t, lo_3, hi_3), points_to_rgb(student, ok_s, lo_3, hi_3)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad=_INVALID_RGB)
    for i in range(n):
        axes[i, 0].imshow(images_NHW3[i])
        axes[i, 1].imshow(rgb_t[i])
        axes[i, 2].imshow(rgb_s[i])
        im = axes[i, 3].imshow(err_NHW[i], cmap=cmap, vmin=0.0, vmax=vmax)
        fig.colorbar(im, ax=axes[i, 3], fraction=0.046, pad=0.04, label="cm")
        med = np.nanmedian(err_NHW[i]) if both[i].any() else float("nan")
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=10)
        label = titles[i] if titles is not None else f"frame {i}"
        axes[i, 0].set_ylabel(f"{label}\nmedian err {med:.1f} cm", fontsize=9)
    return _save(fig, path)


def loss_curves(
    path: str | os.PathLike,
    curves: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    xlabel: str = "step",
    ylabel: str = "loss",
) -> Path:
    """Loss curves of several runs on one log-y plot: ``curves[run][series] = (steps, values)``.

    One colour per run, one line style per series (e.g. 'train' solid, 'val' dashed). Non-finite and
    non-positive values are dropped, since a log axis cannot show them.
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    styles = ("-", "--", ":", "-.")
    series_names = sorted({s for run in curves.values() for s in run})
    plotted = False
    for k, (run, run_curves) in enumerate(curves.items()):
        colour = f"C{k % 10}"
        for series, (steps, values) in run_curves.items():
            x, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
            keep = np.isfinite(x) & np.isfinite(y) & (y > 0)
            if not keep.any():
                continue
            style = styles[series_names.index(series) % len(styles)]
            marker = "o" if keep.sum() < 20 else None  # sparse series (validation) would be invisible as lines
            ax.plot(x[keep], y[keep], style, color=colour, marker=marker, markersize=3, label=f"{run} {series}")
            plotted = True
    if plotted:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def error_cdf(
    path: str | os.PathLike,
    errors: Mapping[str, np.ndarray],
    xlabel: str,
    thresholds: Sequence[float] = (2.0, 5.0, 10.0),
    xmax: float | None = None,
) -> Path:
    """Cumulative distribution of per-frame errors of several methods on one plot (e.g. translation in cm).

    The y value at x is the fraction of ALL frames with error <= x; failures (inf or NaN) are never reached, so
    the curve plateaus below 1. Vertical lines mark ``thresholds``; the x axis ends at ``xmax``
    (default 3x the largest threshold).
    """
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    if xmax is None:
        xmax = 3.0 * max(thresholds) if len(thresholds) else None
    for name, e in errors.items():
        e = np.asarray(e, dtype=float).ravel()
        if e.size == 0:
            continue
        finite = np.sort(e[np.isfinite(e)])
        frac = np.arange(1, finite.size + 1) / e.size
        # start at (0, 0) and extend to the right edge, so the plateau (failures) is visible
        right = max(xmax or 0.0, finite[-1] if finite.size else 0.0)
        x = np.concatenate([[0.0], finite, [right]])
        y = np.concatenate([[0.0], frac, [frac[-1] if frac.size else 0.0]])
        at = ", ".join(f"{np.mean(e < t):.0%}@{t:g}" for t in thresholds)  # strict, as loc/acc_*
        ax.step(x, y, where="post", label=f"{name} ({at})")
    for t in thresholds:
        ax.axvline(t, color="grey", lw=0.8, ls=":")
    if xmax:
        ax.set_xlim(0, xmax)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of frames")
    ax.grid(True, alpha=0.3)
    if errors:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def floor_axes(cam2world_N44: np.ndarray) -> np.ndarray:
    """World directions (2, 3), orthonormal, of a view from above the cameras: the plane normal to their mean up
    direction (OpenCV cameras' -y, as held upright), its first axis along the centres' largest spread.

    Cameras with no common up direction (rolled every way; labels in an arbitrary frame) use the normal of the plane
    that best fits their centres instead, and without such a plane either (fewer than three centres, or collinear
    ones) the world's x and y axes.
    """
    T = np.asarray(cam2world_N44, dtype=np.float64).reshape(-1, 4, 4)
    T = T[np.all(np.isfinite(T), axis=(1, 2))]
    if not len(T):
        return np.eye(3)[:2]
    centres_N3 = T[:, :3, 3]
    _, sv, Vt_33 = np.linalg.svd(centres_N3 - centres_N3.mean(0), full_matrices=True)
    up_3 = -T[:, :3, 1].mean(0)
    if np.linalg.norm(up_3) < 0.5:  # no agreed up: the centres' plane (a walk, a drone's path) seen from above
        if len(sv) < 3 or sv[1] <= 1e-9 * sv[0]:
            return np.eye(3)[:2]
        up_3 = Vt_33[2]
    up_3 = up_3 / np.linalg.norm(up_3)
    # the centres' main direction within the plane; any in-plane direction when they are one point or along up
    candidates = [v - (v @ up_3) * up_3 for v in (*Vt_33, *np.eye(3))]
    e1 = next(v for v in candidates if np.linalg.norm(v) > 1e-6)
    e1 = e1 / np.linalg.norm(e1)
    return np.stack([e1, np.cross(up_3, e1)])


def generalisation_map(
    path: str | os.PathLike,
    train_cam2world_M44: np.ndarray,
    test_cam2world_N44: np.ndarray,
    est_cam2world_N44: np.ndarray,
    t_cm_N: np.ndarray,
    nearest_train_N: np.ndarray,
    coverage_N: np.ndarray,
    thresholds_cm: Sequence[float] = (5.0, 10.0),
) -> Path:
    """Where localization fails, against where the student was trained: two panels.

    Left, seen from above (:func:`floor_axes` of the training cameras): training camera centres, each test camera's
    true centre coloured by its translation error (under ``thresholds_cm``, above, failed), a line to its estimated
    centre. Right: translation error (cm, log) against the distance to the nearest training camera (poses' unit),
    coloured by the fraction of the frame's surface that training frames see. Poses are camera-to-world in one
    frame (the dataset's); an estimate with a NaN entry is a failure.
    """
    train = np.asarray(train_cam2world_M44, dtype=np.float64).reshape(-1, 4, 4)
    test = np.asarray(test_cam2world_N44, dtype=np.float64).reshape(-1, 4, 4)
    est = np.asarray(est_cam2world_N44, dtype=np.float64).reshape(-1, 4, 4)
    t_cm = np.asarray(t_cm_N, dtype=np.float64)
    A_23 = floor_axes(train if len(train) else test)
    fig = Figure(figsize=(12, 5))
    ax_map, ax_err = fig.subplots(1, 2)

    xy_M2 = train[:, :3, 3] @ A_23.T
    ax_map.plot(xy_M2[:, 0], xy_M2[:, 1], ".", color="0.6", ms=3, label=f"training cameras ({len(train)})")
    xy_N2, est_N2 = test[:, :3, 3] @ A_23.T, est[:, :3, 3] @ A_23.T
    lo, hi = sorted(thresholds_cm)[0], sorted(thresholds_cm)[-1]
    classes = ((t_cm < lo, "tab:green", f"< {lo:g} cm"),
               ((t_cm >= lo) & (t_cm < hi), "tab:orange", f"{lo:g}-{hi:g} cm"),
               (np.isfinite(t_cm) & (t_cm >= hi), "tab:red", f">= {hi:g} cm"))
    # every true -> estimated segment in one line, NaN between them (a failed estimate's NaN draws nothing)
    lines_M2 = np.stack([xy_N2, est_N2, np.full_like(xy_N2, np.nan)], 1).reshape(-1, 2)
    ax_map.plot(lines_M2[:, 0], lines_M2[:, 1], "-", color="0.3", lw=0.6)
    for mask, colour, label in classes:
        ax_map.plot(xy_N2[mask, 0], xy_N2[mask, 1], "o", color=colour, ms=4, label=f"test, {label} ({mask.sum()})")
    failed = ~np.isfinite(t_cm)
    if failed.any():
        ax_map.plot(xy_N2[failed, 0], xy_N2[failed, 1], "x", color="black", ms=5,
                    label=f"test, failed ({failed.sum()})")
    ax_map.set_aspect("equal", adjustable="datalim")
    ax_map.set_title("seen from above (lines: to the estimated centre)", fontsize=10)
    ax_map.legend(fontsize=7, loc="best")
    ax_map.grid(True, alpha=0.3)

    nearest_N, coverage_N = np.asarray(nearest_train_N, np.float64), np.asarray(coverage_N, np.float64)
    shown = np.maximum(t_cm[~failed], 1e-2)  # a log axis cannot show 0
    art = ax_err.scatter(nearest_N[~failed], shown, c=coverage_N[~failed], cmap="viridis", vmin=0, vmax=1, s=16)
    if failed.any():  # drawn above the largest error
        top = 2 * shown.max() if len(shown) else 100.0
        ax_err.scatter(nearest_N[failed], np.full(failed.sum(), top), marker="x", color="black", s=20, label="failed")
        ax_err.legend(fontsize=7)
    for t in thresholds_cm:
        ax_err.axhline(t, color="grey", lw=0.8, ls=":")
    ax_err.set_yscale("log")
    ax_err.set_xlabel("distance to the nearest training camera (poses' unit)")
    ax_err.set_ylabel("translation error (cm)")
    ax_err.grid(True, which="both", alpha=0.3)
    fig.colorbar(art, ax=ax_err, label="surface seen by training frames")
    return _save(fig, path)
