"""One process at a time: an exclusive ``fcntl.flock`` on a lock file (POSIX; tested on Linux).

``file_lock(path, what)`` blocks until the lock is free, logging once that it waits and for whom (the holder
writes its pid, host, command and start time into the file); ``wait=False`` raises :class:`LockBusy` instead. The
kernel drops the lock when its holder exits, also on kill -9, so a lock file left behind never blocks anyone.
Used per label cache (``<cache>/.lock``: a second builder waits for the first, then finds the cache complete and
reuses it) and per run directory (``<run_dir>/.lock``: a second ``fit`` stops at once).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def is_launched_worker() -> bool:
    """True in the extra processes of a multi-process run (DDP ranks > 0 that Lightning or torchrun started, other
    nodes): they work for their rank 0, which holds the locks."""
    return any(int(os.environ.get(k) or 0) > 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


class LockBusy(RuntimeError):
    """``file_lock(..., wait=False)`` found the lock held; the message names the resource and its holder."""


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it into the file ('another process' while it is being written)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block; ``what`` names the guarded
    resource in the log. The lock is per open file, so a second ``file_lock`` on the same path waits (or, with
    ``wait=False``, raises :class:`LockBusy`), also within one process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(f"{what} is in use by {_holder(fd)}") from None
            log.info("%s is in use by %s: waiting for it to finish", what, _holder(fd))
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("%s: waited %.1f s", what, time.monotonic() - t0)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
