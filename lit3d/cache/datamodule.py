"""LightningDataModule over a label cache: images and world-point labels at the student's resolution."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from functools import lru_cache

import lightning as L
from lightning.pytorch.callbacks import Callback
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lit3d.cache.augment import Augmentation
from lit3d.cache.store import LabelCache
from lit3d.geometry import pixel_grid, project, scale_intrinsics, transform_points

log = logging.getLogger(__name__)


SURFACE_TOL = 0.05
"""Largest (max - min) / mean of the camera depths of four neighbouring labels that are interpolated: one surface."""
FRAME_BYTES_PER_PIXEL = 3 + 12 + 4 + 1 + 4
"""Memory of a preloaded frame per student pixel: image uint8 x3, pts_world float32 x3, conf, valid (bool), depth."""
AVAILABLE_RAM_FRACTION = 0.5
"""``loader.memory_budget_gb=0``: this fraction of the RAM available at start may hold preloaded frames."""
STATS_FRAMES = 256
"""Training frames (evenly spaced) that give the point statistics when frames are read lazily."""
POSE_CHECK = 0.05
"""Largest median reprojection error of the labels through their pose, as a fraction of the label grid's width,
for the pose to give their camera depths (a larger one: the labels are in another world frame)."""


@lru_cache(maxsize=16)
def _cells(H: int, W: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (4, h, w) of the label pixels around each student pixel centre, and their bilinear weights.

    The 4 taps lead so that reductions over them are elementwise over whole planes (much faster in numpy).
    """
    # student pixel k covers label coordinates [k, k + 1) * H / h: its centre in label index space, clamped where
    # it falls outside the label centres (borders when upsampling)
    y_h = np.clip((np.arange(h) + 0.5) * H / h - 0.5, 0, H - 1)
    x_w = np.clip((np.arange(w) + 0.5) * W / w - 0.5, 0, W - 1)
    y0_h, x0_w = np.minimum(y_h.astype(int), max(H - 2, 0)), np.minimum(x_w.astype(int), max(W - 2, 0))
    fy_h1, fx_1w = (y_h - y0_h)[:, None], (x_w - x0_w)[None, :]
    r0_h1, r1_h1 = (y0_h * W)[:, None], (np.minimum(y0_h + 1, H - 1) * W)[:, None]
    c0_1w, c1_1w = x0_w[None, :], np.minimum(x0_w + 1, W - 1)[None, :]
    idx_4hw = np.stack(np.broadcast_arrays(r0_h1 + c0_1w, r0_h1 + c1_1w, r1_h1 + c0_1w, r1_h1 + c1_1w))
    bil_4hw = np.stack(np.broadcast_arrays((1 - fy_h1) * (1 - fx_1w), (1 - fy_h1) * fx_1w, fy_h1 * (1 - fx_1w),
                                           fy_h1 * fx_1w))
    idx_4hw.flags.writeable = bil_4hw.flags.writeable = False  # shared between calls
    return idx_4hw, bil_4hw


