"""``python -m lit3d.bench align``: global alignment time, memory and accuracy from 8 to 1000+ images.

Deterministic synthetic pairwise predictions (``lit3d.align.synthetic``: smooth analytic depths, cameras on a
ring looking at a common ball, a random scale in [0.5, 2] per pair, 1 % depth noise, optional outlier pairs).
Each case runs in a fresh process so that its peak RSS is its own. ``time_s`` is wall time, ``cpu_s`` the
process's CPU time (all threads; less disturbed by other jobs on a shared machine), each the fastest of
``--repeats`` runs (the first pays one-off start-up costs). Errors are relative to the scene size: camera centres
after a Sim(3) fit to the true centres, and the median dense point error after the same Sim(3).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import time

import numpy as np
import torch

from lit3d.align.config import AlignConfig
from lit3d.align.synthetic import scene_graph
from lit3d.cli import OneLineArgumentParser
from lit3d.memory import rss_mb

log = logging.getLogger(__name__)
COLUMNS = ("N", "graph", "edges", "HxW", "px/img", "device", "time_s", "cpu_s", "rss_before_MB", "peak_rss_MB",
           "input_MB", "cuda_MB", "cam_err_med", "cam_err_max", "pt_err_med")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="python -m lit3d.bench align", description=__doc__.splitlines()[0])
    p.add_argument("--n", nargs="+", type=int, default=[8, 24, 100, 1000], help="numbers of images")
    p.add_argument("--graphs", nargs="+", default=["complete", "swin-3"], help="complete and/or swin-K")
    p.add_argument("--max-edges", type=int, default=10000, help="skip cases with more directed edges")
    p.add_argument("--resolution", default="48x64", help="HxW of the predictions")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--noise", type=float, default=0.01, help="relative depth noise")
    p.add_argument("--outliers", type=int, default=0, help="outlier pairs per case (wrong relative pose)")
    p.add_argument("--robust", default="none", help="align.robust: none or cauchy")
    p.add_argument("--iterations", type=int, default=AlignConfig.iterations)
    p.add_argument("--n-pixels", type=int, default=AlignConfig.n_pixels, help="pixels per image in the optimisation")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--repeats", type=_positive, default=1,
                   help="alignments per case; times are the fastest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help="run cases in this process (RSS then accumulates)")
    return p.parse_args(argv)


def run_case(n: int, graph: str, args: argparse.Namespace) -> dict:
    """Generate one case, align it and measure; returns a row of ``COLUMNS``."""
    from lit3d.align import global_alignment
    from lit3d.align.synthetic import make_predictions, make_scene
    from lit3d.geometry import umeyama_sim3

    if args.threads:
        torch.set_num_threads(args.threads)
    H, W = (int(v) for v in args.resolution.lower().split("x"))
    scene = make_scene(n, H, W, seed=args.seed)
    edges = scene_graph(n, graph)
    pred = make_predictions(scene, edges, noise=args.noise, n_outliers=args.outliers, seed=args.seed + 1)
    input_mb = sum(v.nbytes for k, v in pred.items() if k.startswith(("pts", "conf"))) / 2**20
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss_mb()  # interpreter, torch and the predictions
    seconds = cpu_seconds = float("inf")
    for _ in range(args.repeats):  # timings on a shared machine are noisy: the fastest run is the cost
        t0, c0 = time.perf_counter(), time.process_time()
        res = global_alignment(edges, pred["pts_i"], pred["pts_j_in_i"], pred["conf_i"], pred["conf_j"],
                               iterations=args.iterations, n_pixels=args.n_pixels, robust=args.robust,
                               device=str(device))
        seconds, cpu_seconds = min(seconds, time.perf_counter() - t0), min(cpu_seconds, time.process_time() - c0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    est, true = res.cam2world_N44[:, :3, 3], scene.cam2world_N44[:, :3, 3]
    s, R, t = umeyama_sim3(est, true)
    cam_err = np.linalg.norm(s * est @ R.T + t - true, axis=1) / scene.scene_size
    pt_err = []
    for k in range(n):  # per image: the dense true points of 1000 images need not be held at once
        p = s * res.pts_world_NHW3[k].astype(np.float64) @ R.T + t
        pt_err.append(np.linalg.norm(p - scene.world_points(k), axis=-1)[res.valid_NHW[k]])
    return dict(zip(COLUMNS, (n, graph, len(edges), args.resolution, res.stats["n_pixels"], str(device), seconds,
                              cpu_seconds, rss_before, peak_mb, input_mb, cuda_mb, float(np.median(cam_err)),
                              float(cam_err.max()), float(np.median(np.concatenate(pt_err))) / scene.scene_size)))


def _child(queue, n: int, graph: str, args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        queue.put(run_case(n, graph, args))
    except Exception as e:  # reported as a table row, the other cases still run
        queue.put({"N": n, "graph": graph, "error": f"{type(e).__name__}: {e}"})


def format_table(rows: list[dict]) -> str:
    def cell(column: str, v) -> str:
        if isinstance(v, float):
            return "-" if np.isnan(v) else (f"{v:.2e}" if column.endswith(("_med", "_max")) else f"{v:.1f}")
        return str(v)

    body = [[cell(c, r.get(c, "")) for c in COLUMNS] if "error" not in r else
            [str(r["N"]), r["graph"], r["error"]] for r in rows]
    widths = [max(len(c), *(len(b[k]) for b in body if len(b) == len(COLUMNS))) for k, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) if len(b) == len(COLUMNS) else "  ".join(b)
              for b in body]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    rows = []
    for n in args.n:
        for graph in args.graphs:
            n_edges = n * (n - 1) if graph == "complete" else len(scene_graph(n, graph))
            if n_edges > args.max_edges:
                log.info("skipping N=%d %s: %d edges > --max-edges %d", n, graph, n_edges, args.max_edges)
                continue
            log.info("aligning N=%d, graph %s", n, graph)
            if args.in_process:
                rows.append(run_case(n, graph, args))
                continue
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(queue, n, graph, args))
            proc.start()
            rows.append(queue.get())
            proc.join()
    cfg = {k: v for k, v in vars(args).items() if k not in ("n", "graphs", "in_process")}
    print(f"global alignment benchmark ({', '.join(f'{k}={v}' for k, v in cfg.items())}; torch default threads "
          f"{torch.get_num_threads()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    print(format_table(rows))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import sys

    main(sys.argv[1:])
