"""Student exports (TorchScript, ONNX), each checked against the PyTorch output before it is reported.

Students map images (B, 3, H, W) in [0, 1] to pointmaps (B, 3, H, W); any module returning a tensor (or a tuple
of tensors) works. Sizes are in MB = 2**20 bytes, as in :func:`lit3d.students.model_size`.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lit3d.files import atomic_output

log = logging.getLogger(__name__)


METADATA_FILE = "lit3d.json"
"""Name of the metadata inside a TorchScript file (``_extra_files``)."""


class ExportError(RuntimeError):
    """An export whose output differs from PyTorch's beyond the tolerance, or that could not be produced."""


@dataclass
class ExportResult:
    """A verified export: file, its size and the largest |exported - PyTorch| over the check inputs."""

    path: Path
    format: str
    size_mb: float
    max_abs_diff: float
    atol: float


def _outputs(out) -> list[np.ndarray]:
    """Model output (tensor or tuple/list of tensors) as a list of float64 numpy arrays."""
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().double().numpy() if isinstance(o, torch.Tensor) else np.asarray(o, float) for o in outs]


def _max_diff(ref: list[np.ndarray], got: list[np.ndarray], what: str) -> float:
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got)):
        shapes = [g.shape for g in got], [r.shape for r in ref]
        raise ExportError(f"{what}: output shapes {shapes[0]} differ from PyTorch's {shapes[1]}")
    return max(float(np.max(np.abs(r - g), initial=0.0)) for r, g in zip(ref, got))


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence torch's deprecation notices for TorchScript and the TorchScript-based ONNX exporter.

    Both formats are what deployment targets still load; the notices would repeat on every export.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\..* is deprecated")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*|lit3d\.export.*")
        quiet = r".*(legacy TorchScript|will be removed)"
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=quiet)
        yield


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluation mode without gradients for the export, restoring the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _check(fmt: str, tmp: Path, path: Path, diff: float, atol: float) -> ExportResult:
    """The result of the export written to ``tmp`` (becoming ``path``), or ExportError beyond ``atol``."""
    if not np.isfinite(diff) or diff > atol:
        raise ExportError(f"{fmt} export {path}: max |exported - PyTorch| = {diff:.3g} exceeds atol {atol:g}")
    size_mb = tmp.stat().st_size / 2**20
    log.info("exported %s to %s (%.2f MB, max abs diff %.2e)", fmt, path, size_mb, diff)
    return ExportResult(path, fmt, size_mb, diff, atol)


