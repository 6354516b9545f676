"""``python -m lit3d.fit [experiment=NAME] [key=value ...]``: label (if needed), train, test, report.

``fit(cfg) -> metrics`` is the one entry that the CLI, sweeps and notebooks share. One process at a time owns a run
directory (``run_dir/.lock``); a directory that already holds a run is refused unless the run is resumed
(``trainer.resume``), which keeps the earlier epochs' rows of ``metrics.csv``. Checkpoints are written whole with a
SHA-256 sidecar and verified when loaded (:mod:`lit3d.students.checkpoints`).
"""
from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from lit3d.cache import build_labels
from lit3d.cache.datamodule import PointmapDataModule, TrainingProgress, check_poses_describe_labels
from lit3d.cache.store import write_json
from lit3d.config import ConfigError, FitConfig, TrainerConfig, to_yaml
from lit3d.files import atomic_write_bytes
from lit3d.locks import is_launched_worker
from lit3d.loggers import RunCSVLogger, make_logger
from lit3d.runs import check_run_dir_free, run_dir_lock, writing
from lit3d.students import model_size
from lit3d.students.checkpoints import (REFINED_FROM, CheckpointFileError, RunCheckpoint, VerifiedCheckpointIO,
                                        check_same_student, load_checkpoint, read_verified, sidecar)
from lit3d.students.buffer import PROGRESS_START, WARMUP_FRACTION, BufferDataModule, refine_precision
from lit3d.students.module import StudentModule

log = logging.getLogger("lit3d.fit")


def default_run_dir(cfg: FitConfig) -> Path:
    """``runs/<experiment>/<timestamp>``, with a ``-N`` suffix when two runs start within one second."""
    base = Path("runs") / cfg.experiment / datetime.now().strftime("%Y%m%d-%H%M%S")
    path, k = base, 1
    while path.exists():
        path, k = base.with_name(f"{base.name}-{k}"), k + 1
    return path


def check_accelerator(t: TrainerConfig) -> None:
    """``trainer.accelerator=gpu|cuda`` on a machine without a CUDA GPU is a ConfigError (before any labelling)."""
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={t.accelerator}: no CUDA GPU is available here "
                          f"(use trainer.accelerator=cpu or auto)")


def resume_checkpoint(cfg: FitConfig, run_dir: Path) -> tuple[str | None, dict | None]:
    """``(path, checkpoint)`` that ``trainer.resume`` names, verified and checked against the configured student
    (name and input size; the weights are compared once the student is built); ``(None, None)`` without resume."""
    if not cfg.trainer.resume:
        return None, None
    path = run_dir / "checkpoints" / "last.ckpt" if cfg.trainer.resume == "last" else Path(cfg.trainer.resume)
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={cfg.trainer.resume}: no checkpoint {path} to resume from")
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters", {})
    theirs = (hparams.get("student", {}).get("name"), list(hparams.get("img_size", [])))
    ours = (cfg.student.name, list(cfg.loader.resolution))
    if theirs != ours:
        raise CheckpointFileError(f"checkpoint {path} holds a {theirs[0]} student at {theirs[1]}, this config a "
                                  f"{ours[0]} at loader.resolution={ours[1]}: resume with the config it was trained "
                                  f"with, or choose another run_dir")
    return str(path), ckpt


def fit(cfg: FitConfig, callbacks: list | None = None, trainer_kwargs: dict | None = None) -> dict[str, float]:
    """Train ``cfg.student`` on the labels of ``cfg`` (built on demand) and return the test metrics.

    Writes into ``cfg.run_dir``: config.yaml, checkpoints/ (with .sha256 sidecars), metrics.csv (the logger's),
    metrics.json, figures. Holds ``run_dir/.lock`` meanwhile, and refuses a run directory that holds a run unless
    ``trainer.resume`` continues it.
    """
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    cfg.run_dir = str(run_dir)
    if is_launched_worker():  # DDP ranks > 0 re-run this script in rank 0's locked run directory
        return _fit(cfg, run_dir, callbacks, trainer_kwargs)
    with run_dir_lock(run_dir):
        check_run_dir_free(run_dir, cfg.trainer.resume)
        return _fit(cfg, run_dir, callbacks, trainer_kwargs)


