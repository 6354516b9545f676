"""The ``lit3d`` front door and the plumbing every command shares: option parsing, ``--help``, logging, errors.

``lit3d COMMAND [args]`` runs ``python -m lit3d.COMMAND [args]`` (both stay equivalent). Commands take
``key=value`` arguments: config keys (typed by :class:`lit3d.config.FitConfig`) and, for commands on a run
directory, the command's own options (a typed dataclass, parsed by the same OmegaConf path:
:func:`parse_options`). One error handler (:func:`command`): the user's mistakes (bad key or value, missing file,
unreadable image) and the machine's (a full disk, a read-only folder) are one line on stderr and exit status 2;
anything else is a bug and shows its traceback (exit 1), as does every error with ``--debug`` (or ``LIT3D_DEBUG=1``).
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import logging
import os
import sys
from typing import Any, Callable, TypeVar

from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit3d.cache.store import CacheError
from lit3d.config import ConfigError, FitConfig, MissingPackageError, field_docs, help_text, load_config
from lit3d.data.scene import SceneError
from lit3d.teachers.dust3r.checkpoint import CheckpointError

USER_ERRORS = (ConfigError, SceneError, CacheError, CheckpointError, FileNotFoundError, ValueError,
               MissingPackageError, MisconfigurationException)
"""Errors that are the user's input, not a bug: reported as one line, exit status 2 (Lightning's
MisconfigurationException: trainer.* settings this machine or Lightning cannot run)."""

MACHINE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
"""OSErrors of the machine, not bugs: a full disk or quota, a read-only or forbidden folder (one line, exit 2)."""

COMMANDS = {
    "fit": ("lit3d.fit", "label (if needed), train, test and report a student"),
    "label": ("lit3d.label", "build or complete the label cache of a scene"),
    "evaluate": ("lit3d.evaluate", "score a run on its test frames (points, localization, exports)"),
    "localize": ("lit3d.localize", "camera poses of new photos from a run or an exported student"),
    "export-cameras": ("lit3d.export_cameras", "a label cache's cameras as a COLMAP model and a TUM trajectory"),
    "report": ("lit3d.report", "tables of many runs grouped by scene and config keys"),
    "sweep": ("lit3d.sweep", "an Optuna study of fit runs"),
    "bench": ("lit3d.bench.__main__", "benchmarks: data, align, teacher, model, label"),
}
"""Subcommands of ``lit3d``: module with ``main(argv) -> int``, one-line description."""

T = TypeVar("T")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when it has none); for an error re-raised from a
    DataLoader worker ("Caught X in DataLoader worker ...", then the worker's traceback) the worker's own message."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in lines[1]:
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(e).__name__


def command(name: str, body: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run ``body(argv)`` (``--debug`` removed) with logging set up and the one error handler."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LIT3D_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    setup_logging()
    try:
        return body(argv) or 0
    except USER_ERRORS as e:
        if debug:
            raise
        logging.getLogger(name).error("%s", one_line(e))
        return 2
    except OSError as e:
        if debug or e.errno not in MACHINE_ERRNOS:
            raise
        logging.getLogger(name).error("%s%s", e.strerror or one_line(e), f": {e.filename}" if e.filename else "")
        return 2


def run(name: str, main: Callable[[FitConfig], object], argv: list[str] | None = None) -> int:
    """Parse ``argv`` into a config and call ``main``; ``--help`` prints the resolved config's keys."""

    def body(args: list[str]) -> int:
        cfg = load_config([a for a in args if a not in ("-h", "--help")])
        if "-h" in args or "--help" in args:
            print(help_text(cfg, name))
            return 0
        main(cfg)
        return 0

    return command(name, body, argv)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse for commands with flags (benchmarks): a bad option is a ConfigError (one line via
    :func:`command`) instead of the usage text and SystemExit."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (--help lists the options)")


def parse_options(argv: list[str], options_cls: type[T], positional: str, usage: str,
                  many: bool = False) -> tuple[list[str], T, list[str]]:
    """``(positionals, options, config overrides)`` of ``POSITIONAL... [option=value ...] [key=value ...]``.

    Arguments without ``=`` are positionals (one, or several with ``many``; ``positional=VALUE`` names one too);
    ``key=value`` whose key is a field of ``options_cls`` is typed through an OmegaConf structured config (wrong
    types are ConfigErrors naming the key; a list field also takes ``a,b`` or one value without brackets); any
    other ``key=value`` is returned as a config override.
    """
    fields = {f.name for f in dataclasses.fields(options_cls)}
    lists = {f.name for f in dataclasses.fields(options_cls) if str(f.type).startswith(("list", "List"))}
    positionals, opts, overrides = [], [], []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            positionals.append(arg)
        elif key == positional:
            positionals.append(value)
        elif key in lists and not value.startswith("["):
            opts.append(f"{key}=[{value}]")
        elif key in fields:
            opts.append(arg)
        else:
            overrides.append(arg)
    if not positionals or (len(positionals) > 1 and not many):
        raise ConfigError(f"usage: {usage}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(options_cls), OmegaConf.from_dotlist(opts))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"invalid value for '{key}': {one_line(e)}" if key else one_line(e)) from None
    return positionals, OmegaConf.to_object(merged), overrides


def options_help(options_cls: type, usage: str, description: str, footer: str = "") -> str:
    """``--help`` of a command with typed options: usage, description, each option with default and doc."""
    docs = field_docs(options_cls)
    lines = [f"usage: {usage}", "", " ".join(description.split()), "", "options:"]
    lines += [f"  {f.name}={_default(f)!r}  # {docs.get(f.name, '')}" for f in dataclasses.fields(options_cls)]
    return "\n".join(lines + ([""] + [footer] if footer else []))


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def front_door_help() -> str:
    lines = ["usage: lit3d [--debug] COMMAND [args]   (COMMAND --help for its arguments)", "", "commands:"]
    lines += [f"  {name:<9} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "--debug (or LIT3D_DEBUG=1): full tracebacks also for input errors."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``lit3d COMMAND [args]``: the console script of ``[project.scripts]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [a for a in argv if a != "--debug"]
    if not names or names[0] in ("-h", "--help"):
        print(front_door_help())
        return 0 if names else 2
    if names[0] not in COMMANDS:
        print(f"lit3d: unknown command {names[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    rest = argv[argv.index(names[0]) + 1:] + (["--debug"] if "--debug" in argv[: argv.index(names[0])] else [])
    return importlib.import_module(COMMANDS[names[0]][0]).main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
