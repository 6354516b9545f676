"""``python -m lit3d.bench data [key=value ...]``: can the label cache feed the student?

Measures, in one process on the same config: reading cache frames from disk (frames/s), DataLoader throughput
with frames preloaded and read lazily from disk (images/s, with the configured photometric and geometric
augmentation), and the student's training step (images/s). A ratio above 1 means the input pipeline is not the
bottleneck.
"""
from __future__ import annotations

import logging
import time

import torch

from lit3d.cache import build_labels
from lit3d.cache.datamodule import CachedFrames, geometric_augmentation, resize_frame
from lit3d.config import load_config
from lit3d.students.module import StudentModule

log = logging.getLogger(__name__)


def _rate(fn, n_items: int, min_seconds: float = 2.0) -> float:
    """Items per second of ``fn`` (which processes ``n_items``), repeated for at least ``min_seconds``."""
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += n_items
    return done / (time.perf_counter() - t0)


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        print("usage: lit3d bench data [key=value ...]   (config keys: lit3d fit --help)\n\n" + __doc__.split("\n\n")[1])
        return
    cfg = load_config(argv)
    cache, _ = build_labels(cfg)
    names = cache.split["train"]
    size = tuple(cfg.loader.resolution)

    read_fps = _rate(lambda: [resize_frame(cache.load_frame(n), size) for n in names], len(names))

    def loader_rate(preload: bool) -> float:
        ds = CachedFrames(cache, names, size, cfg.loader.color_jitter, preload=preload,
                          geometric=geometric_augmentation(cfg.loader))
        dl = torch.utils.data.DataLoader(ds, batch_size=cfg.loader.batch_size, shuffle=True,
                                         num_workers=cfg.loader.num_workers)
        return _rate(lambda: [None for _ in dl], len(ds))

    preload_ips, lazy_ips = loader_rate(True), loader_rate(False)
    stats = {"mean": torch.zeros(3), "std": torch.ones(3)}
    module = StudentModule.from_config(cfg, stats)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    ds = CachedFrames(cache, names[: cfg.loader.batch_size], size)
    batch = torch.utils.data.default_collate([ds[k] for k in range(len(ds))])

    def step() -> None:
        loss = module.compute_loss(batch)[0]
        loss.backward()
        opt.step()
        opt.zero_grad()

    step_ips = _rate(step, len(ds))
    rows = [("cache read + resize (disk)", read_fps), ("DataLoader, preloaded", preload_ips),
            ("DataLoader, lazy from disk", lazy_ips), (f"student {cfg.student.name} train step", step_ips)]
    print(f"\nlabel cache {cache.root}: {len(names)} train frames, student input {size[0]}x{size[1]}, "
          f"batch {cfg.loader.batch_size}, workers {cfg.loader.num_workers}, torch threads {torch.get_num_threads()}")
    print(f"{'stage':<40}{'images/s':>12}")
    for name, rate in rows:
        print(f"{name:<40}{rate:>12.1f}")
    print(f"{'ratio preloaded loader / train step':<40}{preload_ips / step_ips:>12.1f}")
    print(f"{'ratio lazy loader / train step':<40}{lazy_ips / step_ips:>12.1f}")
