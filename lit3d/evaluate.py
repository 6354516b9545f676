"""``python -m lit3d.evaluate RUN_DIR [checkpoint=best|last|PATH] [option=value ...] [key=value ...]``.

Scores a trained student on the test frames of its label cache: point errors against the teacher's labels and,
where the scene has depth and poses, of teacher and student against the ground truth; camera localization by
PnP-RANSAC from the student's points and, as the reference, from the teacher's labels. Writes into the run
directory: ``metrics.json`` (fit's keys kept; ``eval/*``, ``loc/*``, ``loc_teacher/*``, ``export/*`` replaced),
``eval_frames.csv`` (one row per frame), figures (``eval_frames.png``, ``eval_loc_cdf_t.png``,
``eval_loc_cdf_r.png``, ``eval_pointclouds.html``) and ``exports/`` (PLY clouds, ONNX and TorchScript student).

Any config key (``data.*``, ``cache_dir``, ...) overrides the run's ``config.yaml``; the options are
:class:`EvalOptions`. ``evaluate_run(run_dir, overrides) -> metrics`` is the same entry for notebooks.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lit3d.cache import LabelCache, build_labels
from lit3d.cache.datamodule import resize_frame
from lit3d.cache.store import write_json
from lit3d.config import FitConfig, field_docs, from_yaml, load_config
from lit3d.data.io import atomic_write_bytes
from lit3d.geometry import backproject_depth, transform_points, umeyama_sim3
from lit3d.metrics.localization import localize, pose_errors, summarize
from lit3d.metrics.pointmap import THRESHOLDS_M
from lit3d.students.module import StudentModule

log = logging.getLogger("lit3d.evaluate")

EVAL_PREFIXES = ("eval/", "loc/", "loc_teacher/")
"""metrics.json keys owned by this command: replaced on every evaluation (``export/`` too when it exports)."""


@dataclass
class EvalOptions:
    checkpoint: str = "best"
    """best (falls back to last.ckpt when the run had no validation), last, or a .ckpt path."""
    split: str = "test"
    """Split of the label cache to evaluate."""
    reprojection_px: float = 0.0
    """RANSAC inlier threshold in student pixels (0 = 10 px at 640 px width scaled to the student's, >= 1 px)."""
    exports: bool = True
    """Write PLY clouds and the ONNX / TorchScript student, each checked against PyTorch."""
    export_atol: float = 1e-4
    """Largest accepted |exported - PyTorch| output difference, in the labels' unit."""
    figure_frames: int = 4
    """Frames shown in eval_frames.png (evenly spaced over the split)."""
    device: str = "auto"
    """Device of the student's forward pass: auto, cpu, cuda."""


# --- configuration ----------------------------------------------------------------------------------------------
def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> FitConfig:
    """The run's resolved ``config.yaml`` with dot-list ``overrides`` applied (``run_dir`` = where it is now)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config([f"experiment={path}", *(overrides or [])])  # a yaml path is a valid experiment
    cfg.experiment, cfg.run_dir = from_yaml(path).experiment, str(run_dir)
    return cfg


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    ckpts = Path(run_dir) / "checkpoints"
    if which in ("best", "last"):
        for name in (["best.ckpt", "last.ckpt"] if which == "best" else ["last.ckpt"]):
            if (ckpts / name).is_file():
                return ckpts / name
        raise FileNotFoundError(f"no {which} checkpoint in {ckpts}")
    if not Path(which).is_file():
        raise FileNotFoundError(f"checkpoint {which} not found")
    return Path(which)


# --- geometry of the student grid ---------------------------------------------------------------------------
def gt_world_points(frame: dict[str, np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Ground-truth world points (h, w, 3) and mask at the student grid: depth back-projected on the label grid
    with its K and pose (metres, dataset frame), then sampled like the labels. None without depth or pose."""
    depth_HW, cam2world_44 = frame["depth"], frame["cam2world"].astype(np.float64)
    if not np.all(np.isfinite(cam2world_44)) or not (depth_HW > 0).any():
        return None
    pts_HW3 = transform_points(cam2world_44, backproject_depth(depth_HW, frame["K"]).astype(np.float64))
    # sampled like the labels, so GT, labels and predictions describe the same pixels
    out = resize_frame({**frame, "pts_world": pts_HW3, "valid": depth_HW > 0}, size)
    return out["pts_world"], out["valid"]


def labels_to_gt(cache: LabelCache, names: list[str], max_frames: int = 64, per_frame: int = 2000,
                 seed: int = 0) -> tuple[np.ndarray | None, str]:
    """Similarity S_44 mapping the labels' world frame onto the dataset's metric frame, and how it was found.

    Identity when the labels are already in the dataset frame in metres; otherwise a Umeyama Sim(3) from the
    teacher's labels to back-projected ground truth on ``names`` (the training frames, so test frames stay
    unseen), refitted once without its worst 20 % residuals. None when the scene has no depth and poses.
    """
    info = cache.labels_info
    if info.get("frame") == "dataset" and info.get("unit") == "m":
        return np.eye(4), "identity"
    rng = np.random.default_rng(seed)
    src, dst = [], []
    for name in names[:: max(1, len(names) // max_frames)]:
        f = cache.load_frame(name)
        gt = gt_world_points(f, f["depth"].shape)
        if gt is None:
            continue
        ok_N = np.flatnonzero((f["valid"] & gt[1] & np.all(np.isfinite(f["pts_world"]), -1)).ravel())
        pick = rng.choice(ok_N, min(per_frame, len(ok_N)), replace=False)
        src.append(f["pts_world"].reshape(-1, 3)[pick])
        dst.append(gt[0].reshape(-1, 3)[pick])
    if sum(len(s) for s in src) < 3:
        return None, "none (no depth and poses)"
    src_N3, dst_N3 = np.concatenate(src).astype(np.float64), np.concatenate(dst)
    keep = np.ones(len(src_N3), bool)
    for _ in range(2):  # least squares, then again without the worst fifth (teacher outliers)
        s, R, t = umeyama_sim3(src_N3[keep], dst_N3[keep])
        res_N = np.linalg.norm(s * src_N3 @ R.T + t - dst_N3, axis=1)
        keep = res_N <= np.quantile(res_N, 0.8)
    S_44 = np.eye(4)
    S_44[:3, :3], S_44[:3, 3] = s * R, t
    return S_44, f"sim3 fitted on {len(src)} {info.get('frame')} frames (scale {float(s):.4g})"


def pose_to_gt(S_44: np.ndarray, cam2world_44: np.ndarray | None) -> np.ndarray | None:
    """A camera-to-world pose in the labels' frame expressed in the dataset frame (rigid: scale moves the centre)."""
    if cam2world_44 is None:
        return None
    out = S_44 @ cam2world_44
    out[:3, :3] /= np.cbrt(np.linalg.det(S_44[:3, :3]))
    return out


def nearest_rigid(T_44: np.ndarray) -> np.ndarray:
    """The rigid pose nearest to ``T_44`` (rotation block projected onto SO(3) by SVD); non-finite stays as is.

    Dataset poses are not always orthonormal (7-Scenes: det R ~ 0.99985), and the angle of R_est^T R_gt read from
    its trace turns that into ~1 deg of rotation error that no estimate could remove.
    """
    if not np.all(np.isfinite(T_44)):
        return T_44
    U, _, Vt = np.linalg.svd(T_44[:3, :3])
    U[:, -1] *= np.sign(np.linalg.det(U @ Vt))
    out = np.array(T_44, dtype=np.float64)
    out[:3, :3], out[3] = U @ Vt, (0.0, 0.0, 0.0, 1.0)
    return out


def error_stats(err_N: np.ndarray, prefix: str) -> dict[str, float]:
    """Mean / median L2 error and fractions within 2 / 5 / 10 cm (read as metres) of pooled pixel errors."""
    if err_N.size == 0:
        return {}
    out = {f"{prefix}l2_mean": float(err_N.mean()), f"{prefix}l2_median": float(np.median(err_N))}
    out.update({f"{prefix}acc_{k}": float((err_N < t).mean()) for k, t in THRESHOLDS_M.items()})
    return out


# --- evaluation -------------------------------------------------------------------------------------------------
@dataclass
class EvalFrames:
    """Frames of one split on the student grid (h, w), with the student's predictions and the ground truth."""

    names: list[str]
    images_NHW3: np.ndarray
    """uint8 RGB as the student saw it."""
    teacher_NHW3: np.ndarray
    """Teacher labels, labels' world frame and unit."""
    valid_NHW: np.ndarray
    student_NHW3: np.ndarray
    """Student predictions, labels' world frame and unit."""
    gt_NHW3: np.ndarray
    """Ground-truth world points, dataset frame, metres (NaN where unknown)."""
    gt_valid_NHW: np.ndarray
    K_N33: np.ndarray
    """Intrinsics of the student grid, pixels (those of the resized frames: labels are sampled at its pixels)."""
    cam2world_N44: np.ndarray
    """Ground-truth poses, dataset frame, metres (NaN where unknown), made exactly rigid (:func:`nearest_rigid`)."""
    ms_per_image: float
    """Student forward time per image, ms."""


@torch.no_grad()
def predict(module: StudentModule, images_NHW3: np.ndarray, batch_size: int, device: torch.device
            ) -> tuple[np.ndarray, float]:
    """Student world points (N, h, w, 3) of uint8 images and the forward time per image (ms, after a warm-up)."""
    module.eval().to(device)
    x_N3HW = torch.from_numpy(images_NHW3).permute(0, 3, 1, 2).float() / 255
    module(x_N3HW[:batch_size].to(device))  # warm-up: first-call allocations are not the model's speed
    out, seconds = [], 0.0
    for k in range(0, len(x_N3HW), batch_size):
        xb = x_N3HW[k : k + batch_size].to(device)
        t0 = time.perf_counter()
        pred = module(xb)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        out.append(pred.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out), 1000 * seconds / len(x_N3HW)


def load_frames(cache: LabelCache, names: list[str], module: StudentModule, batch_size: int,
                device: torch.device) -> EvalFrames:
    """Frames ``names`` of ``cache`` resized to the student's input, predicted by ``module``."""
    size = tuple(module.hparams.img_size)
    labels = [cache.load_frame(n) for n in names]
    frames = [resize_frame(f, size) for f in labels]
    gt_NHW3, gt_valid_NHW = np.full((len(names), *size, 3), np.nan), np.zeros((len(names), *size), bool)
    for i, f in enumerate(labels):
        gt = gt_world_points(f, size)
        if gt is not None:
            gt_NHW3[i], gt_valid_NHW[i] = gt
    images_NHW3 = np.stack([f["image"] for f in frames])
    student_NHW3, ms = predict(module, images_NHW3, batch_size, device)
    return EvalFrames(
        names=list(names), images_NHW3=images_NHW3, valid_NHW=np.stack([f["valid"] for f in frames]),
        teacher_NHW3=np.stack([f["pts_world"] for f in frames]).astype(np.float64), student_NHW3=student_NHW3,
        gt_NHW3=gt_NHW3, gt_valid_NHW=gt_valid_NHW,
        K_N33=np.stack([f["K"].astype(np.float64) for f in frames]),
        cam2world_N44=np.stack([nearest_rigid(f["cam2world"].astype(np.float64)) for f in frames]), ms_per_image=ms)


def point_errors(fr: EvalFrames, S_44: np.ndarray | None) -> tuple[list[dict], dict[str, float]]:
    """Per-frame mean L2 errors and pooled ``eval/{student_vs_teacher, teacher_vs_gt, student_vs_gt}/*``.

    Student vs teacher in the labels' unit; against ground truth after mapping by ``S_44``, in metres.
    """
    rows: list[dict] = [{} for _ in fr.names]
    pairs = {"student_vs_teacher": (fr.student_NHW3, fr.teacher_NHW3, fr.valid_NHW)}
    if S_44 is not None and fr.gt_valid_NHW.any():
        pairs["teacher_vs_gt"] = (transform_points(S_44, fr.teacher_NHW3), fr.gt_NHW3, fr.gt_valid_NHW & fr.valid_NHW)
        pairs["student_vs_gt"] = (transform_points(S_44, fr.student_NHW3.astype(np.float64)), fr.gt_NHW3,
                                  fr.gt_valid_NHW)
    metrics: dict[str, float] = {}
    for key, (a_NHW3, b_NHW3, mask_NHW) in pairs.items():
        err_NHW = np.linalg.norm(a_NHW3 - b_NHW3, axis=-1)
        for row, err_hw, mask_hw in zip(rows, err_NHW, mask_NHW):
            row[f"{key}_l2_mean"] = float(err_hw[mask_hw].mean()) if mask_hw.any() else float("nan")
        metrics.update(error_stats(err_NHW[mask_NHW], f"eval/{key}/"))
    return rows, metrics


def localize_frames(fr: EvalFrames, S_44: np.ndarray | None, reprojection_px: float
                    ) -> tuple[list[dict], dict[str, float], dict[str, list]]:
    """PnP-RANSAC from the student's points (all pixels: no labels at test time) and the teacher's (valid ones).

    Returns per-frame rows, ``loc/*`` and ``loc_teacher/*`` metrics (accuracies only when every frame has a true
    pose) and the camera-to-world poses ``{'student', 'teacher', 'true'}`` in the dataset frame (None: unknown).
    """
    rows: list[dict] = []
    poses: dict[str, list] = {"student": [], "teacher": [], "true": []}
    for i in range(len(fr.names)):
        true_44 = fr.cam2world_N44[i]
        has_pose = S_44 is not None and bool(np.all(np.isfinite(true_44)))
        row: dict = {}
        for who, pts_hw3, mask in (("student", fr.student_NHW3[i], None), ("teacher", fr.teacher_NHW3[i],
                                                                            fr.valid_NHW[i])):
            res = localize(pts_hw3, mask, fr.K_N33[i], reprojection_px=reprojection_px)
            est_44 = pose_to_gt(S_44, res.cam2world_44) if has_pose else None
            t_cm, r_deg = pose_errors(est_44, true_44) if has_pose else (float("nan"), float("nan"))
            poses[who].append(est_44)
            row.update({f"{who}_loc_ok": res.ok, f"{who}_t_cm": t_cm, f"{who}_r_deg": r_deg,
                        f"{who}_inlier_ratio": res.inlier_ratio, f"{who}_loc_ms": 1000 * res.seconds,
                        f"{who}_loc_reason": res.reason})
        poses["true"].append(true_44 if has_pose else None)
        rows.append(row)
    metrics: dict[str, float] = {}
    for who, prefix in (("student", "loc/"), ("teacher", "loc_teacher/")):
        if all(t is not None for t in poses["true"]):
            s = summarize(np.array([r[f"{who}_t_cm"] for r in rows]), np.array([r[f"{who}_r_deg"] for r in rows]))
            metrics.update({prefix + k.split("/", 1)[1]: v for k, v in s.items()})
        metrics[f"{prefix}inlier_ratio"] = float(np.mean([r[f"{who}_inlier_ratio"] for r in rows]))
        metrics[f"{prefix}time_ms_per_frame"] = float(np.mean([r[f"{who}_loc_ms"] for r in rows]))
    return rows, metrics, poses


def evaluate_run(run_dir: str | Path, overrides: list[str] | None = None,
                 options: EvalOptions | None = None) -> dict[str, float | str]:
    """Evaluate a run directory (see module doc); returns the evaluation's metrics (also merged into metrics.json)."""
    opt = options or EvalOptions()
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    ckpt = checkpoint_path(run_dir, opt.checkpoint)
    module = StudentModule.load(ckpt)
    size = tuple(module.hparams.img_size)
    if size != tuple(cfg.loader.resolution):
        raise ValueError(f"the checkpoint's student takes {size}, not loader.resolution={cfg.loader.resolution}")
    cache, _ = build_labels(cfg)
    names = cache.split.get(opt.split) or []
    if not names:
        raise ValueError(f"label cache {cache.root} has no {opt.split!r} frames")
    info = cache.labels_info
    log.info("evaluating %s (%s) on %d %s frames of %s", run_dir, ckpt.name, len(names), opt.split, cache.root)
    device = torch.device("cuda" if opt.device == "auto" and torch.cuda.is_available() else
                          "cpu" if opt.device == "auto" else opt.device)
    fr = load_frames(cache, names, module, cfg.loader.batch_size, device)
    S_44, alignment = (labels_to_gt(cache, cache.split.get("train") or names) if fr.gt_valid_NHW.any()
                       else (None, "none (no depth and poses)"))
    px = opt.reprojection_px or max(1.0, 10.0 * size[1] / 640)
    err_rows, metrics = point_errors(fr, S_44)
    loc_rows, loc_metrics, poses = localize_frames(fr, S_44, px)
    metrics.update(loc_metrics)
    metrics.update({
        "eval/checkpoint": str(ckpt), "eval/split": opt.split, "eval/n_frames": float(len(names)),
        "eval/reprojection_px": px, "eval/student_ms_per_image": fr.ms_per_image, "eval/device": str(device),
        "eval/gt_alignment": alignment, "eval/labels_frame": info.get("frame"), "eval/labels_unit": info.get("unit"),
    })
    _write_csv(run_dir / "eval_frames.csv", [{"frame": n, **e, **p} for n, e, p in zip(names, err_rows, loc_rows)])
    _figures(run_dir, fr, S_44, loc_rows, poses, opt.figure_frames)
    if opt.exports:
        metrics.update(_exports(run_dir, module, opt.split, fr, opt.export_atol))
    _merge_metrics(run_dir / "metrics.json", metrics, EVAL_PREFIXES + (("export/",) if opt.exports else ()))
    nan = float("nan")
    log.info("%s: student %.1f %% at 5 cm / 5 deg (teacher labels %.1f %%), median %.2f cm / %.2f deg", run_dir,
             100 * metrics.get("loc/acc_5cm5deg", nan), 100 * metrics.get("loc_teacher/acc_5cm5deg", nan),
             metrics.get("loc/median_t_cm", nan), metrics.get("loc/median_r_deg", nan))
    return metrics


# --- outputs ----------------------------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def _merge_metrics(path: Path, metrics: dict, replaced: tuple[str, ...]) -> None:
    """Keep every key of an existing metrics.json except those under ``replaced`` (stale ones would mislead)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**{k: v for k, v in old.items() if not k.startswith(replaced)}, **metrics})


def _figures(run_dir: Path, fr: EvalFrames, S_44: np.ndarray | None, rows: list[dict], poses: dict[str, list],
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
                        title=f"teacher vs student, {n} frames; true and estimated cameras")
    except Exception as e:
        log.warning("could not write evaluation figures: %s", e)


class WorldPointmap(torch.nn.Module):
    """The deployable student: images (B, 3, H, W) in [0, 1] -> world points (B, 3, H, W), labels' frame and unit."""

    def __init__(self, module: StudentModule):
        super().__init__()
        self.student = module.student
        self.register_buffer("coord_mean", module.coord_mean.clone())
        self.register_buffer("coord_std", module.coord_std.clone())

    def forward(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        return self.student(image_B3HW) * self.coord_std + self.coord_mean


def _exports(run_dir: Path, module: StudentModule, split: str, fr: EvalFrames, atol: float) -> dict[str, float | str]:
    """PLY clouds of the split (labels' frame) and the student as ONNX / TorchScript; failures are recorded."""
    from lit3d.export import export_onnx, export_torchscript, write_ply

    out_dir = run_dir / "exports"
    write_ply(out_dir / f"teacher_{split}.ply", fr.teacher_NHW3[fr.valid_NHW], fr.images_NHW3[fr.valid_NHW])
    write_ply(out_dir / f"student_{split}.ply", fr.student_NHW3, fr.images_NHW3)
    model = WorldPointmap(module.cpu()).eval()
    example_B3HW = torch.from_numpy(fr.images_NHW3[:2]).permute(0, 3, 1, 2).float() / 255
    metrics: dict[str, float | str] = {}
    for fmt, fn, name in (("onnx", export_onnx, "student.onnx"), ("torchscript", export_torchscript, "student.ts")):
        try:
            r = fn(model, example_B3HW, out_dir / name, atol=atol)
            metrics.update({f"export/{fmt}_size_mb": r.size_mb, f"export/{fmt}_max_abs_diff": r.max_abs_diff,
                            f"export/{fmt}_atol": r.atol, f"export/{fmt}_path": str(r.path)})
        except Exception as e:  # a failed export is a finding to report, not a reason to lose the evaluation
            log.warning("%s export failed: %s", fmt, e)
            metrics[f"export/{fmt}_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return metrics


# --- command line -----------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[str, EvalOptions, list[str]]:
    """(run dir, options, config overrides) of ``RUN_DIR|run_dir=RUN_DIR [option=value ...] [key=value ...]``."""
    run_dir, opts, overrides = "", {}, []
    types = {f.name: f.type for f in dataclasses.fields(EvalOptions)}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq and not run_dir:
            run_dir = arg
        elif key == "run_dir":
            run_dir = value
        elif key in types:
            if types[key] == "bool":
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(f"{key} must be true or false, got {value!r}")
                opts[key] = value.lower() in ("true", "1", "yes")
            else:
                opts[key] = {"float": float, "int": int}.get(types[key], str)(value)
        else:
            overrides.append(arg)
    if not run_dir:
        raise ValueError("usage: python -m lit3d.evaluate RUN_DIR [option=value ...] [key=value ...]")
    return run_dir, EvalOptions(**opts), overrides


def help_text() -> str:
    docs = field_docs(EvalOptions)
    lines = ["usage: python -m lit3d.evaluate RUN_DIR [option=value ...] [key=value ...]", "",
             (__doc__ or "").split("\n\n")[1].replace("\n", " "), "", "options:"]
    lines += [f"  {f.name}={f.default!r}  # {docs.get(f.name, '')}" for f in dataclasses.fields(EvalOptions)]
    lines += ["", "key=value: any config key overriding the run's config.yaml (python -m lit3d.fit --help)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lit3d.cli import USER_ERRORS, setup_logging

    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    setup_logging()
    try:
        run_dir, options, overrides = parse_args(argv)
        metrics = evaluate_run(run_dir, overrides, options)
    except USER_ERRORS as e:
        log.error("%s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return 2
    print(json.dumps({k: v for k, v in metrics.items() if k.startswith(("loc", "eval/student_vs"))}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
