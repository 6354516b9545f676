"""Build (or complete) a label cache: scene -> pairs -> teacher -> alignment -> frames on disk.

Teacher inference runs as Lightning ``Trainer.predict`` with a writer that stores one shard of edges per
batch, so ``trainer.devices=N`` (GPUs, or CPU processes over DDP/gloo) splits the pairs and an interrupted run
only recomputes missing shards. Alignment then runs once, on rank 0, and streams its frames to disk in batches;
a global alignment's solution (or a world-label teacher's labels) is stored until every frame is written
atomically with its checksum, so a build killed at any point resumes to the same cache.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm.auto import tqdm

from lit3d.align.dense import DenseFusion, SolvedAlignment
from lit3d.align.global_alignment import solve_global
from lit3d.align.inputs import check_inputs
from lit3d.align.known_poses import KnownPoseFusion
from lit3d.cache.store import CacheError, LabelCache, write_json
from lit3d.data import Scene, load_scene
from lit3d.files import atomic_save_npz
from lit3d.locks import file_lock, is_launched_worker
from lit3d.memory import peak_rss_mb
from lit3d.pairs import make_pairs
from lit3d.teachers import OUTPUT_KEYS, FrameTransform, Teacher, create_teacher

log = logging.getLogger(__name__)

ALIGNED_FILE = "aligned.npz"
"""Kept from alignment until the cache is complete (resume point): global alignment's solution (cameras and edge
similarities, small), or the world pointmaps of a teacher that gives world labels."""
FRAMES_PER_COMMIT = 32
"""Frames written between two updates of ``checksums.json`` (each update rewrites the whole file)."""
LOCK_FILE = ".lock"
"""Lock file inside each cache folder, held while a process checks or builds the cache."""


class FrameSource:
    """Scene frames mapped onto the teacher grid, memoised (each frame takes part in several pairs)."""

    def __init__(self, scene: Scene, transform: FrameTransform):
        self.scene, self.transform = scene, transform
        self.get = lru_cache(maxsize=64)(self._load)

    def _load(self, i: int) -> dict[str, np.ndarray]:
        s, t = self.scene, self.transform
        image = s.read_image(i)
        if image.shape[:2] != tuple(s.image_size):
            raise ValueError(f"frame {s.frame_names[i]} of {s.name}: image is {image.shape[:2]}, "
                             f"expected {tuple(s.image_size)}")
        frame = {"image": t.image(image), "K": t.intrinsics(s.K_N33[i]).astype(np.float32),
                 "cam2world": (s.cam2world_N44[i] if s.has_poses else np.full((4, 4), np.nan)).astype(np.float32),
                 "depth": (t.depth(s.read_depth(i)) if s.has_depth else np.zeros(t.output_size)).astype(np.float32)}
        return frame


class ShardDataset(torch.utils.data.Dataset):
    """Item k = the teacher batch of edges of shard ``shard_ids[k]``."""

    def __init__(self, source: FrameSource, edges_E2: np.ndarray, shard_ids: list[int], shard_size: int):
        self.source, self.edges, self.shard_ids, self.shard_size = source, edges_E2, shard_ids, shard_size

    def __len__(self) -> int:
        return len(self.shard_ids)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        shard = self.shard_ids[k]
        edges = self.edges[shard * self.shard_size : (shard + 1) * self.shard_size]
        batch: dict[str, torch.Tensor] = {"shard": torch.tensor(shard), "edges": torch.as_tensor(edges)}
        for side, col in (("i", 0), ("j", 1)):
            frames = [self.source.get(int(f)) for f in edges[:, col]]
            batch[f"idx_{side}"] = torch.as_tensor(edges[:, col])
            batch[f"img_{side}"] = torch.from_numpy(np.stack([f["image"] for f in frames])).permute(0, 3, 1, 2).float() / 255
            batch[f"K_{side}"] = torch.from_numpy(np.stack([f["K"] for f in frames]))
            batch[f"depth_{side}"] = torch.from_numpy(np.stack([f["depth"] for f in frames]))
            batch[f"cam2world_{side}"] = torch.from_numpy(np.stack([f["cam2world"] for f in frames]))
        return batch


def _first(items: list):
    return items[0]


class TeacherModule(L.LightningModule):
    """Runs a teacher under ``Trainer.predict``."""

    def __init__(self, teacher: Teacher):
        super().__init__()
        self.teacher = teacher

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self.teacher(batch)
        return {"shard": batch["shard"], "edges": batch["edges"], **out}


class ShardWriter(BasePredictionWriter):
    """Writes each predicted batch as one shard file, atomically."""

    def __init__(self, cache: LabelCache):
        super().__init__(write_interval="batch")
        self.cache, self.written = cache, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        arrays = {k: v.detach().cpu().numpy() for k, v in prediction.items() if k != "shard"}
        for k in ("pts_i", "pts_j_in_i", "conf_i", "conf_j"):
            arrays[k] = arrays[k].astype(np.float32)
        atomic_save_npz(self.cache.shard_path(int(prediction["shard"])), **arrays)
        self.written += 1

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        log.info("rank %d of %d wrote %d teacher shards", trainer.global_rank, trainer.world_size, self.written)


def cache_for(cfg, scene: Scene | None = None, teacher: Teacher | None = None):
    """The scene, teacher, edges, label-grid transform and cache folder that ``cfg`` describes."""
    scene = scene or load_scene(cfg.data, cfg.cache_dir)
    teacher = teacher or create_teacher(cfg.teacher)
    if teacher.needs_depth and not scene.has_depth:
        raise ValueError(f"teacher={cfg.teacher.name} needs depth maps and scene {scene.name} has none")
    if teacher.needs_poses and not scene.has_poses:
        raise ValueError(f"teacher={cfg.teacher.name} needs camera poses and scene {scene.name} has none")
    transform = teacher.frame_transform(*scene.image_size)
    # a teacher that gives world labels itself has no pairs (and its manifest says so)
    edges = np.zeros((0, 2), int) if teacher.gives_world_labels else make_pairs(scene, cfg.pairs)
    labelled = [i for s in cfg.pairs.splits for i in scene.split[s]]
    manifest = {
        "scene": {"name": scene.name, "fingerprint": scene.fingerprint(), "metric": scene.metric,
                  "source": scene.source},
        "teacher": teacher.manifest(),
        "pairs": dataclasses.asdict(cfg.pairs),
        "align": dataclasses.asdict(cfg.align),
        "label_size": list(transform.output_size),
        "transform": dataclasses.asdict(transform),
        "frames": [scene.frame_names[i] for i in sorted(labelled)],
        "split": {s: [scene.frame_names[i] for i in scene.split[s]] for s in cfg.pairs.splits},
        "edges": edges.tolist(),
        "shard_size": _batch_size(cfg, teacher, transform.output_size),
    }
    from lit3d.cache.store import manifest_hash

    digest = manifest_hash(manifest)[:12]
    root = Path(cfg.cache_dir) / "labels" / f"{scene.name.replace('/', '_')}-{digest}"
    return scene, teacher, edges, transform, manifest, LabelCache(root)


def _batch_size(cfg, teacher: Teacher, size: tuple[int, int]) -> int:
    """Pairs per teacher batch (= per shard): ``teacher.batch_size``, or with 0 what fits the device's memory."""
    if cfg.teacher.batch_size > 0:
        return cfg.teacher.batch_size
    fit = getattr(teacher, "fit_batch_size", None)
    if fit is None:
        return 8
    on_gpu = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    if on_gpu:  # probe where Lightning will run it
        teacher.cuda()
    try:
        return fit(*size)
    finally:
        if on_gpu:
            teacher.cpu()


