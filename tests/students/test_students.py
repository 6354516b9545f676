"""Every registered student, as timm tests its models: shape, finiteness, gradients, size; and learning."""
import pytest
import torch

from lit3d.config import load_config
from lit3d.students import STUDENTS, create_student, model_size
from lit3d.students.head import ConvHead

SMALL = {
    "vanilla_cnn": ["student.channels=[8,8,16,16,32,32]"],
    "mobilenetv3": ["student.pretrained=false"],
    "vit": ["student.depth=2", "student.num_heads=4", "student.latent_dim=64", "student.patch_size=16"],
    "scr": ["student.encoder=conv", "student.freeze_encoder=false", "student.head_width=32", "student.head_layers=2"],
}


@pytest.mark.parametrize("output", ["pixels", "cells"])
@pytest.mark.parametrize("name", STUDENTS.names())
def test_student_forward_backward(name, output):
    torch.manual_seed(0)
    cfg = load_config([f"student={name}", f"student.output={output}", *SMALL.get(name, [])])
    size = (40, 56)  # not a multiple of the patch size or the backbone stride
    model = create_student(cfg.student, size)
    out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    trainable = [(pname, p) for pname, p in model.named_parameters() if p.requires_grad]  # frozen ones: no grad
    assert trainable, f"{name}: nothing to train"
    for pname, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname} gets no gradient"
    info = model_size(model)
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["size_mb"] >= info["params"] * 4 / 2**20


def test_frozen_backbone_trains_only_the_head():
    cfg = load_config(["student=mobilenetv3", "student.pretrained=false", "student.freeze_backbone=true"])
    model = create_student(cfg.student, (32, 32)).train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.rand(2, 3, 32, 32))
    assert not bn.training and torch.equal(bn.running_mean, before)
    # Lightning restores train/eval flags module by module after validation, without calling train()
    for m in model.modules():
        m.training = True
    model(torch.rand(2, 3, 32, 32))
    assert not bn.training and torch.equal(bn.running_mean, before)


def test_pretrained_without_weights_fails_fast_with_instructions(tmp_path):
    cfg = load_config(["student=mobilenetv3", "student.pretrained=true",
                       f"student.pretrained_file={tmp_path / 'missing.safetensors'}"])
    with pytest.raises(Exception, match="student.pretrained_file: .*missing.safetensors not found"):
        create_student(cfg.student, (32, 32))


def test_vit_rejects_heads_that_do_not_divide_the_width():
    cfg = load_config(["student=vit", "student.latent_dim=30", "student.num_heads=4"])
    with pytest.raises(ValueError, match="not divisible"):
        create_student(cfg.student, (32, 32))


def test_student_overfits_a_single_image():
    """A student can memorise one image's world points: the loss falls by orders of magnitude."""
    torch.manual_seed(0)
    cfg = load_config(["student=vit", "student.depth=2", "student.latent_dim=64", "student.num_heads=4",
                       "student.patch_size=8"])
    model = create_student(cfg.student, (24, 32))
    image = torch.rand(1, 3, 24, 32)
    v, u = torch.meshgrid(torch.linspace(-1, 1, 24), torch.linspace(-1, 1, 32), indexing="ij")
    target = torch.stack([u, v, 0.5 * u * v + 1], 0)[None]  # a smooth curved surface
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for step in range(300):
        loss = (model(image) - target).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 100
    assert loss.item() < 1e-3


