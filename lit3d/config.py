"""Typed configuration shared by every command (fit, label, evaluate, sweep, bench).

Defaults live in dataclasses, each field documented by the docstring under it (shown by ``--help``). A run's
config is ``defaults <- experiments/NAME.yaml <- CLI dot-list``, merged by OmegaConf; ``student=vit`` and
``teacher=dust3r`` pick a registered component, whose own config class then types ``student.*`` /
``teacher.*``. Unknown keys are errors that list the valid ones.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit3d.align.config import AlignConfig
from lit3d.data import FORMATS, default_resolution
from lit3d.data.config import DataConfig
from lit3d.data.splits import SPLIT_MODES
from lit3d.pairs.config import PairsConfig
from lit3d.registry import Registry, UnknownNameError
from lit3d.students import STUDENTS
from lit3d.students.config import StudentConfig
from lit3d.students.encoders import encoder_names
from lit3d.teachers import TEACHERS
from lit3d.teachers.config import TeacherConfig
from lit3d.teachers.dust3r import PRESETS as DUST3R_PRESETS
from lit3d.teachers.mast3r import PRESETS as MAST3R_PRESETS

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, missing experiment file."""


class MissingPackageError(ImportError):
    """A configured option needs a package that is not installed; the message names it and how to install it."""


@dataclass
class LoaderConfig:
    resolution: list[int] = field(default_factory=list)
    """(H, W) of the student's input and output; labels are resized to it consistently with the images. Empty:
    ``data.resolution`` (no resampling); fewer pixels train faster but localize worse."""
    batch_size: int = 8
    """Images per training step."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    pin_memory: bool = False
    """Pin host memory for faster transfers to a GPU."""
    color_jitter: float = 0.2
    """Strength of photometric augmentation of training views (brightness, contrast, saturation; 0 = off)."""
    geometric: bool = True
    """Geometric augmentation of training views: random in-plane rotation, scale and shift, the labels warped with
    the image (nearest) and their world values unchanged, the view's K and pose updated exactly. Valid because the
    labels are world points: a pixel still sees the same world point after the image moves."""
    rotation_deg: float = 15.0
    """Geometric augmentation: in-plane rotation uniform in +- this many degrees (a camera roll about its axis)."""
    scale_range: list[float] = field(default_factory=lambda: [2 / 3, 3 / 2])
    """Geometric augmentation: zoom factor range, log-uniform (< 1 zooms out and pads with invalid pixels, > 1
    crops); the focal length scales with it."""
    shift: float = 0.1
    """Geometric augmentation: principal-point shift uniform in +- this fraction of the image size."""
    tilt_deg: float = 0.0
    """Geometric augmentation: out-of-plane camera rotation (pitch and yaw, each uniform in +- this many degrees)
    about the camera centre: a homography of the image that needs no depth; labels keep their values."""
    view_shift: float = 0.1
    """Geometric augmentation: camera translation (each camera axis uniform in +- this fraction of the view's
    median label depth): the view is re-rendered from its labels with parallax (forward warping, nearest surface
    wins, disocclusions invalid); needs labels with depth and poses that describe them. 0 = off."""
    view_shift_prob: float = 0.5
    """Geometric augmentation: fraction of training views whose camera ``view_shift`` moves (the others are only
    rotated, scaled and shifted), so the student still sees the recorded viewpoints unmoved."""
    view_shift_until: float = 0.8
    """Geometric augmentation: fraction of the training epochs during which ``view_shift`` moves views; the epochs
    after it train on the recorded camera centres only (still rotated, scaled and shifted), so the fit to the
    recorded viewpoints is refined last. 1 = moves throughout."""
    preload: str = "auto"
    """Hold every frame in memory at the student resolution (``true``), read each item from the cache when it is
    needed (``false``: caches larger than memory), or preload when the frames fit ``memory_budget_gb`` (``auto``)."""
    memory_budget_gb: float = 0.0
    """Memory that preloaded frames may take with ``preload=auto``, GiB; 0 = half the RAM available at start."""

    def __post_init__(self) -> None:
        self.preload = str(self.preload).lower()  # YAML / dot-list booleans arrive as 'True' / 'False'


@dataclass
class OptimConfig:
    lr: float = 0.0
    """Peak AdamW learning rate; 0 takes the student's own (``default_lr`` of its config class: 5e-3 for
    mobilenetv3, 3e-3 for scr, 2e-3 for vit, which stalls at 5e-3, and for vanilla_cnn)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_epochs: int = 3
    """Linear warm-up epochs before the cosine decay."""
    min_lr_ratio: float = 0.01
    """Cosine schedule ends at ``lr * min_lr_ratio``."""
    conf_weighting: bool = False
    """Weight the MSE by the teacher's confidence (off in the paper)."""
    grad_clip: float = 100.0
    """Clip the gradient's global norm to this (Lightning's ``gradient_clip_val``); 0 = off (the paper's runs).
    A guard against rare huge gradients that blow up Adam's state: at 96x128 the default student's norms are
    15-80 in normal training, and 150 epochs on the 7-Scenes kitchen video diverged at epoch 56 without it."""
    encoder_lr_scale: float = 1.0
    """Learning rate of the student's encoder (``scr``'s ``encoder``, ``mobilenetv3``'s ``backbone``, ``vit``'s
    ``encoder``) relative to ``lr``, for fine-tuning a pretrained encoder gently while its head learns at ``lr``;
    the warm-up and cosine schedule scale both. 1 = one rate for all (the paper's runs)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights (Lightning's ``WeightAveraging`` with torch's EMA),
    updated after every optimizer step with this decay; validation, the checkpoints and the final weights are the
    average. 0 = off. It averages over about ``1 / (1 - decay)`` steps: 0.999 is 1,000 steps, 13 epochs of 613
    frames at batch 8; early validation figures lag, as the average still holds the first steps' weights."""