def _complete_shards(cache: LabelCache, edges_E2: np.ndarray, shard_size: int) -> set[int]:
    """Shards whose file reads back in full with the expected edges; any other shard file is deleted.

    Every member is read, so a flipped byte fails its zip CRC here rather than later in alignment (where it
    would stop every re-run), and a shard of other edges (e.g. left by an older graph) is never reused.
    """
    done = set()
    for path in sorted((cache.root / "pairs").glob("shard-*.npz")):
        try:
            shard = int(path.stem.split("-")[1])
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
            ok = set(OUTPUT_KEYS) <= set(arrays) and np.array_equal(
                arrays["edges"], edges_E2[shard * shard_size : (shard + 1) * shard_size])
        except Exception:
            ok = False
        if ok:
            done.add(shard)
        else:
            log.warning("teacher shard %s is unreadable or stale: it will be recomputed", path)
            path.unlink(missing_ok=True)
    return done


def _store_cameras(cache: LabelCache, scene: Scene, teacher: Teacher, result, idx: list[int],
                   solved_K: bool = False) -> str:
    """Keep the cameras of the cache's frames (scene indices ``idx``) as alignment used or solved them: its poses,
    with ``solved_K`` its intrinsics (solved focals), else the scene's on the label grid; returns the SHA-256."""
    transform = teacher.frame_transform(*scene.image_size)
    K_N33 = np.stack([transform.intrinsics(scene.K_N33[i]) for i in idx])
    if solved_K and result.K_N33 is not None:
        solved = np.isfinite(result.K_N33[idx]).all(axis=(1, 2))
        K_N33[solved] = result.K_N33[idx][solved]
    component = None if result.component_N is None else result.component_N[idx]
    return cache.write_cameras(cache.frames, result.cam2world_N44[idx], K_N33, transform.output_size, result.frame,
                               result.unit, component)


