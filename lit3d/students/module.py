"""The LightningModule that trains any registered student on cached teacher labels."""
from __future__ import annotations

import dataclasses
import io
import math

import lightning as L
import torch

from lit3d.metrics.pointmap import PointErrors
from lit3d.students import STUDENTS, create_student
from lit3d.students.checkpoints import read_verified, unreadable
from lit3d.students.losses import mse_loss, reprojection_loss

STUDENT_FORMAT = 2
"""Layout of the students' weights in checkpoints. Bump it when a change to a student or the head adds, renames or
reshapes weights, so that older checkpoints fail with this explanation instead of a list of mismatched keys.
1: full-resolution head (before ``head_stride``); 2: head with ``head_stride``, strided vanilla CNN, ViT attention
as one qkv projection."""


ENCODER_PREFIXES = ("student.encoder.", "student.backbone.")
"""Parameter names of a student's feature extractor (before its head), for ``optim.encoder_lr_scale``."""


class CheckpointFormatError(ValueError):
    """A checkpoint of students with another weight layout (see ``STUDENT_FORMAT``)."""


class StudentModule(L.LightningModule):
    """Student + its loss (the paper's MSE to the teacher's world points, or the reprojection loss of
    :mod:`lit3d.students.losses`) + point-error metrics.

    The network predicts normalised coordinates ``(p - mean) / std`` (statistics of the training labels, in
    the cache's world frame and unit); :meth:`forward` returns world points. The metrics also score a trivial
    baseline that predicts the mean training point everywhere, so a reader sees that learning happened.
    """

    def __init__(self, student: dict, optim: dict, img_size: tuple[int, int], coord_mean: list[float],
                 coord_std: list[float], max_epochs: int = 1, loss: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        student_cfg = STUDENTS.get(student["name"]).config_cls(**student)
        self.student = create_student(student_cfg, img_size)
        self.optim = optim
        self.loss_cfg = loss or {"name": "mse"}  # checkpoints from before the loss section trained with MSE
        self.register_buffer("coord_mean", torch.tensor(coord_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("coord_std", torch.tensor(coord_std, dtype=torch.float32).view(1, 3, 1, 1))
        self.progress_start = 0.0  # where the loss schedule starts: the head refinement replays its end
        self.metrics = torch.nn.ModuleDict({f"{s}_{m}": PointErrors() for s in ("val", "test")
                                            for m in ("student", "baseline")})

    @classmethod
    def from_config(cls, cfg, stats: dict[str, torch.Tensor]) -> "StudentModule":
        return cls(dataclasses.asdict(cfg.student), dataclasses.asdict(cfg.optim), tuple(cfg.loader.resolution),
                   stats["mean"].tolist(), stats["std"].tolist(), cfg.trainer.max_epochs, dataclasses.asdict(cfg.loss))

    @classmethod
    def load(cls, path, map_location: str | torch.device = "cpu") -> "StudentModule":
        """The module saved in the Lightning checkpoint ``path``, verified against its checksum
        (:mod:`lit3d.students.checkpoints`); other student formats, corrupt or unreadable files are one-line errors
        naming ``path``."""
        data = read_verified(path)
        try:
            return cls.load_from_checkpoint(io.BytesIO(data), map_location=map_location)
        except CheckpointFormatError as e:
            raise CheckpointFormatError(f"checkpoint {path}: {e}") from None
        except Exception as e:  # deserialization or weights that do not fit their own hyperparameters: the file's
            raise unreadable(path, e) from None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lit3d_student_format"] = STUDENT_FORMAT

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        found = checkpoint.get("lit3d_student_format", 1)
        if found != STUDENT_FORMAT:
            raise CheckpointFormatError(
                f"written with student format {found}, this lit3d reads format {STUDENT_FORMAT} (the students' "
                f"layers changed); retrain it, or evaluate it with the lit3d version that wrote it")

    def forward(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        """World points (B, 3, H, W) in the labels' frame and unit for images in [0, 1]."""
        return self.student(image_B3HW) * self.coord_std + self.coord_mean

    def progress(self) -> float:
        """Fraction of the training steps done, in [0, 1] (1 outside of ``fit``): drives the loss's clamp. It runs
        from ``progress_start`` (0; the head refinement sets it) to 1 over the fit."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return 1.0
        done = min(self.global_step / max(int(trainer.estimated_stepping_batches), 1), 1.0)
        return self.progress_start + (1 - self.progress_start) * done

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The configured loss of a batch and its detached statistics (for logging). A batch of images, or of
        feature cells (``features``: the head refinement's, :mod:`lit3d.students.buffer`)."""
        if "features" in batch:
            pred_norm = self.student.head_from_features(batch["features"])
        else:
            pred_norm = self.student(batch["image"])
        # the loss in fp32 under mixed precision: bf16's 3 significant digits would put centimetres of error into
        # its world-to-camera transforms
        with torch.autocast(pred_norm.device.type, enabled=False):
            return self._loss(pred_norm.float(), batch)

    def _loss(self, pred_norm: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        valid = batch["valid"]
        weight = valid.float() * batch["conf"] if self.optim["conf_weighting"] else None
        if self.loss_cfg["name"] == "mse":
            target_norm = (batch["pts_world"] - self.coord_mean) / self.coord_std
            return mse_loss(pred_norm, target_norm, valid.float() if weight is None else weight), {}
        inside = batch.get("inside", torch.ones_like(valid))
        return reprojection_loss(pred_norm * self.coord_std + self.coord_mean, batch["pts_world"], valid, inside,
                                 batch["K"], batch["cam2world"], self.progress(), self.loss_cfg,
                                 None if weight is None else torch.where(valid, batch["conf"], 1.0),
                                 batch.get("view_width"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, stats = self.compute_loss(batch)
        n = len(batch["pts_world"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for k, v in stats.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        loss, _ = self.compute_loss(batch)
        self.log(f"{split}/loss", loss, on_epoch=True, batch_size=len(batch["image"]), sync_dist=True)
        pred = self(batch["image"])
        self.metrics[f"{split}_student"].update(pred, batch["pts_world"], batch["valid"])
        self.metrics[f"{split}_baseline"].update(self.coord_mean.expand_as(pred), batch["pts_world"], batch["valid"])

    def _eval_epoch_end(self, split: str) -> None:
        for who, prefix in (("student", f"{split}/"), ("baseline", f"{split}_baseline/" if split == "val" else "baseline/")):
            metric = self.metrics[f"{split}_{who}"]
            for k, v in metric.compute().items():
                self.log(prefix + k, v, prog_bar=(split == "val" and k == "l2_mean" and who == "student"))
            metric.reset()

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def _param_groups(self) -> list[dict]:
        """Trainable parameters; the encoder's in a group of their own at ``encoder_lr_scale`` x ``lr``."""
        scale = self.optim.get("encoder_lr_scale", 1.0)  # checkpoints from before the key used one rate
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if scale == 1.0:
            return [{"params": [p for _, p in params]}]
        encoder = [p for n, p in params if n.startswith(ENCODER_PREFIXES)]
        if not encoder:
            names = " or ".join(f"{prefix}*" for prefix in ENCODER_PREFIXES)
            raise ValueError(f"optim.encoder_lr_scale={scale}: student {self.hparams.student['name']} has no "
                             f"trainable encoder (parameters named {names}); leave it at 1")
        head = [p for n, p in params if not n.startswith(ENCODER_PREFIXES)]
        return [{"params": head}, {"params": encoder, "lr": self.optim["lr"] * scale}]

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(self._param_groups(), lr=o["lr"], weight_decay=o["weight_decay"])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        # the head refinement (one epoch of steps) gives its warm-up as a fraction of the steps
        warmup = int(total * o.get("warmup_fraction", o["warmup_epochs"] / max(self.hparams.max_epochs, 1)))

        def lr_factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return o["min_lr_ratio"] + (1 - o["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
