"""Contracts on training input: a feature map that disagrees with its Parquet is refused
before training, a refused run writes nothing, and a corrupt checkpoint is one clear line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from train_support import config, one_torch_thread, planted, write_config

from fm_spark.cli import main
from fm_spark.train import checkpoint
from fm_spark.train.run import TrainError, train

__all__ = ["one_torch_thread", "planted"]  # fixtures, imported for pytest


def _copy(planted, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(planted[0], data)
    return data


def _edit_map(data: Path, edit) -> None:
    path = data / "feature_map.json"
    fmap = json.loads(path.read_text())
    edit(fmap)
    path.write_text(json.dumps(fmap))


def test_sizes_lowered_by_hand_are_refused_before_anything_is_written(planted, tmp_path) -> None:
    data = _copy(planted, tmp_path)

    def shrink(fmap: dict) -> None:  # field f1 loses its top ids; offsets stay
        fmap["fields"][1]["size"] -= 3

    _edit_map(data, shrink)
    run = tmp_path / "run"
    with pytest.raises(TrainError, match="fingerprint"):  # the field no longer matches it
        train(config(epochs=1), str(data), "lr", run)
    assert not run.exists()

    def forge(fmap: dict) -> None:  # ... and a fingerprint recomputed to match the edit
        fmap["fields"][1]["fingerprint"] = ""

    _edit_map(data, forge)
    with pytest.raises(TrainError, match=r"column 'f1' holds ids .* field 'f1' owns"):
        train(config(epochs=1), str(data), "lr", run)
    assert not run.exists()


def test_a_map_from_another_run_is_refused(planted, tmp_path) -> None:
    data = _copy(planted, tmp_path)

    def swap(fmap: dict) -> None:  # same columns and total, fields laid out differently
        a, b = fmap["fields"][0], fmap["fields"][1]
        a["size"], b["size"] = b["size"], a["size"]
        b["offset"] = a["offset"] + a["size"]
        for f in (a, b):
            f["fingerprint"] = ""  # as a map of another run would have its own

    _edit_map(data, swap)
    with pytest.raises(TrainError, match=r"does not match feature_map\.json"):
        train(config(epochs=1), str(data), "lr", tmp_path / "run")


def test_refused_run_leaves_the_run_directory_as_it_was(planted, tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / checkpoint.CHECKPOINT_FILE).write_bytes(b"an earlier run")
    (run / "feature_map.json").write_text("the earlier run's map")
    with pytest.raises(TrainError, match="already holds a run"):
        train(config(epochs=1), str(planted[0]), "lr", run)
    assert (run / "feature_map.json").read_text() == "the earlier run's map"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "feature_map.json"]


@pytest.mark.parametrize("kind", ["truncated", "random", "empty"])
def test_corrupt_checkpoint_is_one_clear_line(tmp_path, kind) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.atomic_save({"epoch": 1, "w": torch.randn(1000)}, path)
    good = path.read_bytes()
    payload = {
        "truncated": good[: len(good) // 2],
        "random": os.urandom(4096),
        "empty": b"",
    }[kind]
    path.write_bytes(payload)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    assert "start over" in message and "weights_only" not in message


def test_resume_from_a_corrupt_checkpoint_fails_cleanly(planted, tmp_path) -> None:
    cfg = write_config(tmp_path / "c.yaml", epochs=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / checkpoint.CHECKPOINT_FILE).write_bytes(os.urandom(100))
    args = ["train", "--config", str(cfg), "--data", str(planted[0]), "--model", "lr"]
    result = CliRunner().invoke(main, [*args, "--output", str(run), "--resume"])
    assert result.exit_code == 2, result.output
    assert "checkpoint.pt is not a readable fm-spark checkpoint" in result.output
    assert "Traceback" not in result.output and "weights_only" not in result.output


def test_temporary_files_of_a_killed_save_are_removed(tmp_path) -> None:
    dead_pid = 2**22 + 12345  # above the default pid_max: no process has it
    stale = tmp_path / f".checkpoint.pt.{dead_pid}.tmp"
    stale.write_bytes(b"")
    live = tmp_path / f".best.pt.{os.getppid()}.tmp"  # a live process's save: left alone
    live.write_bytes(b"")
    checkpoint.atomic_save({"epoch": 1}, tmp_path / "checkpoint.pt")
    assert not stale.exists() and live.exists()
    assert checkpoint.load(tmp_path / "checkpoint.pt") == {"epoch": 1}


def test_resume_on_other_features_is_refused(planted, tmp_path) -> None:
    run = tmp_path / "run"
    train(config(epochs=1), str(planted[0]), "lr", run)
    other = tmp_path / "other"
    from fm_spark.datagen import write_planted_dataset

    write_planted_dataset(
        other,
        rows={"train": 2000, "valid": 500, "test": 500},
        seed=1,
        field_sizes=[7, 10, 8, 12, 5, 6, 10, 8],
    )
    with pytest.raises(TrainError, match="another fingerprint"):
        train(config(epochs=2), str(other), "lr", run, resume=True)