def _aligned(cfg, cache: LabelCache, scene: Scene, teacher: Teacher, edges_E2: np.ndarray,
             n_shards: int) -> tuple[Iterator[tuple[int, dict[str, np.ndarray]]], dict, bool]:
    """World labels of the cache's frames: an iterator of (scene index, ``pts_world`` H,W,3 / ``conf`` / ``valid``)
    in the order of ``cache.frames``, their info (complete once the iterator is exhausted), and whether they were
    just computed by a method that may not reproduce them (then frames already in the cache must be rewritten).

    Both alignment methods fuse frame by frame from the lazily read teacher shards, so neither the predictions nor
    the labels of all frames are held at once. ``known_poses`` is deterministic, so a resumed build fuses again and
    skips the frames already written. ``global`` first solves cameras and edge similarities on a pixel subsample;
    that solution is stored in ``aligned.npz`` until the cache is complete, so that a resumed build fuses its
    remaining frames from the very same solution even though the optimisation is not bit-reproducible (thread
    counts). A teacher that gives world labels returns every frame at once; they are stored the same way.
    """
    name_to_idx = {n: i for i, n in enumerate(scene.frame_names)}
    idx = [name_to_idx[n] for n in cache.frames]
    if teacher.gives_world_labels:
        return _world_labels(cfg, cache, scene, teacher, idx)
    stored_edges, pred = cache.load_pairs(n_shards)
    if not np.array_equal(stored_edges, edges_E2):
        raise CacheError(f"teacher shards of {cache.root} do not match the scene graph; delete {cache.root / 'pairs'}")
    fresh = False
    if cfg.align.method == "known_poses":
        fusion = KnownPoseFusion(edges_E2, pred, len(scene), scene.cam2world_N44, teacher.metric and scene.metric,
                                 cfg.align.min_conf)
    else:
        fusion, fresh = _global_fusion(cfg, cache, scene, teacher, edges_E2, pred)
    info = {"frame": fusion.frame, "unit": fusion.unit,
            "cameras_sha256": _store_cameras(cache, scene, teacher, fusion, idx, solved_K=cfg.align.method == "global"
                                             and not cfg.align.use_known_intrinsics)}

    def fused() -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for f in fusion.frames(idx):
            yield f.index, {"pts_world": f.pts_world_HW3, "conf": f.conf_HW, "valid": f.valid_HW}
        fusion.log_summary()
        info.update(residual=float(fusion.residual), valid_fraction=fusion.valid_pixels / max(fusion.pixels, 1))

    return fused(), info, fresh


