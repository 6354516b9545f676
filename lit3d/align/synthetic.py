"""Deterministic synthetic pairwise predictions of a known scene, for alignment tests and benchmarks.

The scene (metres, z up): a ground plane z = 0, a ball of radius 0.6 resting on it at the origin and an enclosing
spherical room of radius 6, all intersected analytically, so every pixel has a smooth, exact z-depth. Cameras sit
on a jittered ring around the ball and look at it. Predictions follow DUSt3R's contract: both pointmaps of edge
(i, j) in camera-i frame, multiplied by a random per-edge scale (the teacher's unit is arbitrary).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lit3d.geometry import backproject_depth, invert_pose, look_at, transform_points

BALL_CENTRE, BALL_RADIUS, ROOM_RADIUS = np.array([0.0, 0.0, 0.6]), 0.6, 6.0


@dataclass
class SyntheticScene:
    cam2world_N44: np.ndarray
    """True camera-to-world poses, metres, OpenCV axes."""
    K_33: np.ndarray
    """Shared intrinsics, principal point at (W/2, H/2) as DUSt3R's optimiser assumes."""
    depth_NHW: np.ndarray
    """True z-depth per image, metres, float32."""
    scene_size: float
    """Median distance of the scene's world points to their centroid, metres (the error scale)."""

    @property
    def n_images(self) -> int:
        return len(self.cam2world_N44)

    def world_points(self, index: int) -> np.ndarray:
        """(H, W, 3) true world points of image ``index``, metres."""
        return transform_points(self.cam2world_N44[index], backproject_depth(self.depth_NHW[index], self.K_33))


