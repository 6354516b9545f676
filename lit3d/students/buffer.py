"""Head refinement on a feature buffer (ACE's training, on an encoder the end-to-end training adapted to the scene).

A fully convolutional ``scr`` student predicts each stride-s cell's s x s points from that cell's feature vector
alone. Once its encoder is fixed, the features of many augmented training views can be computed once and kept: the
head then trains on random cells drawn across all views at once (decorrelated batches, no encoder cost per step).
The README measures what it buys against more end-to-end epochs.

A cell is treated as an s x s crop of its view: its camera is the view's pose with the principal point moved by the
crop's origin, so the reprojection loss of :mod:`lit3d.students.losses` applies to cells unchanged.
"""
from __future__ import annotations

import logging
import time

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

log = logging.getLogger(__name__)

PROGRESS_START = 0.8
"""Where the loss schedule restarts for the refinement: its last fifth (the ``circle`` clamp from 30 to 1 px at
640 px width), the tightening end of the end-to-end schedule."""
WARMUP_FRACTION = 0.02
"""The refinement's learning rate warms up over this fraction of its steps (then ``refine.min_lr_ratio``'s cosine):
what 3 warm-up epochs of the 150 are to the end-to-end training."""
BF16_MIN_SPEEDUP = 1.5
"""``refine.precision=auto`` runs the refinement in bf16 on a CPU only where bf16 multiplies the head's matrices at
least this much faster than fp32 there: about 4x on CPUs with AMX, 60x SLOWER (emulated) on CPUs without bf16 units."""


class FeatureBuffer(Dataset):
    """Encoder feature cells of augmented views with the labels of their pixels.

    ``feats_NC`` (bf16), ``pts_N3ss`` (world points, the labels' frame and unit), ``valid_Nss`` / ``inside_Nss`` /
    ``conf_Nss`` per pixel, ``view_N`` and ``cell_N2`` (row, column) locate each cell in its view, whose camera is
    ``K_V33`` / ``cam2world_V44``; views are ``view_width`` pixels wide. Indexing with a list of cells gives a
    batch (``__getitems__``) for :meth:`StudentModule.compute_loss`.
    """

    def __init__(self, feats_NC, pts_N3ss, valid_Nss, inside_Nss, conf_Nss, view_N, cell_N2, K_V33, cam2world_V44,
                 view_width: int):
        self.feats_NC, self.pts_N3ss, self.valid_Nss, self.inside_Nss, self.conf_Nss = (
            feats_NC, pts_N3ss, valid_Nss, inside_Nss, conf_Nss)
        self.view_N, self.cell_N2, self.K_V33, self.cam2world_V44 = view_N, cell_N2, K_V33, cam2world_V44
        self.stride, self.view_width = pts_N3ss.shape[-1], view_width

    def __len__(self) -> int:
        return len(self.feats_NC)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices)
        view_B = self.view_N[idx]
        K_B33 = self.K_V33[view_B].clone()
        # the crop's pixel (u, v) is the view's (u + s * column, v + s * row)
        K_B33[:, 0, 2] -= self.stride * self.cell_N2[idx, 1]
        K_B33[:, 1, 2] -= self.stride * self.cell_N2[idx, 0]
        return {"features": self.feats_NC[idx].float()[:, :, None, None], "pts_world": self.pts_N3ss[idx],
                "valid": self.valid_Nss[idx], "inside": self.inside_Nss[idx], "conf": self.conf_Nss[idx],
                "K": K_B33, "cam2world": self.cam2world_V44[view_B], "view_width": self.view_width}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.feats_NC, self.pts_N3ss, self.valid_Nss,
                                                          self.inside_Nss, self.conf_Nss, self.view_N, self.cell_N2))


def _matmul_seconds(bf16: bool, rows: int = 256, width: int = 512, repeats: int = 2) -> float:
    """Seconds per product of ``rows`` x ``width`` by ``width`` x ``width`` on the CPU (one of the head's 1x1
    convolutions on ``rows`` cells), under bf16 autocast or in fp32."""
    x, w = torch.randn(rows, width), torch.randn(width, width)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        x @ w  # first call: kernel selection
        start = time.perf_counter()
        for _ in range(repeats):
            x @ w
    return (time.perf_counter() - start) / repeats


def refine_precision(setting: str, device: torch.device) -> str:
    """The Lightning precision of the refinement: ``setting`` unless it is ``auto``, which means 32-true on an
    accelerator (its small steps are launch-bound, bf16 is slower) and on a CPU bf16-mixed where a timed product
    (about 0.1-0.6 s) shows bf16 ``BF16_MIN_SPEEDUP`` times faster than fp32 there, else 32-true."""
    if setting != "auto":
        return setting
    if device.type != "cpu":
        return "32-true"
    fp32, bf16 = _matmul_seconds(False), _matmul_seconds(True)
    chosen = "bf16-mixed" if fp32 >= BF16_MIN_SPEEDUP * bf16 else "32-true"
    log.info("refine.precision=auto: %s (the head's products take %.1f ms in fp32, %.1f ms in bf16 on this CPU)",
             chosen, 1e3 * fp32, 1e3 * bf16)
    return chosen


