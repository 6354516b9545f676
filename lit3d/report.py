"""``lit3d report RUN_DIRS... [group_by=KEY,...] [metrics=M,...] [out=DIR]``: tables of many runs.

Gathers ``metrics.json`` and ``config.yaml`` of run directories (or of every run below the folders given) into one
table grouped by scene (``data.format`` with ``data.root``, or the synthetic ``data.seed``) and by any config keys,
with the mean and, over several runs (seeds), the sample std per group. Writes into ``out``: ``report.csv``
(one row per group), ``report.md`` (per metric: rows = scene and the other keys, columns = values of the first
``group_by`` key: the shape of the paper's Table 1 with ``trainer.max_epochs`` and of Table 2 with
``student.freeze_backbone``) and ``loss_curves.png`` (training and validation loss of every run on one plot).

Nothing is dropped silently: a run whose metrics.json or config.yaml is unreadable is skipped with a warning naming
the file and listed in report.md (one damaged run should not hide a sweep's others); a NaN or infinite value is left
out of its group's mean and std but counted in the cell (``2 NaN``) and in report.csv (``M nan``); a metric or key
that no run has is an error listing the close names that exist.
"""
from __future__ import annotations

import difflib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit3d.config import ConfigError
from lit3d.files import atomic_write_bytes
from lit3d.runs import RunDirError, find_runs, flatten, load_curves, raw_config, read_metrics, write_csv

log = logging.getLogger("lit3d.report")

DEFAULT_METRICS = ("test/l2_mean", "eval/student_vs_gt/l2_mean", "eval/teacher_vs_gt/l2_mean", "loc/acc_5cm5deg",
                   "loc/median_t_cm", "loc/median_r_deg", "loc_teacher/acc_5cm5deg", "model/size_mb", "time/fit_s")
"""Metrics reported when ``--metrics`` is not given (those present in at least one run)."""


def scene_of(config: dict[str, Any]) -> str:
    """A scene's label: format and folder name, or for the synthetic scene (which has no folder) its seed."""
    fmt, root = config.get("data.format", "?"), config.get("data.root") or ""
    if fmt == "synthetic" or not root:
        return f"{fmt}:seed{config.get('data.seed', 0)}"
    return f"{fmt}:{Path(root).name or root}"


def run_record(run_dir: Path) -> dict[str, Any]:
    """``{'run', 'scene', 'config' (dotted keys), 'metrics'}`` of one run directory."""
    config = flatten(raw_config(run_dir))
    return {"run": run_dir, "scene": scene_of(config), "config": config, "metrics": read_metrics(run_dir)}


@dataclass
class ReportOptions:
    group_by: list[str] = field(default_factory=list)
    """Config keys to group by (e.g. trainer.max_epochs, student.freeze_backbone); the first makes the columns."""
    metrics: list[str] = field(default_factory=list)
    """metrics.json keys to report (empty: those of DEFAULT_METRICS that some run has)."""
    out: str = "report"
    """Output folder of report.csv, report.md and loss_curves.png."""


def _number(v: Any) -> float | None:
    """A numeric metric as float (NaN and infinities included), None for anything else."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def group_table(runs: list[dict], group_by: list[str], metrics: list[str]) -> list[dict[str, Any]]:
    """One row per (scene, group-by values): ``n_runs``, then ``M`` (mean) and ``M std`` (sample std, n > 1)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        key = (r["scene"], *(_value(r["config"].get(k, "-")) for k in group_by))
        groups.setdefault(key, []).append(r)
    rows = []
    for key in sorted(groups, key=lambda k: tuple(map(_sort_key, k))):
        members = groups[key]
        row: dict[str, Any] = {"scene": key[0], **dict(zip(group_by, key[1:])), "n_runs": len(members),
                               "runs": ";".join(str(m["run"]) for m in members)}
        for m in metrics:
            numbers = [x for x in (_number(r["metrics"].get(m)) for r in members) if x is not None]
            vals = [x for x in numbers if math.isfinite(x)]
            mean = sum(vals) / len(vals) if vals else float("nan")
            std = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1)) if len(vals) > 1 else float("nan")
            row[m], row[f"{m} std"], row[f"{m} n"], row[f"{m} nan"] = mean, std, len(vals), len(numbers) - len(vals)
        rows.append(row)
    return rows


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _sort_key(v: str) -> tuple:
    """Numbers in numeric order, before other strings (epochs 5 < 20 < 100)."""
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def _cell(row: dict, metric: str) -> str:
    """``mean ± std (n=N)`` over the finite values, ``, K NaN`` when K runs had a NaN or infinite value; ``-``
    when no run of the group has the metric."""
    mean, std, n, nan = row[metric], row[f"{metric} std"], row[f"{metric} n"], row[f"{metric} nan"]
    if n == 0:
        return f"NaN (n={nan})" if nan else "-"
    notes = [f"n={n}"] * (n > 1 or nan > 0) + [f"{nan} NaN"] * (nan > 0)
    text = f"{mean:.4g} ± {std:.2g}" if not math.isnan(std) else f"{mean:.4g}"
    return text + (f" ({', '.join(notes)})" if notes else "")


