"""The worker-failure file: how a failing worker's message reaches the driver.

Under TorchDistributor the driver only sees "process exited with code 1" and the tail of the
output, so a worker that stops with a :class:`TrainError` writes it here first and the driver
rebuilds the error from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fm_spark.train.errors import NonFiniteLossError, TrainError

__all__ = ["FAILURE_FILE", "read_failure", "record_failure"]

FAILURE_FILE = ".failure.json"


def record_failure(run_dir: str, rank: int, exc: TrainError) -> None:
    """Write ``exc`` atomically (the last failing rank wins; any one explains the stop)."""
    path = Path(run_dir) / FAILURE_FILE
    tmp = path.with_name(f"{path.name}.{rank}.tmp")
    payload = {"rank": rank, "kind": type(exc).__name__, "message": str(exc)}
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


def read_failure(run_dir: str | Path) -> TrainError | None:
    """The error a worker recorded with :func:`record_failure`, rebuilt on the driver."""
    path = Path(run_dir) / FAILURE_FILE
    if not path.exists():
        return None
    payload = json.loads(path.read_text(encoding="utf-8"))
    kind = NonFiniteLossError if payload.get("kind") == "NonFiniteLossError" else TrainError
    return kind(f"worker {payload['rank']}: {payload['message']}")
