import pytest
import torch
from lightning.fabric.utilities.data import AttributeDict

from lit3d.students.ensemble import PointEnsemble


class Affine(torch.nn.Module):
    """A stand-in student: world points a * image + b, input size ``size``."""

    def __init__(self, a: float, b: float, size=(6, 8)):
        super().__init__()
        self.a, self.b = a, b
        self.hparams = AttributeDict(img_size=list(size))

    def forward(self, x):
        return self.a * x + self.b


def test_the_ensemble_is_the_mean_of_its_members_points():
    x = torch.rand(2, 3, 6, 8)
    members = [Affine(1.0, 0.0), Affine(3.0, 1.0), Affine(-0.5, 2.0)]
    expected = sum(m(x) for m in members) / 3
    ensemble = PointEnsemble(members)
    torch.testing.assert_close(ensemble(x), expected)
    assert ensemble.hparams.img_size == [6, 8]


def test_students_of_different_input_sizes_cannot_be_averaged():
    with pytest.raises(ValueError, match="different input sizes"):
        PointEnsemble([Affine(1.0, 0.0), Affine(1.0, 0.0, size=(12, 16))])
