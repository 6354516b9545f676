"""``python -m lit3d.bench label``: labelling time and peak memory on synthetic scenes of growing size.

For each size, a fresh process renders the synthetic scene (cached in a temporary ``cache_dir``), then another
fresh process labels it (``build_labels``: teacher, alignment, frames), so that each peak resident memory
(``VmHWM``) is that step's own. Defaults: depth teacher, ``pairs.graph=swin-3``, ``align.method=known_poses``,
96x128 labels, CPU; any config key overrides them (``align.method=global`` measures global alignment). The ratio
column is each size's labelling peak over the smallest size's: near 1 when memory does not grow with the number of
frames.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

USAGE = ("usage: lit3d bench label [frames=500,1000,5000] [json=PATH] [key=value ...]   "
         "(config keys: lit3d label --help)")
DEFAULTS = ["teacher=depth", "pairs.graph=swin-3", "align.method=known_poses", "data.format=synthetic",
            "data.resolution=[96,128]", "trainer.accelerator=cpu", "trainer.devices=1",
            "trainer.enable_progress_bar=false"]
COLUMNS = ("frames", "labelled", "pairs", "seconds", "s_per_frame", "teacher_s", "peak_rss_MB", "ratio",
           "render_s", "render_peak_MB")


def parse_args(argv: list[str]) -> tuple[list[int], str, list[str]]:
    """Sizes (``frames=``), JSON path (``json=``) and the remaining config overrides."""
    sizes, json_path, overrides = [500, 1000, 5000], "", []
    for a in argv:
        if a.startswith("frames="):
            try:
                sizes = [int(v) for v in a[len("frames="):].split(",") if v]
            except ValueError:
                raise ValueError(f"frames: expected numbers separated by commas, e.g. frames=500,1000; "
                                 f"got {a[len('frames='):]!r}") from None
            if not sizes or min(sizes) < 2:
                raise ValueError(f"frames: every size must be at least 2, got {a[len('frames='):]!r}")
        elif a.startswith("json="):
            json_path = a[len("json="):]
        elif a.startswith("data.num_frames=") or a.startswith("cache_dir="):
            raise ValueError(f"{a.split('=')[0]}: set by the benchmark (use frames=...)")
        else:
            overrides.append(a)
    return sizes, json_path, overrides


def _render(overrides: list[str]) -> dict:
    from lit3d.memory import peak_rss_mb
    from lit3d.config import load_config
    from lit3d.data import load_scene

    cfg = load_config(overrides)
    t0 = time.perf_counter()
    load_scene(cfg.data, cfg.cache_dir)
    return {"render_s": time.perf_counter() - t0, "render_peak_MB": peak_rss_mb()}


def _label(overrides: list[str]) -> dict:
    from lit3d.cache import build_labels
    from lit3d.config import load_config

    _, s = build_labels(load_config(overrides))
    return {"labelled": s["frames"], "pairs": s["pairs"], "seconds": s["seconds"],
            "s_per_frame": s["seconds"] / s["frames"], "teacher_s": s["teacher_seconds"],
            "peak_rss_MB": s["peak_rss_mb"]}


def _child(queue, step, overrides: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        queue.put(step(overrides))
    except Exception as e:  # reported as a table row, the other sizes still run
        queue.put({"error": f"{type(e).__name__}: {e}"})


def _in_fresh_process(step, overrides: list[str]) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, step, overrides))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def measure(sizes: list[int], overrides: list[str]) -> list[dict]:
    """One row per size (see ``COLUMNS``), each labelled in its own temporary cache folder."""
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"lit3d-bench-label-{n}-") as tmp:
            args = [*DEFAULTS, *overrides, f"data.num_frames={n}", f"cache_dir={tmp}"]
            log.info("synthetic scene of %d frames: rendering, then labelling in %s", n, tmp)
            row = {"frames": n, **_in_fresh_process(_render, args)}
            if "error" not in row:
                row.update(_in_fresh_process(_label, args))
        rows.append(row)
    base = next((r["peak_rss_MB"] for r in rows if "peak_rss_MB" in r), float("nan"))
    for r in rows:
        if "peak_rss_MB" in r:
            r["ratio"] = r["peak_rss_MB"] / base
    return rows


def format_table(rows: list[dict]) -> str:
    def cell(column: str, v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if column in ("s_per_frame", "ratio") else f"{v:.1f}"
        return str(v)

    body = [[cell(c, r.get(c, "")) for c in COLUMNS] if "error" not in r else [str(r["frames"]), r["error"]]
            for r in rows]
    widths = [max([len(c), *(len(b[k]) for b in body if len(b) == len(COLUMNS))]) for k, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) if len(b) == len(COLUMNS) else "  ".join(b)
              for b in body]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        print(f"{USAGE}\n\n{__doc__.split(chr(10) + chr(10), 1)[1]}")
        return
    sizes, json_path, overrides = parse_args(argv)
    from lit3d.config import load_config

    load_config([*DEFAULTS, *overrides])  # a mistyped key stops here, not in every child
    rows = measure(sizes, overrides)
    print(f"label benchmark ({' '.join([*DEFAULTS, *overrides])}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print(format_table(rows))
    if json_path:
        from lit3d.files import atomic_write_bytes

        table = {"overrides": [*DEFAULTS, *overrides], "rows": rows}
        atomic_write_bytes(Path(json_path), json.dumps(table, indent=1, default=str).encode())
        log.info("wrote %s", json_path)
