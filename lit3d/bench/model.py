"""``lit3d bench model``: how much smaller and faster are the students than the DUSt3R teacher?

In one process on one device: each student's forward latency (p50 / p95 per batch, ms) and throughput (images/s)
at ``--resolution`` and ``--batch-size``; the DUSt3R teacher's forward for one pair of distinct images at the same
resolution (random weights: the same compute as the released ones); the ratio teacher seconds per pair / student
seconds per image, and the same ratio of multiply-accumulates (GMAC, counted by torch's FlopCounterMode: the bound
on the speed ratio at equal efficiency, whatever the device); parameter counts and MB (parameters and buffers as
stored, 1 MB = 2**20 bytes). Then the input pipeline (preloaded DataLoader, images/s) against each student's training step at the data config's
``loader.resolution`` and ``loader.batch_size`` (``lit3d.bench.data``'s measurement): a ratio above 1 means the
loader never starves training.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lit3d.export import export_onnx, export_torchscript

from lit3d.bench.data import _rate
from lit3d.cache import build_labels
from lit3d.cache.datamodule import CachedFrames
from lit3d.cli import OneLineArgumentParser
from lit3d.config import load_config
from lit3d.runs import resolve_device
from lit3d.students import create_student, model_size
from lit3d.students.module import StudentModule
from lit3d.teachers import create_teacher
from lit3d.teachers.dust3r import PRESETS

log = logging.getLogger("lit3d.bench.model")


@dataclass
class Row:
    name: str
    unit: str
    """What one item is: image (students) or pair (teacher)."""
    device: str
    dtype: str
    """Compute dtype: students fp32; the teacher autocasts to ``teacher.amp`` on GPU, as when labelling."""
    batch: int
    params: int
    size_mb: float
    p50_ms: float
    """Median latency of one forward of ``batch`` items."""
    p95_ms: float
    items_per_s: float
    cpu_ms: float
    """Process CPU time per item (all threads): less inflated than wall time by other load on a shared machine."""
    gmac: float
    """Multiply-accumulates per item, 1e9."""
    ratio: float = float("nan")
    """Teacher seconds per pair / this model's seconds per image."""
    mac_ratio: float = float("nan")
    """Teacher multiply-accumulates per pair / this model's per image."""


