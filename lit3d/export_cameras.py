"""``lit3d export-cameras RUN_DIR|CACHE_DIR [out=DIR] [format=colmap|tum|all] [points=N] [option=value ...]``.

Writes the cameras of a label cache (a run's, or a cache folder given directly) as alignment used or solved them:
the label grid's intrinsics and the camera-to-world poses in the labels' world frame and unit. ``format=colmap``
gives a COLMAP model, ``sparse/0/cameras.txt`` (PINHOLE, one camera per distinct K), ``images.txt``
(world-to-camera quaternion and translation per frame, image ``NAME.png``, its 2D points the sampled pixels) and
``points3D.txt`` (``points`` world points sampled from the labels, coloured from the cached images, each observed
by the frame it labels), or the ``.bin`` files with ``binary=true``, plus ``images/NAME.png`` (the cached images,
at the label grid the cameras describe), so that the folder opens in COLMAP and loads as ``data.format=colmap``;
``format=tum`` gives ``poses_tum.txt`` (``index tx ty tz qx qy qz qw`` camera-to-world, the header naming each
index's frame). Frames that alignment left without a pose are skipped (counted in the log).

Default output: ``RUN_DIR/cameras`` (``CACHE_DIR/cameras`` for a cache). Caches built before caches kept their
cameras are derived from the frames when their labels used the dataset's poses and intrinsics as given, otherwise
the error says how to rebuild them.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit3d.cache.store import CacheError, LabelCache
from lit3d.config import ConfigError
from lit3d.export.cameras import (LabelPoints, cache_cameras, colmap_model, frame_points, points_per_frame,
                                  write_colmap_binary, write_colmap_text, write_png, write_tum)
from lit3d.runs import run_label_cache

log = logging.getLogger("lit3d.export_cameras")

USAGE = "lit3d export-cameras RUN_DIR|CACHE_DIR [out=DIR] [format=colmap|tum|all] [points=N] [option=value ...]"
FORMATS = ("colmap", "tum", "all")


@dataclass
class ExportCamerasOptions:
    out: str = ""
    """Output folder (default RUN_DIR/cameras, or CACHE_DIR/cameras for a label cache folder)."""
    format: str = "all"
    """colmap (sparse/0 model and images/), tum (poses_tum.txt) or all."""
    points: int = 20000
    """World points sampled from the labels for points3D (spread evenly over the frames; 0 = none)."""
    binary: bool = False
    """Write the COLMAP model as cameras.bin / images.bin / points3D.bin instead of text."""
    images: bool = True
    """Write the cached images (label grid, the cameras' resolution) as images/NAME.png with the COLMAP model."""
    seed: int = 0
    """Seed of the point sample."""
    cache_dir: str = ""
    """Where the run's label cache is when the path recorded in its metrics.json has moved (its cache_dir)."""


def open_cache(path: str | Path, cache_dir: str = "") -> tuple[LabelCache, Path]:
    """The label cache of a run directory or a cache folder (:func:`lit3d.runs.run_label_cache`), and the default
    output folder."""
    return run_label_cache(path, cache_dir), Path(path) / "cameras"


def export_cameras(path: str | Path, opt: ExportCamerasOptions | None = None) -> dict[str, str | int]:
    """Write the camera files of a run's or a cache folder's label cache (see module doc); returns what was written."""
    opt = opt or ExportCamerasOptions()
    if opt.format not in FORMATS:
        raise ConfigError(f"invalid value for 'format': {opt.format!r}; valid values: {', '.join(FORMATS)}")
    cache, default_out = open_cache(path, opt.cache_dir)
    if not cache.is_complete():
        raise CacheError(f"label cache {cache.root} is incomplete; run lit3d label with the run's config to finish it")
    cams = cache_cameras(cache)
    out = Path(opt.out) if opt.out else default_out
    posed = cams.posed
    if len(posed) < len(cams.names):
        log.warning("%d of %d frames have no pose (not aligned): left out", len(cams.names) - len(posed),
                    len(cams.names))
    if len(set(cams.component_N[posed].tolist())) > 1 and cams.frame != "dataset":
        log.warning("the frames were aligned in %d separate components, each in its own frame: their poses do "
                    "not share one world", len(set(cams.component_N[posed].tolist())))
    summary: dict[str, str | int] = {"cache": str(cache.root), "frames": len(posed), "frame": cams.frame,
                                     "unit": cams.unit}
    if opt.format in ("tum", "all"):
        summary["tum"] = str(write_tum(out / "poses_tum.txt", cams))
    if opt.format in ("colmap", "all"):
        rng, parts = np.random.default_rng(opt.seed), []
        per_frame = points_per_frame(opt.points, len(posed))
        if per_frame or opt.images:
            for k in posed:  # one pass over the frames: images and point samples
                frame = cache.load_frame(cams.names[k])
                if opt.images:
                    write_png(out / "images" / f"{cams.names[k]}.png", frame["image"])
                if per_frame:
                    parts.append(frame_points(frame, int(k), per_frame, rng))
        model = colmap_model(cams, LabelPoints.concat(parts))
        write = write_colmap_binary if opt.binary else write_colmap_text
        summary["colmap"] = str(write(out / "sparse" / "0", model)[0].parent)
        summary["cameras"], summary["points"] = len(model.cameras), len(model.points.ids_P)
    log.info("cameras of %d frames (%s frame, unit %s%s) -> %s", len(posed), cams.frame, cams.unit,
             ", derived from the frames" if cams.derived else "", out)
    return summary


def main(argv: list[str] | None = None) -> int:
    from lit3d.cli import command, options_help, parse_options

    def body(args: list[str]) -> int:
        if "-h" in args or "--help" in args:
            print(options_help(ExportCamerasOptions, USAGE, (__doc__ or "").split("\n\n")[1]))
            return 0
        (path,), opt, extra = parse_options(args, ExportCamerasOptions, "path", USAGE)
        if extra:
            raise ConfigError(f"unknown option {extra[0].split('=')[0]!r}; options: "
                              f"{', '.join(ExportCamerasOptions.__dataclass_fields__)}")
        print(json.dumps(export_cameras(path, opt), indent=1))
        return 0

    return command("lit3d.export_cameras", body, argv)


if __name__ == "__main__":
    sys.exit(main())
