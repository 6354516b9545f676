"""StudentModule: world-frame outputs and checkpoints that know their students' weight layout."""
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
