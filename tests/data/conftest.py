"""Generated fixtures in the 12Scenes, 7-Scenes and flat-folder layouts (tiny, written into tmp_path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scene_fixtures import make_12scenes, make_7scenes, make_folder, make_renders


@pytest.fixture(scope="session")
def renders() -> dict[str, np.ndarray]:
    return make_renders()


@pytest.fixture
def twelvescenes_room(tmp_path, renders) -> Path:
    return make_12scenes(tmp_path / "apt1" / "kitchen", renders)


@pytest.fixture
def sevenscenes_scene(tmp_path) -> Path:
    return make_7scenes(tmp_path / "chess")


@pytest.fixture
def frame_folder(tmp_path, renders) -> Path:
    return make_folder(tmp_path / "capture", renders)