def time_forward(fn, n_items: int, iters: int, warmup: int, max_seconds: float,
                 cuda: bool) -> tuple[float, float, float, float, float]:
    """(p50 ms, p95 ms, items/s, process CPU ms per item, GMAC per item) of ``fn``: ``warmup`` untimed calls (at
    least one, which counts the multiply-accumulates), then ``iters`` timed ones (at least 2, fewer when they
    exceed ``max_seconds``)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    for _ in range(warmup - 1):
        fn()
    times: list[float] = []
    cpu0 = time.process_time()
    while len(times) < iters and (len(times) < 2 or sum(times) < max_seconds):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    cpu_ms = 1000 * (time.process_time() - cpu0) / (n_items * len(times))
    ms = 1000 * np.array(times)
    gmac = counter.get_total_flops() / 2e9 / n_items
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), n_items * len(times) / sum(times), cpu_ms, gmac


def parse_component(group: str, spec: str, extra: list[str] | None = None):
    """Config of ``NAME`` or ``NAME:key=value,key=value`` for ``group`` (student or teacher; fields typed by the
    config)."""
    name, _, kv = spec.partition(":")
    items = re.split(r",(?=[A-Za-z_][\w.]*=)", kv)  # commas inside list values ([8,16]) do not split
    return load_config([f"{group}={name}", *(f"{group}.{x}" for x in items if x), *(extra or [])])


def parse_student(spec: str, extra: list[str] | None = None):
    """Student config of ``NAME`` or ``NAME:key=value,key=value`` (student.* fields, typed by the config)."""
    return parse_component("student", spec, extra)


RUNTIMES = ("eager", "torchscript", "onnxruntime")
"""How a student is run: PyTorch eager, a traced TorchScript module, an exported ONNX model in ONNX Runtime (CPU)."""


def _runtime_forward(runtime: str, net: torch.nn.Module, x_B3HW: torch.Tensor, tmp_dir: Path):
    """A no-argument callable running ``net`` on ``x_B3HW`` in ``runtime`` (exports checked as in evaluate)."""
    if runtime == "eager":
        return lambda: net(x_B3HW)
    if runtime == "torchscript":
        path = export_torchscript(net, x_B3HW, tmp_dir / "student.ts").path
        ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.load(str(path), map_location=x_B3HW.device)))
        for _ in range(3):  # the profiling executor specialises the graph over its first calls: not the steady state
            ts(x_B3HW)
        return lambda: ts(x_B3HW)
    import onnxruntime as ort

    path = export_onnx(net.cpu(), x_B3HW.cpu(), tmp_dir / "student.onnx").path
    net.to(x_B3HW.device)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch: a fair comparison
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"image": x_B3HW.cpu().numpy()}
    return lambda: session.run(None, feed)


@torch.no_grad()
def bench_students(specs: list[str], hw: tuple[int, int], batch: int, device: torch.device, args) -> list[Row]:
    rows = []
    runtimes = [r for r in args.runtimes if device.type == "cpu" or r != "onnxruntime"]  # ORT here is CPU-only
    for spec in specs:
        net = create_student(parse_student(spec).student, hw).to(device).eval()
        x_B3HW = torch.rand(batch, 3, *hw, device=device)
        size = model_size(net)
        gmac = float("nan")
        for runtime in runtimes:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    fn = _runtime_forward(runtime, net, x_B3HW, Path(tmp))
                except Exception as e:  # noqa: BLE001  (an export that fails is a finding of the benchmark)
                    log.warning("%s in %s: %s", spec, runtime, str(e).splitlines()[0] if str(e) else type(e).__name__)
                    continue
                p50, p95, ips, cpu, macs = time_forward(fn, batch, args.iters, args.warmup, args.max_seconds,
                                                        device.type == "cuda")
            gmac = macs if runtime == "eager" else gmac  # counted in eager PyTorch only (same network)
            rows.append(Row(f"student {spec} [{runtime}]", "image", device.type, "fp32", batch, int(size["params"]),
                            size["size_mb"], p50, p95, ips, cpu, gmac))
            log.info("%s [%s]: %.1f ms per batch of %d (p50), %.1f images/s", spec, runtime, p50, batch, ips)
        del net
    return rows


def bench_localize(source: str, queries: list[str], intrinsics: str, hfov_deg: float) -> list[dict]:
    """End-to-end ``lit3d localize`` per photo (read, resize, student, PnP + RANSAC; the student's poses alone, no
    matching refinement): p50 / p95 ms, images/s, after one warm-up pass; with one forward per photo and with
    test-time augmentation (its default), side by side."""
    import lit3d.localize as loc
    from lit3d.students.tta import TestTimeOptions

    paths, out = loc.expand_queries(queries), []
    for tta in (TestTimeOptions(tta=False), TestTimeOptions()):
        model = loc.load_model(source, tta=tta)
        loc.localize(model, paths[: model.batch_size], intrinsics or None, hfov_deg)  # warm-up
        t0 = time.perf_counter()
        results = loc.localize(model, paths, intrinsics or None, hfov_deg)
        wall = time.perf_counter() - t0
        row = {"source": model.source, "runtime": model.runtime, "tta_views": tta.views(), "images": len(results),
               "localized": sum(r.ok for r in results), **loc.latency_summary(results),
               "wall_images_per_s": len(results) / wall,
               "photo_size": "x".join(map(str, results[0].image_size[::-1])) if results else ""}
        log.info("localize (%(tta_views)d views): %(p50_ms).1f ms p50, %(p95_ms).1f ms p95 per image, "
                 "%(wall_images_per_s).1f images/s", row)
        out.append(row)
    return out


def bench_teacher(preset: str, overrides: list[str], hw: tuple[int, int], device: torch.device, args) -> Row:
    cfg = load_config(["teacher=dust3r", "teacher.random_init=true", f"teacher.preset={preset}",
                       "teacher.batch_size=1", *(f"teacher.{o}" for o in overrides)])
    teacher = create_teacher(cfg.teacher).to(device)
    images = torch.rand(2, 3, *hw, device=device)
    # one pair of two distinct images, as labelling runs it (each image encoded once)
    pair = {"img_i": images[:1], "img_j": images[1:], "idx_i": torch.tensor([0], device=device),
            "idx_j": torch.tensor([1], device=device)}
    size = model_size(teacher.net)
    p50, p95, pps, cpu, gmac = time_forward(lambda: teacher(pair), 1, args.teacher_iters, 1, float("inf"),
                                            device.type == "cuda")
    log.info("teacher %s: %.0f ms per pair (p50)", preset, p50)
    name = f"teacher {preset}" + (f" [{' '.join(overrides)}]" if overrides else "")
    dtype = teacher.cfg.amp.replace("none", "fp32") if device.type == "cuda" else "fp32"
    return Row(name, "pair", device.type, dtype, 1, int(size["params"]), size["size_mb"], p50, p95, pps, cpu, gmac)


def bench_data(specs: list[str], data_overrides: list[str], min_seconds: float) -> list[tuple[str, float]]:
    """(stage, images/s): the preloaded DataLoader, then each student's training step on the same config."""
    cfg = load_config(["trainer.enable_progress_bar=false", *data_overrides])
    cache, _ = build_labels(cfg)
    names = cache.split["train"]
    size = tuple(cfg.loader.resolution)
    ds = CachedFrames(cache, names, size, cfg.loader.color_jitter)
    dl = torch.utils.data.DataLoader(ds, batch_size=cfg.loader.batch_size, shuffle=True,
                                     num_workers=cfg.loader.num_workers)
    rates = [(f"DataLoader preloaded, {size[0]}x{size[1]}, batch {cfg.loader.batch_size}",
              _rate(lambda: [None for _ in dl], len(ds), min_seconds))]
    batch = torch.utils.data.default_collate([ds[k] for k in range(min(cfg.loader.batch_size, len(ds)))])
    for spec in specs:
        module = StudentModule.from_config(parse_student(spec, data_overrides), {"mean": torch.zeros(3),
                                                                                 "std": torch.ones(3)})
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            module.compute_loss(batch)[0].backward()
            opt.step()
            opt.zero_grad()

        rates.append((f"train step student {spec}", _rate(step, len(batch["image"]), min_seconds)))
    return rates