def _fit(cfg: FitConfig, run_dir: Path, callbacks: list | None, trainer_kwargs: dict | None) -> dict[str, float]:
    t0 = time.perf_counter()
    check_accelerator(cfg.trainer)
    resume, resumed = resume_checkpoint(cfg, run_dir)  # a bad checkpoint fails before labelling
    logger = make_logger(cfg.trainer.logger, run_dir, cfg.experiment, resumed)  # a missing package too
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    cache, label_summary = build_labels(cfg)
    dm = PointmapDataModule(cache, cfg.loader, seed=cfg.seed)
    # Poses must describe the labels for the reprojection loss and for moved views; one check covers both.
    if cfg.loss.name == "reprojection":
        check_poses_describe_labels(cache, cache.split["train"])
    elif cfg.loader.geometric and cfg.loader.view_shift > 0:  # a moved view is re-rendered through its pose
        check_poses_describe_labels(cache, cache.split["train"], need="loader.view_shift",
                                    remedy="set loader.view_shift=0")
    module = StudentModule.from_config(cfg, dm.train_stats())
    if resumed is not None:
        check_same_student(module, resumed, resume)
    size = model_size(module.student)
    log.info("student %s: %.3f M parameters, %.2f MB", cfg.student.name, size["params"] / 1e6, size["size_mb"])
    with writing(run_dir / "config.yaml"):  # after the checks: it describes the weights
        atomic_write_bytes(run_dir / "config.yaml", to_yaml(cfg).encode())

    t = cfg.trainer
    has_val = len(cache.split.get("val", [])) > 0
    # best.ckpt: the best validation epoch (without validation frames, the last); last.ckpt: the last epoch, which
    # Lightning 2.6's save_last writes only beside a new best, so with validation a second callback writes it
    checkpoint = RunCheckpoint(dirpath=run_dir / "checkpoints", filename="best", save_last=not has_val,
                               monitor="val/l2_mean" if has_val else None, mode="min", save_top_k=1,
                               enable_version_counter=False)
    last = [RunCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                          save_on_train_epoch_end=True, enable_version_counter=False)] if has_val else []
    # the foreach form of torch's EMA: 5x faster per step on a CPU than EMAWeightAveraging's per-tensor one
    ema = cfg.optim.ema_decay
    averaging = [WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(ema))] if ema > 0 else []
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, logger=logger, log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.check_val_every_n_epoch, enable_progress_bar=t.enable_progress_bar,
        deterministic=t.deterministic, gradient_clip_val=cfg.optim.grad_clip or None,
        gradient_clip_algorithm="norm", plugins=[VerifiedCheckpointIO()],
        callbacks=[checkpoint, *last, LearningRateMonitor(logging_interval="epoch"), *averaging, TrainingProgress(),
                   *(callbacks or [])],
        default_root_dir=run_dir,
        **(trainer_kwargs or {}),
    )
    t_train = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    fit_s = time.perf_counter() - t_train
    best = checkpoint.best_model_path if has_val and checkpoint.best_model_path else None
    test_dm, refine_s = dm, 0.0
    if cfg.refine.steps > 0:
        source = best or checkpoint.last_model_path  # the end-to-end student: best on validation, else the last
        trainer, test_dm, best, refine_s = refine_head(cfg, module, dm, trainer, source, run_dir)
    has_test = len(cache.split.get("test", [])) > 0
    tested = trainer.test(module, datamodule=test_dm, ckpt_path=best, verbose=False) if has_test else [{}]
    metrics = {k: float(v) for k, v in tested[0].items()}
    metrics.update({"model/params": size["params"], "model/size_mb": size["size_mb"], "time/fit_s": fit_s + refine_s,
                    "time/refine_s": refine_s,
                    "time/total_s": time.perf_counter() - t0, "labels/unit": label_summary.get("unit"),
                    "labels/frame": label_summary.get("frame"), "labels/cache": str(cache.root)})
    if trainer.global_rank == 0:
        with writing(run_dir / "metrics.json"):
            write_json(run_dir / "metrics.json", metrics)
        _figures(run_dir, module, dm, best)
        log.info("run %s: test/l2_mean %.4f vs baseline/l2_mean %.4f (%s), fit %.0f s", run_dir,
                 metrics.get("test/l2_mean", float("nan")), metrics.get("baseline/l2_mean", float("nan")),
                 label_summary.get("unit"), fit_s)
    return metrics


REFINE_READS = ("refine", "optim", "loss", "loader")
"""The config sections the refinement reads (besides ``seed``)."""


class _RecordOrigin(Callback):
    """Stores ``record`` in every checkpoint the refinement writes."""

    def __init__(self, record: dict):
        self.record = record

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[REFINED_FROM] = self.record


