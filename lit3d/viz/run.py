"""The figures of a run directory: loss curves, test-frame panels, teacher-vs-student point clouds."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from lit3d.runs import load_curves, predict
from lit3d.viz.figures import loss_curves, pointmap_panels
from lit3d.viz.pointcloud import pointcloud_html

log = logging.getLogger(__name__)


def predict_frames(module: torch.nn.Module, dataset, indices: list[int]) -> dict[str, np.ndarray]:
    """Student world points (N, H, W, 3) for dataset items, with their images, labels and masks."""
    items = [dataset[k] for k in indices]
    images = (torch.stack([it["image"] for it in items]).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    student, _ = predict(module, images, len(images), module.device)
    return {"image": images, "student": student,
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
                                   cameras=cameras, title=f"teacher vs student, {len(indices)} test frames",
                                   shared_js=True))
    return written