def format_table(rows: list[Row]) -> str:
    w = max([len(r.name) for r in rows] + [5])
    head = (f"{'model':<{w}} {'per':>5} {'device':>6} {'dtype':>5} {'batch':>5} {'params M':>9} {'MB':>8} "
            f"{'p50 ms':>9} {'p95 ms':>9} {'items/s':>9} {'cpu ms/item':>11} {'GMAC/item':>9} {'teacher/student':>15} "
            f"{'MAC ratio':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.name:<{w}} {r.unit:>5} {r.device:>6} {r.dtype:>5} {r.batch:>5} {r.params / 1e6:>9.3f} "
                     f"{r.size_mb:>8.2f} {r.p50_ms:>9.2f} {r.p95_ms:>9.2f} {r.items_per_s:>9.2f} {r.cpu_ms:>11.1f} "
                     f"{r.gmac:>9.2f} {r.ratio:>15.1f} {r.mac_ratio:>9.1f}")
    return "\n".join(lines)


def format_data_table(rates: list[tuple[str, float]]) -> str:
    loader, w = rates[0][1], max(len(n) for n, _ in rates + [("input pipeline vs training step", 0.0)])
    lines = [f"{'input pipeline vs training step':<{w}} {'images/s':>9} {'loader/step':>11}", "-" * (w + 22)]
    lines += [f"{name:<{w}} {ips:>9.1f} {loader / ips:>11.1f}" for name, ips in rates]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m lit3d.bench model", description=__doc__.split("\n\n")[0])
    p.add_argument("--students", nargs="+", default=["mobilenetv3", "vanilla_cnn", "vit"], metavar="NAME[:k=v,...]",
                   help="students with their defaults, or NAME:key=value,... (e.g. vit:depth=4,patch_size=8)")
    p.add_argument("--resolution", nargs=2, type=int, default=[384, 512], metavar=("H", "W"),
                   help="input of students and teacher, pixels (multiples of 16 for DUSt3R; default its 512 crop)")
    p.add_argument("--batch-size", type=int, default=1, help="images per student forward")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--iters", type=int, default=20, help="timed student forwards (fewer past --max-seconds)")
    p.add_argument("--warmup", type=int, default=1, help="untimed student forwards first (the first counts GMAC)")
    p.add_argument("--max-seconds", type=float, default=15.0, help="stop timing a student after this (min 2 runs)")
    p.add_argument("--teacher-preset", default="DUSt3R_ViTLarge_BaseDecoder_512_dpt", choices=list(PRESETS))
    p.add_argument("--teacher-iters", type=int, default=2, help="timed teacher forwards (after one warm-up)")
    p.add_argument("--teacher", nargs="*", default=[], metavar="KEY=VALUE",
                   help="teacher.* overrides, e.g. enc_depth=2 for a smaller network (default: the preset's)")
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher")
    p.add_argument("--data", nargs="*", default=["data.num_frames=48"], metavar="KEY=VALUE",
                   help="config of the input-pipeline part (default: 48 frames of the synthetic scene)")
    p.add_argument("--no-data", action="store_true", help="skip the input-pipeline part")
    p.add_argument("--data-seconds", type=float, default=2.0, help="seconds per input-pipeline measurement")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES,
                   help="how each student runs (ONNX Runtime on CPU only); GMAC are counted in eager")
    p.add_argument("--localize", nargs="+", default=[], metavar="RUN_OR_MODEL QUERY",
                   help="end-to-end localize latency: a run directory or exported student, then query images/folders")
    p.add_argument("--intrinsics", default="", help="--localize: K.txt / per-image list / COLMAP cameras.txt")
    p.add_argument("--hfov-deg", type=float, default=0.0, help="--localize without --intrinsics: field of view")
    p.add_argument("--json", default="", metavar="PATH", help="also write the tables as JSON (json=PATH works too)")
    return p.parse_args([f"--json={a[5:]}" if a.startswith("json=") else a for a in argv])


