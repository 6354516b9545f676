"""``lit3d localize RUN_DIR|MODEL.onnx|MODEL.ts QUERY... [option=value ...]``: camera poses of new photos.

QUERY: image files (jpg, jpeg, png), folders of them, or text files listing image paths (one a line, relative to
the list). Each photo is read with its EXIF orientation, resized to the student's input with its intrinsics
scaled, predicted in batches (averaged over rolled and zoomed copies of each photo, ``tta``, as ``lit3d
evaluate`` does), and localized by PnP + RANSAC with ``lit3d evaluate``'s settings (inlier threshold 10 px at 640
px width scaled to the student's, 1000 iterations, LM refinement). With ``matching`` (on by default;
``matching=false``: the student's poses alone) each pose is then refined by SIFT matches against the training
frames nearest it, lifted by their labels, or where those give no pose, against the training frames sharing the
most matches with the photo (:func:`lit3d.metrics.matching.refine_by_matching`; kept where at least 30 matches
agree). A run directory's training frames come from its label cache; an exported student's from
``training_views.npz`` beside it (``lit3d evaluate`` writes it into ``RUN_DIR/exports/`` with the student).
Intrinsics, at the photo's own size: ``intrinsics=K.txt`` (one 3x3 matrix for every photo), a per-image list
(``NAME fx fy cx cy`` a line), a COLMAP ``cameras.txt`` (one camera, or several with ``images.txt`` beside it),
or ``hfov_deg=``.

Writes into ``out`` (default ``RUN_DIR/localize``, or ``localize/`` beside an exported model): ``poses.json``
(every query: status ``ok`` or why not, camera-to-world pose in the scene's frame and unit, inliers, ratio,
reprojection error, intrinsics used), ``poses_hloc.txt`` (``name qw qx qy qz tx ty tz`` world-to-camera, as
hloc and visuallocalization.net read it), ``poses_tum.txt`` (``index tx ty tz qx qy qz qw`` camera-to-world,
the timestamp being the query's index in poses.json) and with ``ply=true`` each query's coloured points
(``ply/NAME.ply``). Queries that fail appear in poses.json only. ``lit3d.localize(run_or_model, images, K)`` is
the same path for notebooks and returns :class:`PoseResult` per image.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from lit3d.cache.store import write_json
from lit3d.cameras import (CameraFileError, check_intrinsics, hloc_line, read_colmap_cameras, read_colmap_image_cameras,
                           read_intrinsics_list, tum_line, write_lines)
from lit3d.data.io import image_size, read_rgb, resize_rgb
from lit3d.geometry import invert_pose, project, scale_intrinsics, transform_points
from lit3d.metrics.localization import localize as pnp_ransac
from lit3d.metrics.matching import VIEWS_FILE, ViewDatabase, refine_by_matching
from lit3d.runs import (checkpoint_path, default_reprojection_px, predict, read_metrics, resolve_device, run_config,
                        run_label_cache, training_views, with_ensemble)
from lit3d.students.tta import TestTimeOptions

log = logging.getLogger("lit3d.localize")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass
class LocalizeOptions(TestTimeOptions):
    intrinsics: str = ""
    """K.txt (3x3 for every query), a per-image list (NAME fx fy cx cy, or NAME and 9 numbers), or a COLMAP
    cameras.txt; pixels of the photo as stored after its EXIF orientation."""
    hfov_deg: float = 0.0
    """Without ``intrinsics``: a pinhole with this horizontal field of view and a centred principal point."""
    out: str = ""
    """Output folder (default RUN_DIR/localize, or localize/ beside an exported model)."""
    checkpoint: str = "best"
    """Run directories: best (falling back to last), last, or a .ckpt path."""
    onnx: str = ""
    """Run this exported student (.onnx with onnxruntime, or .ts TorchScript) instead of a run's checkpoint."""
    batch_size: int = 0
    """Images per forward (0: the run's loader.batch_size, 8 for exported models)."""
    reprojection_px: float = 0.0
    """RANSAC inlier threshold in student pixels (0: evaluate's default, 10 px at 640 px width scaled)."""
    iterations: int = 1000
    """RANSAC iterations."""
    refine: bool = True
    """Levenberg-Marquardt refinement on the inliers."""
    ply: bool = False
    """Also write each query's coloured point cloud (ply/NAME.ply, scene frame and unit)."""
    matching: bool = True
    """Refine each pose by SIFT matches against the matching_views training frames nearest it, lifted by their
    labels (a run directory's label cache, or training_views.npz beside an exported student); the matched pose is
    kept where at least 30 matches agree on it. false: the student's poses alone."""
    matching_views: int = 10
    """Training frames each query is matched against (with matching)."""
    matching_retrieval: bool = True
    """With matching: where the frames nearest the student's pose give no pose, match against the
    matching_views training frames sharing the most matches with the photo."""
    matching_align: bool = True
    """With matching: refine each matched pose by direct alignment with every labelled pixel of the 4 training
    frames holding the most of its inlier matches; kept where 90 % of the matches still agree."""
    cache_dir: str = ""
    """With matching and a run directory: where its label cache is when it has moved since training."""
    device: str = "auto"
    """PyTorch device: auto, cpu, cuda (ONNX Runtime runs on the CPU)."""