def refine_head(cfg: FitConfig, module: StudentModule, dm: PointmapDataModule, trainer: L.Trainer,
                source: str, run_dir: Path) -> tuple[L.Trainer, L.LightningDataModule, str | None, float]:
    """Train the head of the end-to-end trained student (the weights in ``source``) on a feature buffer of its
    fixed encoder (:mod:`lit3d.students.buffer`); writes ``checkpoints/refined.ckpt`` and logs to
    ``refine/metrics.csv``. A ``refined.ckpt`` made from the same ``source`` with the same settings (``seed`` and
    the sections in ``REFINE_READS``), as a resumed run whose refinement finished has, is kept, not made again; an
    interrupted refinement goes on from its last ``refine-partial.ckpt`` (written every tenth of the steps).
    Returns the trainer, datamodule and checkpoint to test with (None: the module's weights), and the seconds it
    took (buffer included)."""
    t0 = time.perf_counter()
    r = cfg.refine
    data = read_verified(source)
    record = {"settings": {k: asdict(getattr(cfg, k)) for k in REFINE_READS}, "seed": cfg.seed,
              "source_sha256": hashlib.sha256(data).hexdigest()}
    ckpts = run_dir / "checkpoints"
    refined = ckpts / "refined.ckpt"
    if refined.is_file() and (kept := load_checkpoint(refined)).get(REFINED_FROM) == record:
        log.info("%s was refined from these weights with these settings: kept", refined)
        module.load_state_dict(kept["state_dict"])
        return trainer, dm, None, 0.0
    module.load_state_dict(load_checkpoint(source, data)["state_dict"])
    module.student.encoder.requires_grad_(False)
    # the head alone, on its own schedule
    module.optim = {**module.optim, "lr": r.lr, "min_lr_ratio": r.min_lr_ratio, "warmup_fraction": WARMUP_FRACTION,
                    "encoder_lr_scale": 1.0}
    module.progress_start = PROGRESS_START
    partial = ckpts / f"{PARTIAL}.ckpt"
    resume, reached = _partial_refinement(partial, record)
    bdm = BufferDataModule(dm, module.student.encoder, r, seed=cfg.seed, start_step=reached)
    checkpoints = [
        ModelCheckpoint(dirpath=ckpts, filename="refined", monitor=None, save_top_k=1, enable_version_counter=False),
        # one file, overwritten every tenth of the steps: a kill costs at most that
        ModelCheckpoint(dirpath=ckpts, filename=PARTIAL, monitor=None, save_top_k=1, enable_version_counter=False,
                        every_n_train_steps=max(1, r.steps // 10))]
    t = cfg.trainer
    # every process of a DDP run takes rank 0's choice: an `auto` timed on each could differ between them
    precision = trainer.strategy.broadcast(refine_precision(r.precision, trainer.strategy.root_device))
    trainer = L.Trainer(
        max_epochs=1, max_steps=r.steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=precision, logger=RunCSVLogger(run_dir / "refine", epoch=None, step=reached),
        use_distributed_sampler=False, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, deterministic=t.deterministic,
        gradient_clip_val=cfg.optim.grad_clip or None, gradient_clip_algorithm="norm", plugins=[VerifiedCheckpointIO()],
        callbacks=[*checkpoints, _RecordOrigin(record), LearningRateMonitor(logging_interval="step")],
        default_root_dir=run_dir)
    trainer.fit(module, datamodule=bdm, ckpt_path=resume)
    if trainer.global_rank == 0:
        partial.unlink(missing_ok=True)
        sidecar(partial).unlink(missing_ok=True)
    log.info("head refined: %d steps of %d cells", r.steps, r.cells_per_batch)
    return trainer, bdm, checkpoints[0].best_model_path or checkpoints[0].last_model_path, time.perf_counter() - t0


PARTIAL = "refine-partial"
"""Name of the refinement's checkpoint while it runs (``checkpoints/refine-partial.ckpt``), removed at its end."""


def _partial_refinement(partial: Path, record: dict) -> tuple[str | None, int]:
    """``(partial, its step)`` when ``partial`` holds an interrupted refinement of the same weights with the same
    settings, else ``(None, 0)`` (an unreadable one is only the refinement's progress: it starts again, with a
    warning)."""
    if not partial.is_file():
        return None, 0
    try:
        ckpt = load_checkpoint(partial)
    except CheckpointFileError as e:
        log.warning("%s: refining from the start", e)
        return None, 0
    if ckpt.get(REFINED_FROM) != record:
        log.info("%s was made from other weights or settings: refining from the start", partial)
        return None, 0
    log.info("resuming the interrupted refinement at step %d of %s", ckpt["global_step"], partial)
    return str(partial), int(ckpt["global_step"])


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
