"""Search space -> Optuna: suggestions, grid points, samplers, pruners, and trial params -> config items."""
from __future__ import annotations

import itertools
import json
import warnings
from typing import Any

import numpy as np
import optuna

from lit3d.config import ConfigError
from lit3d.sweeps.spec import ParamSpec, PrunerConfig, SamplerConfig


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Ask ``trial`` for every parameter of ``space`` (fixed values of queued grid points come back as they are)."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "categorical":
            out[name] = trial.suggest_categorical(name, p.choices)
        elif p.type == "int":
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[name] = trial.suggest_float(name, float(p.low), float(p.high), step=p.step, log=p.log)
    return out


def _values(name: str, p: ParamSpec) -> list[Any]:
    if p.type == "categorical":
        return list(p.choices)
    if p.type == "int" and not p.log:
        return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
    if p.type == "float" and p.step:
        n = int(np.floor((p.high - p.low) / p.step + 1e-9)) + 1
        return [float(p.low + k * p.step) for k in range(n)]
    raise ConfigError(f"space.{name}: the grid sampler needs categorical, int or stepped float parameters")


def grid_points(space: dict[str, ParamSpec]) -> list[dict[str, Any]]:
    """Every combination of the space, the last parameter varying fastest."""
    names = list(space)
    return [dict(zip(names, combo)) for combo in itertools.product(*(_values(n, space[n]) for n in names))]


def point_key(params: dict[str, Any]) -> str:
    """A canonical string of a parameter assignment (grid points are matched by it)."""
    return json.dumps(params, sort_keys=True)


def make_sampler(cfg: SamplerConfig, trial_number: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler for trial ``trial_number``, seeded ``seed + trial_number``.

    A fresh seed per trial makes a single worker's study reproducible and keeps parallel workers (all built from
    the same file) from drawing the same random points. Grid points are queued with fixed parameters, so
    ``grid`` only needs a sampler that is never asked.
    """
    seed = cfg.seed + trial_number
    if cfg.name == "tpe":
        with warnings.catch_warnings():  # constant_liar is "experimental" since optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials,
                                              constant_liar=cfg.constant_liar)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(cfg: PrunerConfig) -> optuna.pruners.BasePruner:
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource, max_resource="auto",
                                              reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def config_item(key: str, value: Any) -> str:
    """``key=value`` as ``lit3d.config.load_config`` parses it: the value written as JSON (which YAML reads), so an
    empty string stays a string rather than null and a name with commas or brackets stays one value."""
    return f"{key}={json.dumps(value)}"
