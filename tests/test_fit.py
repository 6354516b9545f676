"""``python -m lit3d.fit`` end to end on tiny data, for every student; and its one-line errors."""
import json
import logging

import pytest

from lit3d.cache import build_labels
from lit3d.fit import fit, main

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
    common = ["trainer.check_val_every_n_epoch=20", "optim.lr=3e-3", "student.latent_dim=64", "student.num_heads=4",
              "data.num_frames=24", "data.split=interleaved", "data.test_every=6", "data.val_every=6"]
    metrics = fit(tiny_cfg("trainer.max_epochs=60", *common))
    assert metrics["test/l2_mean"] < 0.6 * metrics["baseline/l2_mean"]  # measured 0.44
    # resume from the last checkpoint with more epochs: Lightning restores the epoch and optimizer state
    resumed = fit(tiny_cfg("trainer.max_epochs=61", "trainer.resume=last", *common))
    assert resumed["time/fit_s"] < metrics["time/fit_s"]


def _one_line_error(caplog, argv):
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    return errors[0]


def test_bad_input_gives_one_line_errors(tiny_cfg, tmp_path, caplog):
    assert "unknown student 'resnet'" in _one_line_error(caplog, ["student=resnet"])
    assert "unknown config key 'trainer.max_epoch'" in _one_line_error(caplog, ["trainer.max_epoch=3"])
    assert "has no frames" in _one_line_error(caplog, ["data.num_frames=0", f"cache_dir={tmp_path}"])


def test_corrupt_cache_entry_is_rebuilt_before_training(tiny_cfg, caplog):
    cfg = tiny_cfg()
    cache, _ = build_labels(cfg)
    victim = cache.frame_path(cache.split["train"][0])
    victim.write_bytes(victim.read_bytes()[:-50])
    with caplog.at_level(logging.WARNING):
        metrics = fit(cfg)
    assert any("fails its checksum" in r.getMessage() for r in caplog.records)
    assert metrics["test/l2_mean"] > 0


def test_loggers_name_their_missing_package(tmp_path, monkeypatch):
    import importlib.util

    from lit3d.config import MissingPackageError, load_config
    from lit3d.fit import make_logger

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MissingPackageError, match="trainer.logger=wandb needs the wandb package"):
        make_logger("wandb", tmp_path, "x")
    assert type(make_logger("csv", tmp_path, "x")).__name__ == "CSVLogger"
    with pytest.raises(Exception, match="valid values: csv, tensorboard, wandb, mlflow"):
        load_config(["trainer.logger=neptune"])
