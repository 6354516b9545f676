"""``python -m lit3d.bench data [--seconds S] [key=value ...]``: can the label cache feed the student?

Measures, in one process on the same config: reading one cache frame from disk and resizing it (ms), the DataLoader
with frames preloaded and read lazily per item (``loader.preload=true|false``), each without worker processes and
with ``loader.num_workers`` of them (2 when it is 0), with the configured photometric and geometric augmentation
(ms/item), and the student's training step (ms/image). A ratio above 1 means the input pipeline is not the
bottleneck. ``--seconds`` is the minimum time of each measurement (default 2).
"""
from __future__ import annotations

import logging
import time

import torch

from lit3d.cache import build_labels
from lit3d.cache.datamodule import CachedFrames, geometric_augmentation
from lit3d.config import ConfigError, load_config
from lit3d.students.module import StudentModule

log = logging.getLogger(__name__)


def _rate(fn, n_items: int, min_seconds: float) -> float:
    """Items per second of ``fn`` (which processes ``n_items``), repeated for at least ``min_seconds``."""
    fn()  # warm-up (and worker start-up)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += n_items
    return done / (time.perf_counter() - t0)


def _seconds(argv: list[str]) -> tuple[float, list[str]]:
    """``--seconds S`` taken out of ``argv``."""
    if "--seconds" not in argv:
        return 2.0, argv
    k = argv.index("--seconds")
    try:
        seconds = float(argv[k + 1])
    except (IndexError, ValueError):
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError("--seconds needs a positive number of seconds, e.g. --seconds 2")
    return seconds, argv[:k] + argv[k + 2:]


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        print("usage: lit3d bench data [--seconds S] [key=value ...]   (config keys: lit3d fit --help)\n\n"
              + __doc__.split("\n\n")[1])
        return
    seconds, argv = _seconds(argv)
    cfg = load_config(argv)
    cache, _ = build_labels(cfg)
    names = cache.split["train"]
    size = tuple(cfg.loader.resolution)
    augment = {"color_jitter": cfg.loader.color_jitter, "geometric": geometric_augmentation(cfg.loader)}
    lazy = CachedFrames(cache, names, size, preload=False, **augment)
    rows = [("cache read + resize, one frame", _rate(lambda: lazy.read(names[0]), 1, seconds))]

    t0 = time.perf_counter()
    preloaded = CachedFrames(cache, names, size, preload=True, **augment)
    preload_s = time.perf_counter() - t0
    for workers in sorted({0, cfg.loader.num_workers or 2}):
        for mode, ds in (("preloaded", preloaded), ("lazy", lazy)):
            dl = torch.utils.data.DataLoader(ds, batch_size=cfg.loader.batch_size, shuffle=True,
                                             num_workers=workers, persistent_workers=workers > 0)
            rows.append((f"DataLoader {mode}, {workers} workers", _rate(lambda: [None for _ in dl], len(ds), seconds)))
            del dl  # stops its workers

    stats = {"mean": torch.zeros(3), "std": torch.ones(3)}
    module = StudentModule.from_config(cfg, stats)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    batch = torch.utils.data.default_collate([preloaded[k] for k in range(min(len(names), cfg.loader.batch_size))])

    def step() -> None:
        loss = module.compute_loss(batch)[0]
        loss.backward()
        opt.step()
        opt.zero_grad()

    step_ips = _rate(step, len(batch["image"]), seconds)
    rows.append((f"student {cfg.student.name} train step", step_ips))
    print(f"\nlabel cache {cache.root}: {len(names)} train frames, student input {size[0]}x{size[1]}, "
          f"batch {cfg.loader.batch_size}, torch threads {torch.get_num_threads()}; preloading took {preload_s:.2f} s")
    print(f"{'stage':<44}{'ms/item':>10}{'items/s':>10}{'x step':>9}")
    for name, rate in rows:
        print(f"{name:<44}{1000 / rate:>10.2f}{rate:>10.1f}{rate / step_ips:>9.1f}")
    print("x step: items/s over the training step's images/s (above 1: the loader keeps up)")