def _stored_alignment(cache: LabelCache, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays of ``aligned.npz`` (with ``info``) when it holds ``keys`` and belongs to this manifest; else None
    (and the file is removed)."""
    path = cache.root / ALIGNED_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            missing = sorted(set(keys) - set(f.files))
            if missing:
                raise CacheError(f"it holds no {', '.join(missing)}")
            arrays = {k: f[k] for k in f.files}
        if json.loads(str(arrays["info"])).get("manifest_hash") != cache.manifest["hash"]:
            raise CacheError("it was computed for another manifest")
        log.info("resuming from the stored alignment %s", path)
        return arrays
    except Exception as e:
        log.warning("stored alignment %s is unreadable (%s): aligning again", path, e)
        path.unlink(missing_ok=True)
        return None


def _global_fusion(cfg, cache: LabelCache, scene: Scene, teacher: Teacher, edges_E2: np.ndarray,
                   pred) -> tuple[DenseFusion, bool]:
    """Global alignment's dense fusion of the shards ``pred``, from the stored solution or a new one (stored at once);
    and whether the solution is new."""
    inp = check_inputs(edges_E2, pred["pts_i"], pred["pts_j_in_i"], pred["conf_i"], pred["conf_j"],
                       pred.get("valid_i"), pred.get("valid_j"), n_images=len(scene))
    stored = _stored_alignment(cache, SolvedAlignment.REQUIRED)
    if stored is not None:
        return DenseFusion(inp, SolvedAlignment.from_arrays(stored)), False
    # the predictions live on the teacher's grid (resized and cropped), and so must the known intrinsics
    transform = teacher.frame_transform(*scene.image_size)
    K_grid_N33 = np.stack([transform.intrinsics(K_33) for K_33 in scene.K_N33])
    solved = solve_global(cfg.align, inp, scene.cam2world_N44, K_grid_N33 if cfg.align.use_known_intrinsics else None,
                          metric=teacher.metric and scene.metric)
    if solved.frame == "dataset" and solved.unit == "m" and not scene.metric:  # poses of their own scale (COLMAP)
        solved.unit = scene.source.get("unit", "dataset")
    atomic_save_npz(cache.root / ALIGNED_FILE, **solved.to_arrays(),
                    info=np.array(json.dumps({"manifest_hash": cache.manifest["hash"]})))
    return DenseFusion(inp, solved), True


def _world_labels(cfg, cache: LabelCache, scene: Scene, teacher: Teacher,
                  idx: list[int]) -> tuple[Iterator[tuple[int, dict[str, np.ndarray]]], dict, bool]:
    """:func:`_aligned` for a teacher that gives world labels of every frame at once (stored until complete)."""
    keys = ("pts_world", "conf", "valid")
    stored = _stored_alignment(cache, keys)
    if stored is not None:
        info = json.loads(str(stored.pop("info")))
        info.pop("manifest_hash")
        return _frames_of({k: stored[k] for k in keys}, idx), info, False
    result = teacher.world_labels(scene, cache.frames, teacher.frame_transform(*scene.image_size), cfg.align.min_conf)
    if result.frame == "dataset" and result.unit == "m" and not scene.metric:  # poses of their own scale (COLMAP)
        result.unit = scene.source.get("unit", "dataset")
    info = {"frame": result.frame, "unit": result.unit, "residual": float(result.residual),
            "valid_fraction": float(result.valid_NHW[idx].mean()),
            "cameras_sha256": _store_cameras(cache, scene, teacher, result, idx)}
    arrays = {k: v for k, v in zip(keys, (result.pts_world_NHW3, result.conf_NHW, result.valid_NHW))}
    atomic_save_npz(cache.root / ALIGNED_FILE, **arrays,
                    info=np.array(json.dumps({**info, "manifest_hash": cache.manifest["hash"]})))
    return _frames_of(arrays, idx), info, True


def _frames_of(arrays: dict[str, np.ndarray], idx: list[int]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Frames ``idx`` of pointmaps held for all frames (``pts_world`` N,H,W,3 / ``conf`` / ``valid``)."""
    for i in idx:
        yield i, {k: v[i] for k, v in arrays.items()}


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
"""Failed writes that are the machine's state (full disk, read-only or foreign folder), not a bug: one line."""


def _forget_changed_inputs(cache: LabelCache, scene: Scene, edges_E2: np.ndarray, shard_size: int) -> None:
    """Forget what was made from input files that changed since they were labelled (edited or replaced in place):
    the teacher shards of their pairs, the alignment and the frames (a frame's labels fuse its neighbours' pairs, and
    a global alignment couples all frames), keeping every other shard; then record the files' current stamps.

    A frame whose stamp (sizes, mtimes) differs is hashed: a copied, restored or touched file with the same content
    keeps its labels. A cache built before stamps were recorded is trusted once; an unreadable record makes every
    frame count as changed."""
    stamps = dict(zip(scene.frame_names, scene.frame_stamps()))
    recorded = cache.input_stamps()
    record, changed = {}, []
    for i, name in enumerate(scene.frame_names):
        old = recorded.get(name) if recorded is not None else None
        if old is not None and old["stat"] == stamps[name] and old["sha256"]:
            record[name] = old
            continue
        record[name] = {"stat": stamps[name], "sha256": scene.frame_digest(i)}
        if recorded is None or not stamps[name]:
            continue
        if old is None or (old["stat"] != stamps[name] and old["sha256"] != record[name]["sha256"]):
            changed.append(i)
    if record == recorded:
        return
    if changed:
        shards = np.unique(np.flatnonzero(np.isin(edges_E2, changed).any(1)) // shard_size)
        log.warning("input files of %d frames changed since label cache %s was built (e.g. %s): recomputing %d "
                    "teacher shards, the alignment and the frames", len(changed), cache.root,
                    scene.input_files[0][changed[0]] if scene.input_files else scene.frame_names[changed[0]],
                    len(shards))
        for shard in shards:
            cache.shard_path(int(shard)).unlink(missing_ok=True)
        for name in ("checksums.json", "labels.json", ALIGNED_FILE):  # no frame counts as written any more
            (cache.root / name).unlink(missing_ok=True)
    cache.record_input_stamps(record)


def build_labels(cfg, trainer_kwargs: dict | None = None, verify: bool = False) -> tuple[LabelCache, dict]:
    """Build or complete the label cache of ``cfg``; returns it and a summary (frames, pairs, seconds, ...).

    Resumable at any point: teacher shards, the alignment and frames are each committed atomically, and a
    re-run recomputes only what is missing or fails its check. With ``trainer.devices`` > 1 every rank runs
    this function (Lightning re-executes the command); ranks > 0 predict their share of the shards, then wait
    until rank 0 has aligned and written the frames, so that callers read a complete cache on every rank.

    One process at a time per cache (``label``, ``fit``, ``evaluate``, sweep workers): the check or build runs
    under the cache's file lock, so a second process waits, then reuses the finished cache. A cache is checked
    by file sizes and times, ``verify`` checks every frame's SHA-256. A full disk or a folder that cannot be
    written is a :class:`CacheError` naming the path.
    """
    t0 = time.perf_counter()
    root = Path(cfg.cache_dir)
    try:
        scene, teacher, edges, transform, manifest, cache = cache_for(cfg)
        root = cache.root
        with contextlib.ExitStack() as locked:
            if not is_launched_worker():  # ranks > 0 help the rank 0 that holds the lock
                try:
                    locked.enter_context(file_lock(cache.root / LOCK_FILE, f"label cache {cache.root}"))
                except OSError as e:  # a complete cache on a read-only disk is still usable
                    if e.errno not in (errno.EROFS, errno.EACCES) or not cache.is_complete():
                        raise
                    log.warning("cannot lock label cache %s (%s): reading it without a lock", cache.root, e.strerror)
            return _check_or_build(cfg, trainer_kwargs, verify, t0, scene, teacher, edges, transform, manifest, cache)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise CacheError(f"cannot write the label cache {root}: {e.strerror}"
                         + (f" ({e.filename})" if e.filename else "")) from None


def _check_or_build(cfg, trainer_kwargs: dict | None, verify: bool, t0: float, scene: Scene, teacher: Teacher,
                    edges: np.ndarray, transform: FrameTransform, manifest: dict,
                    cache: LabelCache) -> tuple[LabelCache, dict]:
    """The body of :func:`build_labels`, under the cache's lock."""
    cache.init(manifest)
    _forget_changed_inputs(cache, scene, edges, manifest["shard_size"])
    summary = {"cache": str(cache.root), "scene": scene.name, "frames": len(cache.frames), "pairs": len(edges),
               "rank": 0}
    if verify:
        intact = len(cache.verified_frames(full=True) & set(cache.frames))
        log.info("label cache %s: %d of %d frames match their SHA-256%s", cache.root, intact, len(cache.frames),
                 "" if intact == len(cache.frames) else "; rebuilding the others")
        summary["verified"] = intact
    if cache.is_complete():
        log.info("label cache %s is complete: reusing it", cache.root)
        return cache, {**summary, "reused": True, "seconds": time.perf_counter() - t0, **cache.labels_info}

    shard_size = manifest["shard_size"]
    n_shards = -(-len(edges) // shard_size)
    todo = sorted(set(range(n_shards)) - _complete_shards(cache, edges, shard_size))
    source = FrameSource(scene, transform)
    trainer = None
    n_predicted = sum(len(edges[s * shard_size : (s + 1) * shard_size]) for s in todo)
    if todo:
        (cache.root / ALIGNED_FILE).unlink(missing_ok=True)  # new teacher outputs: any stored alignment is stale
        for name in cache.frames:  # and so are frames made from the old ones (fusion skips frames in the cache)
            cache.frame_path(name).unlink(missing_ok=True)
        log.info("teacher %s: %d of %d shards to predict (%d pairs each)", cfg.teacher.name, len(todo), n_shards,
                 shard_size)
        loader = torch.utils.data.DataLoader(ShardDataset(source, edges, todo, shard_size), batch_size=1,
                                             collate_fn=_first)
        tcfg = cfg.trainer
        trainer = L.Trainer(accelerator=tcfg.accelerator, devices=tcfg.devices, num_nodes=tcfg.num_nodes,
                            strategy=tcfg.strategy, precision=tcfg.precision, logger=False,
                            enable_progress_bar=tcfg.enable_progress_bar, callbacks=[ShardWriter(cache)],
                            **(trainer_kwargs or {}))
        trainer.predict(TeacherModule(teacher), loader, return_predictions=False)
        trainer.strategy.barrier("lit3d-shards")
        if trainer.global_rank != 0:  # alignment and frame writing happen once, on rank 0
            trainer.strategy.barrier("lit3d-frames")
            return cache, {**summary, "rank": trainer.global_rank}
    t_teacher = time.perf_counter() - t0

    frames, info, fresh = _aligned(cfg, cache, scene, teacher, edges, n_shards)
    done = cache.verified_frames()
    if fresh and done:  # frames of an earlier alignment: removed first, so that a kill cannot leave a mix
        log.info("re-aligned: rewriting the %d frames already in the cache", len(done))
        for name in done:
            cache.frame_path(name).unlink(missing_ok=True)
        done = set()
    with tqdm(total=len(cache.frames), desc="aligning and writing labels", unit="frame",
              disable=not cfg.trainer.enable_progress_bar) as bar:
        batch = {}
        for i, arrays in frames:  # one frame at a time, committed in batches: never every label at once
            name = scene.frame_names[i]
            if name not in done:
                batch[name] = {**source.get(i), **arrays}
            if len(batch) == FRAMES_PER_COMMIT:
                cache.write_frames(batch)
                batch = {}
            bar.update(1)
        if batch:
            cache.write_frames(batch)
    write_json(cache.root / "labels.json", info)  # the commit point of the whole cache
    (cache.root / ALIGNED_FILE).unlink(missing_ok=True)
    if trainer is not None and trainer.world_size > 1:
        trainer.strategy.barrier("lit3d-frames")
    seconds = time.perf_counter() - t0
    summary.update(info, seconds=seconds, teacher_seconds=t_teacher, predicted_pairs=n_predicted,
                   pairs_per_s=n_predicted / max(t_teacher, 1e-9) if n_predicted else float("nan"), reused=False,
                   peak_rss_mb=peak_rss_mb())
    log.info("labelled %d frames from %d pairs in %.1f s (residual %.4f %s), peak memory %.0f MB", len(cache.frames),
             len(edges), seconds, info["residual"], info["unit"], summary["peak_rss_mb"])
    return cache, summary