@dataclass
class PoseResult:
    """The pose of one query photo."""

    name: str
    status: str
    """``ok``, or why there is no pose (too few valid points, RANSAC failed, ...)."""
    cam2world_44: np.ndarray | None
    """Camera-to-world 4x4 in the scene's frame and unit (OpenCV camera axes); None unless ``ok``."""
    n_points: int
    """Correspondences offered to RANSAC: valid student points, or SIFT matches where ``matched``."""
    n_inliers: int
    inlier_ratio: float
    reprojection_error_px: float
    """Median reprojection error of the inliers under the final pose, in pixels of the photo (NaN without pose)."""
    K_33: np.ndarray
    """Intrinsics of the photo at its own size (after EXIF orientation)."""
    image_size: tuple[int, int]
    """(height, width) of the photo."""
    seconds: float
    """Student forward (its share of the batch) + PnP (+ the matching, with ``matching``)."""
    points_HW3: np.ndarray | None = None
    """The student's world points at its input size (with ``keep_points``)."""
    image_HW3: np.ndarray | None = None
    """The photo at the student's input size, uint8 (with ``keep_points``)."""
    matched: bool = False
    """Whether the pose came from SIFT matches against training frames (``matching``), not the student's points."""
    aligned: bool = False
    """Whether direct alignment then moved the matched pose (``matching_align``)."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status,
                "cam2world": None if self.cam2world_44 is None else self.cam2world_44.tolist(),
                "n_points": self.n_points, "n_inliers": self.n_inliers, "inlier_ratio": self.inlier_ratio,
                "reprojection_error_px": None if np.isnan(self.reprojection_error_px) else self.reprojection_error_px,
                "K": self.K_33.tolist(), "image_size": list(self.image_size), "seconds": self.seconds,
                "matched": self.matched, "aligned": self.aligned}


# --- models -------------------------------------------------------------------------------------------------------
@dataclass
class PointmapModel:
    """A student behind one interface: uint8 images (B, h, w, 3) -> world points (B, h, w, 3)."""

    forward: Callable[[np.ndarray], np.ndarray]
    input_hw: tuple[int, int]
    frame: str
    """World frame of the points (``dataset``: the scene's poses; else the teacher's alignment frame)."""
    unit: str
    runtime: str
    """torch, torchscript or onnxruntime."""
    source: str
    batch_size: int = 8


def load_model(source: str | Path | torch.nn.Module, checkpoint: str = "best", device: str = "auto",
               labels_info: dict | None = None, tta: TestTimeOptions | None = None) -> PointmapModel:
    """A run directory, an exported ``.onnx`` / ``.ts`` student, or a module (a StudentModule, or any module
    mapping images in [0, 1] to world points with ``hparams.img_size``; ``labels_info`` gives its frame/unit);
    its points averaged over ``tta``'s copies of each image when that is given and on."""
    wrap = tta.wrap if tta else (lambda m: m)
    if tta and tta.ensemble and not (isinstance(source, (str, Path)) and Path(source).is_dir()):
        raise ValueError(f"ensemble: {source} is not a run directory; only run directories' students are averaged")
    if isinstance(source, torch.nn.Module):
        dev, net = resolve_device(device), wrap(source)
        info = labels_info or {}
        return PointmapModel(lambda x: predict(net, x, len(x), dev, warmup=False)[0],
                             tuple(source.hparams.img_size), info.get("frame", "unknown"), info.get("unit", "unknown"),
                             "torch", type(source).__name__)
    path = Path(source)
    if path.is_dir():
        from lit3d.students.module import StudentModule

        ckpt = checkpoint_path(path, checkpoint)
        module = with_ensemble(path, StudentModule.load(ckpt).eval(), tta.ensemble if tta else [])
        metrics = read_metrics(path)
        info = {"frame": metrics.get("labels/frame", "unknown"), "unit": metrics.get("labels/unit", "unknown")}
        members_done = dataclasses.replace(tta, ensemble=[]) if tta else None  # averaged in above
        model = load_model(module, device=device, labels_info=info, tta=members_done)
        model.source, model.batch_size = str(ckpt), run_config(path).loader.batch_size
        return model
    if path.suffix in (".onnx", ".ts", ".pt") and path.is_file():
        from lit3d.export import read_metadata

        meta = read_metadata(path)
        if "input_height" not in meta:
            raise ValueError(f"{path}: no lit3d metadata (input size, frame, unit); re-export it with lit3d evaluate")
        hw = (int(meta["input_height"]), int(meta["input_width"]))
        if path.suffix == ".onnx":
            net, runtime = wrap(_OnnxStudent(path)), "onnxruntime"
        else:
            net, runtime = wrap(torch.jit.load(str(path), map_location="cpu").eval()), "torchscript"
        return PointmapModel(lambda x: predict(net, x, len(x), "cpu", warmup=False)[0], hw,
                             meta.get("frame", "unknown"), meta.get("unit", "unknown"), runtime, str(path))
    raise FileNotFoundError(f"{source}: neither a run directory nor an exported student (.onnx, .ts)")


