"""StudentModule: world-frame outputs and checkpoints that know their students' weight layout."""
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from lit3d.config import load_config
from lit3d.students.module import STUDENT_FORMAT, CheckpointFormatError, StudentModule


def _module() -> StudentModule:
    cfg = load_config(["student=mobilenetv3", "loader.resolution=[32,32]"])
    return StudentModule.from_config(cfg, {"mean": torch.tensor([1.0, 2.0, 3.0]), "std": torch.tensor([2.0, 2.0, 2.0])})


def test_forward_maps_normalised_outputs_to_world_points():
    module = _module().eval()
    image = torch.rand(1, 3, 32, 32)
    raw = module.student(image)
    assert torch.allclose(module(image), raw * 2.0 + torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1))


def test_checkpoint_round_trip_and_older_formats_refused_by_name(tmp_path):
    module = _module()
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(module)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["lit3d_student_format"] == STUDENT_FORMAT

    loaded = StudentModule.load(path).eval()
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(loaded(image), module.eval()(image))

    ckpt["lit3d_student_format"] = STUDENT_FORMAT - 1
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(CheckpointFormatError, match=rf"checkpoint {old}: written with student format {STUDENT_FORMAT - 1}"):
        StudentModule.load(old)


def _scr_module(*overrides: str) -> StudentModule:
    cfg = load_config(["student=scr", "student.encoder=conv", "student.pretrained=false",
                       "student.freeze_encoder=false", "student.head_width=16", "student.head_layers=2",
                       "loader.resolution=[32,32]", *overrides])
    return StudentModule.from_config(cfg, {"mean": torch.zeros(3), "std": torch.ones(3)})


def test_encoder_lr_scale_moves_the_encoder_at_its_own_rate():
    module = _scr_module("optim.lr=1e-2", "optim.encoder_lr_scale=0")
    head, encoder = module._param_groups()
    assert encoder["lr"] == 0 and "lr" not in head  # the head takes the optimizer's lr
    assert {id(p) for p in encoder["params"]} == {id(p) for p in module.student.encoder.parameters()}
    assert len(head["params"]) + len(encoder["params"]) == len(list(module.parameters()))

    opt = torch.optim.AdamW(module._param_groups(), lr=1e-2, weight_decay=1e-4)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    module(torch.rand(2, 3, 32, 32)).square().mean().backward()
    opt.step()
    for n, p in module.named_parameters():
        assert torch.equal(p, before[n]) == n.startswith("student.encoder."), n


def test_encoder_lr_scale_one_is_a_single_group_and_needs_an_encoder_otherwise():
    assert len(_scr_module()._param_groups()) == 1
    assert _scr_module("optim.encoder_lr_scale=0.1")._param_groups()[1]["lr"] == pytest.approx(3e-4)  # scr: 3e-3
    cfg = load_config(["student=vanilla_cnn", "loader.resolution=[32,32]", "optim.encoder_lr_scale=0.1"])
    module = StudentModule.from_config(cfg, {"mean": torch.zeros(3), "std": torch.ones(3)})
    with pytest.raises(ValueError, match="optim.encoder_lr_scale=0.1: student vanilla_cnn has no trainable encoder"):
        module._param_groups()


def _lr_per_step(module: StudentModule, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps under the module's schedule."""
    module.trainer = SimpleNamespace(estimated_stepping_batches=steps)
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(steps):
        rates.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return rates


def test_schedule_warms_up_then_follows_a_cosine_to_its_floor():
    module = _scr_module("optim.lr=1e-2", "optim.warmup_epochs=3", "optim.min_lr_ratio=0.1", "trainer.max_epochs=30")
    lr = _lr_per_step(module, 100)  # 3 of 30 epochs: 10 warm-up steps
    assert lr[:10] == pytest.approx([1e-2 * (k + 1) / 10 for k in range(10)])
    cosine = [1e-3 + 9e-3 * 0.5 * (1 + math.cos(math.pi * k / 90)) for k in range(90)]
    assert lr[10:] == pytest.approx(cosine)
    # the head refinement: its warm-up a fraction of its steps, its own floor
    module.optim = {**module.optim, "warmup_fraction": 0.02, "min_lr_ratio": 1e-4}
    lr = _lr_per_step(module, 3000)
    assert lr[59] == pytest.approx(1e-2) and lr[58] < lr[59] and lr[-1] == pytest.approx(1e-6, abs=1e-8)


def test_the_loss_runs_in_fp32_under_bf16_autocast():
    """Mixed precision speeds the network; the loss's world-to-camera transforms stay fp32, so exact labels still
    cost nothing (in bf16 their 3 digits would leave about 0.1 px of error on metre-scale points)."""
    from lit3d.geometry import backproject_depth, look_at, transform_points
    import numpy as np

    H = W = 32
    K = np.array([[30.0, 0, 15.5], [0, 30.0, 15.5], [0, 0, 1]])
    T = look_at(np.array([2.3, -3.1, 1.7]), np.array([0.2, 0.4, 0.9]))
    depth = 3.0 + 0.02 * np.arange(W)[None, :] + 0.01 * np.arange(H)[:, None]
    pts = torch.from_numpy(transform_points(T, backproject_depth(depth, K).astype(np.float64))).float()
    batch = {"pts_world": pts.permute(2, 0, 1)[None], "valid": torch.ones(1, H, W, dtype=torch.bool),
             "conf": torch.ones(1, H, W), "K": torch.from_numpy(K).float()[None],
             "cam2world": torch.from_numpy(T).float()[None], "image": torch.rand(1, 3, H, W)}
    module = _module()

    class Exact(torch.nn.Module):  # predicts the labels (normalised), in fp32
        def forward(self, image):
            return (batch["pts_world"] - module.coord_mean) / module.coord_std

    module.student = Exact()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = module.compute_loss(batch)
    assert loss.dtype == torch.float32 and float(loss) < 1e-3
