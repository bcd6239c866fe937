"""Where training's log lines go when nobody configured logging (the CLI, a bare worker)."""

from __future__ import annotations

import logging
import sys

__all__ = ["log", "setup_logging"]

log = logging.getLogger("fm_spark.train")


def setup_logging() -> None:
    """INFO lines from ``fm_spark`` to stderr, unless the application configured logging."""
    logger = logging.getLogger("fm_spark")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
