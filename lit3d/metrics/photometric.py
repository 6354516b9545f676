"""Direct (photometric) alignment of a camera pose against labelled views.

SIFT matches place a query camera within a few centimetres where their keypoints are precise; on smooth textures
or at low resolution they are not, and the pose is off by as much. Direct alignment uses every labelled pixel
instead: each training view's world points are projected into the query camera, and the pose is moved until the
query's grey values there agree with the training view's own (Gauss-Newton on the camera's six degrees of
freedom, Huber weights, a gain and an offset per view for exposure). Both images are blurred, coarse to fine, so
that a pose some centimetres off still lies in the basin of convergence. It assumes that a surface looks alike
from nearby views (matte surfaces) and that the labels sit where the image shows them; where they do not (depth
not registered to colour), it can drift, which is why :func:`lit3d.metrics.matching.refine_by_matching` keeps
its result only where the SIFT matches still agree.

Images are uint8 RGB (H, W, 3); pixel centres at integer coordinates; world points in the labels' frame and unit;
poses camera-to-world 4x4 in the same frame and unit.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from lit3d.geometry import invert_pose, project, transform_points

TEMPLATE_WIDTH = 128
"""Columns a training view is sampled to (:func:`dense_view`): every labelled pixel of a 96x128 view, every
second of a 192x256 one, so the cost per query does not grow with the label resolution."""

BLUR_PX = (4.0, 2.0, 1.0, 0.5)
"""Gaussian blur of the coarse-to-fine levels, in pixels of a 128-pixel-wide image (scaled with the image)."""


@dataclass
class DenseView:
    """A labelled view sampled for direct alignment, as :meth:`ViewDatabase.save
    <lit3d.metrics.matching.ViewDatabase.save>` stores it: grey values ``gray_hw`` (uint8; the image
    anti-aliased and taken every ``stride`` pixels), the labelled points at those pixels in the view's camera
    frame and the labels' unit ``pts_cam_hw3`` (float16 where every coordinate fits, else float32; NaN where
    there is no valid label) and the view's ``cam2world_44`` (labels' frame and unit)."""

    gray_hw: np.ndarray
    pts_cam_hw3: np.ndarray
    cam2world_44: np.ndarray
    stride: int

    def labelled(self) -> np.ndarray:
        """Where ``pts_cam_hw3`` holds a label, (h, w) bool."""
        return np.all(np.isfinite(self.pts_cam_hw3), axis=-1)

    def world_points(self) -> np.ndarray:
        """The world points ``pts_N3`` of the labelled pixels (row-major order, as ``gray_hw[labelled()]``)."""
        return transform_points(self.cam2world_44, self.pts_cam_hw3[self.labelled()].astype(np.float64))


def gray(image_HW3: np.ndarray) -> np.ndarray:
    """Grey values in 0..1 (float32) of a uint8 RGB image."""
    return cv2.cvtColor(np.ascontiguousarray(image_HW3, dtype=np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255


def _blur(image_hw: np.ndarray, sigma: float) -> np.ndarray:
    return image_hw if sigma <= 0.05 else cv2.GaussianBlur(image_hw, (0, 0), sigma)


def dense_view(view: dict[str, np.ndarray], cam2world_44: np.ndarray, width: int = TEMPLATE_WIDTH) -> DenseView:
    """A :class:`DenseView` of a labelled view (``image``, ``pts_world``, ``valid`` at the label grid) posed at
    ``cam2world_44``, sampled every ``round(W / width)`` pixels (labels nearest, never mixed across depth
    edges)."""
    W = view["valid"].shape[1]
    stride = max(1, int(round(W / width)))
    g_HW = _blur(gray(view["image"]), 0.5 * stride if stride > 1 else 0.0)
    pts_hw3 = np.asarray(view["pts_world"], dtype=np.float64)[::stride, ::stride]
    T_44 = np.asarray(cam2world_44, dtype=np.float64)
    pts_cam_hw3 = transform_points(invert_pose(T_44), pts_hw3)
    ok_hw = np.asarray(view["valid"], dtype=bool)[::stride, ::stride] & np.all(np.isfinite(pts_cam_hw3), axis=-1)
    pts_cam_hw3[~ok_hw] = np.nan
    fits = not ok_hw.any() or np.abs(pts_cam_hw3[ok_hw]).max() < np.finfo(np.float16).max / 2
    return DenseView(np.round(255 * g_HW[::stride, ::stride]).astype(np.uint8),
                     pts_cam_hw3.astype(np.float16 if fits else np.float32), T_44, stride)


def _sample(image_hw: np.ndarray, u_N: np.ndarray, v_N: np.ndarray) -> np.ndarray:
    """Bilinear samples of an image at pixels (u, v) that lie inside it (cv2.remap takes at most 32767 points a
    row, and these are tens of thousands of scattered points)."""
    H, W = image_hw.shape
    x0 = np.clip(np.floor(u_N).astype(int), 0, W - 2)
    y0 = np.clip(np.floor(v_N).astype(int), 0, H - 2)
    fx, fy = u_N - x0, v_N - y0
    return ((1 - fx) * (1 - fy) * image_hw[y0, x0] + fx * (1 - fy) * image_hw[y0, x0 + 1]
            + (1 - fx) * fy * image_hw[y0 + 1, x0] + fx * fy * image_hw[y0 + 1, x0 + 1])


def _affine_fit(template_N: np.ndarray, observed_N: np.ndarray, view_N: np.ndarray) -> np.ndarray:
    """Per view, the least-squares gain and offset mapping template grey values onto the observed ones."""
    out_N = np.empty_like(observed_N)
    for k in np.unique(view_N):
        m = view_N == k
        A_M2 = np.stack([template_N[m], np.ones(int(m.sum()))], axis=1)
        out_N[m] = A_M2 @ np.linalg.lstsq(A_M2, observed_N[m], rcond=None)[0]
    return out_N


@dataclass
class Alignment:
    """Outcome of :func:`align_photometric`: the pose (``None`` where it failed, with ``reason``) and the
    labelled pixels that constrained its finest level."""

    cam2world_44: np.ndarray | None
    pixels: int
    reason: str = ""


def align_photometric(image_HW3: np.ndarray, K_33: np.ndarray, cam2world_44: np.ndarray, views: list[DenseView],
                      blur_px: tuple[float, ...] = BLUR_PX, iterations: int = 10, min_pixels: int = 100
                      ) -> Alignment:
    """The query camera's pose (camera-to-world) refined from ``cam2world_44`` so that the labelled pixels of
    ``views`` (nearby training views), projected into the query image with intrinsics ``K_33``, see the grey
    values those views show. Fails (``cam2world_44`` None, with ``reason``) where fewer than ``min_pixels``
    project into the image or the grey values constrain no pose.
    """
    g_HW = gray(image_HW3)
    H, W = g_HW.shape
    K = np.asarray(K_33, dtype=np.float64)
    fx, fy = K[0, 0], K[1, 1]
    world2cam_44 = invert_pose(np.asarray(cam2world_44, dtype=np.float64))
    X_N3 = np.concatenate([v.world_points() for v in views] + [np.zeros((0, 3))])
    view_N = np.concatenate([np.full(int(v.labelled().sum()), k) for k, v in enumerate(views)] + [np.zeros(0, int)])
    pixels = 0
    for level in blur_px:
        q_HW = _blur(g_HW, level * W / TEMPLATE_WIDTH)
        dq_dx_HW = cv2.Sobel(q_HW, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)
        dq_dy_HW = cv2.Sobel(q_HW, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
        t_N = [np.zeros(0)]
        for v in views:  # the same blur in the view's pixels, of which its anti-aliasing already did some
            sigma, done = level * v.gray_hw.shape[1] / TEMPLATE_WIDTH, 0.5 if v.stride > 1 else 0.0
            t_hw = _blur(v.gray_hw.astype(np.float32) / 255, np.sqrt(max(sigma ** 2 - done ** 2, 0.0)))
            t_N.append(t_hw[v.labelled()].astype(np.float64))
        t_N = np.concatenate(t_N)
        for _ in range(iterations):
            Xc_N3 = transform_points(world2cam_44, X_N3)
            uv_N2, z_N = project(Xc_N3, K)  # NaN pixels behind the camera fail every test below
            u_N, v_N = uv_N2[:, 0], uv_N2[:, 1]
            with np.errstate(invalid="ignore"):
                use_N = (u_N > 0) & (u_N < W - 1) & (v_N > 0) & (v_N < H - 1)
            pixels = int(use_N.sum())
            if pixels < min_pixels:
                return Alignment(None, pixels, f"{pixels} labelled pixels project into the image, fewer than "
                                               f"{min_pixels}")
            Xc, z, u, v = Xc_N3[use_N], z_N[use_N], u_N[use_N], v_N[use_N]
            seen = _sample(q_HW, u, v)
            r = seen - _affine_fit(t_N[use_N], seen, view_N[use_N])
            huber = 1.345 * 1.4826 * np.median(np.abs(r)) + 1e-9  # Huber's 95 %-efficiency constant, robust scale
            w = huber / np.maximum(np.abs(r), huber)
            gx, gy = _sample(dq_dx_HW, u, v), _sample(dq_dy_HW, u, v)
            # d(grey)/d(camera point), then d(camera point)/d(translation, rotation) = [I | -[Xc]x]
            dI_N3 = np.stack([gx * fx / z, gy * fy / z, -(gx * fx * Xc[:, 0] + gy * fy * Xc[:, 1]) / z ** 2], 1)
            J_N6 = np.concatenate([dI_N3, np.cross(Xc, dI_N3)], axis=1)
            JtW_6N = (J_N6 * w[:, None]).T
            H_66 = JtW_6N @ J_N6
            try:
                step_6 = -np.linalg.solve(H_66 + 1e-6 * np.trace(H_66) / 6 * np.eye(6), JtW_6N @ r)
            except np.linalg.LinAlgError:
                step_6 = np.full(6, np.nan)
            if not np.all(np.isfinite(step_6)):
                return Alignment(None, pixels, "the grey values constrain no pose (a textureless view)")
            R_33 = cv2.Rodrigues(step_6[3:])[0]
            world2cam_44[:3, :3] = R_33 @ world2cam_44[:3, :3]
            world2cam_44[:3, 3] = R_33 @ world2cam_44[:3, 3] + step_6[:3]
            if np.linalg.norm(step_6) < 1e-8:
                break
    return Alignment(invert_pose(world2cam_44), pixels)
