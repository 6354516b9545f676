"""Dense world pointmaps from a solved alignment, fused frame by frame (memory: one frame's views at a time).

With poses, intrinsics and edge similarities fixed, the depth of a pixel that minimises the weighted squared
distance to every edge's prediction of it is closed-form: d = sum w (r . q) / (|r|^2 sum w), with r the pixel's
z = 1 ray and q a prediction in that camera's frame. Confidences are fused like the known-pose method (the
confidence-weighted mean confidence). A frame's label depends only on its own views
(:class:`lit3d.align.frame_views.FrameViews`), so frames are fused one after the other, each from its views read
by edge id, and handed on as they come (the label cache writes and drops them): the dense stage never holds
every frame. Residuals of a frame's views follow at once.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from lit3d.align.frame_views import EdgeResiduals, FrameViews
from lit3d.align.inputs import EdgeInputs, conf_weight
from lit3d.align.known_poses import FusedFrame
from lit3d.align.optimize import PROGRESS_STEPS
from lit3d.align.result import AlignResult

log = logging.getLogger(__name__)


@dataclass
class Solution:
    """A solved alignment in the output frame; edge similarities act on the raw (teacher-unit) predictions."""

    cam2world_N44: np.ndarray
    K_N33: np.ndarray
    s_E: np.ndarray
    R_E33: np.ndarray
    t_E3: np.ndarray
    side_weight_E2: np.ndarray
    """Extra weight of each edge's view of image i / image j (robust down-weighting of outlier edges)."""