class _OnnxStudent(torch.nn.Module):
    """An exported .onnx student run by ONNX Runtime (CPU) behind the modules' contract: images (B, 3, h, w) in
    [0, 1] -> world points (B, 3, h, w), so test-time augmentation wraps it as any module."""

    def __init__(self, path: Path):
        super().__init__()
        from lit3d.config import MissingPackageError

        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingPackageError("running an .onnx student needs onnxruntime (pip install onnxruntime)") from None
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(img_B3HW.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(["pointmap"], {"image": x})[0])


# --- queries and intrinsics ---------------------------------------------------------------------------------------
def expand_queries(queries: Sequence[str | Path]) -> list[Path]:
    """Image paths of QUERY arguments: files, folders (their images, sorted; 7-Scenes ``*.depth.png`` skipped),
    text lists (paths relative to the list)."""
    out: list[Path] = []
    for q in map(Path, queries):
        if q.is_dir():
            found = sorted(p for p in q.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith(".") and not p.name.endswith(".depth.png"))  # 7-Scenes depth
            if not found:
                raise FileNotFoundError(f"{q}: no images ({', '.join(IMAGE_EXTENSIONS)})")
            out += found
        elif q.suffix.lower() == ".txt" and q.is_file():
            out += [q.parent / line.strip() for line in q.read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
        elif q.is_file():
            out.append(q)
        else:
            raise FileNotFoundError(f"{q}: query image not found")
    return out


def fov_K(height: int, width: int, hfov_deg: float) -> np.ndarray:
    """Pinhole K with horizontal field of view ``hfov_deg``, square pixels, centred principal point."""
    if not 0 < hfov_deg < 180:
        raise ValueError(f"hfov_deg must be in (0, 180) degrees, got {hfov_deg}")
    f = (width / 2) / np.tan(np.radians(hfov_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])


def query_intrinsics(names: list[str], sizes: list[tuple[int, int]], K=None, hfov_deg: float = 0.0
                     ) -> list[np.ndarray]:
    """K of each query at its own size from ``K``: a 3x3 array (every query), an (N, 3, 3) array, a file (see
    the module doc), or None with ``hfov_deg``. Missing or singular intrinsics are errors naming the source."""
    if K is None or (isinstance(K, str) and not K):
        if hfov_deg <= 0:
            raise ValueError("no intrinsics: give intrinsics=K.txt (or a per-image list, or a COLMAP cameras.txt) "
                             "or hfov_deg=...")
        return [fov_K(h, w, hfov_deg) for h, w in sizes]
    if isinstance(K, (str, Path)):
        return _intrinsics_file(Path(K), names, sizes)
    K_arr = np.asarray(K, dtype=np.float64)
    if K_arr.shape == (3, 3):
        return [check_intrinsics(K_arr, "K")] * len(names)
    if K_arr.shape != (len(names), 3, 3):
        raise ValueError(f"K has shape {K_arr.shape}: expected (3, 3) or ({len(names)}, 3, 3)")
    return [check_intrinsics(k, f"K of {n}") for k, n in zip(K_arr, names)]


def _intrinsics_file(path: Path, names: list[str], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: intrinsics file not found")
    words = [line.split() for line in path.read_text(errors="replace").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if words and len(words[0]) >= 5 and words[0][1].isupper() and words[0][1].isalpha() or path.name == "cameras.txt":
        cameras = read_colmap_cameras(path)
        if len(cameras) == 1:
            (K_cam, hw_cam), = cameras.values()
            by_name = dict.fromkeys(names, (K_cam, hw_cam))
        else:
            images_txt = path.with_name("images.txt")
            if not images_txt.is_file():
                raise CameraFileError(f"{path}: {len(cameras)} cameras and no images.txt beside it to tell which "
                                      "image is which camera")
            ids = read_colmap_image_cameras(images_txt)
            by_name = {n: cameras[ids[n]] for n in names if ids.get(n) in cameras}
        out = []
        for n, (h, w) in zip(names, sizes):
            if n not in by_name:
                raise CameraFileError(f"{path}: no camera for query {n}")
            K_cam, (hc, wc) = by_name[n]
            out.append(scale_intrinsics(K_cam, w / wc, h / hc))  # the photo may be a resized copy
        return out
    if len(words) in (1, 3) and sum(len(w) for w in words) == 9:
        try:
            return [check_intrinsics(np.array([float(x) for w in words for x in w]).reshape(3, 3), str(path))] * len(names)
        except ValueError as e:
            raise CameraFileError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    table = read_intrinsics_list(path)
    out = []
    for n in names:
        K = table.get(n, table.get(Path(n).stem))
        if K is None:
            raise CameraFileError(f"{path}: no intrinsics for query {n}")
        out.append(K)
    return out


# --- localization -------------------------------------------------------------------------------------------------
def localize(run_or_model, images: Sequence[str | Path | np.ndarray] | str | Path, K=None, hfov_deg: float = 0.0,
             checkpoint: str = "best", batch_size: int = 0, reprojection_px: float = 0.0, iterations: int = 1000,
             refine: bool = True, device: str = "auto", keep_points: bool = False, progress: bool = False,
             names: Sequence[str] | None = None, tta: TestTimeOptions | None = None,
             matching: ViewDatabase | None = None, matching_views: int = 10,
             matching_retrieval: bool = True, matching_align: bool = True) -> list[PoseResult]:
    """Camera-to-world poses of ``images`` (paths, or uint8 RGB arrays as they are after EXIF orientation) from a
    run directory, an exported student (.onnx / .ts) or a :class:`PointmapModel` (test-time augmentation:
    ``tta``, default ``TestTimeOptions()``, on; a PointmapModel keeps what :func:`load_model` gave it).

    ``K``: intrinsics at each image's own size (see :func:`query_intrinsics`). ``matching``: training views (the
    labels' frame, :func:`lit3d.runs.training_views` or :meth:`ViewDatabase.open`) whose SIFT matches refine each
    pose (``matching_views`` nearest it, or with ``matching_retrieval`` those sharing the most matches where the
    nearest give no pose; with ``matching_align`` then refined by direct alignment:
    :func:`lit3d.metrics.matching.refine_by_matching`). A query without a pose is reported by its
    ``status``; unreadable images and missing or singular intrinsics raise (one-line) errors before any
    work starts.
    """
    model = (run_or_model if isinstance(run_or_model, PointmapModel)
             else load_model(run_or_model, checkpoint, device, tta=TestTimeOptions() if tta is None else tta))
    if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]
    paths = [im for im in images if not isinstance(im, np.ndarray)]
    if names is None:
        names = [Path(im).name if not isinstance(im, np.ndarray) else f"image-{k:05d}" for k, im in enumerate(images)]
    sizes = [tuple(im.shape[:2]) if isinstance(im, np.ndarray) else image_size(im, exif_transpose=True)
             for im in images]  # header reads: unreadable files fail here, before any work
    K_list = query_intrinsics(list(names), sizes, K, hfov_deg)
    h, w = model.input_hw
    px = reprojection_px or default_reprojection_px(w)
    batch = batch_size or model.batch_size
    log.info("localizing %d images (%d files) with %s (%s, %dx%d input, %s frame, unit %s)", len(images), len(paths),
             model.source, model.runtime, w, h, model.frame, model.unit)
    results: list[PoseResult] = []
    starts = range(0, len(images), batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="localize", unit="batch")
    for s in starts:
        chunk = list(range(s, min(s + batch, len(images))))
        pixels = [images[k] if isinstance(images[k], np.ndarray) else read_rgb(images[k], exif_transpose=True)
                  for k in chunk]
        x_NHW3 = np.stack([resize_rgb(np.asarray(p, np.uint8), (h, w)) for p in pixels])
        t0 = time.perf_counter()
        pts_NHW3 = model.forward(x_NHW3)
        share = (time.perf_counter() - t0) / len(chunk)
        for j, k in enumerate(chunk):
            H0, W0 = sizes[k]
            # float32 as the label cache stores K: a photo at the labels' size then gets evaluate's pose exactly
            K_grid = scale_intrinsics(K_list[k], w / W0, h / H0).astype(np.float32).astype(np.float64)
            res = pnp_ransac(pts_NHW3[j], None, K_grid, reprojection_px=px, iterations=iterations, refine=refine)
            matched, aligned, seconds = False, False, res.seconds
            if matching is not None:
                ref = refine_by_matching(x_NHW3[j], K_grid, res, matching, px, matching_views,
                                         retrieval=matching_retrieval, align=matching_align)
                res, matched, aligned, seconds = ref.result, ref.adopted, ref.aligned, ref.seconds
            err = _reprojection_error(pts_NHW3[j], K_grid, res.cam2world_44, px) * (W0 / w + H0 / h) / 2
            results.append(PoseResult(
                names[k], "ok" if res.ok else res.reason, res.cam2world_44, res.n_points, res.n_inliers,
                res.inlier_ratio, err, K_list[k], (H0, W0), share + seconds,
                pts_NHW3[j] if keep_points else None, x_NHW3[j] if keep_points else None, matched, aligned))
    n_ok = sum(r.ok for r in results)
    log.info("%d of %d images localized%s", n_ok, len(results),
             f", {sum(r.matched for r in results)} by matching" if matching is not None else "")
    return results


def _reprojection_error(pts_HW3: np.ndarray, K_33: np.ndarray, cam2world_44: np.ndarray | None,
                        threshold_px: float) -> float:
    """Median reprojection error (pixels of the grid) of the points within ``threshold_px`` under the pose."""
    if cam2world_44 is None:
        return float("nan")
    from lit3d.geometry import pixel_grid

    pts = np.asarray(pts_HW3, np.float64)
    ok = np.all(np.isfinite(pts), -1)
    uv, z = project(transform_points(invert_pose(cam2world_44), pts[ok]), K_33)
    err = np.linalg.norm(uv - pixel_grid(*ok.shape)[ok], axis=-1)
    inl = err[(z > 0) & (err < threshold_px)]
    return float(np.median(inl)) if inl.size else float("nan")


# --- outputs ------------------------------------------------------------------------------------------------------
def write_results(out: str | Path, results: list[PoseResult], model: PointmapModel, settings: dict,
                  ply: bool = False) -> dict[str, Path]:
    """``poses.json``, ``poses_hloc.txt``, ``poses_tum.txt`` (and ``ply/``) in ``out``; returns the paths."""
    out = Path(out)
    files = {"json": out / "poses.json", "hloc": out / "poses_hloc.txt", "tum": out / "poses_tum.txt"}
    write_json(files["json"], {"model": model.source, "runtime": model.runtime, "frame": model.frame,
                               "unit": model.unit, "input_size": list(model.input_hw), "settings": settings,
                               "queries": [r.to_json() for r in results]})
    ok = [(k, r) for k, r in enumerate(results) if r.ok]
    write_lines(files["hloc"], [hloc_line(r.name, r.cam2world_44) for _, r in ok],
                f"lit3d localize: name qw qx qy qz tx ty tz (world-to-camera), frame {model.frame}, unit {model.unit}")
    write_lines(files["tum"], [tum_line(float(k), r.cam2world_44) for k, r in ok],
                f"lit3d localize: index tx ty tz qx qy qz qw (camera-to-world; index = query order in poses.json)")
    if ply:
        from lit3d.export import write_ply

        for r in results:
            if r.points_HW3 is not None:
                files[f"ply:{r.name}"] = write_ply(out / "ply" / f"{Path(r.name).stem}.ply", r.points_HW3, r.image_HW3)
    return files


def latency_summary(results: list[PoseResult]) -> dict[str, float]:
    """p50 / p95 of the per-image time (student + PnP, ms) and images per second."""
    ms = 1000 * np.array([r.seconds for r in results])
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "images_per_s": float(len(ms) / ms.sum() * 1000)} if len(ms) else {}


# --- command line -------------------------------------------------------------------------------------------------
USAGE = "lit3d localize RUN_DIR|MODEL.onnx|MODEL.ts QUERY... [option=value ...]"


def main(argv: list[str] | None = None) -> int:
    from lit3d.cli import command, options_help, parse_options

    def body(args: list[str]) -> int:
        if "-h" in args or "--help" in args:
            print(options_help(LocalizeOptions, USAGE, (__doc__ or "").split("\n\n")[1]))
            return 0
        args = list(args)
        if "--onnx" in args:  # ``--onnx MODEL.onnx`` spelled as a flag
            i = args.index("--onnx")
            args[i : i + 2] = [f"onnx={args[i + 1]}"] if i + 1 < len(args) else []
        positionals, opt, extra = parse_options(args, LocalizeOptions, "run_dir", USAGE, many=True)
        if extra:
            raise ValueError(f"unknown option {extra[0].split('=')[0]!r}; options: "
                             f"{', '.join(LocalizeOptions.__dataclass_fields__)}")
        source, queries = (opt.onnx, positionals) if opt.onnx else (positionals[0], positionals[1:])
        if not queries:
            raise ValueError(f"no query images; usage: {USAGE}")
        paths = expand_queries(queries)
        if opt.matching_views < 1:
            raise ValueError(f"localize: matching_views must be at least 1, got {opt.matching_views}")
        model = load_model(source, opt.checkpoint, opt.device, tta=opt)
        db = matching_views_of(source, opt.cache_dir) if opt.matching else None
        results = localize(model, paths, opt.intrinsics or None, opt.hfov_deg, batch_size=opt.batch_size,
                           reprojection_px=opt.reprojection_px, iterations=opt.iterations, refine=opt.refine,
                           keep_points=opt.ply, progress=True, names=_unique_names(paths), matching=db,
                           matching_views=opt.matching_views, matching_retrieval=opt.matching_retrieval,
                           matching_align=opt.matching_align)
        src = Path(source)
        out = Path(opt.out) if opt.out else (src / "localize" if src.is_dir() else src.parent / "localize")
        settings = {"reprojection_px": opt.reprojection_px or default_reprojection_px(model.input_hw[1]),
                    "iterations": opt.iterations, "refine": opt.refine, "intrinsics": opt.intrinsics,
                    "hfov_deg": opt.hfov_deg, "tta_views": opt.views(), "matching": opt.matching,
                    "matching_views": opt.matching_views, "matching_retrieval": opt.matching_retrieval,
                    "matching_align": opt.matching_align, **opt.record()}
        files = write_results(out, results, model, settings, opt.ply)
        lat = latency_summary(results)
        log.info("%d / %d localized; %.1f ms p50, %.1f ms p95 per image (student + PnP), %.1f images/s -> %s",
                 sum(r.ok for r in results), len(results), lat["p50_ms"], lat["p95_ms"], lat["images_per_s"],
                 files["json"])
        for r in results:
            if not r.ok:
                log.warning("%s: no pose (%s)", r.name, r.status)
        return 0

    return command("lit3d.localize", body, argv)


def matching_views_of(source: str | Path, cache_dir: str = "") -> ViewDatabase:
    """The training views that refine a student's poses: a run directory's label cache (``cache_dir`` where it has
    moved), or ``training_views.npz`` beside an exported student."""
    source = Path(source)
    if source.is_dir():
        try:
            return training_views(run_label_cache(source, cache_dir))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}; matching=false localizes with the student alone") from None
    views = source.parent / VIEWS_FILE
    if not views.is_file():
        raise FileNotFoundError(f"matching with the exported student {source} needs {views} (lit3d evaluate "
                                f"RUN_DIR writes it into RUN_DIR/exports/); matching=false localizes with the "
                                f"student alone")
    return ViewDatabase.open(views)


def _unique_names(paths: list[Path]) -> list[str]:
    """File names, or where two files share one, paths relative to the queries' common folder."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([p.resolve() for p in paths]))
    return [str(p.resolve().relative_to(root)) for p in paths]


class _CallableModule(types.ModuleType):
    """``lit3d.localize(...)`` calls :func:`localize` while ``python -m lit3d.localize`` stays this module."""

    def __call__(self, *args, **kwargs) -> list[PoseResult]:
        return localize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
