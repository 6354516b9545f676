"""One place for run directories: lookup, checkpoint choice, prediction, frame localization, point errors, metrics.

A run directory (written by ``lit3d fit``) holds ``config.yaml`` (the resolved config), ``checkpoints/best.ckpt``
and ``last.ckpt`` (and ``refined.ckpt`` after a head refinement, ``refine.steps``), ``metrics.json`` (final
metrics, merged by later commands) and ``metrics.csv`` (the logger's curves). ``evaluate``, ``localize``,
``report``, the notebooks' :mod:`lit3d.analysis` and :mod:`lit3d.viz.run` read runs through this module only.

Frames: the student predicts world points in the labels' frame and unit (``labels.json`` of the cache, recorded
as ``labels/frame`` and ``labels/unit`` in metrics.json). :func:`labels_to_gt` maps them onto the dataset's metric
frame when the labels are elsewhere (DUSt3R-aligned caches), so errors against ground truth are in metres.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import OmegaConf

from lit3d.cache.datamodule import resize_frame
from lit3d.cache.store import LabelCache, write_json
from lit3d.config import ConfigError, FitConfig, from_yaml, load_config
from lit3d.files import atomic_write_bytes
from lit3d.locks import LockBusy, file_lock
from lit3d.geometry import backproject_depth, nearest_rotation, rotation_angle_deg, transform_points, umeyama_sim3
from lit3d.metrics.localization import PnPResult, localize, localize_points, pose_errors, summarize
from lit3d.metrics.matching import MIN_INLIERS, ViewDatabase, refine_by_matching, sift_keypoints
from lit3d.metrics.pointmap import error_summary
from lit3d.students.checkpoints import REFINED_FROM, current_hash, load_checkpoint
from lit3d.students.ensemble import PointEnsemble
from lit3d.students.module import StudentModule
from lit3d.students.tta import TestTimeOptions

log = logging.getLogger(__name__)

RANSAC_PX_AT_640 = 10.0
"""Default RANSAC inlier threshold: 10 px at 640 px image width (DSAC*/ACE), scaled to the student's width."""


class RunDirError(ValueError):
    """A run directory that cannot be used: in use by another process, holding a run, or with unreadable files."""


# --- ownership ----------------------------------------------------------------------------------------------------
RUN_OUTPUTS = ("checkpoints/*.ckpt", "metrics.json", "metrics.csv")
"""What a started training leaves in its run directory (glob patterns): a directory with any of them holds a run
(config.yaml alone does not: a run that failed before training left no results)."""


@contextlib.contextmanager
def run_dir_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the block; another process holding it is a RunDirError naming the directory and
    the holder (pid, host, command, start time)."""
    try:
        with file_lock(Path(run_dir) / ".lock", f"run directory {run_dir}", wait=False):
            yield
    except LockBusy as e:
        raise RunDirError(f"{e}; wait for it, or choose another run_dir") from None


def check_run_dir_free(run_dir: str | Path, resume: str) -> None:
    """Refuse to start a new run in a directory that holds one (:data:`RUN_OUTPUTS`): a rerun would mix or
    overwrite its results. Resuming (``trainer.resume``) continues it instead."""
    run_dir = Path(run_dir)
    found = [n for n in RUN_OUTPUTS if any(run_dir.glob(n))]
    if not found or resume:
        return
    how = ("resume it with trainer.resume=last" if (run_dir / "checkpoints" / "last.ckpt").is_file()
           else "it has no checkpoints/last.ckpt to resume from; delete it")
    raise RunDirError(f"run directory {run_dir} already holds a run ({', '.join(found)}); {how}, or choose another "
                      f"run_dir")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """An OSError in the block (full disk, read-only folder) becomes a one-line RunDirError naming ``path``."""
    try:
        yield
    except OSError as e:
        raise RunDirError(f"cannot write {path}: {e.strerror or e}") from None


# --- lookup -------------------------------------------------------------------------------------------------------
def run_config(run_dir: str | Path, overrides: list[str] | None = None) -> FitConfig:
    """The run's resolved ``config.yaml`` with dot-list ``overrides`` applied (``run_dir`` = where it is now)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config([f"experiment={path}", *(overrides or [])])  # a yaml path is a valid experiment
    cfg.experiment, cfg.run_dir = from_yaml(path).experiment, str(run_dir)
    return cfg


