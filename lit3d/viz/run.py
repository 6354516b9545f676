"""The figures of a run directory: loss curves, test-frame panels, teacher-vs-student point clouds."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from lit3d.viz.figures import loss_curves, pointmap_panels
from lit3d.viz.pointcloud import pointcloud_html

log = logging.getLogger(__name__)


def load_curves(run_dir: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """``{'train': (steps, loss), 'val': (steps, loss)}`` from the run's CSV log (epoch-level values)."""
    path = Path(run_dir) / "metrics.csv"
    series: dict[str, tuple[list[float], list[float]]] = {"train": ([], []), "val": ([], [])}
    if not path.is_file():
        return series
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for name, key in (("train", "train/loss_epoch"), ("val", "val/loss")):
                if row.get(key):
                    series[name][0].append(float(row["step"]))
                    series[name][1].append(float(row[key]))
    return series


@torch.no_grad()
def predict_frames(module: torch.nn.Module, dataset, indices: list[int]) -> dict[str, np.ndarray]:
    """Student world points (N, H, W, 3) for dataset items, with their images, labels and masks."""
    module.eval()
    items = [dataset[k] for k in indices]
    images = torch.stack([it["image"] for it in items])
    pred = module(images.to(module.device)).cpu()
    return {"image": (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
            "student": pred.permute(0, 2, 3, 1).numpy(),
            "teacher": torch.stack([it["pts_world"] for it in items]).permute(0, 2, 3, 1).numpy(),
            "valid": torch.stack([it["valid"] for it in items]).numpy(),
            "K": torch.stack([it["K"] for it in items]).numpy(),
            "cam2world": torch.stack([it["cam2world"] for it in items]).numpy()}


def write_run_figures(run_dir: str | Path, module: torch.nn.Module, dataset, n_frames: int = 4) -> list[Path]:
    """Write loss_curves.png, test_frames.png and pointclouds.html into ``run_dir``."""
    run_dir = Path(run_dir)
    written = [loss_curves(run_dir / "loss_curves.png", {run_dir.name: load_curves(run_dir)}, xlabel="step")]
    indices = np.linspace(0, len(dataset) - 1, min(n_frames, len(dataset))).round().astype(int).tolist()
    p = predict_frames(module, dataset, indices)
    names = [dataset.names[k] for k in indices]
    written.append(pointmap_panels(run_dir / "test_frames.png", p["image"], p["teacher"], p["student"], p["valid"],
                                   titles=names))
    v = p["valid"]
    cameras = None
    if np.isfinite(p["cam2world"]).all():
        hw = v.shape[1:]
        cameras = {"cameras": [(c, K, hw) for c, K in zip(p["cam2world"], p["K"])]}
    written.append(pointcloud_html(run_dir / "pointclouds.html",
                                   {"teacher": (p["teacher"][v], p["image"][v]), "student": (p["student"][v], p["image"][v])},
                                   cameras=cameras, title=f"teacher vs student, {len(indices)} test frames"))
    return written
