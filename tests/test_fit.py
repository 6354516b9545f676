"""``python -m lit3d.fit`` end to end on tiny data, for every student; and its one-line errors."""
import json
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit3d.cache import build_labels
from lit3d.fit import fit, main
from testkit import TINY, TINY_VIT, one_line_error

TINY_STUDENTS = {
    "vanilla_cnn": ["student=vanilla_cnn", "student.channels=[8,8,16,16,32,32]"],
    "mobilenetv3": ["student=mobilenetv3", "student.pretrained=false", "student.freeze_backbone=true"],
    "vit": ["student=vit", "student.depth=2", "student.num_heads=4", "student.latent_dim=64", "student.patch_size=16"],
}
REQUIRED = {"test/l2_mean", "test/l2_median", "test/acc_5cm", "baseline/l2_mean", "model/params", "model/size_mb",
            "time/fit_s"}


@pytest.mark.slow
@pytest.mark.parametrize("student", list(TINY_STUDENTS))
def test_fit_every_student_end_to_end(tiny_cfg, student):
    cfg = tiny_cfg(*TINY_STUDENTS[student], "data.resolution=[32,32]", "loader.resolution=[32,32]")
    metrics = fit(cfg)
    assert REQUIRED <= set(metrics)
    run = tiny_cfg().run_dir
    from pathlib import Path

    run = Path(run)
    assert json.loads((run / "metrics.json").read_text())["test/l2_mean"] == pytest.approx(metrics["test/l2_mean"])
    for name in ("config.yaml", "checkpoints/last.ckpt", "metrics.csv", "loss_curves.png", "test_frames.png",
                 "pointclouds.html"):
        assert (run / name).is_file(), name


@pytest.mark.slow
def test_training_beats_the_mean_point_baseline_and_resumes(tiny_cfg):
    # without the default's camera moves: on 24 frames at 24x32 they need more than 60 epochs (0.61 of the baseline)
    common = ["trainer.check_val_every_n_epoch=20", "optim.lr=3e-3", "student.latent_dim=64", "student.num_heads=4",
              "data.num_frames=24", "data.split=interleaved", "data.test_every=6", "data.val_every=6",
              "loader.view_shift=0"]
    metrics = fit(tiny_cfg("trainer.max_epochs=60", *common))
    assert metrics["test/l2_mean"] < 0.6 * metrics["baseline/l2_mean"]  # measured 0.44
    # resume from the last checkpoint with more epochs: Lightning restores the epoch and optimizer state
    resumed = fit(tiny_cfg("trainer.max_epochs=61", "trainer.resume=last", *common))
    assert resumed["time/fit_s"] < metrics["time/fit_s"]


