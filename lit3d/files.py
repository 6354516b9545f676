"""Atomic output files: readers see the old file or the whole new one, also after a crash.

``atomic_output(path)`` hands out a temporary file next to ``path`` for writers that need a path (savefig,
torch.jit.save, onnx export, PLY streams); when the block ends without an exception the file is fsync'd and renamed
over ``path``, otherwise it is removed. ``atomic_write_bytes`` and ``atomic_save_npz`` go through it.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()
"""Permissions of a new file as ``open`` creates it (read once at import: reading the umask sets it)."""


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Temporary path that becomes ``path`` (fsync'd, ``os.replace``) when the ``with`` block succeeds, with the
    permissions ``open`` would give it (``mkstemp``'s temporaries are private to their owner)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed, fast to read) written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
