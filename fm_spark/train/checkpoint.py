"""Checkpoints in the run directory: written atomically, read back for ``--resume``.

A checkpoint is everything needed to continue as if never stopped, taken at the end of an
epoch: model and optimizer states, the epoch, every worker's RNG states and the early-stopping
state. It is written to a temporary file and moved into place with ``os.replace``, so a run
killed while saving leaves the previous checkpoint intact, never a torn file.

Files are read with ``torch.load(weights_only=True)``: RNG states are stored as tensors and
plain Python values so that no pickled code is ever executed on load. A file that does not
load (truncated, empty, overwritten by something else) is a :class:`CheckpointError` naming
the file and what to do, never torch's own advice to turn ``weights_only`` off. A SIGKILL
during a save leaves its temporary file behind (no ``finally`` runs then); the next save into
the same run directory removes it.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fm_spark.train.errors import TrainError

__all__ = [
    "BEST_FILE",
    "CHECKPOINT_FILE",
    "CheckpointError",
    "atomic_save",
    "capture_rng",
    "load",
    "remove_stale_temps",
    "restore_rng",
]

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
# ``.NAME.PID.tmp``: what atomic_save writes before the rename.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


class CheckpointError(TrainError):
    """A checkpoint or weights file that exists but cannot be read back."""


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temporary files of saves that were killed before their rename; return them.

    Only names :func:`atomic_save` writes (``.NAME.PID.tmp``) and only when no live process
    has that PID, so a save in progress elsewhere is never touched.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = _TEMP.match(path.name)
        if match is None or not path.is_file() or _alive(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it right now: it is calling us
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary sibling, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """A checkpoint or weights file, or None when there is none; :class:`CheckpointError`
    when it exists but does not load."""
    path = Path(path)
    if not path.exists():
        return None
    size = path.stat().st_size
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(_unreadable(path, size, type(exc).__name__)) from None
    if not isinstance(state, dict):
        raise CheckpointError(_unreadable(path, size, type(state).__name__ + " inside"))
    return state


def _unreadable(path: Path, size: int, why: str) -> str:
    what = "empty" if size == 0 else f"{size:,} bytes, {why}"
    return (
        f"{path} is not a readable fm-spark checkpoint ({what}): it was truncated or "
        "overwritten. Restore an earlier copy of it to resume, or start over: move the run "
        "directory aside (or choose another --output) and train without --resume"
    )


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU and CUDA), as loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng` took."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
