"""``python -m lit3d.bench teacher``: labelling cost per frame of each teacher (DUSt3R, MASt3R, VGGT), random weights.

Every teacher labels the same ``--frames`` views at the same ``--size`` (sides multiples of 112, which both patch
sizes, 16 and 14, divide). Pair teachers (``dust3r``, ``mast3r``) cost one pass per directed pair of the scene graph
(``--graph``, lit3d's default ``swin-3``; ``--pairs`` of them are timed in symmetric batches and the rest
extrapolated) plus global alignment (run for real on synthetic pairwise predictions of that size and graph). VGGT
costs one pass per chunk of views (``teacher.chunk_size`` / ``chunk_overlap`` / ``loop_closure``; every chunk is
run) plus stitching. ``s/frame`` = (passes + alignment or stitching) / frames. Peak memory is the process's peak
RSS on CPU (weights included) and ``torch.cuda.max_memory_allocated`` on GPU (the passes; alignment runs on
``align.device``, CPU by default). Timings are wall clock: on a busy machine they grow with the load.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lit3d.cli import OneLineArgumentParser
from lit3d.memory import peak_rss_mb
from lit3d.runs import resolve_device
from lit3d.teachers import create_teacher
from lit3d.teachers.dust3r import DUSt3RTeacher
from lit3d.teachers.vggt import VggtTeacher

log = logging.getLogger("lit3d.bench.teacher")

SIZE_STEP = 112
"""Input sides must be multiples of this: DUSt3R's 16-pixel and VGGT's 14-pixel patches both tile them."""
DEFAULTS = {"cpu": {"frames": 4, "size": "224x224", "pairs": 2},
            "cuda": {"frames": 32, "size": "336x448", "pairs": 64}}
"""Workload per device when not given: small on CPU (one run takes minutes), a real chunk on GPU."""


@dataclass
class Row:
    """One timed batch loop of a pair teacher (:func:`run_one`)."""

    preset: str
    hw: tuple[int, int]
    device: str
    dtype: str
    batch: int
    pairs: int
    seconds: float
    cpu_seconds: float
    """Process CPU time (user + system): a figure that contention on a shared machine inflates less."""
    peak_mb: float
    params: int = 0
    """Parameters of the network (MB in the table: fp32 bytes)."""

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds


@dataclass
class LabelRow:
    """The cost of labelling ``frames`` views with one teacher."""

    teacher: str
    params: int
    hw: tuple[int, int]
    """Network input (H, W), pixels."""
    frames: int
    device: str
    dtype: str
    passes: int
    """Forward passes: directed pairs (pair teachers) or chunks of views (VGGT)."""
    pass_unit: str
    """``pair`` or ``chunk``."""
    pass_seconds: float
    """All passes, seconds (pairs: the timed ones' mean times ``passes``)."""
    join_seconds: float
    """Global alignment (pairs) or stitching (chunks), seconds."""
    peak_mb: float

    @property
    def seconds_per_frame(self) -> float:
        return (self.pass_seconds + self.join_seconds) / self.frames


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    elif not _reset_peak_rss():
        log.warning("cannot reset the peak RSS counter: the figure is the peak since the process started")


def _peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()


def _batch(size: int, hw: tuple[int, int], device: torch.device) -> dict[str, torch.Tensor]:
    n_images = max(size, 2)
    images = torch.rand(n_images, 3, *hw, device=device)
    idx_i = torch.arange(size, device=device)
    idx_j = idx_i ^ 1  # partners (0, 1), (1, 0), (2, 3), ...
    return {"img_i": images[idx_i], "img_j": images[idx_j], "idx_i": idx_i, "idx_j": idx_j}


def run_one(teacher: DUSt3RTeacher, preset: str, hw: tuple[int, int], dtype: str, pairs: int, batch_size: int,
            warmup: int) -> Row:
    """Time at least ``pairs`` directed pairs of a pair teacher, in symmetric batches as labelling runs them (each
    image encoded once per batch); the peak memory counter is reset after ``warmup`` batches."""
    device = teacher.net.patch_embed.proj.weight.device
    teacher.cfg.amp = {"fp32": "none"}.get(dtype, dtype)
    batch_size = batch_size or teacher.fit_batch_size(*hw)
    batch = _batch(batch_size, hw, device)
    for _ in range(warmup):
        teacher(batch)
    _reset_peak(device)
    n_batches = math.ceil(pairs / batch_size)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        teacher(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    row = Row(preset, hw, device.type, dtype, batch_size, n_batches * batch_size, seconds, cpu_seconds,
              _peak_mb(device), sum(p.numel() for p in teacher.net.parameters()))
    log.info("%s %dx%d %s %s: %.3f pairs/s", preset, hw[0], hw[1], device.type, dtype, row.pairs_per_s)
    return row


def align_seconds(frames: int, hw: tuple[int, int], graph: str, align: dict) -> float:
    """Wall time of global alignment of ``frames`` images' pairwise predictions on ``graph`` at ``hw`` (synthetic
    predictions: smooth depths, cameras on a ring; ``align``: :class:`AlignConfig` fields)."""
    from lit3d.align import global_alignment
    from lit3d.align.synthetic import make_predictions, make_scene, scene_graph

    edges = scene_graph(frames, graph)
    pred = make_predictions(make_scene(frames, *hw), edges)
    start = time.perf_counter()
    global_alignment(edges, pred["pts_i"], pred["pts_j_in_i"], pred["conf_i"], pred["conf_j"], n_images=frames,
                     **align)
    return time.perf_counter() - start


def bench_pairs(teacher, name: str, frames: int, hw: tuple[int, int], dtype: str, args, align: dict) -> LabelRow:
    """Pair teacher: the timed pairs' mean cost times the graph's directed pairs, plus global alignment."""
    from lit3d.align.synthetic import scene_graph

    device = teacher.net.patch_embed.proj.weight.device
    row = run_one(teacher, name, hw, dtype, args.pairs, args.batch_size, args.warmup)
    n_pairs = len(scene_graph(frames, args.graph))
    join = align_seconds(frames, hw, args.graph, align)
    peak = max(row.peak_mb, _peak_mb(device))
    return LabelRow(name, row.params, hw, frames, device.type, dtype, n_pairs, "pair",
                    n_pairs * row.seconds / row.pairs, join, peak)


def bench_chunks(teacher, name: str, frames: int, hw: tuple[int, int], dtype: str, args) -> LabelRow:
    """VGGT: every chunk of ``frames`` random views through the network, then the chunks stitched."""
    from lit3d.teachers.vggt.stitch import ViewSet, chunk_frames, stitch

    device = teacher.net.aggregator.camera_token.device
    teacher.cfg.amp = {"fp32": "none"}.get(dtype, dtype)
    cfg = teacher.cfg
    images = torch.rand(frames, 3, *hw)
    chunks = chunk_frames(frames, cfg.chunk_size, cfg.chunk_overlap, cfg.loop_closure)
    for _ in range(args.warmup):
        teacher.predict_views(images[chunks[0]])
    _reset_peak(device)
    views, start = [], time.perf_counter()
    for ids in chunks:
        pred = {k: v.cpu().numpy() for k, v in teacher.predict_views(images[ids]).items()}
        ok = np.isfinite(pred["pts_world"]).all(-1) & np.isfinite(pred["conf"])
        views.append(ViewSet(ids, pred["pts_world"], pred["conf"], ok, pred["cam2world"].astype(np.float64)))
    passes = time.perf_counter() - start
    stitch(views)
    join = time.perf_counter() - start - passes
    params = sum(p.numel() for p in teacher.net.parameters())
    return LabelRow(name, params, hw, frames, device.type, dtype, len(chunks), "chunk", passes, join,
                    _peak_mb(device))


COLUMNS = ("teacher", "params M", "MB", "input HxW", "frames", "device", "dtype", "passes", "s/pass", "passes s",
           "align s", "s/frame", "peak MB")


def format_table(rows: list[LabelRow]) -> str:
    body = [[r.teacher, f"{r.params / 1e6:.1f}", f"{r.params * 4 / 2**20:.0f}", f"{r.hw[0]}x{r.hw[1]}",
             str(r.frames), r.device, r.dtype, f"{r.passes} {r.pass_unit}s", f"{r.pass_seconds / r.passes:.2f}",
             f"{r.pass_seconds:.1f}", f"{r.join_seconds:.1f}", f"{r.seconds_per_frame:.2f}", f"{r.peak_mb:.0f}"]
            for r in rows]
    widths = [max([len(c), *(len(b[k]) for b in body)]) for k, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(COLUMNS, widths)))]
    lines.append("-" * len(lines[0]))
    lines += ["  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(b, widths)))
              for b in body]
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 224x224; got {text!r}") from None
    if h <= 0 or w <= 0 or h % SIZE_STEP or w % SIZE_STEP:
        raise argparse.ArgumentTypeError(f"sides must be positive multiples of {SIZE_STEP} (patches of 16 and 14 "
                                         f"pixels both tile them), e.g. 224x224 or 336x448; got {text!r}")
    return h, w


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m lit3d.bench teacher", description=__doc__.splitlines()[0])
    p.add_argument("--teachers", nargs="+", default=["dust3r", "mast3r", "vggt"], metavar="NAME[:k=v,...]",
                   help="teachers and teacher.* settings, e.g. dust3r:preset=DUSt3R_ViTLarge_BaseDecoder_224_linear "
                        "or vggt:chunk_size=8,chunk_overlap=2 (random weights always)")
    p.add_argument("--frames", type=int, default=0, help="views to label (0: 4 on CPU, 32 on GPU)")
    p.add_argument("--size", type=_size, default=None, metavar="HxW",
                   help="network input of every teacher (default: 224x224 on CPU, 336x448 on GPU)")
    p.add_argument("--graph", default="swin-3", help="pair teachers' scene graph: complete or swin-K")
    p.add_argument("--pairs", type=int, default=0, help="directed pairs timed per pair teacher (0: 2 CPU, 64 GPU)")
    p.add_argument("--batch-size", type=int, default=0, help="pairs per forward (0: fit memory on GPU, 2 on CPU)")
    p.add_argument("--align", nargs="*", default=[], metavar="KEY=VALUE",
                   help="align.* settings of the pair teachers' global alignment (e.g. iterations=100)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                   help="compute dtypes (default: fp32 on CPU; fp32 and bf16 on GPU)")
    p.add_argument("--warmup", type=int, default=-1, help="untimed passes first (-1: 0 on CPU, 1 on GPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default="", metavar="PATH", help="also write the table as JSON (json=PATH works too)")
    keyed = ("frames=", "size=", "json=")
    return p.parse_args([f"--{a}" if a.startswith(keyed) else a for a in argv])


def measure(args: argparse.Namespace) -> list[LabelRow]:
    """One row per teacher and dtype (and writes ``--json``)."""
    from lit3d.bench.model import parse_component
    from lit3d.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    cuda = device.type == "cuda"
    defaults = DEFAULTS["cuda" if cuda else "cpu"]
    frames, hw = args.frames or defaults["frames"], args.size or _size(defaults["size"])
    args.pairs = args.pairs or defaults["pairs"]
    args.batch_size = args.batch_size or (0 if cuda else 2)  # 2 = one symmetric pair: each image encoded once
    args.warmup = args.warmup if args.warmup >= 0 else int(cuda)
    align = {k: v for k, v in dataclasses.asdict(load_config([f"align.{kv}" for kv in args.align]).align).items()
             if k != "method"}
    dtypes = args.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    if not cuda and dtypes != ["fp32"]:
        log.warning("teachers run fp32 on CPU: ignoring %s", [d for d in dtypes if d != "fp32"])
        dtypes = ["fp32"]
    configs = [parse_component("teacher", spec, ["teacher.random_init=true"]).teacher for spec in args.teachers]
    log.info("device %s, %d CPU threads, %d frames at %dx%d, dtypes %s", device, torch.get_num_threads(), frames,
             *hw, dtypes)
    rows: list[LabelRow] = []
    for spec, cfg in zip(args.teachers, configs):
        log.info("building %s with random weights", spec)
        teacher = create_teacher(cfg).to(device)
        name = getattr(cfg, "preset", "") or cfg.name
        for dtype in dtypes:
            if isinstance(teacher, VggtTeacher):
                rows.append(bench_chunks(teacher, name, frames, hw, dtype, args))
            else:
                rows.append(bench_pairs(teacher, name, frames, hw, dtype, args, align))
            log.info("%s: %.2f s per frame", name, rows[-1].seconds_per_frame)
        del teacher
        if cuda:
            torch.cuda.empty_cache()
    if args.json:
        from lit3d.files import atomic_write_bytes

        table = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                 "frames": frames, "size": list(hw), "graph": args.graph, "teachers": args.teachers,
                 "rows": [{**dataclasses.asdict(r), "seconds_per_frame": r.seconds_per_frame} for r in rows]}
        atomic_write_bytes(args.json, json.dumps(table, indent=1, default=str).encode())
        log.info("wrote %s", args.json)
    return rows


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = measure(parse_args(argv))
    print(f"teacher labelling benchmark (random weights; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print(format_table(rows))
