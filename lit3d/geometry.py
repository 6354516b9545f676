"""Camera geometry shared by every stage.

Conventions used across lit3d:
- cameras follow OpenCV axes (x right, y down, z forward); ``K_33`` maps camera points to pixels, with pixel
  centres at integer coordinates (u = column, v = row);
- poses are camera-to-world 4x4 matrices (``cam2world_44``), in metres when the scene is metric;
- pointmaps are (H, W, 3) arrays indexed ``[row, col]``.
Functions accept numpy arrays or torch tensors where noted and return the same kind.
"""
from __future__ import annotations

import numpy as np
import torch


def pixel_grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float pixel coordinates (u, v) of the pixel centres."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([u, v], axis=-1)


def backproject_depth(depth_HW: np.ndarray, K_33: np.ndarray) -> np.ndarray:
    """Camera-frame points (H, W, 3) of a z-depth map; depth and points share the depth's unit."""
    uv_HW2 = pixel_grid(*depth_HW.shape)
    fx, fy, cx, cy = K_33[0, 0], K_33[1, 1], K_33[0, 2], K_33[1, 2]
    x = (uv_HW2[..., 0] - cx) / fx * depth_HW
    y = (uv_HW2[..., 1] - cy) / fy * depth_HW
    return np.stack([x, y, depth_HW], axis=-1).astype(np.float32)


def transform_points(T_44, pts_N3):
    """Apply a 4x4 rigid/similarity transform to points (..., 3). Works for numpy and torch."""
    return pts_N3 @ T_44[:3, :3].T + T_44[:3, 3]


def invert_pose(T_44):
    """Inverse of a rigid 4x4 transform (numpy or torch)."""
    R, t = T_44[:3, :3], T_44[:3, 3]
    inv = T_44.clone() if isinstance(T_44, torch.Tensor) else T_44.copy()
    inv[:3, :3] = R.T
    inv[:3, 3] = -R.T @ t
    return inv


def project(pts_N3: np.ndarray, K_33: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) of camera-frame points and their depths (N,); points behind the camera get NaN pixels."""
    z = pts_N3[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (pts_N3 @ K_33.T)[..., :2] / z[..., None]
    uv[z <= 1e-9] = np.nan
    return uv, z


def look_at(eye_3: np.ndarray, target_3: np.ndarray, up_3=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world pose of an OpenCV camera at ``eye`` looking at ``target`` (image up ~ world ``up``)."""
    z = np.asarray(target_3, float) - np.asarray(eye_3, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up_3, float))  # camera x (right) = forward x up, since camera y points down
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye_3
    return T


def is_valid_pose(T_44: np.ndarray, atol: float = 1e-3) -> bool:
    """True when T is a finite 4x4 rigid transform (orthonormal rotation, det +1, last row 0 0 0 1)."""
    T_44 = np.asarray(T_44, dtype=np.float64)
    if T_44.shape != (4, 4) or not np.all(np.isfinite(T_44)):
        return False
    R = T_44[:3, :3]
    return (
        np.allclose(R @ R.T, np.eye(3), atol=atol)
        and abs(np.linalg.det(R) - 1.0) < atol
        and np.allclose(T_44[3], [0, 0, 0, 1], atol=atol)
    )


def nearest_rotation(R_33: np.ndarray) -> np.ndarray:
    """The rotation closest to R (SVD), e.g. for dataset poses stored with a few digits."""
    U, _, Vt = np.linalg.svd(np.asarray(R_33, dtype=np.float64))
    return U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle in degrees of the relative rotation R_a^T R_b.

    Both are snapped to exact rotations first: through arccos of the trace, a 1e-4 departure from orthonormality
    (7-Scenes poses) would read as an error of about 1 degree.
    """
    # ||R_a - R_b||_F = 2 sqrt(2) sin(angle / 2): stable for small angles, unlike arccos of the trace
    chord = np.linalg.norm(nearest_rotation(R_a) - nearest_rotation(R_b)) / (2 * np.sqrt(2))
    return float(np.degrees(2 * np.arcsin(np.clip(chord, 0.0, 1.0))))


def scale_intrinsics(K_33: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics after resizing an image by (sx, sy), keeping pixel centres consistent."""
    K = np.array(K_33, dtype=np.float64)
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def umeyama_sim3(src_BP3, dst_BP3, weights_BP=None, with_scale: bool = True):
    """Weighted least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991), batched over leading dims.

    ``src``/``dst`` are (..., P, 3) in any unit, ``weights`` (..., P) >= 0 (None = uniform). Returns ``(s, R, t)``
    with shapes (...), (..., 3, 3), (..., 3); ``s`` is 1 when ``with_scale`` is False. Numpy in -> numpy out
    (computed in float64); torch in -> torch out (in the input's dtype and device).
    """
    is_np = not isinstance(src_BP3, torch.Tensor)
    src = torch.as_tensor(np.asarray(src_BP3, np.float64)) if is_np else src_BP3
    dst = torch.as_tensor(np.asarray(dst_BP3, np.float64)) if is_np else dst_BP3.to(src.dtype)
    w = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device) if weights_BP is None else (
        torch.as_tensor(np.asarray(weights_BP, np.float64)) if is_np else weights_BP.to(src.dtype))
    w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(src.dtype).tiny)
    mu_src = (w[..., None] * src).sum(-2)
    mu_dst = (w[..., None] * dst).sum(-2)
    src_c, dst_c = src - mu_src[..., None, :], dst - mu_dst[..., None, :]
    cov_B33 = torch.einsum("...p,...pi,...pj->...ij", w, dst_c, src_c)
    U, S, Vh = torch.linalg.svd(cov_B33)
    # flip the weakest axis when the best orthogonal map is a reflection
    sign = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    D = torch.ones_like(S)
    D[..., 2] = sign
    R = U @ (D[..., None] * Vh)
    if with_scale:
        var_src = (w * (src_c**2).sum(-1)).sum(-1)
        s = (S * D).sum(-1) / var_src.clamp_min(torch.finfo(src.dtype).tiny)
    else:
        s = torch.ones(src.shape[:-2], dtype=src.dtype, device=src.device)
    t = mu_dst - s[..., None] * (R @ mu_src[..., None])[..., 0]
    return (s.numpy(), R.numpy(), t.numpy()) if is_np else (s, R, t)


def rotation_to_quaternion(R_33: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z), w >= 0, of a rotation matrix (snapped onto SO(3) first; Shepperd's method,
    stable for every angle)."""
    R = nearest_rotation(R_33)
    trace = np.trace(R)
    k = int(np.argmax([trace, R[0, 0], R[1, 1], R[2, 2]]))
    if k == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = np.array([s / 4, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s])
    else:
        i, j, m = k - 1, k % 3, (k + 1) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[m, m])
        q = np.empty(4)
        q[0] = (R[m, j] - R[j, m]) / s
        q[1 + i], q[1 + j], q[1 + m] = s / 4, (R[j, i] + R[i, j]) / s, (R[m, i] + R[i, m]) / s
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def quaternion_to_rotation(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrix of a quaternion (w, x, y, z) (normalised first)."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