@pytest.mark.parametrize("out_stride", [1, 2, 4, 32])
def test_head_predicts_every_pixel_at_any_stride(out_stride):
    """Sub-pixel output: each cell's out_stride**2 points land on their own pixels, whatever the input size."""
    torch.manual_seed(0)
    head = ConvHead([8, 16, 32], [4, 8, 32], width=8, hidden=16, out_stride=out_stride)
    size = (40, 56)  # not a multiple of 32: maps are ceil-sized as padded convs make them
    feats = [torch.rand(2, c, -(-size[0] // s), -(-size[1] // s)) for c, s in zip([8, 16, 32], [4, 8, 32])]
    out = head(feats, size)
    assert out.shape == (2, 3, *size)
    # inputs finer than the output stride are not used, so they own no weights
    assert sorted(map(int, head.lateral)) == [s for s in (4, 8, 32) if s >= min(out_stride, 32)]
    out.square().mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_head_sub_pixel_layout_matches_pixel_shuffle():
    """With one cell, the point MLP's 3*s*s outputs are the s x s block of points, channel-major."""
    head = ConvHead(4, 4, width=4, hidden=8, out_stride=4)
    x = torch.rand(1, 4, 1, 1)
    cell = head.point_mlp[:-1](head.lateral["4"](x)).view(3, 4, 4)
    assert torch.allclose(head(x, (4, 4))[0], cell)


def test_head_per_cell_interpolates_between_cell_centres():
    """``output=cells``: one point per cell, seen at the cell's centre; a pixel takes the bilinear mix of the four
    nearest centres (computed here by hand), the border cells' points beyond the outer centres."""
    torch.manual_seed(0)
    s = 4
    head = ConvHead(8, s, width=8, hidden=16, out_stride=s, per_cell=True)
    cells = []
    head.point_mlp.register_forward_hook(lambda mod, inp, out: cells.append(out))
    out = head(torch.rand(1, 8, 3, 5), (12, 20))[0]
    cell = cells[0][0]  # (3, 3, 5): one point per cell
    assert cell.shape == (3, 3, 5) and out.shape == (3, 12, 20)

    def by_hand(y: int, x: int) -> torch.Tensor:
        v, u = (y - (s - 1) / 2) / s, (x - (s - 1) / 2) / s  # in cell units, cell centres at integers
        v, u = min(max(v, 0.0), 2.0), min(max(u, 0.0), 4.0)
        i, j = min(int(v), 1), min(int(u), 3)
        a, b = v - i, u - j
        return ((1 - a) * (1 - b) * cell[:, i, j] + (1 - a) * b * cell[:, i, j + 1] + a * (1 - b) * cell[:, i + 1, j]
                + a * b * cell[:, i + 1, j + 1])

    for y, x in [(0, 0), (1, 2), (5, 9), (6, 13), (11, 19), (4, 17)]:
        torch.testing.assert_close(out[:, y, x], by_hand(y, x))


@pytest.mark.parametrize("head_stride", [1, 8])
def test_students_at_other_head_strides(head_stride):
    size = (32, 48)
    for name in STUDENTS.names():
        cfg = load_config([f"student={name}", f"student.head_stride={head_stride}", *SMALL.get(name, [])])
        out = create_student(cfg.student, size)(torch.rand(2, 3, *size))
        assert out.shape == (2, 3, *size) and torch.isfinite(out).all(), name


def test_vanilla_cnn_strides_are_checked():
    cfg = load_config(["student=vanilla_cnn", "student.strides=[1,2,3,1,1,1]"])
    with pytest.raises(ValueError, match="student.strides"):
        create_student(cfg.student, (32, 32))


@pytest.mark.parametrize("squeeze_excite", [True, False])
def test_mobilenetv3_without_squeeze_excite_sees_only_its_receptive_field(squeeze_excite):
    """The gates average the whole image: with them a change in one corner reaches the opposite corner's points."""
    torch.manual_seed(0)
    cfg = load_config(["student=mobilenetv3", f"student.squeeze_excite={str(squeeze_excite).lower()}"])
    model = create_student(cfg.student, (640, 640)).eval()
    img = torch.rand(1, 3, 640, 640)
    changed = img.clone()
    changed[..., :32, :32] = torch.rand(3, 32, 32)
    with torch.no_grad():
        far_B3hw = (model(img) - model(changed))[..., -128:, -128:]  # 480+ px away: beyond the convolutions' reach
    assert (far_B3hw.abs().max() > 0) == squeeze_excite
    n_gates = sum(type(m).__name__ == "SqueezeExcite" for m in model.modules())
    assert (n_gates > 0) == squeeze_excite
