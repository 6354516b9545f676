"""``python -m lit3d.bench NAME [options]``: run one benchmark (``--help`` after NAME lists its options)."""
from __future__ import annotations

import importlib
import sys

from lit3d.bench import BENCHMARKS
from lit3d.cli import setup_logging


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m lit3d.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    setup_logging()
    importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
