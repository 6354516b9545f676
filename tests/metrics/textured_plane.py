"""A textured plane rendered from known cameras: images, world-point labels and validity, for the matching and
direct-alignment tests (exact labels, so any pose error is the method's)."""
from __future__ import annotations

import cv2
import numpy as np

from lit3d.geometry import look_at

H, W = 120, 160
K_33 = np.array([[140.0, 0.0, 79.5], [0.0, 140.0, 59.5], [0.0, 0.0, 1.0]])
TEXTURE_PX = 600  # the texture covers the world square [-1, 1]^2 of the plane z = 0


def texture(seed: int = 0) -> np.ndarray:
    """A random blob texture (uint8 RGB) with corners and blobs at several scales for SIFT."""
    rng = np.random.default_rng(seed)
    img = np.zeros((TEXTURE_PX, TEXTURE_PX, 3), np.float32)
    for sigma in (2.0, 5.0, 12.0):
        noise = rng.normal(size=(TEXTURE_PX, TEXTURE_PX, 3)).astype(np.float32)
        img += cv2.GaussianBlur(noise, (0, 0), sigma) * sigma
    img = (img - img.min()) / (img.max() - img.min())
    return (255 * img).astype(np.uint8)


def render(cam2world_44: np.ndarray, tex_HW3: np.ndarray) -> dict[str, np.ndarray]:
    """Image, world points and validity of the textured square seen by an OpenCV camera (ray-plane intersection)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    rays_HW3 = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K_33).T @ cam2world_44[:3, :3].T
    c = cam2world_44[:3, 3]
    s_HW = -c[2] / rays_HW3[..., 2]
    pts_HW3 = c + s_HW[..., None] * rays_HW3
    valid_HW = (s_HW > 0) & (np.abs(pts_HW3[..., :2]) < 0.98).all(-1)
    # texture pixel of each world point: x -> column, y -> row
    map_x = ((pts_HW3[..., 0] + 1) / 2 * TEXTURE_PX - 0.5).astype(np.float32)
    map_y = ((pts_HW3[..., 1] + 1) / 2 * TEXTURE_PX - 0.5).astype(np.float32)
    image = cv2.remap(tex_HW3, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    image[~valid_HW] = 0
    return {"image": image, "pts_world": pts_HW3, "valid": valid_HW}


def camera(eye) -> np.ndarray:
    return look_at(np.asarray(eye, float), np.array([0.05, -0.05, 0.0]), up_3=(0.0, 1.0, 0.0))
