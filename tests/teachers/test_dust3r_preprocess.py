"""DUSt3R preprocessing: sizes of the official ``load_images`` and pixel-consistent intrinsics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit3d.geometry import project
from lit3d.teachers.dust3r import dust3r_frame_transform, load_image
from lit3d.teachers.dust3r.preprocess import grid_to_source, source_to_grid

# (width, height) -> (width, height) at 512, from the contract (verified on the official code)
SIZES_512 = {(640, 480): (512, 384), (1920, 1080): (512, 288), (1080, 1920): (288, 512), (3000, 2000): (512, 336),
             (4032, 3024): (512, 384), (1000, 1000): (512, 384), (500, 300): (512, 304)}


@pytest.mark.parametrize("source, expected", SIZES_512.items())
def test_output_sizes(source: tuple[int, int], expected: tuple[int, int]) -> None:
    w, h = source
    assert dust3r_frame_transform(h, w, 512).output_size[::-1] == expected
    assert dust3r_frame_transform(h, w, 224).output_size == (224, 224)


def test_square_ok_keeps_square() -> None:
    assert dust3r_frame_transform(1000, 1000, 512, square_ok=True).output_size == (512, 512)


@pytest.mark.parametrize("source", [(640, 480), (1920, 1080), (1080, 1920), (3000, 2000), (500, 300)])
@pytest.mark.parametrize("resolution", [512, 224])
def test_intrinsics_project_consistently(source: tuple[int, int], resolution: int) -> None:
    """A 3D point lands on the output pixel that the resize + crop moves its source pixel to."""
    w, h = source
    t = dust3r_frame_transform(h, w, resolution)
    K = np.array([[0.9 * w, 0, w / 2 - 3.2], [0, 0.9 * w, h / 2 + 1.7], [0, 0, 1]])
    pts_N3 = np.random.default_rng(0).uniform([-1, -1, 2], [1, 1, 5], size=(50, 3))
    uv_src, _ = project(pts_N3, K)
    uv_out, _ = project(pts_N3, t.intrinsics(K))
    (rh, rw), (top, left) = t.resized, t.crop[:2]
    expected = np.stack([(uv_src[:, 0] + 0.5) * rw / w - 0.5 - left, (uv_src[:, 1] + 0.5) * rh / h - 0.5 - top], -1)
    np.testing.assert_allclose(uv_out, expected, atol=1e-9)
    np.testing.assert_allclose(source_to_grid(t, uv_src), expected, atol=1e-9)
    np.testing.assert_allclose(grid_to_source(t, uv_out), uv_src, atol=1e-9)  # labels map back to the source


@pytest.mark.parametrize("source, resolution", [((1920, 1080), 512), ((500, 300), 512), ((640, 480), 224)])
def test_image_pixels_line_up_with_intrinsics(source: tuple[int, int], resolution: int) -> None:
    """Resample a ramp image whose value is the source column: output pixels read back where K says."""
    w, h = source
    t = dust3r_frame_transform(h, w, resolution)
    u_HW = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    K = np.eye(3)
    K_out = t.intrinsics(K)
    out_hw = t.image(np.ascontiguousarray(u_HW))
    cols = np.arange(out_hw.shape[1])
    # output pixel u' sees the ray x = (u' - cx') / fx', i.e. source column fx * x + cx
    expected = (cols - K_out[0, 2]) / K_out[0, 0]
    inner = slice(8, -8)  # the resampling kernels need support inside the image
    np.testing.assert_allclose(out_hw[out_hw.shape[0] // 2, inner], expected[inner], atol=0.05)


def test_load_image(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(300, 500, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    img, t = load_image(tmp_path / "im.png", 512)
    assert img.shape == (1, 3, 304, 512) and t.source == (300, 500)
    assert -1 <= img.min() and img.max() <= 1
    np.testing.assert_allclose(((img[0].permute(1, 2, 0).numpy() + 1) * 127.5), t.image(rgb), atol=1e-4)
