"""Student exports (TorchScript, ONNX), each checked against the PyTorch output before it is reported.

Students map images (B, 3, H, W) in [0, 1] to pointmaps (B, 3, H, W); any module returning a tensor (or a tuple
of tensors) works. Sizes are in MB = 2**20 bytes, as in :func:`lit3d.students.model_size`.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)


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


def _tmp_for(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _check(fmt: str, path: Path, diff: float, atol: float) -> ExportResult:
    if not np.isfinite(diff) or diff > atol:
        raise ExportError(f"{fmt} export {path}: max |exported - PyTorch| = {diff:.3g} exceeds atol {atol:g}")
    size_mb = path.stat().st_size / 2**20
    log.info("exported %s to %s (%.2f MB, max abs diff %.2e)", fmt, path, size_mb, diff)
    return ExportResult(path, fmt, size_mb, diff, atol)


def export_torchscript(
    model: torch.nn.Module, example_B3HW: torch.Tensor, path: str | os.PathLike, atol: float = 1e-4
) -> ExportResult:
    """Trace ``model`` on ``example_B3HW`` to a TorchScript file, reload it and compare outputs on the example.

    Raises :class:`ExportError` if the reloaded module's output differs by more than ``atol`` (output units).
    """
    path = Path(path)
    tmp = _tmp_for(path)
    try:
        with _eval_mode(model), _quiet_deprecations():
            ref = _outputs(model(example_B3HW))
            try:
                traced = torch.jit.trace(model, example_B3HW, check_trace=False)
            except Exception as e:  # untraceable forward (e.g. non-tensor outputs): name the model
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ExportError(f"TorchScript trace of {type(model).__name__} failed: {msg}") from e
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location=example_B3HW.device)
            diff = _max_diff(ref, _outputs(loaded(example_B3HW)), "TorchScript")
        result = _check("torchscript", tmp, diff, atol)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    result.path = path
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
) -> ExportResult:
    """Export ``model`` to ONNX with a dynamic batch axis and check it with onnxruntime (CPU).

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
    tmp = _tmp_for(path)
    bigger_B3HW = torch.cat([example_B3HW, example_B3HW[:1]])
    try:
        with _eval_mode(model), _quiet_deprecations():
            ref = _outputs(model(example_B3HW))
            ref_bigger = _outputs(model(bigger_B3HW))
            out_names = _onnx_export(model, example_B3HW, tmp, opset, len(ref))
        onnx.checker.check_model(str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        diff = 0.0
        for x, r in ((example_B3HW, ref), (bigger_B3HW, ref_bigger)):
            got = session.run(out_names, {"image": x.detach().cpu().float().numpy()})
            diff = max(diff, _max_diff(r, [np.asarray(g, np.float64) for g in got], "ONNX"))
        result = _check("onnx", tmp, diff, atol)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    result.path = path
    return result