def test_last_checkpoint_is_the_last_epoch_and_a_moved_run_resumes_against_its_best(tiny_cfg, tmp_path):
    """``last.ckpt`` holds the last epoch even when validation stopped improving (Lightning 2.6 writes its own
    ``save_last`` only beside a new best), and a run directory copied elsewhere resumes from it and keeps comparing
    with its best epoch: no ``-v1`` files, no re-trained epochs, ``best.ckpt`` untouched by a worse epoch."""
    import shutil

    import torch

    # a learning rate too small to change a float32 weight: every epoch validates alike, so the best is the first
    common = ["optim.lr=1e-12", "trainer.check_val_every_n_epoch=1", "data.num_frames=12"]
    fit(tiny_cfg("trainer.max_epochs=3", *common))
    ckpts = Path(tiny_cfg().run_dir) / "checkpoints"
    epochs = {n: torch.load(ckpts / f"{n}.ckpt", weights_only=False)["epoch"] for n in ("best", "last")}
    assert epochs == {"best": 0, "last": 2}
    states = torch.load(ckpts / "last.ckpt", weights_only=False)["callbacks"]
    assert sum(k.startswith("ModelCheckpoint{") for k in states) == 2  # Lightning's keys: older runs resume alike

    moved = tmp_path / "moved"
    shutil.copytree(tiny_cfg().run_dir, moved)
    best = (moved / "checkpoints" / "best.ckpt").read_bytes()
    fit(tiny_cfg("trainer.max_epochs=4", "trainer.resume=last", f"run_dir={moved}", *common))
    assert sorted(p.name for p in (moved / "checkpoints").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert (moved / "checkpoints" / "best.ckpt").read_bytes() == best
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 3


def test_ema_keeps_the_moving_average_of_every_step_in_the_checkpoint(tiny_cfg):
    """``optim.ema_decay``: the saved weights are the average, recomputed here from the weights after each step."""
    import torch

    steps = []
    fit(tiny_cfg("optim.ema_decay=0.7", "trainer.max_epochs=2"), callbacks=[_RecordSteps(steps)])
    assert len(steps) >= 4
    ema = _ema(steps, decay=0.7)
    ckpt = torch.load(tiny_cfg().run_dir + "/checkpoints/last.ckpt", weights_only=False)
    for k, p in ema.items():
        torch.testing.assert_close(ckpt["state_dict"][k], p)
        torch.testing.assert_close(ckpt["current_model_state"][k], steps[-1][k])
    assert any((ema[k] - steps[-1][k]).abs().max() > 1e-4 for k in ema)  # the average is not the last step


@pytest.mark.slow
def test_ema_resumes_where_the_killed_run_stopped(tiny_cfg):
    """A resumed run goes on averaging from the checkpoint's average, not from its last weights."""
    import torch

    steps = []
    fit(tiny_cfg("optim.ema_decay=0.7", "trainer.max_epochs=2"), callbacks=[_RecordSteps(steps)])
    first = len(steps)
    fit(tiny_cfg("optim.ema_decay=0.7", "trainer.max_epochs=4", "trainer.resume=last"), callbacks=[_RecordSteps(steps)])
    assert len(steps) >= 2 * first
    ckpt = torch.load(tiny_cfg().run_dir + "/checkpoints/last.ckpt", weights_only=False)
    for k, p in _ema(steps, decay=0.7).items():
        torch.testing.assert_close(ckpt["state_dict"][k], p)


class _RecordSteps(Callback):
    """Appends the student's weights after every optimizer step to ``steps``."""

    def __init__(self, steps: list):
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.steps.append({k: p.detach().clone() for k, p in pl_module.named_parameters()})


def _ema(steps: list[dict], decay: float) -> dict:
    """The exponential moving average of the recorded weights, started at the first step's."""
    ema = dict(steps[0])
    for step in steps[1:]:
        ema = {k: decay * ema[k] + (1 - decay) * step[k] for k in ema}
    return ema


def test_bad_input_gives_one_line_errors(tiny_cfg, tmp_path, caplog):
    assert "unknown student 'resnet'" in one_line_error(caplog, main, ["student=resnet"])
    assert "unknown config key 'trainer.max_epoch'" in one_line_error(caplog, main, ["trainer.max_epoch=3"])
    assert "'optim.ema_decay': 1.0; it must be < 1" in one_line_error(caplog, main, ["optim.ema_decay=1.0"])
    assert "has no frames" in one_line_error(caplog, main, ["data.num_frames=0", f"cache_dir={tmp_path}"])


def test_corrupt_cache_entry_is_rebuilt_before_training(tiny_cfg, caplog):
    cfg = tiny_cfg()
    cache, _ = build_labels(cfg)
    victim = cache.frame_path(cache.split["train"][0])
    victim.write_bytes(victim.read_bytes()[:-50])
    with caplog.at_level(logging.WARNING):
        metrics = fit(cfg)
    assert any("fails its checksum" in r.getMessage() for r in caplog.records)
    assert metrics["test/l2_mean"] > 0


def test_gradient_clipping_is_lightnings_and_off_in_the_paper_experiments(tiny_cfg):
    import lightning as L

    from lit3d.config import load_config

    seen = {}

    class Record(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["clip"] = (trainer.gradient_clip_val, trainer.gradient_clip_algorithm)

    fit(tiny_cfg("optim.grad_clip=2.5"), callbacks=[Record()])
    assert seen["clip"] == (2.5, "norm")
    assert load_config([]).optim.grad_clip == 100.0
    for paper in ("vanilla_cnn", "mobilenetv3_frozen", "mobilenetv3_unfrozen", "vit_best"):
        assert load_config([f"experiment={paper}"]).optim.grad_clip == 0, paper


def test_loggers_name_their_missing_package(tmp_path, monkeypatch):
    import importlib.util

    from lit3d.config import MissingPackageError, load_config
    from lit3d.loggers import make_logger

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MissingPackageError, match="trainer.logger=wandb needs the wandb package"):
        make_logger("wandb", tmp_path, "x")
    from lightning.pytorch.loggers import CSVLogger

    assert isinstance(make_logger("csv", tmp_path, "x"), CSVLogger)
    with pytest.raises(Exception, match="valid values: csv, tensorboard, wandb, mlflow"):
        load_config(["trainer.logger=neptune"])


# --- run directories: one owner, no overwrite, resume keeps the log ------------------------------------------------
@pytest.mark.slow  # ~10-25 s: the second process imports torch and Lightning
def test_a_second_fit_on_a_locked_run_dir_fails_at_once(tmp_path):
    """Two real processes: this one holds the run directory, a ``lit3d.fit`` started on it exits 2 in one line."""
    import os
    import subprocess
    import sys

    from lit3d.runs import run_dir_lock

    run_dir = tmp_path / "run"
    with run_dir_lock(run_dir):
        proc = subprocess.run([sys.executable, "-m", "lit3d.fit", *TINY, f"run_dir={run_dir}",
                               f"cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"run directory {run_dir} is in use by" in errors[0]
    assert f"pid {os.getpid()} on" in errors[0] and "since" in errors[0]  # the holder and its start time
    assert not (tmp_path / "cache").exists() and sorted(p.name for p in run_dir.iterdir()) == [".lock"]


def test_a_run_dir_holding_a_run_is_refused_unless_resumed(tiny_cfg, caplog):
    from pathlib import Path

    from lit3d.runs import check_run_dir_free

    run_dir = Path(tiny_cfg().run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    check_run_dir_free(run_dir, resume="")  # config.yaml alone: a run that failed before training, nothing to lose
    (run_dir / "metrics.csv").write_text("epoch,step\n0,3\n")
    msg = one_line_error(caplog, main, [f"run_dir={run_dir}"])
    assert msg == (f"run directory {run_dir} already holds a run (metrics.csv); it has no checkpoints/last.ckpt to "
                   f"resume from; delete it, or choose another run_dir")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert "resume it with trainer.resume=last, or choose another run_dir" in one_line_error(
        caplog, main, [f"run_dir={run_dir}"])
    check_run_dir_free(run_dir, resume="last")
    assert (run_dir / "metrics.csv").read_text() == "epoch,step\n0,3\n"  # nothing was touched


@pytest.mark.slow
def test_resume_keeps_the_earlier_epochs_and_checks_the_student(tiny_cfg, caplog):
    import csv
    from pathlib import Path

    fit(tiny_cfg("trainer.max_epochs=2"))
    run_dir = Path(tiny_cfg().run_dir)
    log_path = run_dir / "metrics.csv"
    with open(log_path, newline="") as f:
        header = next(csv.reader(f))
    with open(log_path, "a", newline="") as f:  # a row logged after the last checkpoint, before a kill
        csv.DictWriter(f, header).writerow({"epoch": 2, "step": 7, "train/loss_epoch": 12345.0})

    # another student, or the same one of another size, is refused before training (the log is left as it was)
    assert "holds a vit student at [24, 32], this config a vanilla_cnn" in one_line_error(
        caplog, main, [*_tiny_args(run_dir), "student=vanilla_cnn", "trainer.resume=last"])
    assert "holds another student (vit, " in one_line_error(
        caplog, main, [*_tiny_args(run_dir), "student=vit", "student.depth=2", "student.latent_dim=32",
                 "student.num_heads=2", "student.patch_size=8", "trainer.resume=last"])

    fit(tiny_cfg("trainer.max_epochs=4", "trainer.resume=last"))
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(float(r["epoch"])) for r in rows if r.get("train/loss_epoch")]
    assert epochs == [0, 1, 2, 3]  # the first run's epochs kept, the stale row of epoch 2 replaced
    assert [int(float(r["epoch"])) for r in rows if r.get("val/l2_mean")] == [0, 1, 2, 3]
    assert len([r for r in rows if r.get("lr-AdamW")]) == 4  # one learning-rate row per epoch, none twice
    assert all(r["train/loss_epoch"] != "12345.0" for r in rows)
    from lit3d.runs import load_curves

    assert len(load_curves(run_dir)["train"][1]) == 4


def _tiny_args(run_dir) -> list[str]:
    return [*TINY, f"cache_dir={run_dir.parent / 'cache'}", f"run_dir={run_dir}"]


def test_full_disk_when_saving_a_checkpoint_is_one_line_and_keeps_the_last_good_one(tiny_cfg, caplog, monkeypatch):
    import errno
    from pathlib import Path

    from lit3d.students.checkpoints import read_verified

    run_dir = Path(tiny_cfg().run_dir)
    real, writes = Path.write_bytes, []

    def disk_full_at_the_third_checkpoint(self, data):
        if self.name.startswith(".") and ".ckpt." in self.name and ".sha256." not in self.name:  # not the sidecars
            writes.append(self.name)
            if len(writes) == 3:  # epoch 0 wrote best and last; epoch 1's best finds the disk full
                real(self, data[:1000])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", disk_full_at_the_third_checkpoint)
    msg = one_line_error(caplog, main, [*_tiny_args(run_dir), *TINY_VIT, "trainer.max_epochs=2"])
    assert msg.startswith(f"cannot write checkpoint {run_dir / 'checkpoints'}/") and "no space left on device" in msg
    monkeypatch.undo()
    for name in ("best.ckpt", "last.ckpt"):  # epoch 0's, whole and verified
        assert len(read_verified(run_dir / "checkpoints" / name)) > 1000
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_gpu_accelerator_without_a_gpu_and_bad_values_are_one_line_errors(tmp_path, caplog):
    import torch

    if not torch.cuda.is_available():
        assert "trainer.accelerator=gpu: no CUDA GPU is available here" in one_line_error(
            caplog, main, ["trainer.accelerator=gpu", f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path}"])
    assert "invalid value for 'trainer.max_epochs': -2; it must be >= 1" in one_line_error(
        caplog, main, ["trainer.max_epochs=-2"])
    assert "invalid value for 'data.stride': 0" in one_line_error(caplog, main, ["data.stride=0"])
    assert "invalid value for 'loader.resolution': [0, 5]" in one_line_error(caplog, main, ["loader.resolution=[0,5]"])
    assert "invalid value for 'align.method': 'globl'" in one_line_error(caplog, main, ["align.method=globl"])
    assert not (tmp_path / "labels").exists()  # nothing was labelled


def test_a_full_disk_or_read_only_folder_is_one_line_naming_the_file(tmp_path, caplog):
    import errno

    from lit3d.cli import command
    from lit3d.runs import RunDirError, writing

    with pytest.raises(RunDirError, match=f"cannot write {tmp_path / 'metrics.json'}: No space left on device"):
        with writing(tmp_path / "metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device")

    def read_only(argv):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "run" / "metrics.csv"))

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert command("lit3d.fit", read_only, []) == 2  # e.g. Lightning's CSV writer: no traceback
    assert [r.getMessage() for r in caplog.records] == [f"Read-only file system: {tmp_path / 'run' / 'metrics.csv'}"]
    with pytest.raises(OSError):  # other OSErrors remain bugs with a traceback
        command("lit3d.fit", lambda argv: (_ for _ in ()).throw(OSError(errno.EBADF, "Bad file descriptor")), [])


class _RecordMovedViews(Callback):
    """Per epoch, how many training views of each batch had their camera centre moved (a roll, zoom or shift
    never moves it)."""

    def __init__(self, moved: dict[int, int]):
        self.moved = moved

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        frames = trainer.datamodule.datasets["train"]
        recorded_N3 = torch.stack([frames.item(int(k), geometric=False)["cam2world"][:3, 3] for k in batch["index"]])
        offset_N = (batch["cam2world"][:, :3, 3].cpu() - recorded_N3).norm(dim=1)
        epoch = trainer.current_epoch
        self.moved[epoch] = self.moved.get(epoch, 0) + int((offset_N > 1e-5).sum())


@pytest.mark.parametrize("workers", [0, 1])
def test_view_shift_until_stops_moving_views_for_the_last_epochs(tiny_cfg, workers):
    """``loader.view_shift_until=0.5`` of 4 epochs: views move in epochs 0-1 and none in 2-3, also in persistent
    DataLoader workers (the progress is in shared memory)."""
    moved: dict[int, int] = {}
    fit(tiny_cfg("student=mobilenetv3", "student.pretrained=false", "loader.view_shift=0.1",
                 "loader.view_shift_until=0.5", f"loader.num_workers={workers}", "trainer.max_epochs=4",
                 "trainer.check_val_every_n_epoch=4"), callbacks=[_RecordMovedViews(moved)])
    assert moved[0] > 0 and moved[1] > 0 and moved[2] == 0 and moved[3] == 0, moved
