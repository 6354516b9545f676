"""Benchmarks: ``python -m lit3d.bench NAME [options]`` prints figures and ratios measured side by side.

Each benchmark is a module of this package with ``main(argv)``; see ``BENCHMARKS``.
"""

BENCHMARKS = {
    "data": "lit3d.bench.data",
    "align": "lit3d.bench.align",
    "teacher": "lit3d.bench.teacher",
    "model": "lit3d.bench.model",
    "label": "lit3d.bench.label",
}
