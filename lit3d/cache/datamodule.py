"""LightningDataModule over a label cache: images and world-point labels at the student's resolution."""
from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lit3d.cache.store import LabelCache
from lit3d.geometry import scale_intrinsics

log = logging.getLogger(__name__)


def resize_frame(frame: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Resize one cached frame to ``size`` (H, W), keeping image pixels and labels aligned.

    The image is area-resampled; points, confidence, validity and depth take the nearest label to each new
    pixel centre (interpolating world points would invent points between foreground and background).
    """
    H, W = frame["image"].shape[:2]
    h, w = size
    if (h, w) == (H, W):
        return frame
    rows = np.minimum(((np.arange(h) + 0.5) * H / h).astype(int), H - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * W / w).astype(int), W - 1)
    out = {k: frame[k][np.ix_(rows, cols)] for k in ("pts_world", "conf", "valid", "depth")}
    resample = Image.Resampling.BOX if w < W else Image.Resampling.BICUBIC
    out["image"] = np.asarray(Image.fromarray(frame["image"]).resize((w, h), resample))
    out["K"] = scale_intrinsics(frame["K"], w / W, h / H).astype(np.float32)
    out["cam2world"] = frame["cam2world"]
    return out


class CachedFrames(Dataset):
    """Frames of one split as tensors: ``image`` (3, h, w) in [0, 1], ``pts_world`` (3, h, w) in the cache's
    world frame and unit, ``conf`` / ``valid`` / ``depth`` (h, w), ``K`` (3, 3), ``cam2world`` (4, 4)."""

    def __init__(self, cache: LabelCache, names: list[str], size: tuple[int, int], color_jitter: float = 0.0,
                 preload: bool = True):
        self.cache, self.names, self.size = cache, list(names), tuple(size)
        self.jitter = None
        if color_jitter > 0:
            from torchvision.transforms import v2

            s = color_jitter
            # no hue jitter: it costs more than the rest together (HSV round trip) and colour identifies surfaces
            self.jitter = v2.ColorJitter(brightness=s, contrast=s, saturation=s)
        # student-resolution frames are small: holding them makes the DataLoader essentially free
        self.frames = [self._read(n) for n in self.names] if preload else None

    def _read(self, name: str) -> dict[str, torch.Tensor]:
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
        item = dict(self.frames[k] if self.frames is not None else self._read(self.names[k]))
        image = item["image"].float() / 255
        if self.jitter is not None:
            image = self.jitter(image)
        item["image"] = image
        item["index"] = torch.tensor(k)
        return item


class PointmapDataModule(L.LightningDataModule):
    """Train / val / test loaders over a label cache, at the student resolution ``loader.resolution``."""

    def __init__(self, cache: LabelCache, loader_cfg, seed: int = 0, preload: bool = True):
        super().__init__()
        self.cache, self.cfg, self.seed, self.preload = cache, loader_cfg, seed, preload
        self.datasets: dict[str, CachedFrames] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        size = tuple(self.cfg.resolution)
        for split, names in self.cache.split.items():
            jitter = self.cfg.color_jitter if split == "train" else 0.0
            self.datasets[split] = CachedFrames(self.cache, names, size, jitter, self.preload)
        if not len(self.datasets.get("train", [])):
            raise ValueError(f"label cache {self.cache.root} has no training frames")

    def train_stats(self) -> dict[str, torch.Tensor]:
        """Mean and std (3,) of valid training world points, and the mean point (the trivial baseline)."""
        self.setup()
        ds = self.datasets["train"]
        pts = torch.cat([ds[k]["pts_world"].permute(1, 2, 0)[ds[k]["valid"]] for k in range(len(ds))])
        return {"mean": pts.mean(0), "std": pts.std(0).clamp_min(1e-6)}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not len(self.datasets.get(split, [])):
            return []  # Lightning skips an empty loader
        return DataLoader(self.datasets[split], batch_size=self.cfg.batch_size, shuffle=shuffle,
                          num_workers=self.cfg.num_workers, pin_memory=self.cfg.pin_memory,
                          persistent_workers=self.cfg.num_workers > 0,
                          # a last training batch of one image breaks BatchNorm at coarse strides
                          drop_last=shuffle and len(self.datasets[split]) > self.cfg.batch_size,
                          generator=torch.Generator().manual_seed(self.seed) if shuffle else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
