"""Sweep files (``sweeps/NAME.yaml``) as typed dataclasses, with variants and command-line overrides.

A sweep is ``experiment`` (the base experiment) + ``base`` (config keys on top of it) + ``space`` (config keys
searched) + how to search (objective, n_trials, sampler, pruner, storage). ``variants.NAME`` is a partial sweep
merged over the file by ``variant=NAME`` (its ``space``, when given, replaces the file's). Command-line
``key=value`` items set sweep keys when ``key`` starts with a sweep field, else base config keys.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit3d.config import ConfigError, check_keys, empty_as_text
from lit3d.evaluate import EVAL_PREFIXES, EvalOptions

PARAM_TYPES = ("categorical", "int", "float")


@dataclass
class ParamSpec:
    """One searched config key. In YAML either a list (categorical choices) or a mapping of these fields."""

    type: str = "categorical"
    """categorical, int, float (``log`` is accepted as float with ``log: true``)."""
    choices: list[Any] = field(default_factory=list)
    """categorical: the values (scalars: numbers, strings, booleans)."""
    low: float | None = None
    """int/float: smallest value."""
    high: float | None = None
    """int/float: largest value (inclusive)."""
    step: float | None = None
    """int/float: spacing of the values (int default 1; float default continuous)."""
    log: bool = False
    """int/float: sample on a log scale."""


@dataclass
class ObjectiveConfig:
    metric: str = "val/l2_mean"
    """A metric the run logs: a ``val/*`` key (tracked each validation) or a key of ``fit``'s result (test/*)."""
    direction: str = "minimize"
    """minimize or maximize."""
    reduce: str = "best"
    """For ``val/*`` metrics: best (the epoch whose checkpoint is tested) or last validation value."""


@dataclass
class TrialEvaluation(EvalOptions):
    """``lit3d evaluate`` of every finished trial: the split, then any option of the command (``tta``, ``tune``,
    ``reprojection_px``, ...; ``lit3d evaluate --help``)."""

    split: str = ""
    """Split each finished trial is evaluated on ('' = none): ``val`` to choose between trials on validation frames
    (new viewpoints with ``data.val_block``), ``test`` to record the held-out figures. The evaluation's metrics
    (``loc/*``, ``loc_refined/*``, ``eval/*``, ``gen/*``) join the trial's user attributes and its
    ``metrics.json``, and ``objective.metric`` may name one (``loc/acc_5cm5deg`` with
    ``objective.direction=maximize``)."""
    exports: bool = False
    """Also write each trial's PLY clouds and ONNX / TorchScript student (off: a sweep compares recipes)."""


@dataclass
class SamplerConfig:
    name: str = "tpe"
    """tpe, random, or grid (every combination of the space once, in order; the paper's tables)."""
    seed: int = 0
    """Base seed; trial N samples with seed + N, so parallel workers never draw the same random point."""
    n_startup_trials: int = 10
    """tpe: random trials before the model takes over."""
    constant_liar: bool = True
    """tpe: treat running trials as bad, so parallel workers spread out."""


@dataclass
class PrunerConfig:
    name: str = "none"
    """none, median or hyperband; trials report the objective after each validation (epoch = step)."""
    n_startup_trials: int = 5
    """median: finished trials before pruning starts."""
    n_warmup_steps: int = 0
    """median: epochs of a trial before it can be pruned."""
    min_resource: int = 1
    """hyperband: epochs every trial gets."""
    reduction_factor: int = 3
    """hyperband: the factor between brackets."""


@dataclass
class StorageConfig:
    url: str = ""
    """Optuna RDB URL, e.g. postgresql://user:pw@host/db for many machines ('' = SQLite file in output_dir)."""
    heartbeat_interval: int = 60
    """Seconds between a running trial's heartbeats."""
    grace_period: int = 0
    """Seconds without a heartbeat after which a trial is marked failed (0 = 2 x heartbeat_interval)."""
    retries: int = 1
    """Times a failed-by-heartbeat (killed worker) trial is re-queued with the same parameters, then skipped."""


@dataclass
class SweepConfig:
    name: str = ""
    """Study name ('' = file name, plus -VARIANT). Workers with the same name and storage share the study."""
    experiment: str = ""
    """Base experiment (experiments/NAME.yaml or a path; '' = the defaults of python -m lit3d.fit)."""
    base: dict[str, Any] = field(default_factory=dict)
    """Config keys (dotted or nested) applied on top of the experiment for every trial."""
    space: dict[str, Any] = field(default_factory=dict)
    """Searched config keys -> ParamSpec (a list is a categorical)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    evaluate: TrialEvaluation = field(default_factory=TrialEvaluation)
    n_trials: int = 0
    """Trials to finish, counted over all workers (0 = every grid point; required for tpe/random)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    output_dir: str = ""
    """Sweep directory: sweep.yaml, the SQLite study, one run directory per trial ('' = runs/sweeps/NAME)."""
    wait: bool = True
    """When no trial is left to start, wait for other workers' running trials (and retry them if they die)."""
    variant: str = ""
    """Name of the entry of ``variants`` to apply (e.g. smoke)."""
    variants: dict[str, Any] = field(default_factory=dict)
    """Partial sweeps selected by ``variant=NAME``."""


SWEEP_KEYS = {f.name for f in dataclasses.fields(SweepConfig)}
SPLITS = ("train", "val", "test")
"""Splits of a label cache that ``evaluate.split`` may name."""


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(sweep key items, base config items) of ``key=value`` command-line items."""
    sweep, base = [], []
    for item in args:
        if "=" not in item:
            raise ConfigError(f"argument {item!r} is not of the form key=value")
        (sweep if item.split("=", 1)[0].split(".")[0] in SWEEP_KEYS else base).append(item)
    return sweep, base


def flatten(d: Any, prefix: str = "", leaf=lambda v: not isinstance(v, dict)) -> dict[str, Any]:
    """Nested mappings -> dotted keys; ``leaf(v)`` stops the descent (e.g. at a parameter spec)."""
    if not isinstance(d, dict) or (prefix and leaf(d)):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.", leaf))
    return out


def _is_param(v: Any) -> bool:
    return isinstance(v, list) or (isinstance(v, dict) and bool({"type", "choices", "low", "high"} & set(v)))


def parse_param(name: str, raw: Any) -> ParamSpec:
    """A ParamSpec from its YAML form, checked (ConfigError says what is wrong with ``space.NAME``)."""
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    raw = dict(raw)
    if raw.get("type") == "log":
        raw.update(type="float", log=True)
    unknown = set(raw) - {f.name for f in dataclasses.fields(ParamSpec)}
    if unknown:
        raise ConfigError(f"space.{name}: unknown keys {sorted(unknown)}; valid: type, choices, low, high, step, log")
    p = ParamSpec(**raw)
    if p.type not in PARAM_TYPES:
        raise ConfigError(f"space.{name}: type {p.type!r} is not one of {', '.join(PARAM_TYPES)} (or log)")
    if p.type == "categorical":
        if not p.choices or not all(c is None or isinstance(c, (bool, int, float, str)) for c in p.choices):
            raise ConfigError(f"space.{name}: categorical needs a non-empty list of scalar choices")
    elif p.low is None or p.high is None or p.low > p.high:
        raise ConfigError(f"space.{name}: {p.type} needs low <= high")
    elif p.log and (p.low <= 0 or p.step is not None):
        raise ConfigError(f"space.{name}: log scale needs low > 0 and no step")
    return p


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    try:
        return OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors
        raise ConfigError(f"cannot parse sweep file {path}: {str(e).splitlines()[0]}") from None


def load_sweep(path: str | Path, args: list[str] | None = None) -> SweepConfig:
    """Resolve ``sweep file <- variants[variant] <- args``; ``base`` and ``space`` come back with dotted keys."""
    path = Path(path)
    sweep_args, base_args = split_args(list(args or []))
    try:
        raw = _load_yaml(path)
        cli = OmegaConf.from_dotlist(sweep_args)
        variant = str(cli.get("variant") or raw.get("variant") or "")
        if variant:
            variants = raw.get("variants") or {}
            if variant not in variants:
                raise ConfigError(f"{path} has no variant {variant!r}; variants: {', '.join(variants) or 'none'}")
            patch = variants[variant]
            if "space" in patch:  # a variant's space replaces the file's rather than adding keys to it
                raw.space = patch.space
            raw = OmegaConf.merge(raw, {k: v for k, v in patch.items() if k != "space"})
        raw = OmegaConf.merge(raw, cli)
        schema = OmegaConf.structured(SweepConfig)
        check_keys(raw, schema, what="sweep", free=("base", "space", "variants"))
        cfg: SweepConfig = OmegaConf.to_object(OmegaConf.merge(schema, raw))
    except (OmegaConfBaseException, ValueError) as e:  # ValueError: a value the options' own checks refuse
        raise ConfigError(f"sweep file {path}: {str(e).splitlines()[0]}") from None
    cfg.variant = variant
    cfg.base = flatten(cfg.base)
    cfg.base.update(command_line_value(item) for item in base_args)  # command-line base keys win
    cfg.space = {k: dataclasses.asdict(parse_param(k, v)) for k, v in flatten(cfg.space, leaf=_is_param).items()}
    cfg.name = cfg.name or path.stem + (f"-{variant}" if variant else "")
    cfg.output_dir = cfg.output_dir or str(Path("runs") / "sweeps" / cfg.name)
    _validate(cfg)
    return cfg


def command_line_value(item: str) -> tuple[str, Any]:
    """``(key, value)`` of a command line's ``key=value``, the value typed as ``load_config`` reads it (YAML:
    ``[a,b]`` a list, ``3`` a number) and ``key=`` the empty string."""
    key, _, value = item.partition("=")
    return key, OmegaConf.to_container(OmegaConf.from_dotlist([empty_as_text(f"value={value}")]))["value"]


def _validate(cfg: SweepConfig) -> None:
    if not cfg.space:
        raise ConfigError(f"sweep {cfg.name}: the search space is empty")
    choices = {"sampler.name": (cfg.sampler.name, ("tpe", "random", "grid")),
               "pruner.name": (cfg.pruner.name, ("none", "median", "hyperband")),
               "objective.direction": (cfg.objective.direction, ("minimize", "maximize")),
               "objective.reduce": (cfg.objective.reduce, ("best", "last"))}
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(valid)}")
    if cfg.sampler.name != "grid" and cfg.n_trials <= 0:
        raise ConfigError(f"n_trials must be > 0 for sampler.name={cfg.sampler.name}")
    if cfg.storage.heartbeat_interval <= 0 or cfg.storage.retries < 0:
        raise ConfigError("storage.heartbeat_interval must be > 0 and storage.retries >= 0")
    if cfg.evaluate.split and cfg.evaluate.split not in SPLITS:
        raise ConfigError(f"evaluate.split={cfg.evaluate.split!r} is not one of {', '.join(SPLITS)} ('' = none)")
    if is_evaluation_metric(cfg.objective.metric) and not cfg.evaluate.split:
        raise ConfigError(f"objective.metric={cfg.objective.metric} comes from lit3d evaluate, which this sweep does "
                          f"not run: set evaluate.split (val: choose on the validation frames)")


def prunes(cfg: SweepConfig) -> bool:
    """Whether the pruner can stop trials: it follows the validation curve, so only a ``val*`` objective."""
    return cfg.pruner.name != "none" and cfg.objective.metric.startswith("val")


def is_evaluation_metric(name: str) -> bool:
    """Whether ``name`` is a metric of ``lit3d evaluate`` (not of ``fit``)."""
    return name.startswith(EVAL_PREFIXES)


def params_of(cfg: SweepConfig) -> dict[str, ParamSpec]:
    return {k: ParamSpec(**v) for k, v in cfg.space.items()}


def to_yaml(cfg: SweepConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(path: str | Path) -> SweepConfig:
    """The resolved sweep written as ``sweep.yaml`` into a sweep directory."""
    raw = _load_yaml(Path(path))
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SweepConfig), raw))
