"""Safe loading of DUSt3R weights: official ``.pth``, ``model.safetensors`` + ``config.json``, or a hub name.

Never unpickles arbitrary objects: ``.pth`` files go through ``torch.load(weights_only=True)`` (only
``argparse.Namespace`` is allowed besides tensors, for the stored ``args``, which is never evaluated). Every
failure is a :class:`CheckpointError` with a one-line message.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from lit3d.teachers.dust3r.presets import Dust3rPreset

CHECKPOINT_DIR_ENV = "LIT3D_CHECKPOINT_DIR"
"""Environment variable naming the folder searched for ``<preset>.pth`` or ``<preset>/`` (default ``checkpoints``)."""

_ALIAS = re.compile(r"^(.*dpt\.scratch\.)(?:layer_rn\.(\d)|layer(\d)_rn)\.weight$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read safely, or loaded into the network; the message is one line."""


@dataclass
class Checkpoint:
    """A state dict read from disk, where it came from, and the architecture its ``config.json`` declares."""

    state_dict: dict[str, Tensor]
    path: Path
    sha256: str
    config: dict[str, Any] | None = field(default=None)


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _allow_namespace() -> Iterator[None]:
    """Let ``weights_only`` unpickling build the release's ``args`` Namespace (plain attributes, no code)."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals([argparse.Namespace]):
            yield
    else:  # torch < 2.5
        serialization.add_safe_globals([argparse.Namespace])
        yield


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    # torch's weights_only error starts with advice; the line naming the offending global is the useful one
    named = [ln for ln in lines if "global" in ln.lower() and ("unsupported" in ln.lower() or "GLOBAL" in ln)]
    line = (named or lines or [type(err).__name__])[0]
    return line.split(". ")[0] if len(line) > 120 else line  # drop torch's multi-sentence advice


def _torch_load(path: Path) -> Any:
    with _allow_namespace():
        try:  # mmap: a 2.3 GB release is paged in, not copied
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def read_pth(path: Path) -> dict[str, Tensor]:
    """State dict of an official ``.pth`` (``{'model': state_dict, 'args': ...}``) or of a bare state dict."""
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: its pickle holds objects that are not weights "
                              f"({_first_line(e)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} (truncated or not a torch checkpoint): {_first_line(e)}") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors or {{'model': ...}})")
    return state


def read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} (truncated or not safetensors): {_first_line(e)}") from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from None


def _from_folder(folder: Path) -> tuple[Path, dict[str, Any] | None]:
    config = folder / "config.json"
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name, _read_config(config) if config.is_file() else None
    pths = sorted(folder.glob("*.pth"))
    if len(pths) == 1:
        return pths[0], None
    raise CheckpointError(f"{folder} has no model.safetensors (+ config.json) nor a single .pth file")


def _from_hub(name: str) -> tuple[Path, dict[str, Any]]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(f"loading hub model {name!r} needs huggingface_hub: pip install 'lit3d[hub]'") from None
    try:
        config = Path(hf_hub_download(name, "config.json"))
        weights = Path(hf_hub_download(name, "model.safetensors"))
    except Exception as e:  # offline, unknown repo, ...: huggingface_hub raises many types
        raise CheckpointError(f"cannot download hub model {name!r}: {_first_line(e)}") from None
    return weights, _read_config(config)


def missing_weights_message(preset: Dust3rPreset) -> str:
    folder = os.environ.get(CHECKPOINT_DIR_ENV, "checkpoints")
    return (f"{preset.family} weights not found: download {preset.url} into {folder}/ (or set ${CHECKPOINT_DIR_ENV}), or "
            f"set teacher.checkpoint=PATH.pth|FOLDER|{preset.hub_name}; teacher.random_init=true is for tests and "
            f"benchmarks only")


def _default_location(preset: str) -> Path | None:
    folder = Path(os.environ.get(CHECKPOINT_DIR_ENV, "checkpoints"))
    return next((c for c in (folder / f"{preset}.pth", folder / preset) if c.exists()), None)


def _is_hub_name(spec: str) -> bool:
    return (re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", spec) is not None
            and Path(spec).suffix not in (".pth", ".pt", ".bin", ".safetensors"))


def read_checkpoint(spec: str, preset: Dust3rPreset, sha256: str = "") -> Checkpoint:
    """Read the weights ``spec`` names: a file, a folder, a hub name, or '' for the preset's default location.

    ``sha256`` (hex, optional) pins the file: a different one is an error.
    """
    config = None
    path = Path(spec).expanduser() if spec else _default_location(preset.name)
    if spec and not path.exists() and _is_hub_name(spec):
        path, config = _from_hub(spec)
    elif path is None:
        raise CheckpointError(missing_weights_message(preset))
    elif not path.exists():
        raise CheckpointError(f"teacher.checkpoint {spec} does not exist; {missing_weights_message(preset)}")
    elif path.is_dir():
        path, config = _from_folder(path)
    digest = sha256_file(path)
    if sha256 and digest != sha256.lower():
        raise CheckpointError(f"{path} has SHA-256 {digest}, expected {sha256} (teacher.sha256): a different "
                              f"release or a corrupted download")
    state = read_safetensors(path) if path.suffix == ".safetensors" else read_pth(path)
    return Checkpoint(state, path, digest, config)


def complete_aliases(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fill ``dpt.scratch.layer_rn.{0..3}`` <-> ``layer{1..4}_rn`` when a file kept only one name of a tensor."""
    out = dict(state)
    for key, value in state.items():
        m = _ALIAS.match(key)
        if m is None:
            continue
        prefix, list_idx, layer_no = m.groups()
        other = (f"{prefix}layer{int(list_idx) + 1}_rn.weight" if list_idx is not None
                 else f"{prefix}layer_rn.{int(layer_no) - 1}.weight")
        if other not in out:
            out[other] = value
        elif value.shape != out[other].shape or (value.device.type != "meta" and not torch.equal(value, out[other])):
            raise CheckpointError(f"aliased keys {key} and {other} hold different tensors")
    return out


def _summary(keys: list[str], limit: int = 4) -> str:
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise a one-line :class:`CheckpointError` naming missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in expected
                  if k in state and tuple(state[k].shape) != expected[k]]
    problems = [f"{len(keys)} {what}: {_summary(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("mismatched (checkpoint vs model)", mismatched))
                if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit the {type(model).__name__} architecture: "
                              f"{'; '.join(problems)}")


def load_into(model: nn.Module, state: dict[str, Tensor], source: str) -> nn.Module:
    """Strictly load ``state`` (aliases completed) into ``model``, assigning tensors (fp32 on its device)."""
    state = complete_aliases(state)
    check_state_dict(model, state, source)
    on_meta = any(p.device.type == "meta" for p in model.parameters())
    device = "cpu" if on_meta else next(model.parameters()).device
    state = {k: v.to(device=device, dtype=torch.float32) if v.device.type != "meta" else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=on_meta)
    return model