def run(argv: list[str]) -> tuple[list[Row], list[tuple[str, float]]]:
    """Measure what ``argv`` asks; returns the model rows and the input-pipeline rates (and writes --json)."""
    return measure(parse_args(argv))[:2]


def measure(args: argparse.Namespace) -> tuple[list[Row], list[tuple[str, float]], list[dict]]:
    """Model rows, input-pipeline rates and end-to-end localization latency without and with test-time
    augmentation ([] without --localize)."""
    if args.localize and len(args.localize) < 2:
        raise ValueError("--localize needs a run directory (or exported student) and at least one query")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, "--device")
    hw = tuple(args.resolution)
    log.info("device %s, %d CPU threads, input %dx%d, batch %d", device, torch.get_num_threads(), *hw,
             args.batch_size)
    rows = bench_students(args.students, hw, args.batch_size, device, args)
    if not args.no_teacher:
        teacher = bench_teacher(args.teacher_preset, args.teacher, hw, device, args)
        for r in rows:  # teacher seconds per pair / student seconds per image
            r.ratio = r.items_per_s / teacher.items_per_s
            r.mac_ratio = teacher.gmac / r.gmac
        rows.append(teacher)
    rates = [] if args.no_data else bench_data(args.students, args.data, args.data_seconds)
    loc = bench_localize(args.localize[0], args.localize[1:], args.intrinsics, args.hfov_deg) if args.localize else []
    if args.json:
        from lit3d.files import atomic_write_bytes

        table = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                 "resolution": list(hw), "models": [dataclasses.asdict(r) for r in rows],
                 "data": [{"stage": n, "images_per_s": v} for n, v in rates], "localize": loc}
        atomic_write_bytes(args.json, json.dumps(table, indent=1, default=str).encode())
        log.info("wrote %s", args.json)
    return rows, rates, loc


def main(argv: list[str]) -> None:
    rows, rates, loc = measure(parse_args(argv))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(format_table(rows))
    if rates:
        print()
        print(format_data_table(rates))
    for row in loc:
        print(f"\nlocalize {row['source']} ({row['runtime']}, {row['tta_views']} views per photo), {row['images']} "
              f"photos of {row['photo_size']}: {row['p50_ms']:.1f} ms p50, {row['p95_ms']:.1f} ms p95 per image "
              f"(student + PnP), {row['wall_images_per_s']:.1f} images/s end to end, {row['localized']} localized")
    if len(loc) == 2:
        print(f"test-time augmentation costs {loc[1]['p50_ms'] / loc[0]['p50_ms']:.2f}x the single forward's time "
              f"per photo (p50)")