@dataclass
class LossConfig:
    name: str = "reprojection"
    """``mse``: the paper's mean squared error to the teacher's world points (normalised coordinates).
    ``reprojection``: scene-coordinate-regression loss for labels with camera poses (ACE/DSAC*-like): the robust
    reprojection error of each predicted point in its (augmented) camera, a pull of invalid predictions back to
    valid depths, plus ``weight_3d`` times the 3-D error to the label."""
    clamp_px: list[float] = field(default_factory=lambda: [50.0, 1.0])
    """reprojection: soft clamp of the reprojection error (``c * tanh(e / c)``), from its first to its last value
    over training, in pixels of a 640-px-wide image (scaled with the student's width)."""
    schedule: str = "circle"
    """reprojection: how the clamp shrinks with training progress p: ``circle`` (sqrt(1 - p^2), late), ``linear``."""
    weight_3d: float = 1.0
    """reprojection: weight of the 3-D term, the label distance in pixel-equivalent units (distance * f / depth,
    so it weighs like a reprojection error); 0 = reprojection only (predictions can slide along their rays)."""
    depth_3d: str = "pixel"
    """reprojection: the depth that turns the 3-D term's distance into pixels: ``pixel`` (each label's own depth)
    or ``view`` (the median label depth of the view). ``pixel`` weighs near labels more, so where the student is
    unsure of a pixel's depth it settles nearer than the label (a weighted median)."""
    min_depth: float = 0.1
    """reprojection: predictions nearer than this (labels' unit) in front of the camera, or behind it, are invalid."""
    max_depth: float = 1000.0
    """reprojection: predictions farther than this (labels' unit) are invalid."""
    max_reprojection_px: float = 1000.0
    """reprojection: predictions reprojecting farther than this (pixels at 640 px width) are invalid."""
    invalid_depth: float = 10.0
    """reprojection: invalid predictions without a label are pulled to the point at this depth on their ray."""


