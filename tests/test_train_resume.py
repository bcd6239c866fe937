"""Kill a real training process mid-epoch with SIGKILL, ``--resume`` it, compare with a run that
was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_support import one_torch_thread, planted, write_config

from fm_spark.config import load_config
from fm_spark.train.run import train

__all__ = ["one_torch_thread", "planted"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SETTINGS = {
    "epochs": 3,
    "patience": 5,
    "batch_size": 256,
    "reader_pool": "dummy",
    "log_every_steps": 5,
}


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the in-process run (see train_support)


def _command(cfg: Path, data: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fm_spark",
        "train",
        "--config",
        str(cfg),
        "--data",
        str(data),
        "--model",
        "fm",
        "--output",
        str(run),
        *extra,
    ]


def _kill_inside_epoch_two(cmd: list[str], run: Path, log: Path) -> None:
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"training ended before it could be killed:\n{log.read_text()}")
            if (run / "checkpoint.pt").exists() and "epoch 2/3 step" in log.read_text():
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"epoch 2 never started:\n{log.read_text()}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


# The train split (40,000 rows) streams through a shuffling buffer of 10,000 rows, or fits one
# of 40,000 and is permuted in memory (fm_spark/data/in_memory.py): both replay an epoch.
@pytest.mark.parametrize("shuffle_buffer", [10_000, 40_000], ids=["streamed", "in-memory"])
def test_killed_run_resumes_to_the_same_result(
    planted, tmp_path: Path, shuffle_buffer: int
) -> None:
    data, _ = planted
    cfg = write_config(tmp_path / "config.yaml", **SETTINGS, shuffle_buffer=shuffle_buffer)
    run = tmp_path / "killed"
    _kill_inside_epoch_two(_command(cfg, data, run), run, tmp_path / "killed.log")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1  # killed inside epoch 2, before its checkpoint
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run(
        _command(cfg, data, run, "--resume"), capture_output=True, text=True, timeout=240, env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "after epoch 1" in resumed.stderr
    result = json.loads(resumed.stdout.strip().splitlines()[-1])  # the command's JSON line

    straight = train(load_config(cfg), str(data), "fm", tmp_path / "straight")
    assert result["epochs_run"] == straight["epochs_run"] == 3
    assert [h["train_loss"] for h in result["history"]] == pytest.approx(
        [h["train_loss"] for h in straight["history"]], abs=1e-6
    )
    for split in ("valid", "test"):
        for key in ("auc", "logloss"):
            assert result[split][key] == pytest.approx(straight[split][key], abs=1e-5), (split, key)