def _raycast_depth(cam2world_44: np.ndarray, K_33: np.ndarray, height: int, width: int) -> np.ndarray:
    """z-depth (H, W) of the analytic scene; rays have camera z = 1, so the ray parameter is the depth."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays_cam = np.stack([(u - K_33[0, 2]) / K_33[0, 0], (v - K_33[1, 2]) / K_33[1, 1], np.ones_like(u)], -1)
    d = rays_cam @ cam2world_44[:3, :3].T
    c = cam2world_44[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(d[..., 2] < 0, -c[2] / d[..., 2], np.inf)
    a = (d**2).sum(-1)

    def roots(centre: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        b = d @ (c - centre)
        disc = b**2 - a * (((c - centre) ** 2).sum() - radius**2)
        sq = np.sqrt(np.maximum(disc, 0))
        near, far = (-b - sq) / a, (-b + sq) / a
        return np.where((disc >= 0) & (near > 0), near, np.inf), far

    ball, _ = roots(BALL_CENTRE, BALL_RADIUS)
    _, room = roots(np.zeros(3), ROOM_RADIUS)  # the camera is inside the room: the far root
    return np.minimum(np.minimum(ground, ball), room).astype(np.float32)


def make_scene(n_images: int, height: int = 48, width: int = 64, seed: int = 0) -> SyntheticScene:
    """``n_images`` cameras on a jittered ring (radius ~2.5 m, height ~1.3 m) looking at the ball."""
    rng = np.random.default_rng(seed)
    f = 0.9 * width
    K_33 = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    angles = 2 * np.pi * (np.arange(n_images) + rng.uniform(-0.2, 0.2, n_images)) / n_images
    radius = 2.5 + rng.uniform(-0.2, 0.2, n_images)
    eyes = np.stack([radius * np.cos(angles), radius * np.sin(angles), 1.3 + rng.uniform(-0.3, 0.3, n_images)], -1)
    targets = BALL_CENTRE + rng.uniform(-0.3, 0.3, (n_images, 3))
    cam2world = np.stack([look_at(e, t) for e, t in zip(eyes, targets)])
    depth = np.stack([_raycast_depth(T, K_33, height, width) for T in cam2world])
    step = max(1, n_images // 16)  # a few views suffice for a stable median
    pts = np.concatenate([transform_points(cam2world[k], backproject_depth(depth[k], K_33)).reshape(-1, 3)
                          for k in range(0, n_images, step)])
    size = float(np.median(np.linalg.norm(pts - pts.mean(0), axis=-1)))
    return SyntheticScene(cam2world, K_33, depth, size)


def scene_graph(n_images: int, graph: str = "complete", symmetrize: bool = True) -> np.ndarray:
    """Directed edges (E, 2): ``complete`` or ``swin-K`` (cyclic window of K successors), DUSt3R style."""
    if graph == "complete":
        pairs = {(i, j) for i in range(n_images) for j in range(i + 1, n_images)}
    elif graph.startswith("swin"):
        k = int(graph.split("-")[1]) if "-" in graph else 3
        pairs = {(min(i, (i + d) % n_images), max(i, (i + d) % n_images))
                 for i in range(n_images) for d in range(1, k + 1) if (i + d) % n_images != i}
    else:
        raise ValueError(f"unknown graph {graph!r}; valid: complete, swin-K")
    pairs = sorted(pairs)
    if symmetrize:
        pairs += [(j, i) for i, j in pairs]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _random_rotation(rng: np.random.Generator, angle_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.radians(angle_deg)
    A = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * A + (1 - np.cos(a)) * A @ A


def make_predictions(scene: SyntheticScene, edges_E2: np.ndarray, noise: float = 0.01,
                     scale_range: tuple[float, float] = (0.5, 2.0), n_outliers: int = 0, seed: int = 0) -> dict:
    """DUSt3R-contract predictions for ``edges``: ``pts_i``, ``pts_j_in_i`` (E, H, W, 3) float32 in camera-i frame
    times a per-edge scale ``scale_E`` drawn log-uniformly from ``scale_range``; ``conf_i``, ``conf_j`` (E, H, W)
    in [~2.6, ~8.4]. ``noise`` is the relative std of the depth noise, independent per pixel and edge.
    ``n_outliers`` edges (listed in ``outlier_E``) get image j's points with a wrong relative pose (30 deg, 0.5 m).
    """
    rng = np.random.default_rng(seed)
    E = len(edges_E2)
    N, H, W = scene.depth_NHW.shape
    scale_E = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), E))
    outlier_E = np.zeros(E, bool)
    outlier_E[rng.choice(E, size=min(n_outliers, E), replace=False)] = True
    v, u = np.mgrid[0:H, 0:W]
    r2 = ((u - W / 2) / (W / 2)) ** 2 + ((v - H / 2) / (H / 2)) ** 2
    conf_HW = (1 + np.exp(2.0 - 0.75 * r2 + 0.3 * np.sin(u / 5.0) * np.cos(v / 4.0))).astype(np.float32)
    world2cam = np.stack([invert_pose(T) for T in scene.cam2world_N44])
    out = {"pts_i": np.empty((E, H, W, 3), np.float32), "pts_j_in_i": np.empty((E, H, W, 3), np.float32),
           "conf_i": np.empty((E, H, W), np.float32), "conf_j": np.empty((E, H, W), np.float32)}
    for e, (i, j) in enumerate(edges_E2):
        d_i = scene.depth_NHW[i] * (1 + noise * rng.standard_normal((H, W)))
        d_j = scene.depth_NHW[j] * (1 + noise * rng.standard_normal((H, W)))
        j2i_44 = world2cam[i] @ scene.cam2world_N44[j]
        if outlier_E[e]:
            j2i_44 = j2i_44.copy()
            j2i_44[:3, :3] = _random_rotation(rng, 30.0) @ j2i_44[:3, :3]
            j2i_44[:3, 3] += 0.5 * _random_rotation(rng, 90.0)[:, 0]
        out["pts_i"][e] = scale_E[e] * backproject_depth(d_i.astype(np.float32), scene.K_33)
        out["pts_j_in_i"][e] = scale_E[e] * transform_points(j2i_44, backproject_depth(d_j.astype(np.float32),
                                                                                        scene.K_33))
        out["conf_i"][e] = conf_HW * rng.uniform(0.9, 1.1)
        out["conf_j"][e] = conf_HW * rng.uniform(0.9, 1.1)
    out["scale_E"], out["outlier_E"] = scale_E, outlier_E
    return out