@dataclass
class SolvedAlignment:
    """What global alignment's sparse stage solved: with the predictions, all that the dense fusion needs. Its size
    is O(frames + edges), so a label cache stores it until complete, and a resumed build fuses its remaining
    frames from the very same solution."""

    sol: Solution
    """Cameras (NaN for frames in no edge unless known) and edge similarities, in the output frame."""
    frame: str
    """``dataset`` or ``first_camera``, as :class:`AlignResult`."""
    unit: str
    """``m``, ``normalised`` (or a dataset's own unit), as :class:`AlignResult`."""
    min_conf: float
    """Pixels whose fused confidence is below this are invalid."""
    chunk: int
    """Views of one frame processed at once (bounds the extra memory)."""
    device: str
    """torch device of the fusion."""
    one_thread_N: np.ndarray
    """(N,) bool: frames fused on one torch CPU thread (small problems, as they were solved)."""
    component_N: np.ndarray | None = None
    """(N,) connected component of each frame (-1: in no edge) when components were aligned separately; the
    residual is then the mean of the edges' residuals."""
    stats: dict = field(default_factory=dict)
    """Diagnostics of the sparse stage (JSON-able)."""

    REQUIRED = (*Solution.__dataclass_fields__, "one_thread_N", "solved_meta")
    """Arrays that :meth:`to_arrays` always writes (``component_N`` only with components)."""

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for ``np.savez``; :meth:`from_arrays` restores them exactly."""
        arrays = {k: np.asarray(getattr(self.sol, k)) for k in Solution.__dataclass_fields__}
        arrays["one_thread_N"] = np.asarray(self.one_thread_N, bool)
        if self.component_N is not None:
            arrays["component_N"] = np.asarray(self.component_N)
        meta = {"frame": self.frame, "unit": self.unit, "min_conf": self.min_conf, "chunk": self.chunk,
                "device": self.device, "stats": self.stats}
        arrays["solved_meta"] = np.array(json.dumps(meta, default=float))
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "SolvedAlignment":
        meta = json.loads(str(arrays["solved_meta"]))
        sol = Solution(**{k: np.asarray(arrays[k]) for k in Solution.__dataclass_fields__})
        component = np.asarray(arrays["component_N"]) if "component_N" in arrays else None
        return cls(sol, meta["frame"], meta["unit"], meta["min_conf"], meta["chunk"], meta["device"],
                   np.asarray(arrays["one_thread_N"], bool), component, meta["stats"])


@contextmanager
def one_torch_thread(enabled: bool):
    """Run the block on one torch CPU thread when ``enabled``, then restore the thread count."""
    before = torch.get_num_threads()
    single = enabled and before > 1
    if single:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if single:
            torch.set_num_threads(before)


def _rays(K_B33: torch.Tensor, uv_Q2: torch.Tensor) -> torch.Tensor:
    x = (uv_Q2[None, :, 0] - K_B33[:, None, 0, 2]) / K_B33[:, None, 0, 0]
    y = (uv_Q2[None, :, 1] - K_B33[:, None, 1, 2]) / K_B33[:, None, 1, 1]
    return torch.stack([x, y, torch.ones_like(x)], -1)


class DenseFusion:
    """Closed-form dense fusion of a :class:`SolvedAlignment`, one frame at a time: iterate :meth:`frames` (the
    label cache writes each frame and drops it) or call :meth:`result` (every frame in memory). ``residual`` then
    covers the views of the frames fused so far. Exposes the cameras as :class:`AlignResult` does."""

    def __init__(self, inp: EdgeInputs, solved: SolvedAlignment):
        self.inp, self.solved, self.sol = inp, solved, solved.sol
        self.frame, self.unit, self.component_N = solved.frame, solved.unit, solved.component_N
        self.min_conf, self.chunk, self.device = solved.min_conf, max(1, solved.chunk), torch.device(solved.device)
        self.dev = dict(device=self.device, dtype=torch.float32)
        H, W = inp.hw
        v, u = torch.meshgrid(torch.arange(H, **self.dev), torch.arange(W, **self.dev), indexing="ij")
        self.uv_Q2 = torch.stack([u.reshape(-1), v.reshape(-1)], -1)
        self.views = FrameViews(inp.edges_E2, inp.n_images)
        self.residuals = EdgeResiduals(inp.n_edges)
        self.valid_pixels = self.pixels = self.fused = 0
        self.seconds = 0.0

    @property
    def cam2world_N44(self) -> np.ndarray:
        return self.sol.cam2world_N44

    @property
    def K_N33(self) -> np.ndarray:
        return self.sol.K_N33

    @property
    def focals_N(self) -> np.ndarray:
        return 0.5 * (self.sol.K_N33[:, 0, 0] + self.sol.K_N33[:, 1, 1])

    @property
    def residual(self) -> float:
        """Mean weighted distance of the fused views to their frame's points (with components: mean over edges)."""
        if self.component_N is not None:
            return float(self.residuals.edge_residual_E.mean())
        return self.residuals.residual

    @property
    def edge_residual_E(self) -> np.ndarray:
        return self.residuals.edge_residual_E

    def frames(self, indices: Iterable[int] | None = None) -> Iterator[FusedFrame]:
        """Fused frames ``indices`` (default: all), one at a time; logs progress every 10 %."""
        indices = range(self.inp.n_images) if indices is None else list(indices)
        every = max(1, math.ceil(len(indices) / PROGRESS_STEPS))
        for k, n in enumerate(indices):
            yield self.fuse_frame(int(n))
            if (k + 1) % every == 0 or k + 1 == len(indices):
                log.info("global alignment: dense fusion %d/%d frames (%.1f s)", k + 1, len(indices), self.seconds)

    def fuse_frame(self, n: int) -> FusedFrame:
        """Frame ``n`` as a :class:`FusedFrame` (a frame in no edge: invalid, confidence 1)."""
        t0 = time.perf_counter()
        H, W = self.inp.hw
        if self.views.count(n) == 0:
            pts, conf, valid = np.zeros((H * W, 3), np.float32), np.ones(H * W, np.float32), np.zeros(H * W, bool)
        else:
            with one_torch_thread(bool(self.solved.one_thread_N[n])):
                pts, conf, valid = self.fuse(n)
        self.valid_pixels += int(valid.sum())
        self.pixels += valid.size
        self.fused += 1
        self.seconds += time.perf_counter() - t0
        return FusedFrame(n, pts.reshape(H, W, 3), conf.reshape(H, W), valid.reshape(H, W))

    def _views(self, edge_V: np.ndarray, side_V: np.ndarray):
        """World points (V, Q, 3), pixel weights log(conf) (V, Q), robust view weights (V, 1) and confidences
        (V, Q) (0 = masked) of the views ``edge_V`` / ``side_V`` (local edge ids, 0: image i, 1: image j)."""
        inp, sol, dev = self.inp, self.sol, self.dev
        d = EdgeInputs(inp.edges_E2[edge_V], inp.n_images, inp.pts_i, inp.pts_j_in_i, inp.conf_i, inp.conf_j,
                       inp.valid_i, inp.valid_j, inp.edge_ids[edge_V]).read(0, len(edge_V))
        side_b = torch.as_tensor(side_V == 1, device=self.device)
        pts = torch.where(side_b[:, None, None], torch.as_tensor(d["pts_b"], **dev), torch.as_tensor(d["pts_a"], **dev))
        conf = torch.where(side_b[:, None], torch.as_tensor(d["conf_b"], **dev), torch.as_tensor(d["conf_a"], **dev))
        sR = torch.as_tensor(sol.s_E[edge_V], **dev)[:, None, None] * torch.as_tensor(sol.R_E33[edge_V], **dev)
        Y = torch.einsum("eij,eqj->eqi", sR, pts) + torch.as_tensor(sol.t_E3[edge_V], **dev)[:, None]
        side_w = torch.as_tensor(sol.side_weight_E2[edge_V, side_V], **dev)[:, None]
        return Y, conf_weight(conf), side_w, conf

    def fuse(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image ``n``: world points (Q, 3), confidence (Q,) and valid mask (Q,) as numpy; adds its residuals."""
        edge_V, side_V = self.views.of(n)
        dev = self.dev
        K = torch.as_tensor(self.sol.K_N33[n : n + 1], **dev)
        R = torch.as_tensor(self.sol.cam2world_N44[n, :3, :3], **dev)
        t = torch.as_tensor(self.sol.cam2world_N44[n, :3, 3], **dev)
        rays_Q3 = _rays(K, self.uv_Q2)[0]
        Q = len(rays_Q3)
        num, den, conf_num, conf_den = (torch.zeros(Q, **dev) for _ in range(4))
        chunks = [slice(k, k + self.chunk) for k in range(0, len(edge_V), self.chunk)]
        kept = None  # the views, when they fit in one chunk: no second read for the residuals
        for c in chunks:
            Y, w, side_w, conf = self._views(edge_V[c], side_V[c])
            ws = w * side_w  # outlier views do not pull the fused depth
            rq = ((Y - t) @ R * rays_Q3).sum(-1)  # world -> this camera, dotted with the pixel's ray
            num += (ws * rq).sum(0)
            den += ws.sum(0)
            conf_num += (conf**2).sum(0)  # conf is 0 where masked
            conf_den += conf.sum(0)
            kept = (Y, w) if len(chunks) == 1 else None
        depth = num / (den * (rays_Q3**2).sum(-1)).clamp_min(1e-30)
        conf = torch.where(conf_den > 0, conf_num / conf_den.clamp_min(1e-30), torch.ones_like(depth))
        valid = (den > 0) & (depth > 0) & (conf >= self.min_conf)
        pts = torch.where(valid[:, None], (rays_Q3 * depth[:, None]) @ R.T + t, torch.zeros_like(rays_Q3))
        for c in chunks:
            Y, w = kept if kept is not None else self._views(edge_V[c], side_V[c])[:2]
            w = w * valid  # residuals ignore the robust weights, so that outlier edges stand out
            self.residuals.add(edge_V[c], (w * torch.linalg.norm(Y - pts, dim=-1)).sum(1).cpu().numpy(),
                               w.sum(1).cpu().numpy())
        return pts.cpu().numpy(), conf.cpu().numpy(), valid.cpu().numpy()

    def log_summary(self) -> None:
        log.info("global alignment: dense fusion of %d frames in %.1f s, %.1f%% valid pixels, residual %.4g %s",
                 self.fused, self.seconds, 100 * self.valid_pixels / max(self.pixels, 1), self.residual, self.unit)

    def result(self) -> AlignResult:
        """Every frame fused into arrays held at once (the in-memory API; the label cache streams instead)."""
        N, (H, W) = self.inp.n_images, self.inp.hw
        pts, conf = np.zeros((N, H, W, 3), np.float32), np.ones((N, H, W), np.float32)
        valid = np.zeros((N, H, W), bool)
        for f in self.frames():
            pts[f.index], conf[f.index], valid[f.index] = f.pts_world_HW3, f.conf_HW, f.valid_HW
        self.log_summary()
        return AlignResult(pts, conf, valid, self.cam2world_N44, frame=self.frame, unit=self.unit,
                           residual=self.residual, edge_residual_E=self.edge_residual_E, focals_N=self.focals_N,
                           K_N33=self.K_N33, edge_scale_E=self.sol.s_E, component_N=self.component_N,
                           stats={**self.solved.stats, "seconds_dense": self.seconds})
