"""``python -m lit3d.bench teacher``: DUSt3R / MASt3R teacher throughput (pairs/s) and peak memory, random weights.

Batches are symmetrised ((a, b), (b, a), ...) as when labelling, so each image is encoded once per batch. Peak
memory is the process's peak RSS on CPU (weights included) and ``torch.cuda.max_memory_allocated`` on GPU.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lit3d.cli import OneLineArgumentParser
from lit3d.memory import peak_rss_mb
from lit3d.runs import resolve_device
from lit3d.teachers import TEACHERS, create_teacher
from lit3d.teachers.dust3r import PRESETS as DUST3R_PRESETS
from lit3d.teachers.dust3r import DUSt3RTeacher
from lit3d.teachers.mast3r import PRESETS as MAST3R_PRESETS

PRESETS = {**DUST3R_PRESETS, **MAST3R_PRESETS}
"""Every released pair model, timed by the teacher of its family (``dust3r`` or ``mast3r``)."""

log = logging.getLogger("lit3d.bench.teacher")

SHAPES = {224: (224, 224), 512: (384, 512)}
"""Network input (H, W) per resolution: 224x224 and the 4:3 landscape crop at 512."""


@dataclass
class Row:
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


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _batch(size: int, hw: tuple[int, int], device: torch.device) -> dict[str, torch.Tensor]:
    n_images = max(size, 2)
    images = torch.rand(n_images, 3, *hw, device=device)
    idx_i = torch.arange(size, device=device)
    idx_j = idx_i ^ 1  # partners (0, 1), (1, 0), (2, 3), ...
    return {"img_i": images[idx_i], "img_j": images[idx_j], "idx_i": idx_i, "idx_j": idx_j}


def run_one(teacher: DUSt3RTeacher, preset: str, hw: tuple[int, int], dtype: str, pairs: int, batch_size: int,
            warmup: int) -> Row:
    device = teacher.net.patch_embed.proj.weight.device
    teacher.cfg.amp = {"fp32": "none"}.get(dtype, dtype)
    batch_size = batch_size or teacher.fit_batch_size(*hw)
    batch = _batch(batch_size, hw, device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        teacher(batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    elif not _reset_peak_rss():
        log.warning("cannot reset the peak RSS counter: the figure is the peak since the process started")
    n_batches = math.ceil(pairs / batch_size)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        teacher(batch)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else peak_rss_mb()
    row = Row(preset, hw, device.type, dtype, batch_size, n_batches * batch_size, seconds, cpu_seconds, peak,
              sum(p.numel() for p in teacher.net.parameters()))
    log.info("%s %dx%d %s %s: %.3f pairs/s", preset, hw[0], hw[1], device.type, dtype, row.pairs_per_s)
    return row


def format_table(rows: list[Row]) -> str:
    head = f"{'preset':<48} {'params M':>8} {'MB':>6} {'input HxW':>9} {'device':>6} {'dtype':>5} {'batch':>5} " \
           f"{'pairs':>5} {'pairs/s':>8} {'s/pair':>7} {'cpu-s/pair':>10} {'peak MB':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.preset:<48} {r.params / 1e6:>8.1f} {r.params * 4 / 2**20:>6.0f} "
                     f"{f'{r.hw[0]}x{r.hw[1]}':>9} {r.device:>6} {r.dtype:>5} {r.batch:>5} "
                     f"{r.pairs:>5} {r.pairs_per_s:>8.3f} {r.seconds / r.pairs:>7.2f} {r.cpu_seconds / r.pairs:>10.2f} "
                     f"{r.peak_mb:>8.0f}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m lit3d.bench teacher", description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["DUSt3R_ViTLarge_BaseDecoder_512_dpt",
                                                    "DUSt3R_ViTLarge_BaseDecoder_224_linear",
                                                    "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric"],
                   choices=list(PRESETS),
                   metavar="PRESET", help=f"released models to time: {', '.join(PRESETS)}")
    p.add_argument("--resolution", nargs="+", default=["native"], choices=["native", "224", "512"],
                   help="network input: the preset's own (native), 224 (224x224) or 512 (384x512)")
    p.add_argument("--pairs", type=int, default=0, help="directed pairs timed per row (0: 2 on CPU, 64 on GPU)")
    p.add_argument("--batch-size", type=int, default=0, help="pairs per forward (0: fit memory on GPU, 2 on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16", "fp16"],
                   help="compute dtypes (default: fp32 on CPU; fp32 and bf16 on GPU)")
    p.add_argument("--warmup", type=int, default=1, help="untimed forwards before each row")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    cuda = device.type == "cuda"
    dtypes = args.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    if not cuda and dtypes != ["fp32"]:
        log.warning("the teacher runs fp32 on CPU: ignoring %s", [d for d in dtypes if d != "fp32"])
        dtypes = ["fp32"]
    pairs = args.pairs or (64 if cuda else 2)
    batch_size = args.batch_size or (0 if cuda else 2)  # 2 = one symmetric pair: each image encoded once
    log.info("device %s, %d CPU threads, dtypes %s, %d pairs per row", device, torch.get_num_threads(), dtypes, pairs)
    rows: list[Row] = []
    for name in args.presets:
        log.info("building %s with random weights", name)
        family = PRESETS[name].family.lower()
        teacher = create_teacher(TEACHERS.config(family, preset=name, random_init=True, batch_size=batch_size))
        teacher.to(device)
        resolutions = [PRESETS[name].resolution if r == "native" else int(r) for r in args.resolution]
        for res in dict.fromkeys(resolutions):
            for dtype in dtypes:
                rows.append(run_one(teacher, name, SHAPES[res], dtype, pairs, batch_size, args.warmup))
        del teacher
        if cuda:
            torch.cuda.empty_cache()
    print(format_table(rows))
