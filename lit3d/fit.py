"""``python -m lit3d.fit [experiment=NAME] [key=value ...]``: label (if needed), train, test, report.

``fit(cfg) -> metrics`` is the one entry that the CLI, sweeps and notebooks share.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from lit3d.cache import build_labels
from lit3d.cache.datamodule import PointmapDataModule, check_poses_describe_labels
from lit3d.cache.store import write_json
from lit3d.config import FitConfig, MissingPackageError, to_yaml
from lit3d.data.io import atomic_write_bytes
from lit3d.students import model_size
from lit3d.students.module import StudentModule

log = logging.getLogger("lit3d.fit")


def default_run_dir(cfg: FitConfig) -> Path:
    return Path("runs") / cfg.experiment / datetime.now().strftime("%Y%m%d-%H%M%S")


LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""``trainer.logger`` -> the package it needs (csv needs none)."""


def make_logger(name: str, run_dir: Path, experiment: str) -> Logger:
    """The Lightning logger ``trainer.logger`` names, writing under ``run_dir`` (wandb: offline unless
    ``WANDB_MODE`` says otherwise; mlflow: a file store in ``run_dir/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set).
    A logger whose package is missing is an error naming it, never a silent fallback."""
    import importlib.util
    import os

    package = LOGGER_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise MissingPackageError(f"trainer.logger={name} needs the {package} package (pip install {package})")
    if name == "tensorboard":
        return TensorBoardLogger(run_dir, name="", version="tensorboard")
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(name=run_dir.name, project=experiment, save_dir=str(run_dir),
                           offline=os.environ.get("WANDB_MODE", "offline") == "offline")
    if name == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=experiment, run_name=run_dir.name,
                            tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", (run_dir / "mlruns").resolve().as_uri()))
    return CSVLogger(run_dir, name="", version="")


def fit(cfg: FitConfig, callbacks: list | None = None, trainer_kwargs: dict | None = None) -> dict[str, float]:
    """Train ``cfg.student`` on the labels of ``cfg`` (built on demand) and return the test metrics.

    Writes into ``cfg.run_dir``: config.yaml, checkpoints/, metrics.csv (the logger's), metrics.json, figures.
    """
    t0 = time.perf_counter()
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    cfg.run_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.yaml", to_yaml(cfg).encode())
    logger = make_logger(cfg.trainer.logger, run_dir, cfg.experiment)  # a missing package fails before labelling
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    cache, label_summary = build_labels(cfg)
    dm = PointmapDataModule(cache, cfg.loader, seed=cfg.seed)
    if cfg.loss.name == "reprojection":
        check_poses_describe_labels(cache, cache.split["train"])
    module = StudentModule.from_config(cfg, dm.train_stats())
    size = model_size(module.student)
    log.info("student %s: %.3f M parameters, %.2f MB", cfg.student.name, size["params"] / 1e6, size["size_mb"])

    t = cfg.trainer
    has_val = len(cache.split.get("val", [])) > 0
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", save_last=True,
                                 monitor="val/l2_mean" if has_val else None, mode="min", save_top_k=1)
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, logger=logger, log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.check_val_every_n_epoch, enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic,
        callbacks=[checkpoint, LearningRateMonitor(logging_interval="epoch"), *(callbacks or [])], default_root_dir=run_dir,
        **(trainer_kwargs or {}),
    )
    resume = str(run_dir / "checkpoints" / "last.ckpt") if t.resume == "last" else (t.resume or None)
    t_train = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    fit_s = time.perf_counter() - t_train
    best = checkpoint.best_model_path if has_val and checkpoint.best_model_path else None
    tested = trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False) if len(cache.split.get("test", [])) else [{}]
    metrics = {k: float(v) for k, v in tested[0].items()}
    metrics.update({"model/params": size["params"], "model/size_mb": size["size_mb"], "time/fit_s": fit_s,
                    "time/total_s": time.perf_counter() - t0, "labels/unit": label_summary.get("unit"),
                    "labels/frame": label_summary.get("frame"), "labels/cache": str(cache.root)})
    if trainer.global_rank == 0:
        write_json(run_dir / "metrics.json", metrics)
        _figures(run_dir, module, dm, best)
        log.info("run %s: test/l2_mean %.4f vs baseline/l2_mean %.4f (%s), fit %.0f s", run_dir,
                 metrics.get("test/l2_mean", float("nan")), metrics.get("baseline/l2_mean", float("nan")),
                 label_summary.get("unit"), fit_s)
    return metrics


def _figures(run_dir: Path, module: StudentModule, dm: PointmapDataModule, best: str | None) -> None:
    """Loss curves, test-frame panels and a point-cloud HTML next to the numbers (never fatal)."""
    try:
        from lit3d.viz.run import write_run_figures

        write_run_figures(run_dir, module if best is None else StudentModule.load(best),
                          dm.datasets.get("test") or dm.datasets["train"])
    except Exception as e:  # figures must not cost a finished training run
        log.warning("could not write figures: %s", e)


def main(argv: list[str] | None = None) -> int:
    from lit3d.cli import run

    return run("lit3d.fit", fit, argv)


if __name__ == "__main__":
    sys.exit(main())