def checkpoint_path(run_dir: str | Path, which: str = "best") -> Path:
    """``best``: the run's student, ``checkpoints/refined.ckpt`` after a head refinement (``refine.steps`` in its
    config.yaml, made from the end-to-end checkpoint there now), else best.ckpt (falling back to last.ckpt: runs
    without validation have no best); ``last`` (the end-to-end training's, which resumes), or ``which`` as a path to
    a .ckpt file."""
    ckpts = Path(run_dir) / "checkpoints"
    if which in ("best", "last"):
        names = ["best.ckpt", "last.ckpt"] if which == "best" else ["last.ckpt"]
        found = [ckpts / name for name in names if (ckpts / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{run_dir}: no {which} checkpoint in {ckpts}")
        if which == "best" and _refined_from(Path(run_dir), found):
            return ckpts / "refined.ckpt"
        return found[0]
    if not Path(which).is_file():
        raise FileNotFoundError(f"checkpoint {which} not found")
    return Path(which)


LABEL_KEYS = ("cache_dir", "data", "pairs", "teacher", "align")
"""The config sections that decide a run's label cache (its frame, split and labels)."""


def with_ensemble(run_dir: str | Path, module: torch.nn.Module, members: list[str]) -> torch.nn.Module:
    """``module`` (the student of ``run_dir``) alone, or averaged with the students of the run directories
    ``members`` (each its ``best`` checkpoint; :class:`PointEnsemble`). Each member must have been trained on the
    labels of ``run_dir`` (the same ``LABEL_KEYS`` in its config.yaml): other labels may lie in another frame."""
    if not members:
        return module
    ours = run_config(run_dir)
    students = [module]
    for member in members:
        theirs = run_config(member)
        differ = [k for k in LABEL_KEYS if getattr(theirs, k) != getattr(ours, k)]
        if differ:
            raise ValueError(f"ensemble member {member}: trained on other labels than {run_dir} (its {differ[0]} "
                             f"differs); only students of the same label cache can be averaged")
        students.append(load_student(member))
    return PointEnsemble(students)


def _refined_from(run_dir: Path, sources: list[Path]) -> bool:
    """Whether the run's head refinement is its student: ``refined.ckpt`` exists, the run's config still refines
    (a run resumed with ``refine.steps=0`` means its end-to-end student) and the refinement was made from one of the
    end-to-end checkpoints ``sources`` as they are now, not from the weights before a resume trained further (a
    warning says so)."""
    refined = run_dir / "checkpoints" / "refined.ckpt"
    config = run_dir / "config.yaml"
    if not refined.is_file() or (config.is_file() and from_yaml(config).refine.steps == 0):
        return False
    made_from = load_checkpoint(refined).get(REFINED_FROM, {}).get("source_sha256")
    now = {current_hash(path) for path in sources} - {None}
    if made_from is not None and now and made_from not in now:
        log.warning("%s was refined from other weights than %s hold now: using %s (resume the run with "
                    "refine.steps to refine these)", refined, " and ".join(p.name for p in sources), sources[0].name)
        return False
    return True


def load_student(run_dir: str | Path, which: str = "best") -> StudentModule:
    """The run's trained student (CPU, eval mode), checkpoint chosen by :func:`checkpoint_path`."""
    module = StudentModule.load(checkpoint_path(run_dir, which))
    return module.eval()


def run_label_cache(path: str | Path, cache_dir: str = "") -> LabelCache:
    """The label cache of a run directory (``labels/cache`` of its metrics.json; ``cache_dir``: where it is
    looked for by name when it has moved) or a cache folder itself; never builds one."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return LabelCache(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is neither a run directory (config.yaml) nor a label cache (manifest.json)")
    recorded = read_metrics(path).get("labels/cache")
    if not recorded:
        raise FileNotFoundError(f"{path}/metrics.json does not name the run's label cache (labels/cache)")
    root = Path(recorded)
    if not root.is_dir() and cache_dir:
        root = Path(cache_dir) / "labels" / root.name
    if not root.is_dir():
        raise FileNotFoundError(f"label cache {root} of run {path} not found (cache_dir=DIR finds a moved cache)")
    return LabelCache(root)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``metrics.json`` ({} when it has none yet); an unreadable one is a RunDirError naming it."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(metrics, dict):
        raise RunDirError(f"{path} is not a JSON object of metrics")
    return metrics


def merge_metrics(run_dir: str | Path, metrics: dict, replaced: tuple[str, ...]) -> None:
    """Write ``metrics`` into metrics.json, keeping every key except those under ``replaced`` (stale ones would
    mislead)."""
    old = read_metrics(run_dir)
    write_json(Path(run_dir) / "metrics.json",
               {**{k: v for k, v in old.items() if not k.startswith(replaced)}, **metrics})


def read_log(run_dir: str | Path) -> list[dict[str, float]]:
    """Rows of the run's CSV log ``metrics.csv`` with their non-empty values as floats ([] without a log)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def load_curves(run_dir: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{'train': (steps, loss), 'val': (steps, loss)}`` from the run's CSV log (epoch-level values)."""
    series: dict[str, tuple[list[float], list[float]]] = {"train": ([], []), "val": ([], [])}
    for row in read_log(run_dir):
        for name, key in (("train", "train/loss_epoch"), ("val", "val/loss")):
            if key in row:
                series[name][0].append(row["step"])
                series[name][1].append(row[key])
    return series


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (holding config.yaml and metrics.json) among ``paths`` and below them, sorted, unique."""
    runs: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a directory")
        found = [m.parent for m in p.rglob("metrics.json") if (m.parent / "config.yaml").is_file()]
        if not found:
            log.warning("no run directory (config.yaml + metrics.json) in %s", p)
        runs.update(found)
    return sorted(runs)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys (lists kept as values)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def raw_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.yaml as written (plain data: old runs load whatever the config keys are now); an unreadable
    one is a RunDirError naming it."""
    path = Path(run_dir) / "config.yaml"
    try:
        config = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:  # OSError, yaml syntax, OmegaConf's grammar: all mean the file is damaged
        raise RunDirError(f"{path} is unreadable ({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise RunDirError(f"{path} is not a YAML mapping of config keys")
    return config


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows as CSV (columns: every key in order of first appearance), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


@dataclass
class Run:
    """A finished run: its config (as written), metrics, trained student (CPU, eval mode) and label cache."""

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    module: StudentModule
    cache: LabelCache
    _to_gt: tuple[np.ndarray | None, str] | None = field(default=None, repr=False)

    def to_gt(self) -> tuple[np.ndarray | None, str]:
        """:func:`labels_to_gt` of the run's cache, fitted on its training frames (computed once)."""
        if self._to_gt is None:
            self._to_gt = labels_to_gt(self.cache, self.cache.split.get("train") or self.cache.frames)
        return self._to_gt


def open_run(run_dir: str | Path, checkpoint: str = "best", cache_dir: str | Path | None = None) -> Run:
    """A run directory with its student and label cache (the one recorded as ``labels/cache``; ``cache_dir``
    finds it when the run recorded a path relative to another working directory)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if "labels/cache" not in metrics:
        raise FileNotFoundError(f"{run_dir}/metrics.json does not name the run's label cache (labels/cache)")
    module = load_student(run_dir, checkpoint)
    cache_root = Path(metrics["labels/cache"])
    if not cache_root.is_dir() and cache_dir is not None:
        cache_root = Path(cache_dir) / "labels" / cache_root.name
    return Run(run_dir, raw_config(run_dir), metrics, module, LabelCache(cache_root))


# --- prediction ---------------------------------------------------------------------------------------------------
def resolve_device(name: str = "auto", key: str = "device") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a name torch does not know, or
    CUDA without a GPU, is a ConfigError naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"invalid value for '{key}': {name!r}; valid values: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name}: no CUDA GPU is available here (use {key}=cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def default_reprojection_px(width: int) -> float:
    """RANSAC inlier threshold for an image ``width`` pixels wide: :data:`RANSAC_PX_AT_640` scaled, >= 1 px."""
    return max(1.0, RANSAC_PX_AT_640 * width / 640)


@torch.no_grad()
def predict(module: torch.nn.Module, images_NHW3: np.ndarray, batch_size: int, device: torch.device | str = "cpu",
            progress: bool = False, warmup: bool = True) -> tuple[np.ndarray, float]:
    """Student world points (N, h, w, 3) of uint8 images and the forward time per image (ms, after a warm-up
    forward unless ``warmup`` is False).

    ``module`` maps images (B, 3, h, w) in [0, 1] to world points (B, 3, h, w) (a StudentModule, an exported
    TorchScript module, or anything with that contract).
    """
    device = torch.device(device)
    module.eval().to(device)
    x_N3HW = torch.from_numpy(np.ascontiguousarray(images_NHW3)).permute(0, 3, 1, 2).float() / 255
    if warmup:
        module(x_N3HW[:batch_size].to(device))  # warm-up: first-call allocations are not the model's speed
    out, seconds = [], 0.0
    starts = range(0, len(x_N3HW), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="student", unit="batch", leave=False)
    for k in starts:
        xb = x_N3HW[k : k + batch_size].to(device)
        t0 = time.perf_counter()
        pred = module(xb)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        out.append(pred.permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out), 1000 * seconds / max(len(x_N3HW), 1)


# --- ground truth and frames --------------------------------------------------------------------------------------
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
    """The rigid pose nearest to ``T_44`` (rotation block projected onto SO(3)); non-finite stays as is.

    Dataset poses are not always orthonormal (7-Scenes: det R ~ 0.99985), and the angle of R_est^T R_gt read from
    its trace turns that into ~1 deg of rotation error that no estimate could remove.
    """
    if not np.all(np.isfinite(T_44)):
        return T_44
    out = np.array(T_44, dtype=np.float64)
    out[:3, :3], out[3] = nearest_rotation(out[:3, :3]), (0.0, 0.0, 0.0, 1.0)
    return out


def error_stats(err_N: np.ndarray, prefix: str) -> dict[str, float]:
    """:func:`lit3d.metrics.pointmap.error_summary` (the keys of ``PointErrors``) of pooled pixel errors, prefixed."""
    if err_N.size == 0:
        return {}
    return {prefix + k: float(v) for k, v in error_summary(torch.from_numpy(np.asarray(err_N, np.float64))).items()}


@dataclass
class Frames:
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


def load_frames(cache: LabelCache, names: list[str], module: torch.nn.Module, batch_size: int,
                device: torch.device | str = "cpu", tta: TestTimeOptions | None = None) -> Frames:
    """Frames ``names`` of ``cache`` resized to the student's input, predicted by ``module`` (averaged over
    ``tta``'s copies of each image when it is given and on)."""
    size = tuple(module.hparams.img_size)
    labels = [cache.load_frame(n) for n in names]
    frames = [resize_frame(f, size) for f in labels]
    gt_NHW3, gt_valid_NHW = np.full((len(names), *size, 3), np.nan), np.zeros((len(names), *size), bool)
    for i, f in enumerate(labels):
        gt = gt_world_points(f, size)
        if gt is not None:
            gt_NHW3[i], gt_valid_NHW[i] = gt
    images_NHW3 = np.stack([f["image"] for f in frames])
    student_NHW3, ms = predict(tta.wrap(module) if tta else module, images_NHW3, batch_size, device)
    return Frames(
        names=list(names), images_NHW3=images_NHW3, valid_NHW=np.stack([f["valid"] for f in frames]),
        teacher_NHW3=np.stack([f["pts_world"] for f in frames]).astype(np.float64), student_NHW3=student_NHW3,
        gt_NHW3=gt_NHW3, gt_valid_NHW=gt_valid_NHW,
        K_N33=np.stack([f["K"].astype(np.float64) for f in frames]),
        cam2world_N44=np.stack([nearest_rigid(f["cam2world"].astype(np.float64)) for f in frames]), ms_per_image=ms)


# --- scores -------------------------------------------------------------------------------------------------------
def point_errors(fr: Frames, S_44: np.ndarray | None) -> tuple[list[dict], dict[str, float]]:
    """Per-frame mean L2 errors (and, against ground truth, offsets: :func:`frame_offsets`) and pooled
    ``eval/{student_vs_teacher, teacher_vs_gt, student_vs_gt}/*``.

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
            row[f"{key}_l2_median"] = float(np.median(err_hw[mask_hw])) if mask_hw.any() else float("nan")
        metrics.update(error_stats(err_NHW[mask_NHW], f"eval/{key}/"))
    if "student_vs_gt" in pairs:
        metrics.update(frame_offsets(rows, pairs["student_vs_gt"][0], fr.gt_NHW3, fr.gt_valid_NHW, fr.cam2world_N44))
    return rows, metrics


def frame_offsets(rows: list[dict], pred_NHW3: np.ndarray, true_NHW3: np.ndarray, mask_NHW: np.ndarray,
                  cam2world_N44: np.ndarray) -> dict[str, float]:
    """What of each frame's point error moves the frame's points as a whole, which PnP cannot average away:
    ``student_offset_{x,y,z}_cm``, the mean error vector (prediction - truth, metres) in its true camera's axes (x
    right, y down, z forward; NaN without a pose), and ``student_turn_deg``, the angle of the rotation that best
    maps the true points onto the predicted ones about their centroids (least squares, :func:`umeyama_sim3`): a
    turned cloud gives PnP a turned camera. Points in the dataset frame, metres; ``mask_NHW`` marks the pixels with
    a true point. Returns the medians ``eval/student_vs_gt/frame_offset_cm_median`` (of
    the offsets' lengths) and ``eval/student_vs_gt/frame_turn_deg_median``."""
    lengths, turns = [], []
    for row, pred_hw3, true_hw3, mask_hw, cam2world_44 in zip(rows, pred_NHW3, true_NHW3, mask_NHW, cam2world_N44):
        pred_N3, true_N3 = pred_hw3[mask_hw], true_hw3[mask_hw]
        offset_3 = (pred_N3 - true_N3).mean(0) @ cam2world_44[:3, :3] if len(true_N3) else np.full(3, np.nan)
        row.update({f"student_offset_{axis}_cm": 100 * float(v) for axis, v in zip("xyz", offset_3)})
        lengths.append(100 * np.linalg.norm(offset_3))
        turns.append(frame_turn_deg(true_N3, pred_N3))
        row["student_turn_deg"] = turns[-1]
    return {"eval/student_vs_gt/frame_offset_cm_median": _finite_median(lengths),
            "eval/student_vs_gt/frame_turn_deg_median": _finite_median(turns)}


def frame_turn_deg(true_N3: np.ndarray, pred_N3: np.ndarray) -> float:
    """Angle (degrees) of the least-squares rotation taking ``true_N3`` onto ``pred_N3`` about their centroids (NaN
    for fewer than 3 points)."""
    if len(true_N3) < 3:
        return float("nan")
    _, R_33, _ = umeyama_sim3(true_N3, pred_N3, with_scale=False)
    return rotation_angle_deg(np.eye(3), R_33)


def _finite_median(values: list[float]) -> float:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(np.median(finite)) if finite.size else float("nan")


def localize_frames(fr: Frames, S_44: np.ndarray | None, reprojection_px: float, iterations: int = 1000,
                    refine: bool = True, who: tuple[str, ...] = ("student", "teacher"),
                    ) -> tuple[list[dict], dict[str, float], dict[str, list]]:
    """PnP-RANSAC from the student's points (all pixels: no labels at test time) and the teacher's (valid ones);
    ``who`` limits it to one of them (``localize``'s ``iterations`` and ``refine`` are passed on).

    Estimates are mapped into the dataset frame by ``S_44`` (:func:`labels_to_gt`) before they are compared with
    the true poses. Returns per-frame rows, ``loc/*`` and ``loc_teacher/*`` metrics (accuracies only when every
    frame has a true pose) and the camera-to-world poses ``{'student', 'teacher', 'true'}`` in the dataset frame
    (None: unknown), with ``'student_pnp'``: the student's PnP results as solved (labels' frame).
    """
    rows: list[dict] = []
    poses: dict[str, list] = {"student": [], "teacher": [], "true": [], "student_pnp": []}
    for i in range(len(fr.names)):
        true_44 = fr.cam2world_N44[i]
        has_pose = S_44 is not None and bool(np.all(np.isfinite(true_44)))
        row: dict = {}
        for name, pts_hw3, mask in (("student", fr.student_NHW3[i], None), ("teacher", fr.teacher_NHW3[i],
                                                                             fr.valid_NHW[i])):
            if name not in who:
                continue
            res = localize(pts_hw3, mask, fr.K_N33[i], reprojection_px=reprojection_px, iterations=iterations,
                           refine=refine)
            est_44 = pose_to_gt(S_44, res.cam2world_44) if has_pose else None
            t_cm, r_deg = pose_errors(est_44, true_44) if has_pose else (float("nan"), float("nan"))
            poses[name].append(est_44)
            if name == "student":
                poses["student_pnp"].append(res)
            row.update({f"{name}_loc_ok": res.ok, f"{name}_t_cm": t_cm, f"{name}_r_deg": r_deg,
                        f"{name}_inlier_ratio": res.inlier_ratio, f"{name}_loc_ms": 1000 * res.seconds,
                        f"{name}_loc_reason": res.reason})
        poses["true"].append(true_44 if has_pose else None)
        rows.append(row)
    metrics: dict[str, float] = {}
    for name, prefix in (("student", "loc/"), ("teacher", "loc_teacher/")):
        if name not in who:
            continue
        if all(t is not None for t in poses["true"]):
            metrics.update(_prefixed(rows, name, prefix))
        metrics[f"{prefix}inlier_ratio"] = float(np.mean([r[f"{name}_inlier_ratio"] for r in rows]))
        metrics[f"{prefix}time_ms_per_frame"] = float(np.mean([r[f"{name}_loc_ms"] for r in rows]))
    return rows, metrics, poses


def match_frames(cache: LabelCache, names: list[str], S_44: np.ndarray, views: int = 10, max_features: int = 2000,
                 ratio: float = 0.8, reprojection_px: float | None = None) -> tuple[list[dict], dict[str, float]]:
    """The classical yardstick (:mod:`lit3d.metrics.matching`) on frames ``names`` of ``cache``: each frame's pose
    from SIFT matches of its image against the ``views`` training frames nearest its TRUE pose (no retrieval
    error: the matcher's best case), lifted by their labels, by PnP-RANSAC (``reprojection_px``: default
    :func:`default_reprojection_px` of the cache's width); estimates mapped by ``S_44`` into the dataset frame.

    Returns per-frame rows (``matching_loc_ok``, ``matching_t_cm``, ``matching_r_deg``, ``matching_matches``,
    ``matching_inliers``, ``matching_loc_reason``) and ``loc_matching/*`` metrics (:func:`summarize`).
    """
    train = _training_names(cache)
    # picked by true poses, so posed as the dataset gives them (the labels' frame may differ by S_44)
    db = ViewDatabase(np.stack([cache.load_frame(n)["cam2world"] for n in train]),
                      lambda j: cache.load_frame(train[j]), max_features)
    rows = []
    for name in names:
        frame = cache.load_frame(name)
        true_44 = nearest_rigid(frame["cam2world"].astype(np.float64))
        if not np.all(np.isfinite(true_44)):
            raise ValueError(f"frame {name} of {cache.root} has no true pose: the yardstick needs one to pick views")
        uv_N2, pts_N3, _ = db.correspondences(sift_keypoints(frame["image"], max_features), db.nearest(true_44, views),
                                           ratio)
        px = reprojection_px or default_reprojection_px(frame["image"].shape[1])
        res = localize_points(pts_N3, uv_N2, frame["K"], reprojection_px=px)
        t_cm, r_deg = pose_errors(pose_to_gt(S_44, res.cam2world_44), true_44)
        rows.append({"matching_loc_ok": res.ok, "matching_t_cm": t_cm, "matching_r_deg": r_deg,
                     "matching_matches": len(uv_N2), "matching_inliers": res.n_inliers,
                     "matching_loc_reason": res.reason})
    return rows, _prefixed(rows, "matching", "loc_matching/")


def _training_names(cache: LabelCache) -> list[str]:
    train = cache.split.get("train") or []
    if not train:
        raise ValueError(f"the label cache {cache.root} has no 'train' frames to match against")
    return train


def _prefixed(rows: list[dict], column: str, prefix: str) -> dict[str, float]:
    s = summarize(np.array([r[f"{column}_t_cm"] for r in rows]), np.array([r[f"{column}_r_deg"] for r in rows]))
    return {prefix + k.split("/", 1)[1]: v for k, v in s.items()}


def training_views(cache: LabelCache, max_features: int = 2000) -> ViewDatabase:
    """The training frames of ``cache`` to match queries against, posed as the alignment used or solved them (the
    labels' frame and unit, as a student's PnP poses are)."""
    train = _training_names(cache)
    cams = cache.cameras()
    if cams is None:
        raise ValueError(f"label cache {cache.root} keeps no cameras (built by an older lit3d); delete "
                         f"{cache.root / 'labels.json'} and run lit3d label again to store them")
    row = {str(n): i for i, n in enumerate(cams["names"])}
    nan_44 = np.full((4, 4), np.nan)
    poses_M44 = np.stack([cams["cam2world"][row[n]] if n in row else nan_44 for n in train])
    return ViewDatabase(poses_M44, lambda j: cache.load_frame(train[j]), max_features)


def refine_frames(fr: Frames, student_pnp: list[PnPResult], db: ViewDatabase, S_44: np.ndarray | None,
                  reprojection_px: float, views: int = 10, min_inliers: int = MIN_INLIERS, retrieval: bool = True,
                  align: bool = True) -> tuple[list[dict], dict[str, float]]:
    """The student's poses refined by matching (:func:`lit3d.metrics.matching.refine_by_matching`): each frame's
    image matched against the ``views`` training views nearest the student's pose ``student_pnp`` (labels'
    frame), or with ``retrieval`` where those give none, against the views sharing the most matches with it;
    the matched pose kept where ``min_inliers`` support it and, with ``align``, refined by direct alignment
    where that still agrees with the matches. No true pose is used to pick views.

    Returns per-frame rows (``refined_loc_ok``, ``refined_t_cm``, ``refined_r_deg``, ``refined_adopted``,
    ``refined_retrieved``, ``refined_aligned``, ``refined_matches``, ``refined_inliers``, ``refined_loc_ms``:
    the student's PnP, the matching and the alignment) and ``loc_refined/*`` metrics (accuracies when every frame
    has a true pose, the fractions of frames whose pose matching gave, retrieved views gave and direct alignment
    moved, the time per frame).
    """
    rows = []
    for i, prior in enumerate(student_pnp):
        ref = refine_by_matching(fr.images_NHW3[i], fr.K_N33[i], prior, db, reprojection_px, views,
                                 min_inliers=min_inliers, retrieval=retrieval, align=align)
        true_44 = fr.cam2world_N44[i]
        has_pose = S_44 is not None and bool(np.all(np.isfinite(true_44)))
        t_cm, r_deg = (pose_errors(pose_to_gt(S_44, ref.result.cam2world_44), true_44) if has_pose
                       else (float("nan"), float("nan")))
        rows.append({"refined_loc_ok": ref.result.ok, "refined_t_cm": t_cm, "refined_r_deg": r_deg,
                     "refined_adopted": ref.adopted, "refined_retrieved": ref.adopted and ref.retrieved,
                     "refined_aligned": ref.aligned,
                     "refined_matches": ref.matches, "refined_inliers": ref.inliers,
                     "refined_loc_ms": 1000 * ref.seconds})
    metrics = _prefixed(rows, "refined", "loc_refined/") if S_44 is not None and all(
        np.all(np.isfinite(T)) for T in fr.cam2world_N44) else {}
    for key in ("adopted", "retrieved", "aligned"):
        metrics[f"loc_refined/{key}_rate"] = (float(np.mean([r[f"refined_{key}"] for r in rows])) if rows
                                              else float("nan"))
    metrics["loc_refined/time_ms_per_frame"] = (float(np.mean([r["refined_loc_ms"] for r in rows])) if rows
                                                else float("nan"))
    return rows, metrics
