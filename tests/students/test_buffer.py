"""The head refinement's feature buffer: cells, their cameras, their features; and the refinement end to end."""
import csv
import dataclasses
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit3d.config import ConfigError, load_config
from lit3d.geometry import backproject_depth, pixel_grid, project, transform_points
from lit3d.students import buffer
from lit3d.students.buffer import BufferDataModule, FeatureBuffer, build_buffer, refine_precision
from lit3d.students.checkpoints import load_checkpoint
from lit3d.students.losses import reprojection_loss
from testkit import TINY

S = 4  # the stub encoder's stride


class StubEncoder(torch.nn.Module):
    """Stride-4 features: each cell's mean colour and its position, so a cell's feature is known independently."""

    stride, out_channels = S, 5

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, img_B3HW):
        B, _, H, W = img_B3HW.shape
        h, w = -(-H // S), -(-W // S)  # ceil, as "same" padding gives
        pad = torch.nn.functional.pad(img_B3HW, (0, w * S - W, 0, h * S - H))
        mean = torch.nn.functional.avg_pool2d(pad, S) * self.scale
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        return torch.cat([mean, rows.expand(B, 1, h, w).float(), cols.expand(B, 1, h, w).float()], 1)


def views(B=3, H=18, W=22, seed=0):
    """Batches of views of a wavy surface with exact world labels, random cameras, and some padding."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(B):
        K = np.array([[20.0 + rng.uniform(0, 5), 0, W / 2 + rng.uniform(-2, 2)],
                      [0, 21.0, H / 2 + rng.uniform(-2, 2)], [0, 0, 1]])
        a = rng.uniform(-0.3, 0.3)
        R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, rng.normal(size=3)
        uv = pixel_grid(H, W)
        depth = 2.0 + 0.3 * np.sin(uv[..., 0] / 3) + 0.1 * uv[..., 1] / H
        pts = transform_points(T, backproject_depth(depth, K))
        inside = np.ones((H, W), bool)
        inside[:, : rng.integers(0, 9)] = False  # augmentation padding on the left
        items.append({"image": torch.rand(3, H, W), "pts_world": torch.from_numpy(pts).permute(2, 0, 1).float(),
                      "valid": torch.from_numpy(inside.copy()), "inside": torch.from_numpy(inside),
                      "conf": torch.ones(H, W), "K": torch.from_numpy(K).float(),
                      "cam2world": torch.from_numpy(T).float()})
    return [torch.utils.data.default_collate(items)]


def test_each_cells_labels_project_through_its_own_camera_onto_its_pixels():
    loader = views()
    buf = build_buffer(StubEncoder(), loader, passes=1)
    batch = buf.__getitems__(list(range(len(buf))))
    uv_ss2 = pixel_grid(S, S)
    for k in range(len(buf)):
        world2cam = np.linalg.inv(batch["cam2world"][k].double().numpy())
        pts_cam = transform_points(world2cam, batch["pts_world"][k].double().permute(1, 2, 0).numpy())
        uv, _ = project(pts_cam, batch["K"][k].double().numpy())
        np.testing.assert_allclose(uv, uv_ss2, atol=1e-3)
    # and the loss, which reads the same cameras, sees exact labels: nothing to pay
    loss, _ = reprojection_loss(batch["pts_world"], batch["pts_world"], batch["valid"], batch["inside"], batch["K"],
                                batch["cam2world"], 0.5, load_config().loss, image_width=batch["view_width"])
    assert float(loss) == pytest.approx(0.0, abs=1e-3)


def test_the_buffer_holds_whole_cells_that_show_the_scene_with_their_features_and_labels():
    (batch,) = views()
    buf = build_buffer(StubEncoder(), [batch], passes=2)
    h, w = 18 // S, 22 // S  # whole cells only: the last partial row and column are dropped
    shown = batch["inside"][:, : h * S, : w * S].reshape(3, h, S, w, S).any(4).any(2)
    assert len(buf) == 2 * int(shown.sum()) and buf.view_width == 22
    got = buf.__getitems__(list(range(len(buf))))
    for k in range(len(buf)):
        view, (r, c) = int(buf.view_N[k]) % 3, buf.cell_N2[k].tolist()
        assert shown[view, r, c]
        mean_colour = batch["image"][view, :, r * S:(r + 1) * S, c * S:(c + 1) * S].mean((1, 2))
        # the features are stored in bf16: 3 significant digits
        expected = torch.cat([mean_colour, torch.tensor([float(r), float(c)])])
        torch.testing.assert_close(got["features"][k, :, 0, 0], expected, atol=1e-2, rtol=1e-2)
        pixels = (slice(r * S, (r + 1) * S), slice(c * S, (c + 1) * S))
        torch.testing.assert_close(got["pts_world"][k], batch["pts_world"][view, :, pixels[0], pixels[1]])
        assert torch.equal(got["inside"][k], batch["inside"][view, pixels[0], pixels[1]])


def test_the_datamodule_draws_the_configured_steps_of_random_cells():
    cfg = load_config(["refine.steps=5", "refine.cells_per_batch=7", "refine.views_per_frame=1", "student=scr"])

    class Images:
        def __init__(self):
            self.asked = []

        def setup(self, stage=None):
            pass

        def train_dataloader(self, **augmentation):
            self.asked.append(augmentation)
            return views()

    dm = BufferDataModule(images := Images(), StubEncoder(), cfg.refine, seed=3)
    dm.setup("fit")
    assert images.asked == [{}]  # the loader's own augmentation; refine.scale_range asks for its zoom instead
    zoomed = BufferDataModule(wide := Images(), StubEncoder(), dataclasses.replace(cfg.refine, scale_range=[0.5, 2]))
    zoomed.setup("fit")
    assert wide.asked == [{"scale_range": [0.5, 2]}]
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and all(len(b["pts_world"]) == 7 for b in batches)
    assert batches[0]["features"].shape == (7, 5, 1, 1) and batches[0]["features"].dtype == torch.float32
    # a refinement resumed at step 2 draws other cells than it drew at its start
    again = BufferDataModule(Images(), StubEncoder(), cfg.refine, seed=3, start_step=2)
    again.setup("fit")
    resumed = list(again.train_dataloader())
    assert len(resumed) == 5 and not torch.equal(resumed[0]["pts_world"], batches[0]["pts_world"])


@pytest.mark.parametrize("fp32_s, bf16_s, chosen", [
    (0.4, 0.1, "bf16-mixed"),  # a CPU with AMX: bf16 about 4x faster
    (1.5, 1.0, "bf16-mixed"),  # exactly BF16_MIN_SPEEDUP
    (1.4, 1.0, "32-true"),  # a little faster is not worth bf16's rounding
    (0.007, 0.44, "32-true"),  # a CPU without bf16 units (measured: 60x slower, emulated)
])
def test_auto_refine_precision_takes_bf16_on_a_cpu_only_where_it_is_faster(monkeypatch, caplog, fp32_s, bf16_s,
                                                                          chosen):
    monkeypatch.setattr(buffer, "_matmul_seconds", lambda bf16: bf16_s if bf16 else fp32_s)
    with caplog.at_level(logging.INFO, logger="lit3d.students.buffer"):
        assert refine_precision("auto", torch.device("cpu")) == chosen
    assert f"refine.precision=auto: {chosen}" in caplog.text
    assert refine_precision("auto", torch.device("cuda", 0)) == "32-true"  # launch-bound steps: never timed
    assert refine_precision("bf16-mixed", torch.device("cpu")) == "bf16-mixed"  # a setting is kept as written


def test_auto_on_this_cpu_follows_the_rule_on_the_times_it_measured(caplog):
    assert load_config([]).refine.precision == "auto"
    with caplog.at_level(logging.INFO, logger="lit3d.students.buffer"):
        chosen = refine_precision("auto", torch.device("cpu"))
    fp32_ms, bf16_ms = map(float, re.search(r"take ([\d.]+) ms in fp32, ([\d.]+) ms in bf16", caplog.text).groups())
    assert 0 < fp32_ms < 5000 and 0 < bf16_ms < 5000
    # the logged times are rounded to 0.1 ms: only a clear margin is checked
    if fp32_ms > 1.6 * bf16_ms:
        assert chosen == "bf16-mixed"
    elif fp32_ms < 1.4 * bf16_ms:
        assert chosen == "32-true"


@pytest.mark.parametrize("overrides, key", [
    (["refine.steps=10"], "student=scr"),
    (["refine.steps=10", "student=scr", "student.context=1"], "student.context=1"),
    (["refine.precision=bf17"], "refine.precision"),
    (["refine.steps=-1"], "refine.steps"),
    (["refine.scale_range=[2,1]"], "refine.scale_range"),
    (["refine.steps=10", "student=scr", "refine.scale_range=[0.5,2]", "loader.geometric=false"], "loader.geometric"),
])
def test_bad_refine_settings_are_errors_at_load(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides)


@pytest.mark.slow
def test_fit_refines_the_head_only_and_the_run_then_means_the_refined_student(tiny_cfg, caplog):
    from lit3d.fit import fit
    from lit3d.runs import checkpoint_path
    from lit3d.students.module import StudentModule

    cfg = tiny_cfg("student=scr", "student.encoder=conv", "student.pretrained=false", "student.head_width=32",
                   "data.resolution=[32,32]", "loader.resolution=[32,32]", "refine.steps=6",
                   "refine.views_per_frame=2", "refine.cells_per_batch=16", "refine.precision=32-true")
    metrics = fit(cfg)
    ckpts = checkpoint_path(cfg.run_dir).parent
    assert checkpoint_path(cfg.run_dir) == ckpts / "refined.ckpt" and metrics["time/refine_s"] > 0
    before, after = (StudentModule.load(ckpts / n).state_dict() for n in ("best.ckpt", "refined.ckpt"))
    for name in before:
        same = torch.equal(before[name], after[name])
        if name.startswith("student.encoder."):
            assert same, name
        elif name.startswith("student.head.") and name.endswith("weight"):
            assert not same, name
    assert (ckpts.parent / "refine" / "metrics.csv").is_file()

    # resumed, a finished refinement is kept; other refine.* settings make it again
    refined = (ckpts / "refined.ckpt").read_bytes()
    again = fit(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, resume="last")))
    assert (ckpts / "refined.ckpt").read_bytes() == refined and again["time/refine_s"] == 0
    assert again["test/l2_mean"] == pytest.approx(metrics["test/l2_mean"], rel=1e-5)
    more = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, resume="last"),
                               refine=dataclasses.replace(cfg.refine, steps=7))
    assert fit(more)["time/refine_s"] > 0
    assert load_checkpoint(ckpts / "refined.ckpt")["global_step"] == 7

    # resumed without refinement (and trained on), the run means its end-to-end student again
    plain = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, resume="last", max_epochs=3),
                                refine=dataclasses.replace(cfg.refine, steps=0))
    fit(plain)
    assert checkpoint_path(cfg.run_dir) == ckpts / "best.ckpt" and (ckpts / "refined.ckpt").is_file()
    # a config that still refines (a resume killed before its refinement) does not mean the older refinement
    config = Path(cfg.run_dir) / "config.yaml"
    config.write_text(config.read_text().replace("steps: 0", "steps: 7"))
    with caplog.at_level(logging.WARNING, logger="lit3d.runs"):
        assert checkpoint_path(cfg.run_dir) == ckpts / "best.ckpt"
    assert "refined from other weights" in caplog.text


class _Draws:
    """Counts the batches drawn from every FeatureBuffer; with ``kill_at``, that batch raises, as a kill stops a run."""

    def __init__(self, monkeypatch, kill_at: int | None = None):
        self.calls, getitems = 0, FeatureBuffer.__getitems__

        def draw(buffer, indices):
            self.calls += 1
            if kill_at is not None and self.calls >= kill_at:
                raise RuntimeError("killed")
            return getitems(buffer, indices)

        monkeypatch.setattr(FeatureBuffer, "__getitems__", draw)


@pytest.mark.slow
def test_an_interrupted_refinement_goes_on_from_its_last_step(tiny_cfg, monkeypatch, caplog):
    from lit3d.fit import PARTIAL, fit

    cfg = tiny_cfg("student=scr", "student.encoder=conv", "student.pretrained=false", "student.head_width=32",
                   "data.resolution=[32,32]", "loader.resolution=[32,32]", "refine.steps=20",
                   "refine.views_per_frame=2", "refine.cells_per_batch=16", "refine.precision=32-true")
    ckpts = Path(cfg.run_dir) / "checkpoints"
    partial = ckpts / f"{PARTIAL}.ckpt"
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="killed"):
        _Draws(m, kill_at=13)
        fit(cfg)
    reached = load_checkpoint(partial)["global_step"]  # saved every 2 steps (a tenth of 20)
    assert reached in (10, 12) and not (ckpts / "refined.ckpt").exists()

    draws = _Draws(monkeypatch)
    resumed = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, resume="last"))
    with caplog.at_level(logging.INFO, logger="lit3d.fit"):
        fit(resumed)
    assert f"resuming the interrupted refinement at step {reached}" in caplog.text
    assert draws.calls <= 20 - reached + 1  # the steps left (and one batch fetched ahead)
    assert load_checkpoint(ckpts / "refined.ckpt")["global_step"] == 20 and not partial.exists()
    with open(Path(cfg.run_dir) / "refine" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("lr-AdamW")]
    assert steps == sorted(set(steps)) and min(steps) < reached <= max(steps)  # the rows before the kill are kept

    # a damaged partial checkpoint only costs the refinement's progress
    monkeypatch.undo()
    (ckpts / "refined.ckpt").unlink()
    with monkeypatch.context() as m, pytest.raises(RuntimeError, match="killed"):
        _Draws(m, kill_at=13)
        fit(resumed)
    partial.write_bytes(partial.read_bytes()[:100])
    draws = _Draws(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="lit3d.fit"):
        fit(resumed)
    assert "is corrupt" in caplog.text and "refining from the start" in caplog.text and draws.calls >= 20
    assert load_checkpoint(ckpts / "refined.ckpt")["global_step"] == 20


@pytest.mark.slow
def test_ddp_refinement_takes_its_steps_on_every_process(tmp_path):
    """Two CPU processes (gloo): each draws its own cells for `refine.steps` steps; the trainer must not split
    them by the buffer's length."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.pop("LOCAL_RANK", None)
    args = [*(a for a in TINY if not a.endswith("[24,32]")), "data.resolution=[32,32]", "loader.resolution=[32,32]",
            "student=scr", "student.encoder=conv", "student.pretrained=false", "student.freeze_encoder=false",
            "student.head_width=32", "refine.steps=5", "refine.views_per_frame=2", "refine.cells_per_batch=16",
            "refine.precision=auto", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu",
            f"cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "lit3d.fit", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "refine.precision=auto: " in proc.stderr  # chosen (and logged) before the refinement, under DDP
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "refined.ckpt")["global_step"] == 5
    assert (tmp_path / "run" / "metrics.json").is_file()