def markdown(rows: list[dict], group_by: list[str], metrics: list[str]) -> str:
    """Per metric a pivot (rows: scene and group_by[1:], columns: group_by[0]); without group-by one table."""
    def table(head: list[str], body: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(b) + " |" for b in body)]

    if not group_by:
        return "\n".join(table(["scene", *metrics], [[r["scene"], *(_cell(r, m) for m in metrics)] for r in rows]))
    col_key, row_keys = group_by[0], ["scene", *group_by[1:]]
    cols = sorted({r[col_key] for r in rows}, key=_sort_key)
    row_ids = list(dict.fromkeys(tuple(r[k] for k in row_keys) for r in rows))
    out = []
    for m in metrics:
        body = []
        for rid in row_ids:
            by_col = {r[col_key]: r for r in rows if tuple(r[k] for k in row_keys) == rid}
            body.append([*rid, *(_cell(by_col[c], m) if c in by_col else "" for c in cols)])
        out += [f"### {m}", "", *table([*row_keys, *(f"{col_key}={c}" for c in cols)], body), ""]
    return "\n".join(out)


def check_names(what: str, asked: list[str], available: set[str], missing: str = "no run has it") -> None:
    """Raise ConfigError for the first of ``asked`` not in ``available``, naming the close ones that are."""
    for name in asked:
        if name not in available:
            close = difflib.get_close_matches(name, sorted(available), n=5, cutoff=0.6)
            hint = f"close names: {', '.join(close)}" if close else f"{len(available)} others exist"
            raise ConfigError(f"{what} {name!r}: {missing}; {hint}")


def gather(paths: list[str | Path]) -> tuple[list[dict], list[str]]:
    """Records of the runs under ``paths``, and one line per run skipped because a file of it is unreadable."""
    runs, skipped = [], []
    for run_dir in find_runs(paths):
        try:
            runs.append(run_record(run_dir))
        except RunDirError as e:
            log.warning("skipping run %s: %s", run_dir, e)
            skipped.append(str(e))
    return runs, skipped


def report(paths: list[str | Path], group_by: list[str] | None = None, metrics: list[str] | None = None,
           out: str | Path = "report") -> tuple[list[dict], str]:
    """Gather the runs under ``paths`` into ``out``/report.{csv,md} and loss_curves.png; returns (rows, markdown)."""
    from lit3d.viz.figures import loss_curves

    group_by = list(group_by or [])
    runs, skipped = gather(paths)
    if not runs:
        raise FileNotFoundError(f"no readable run directories under {', '.join(map(str, paths))}")
    if metrics:
        check_names("metric", list(metrics), {k for r in runs for k in r["metrics"]})
    else:
        metrics = [m for m in DEFAULT_METRICS if any(m in r["metrics"] for r in runs)]
    check_names("group_by key", group_by, {k for r in runs for k in r["config"]})
    rows = group_table(runs, group_by, metrics)
    md = markdown(rows, group_by, metrics)
    notes = ["Cells: mean ± sample std over the runs with a finite value (n); runs with NaN or infinite values are "
             "left out of both and counted (K NaN).", *(f"Skipped: {line}" for line in skipped)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "report.csv", rows)
    atomic_write_bytes(out / "report.md", (f"# lit3d report: {len(runs)} runs\n\n" + md + "\n\n"
                                           + "\n".join(f"- {n}" for n in notes) + "\n").encode())
    labels = _short_labels([r["run"] for r in runs])
    loss_curves(out / "loss_curves.png", {labels[r["run"]]: load_curves(r["run"]) for r in runs})
    log.info("%d runs in %d groups -> %s", len(runs), len(rows), out)
    return rows, md


def _short_labels(paths: list[Path]) -> dict[Path, str]:
    """The shortest trailing path parts that tell the runs apart (for legends)."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = {p: "/".join(p.parts[-depth:]) for p in paths}
        if len(set(labels.values())) == len(paths):
            return labels
    return {p: str(p) for p in paths}


USAGE = "lit3d report RUN_DIR... [group_by=KEY,...] [metrics=M,...] [out=DIR]"


def main(argv: list[str] | None = None) -> int:
    from lit3d.cli import command, options_help, parse_options

    def body(args: list[str]) -> int:
        if "-h" in args or "--help" in args:
            print(options_help(ReportOptions, USAGE, (__doc__ or "").split("\n\n")[1],
                               "RUN_DIR: run directories, or folders searched for them."))
            return 0
        flags = [a for a in args if a.startswith("--")]
        if flags:
            raise ConfigError(f"{flags[0]}: options are key=value (group_by=KEY,... metrics=M,... out=DIR)")
        paths, opt, rest = parse_options(args, ReportOptions, "runs", USAGE, many=True)
        if rest:
            check_names("option", [rest[0].split("=", 1)[0]], set(ReportOptions.__dataclass_fields__), "unknown")
        print(report(paths, opt.group_by, opt.metrics, opt.out)[1])
        return 0

    return command("lit3d.report", body, argv)


if __name__ == "__main__":
    sys.exit(main())
