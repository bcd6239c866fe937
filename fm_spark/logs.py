"""One console logging setup for every fm-spark command and job entry point.

The jobs report stages and progress through ``logging`` under the ``fm_spark`` logger
(``featurize: parse done in 17.9s``). Nothing shows unless a handler exists, and a library must
not install one behind an application's back, so each command calls :func:`setup_logging` once
at its start: INFO lines from ``fm_spark`` go to stderr (stdout stays for the one JSON summary
line a command prints), and an application that configured logging itself is left alone.
Spark's own JVM logging is a separate system: :mod:`fm_spark.spark` sets it to WARN once the
session exists, and ``fm-spark-submit`` (:mod:`fm_spark.submit`) quiets it from the JVM's start.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["LEVEL_ENV", "setup_logging"]

LEVEL_ENV = "FM_SPARK_LOG"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each line: click's and pytest's runners swap it, and a
    handler holding the stream of its creation would write to a closed one later."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(level: int | str | None = None) -> None:
    """INFO (or ``level``, or ``$FM_SPARK_LOG``) lines from ``fm_spark`` loggers on stderr.

    Idempotent. Adds a handler only when neither the ``fm_spark`` logger nor the root logger
    has one; sets the level only when nobody did. py4j's and other libraries' loggers are
    untouched (they stay quiet).
    """
    logger = logging.getLogger("fm_spark")
    wanted = level if level is not None else os.environ.get(LEVEL_ENV, "INFO")
    if isinstance(wanted, str):
        wanted = logging.getLevelName(wanted.upper())
        if not isinstance(wanted, int):
            wanted = logging.INFO
    if logger.level == logging.NOTSET or level is not None:
        logger.setLevel(wanted)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
