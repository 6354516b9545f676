"""The Lightning logger of a run (``trainer.logger``), and a CSV logger that keeps its rows when a run resumes."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lit3d.config import MissingPackageError
from lit3d.runs import write_csv

log = logging.getLogger(__name__)


LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""``trainer.logger`` -> the package it needs (csv needs none)."""


def make_logger(name: str, run_dir: Path, experiment: str, resumed: dict | None = None) -> Logger:
    """The Lightning logger ``trainer.logger`` names, writing under ``run_dir`` (wandb: offline unless
    ``WANDB_MODE`` says otherwise; mlflow: a file store in ``run_dir/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set).
    A logger whose package is missing is an error naming it, never a silent fallback. ``resumed``: the checkpoint a
    run resumes from (csv keeps the rows before it)."""
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
    resumed = resumed or {}
    return RunCSVLogger(run_dir, int(resumed.get("epoch", -1)), int(resumed.get("global_step", 0)))


class RunCSVLogger(CSVLogger):
    """Lightning's CSV logger writing ``run_dir/metrics.csv``. A resumed run keeps the rows up to its checkpoint
    (``epoch``; rows without an epoch: ``step``) and appends to them, where Lightning's own writer deletes the file
    and with it the epochs before the resume (and the loss curves drawn from it). ``epoch=-1``: a new run;
    ``epoch=None``: a checkpoint within an epoch, the rows before ``step`` are kept."""

    def __init__(self, run_dir: Path, epoch: int | None = -1, step: int = 0):
        super().__init__(run_dir, name="", version="")
        self._until = (epoch, step)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, *self._until)
        return self._experiment


class _KeepingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, epoch: int | None, step: int):
        self._until = (epoch, step)
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        """Called by ``__init__`` where the base class deletes metrics.csv: keep the rows before the resume."""
        path = Path(self.metrics_file_path)
        if not path.is_file():  # a new run (its run directory holds no metrics.csv: check_run_dir_free)
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if _before(r, *self._until)]
        if not kept:
            path.unlink()
            return
        write_csv(path, kept)  # atomically: a kill now leaves the old rows or the kept ones
        self.metrics_keys = header
        log.info("resumed run: kept %d of %d rows of %s (up to epoch %s, step %d)", len(kept), len(rows), path,
                 *self._until)


def _before(row: dict[str, str], epoch: int | None, step: int) -> bool:
    """Whether a metrics.csv row was logged before a checkpoint at the end of ``epoch`` (``step`` optimizer steps):
    rows of later epochs were logged after it and are logged again by the resumed run. ``epoch=None``: a checkpoint
    within an epoch (the head refinement's), the rows before ``step``."""
    try:
        if row.get("epoch") and epoch is not None:
            return float(row["epoch"]) <= epoch
        return bool(row.get("step")) and float(row["step"]) < step  # learning-rate rows: step only
    except ValueError:  # a line cut short by a kill
        return False