def _cells(x_BChw: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, h*s, w*s) -> (B, h, w, C, s, s): each stride-s cell's pixels."""
    B, C, H, W = x_BChw.shape
    return x_BChw.reshape(B, C, H // s, s, W // s, s).permute(0, 2, 4, 1, 3, 5)


@torch.no_grad()
def build_buffer(encoder: torch.nn.Module, loader: DataLoader, passes: int) -> FeatureBuffer:
    """Features of ``passes`` passes over ``loader`` (augmented views) through ``encoder`` (eval mode), the cells
    that show the scene (any pixel inside the view) with their labels."""
    encoder.eval()
    device = next(encoder.parameters()).device
    s = encoder.stride
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("f", "p", "v", "i", "c", "view", "cell", "K", "T")}
    n_views, width, t0 = 0, 0, time.perf_counter()
    for _ in range(passes):
        for batch in loader:
            f_BChw = encoder(batch["image"].to(device)).float().cpu()
            # whole cells only: the head's s x s output of a cell beyond the image's edge is cropped away
            h, w = (n // s for n in batch["image"].shape[-2:])
            f_BChw = f_BChw[:, :, :h, :w]
            B, H, W = len(f_BChw), h * s, w * s
            batch = {k: v[..., :H, :W] if k in ("inside", "pts_world", "valid", "conf") else v
                     for k, v in batch.items()}
            width = batch["image"].shape[-1]
            inside_Bhwss = _cells(batch["inside"][:, None], s)[:, :, :, 0]
            keep_Bhw = inside_Bhwss.flatten(3).any(-1)
            row_hw, col_hw = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            parts["f"].append(f_BChw.permute(0, 2, 3, 1)[keep_Bhw].to(torch.bfloat16))
            parts["p"].append(_cells(batch["pts_world"], s)[keep_Bhw])
            parts["v"].append(_cells(batch["valid"][:, None], s)[:, :, :, 0][keep_Bhw])
            parts["i"].append(inside_Bhwss[keep_Bhw])
            parts["c"].append(_cells(batch["conf"][:, None], s)[:, :, :, 0][keep_Bhw])
            view_Bhw = (n_views + torch.arange(B))[:, None, None].expand(B, h, w)
            parts["view"].append(view_Bhw[keep_Bhw].int())
            parts["cell"].append(torch.stack([row_hw, col_hw], -1).expand(B, h, w, 2)[keep_Bhw].short())
            parts["K"].append(batch["K"].float())
            parts["T"].append(batch["cam2world"].float())
            n_views += B
    cat = {k: torch.cat(v) for k, v in parts.items()}
    buf = FeatureBuffer(cat["f"], cat["p"], cat["v"], cat["i"], cat["c"], cat["view"].long(), cat["cell"].long(),
                        cat["K"], cat["T"], width)
    log.info("feature buffer: %d cells of %d views (%.2f GiB) in %.0f s", len(buf), n_views, buf.nbytes() / 2**30,
             time.perf_counter() - t0)
    return buf


def _batch(items: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return items  # __getitems__ already returns the batch


class BufferDataModule(L.LightningDataModule):
    """Training batches of random buffer cells (``steps`` batches of ``cells_per_batch``, one epoch); validation
    and test are ``images``'s, so the refined student is scored on whole frames as before. Its trainer needs
    ``use_distributed_sampler=False``: under DDP each process then takes ``steps`` batches of its own cells, and
    validates and tests on every frame. The buffer's views are ``images``' training views, zoomed over
    ``refine.scale_range`` where it is set."""

    def __init__(self, images: L.LightningDataModule, encoder: torch.nn.Module, refine_cfg, seed: int = 0,
                 start_step: int = 0):
        super().__init__()
        self.images, self.encoder, self.cfg, self.seed = images, encoder, refine_cfg, seed
        self.start_step = start_step  # a resumed refinement's step: it draws new cells, not its first ones again
        self.buffer: FeatureBuffer | None = None

    def setup(self, stage: str | None = None) -> None:
        self.images.setup(stage)
        if self.buffer is None and stage in (None, "fit"):
            zoom = {"scale_range": list(self.cfg.scale_range)} if self.cfg.scale_range else {}
            self.buffer = build_buffer(self.encoder, self.images.train_dataloader(**zoom), self.cfg.views_per_frame)

    def train_dataloader(self) -> DataLoader:
        # every process (DDP) draws its own cells from its own copy of the buffer, `steps` batches of
        # `cells_per_batch` as `loader.batch_size` is per process; the trainer must not split this sampler (a
        # resumed refinement's trainer stops at its max_steps)
        n, rank = self.cfg.cells_per_batch, self.trainer.global_rank if self.trainer else 0
        seed = self.seed + 1000 * rank + 7919 * self.start_step
        sampler = RandomSampler(self.buffer, replacement=True, num_samples=self.cfg.steps * n,
                                generator=torch.Generator().manual_seed(seed))
        return DataLoader(self.buffer, batch_size=n, sampler=sampler, collate_fn=_batch)

    def val_dataloader(self) -> DataLoader:
        return self.images.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self.images.test_dataloader()
