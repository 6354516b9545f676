"""Checked, lazily read edge predictions for global alignment: shape checks, non-finite masking, pixel sampling.

Predictions are never copied whole: they are read ``chunk`` edges at a time (numpy arrays, memory maps or
tensors), so the extra memory of alignment does not grow with the size of the predictions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)


def _shape(x) -> tuple[int, ...]:
    return tuple(x.shape)


def _to_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass
class EdgeInputs:
    """E directed edges (i, j) with DUSt3R-contract predictions (both pointmaps in camera-i frame)."""

    edges_E2: np.ndarray
    """(E, 2) image indices, local to ``n_images``."""
    n_images: int
    pts_i: object
    """(E_all, H, W, 3) image i's points, camera-i frame, teacher unit; read through ``edge_ids``."""
    pts_j_in_i: object
    """(E_all, H, W, 3) image j's points, camera-i frame."""
    conf_i: object
    """(E_all, H, W) confidences (DUSt3R: >= 1); weights are log(conf)."""
    conf_j: object
    valid_i: object = None
    """Optional (E_all, H, W) bool masks; False pixels are ignored."""
    valid_j: object = None
    edge_ids: np.ndarray = field(default=None)
    """(E,) rows of the arrays above that these edges are (a component's subset); None = all rows."""

    def __post_init__(self) -> None:
        if self.edge_ids is None:
            self.edge_ids = np.arange(len(self.edges_E2))

    @property
    def n_edges(self) -> int:
        return len(self.edges_E2)

    @property
    def hw(self) -> tuple[int, int]:
        return tuple(self.pts_i.shape[1:3])

    def subset(self, edge_mask_E: np.ndarray, image_ids: np.ndarray) -> "EdgeInputs":
        """The edges in ``edge_mask_E``, with images renumbered to positions in ``image_ids`` (sorted)."""
        remap = np.full(self.n_images, -1, np.int64)
        remap[image_ids] = np.arange(len(image_ids))
        return EdgeInputs(remap[self.edges_E2[edge_mask_E]], len(image_ids), self.pts_i, self.pts_j_in_i,
                          self.conf_i, self.conf_j, self.valid_i, self.valid_j, self.edge_ids[edge_mask_E])

    def read(self, k0: int, k1: int) -> dict[str, np.ndarray]:
        """Edges ``k0:k1`` as float32: ``pts_a``/``pts_b`` (e, H*W, 3) with masked pixels zeroed, ``conf_a``/``conf_b``
        (e, H*W), ``ok_a``/``ok_b`` masks, ``nonfinite_e`` (masked non-finite pixels per edge)."""
        ids = self.edge_ids[k0:k1]
        contiguous = len(ids) > 0 and ids[-1] - ids[0] == len(ids) - 1
        index = slice(int(ids[0]), int(ids[-1]) + 1) if contiguous else ids
        if not contiguous and isinstance(self.pts_i, torch.Tensor):
            index = torch.as_tensor(ids, device=self.pts_i.device)
        out, nonfinite_e = {}, np.zeros(len(ids), np.int64)
        for side, pts, conf, valid in (("a", self.pts_i, self.conf_i, self.valid_i),
                                       ("b", self.pts_j_in_i, self.conf_j, self.valid_j)):
            p = _to_numpy(pts[index], np.float32).reshape(len(ids), -1, 3)
            c = _to_numpy(conf[index], np.float32).reshape(len(ids), -1)
            finite = np.isfinite(p).all(-1) & np.isfinite(c)
            nonfinite_e += (~finite).sum(1)
            ok = finite & (c > 0)
            if valid is not None:
                ok &= _to_numpy(valid[index], bool).reshape(len(ids), -1)
            out[f"pts_{side}"] = np.where(ok[..., None], p, 0.0).astype(np.float32)
            out[f"conf_{side}"] = np.where(ok, c, 0.0).astype(np.float32)
            out[f"ok_{side}"] = ok
        out["nonfinite_e"] = nonfinite_e
        return out


def conf_weight(conf: np.ndarray | torch.Tensor):
    """DUSt3R's pixel weight log(conf), 0 for conf <= 1 and for masked pixels (conf 0)."""
    if isinstance(conf, torch.Tensor):
        return torch.log(conf.clamp_min(1.0))
    return np.log(np.maximum(conf, 1.0))


def check_inputs(edges, pts_i, pts_j_in_i, conf_i, conf_j, valid_i=None, valid_j=None,
                 n_images: int | None = None) -> EdgeInputs:
    """Validate shapes and indices (one-line ``ValueError`` naming the offending argument)."""
    edges_E2 = _to_numpy(edges, np.float64)
    if edges_E2.ndim != 2 or edges_E2.shape[1] != 2 or len(edges_E2) == 0:
        raise ValueError(f"global_alignment: edges must be a non-empty (E, 2) array, got shape {edges_E2.shape}")
    if not np.all(np.isfinite(edges_E2)) or not np.all(edges_E2 == np.round(edges_E2)):
        raise ValueError("global_alignment: edges must hold integer image indices")
    edges_E2 = edges_E2.astype(np.int64)
    E = len(edges_E2)
    if _shape(pts_i)[:1] != (E,) or len(_shape(pts_i)) != 4 or _shape(pts_i)[3] != 3:
        raise ValueError(f"global_alignment: pts_i has shape {_shape(pts_i)}, expected ({E}, H, W, 3) for {E} edges")
    H, W = _shape(pts_i)[1:3]
    for name, arr, want in (("pts_j_in_i", pts_j_in_i, (E, H, W, 3)), ("conf_i", conf_i, (E, H, W)),
                            ("conf_j", conf_j, (E, H, W)), ("valid_i", valid_i, (E, H, W)),
                            ("valid_j", valid_j, (E, H, W))):
        if arr is not None and _shape(arr) != want:
            raise ValueError(f"global_alignment: {name} has shape {_shape(arr)}, expected {want} like pts_i")
    if edges_E2.min() < 0:
        raise ValueError(f"global_alignment: negative image index {edges_E2.min()} in edges")
    n = int(edges_E2.max()) + 1 if n_images is None else int(n_images)
    if edges_E2.max() >= n:
        raise ValueError(f"global_alignment: edges refer to image {edges_E2.max()} but there are {n} images")
    loops = np.flatnonzero(edges_E2[:, 0] == edges_E2[:, 1])
    if len(loops):
        raise ValueError(f"global_alignment: edge {loops[0]} pairs image {edges_E2[loops[0], 0]} with itself")
    return EdgeInputs(edges_E2, n, pts_i, pts_j_in_i, conf_i, conf_j, valid_i, valid_j)


