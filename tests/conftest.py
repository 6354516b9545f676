"""Shared fixtures: tiny synthetic configurations that run in seconds on 2 CPU cores."""
from __future__ import annotations

from pathlib import Path

import pytest

from lit3d.config import FitConfig, load_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEVEN_SCENES_SAMPLE = SHARED / "data" / "7scenes-kitchen-sample"

TINY = [
    "data.num_frames=16", "data.resolution=[24,32]", "data.test_every=4", "data.val_every=4", "data.test_path_frames=4",
    "loader.resolution=[24,32]", "loader.batch_size=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    "trainer.check_val_every_n_epoch=1",
]
TINY_VIT = ["student=vit", "student.depth=1", "student.latent_dim=32", "student.num_heads=2", "student.patch_size=8"]


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(*overrides) -> FitConfig`` with cache and run folders under ``tmp_path``."""

    def make(*overrides: str) -> FitConfig:
        student = [] if any(o.startswith("student=") for o in overrides) else TINY_VIT
        return load_config([*TINY, *student, f"cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}",
                            *overrides])

    return make


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny test networks run fastest on one thread, and tests then don't fight over the 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
