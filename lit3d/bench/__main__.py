"""``lit3d bench NAME [options]`` (or ``python -m lit3d.bench``): run one benchmark (``NAME --help``: its options)."""
from __future__ import annotations

import importlib
import sys

from lit3d.bench import BENCHMARKS


def usage() -> str:
    lines = [f"usage: lit3d bench {{{','.join(BENCHMARKS)}}} [options]   (NAME --help lists its options)", ""]
    for name, module in BENCHMARKS.items():
        doc = (importlib.import_module(module).__doc__ or "").strip().split("\n\n")[0]
        lines.append(f"  {name:<8} {' '.join(doc.split()).split(': ', 1)[-1]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lit3d.cli import command

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in BENCHMARKS:
        print(f"lit3d bench: unknown benchmark {argv[0]!r}; benchmarks: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return command(f"lit3d.bench.{argv[0]}", importlib.import_module(BENCHMARKS[argv[0]]).main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