@dataclass
class RefineConfig:
    steps: int = 0
    """After the end-to-end training, train the head alone for this many steps on a buffer of encoder features of
    augmented training views, ACE's buffer on the scene-adapted encoder (``lit3d.students.buffer``; ``student=scr``
    without ``context`` only). 0 = off. The refined student is ``checkpoints/refined.ckpt``, which ``best`` then
    means."""
    views_per_frame: int = 8
    """Augmented views (the training loader's augmentation) of each training frame whose features fill the buffer;
    it holds ``views_per_frame x frames x cells per view`` cells of about 1.2 KB each."""
    cells_per_batch: int = 640
    """Feature cells per step; each supervises its ``feature_stride**2`` pixels (640 x 8 x 8 = 40,960)."""
    lr: float = 1e-3
    """Peak AdamW learning rate of the head, reached after the first 2 % of ``steps`` (then the cosine below)."""
    min_lr_ratio: float = 1e-4
    """The head's cosine ends at ``lr`` x this: nearly zero, as ACE's one-cycle schedule ends, which localized
    more new-path frames within 10 cm / 10 deg than ``optim.min_lr_ratio`` (0.01) on both seeds measured (README)."""
    scale_range: list[float] = field(default_factory=list)
    """Zoom range of the buffer's augmented views, as ``loader.scale_range`` ([] = the training loader's). For test
    views at other distances than the training views': [0.5, 2] localized more synthetic new-path frames within
    10 cm / 10 deg on every seed measured, and fewer kitchen frames at the training views' scale (README)."""
    precision: str = "auto"
    """Lightning precision of the refinement. ``auto``: on a CPU bf16-mixed where bf16 matrix products are faster
    there (timed at the start: about 4x on CPUs with AMX; without bf16 units they are emulated, 60x slower), else
    32-true; on a GPU 32-true (its small steps are launch-bound: H200 1.9 against 2.3 ms in bf16 per 640 cells)."""


@dataclass
class TrainerConfig:
    max_epochs: int = 150
    """Training epochs."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, ..."""
    devices: Any = "auto"
    """Lightning devices: a count, a list of ids or 'auto'. >1 uses DDP (gloo on CPU)."""
    num_nodes: int = 1
    """Machines for multi-node DDP."""
    strategy: str = "auto"
    """Lightning strategy (auto, ddp, ddp_spawn, ...)."""
    precision: str = "32-true"
    """Lightning precision: 32-true, bf16-mixed, 16-mixed."""
    logger: str = "csv"
    """csv or tensorboard (both write under the run directory)."""
    log_every_n_steps: int = 10
    """Logging interval in steps."""
    check_val_every_n_epoch: int = 5
    """Validate every N epochs (metrics on ``val``; the best checkpoint follows ``val/l2_mean``)."""
    enable_progress_bar: bool = True
    """Show Lightning's progress bar."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms."""
    resume: str = ""
    """Checkpoint to resume from: a path or 'last' (the run directory's last.ckpt)."""