def sample_pixels(inp: EdgeInputs, n_pixels: int, mode: str, chunk: int) -> np.ndarray:
    """(N, P) flat pixel indices each image is optimised on (``row * W + col``), sorted per image."""
    H, W = inp.hw
    if n_pixels <= 0 or n_pixels >= H * W:
        return np.broadcast_to(np.arange(H * W), (inp.n_images, H * W)).copy()
    if mode not in ("grid", "confident"):
        raise ValueError(f"align.sampling: unknown mode {mode!r}; valid: grid, confident")
    f = np.sqrt(n_pixels / (H * W))
    rows, cols = max(1, round(H * f)), max(1, round(W * f))
    if mode == "grid":  # cell centres
        flat = (((np.arange(rows) + 0.5) * H / rows).astype(np.int64)[:, None] * W
                + ((np.arange(cols) + 0.5) * W / cols).astype(np.int64)[None, :]).ravel()
        return np.broadcast_to(flat, (inp.n_images, len(flat))).copy()
    # confident: the best pixel of every grid cell, so the samples still cover the whole image
    total = np.zeros((inp.n_images, H * W + 1), np.float32)
    total[:, -1] = -np.inf  # padding slot
    for k0 in range(0, inp.n_edges, chunk):
        d = inp.read(k0, min(k0 + chunk, inp.n_edges))
        np.add.at(total, inp.edges_E2[k0:k0 + chunk, 0], np.pad(conf_weight(d["conf_a"]), ((0, 0), (0, 1))))
        np.add.at(total, inp.edges_E2[k0:k0 + chunk, 1], np.pad(conf_weight(d["conf_b"]), ((0, 0), (0, 1))))
    cell = ((np.arange(H) * rows // H)[:, None] * cols + (np.arange(W) * cols // W)[None, :]).ravel()
    order = np.argsort(cell, kind="stable")
    sizes = np.bincount(cell, minlength=rows * cols)
    table = np.full((rows * cols, sizes.max()), H * W)  # (cells, pixels of the cell), padded
    slot = np.arange(H * W) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # position of each pixel in its cell
    table[np.repeat(np.arange(rows * cols), sizes), slot] = order
    best = total[:, table].argmax(-1)  # (N, cells)
    return np.sort(table[np.arange(rows * cols)[None, :], best], axis=1)


@dataclass
class Samples:
    """Edge predictions at the sampled pixels, as float32 tensors (``a``: image i's pixels, ``b``: image j's)."""

    pts_a_EP3: torch.Tensor
    pts_b_EP3: torch.Tensor
    conf_a_EP: torch.Tensor
    """Raw confidences (0 where masked)."""
    conf_b_EP: torch.Tensor
    pred_scale: float
    """The predictions above were divided by this (median predicted depth) for conditioning."""
    nonfinite: int
    """Non-finite pixels masked over all edges (dense count)."""
    nonfinite_edges: int


def gather_samples(inp: EdgeInputs, idx_NP: np.ndarray, chunk: int) -> Samples:
    """Read every edge once, keeping only each image's sampled pixels; memory O(E * P)."""
    E, P = inp.n_edges, idx_NP.shape[1]
    out = {k: np.zeros((E, P, 3) if k.startswith("pts") else (E, P), np.float32)
           for k in ("pts_a", "pts_b", "conf_a", "conf_b")}
    nonfinite, bad_edges = 0, 0
    for k0 in range(0, E, chunk):
        k1 = min(k0 + chunk, E)
        d = inp.read(k0, k1)
        nonfinite += int(d["nonfinite_e"].sum())
        bad_edges += int((d["nonfinite_e"] > 0).sum())
        for side, col in (("a", 0), ("b", 1)):
            idx = idx_NP[inp.edges_E2[k0:k1, col]]
            out[f"pts_{side}"][k0:k1] = np.take_along_axis(d[f"pts_{side}"], idx[..., None], axis=1)
            out[f"conf_{side}"][k0:k1] = np.take_along_axis(d[f"conf_{side}"], idx, axis=1)
    z = out["pts_a"][..., 2][out["conf_a"] > 1]
    z = z[z > 0]
    if len(z) == 0:
        raise ValueError("global_alignment: no pixel has a confidence above 1 and positive depth; nothing to align")
    scale = float(np.median(z))
    t = {k: torch.from_numpy(v / scale if k.startswith("pts") else v) for k, v in out.items()}
    return Samples(t["pts_a"], t["pts_b"], t["conf_a"], t["conf_b"], scale, nonfinite, bad_edges)