def export_torchscript(
    model: torch.nn.Module, example_B3HW: torch.Tensor, path: str | os.PathLike, atol: float = 1e-4,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Trace ``model`` on ``example_B3HW`` to a TorchScript file, reload it and compare outputs on the example.

    ``metadata`` is stored as the extra file ``lit3d.json`` (read it back with :func:`read_metadata`).

    Raises :class:`ExportError` if the reloaded module's output differs by more than ``atol`` (output units).
    """
    path = Path(path)
    extra = {METADATA_FILE: json.dumps(metadata)} if metadata else {}
    with atomic_output(path) as tmp:
        with _eval_mode(model), _quiet_deprecations():
            ref = _outputs(model(example_B3HW))
            try:
                traced = torch.jit.trace(model, example_B3HW, check_trace=False)
            except Exception as e:  # untraceable forward (e.g. non-tensor outputs): name the model
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ExportError(f"TorchScript trace of {type(model).__name__} failed: {msg}") from e
            torch.jit.save(traced, str(tmp), _extra_files=extra)
            loaded = torch.jit.load(str(tmp), map_location=example_B3HW.device)
            diff = _max_diff(ref, _outputs(loaded(example_B3HW)), "TorchScript")
        result = _check("torchscript", tmp, path, diff, atol)
    return result


def _onnx_export(model: torch.nn.Module, example_B3HW: torch.Tensor, path: Path, opset: int, n_out: int) -> list[str]:
    """torch.onnx.export with a dynamic batch axis on the input and every output; returns the output names."""
    out_names = ["pointmap"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    kwargs = dict(
        input_names=["image"], output_names=out_names, opset_version=opset,
        dynamic_axes={name: {0: "batch"} for name in ["image", *out_names]},
    )
    # the TorchScript-based exporter handles dynamic_axes without onnxscript; newer torch defaults to dynamo
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    # nn.MultiheadAttention's inference fast path (fused aten::_native_multi_head_attention) has no ONNX symbolic
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.onnx.export(model, (example_B3HW,), str(path), **kwargs)
    except Exception as e:  # unsupported operators etc.: name the model, keep the cause chained
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {msg}") from e
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return out_names


def export_onnx(
    model: torch.nn.Module,
    example_B3HW: torch.Tensor,
    path: str | os.PathLike,
    atol: float = 1e-4,
    opset: int = 17,
    metadata: dict[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` to ONNX with a dynamic batch axis and check it with onnxruntime (CPU).

    ``metadata`` (string values) goes into the model's ``metadata_props``, which any ONNX runtime can read.

    Checked on the example and on a batch one larger (the example plus its first image again), so a batch size
    baked into the graph is caught. Raises :class:`ExportError` beyond ``atol``; ImportError (one line) without
    the ``onnx``/``onnxruntime`` packages (``pip install -e .[dev]``).
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxruntime (pip install -e '.[dev]'): {e}") from None
    path = Path(path)
    bigger_B3HW = torch.cat([example_B3HW, example_B3HW[:1]])
    with atomic_output(path) as tmp:
        with _eval_mode(model), _quiet_deprecations():
            ref = _outputs(model(example_B3HW))
            ref_bigger = _outputs(model(bigger_B3HW))
            out_names = _onnx_export(model, example_B3HW, tmp, opset, len(ref))
        if metadata:
            proto = onnx.load(str(tmp))
            for key, value in metadata.items():
                proto.metadata_props.add(key=key, value=str(value))
            onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        diff = 0.0
        for x, r in ((example_B3HW, ref), (bigger_B3HW, ref_bigger)):
            got = session.run(out_names, {"image": x.detach().cpu().float().numpy()})
            diff = max(diff, _max_diff(r, [np.asarray(g, np.float64) for g in got], "ONNX"))
        result = _check("onnx", tmp, path, diff, atol)
    return result


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata written with an exported student: ONNX ``metadata_props`` or TorchScript's ``lit3d.json``."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    extra = {METADATA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}


# --- the deployable student -----------------------------------------------------------------------------------
class WorldPointmap(torch.nn.Module):
    """The deployable student: images (B, 3, H, W) RGB in [0, 1] -> world points (B, 3, H, W), labels' frame and
    unit (the network's normalised output mapped back by the training labels' mean and std)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.student = module.student
        self.register_buffer("coord_mean", module.coord_mean.detach().clone().cpu())
        self.register_buffer("coord_std", module.coord_std.detach().clone().cpu())

    def forward(self, image_B3HW: torch.Tensor) -> torch.Tensor:
        return self.student(image_B3HW) * self.coord_std + self.coord_mean


STUDENT_FORMAT = "lit3d-student/1"
"""``format`` of the metadata below; bump it when a key changes meaning."""


def student_metadata(module: torch.nn.Module, labels_info: dict, K_33: np.ndarray | None = None) -> dict[str, str]:
    """What a runtime needs to use an exported student, as strings (ONNX ``metadata_props`` are strings).

    ``input_height`` / ``input_width``: the image size the student takes (resize the photo to it and scale its K
    with :func:`lit3d.geometry.scale_intrinsics`); ``input``: layout and value range; ``output``: world points per
    input pixel (the output grid is the input grid, so its intrinsics are the resized photo's K); ``frame`` and
    ``unit``: the world frame and unit of the points (those of the label cache); ``grid_intrinsics``: K (3x3,
    row-major JSON) of the training camera at the input size, pixel centres at integer coordinates (a default for
    photos from that camera); ``student``: the architecture name.
    """
    h, w = (int(v) for v in module.hparams.img_size)
    meta = {"format": STUDENT_FORMAT, "input_height": str(h), "input_width": str(w),
            "input": "image: float32 (B, 3, H, W), RGB, values in [0, 1] (uint8 / 255), no mean/std normalisation",
            "output": "pointmap: float32 (B, 3, H, W), world x, y, z of the surface seen by each input pixel",
            "frame": str(labels_info.get("frame", "unknown")), "unit": str(labels_info.get("unit", "unknown")),
            "student": str(module.hparams.student.get("name", "")),
            "localization": "PnP + RANSAC on (pixel (u, v) = (column, row), world point) pairs, OpenCV camera axes"}
    if K_33 is not None:
        meta["grid_intrinsics"] = json.dumps(np.asarray(K_33, np.float64).round(6).tolist())
    return meta


def export_student(module: torch.nn.Module, out_dir: str | os.PathLike, example_NHW3: np.ndarray, labels_info: dict,
                   K_33: np.ndarray | None = None, atol: float = 1e-4) -> dict[str, float | str]:
    """``student.onnx`` and ``student.ts`` (:class:`WorldPointmap`, with :func:`student_metadata`) in ``out_dir``,
    each checked against PyTorch on the uint8 ``example_NHW3`` images; returns ``export/*`` metrics, a failed
    format recorded as ``export/<fmt>_error`` (a finding to report, not a reason to lose the caller's work)."""
    model = WorldPointmap(module.cpu()).eval()
    example_B3HW = torch.from_numpy(np.ascontiguousarray(example_NHW3)).permute(0, 3, 1, 2).float() / 255
    meta = student_metadata(module, labels_info, K_33)
    metrics: dict[str, float | str] = {}
    for fmt, fn, name in (("onnx", export_onnx, "student.onnx"), ("torchscript", export_torchscript, "student.ts")):
        try:
            r = fn(model, example_B3HW, Path(out_dir) / name, atol=atol, metadata=meta)
            metrics.update({f"export/{fmt}_size_mb": r.size_mb, f"export/{fmt}_max_abs_diff": r.max_abs_diff,
                            f"export/{fmt}_atol": r.atol, f"export/{fmt}_path": str(r.path)})
        except Exception as e:  # noqa: BLE001  (recorded, see the docstring)
            log.warning("%s export failed: %s", fmt, e)
            metrics[f"export/{fmt}_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return metrics