@dataclass
class FitConfig:
    experiment: str = "default"
    """Experiment name; ``experiment=NAME`` on the command line loads ``experiments/NAME.yaml``."""
    run_dir: str = ""
    """Output folder of the run (default ``runs/<experiment>/<timestamp>``)."""
    cache_dir: str = "cache"
    """Root of the label caches (and of synthetic renders), shared by every command."""
    seed: int = 0
    """Seed of weights init, data order and augmentation."""
    data: DataConfig = field(default_factory=DataConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    teacher: TeacherConfig = field(default_factory=lambda: TEACHERS.config("depth"))
    align: AlignConfig = field(default_factory=AlignConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    student: StudentConfig = field(default_factory=lambda: STUDENTS.config("mobilenetv3"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


GROUPS: dict[str, Registry] = {"student": STUDENTS, "teacher": TEACHERS}
"""Config sections whose class depends on a registered name."""

LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                        "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16")
"""``trainer.precision`` values Lightning accepts (tests compare them with Lightning's own list)."""

CHOICES: dict[str, tuple[str, ...] | Callable[[], list[str]]] = {
    "data.format": FORMATS.names,
    "data.split": SPLIT_MODES,
    "data.pose_camera": ("color", "depth"),
    "loss.name": ("mse", "reprojection"),
    "loss.schedule": ("circle", "linear"),
    "loss.depth_3d": ("pixel", "view"),
    "align.method": ("known_poses", "global"),
    "align.schedule": ("cosine", "linear", "constant"),
    "align.sampling": ("grid", "confident"),
    "align.robust": ("none", "cauchy"),
    "align.known_pose_mode": ("fixed", "anchor", "ignore"),
    "align.on_disconnected": ("error", "components"),
    "loader.preload": ("auto", "true", "false"),
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "trainer.precision": LIGHTNING_PRECISIONS,
    "refine.precision": ("auto", *LIGHTNING_PRECISIONS),
    "trainer.logger": ("csv", "tensorboard", "wandb", "mlflow"),
    "student.encoder": encoder_names,
    "student.output": ("pixels", "cells"),
    "teacher.preset": (*DUST3R_PRESETS, *MAST3R_PRESETS),
    "teacher.amp": ("bf16", "fp16", "none"),
    "teacher.head_type": ("", "dpt", "linear", "catmlp+dpt"),
    "teacher.points": ("depth", "point_head"),
}
"""Keys whose value is one of a few names, checked when a config loads (before any work starts); a function: the
names of a registry, read when checking (so components registered later count). ``student.*`` and ``teacher.*``
keys apply to the components whose config has the field."""


def choice_values(key: str) -> tuple[str, ...]:
    """The valid values of ``CHOICES[key]`` now."""
    valid = CHOICES[key]
    return tuple(valid()) if callable(valid) else valid

FREE_TEXT_KEYS: dict[str, str] = {
    "experiment": "a name or a yaml path", "run_dir": "a path", "cache_dir": "a path", "data.root": "a path",
    "data.intrinsics": "a path", "data.depth_intrinsics": "a path",
    "data.depth_extrinsics": "a path", "trainer.resume": "a path or last",
    "student.pretrained_file": "a path",
    "student.weights_file": "a path", "teacher.path": "a path", "teacher.checkpoint": "a path or a hub name",
    "teacher.sha256": "a hex digest", "student.name": "a registry name, checked at load",
    "teacher.name": "a registry name, checked at load", "student.model_name": "a timm model name",
    "align.device": "a torch device, parsed at load", "teacher.device": "a torch device, parsed at load",
    "trainer.devices": "a count, a list of ids or auto", "trainer.strategy": "Lightning's open registry of strategies",
}
"""Text keys that are not a choice of names (paths, patterns, open registries), with what they hold: every text key
of every config class is here or in CHOICES (a test checks), so a new choice field cannot go unchecked."""

PATTERNS: dict[str, tuple[str, str]] = {
    "pairs.graph": (r"complete|covis|(swin|logwin)(-\d+(-noncyclic)?)?|oneref(-\d+)?",
                    "complete, covis, swin-K, logwin-K (K: a number; -noncyclic after it), oneref-R"),
}
"""Text keys of a fixed form: (regular expression of the whole value, what it allows), checked at load."""

DEVICE_KEYS = ("align.device", "teacher.device")
"""Keys naming a torch device ('' or auto: the default placement): parsed at load. Whether the device exists is
checked where it is used (a config trained on a GPU must still load on a CPU machine for evaluation)."""

AT_LEAST: dict[str, float] = {
    "data.stride": 1, "data.max_frames": 0, "data.test_every": 0, "data.val_every": 0, "data.num_frames": 0,
    "data.test_path_frames": 0, "data.resolution": 1, "loader.resolution": 1, "loader.batch_size": 1,
    "loader.num_workers": 0, "loader.memory_budget_gb": 0, "loader.color_jitter": 0,
    "optim.lr": 0, "optim.weight_decay": 0, "optim.warmup_epochs": 0, "optim.min_lr_ratio": 0, "optim.grad_clip": 0,
    "optim.ema_decay": 0, "optim.encoder_lr_scale": 0,
    "refine.steps": 0, "refine.views_per_frame": 1, "refine.cells_per_batch": 1, "refine.lr": 0,
    "refine.min_lr_ratio": 0,
    "trainer.max_epochs": 1, "trainer.num_nodes": 1, "trainer.log_every_n_steps": 1,
    "trainer.check_val_every_n_epoch": 1,
}
"""Numeric keys and their smallest valid value (lists: every element), checked at load."""

BELOW: dict[str, float] = {"optim.ema_decay": 1}
"""Numeric keys and the value they must stay below, checked at load."""

PAIRS = ("data.resolution", "loader.resolution")
"""List keys that hold exactly two values (H, W). (The geometric augmentation's ranges are checked with
``loader.geometric`` on, by :func:`lit3d.cache.datamodule.geometric_augmentation`: off, they do not matter.)"""


def _value(cfg: "FitConfig", key: str) -> tuple[bool, Any]:
    """``(present, value)`` of a dotted key (``student.*`` / ``teacher.*`` fields exist for some components only)."""
    section, name = key.split(".")
    obj = getattr(cfg, section)
    return hasattr(obj, name), getattr(obj, name, None)


def check_choices(cfg: "FitConfig") -> None:
    """Raise ConfigError for the first key of ``CHOICES`` whose value is not one of its names, then for the first
    value of another form than ``PATTERNS`` asks, unparseable device (``DEVICE_KEYS``) and value out of range
    (``AT_LEAST``, ``BELOW``, ``PAIRS``)."""
    import torch

    for key in CHOICES:
        present, value = _value(cfg, key)
        valid = choice_values(key)
        if present and value not in valid:
            raise ConfigError(f"invalid value for '{key}': {value!r}; valid values: {', '.join(valid)}")
    for key, (pattern, what) in PATTERNS.items():
        present, value = _value(cfg, key)
        if present and not re.fullmatch(pattern, value):
            raise ConfigError(f"invalid value for '{key}': {value!r}; valid values: {what}")
    for key in DEVICE_KEYS:
        present, value = _value(cfg, key)
        try:
            if present and value not in ("", "auto"):
                torch.device(value)
        except RuntimeError:
            raise ConfigError(f"invalid value for '{key}': {value!r}; valid values: auto, cpu, cuda, cuda:N") from None
    for key in PAIRS:
        present, value = _value(cfg, key)
        if present and len(value) != 2:
            raise ConfigError(f"invalid value for '{key}': {list(value)}; it takes two values")
    for key, low in AT_LEAST.items():
        present, value = _value(cfg, key)
        if present and any(v < low for v in (value if isinstance(value, list) else [value])):
            raise ConfigError(f"invalid value for '{key}': {value}; it must be >= {low:g}")
    for key, high in BELOW.items():
        present, value = _value(cfg, key)
        if present and value >= high:
            raise ConfigError(f"invalid value for '{key}': {value}; it must be < {high:g}")


def check_refine(cfg: "FitConfig") -> None:
    """The head refinement trains a per-cell head on stored features: ``scr`` students without ``context`` only."""
    scales = list(cfg.refine.scale_range)
    if scales and not (len(scales) == 2 and 0 < scales[0] <= scales[1]):
        raise ConfigError(f"invalid value for 'refine.scale_range': {scales}; it must be [] (loader.scale_range) or "
                          f"[min, max] with 0 < min <= max")
    if cfg.refine.steps <= 0:
        return
    if cfg.student.name != "scr":
        raise ConfigError(f"refine.steps={cfg.refine.steps} needs student=scr (a per-cell head on encoder features); "
                          f"student={cfg.student.name} has none; set refine.steps=0")
    if cfg.student.context:
        raise ConfigError(f"refine.steps={cfg.refine.steps} trains the per-cell head alone; student.context="
                          f"{cfg.student.context} adds 3x3 convs across cells; set one of them to 0")
    if scales and not cfg.loader.geometric:
        raise ConfigError(f"refine.scale_range={scales} zooms the buffer's views, which needs loader.geometric=true")


def _experiment_yaml(name: str) -> DictConfig:
    path = Path(name) if name.endswith((".yaml", ".yml")) else EXPERIMENTS_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
        raise ConfigError(f"experiment file {path} not found; available experiments: {', '.join(available)}")
    try:
        return OmegaConf.load(path)
    except Exception as e:  # yaml syntax errors
        raise ConfigError(f"cannot parse experiment file {path}: {str(e).splitlines()[0]}") from None


def check_keys(raw: Any, schema: Any, what: str = "config", free: tuple[str, ...] = (), prefix: str = "") -> None:
    """Raise ConfigError for the first key of ``raw`` that ``schema`` lacks, listing the valid ones.

    Sections named in ``free`` hold arbitrary keys and are not descended into.
    """
    if not isinstance(raw, DictConfig):
        return
    for key in raw.keys():
        full = f"{prefix}{key}"
        if key not in schema:
            valid = ", ".join(str(k) for k in schema.keys())
            raise ConfigError(f"unknown {what} key '{full}'; valid keys{' of ' + prefix[:-1] if prefix else ''}: {valid}")
        if isinstance(schema[key], DictConfig) and key not in free:
            check_keys(raw[key], schema[key], what, free, f"{full}.")


def empty_as_text(item: str) -> str:
    """A command line's ``key=value`` for OmegaConf: ``key=`` is the empty string (OmegaConf reads it as null,
    which no field accepts)."""
    return f"{item}''" if item.endswith("=") else item


def load_config(args: list[str] | None = None, **overrides: Any) -> FitConfig:
    """Resolve ``defaults <- experiment yaml <- args (dot-list) <- overrides (dotted keys)``.

    ``args`` is a CLI dot-list such as ``["experiment=vit_best", "student=vit", "student.depth=4"]``.
    """
    dotlist = [a for a in (args or [])] + [f"{k}={v}" for k, v in overrides.items()]
    for item in dotlist:
        if "=" not in item:
            raise ConfigError(f"argument {item!r} is not of the form key=value")
    experiment = next((a.split("=", 1)[1] for a in dotlist if a.split("=", 1)[0] == "experiment"), None)
    dotlist = [a for a in dotlist if a.split("=", 1)[0] != "experiment"]
    # ``student=vit`` is sugar for ``student.name=vit``
    dotlist = [f"{a.split('=', 1)[0]}.name={a.split('=', 1)[1]}" if a.split("=", 1)[0] in GROUPS else a
               for a in dotlist]
    dotlist = [empty_as_text(a) for a in dotlist]
    try:
        raw = OmegaConf.merge(_experiment_yaml(experiment) if experiment else OmegaConf.create(),
                              OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    cfg = _resolve(raw)
    if experiment:
        cfg.experiment = Path(experiment).stem
    return cfg


def _resolve(raw: DictConfig) -> FitConfig:
    """Type ``raw`` (yaml/dot-list values) against the schema of the components it names."""
    for group in GROUPS:  # a bare string in a yaml (``student: vit``) is the same sugar
        if isinstance(raw.get(group), str):
            raw[group] = {"name": raw[group]}
    base = FitConfig()
    try:
        sections = {g: reg.config(raw.get(g, {}).get("name", getattr(base, g).name)) for g, reg in GROUPS.items()}
    except UnknownNameError as e:
        raise ConfigError(str(e)) from None
    schema = OmegaConf.structured(dataclasses.replace(base, **sections))
    check_keys(raw, schema)
    try:
        merged = OmegaConf.merge(schema, raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        msg = str(e).splitlines()[0]
        raise ConfigError(f"invalid value for '{key}': {msg}" if key else msg) from None
    cfg = OmegaConf.to_object(merged)
    if not cfg.data.resolution and cfg.data.format in FORMATS:  # an unknown format fails in check_choices
        cfg.data.resolution = default_resolution(cfg.data.format)
    if not cfg.loader.resolution:
        cfg.loader.resolution = list(cfg.data.resolution)
    check_choices(cfg)
    check_refine(cfg)
    if cfg.optim.lr <= 0:
        cfg.optim.lr = cfg.student.default_lr
    return cfg
def to_yaml(cfg: FitConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(path: str | Path) -> FitConfig:
    """Load a resolved ``config.yaml`` written into a run directory."""
    try:
        return _resolve(OmegaConf.load(path))
    except OSError as e:
        raise ConfigError(f"cannot read run config {path}: {e}") from None


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields, gathered from ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def help_text(cfg: FitConfig, command: str = "lit3d.fit") -> str:
    """``--help``: usage, every key with its value and docstring, then registered names."""
    lines = [f"usage: python -m {command} [experiment=NAME] [key=value ...]", "", "keys (resolved value  # doc):"]

    def walk(obj: Any, prefix: str) -> None:
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                doc = docs.get(f.name, "")
                lines.append(f"  {prefix}{f.name}={value!r}" + (f"  # {doc}" if doc else ""))

    walk(cfg, "")
    lines += ["", f"students: {', '.join(STUDENTS.names())}", f"teachers: {', '.join(TEACHERS.names())}",
              f"experiments: {', '.join(sorted(p.stem for p in EXPERIMENTS_DIR.glob('*.yaml')))}"]
    return "\n".join(lines)
