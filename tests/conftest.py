"""Shared fixtures: tiny synthetic configurations that run in seconds on 2 CPU cores."""
from __future__ import annotations

from pathlib import Path

import pytest

from lit3d.config import FitConfig, load_config
from testkit import TINY, TINY_VIT

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SEVEN_SCENES_SAMPLE = SHARED / "data" / "7scenes-kitchen-sample"

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
