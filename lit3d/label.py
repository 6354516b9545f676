"""``python -m lit3d.label [key=value ...]``: build or complete the label cache of a scene.

Runs the configured scene graph (``pairs.*``), teacher (``teacher.*``) and alignment (``align.*``) through
:func:`lit3d.cache.build_labels` and logs a summary. The cache is the one ``python -m lit3d.fit`` reads for the
same keys; killed at any point and started again, the command finishes only the missing work. Teacher inference
is a Lightning ``Trainer.predict``: ``trainer.devices=N`` (GPUs, or CPU processes with ``trainer.strategy=ddp``)
splits the pairs.

Examples::

    python -m lit3d.label data.format=folder data.root=../shared/data/7scenes-kitchen-sample
    python -m lit3d.label data.format=sevenscenes data.root=/data/7scenes/chess teacher=dust3r align.method=global
    python -m lit3d.label trainer.devices=2 trainer.accelerator=cpu trainer.strategy=ddp
"""
from __future__ import annotations

import logging
import sys

from lit3d.cache import build_labels
from lit3d.config import FitConfig

log = logging.getLogger("lit3d.label")


def label(cfg: FitConfig) -> dict:
    """Build or complete the label cache of ``cfg``; returns the summary of :func:`build_labels`."""
    cache, summary = build_labels(cfg)
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

    return run("lit3d.label", label, argv)


if __name__ == "__main__":
    sys.exit(main())
