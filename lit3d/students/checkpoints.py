"""Student checkpoints that are written whole and verified before use.

Every checkpoint ``X.ckpt`` that ``lit3d fit`` writes gets a sidecar ``X.ckpt.sha256`` (``sha256sum`` format): the
file is written to a temporary name, the sidecar is updated, then the file is renamed into place, so a full disk or
a kill leaves the previous checkpoint intact. The sidecar lists the new hash first and the previous one second:
a kill between the two renames leaves the old file with a sidecar that still accepts it. Loading (``evaluate``,
``localize``, ``trainer.resume``) verifies the file against its sidecar; a corrupt, truncated or foreign file is a
one-line :class:`CheckpointFileError` naming it. Checkpoints without a sidecar (older runs) load unverified.
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lit3d.files import atomic_output, atomic_write_bytes

log = logging.getLogger(__name__)


REFINED_FROM = "lit3d_refined_from"
"""Key of a head refinement's checkpoint (``refined.ckpt``) that records what it was made from: the SHA-256 of the
end-to-end checkpoint (``source_sha256``), the seed and the settings the refinement read."""


class CheckpointFileError(ValueError):
    """A student checkpoint that cannot be written (no space), or read as this run's student: corrupt, truncated,
    not a checkpoint, or of another student."""


def sidecar(path: str | Path) -> Path:
    """``X.ckpt.sha256`` next to checkpoint ``X.ckpt``."""
    return Path(f"{path}.sha256")


def _accepted_hashes(path: Path) -> list[str]:
    """Hex SHA-256 digests the sidecar of ``path`` accepts ([] without a sidecar)."""
    side = sidecar(path)
    if not side.is_file():
        return []
    return [line.split()[0] for line in side.read_text().splitlines() if line.strip()]


def write_checkpoint(path: str | Path, data: bytes) -> None:
    """Write the serialized checkpoint ``data`` to ``path`` and its sidecar (module doc: order and atomicity).

    A failed write (full disk, read-only folder) keeps the previous file and is a one-line error naming ``path``.
    """
    path = Path(path)
    digest = hashlib.sha256(data).hexdigest()
    previous = _accepted_hashes(path)[:1] if path.is_file() else []
    try:
        with atomic_output(path) as tmp:
            tmp.write_bytes(data)
            atomic_write_bytes(sidecar(path), "".join(f"{h}  {path.name}\n" for h in [digest, *previous]).encode())
    except OSError as e:
        reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        kept = "; the previous checkpoint is kept" if path.is_file() else ""
        raise CheckpointFileError(f"cannot write checkpoint {path}: {reason}{kept}") from None


def read_verified(path: str | Path) -> bytes:
    """The bytes of checkpoint ``path``, checked against its sidecar when it has one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    data = path.read_bytes()
    accepted = _accepted_hashes(path)
    if accepted and hashlib.sha256(data).hexdigest() not in accepted:
        raise CheckpointFileError(f"checkpoint {path} is corrupt: its SHA-256 does not match {sidecar(path).name}, "
                                  f"written with it (use the other checkpoint, best or last, or retrain)")
    if not accepted:
        log.debug("checkpoint %s has no %s: loaded unverified", path, sidecar(path).name)
    return data


def unreadable(path: str | Path, error: BaseException) -> CheckpointFileError:
    """The error for a checkpoint file that does not deserialize (truncated, random bytes, not a checkpoint)."""
    from lit3d.cli import one_line

    return CheckpointFileError(f"checkpoint {path} is unreadable, truncated or not a Lightning checkpoint "
                               f"({type(error).__name__}: {one_line(error)})")


def load_checkpoint(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """The verified checkpoint ``path`` as a dict (tensors on the CPU); ``data``: its bytes as
    :func:`read_verified` returned them, when the caller has them already."""
    data = read_verified(path) if data is None else data
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # no pickled code runs
    except Exception as e:  # any deserialization failure is the file's
        raise unreadable(path, e) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointFileError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def current_hash(path: str | Path) -> str | None:
    """The SHA-256 that the sidecar of checkpoint ``path`` gives for the file now (None without a sidecar)."""
    hashes = _accepted_hashes(Path(path))
    return hashes[0] if hashes else None


def check_same_student(module: torch.nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Raise CheckpointFileError when the weights of ``ckpt`` do not fit ``module`` (another student or size)."""
    own, theirs = module.state_dict(), ckpt["state_dict"]
    missing, unexpected = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & theirs.keys() if tuple(own[k].shape) != tuple(theirs[k].shape))
    if missing or unexpected or reshaped:
        student = ckpt.get("hyper_parameters", {}).get("student", {})
        example = (missing or unexpected or reshaped)[0]
        raise CheckpointFileError(
            f"checkpoint {path} holds another student ({student.get('name', '?')}, {len(missing)} weights missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} of another shape, e.g. {example}); resume with the "
            f"student config it was trained with, or choose another checkpoint")


class VerifiedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO writing through :func:`write_checkpoint` and loading verified files only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        write_checkpoint(path, buf.getvalue())

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        read_verified(path)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except Exception as e:
            raise unreadable(path, e) from None

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        sidecar(path).unlink(missing_ok=True)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` for a run directory that may have been moved or copied since it was written.

    Lightning keeps the absolute paths of the best and last checkpoints in its state and drops the best score when
    the folder differs, so a resumed copy would save its next epoch as "best" (or ``best-v1.ckpt``) however bad.
    Here the stored paths are re-read relative to the folder the checkpoints are in now."""

    @property
    def state_key(self) -> str:
        # Lightning's own key: runs written with a plain ModelCheckpoint resume against their best, and back
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            def here(path):
                inside = isinstance(path, str) and os.path.dirname(path) == old
                return os.path.join(new, os.path.basename(path)) if inside else path

            state_dict = {**state_dict, "dirpath": new,
                          **{k: here(state_dict.get(k)) for k in ("best_model_path", "kth_best_model_path",
                                                                 "last_model_path")},
                          "best_k_models": {here(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)
