"""Resident memory of this process, in MB (2**20 bytes), for logs and benchmarks."""
from __future__ import annotations

import resource
from pathlib import Path


def rss_mb() -> float:
    """Resident memory now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory so far (Linux ``VmHWM``; elsewhere ``ru_maxrss``, a high-water mark since start)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
