"""``python -m lit3d.label [key=value ...]``: build or complete the label cache of a scene.

Runs the configured scene graph (``pairs.*``), teacher (``teacher.*``) and alignment (``align.*``) through
:func:`lit3d.cache.build_labels` and logs a summary. The cache is the one ``python -m lit3d.fit`` reads for the
same keys; killed at any point and started again, the command finishes only the missing work. Teacher inference
is a Lightning ``Trainer.predict``: ``trainer.devices=N`` (GPUs, or CPU processes with ``trainer.strategy=ddp``)
splits the pairs. One process builds a cache at a time: a second ``label`` (or ``fit``) on the same cache waits for
the first, then reuses its result. ``--verify`` checks the SHA-256 of every frame of the cache (other runs compare
file sizes and times only) and rebuilds any that fails.

Examples::

    python -m lit3d.label data.format=folder data.root=../shared/data/7scenes-kitchen-sample
    python -m lit3d.label data.format=sevenscenes data.root=/data/7scenes/chess teacher=dust3r align.method=global
    python -m lit3d.label trainer.devices=2 trainer.accelerator=cpu trainer.strategy=ddp
    python -m lit3d.label --verify data.format=folder data.root=../shared/data/7scenes-kitchen-sample
"""
from __future__ import annotations

import logging
import sys
from functools import partial

from lit3d.cache import build_labels
from lit3d.config import FitConfig

log = logging.getLogger("lit3d.label")


VERIFY_FLAG = "--verify"
VERIFY_HELP = "--verify: check every frame's SHA-256 (not only file sizes and times) and rebuild those that fail"


def label(cfg: FitConfig, verify: bool = False) -> dict:
    """Build or complete the label cache of ``cfg``; returns the summary of :func:`build_labels`."""
    cache, summary = build_labels(cfg, verify=verify)
    if summary.get("rank", 0) != 0:  # other DDP ranks only helped with the teacher
        return summary
    if summary.get("reused"):
        log.info("%s: label cache %s is complete (%d frames, %d pairs, residual %.4f %s), checked in %.1f s",
                 summary["scene"], cache.root, summary["frames"], summary["pairs"],
                 summary.get("residual", float("nan")), summary.get("unit", ""), summary["seconds"])
    else:
        log.info("%s: %d frames, %d pairs (%d predicted) in %.1f s (teacher %.1f s, %.1f pairs/s), alignment "
                 "residual %.4f %s, %.1f%% valid pixels -> %s", summary["scene"], summary["frames"], summary["pairs"],
                 summary["predicted_pairs"], summary["seconds"], summary["teacher_seconds"], summary["pairs_per_s"],
                 summary["residual"], summary["unit"], 100 * summary["valid_fraction"], cache.root)
    return summary


def main(argv: list[str] | None = None) -> int:
    from lit3d.cli import run

    argv = list(sys.argv[1:] if argv is None else argv)
    code = run("lit3d.label", partial(label, verify=VERIFY_FLAG in argv), [a for a in argv if a != VERIFY_FLAG])
    if "-h" in argv or "--help" in argv:
        print(f"\n{VERIFY_HELP}")
    return code


if __name__ == "__main__":
    sys.exit(main())
