"""Atomic output files for writers that need a path (savefig, torch.jit.save, onnx export, PLY streams).

``atomic_output(path)`` hands out a temporary file next to ``path``; when the block ends without an exception the
file is fsync'd and renamed over ``path`` (readers see the old file or the whole new one, also after a crash),
otherwise it is removed. Byte strings go through :func:`lit3d.data.io.atomic_write_bytes`, which does the same.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Temporary path that becomes ``path`` (fsync'd, ``os.replace``) when the ``with`` block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
