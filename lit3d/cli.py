"""Shared command-line plumbing: ``--help``, logging, and one-line errors for bad input."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from lit3d.cache.store import CacheError
from lit3d.config import ConfigError, FitConfig, help_text, load_config
from lit3d.data.scene import SceneError

# errors that are the user's input, not a bug: reported as one line, exit status 2
USER_ERRORS = (ConfigError, SceneError, CacheError, FileNotFoundError, ValueError)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run(command: str, main: Callable[[FitConfig], object], argv: list[str] | None = None) -> int:
    """Parse ``argv`` into a config and call ``main``; ``--help`` prints the resolved config's keys."""
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    try:
        cfg = load_config([a for a in argv if a not in ("-h", "--help")])
        if "-h" in argv or "--help" in argv:
            print(help_text(cfg, command))
            return 0
        main(cfg)
    except USER_ERRORS as e:
        logging.getLogger(command).error("%s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return 2
    return 0