def _taps(ok_HW: np.ndarray, z_HW: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat label indices (4, h, w) and weights (4, h, w) that sample a label grid at the student pixel centres.

    ``ok_HW`` marks usable labels, ``z_HW`` are their camera depths (any unit; None: nearest labels only).
    """
    idx_4hw, bil_4hw = _cells(*ok_HW.shape, *size)
    ok_4hw = ok_HW.ravel()[idx_4hw]
    # the nearest usable tap (else the nearest one): among a cell's corners, a larger bilinear weight is a smaller
    # distance to the sample position; a tap of weight 0 (a sample on a row or column of labels) is no neighbour
    pick_1hw = np.argmax(bil_4hw + (ok_4hw & (bil_4hw > 0)), axis=0)[None]
    near_4hw = np.broadcast_to(np.take_along_axis(idx_4hw, pick_1hw, 0), idx_4hw.shape)
    one_hot_4hw = np.broadcast_to((np.arange(4) == 0)[:, None, None], idx_4hw.shape)
    if z_HW is None:
        return near_4hw, one_hot_4hw
    z_4hw = z_HW.ravel()[idx_4hw]
    with np.errstate(divide="ignore", invalid="ignore"):
        z_min_hw, z_max_hw = z_4hw.min(0), z_4hw.max(0)
        one_surface_hw = ok_4hw.all(0) & (z_min_hw > 0) & (z_max_hw - z_min_hw < SURFACE_TOL * z_4hw.mean(0))
        # perspective-correct weights (bilinear in 1/z): the interpolated point then lies on its pixel's ray
        # whatever the depths, and for a plane (1/z affine in pixels) it is the plane's point exactly
        pc_4hw = bil_4hw / z_4hw
        pc_4hw /= pc_4hw.sum(0)
    return np.where(one_surface_hw, idx_4hw, near_4hw), np.where(one_surface_hw, pc_4hw, one_hot_4hw)


def _gather(values_HWC: np.ndarray, idx_4hw: np.ndarray, w_4hw: np.ndarray) -> np.ndarray:
    """Weighted sum (h, w) or (h, w, C) of the taps of a label map (H, W) or (H, W, C), in its float dtype."""
    taps_4hwC = np.take(values_HWC.reshape(-1, *values_HWC.shape[2:]), idx_4hw, axis=0)  # faster than [idx]
    dtype = np.result_type(values_HWC.dtype, np.float32)
    return (w_4hw.astype(dtype).reshape(w_4hw.shape + (1,) * (values_HWC.ndim - 2)) * taps_4hwC).sum(0)


def _label_depths(frame: dict[str, np.ndarray]) -> np.ndarray | None:
    """Camera depths (H, W) of the labels through ``cam2world``, or None where the pose does not describe them."""
    cam2world_44 = frame["cam2world"].astype(np.float64)
    if not np.all(np.isfinite(cam2world_44)):
        return None
    world2cam_44 = np.linalg.inv(cam2world_44)
    pts_HW3 = frame["pts_world"]
    step = 4  # every 4th label each way is plenty for a median, and keeps this check cheap
    ok_hw = frame["valid"][::step, ::step]
    uv_N2, _ = project(transform_points(world2cam_44, pts_HW3[::step, ::step][ok_hw].astype(np.float64)), frame["K"])
    err_N = np.nan_to_num(np.linalg.norm(uv_N2 - step * pixel_grid(*ok_hw.shape)[ok_hw], axis=-1), nan=np.inf)
    if not len(err_N) or not np.median(err_N) <= POSE_CHECK * pts_HW3.shape[1]:  # e.g. first-camera labels
        log.debug("labels do not reproject through their pose: nearest-label sampling")
        return None
    return pts_HW3 @ world2cam_44[2, :3].astype(pts_HW3.dtype) + float(world2cam_44[2, 3])


def check_poses_describe_labels(cache: LabelCache, names: list[str], samples: int = 8,
                                need: str = "loss.name=reprojection", remedy: str = "use loss.name=mse") -> None:
    """Raise ValueError unless the cached poses of (a sample of) ``names`` reproject their labels: what a
    pose-based loss (``loss.name=reprojection``) and moved views (``loader.view_shift``) need; ``need`` and
    ``remedy`` name them in the message. Labels aligned to the first camera (DUSt3R without dataset poses) keep the
    dataset's pose, which does not describe them."""
    for name in names[:: max(len(names) // samples, 1)][:samples]:
        if _label_depths(cache.load_frame(name)) is None:
            raise ValueError(f"{need} needs camera poses that describe the labels; frame {name} of {cache.root} has "
                             f"none (e.g. labels aligned to the first camera): {remedy}")


def resize_frame(frame: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Resize one cached frame to ``size`` (h, w) so that image, labels and the returned ``K`` agree exactly.

    The image is area-resampled, so student pixel k is centred on label coordinate (k + 0.5) * H / h (label pixel
    centres at j + 0.5), which ``scale_intrinsics`` describes; the labels are sampled at that same position. The
    nearest label would sit up to half a label pixel off it (a quarter student pixel at ratio 2, on every
    pixel), a bias PnP turns into pose error. Points and confidence are interpolated (perspective-correct) from
    the 4 neighbouring labels when all are valid and on one surface, judged by their camera depths through
    ``cam2world`` (spread below ``SURFACE_TOL`` of their mean): across a depth edge interpolation would invent
    points in mid-air. There, beside invalid labels, and when the pose does not describe the labels, the
    nearest valid neighbour is taken: a true label from the pixel's footprint keeps edges and hole borders
    supervised, at the price of an offset of up to half a label pixel on those pixels (at ratio 2 the four tie
    and the top-left one is taken); a pixel is valid when one of its neighbours is. ``depth`` (the dataset's,
    0 = unknown) has its own holes, so it is sampled the same way by its own validity and values.
    """
    H, W = frame["image"].shape[:2]
    h, w = size
    if (h, w) == (H, W):
        return frame
    idx_4hw, w_4hw = _taps(frame["valid"], _label_depths(frame), (h, w))
    out = {k: _gather(frame[k], idx_4hw, w_4hw) for k in ("pts_world", "conf")}
    out["valid"] = frame["valid"].ravel()[idx_4hw[0]]
    depth_HW = frame["depth"]
    has_depth_HW = np.isfinite(depth_HW) & (depth_HW > 0)
    out["depth"] = _gather(depth_HW, *_taps(has_depth_HW, np.where(has_depth_HW, depth_HW, 0.0), (h, w)))
    resample = Image.Resampling.BOX if w < W else Image.Resampling.BICUBIC
    out["image"] = np.asarray(Image.fromarray(frame["image"]).resize((w, h), resample))
    out["K"] = scale_intrinsics(frame["K"], w / W, h / H).astype(np.float32)
    out["cam2world"] = frame["cam2world"]
    return out


class CachedFrames(Dataset):
    """Frames of one split as tensors: ``image`` (3, h, w) in [0, 1], ``pts_world`` (3, h, w) in the cache's
    world frame and unit, ``conf`` / ``valid`` / ``depth`` (h, w), ``inside`` (h, w: the pixel shows the scene, False
    on augmentation padding), ``K`` (3, 3), ``cam2world`` (4, 4), both of the (augmented) view.

    ``geometric`` is the random geometric :class:`~lit3d.cache.augment.Augmentation` of every item, or None.
    """

    def __init__(self, cache: LabelCache, names: list[str], size: tuple[int, int], color_jitter: float = 0.0,
                 preload: bool = True, geometric: Augmentation | None = None):
        self.cache, self.names, self.size, self.geometric = cache, list(names), tuple(size), geometric
        self.jitter = None
        if color_jitter > 0:
            from torchvision.transforms import v2

            s = color_jitter
            # no hue jitter: it costs more than the rest together (HSV round trip) and colour identifies surfaces
            self.jitter = v2.ColorJitter(brightness=s, contrast=s, saturation=s)
        # student-resolution frames are small: holding them makes the DataLoader essentially free
        self.frames = [self.read(n) for n in self.names] if preload else None

    def read(self, name: str) -> dict[str, torch.Tensor]:
        """Frame ``name`` from its cache file (zip CRCs checked), at the student resolution, not augmented."""
        f = resize_frame(self.cache.load_frame(name), self.size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(f["image"])).permute(2, 0, 1),
            "pts_world": torch.from_numpy(np.ascontiguousarray(f["pts_world"])).permute(2, 0, 1),
            "conf": torch.from_numpy(np.ascontiguousarray(f["conf"])),
            "valid": torch.from_numpy(np.ascontiguousarray(f["valid"])),
            "depth": torch.from_numpy(np.ascontiguousarray(f["depth"])),
            "K": torch.from_numpy(f["K"]).float(),
            "cam2world": torch.from_numpy(f["cam2world"]).float(),
        }

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.item(k)

    def item(self, k: int, geometric: bool = True) -> dict[str, torch.Tensor]:
        """Item ``k``; ``geometric=False`` skips the geometric augmentation (photometric still applies)."""
        item = dict(self.frames[k] if self.frames is not None else self.read(self.names[k]))
        image = item["image"].float() / 255
        if self.jitter is not None:
            image = self.jitter(image)
        item["image"] = image
        item["inside"] = torch.ones(self.size, dtype=torch.bool)
        if geometric and self.geometric is not None:
            item = self.geometric(item)
        item["index"] = torch.tensor(k)
        return item


def geometric_augmentation(loader_cfg) -> Augmentation | None:
    """``CachedFrames``' ``geometric`` argument from the ``loader.*`` keys (None when ``loader.geometric`` is off)."""
    c = loader_cfg
    if not c.geometric:
        return None
    lo, hi = (float(v) for v in c.scale_range) if len(c.scale_range) == 2 else (0.0, -1.0)
    if not (0 < lo <= hi) or c.rotation_deg < 0 or not 0 <= c.shift < 1:
        raise ValueError(f"loader.geometric: need rotation_deg >= 0, scale_range [min, max] with 0 < min <= max and "
                         f"0 <= shift < 1; got {c.rotation_deg}, {list(c.scale_range)}, {c.shift}")
    if (not 0 <= c.tilt_deg < 60 or not 0 <= c.view_shift < 1 or not 0 <= c.view_shift_prob <= 1
            or not 0 <= c.view_shift_until <= 1):
        raise ValueError(f"loader.geometric: need 0 <= tilt_deg < 60, 0 <= view_shift < 1, 0 <= view_shift_prob "
                         f"<= 1 and 0 <= view_shift_until <= 1; got tilt_deg {c.tilt_deg}, view_shift {c.view_shift}, "
                         f"view_shift_prob {c.view_shift_prob}, view_shift_until {c.view_shift_until}")
    return Augmentation(c.rotation_deg, (lo, hi), c.shift, c.tilt_deg, c.view_shift, c.view_shift_prob,
                        c.view_shift_until)


def memory_budget_bytes(loader_cfg) -> int:
    """Bytes that preloaded frames may take: ``loader.memory_budget_gb``, or with 0 a fraction of the RAM available
    now (``os.sysconf``)."""
    if loader_cfg.memory_budget_gb > 0:
        return int(loader_cfg.memory_budget_gb * 2**30)
    return int(AVAILABLE_RAM_FRACTION * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def should_preload(loader_cfg, n_frames: int) -> bool:
    """``loader.preload``: true, false, or with auto whether ``n_frames`` at the student resolution fit the budget."""
    if loader_cfg.preload != "auto":
        return loader_cfg.preload == "true"
    h, w = loader_cfg.resolution
    need, budget = n_frames * h * w * FRAME_BYTES_PER_PIXEL, memory_budget_bytes(loader_cfg)
    log.info("label cache frames take %.2f GiB at %dx%d, memory budget %.2f GiB: %s", need / 2**30, h, w,
             budget / 2**30, "preloading them" if need <= budget else "reading them lazily per item")
    return need <= budget


class TrainingProgress(Callback):
    """Tells the training views' augmentation, at the start of every epoch, the fraction of training done
    (``current_epoch / max_epochs``), which ``loader.view_shift_until`` compares against."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datasets = getattr(trainer.datamodule, "datasets", {})
        geometric = getattr(datasets.get("train"), "geometric", None)
        if geometric is not None and trainer.max_epochs and trainer.max_epochs > 0:
            geometric.progress.fill_(trainer.current_epoch / trainer.max_epochs)


class PointmapDataModule(L.LightningDataModule):
    """Train / val / test loaders over a label cache, at the student resolution ``loader.resolution``.

    ``preload`` (None: from ``loader.preload``) holds every frame in memory; otherwise each item is read from its
    cache file when needed (same items, same augmentation: the batches are identical).
    """

    def __init__(self, cache: LabelCache, loader_cfg, seed: int = 0, preload: bool | None = None):
        super().__init__()
        self.cache, self.cfg, self.seed, self.preload = cache, loader_cfg, seed, preload
        self.datasets: dict[str, CachedFrames] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        size = tuple(self.cfg.resolution)
        c, geometric = self.cfg, geometric_augmentation(self.cfg)
        if self.preload is None:
            self.preload = should_preload(c, sum(len(names) for names in self.cache.split.values()))
        for split, names in self.cache.split.items():
            train = split == "train"
            self.datasets[split] = CachedFrames(self.cache, names, size, c.color_jitter if train else 0.0,
                                                self.preload, geometric if train else None)
        if not len(self.datasets.get("train", [])):
            raise ValueError(f"label cache {self.cache.root} has no training frames")

    def train_stats(self) -> dict[str, torch.Tensor]:
        """Mean and std (3,) of valid training world points, and the mean point (the trivial baseline)."""
        self.setup()
        ds = self.datasets["train"]
        if ds.frames is None:  # read lazily (larger than memory): one read each of a sample of frames
            sample = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), STATS_FRAMES)).round().astype(int))
            frames = (ds.read(ds.names[k]) for k in sample)
            pts = torch.cat([f["pts_world"].permute(1, 2, 0)[f["valid"]] for f in frames])
        else:
            # two reads per frame, as before augmentation existed: the photometric jitter draws from the global RNG
            # before the weights are initialised, so this keeps earlier configurations' runs bit for bit
            pts = torch.cat([ds.item(k, False)["pts_world"].permute(1, 2, 0)[ds.item(k, False)["valid"]]
                             for k in range(len(ds))])
        return {"mean": pts.mean(0), "std": pts.std(0).clamp_min(1e-6)}

    def _loader(self, split: str, shuffle: bool, dataset: CachedFrames | None = None) -> DataLoader:
        if not len(self.datasets.get(split, [])):
            return []  # Lightning skips an empty loader
        return DataLoader(dataset or self.datasets[split], batch_size=self.cfg.batch_size, shuffle=shuffle,
                          num_workers=self.cfg.num_workers, pin_memory=self.cfg.pin_memory,
                          persistent_workers=self.cfg.num_workers > 0,
                          # a last training batch of one image breaks BatchNorm at coarse strides
                          drop_last=shuffle and len(self.datasets[split]) > self.cfg.batch_size,
                          generator=torch.Generator().manual_seed(self.seed) if shuffle else None)

    def train_dataloader(self, **augmentation) -> DataLoader:
        """The training views; ``augmentation`` (``loader.*`` keys, e.g. ``scale_range``) replaces the loader's
        geometric augmentation for these views only (the head refinement's buffer, drawn after training, so its
        views are not moved when ``view_shift_until`` < 1), on the same frames."""
        if not augmentation:
            return self._loader("train", shuffle=True)
        self.setup()
        views = copy.copy(self.datasets["train"])  # shares the preloaded frames
        views.geometric = geometric_augmentation(dataclasses.replace(self.cfg, **augmentation))
        if views.geometric is not None:
            views.geometric.progress.fill_(1.0)  # drawn after training: past ``view_shift_until``
        return self._loader("train", shuffle=True, dataset=views)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
