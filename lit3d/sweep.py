"""``python -m lit3d.sweep sweeps/NAME.yaml [variant=NAME] [key=value ...]``: an Optuna study of ``fit`` runs.

Each trial calls :func:`lit3d.fit.fit` (the same as ``python -m lit3d.fit``) with its own run directory under
the sweep directory. Re-running the command resumes the study; starting it on several machines with one
``storage.url`` makes them share it. See :mod:`lit3d.sweeps` for the sweep file and the storage.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lit3d.cli import command
from lit3d.config import FitConfig, field_docs
from lit3d.files import atomic_write_bytes
from lit3d.sweeps.space import grid_points, make_pruner, make_sampler
from lit3d.sweeps.spec import (ParamSpec, SweepConfig, flatten, is_evaluation_metric, load_sweep, params_of, prunes,
                               to_yaml)
from lit3d.sweeps.storage import check_spec, db_lock, make_storage, redact, retried, storage_url, top_up
from lit3d.sweeps.worker import EvaluateFn, FitFn, Objective, run_worker, trial_config

log = logging.getLogger("lit3d.sweep")


def _first_value(p: ParamSpec) -> Any:
    return p.choices[0] if p.type == "categorical" else (int(p.low) if p.type == "int" else float(p.low))


def queue_points(cfg: SweepConfig) -> list[dict[str, Any]] | None:
    """The grid points to run (all, or the first ``n_trials``), or None for a sampler that draws them."""
    if cfg.sampler.name != "grid":
        return None
    points = grid_points(params_of(cfg))
    if cfg.n_trials > len(points):
        log.warning("n_trials=%d but the grid has %d points: running the grid once", cfg.n_trials, len(points))
    return points[: cfg.n_trials] if cfg.n_trials > 0 else points


def check_configs(cfg: SweepConfig) -> FitConfig:
    """Resolve the base config and the config of every grid point (or one point), so bad keys fail now."""
    base = trial_config(cfg, {})
    for params in queue_points(cfg) or [{k: _first_value(p) for k, p in params_of(cfg).items()}]:
        trial_config(cfg, params)
    return base


def sweep(cfg: SweepConfig, fit_fn: FitFn | None = None, evaluate_fn: EvaluateFn | None = None) -> optuna.Study:
    """Create or resume the study of ``cfg``, run trials until the queue is empty, and return the study.

    ``fit_fn`` and ``evaluate_fn`` replace :func:`lit3d.fit.fit` and :func:`lit3d.evaluate.evaluate_run` (tests).
    """
    if fit_fn is None:
        from lit3d.fit import fit as fit_fn
    base = check_configs(cfg)
    if cfg.pruner.name != "none" and not prunes(cfg):
        log.warning("pruner %s follows the validation curve, and objective %s is no val/* metric: no trial is "
                    "pruned", cfg.pruner.name, cfg.objective.metric)
    if is_evaluation_metric(cfg.objective.metric) and cfg.evaluate.split == "test":
        log.warning("objective %s is measured on the test frames: the best trial's test figure is then chosen on "
                    "them and overstates what a new run gives; choose on evaluate.split=val", cfg.objective.metric)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(cfg)
    with db_lock(url):  # creating tables, the study and its queue must not race with another worker
        storage = make_storage(url, cfg.storage)
        study = optuna.create_study(study_name=cfg.name, storage=storage, direction=cfg.objective.direction,
                                    sampler=make_sampler(cfg.sampler), pruner=make_pruner(cfg.pruner),
                                    load_if_exists=True)
        check_spec(study, cfg, flatten(dataclasses.asdict(base)))
        added = top_up(study, cfg, queue_points(cfg))
    resolved = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, url=redact(url)))
    atomic_write_bytes(out / "sweep.yaml", to_yaml(resolved).encode())
    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    log.info("study %s in %s: %d trials queued (%d new); run directories in %s", cfg.name, redact(url), queued,
             added, out)
    ran = run_worker(study, storage, url, cfg, Objective(cfg, fit_fn, evaluate_fn))
    report(study, cfg, ran)
    return study


def report(study: optuna.Study, cfg: SweepConfig, ran: int) -> None:
    """Log the study's state: counts, trials that failed for good, the best trial."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    log.info("study %s: this worker ran %d trials; %s", cfg.name, ran, dict(counts))
    old = retried(trials)
    for t in trials:
        if t.state == TrialState.FAIL and t.number not in old:
            log.warning("trial %d failed and is skipped (%s): %s", t.number,
                        t.user_attrs.get("fail_reason") or "its worker died and retries are used up", t.params)
    if counts.get("COMPLETE"):
        best = study.best_trial
        log.info("best trial %d: %s = %.6g %s (%s)", best.number, cfg.objective.metric, best.value, best.params,
                 best.user_attrs.get("run_dir"))


def help_text() -> str:
    lines = ["usage: python -m lit3d.sweep sweeps/NAME.yaml [variant=NAME] [key=value ...]", "",
             "key=value sets a sweep key below, or else a base config key (see python -m lit3d.fit --help).", "",
             "sweep keys:"]

    def walk(cls: type, prefix: str) -> None:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(sub):
                walk(type(sub), f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name}={sub!r}  # {docs.get(f.name, '')}")

    walk(SweepConfig, "")
    lines += ["", "space entries: [choices] or {type: categorical|int|float|log, choices, low, high, step, log}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def body(args: list[str]) -> int:
        if not args or args[0].startswith("-") or "-h" in args or "--help" in args:
            print(help_text())
            return 0 if args else 2
        try:
            sweep(load_sweep(args[0], args[1:]))
        except KeyboardInterrupt:
            log.error("interrupted; run the same command again to resume the study")
            return 130
        return 0

    return command("lit3d.sweep", body, argv)


if __name__ == "__main__":
    sys.exit(main())
