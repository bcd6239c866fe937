"""The trainer's callback hook (what experiment tracking builds on), on one worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from train_support import config, one_torch_thread, planted

from fm_spark.data.reader import steps_per_epoch
from fm_spark.features.feature_map import FEATURE_MAP_FILE
from fm_spark.train.errors import TrainError
from fm_spark.train.run import check_data_dir
from fm_spark.train.trainer import WorkerJob, train_worker

__all__ = ["one_torch_thread", "planted"]  # fixtures, imported for pytest


class Recorder:
    """Both hooks: keeps what it was given."""

    def __init__(self) -> None:
        self.epochs: list[tuple[int, dict[str, Any]]] = []
        self.summaries: list[dict[str, Any]] = []

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.epochs.append((epoch, record))

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.summaries.append(summary)


class EndOnly:
    def __init__(self) -> None:
        self.called = 0

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self.called += 1


class Broken:
    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        raise RuntimeError("tracking server is down")


def _job(data: Path, run_dir: Path, callbacks: tuple, epochs: int = 2) -> WorkerJob:
    cfg = config(epochs=epochs, patience=5)
    fmap, layouts = check_data_dir(str(data))  # writes nothing: the run is not accepted yet
    run_dir.mkdir(parents=True, exist_ok=True)
    fmap.save(run_dir)
    batch = cfg.train.batch_size
    return WorkerJob(
        config=cfg.model_dump(mode="json"),
        model="lr",
        train_url=layouts["train"].url,
        valid_url=layouts["valid"].url,
        feature_map=str(run_dir / FEATURE_MAP_FILE),
        run_dir=str(run_dir),
        steps_per_epoch=steps_per_epoch(layouts["train"], batch, 1),
        worker_batch_size=batch,
        callbacks=callbacks,
    )


def test_callbacks_see_every_epoch_and_the_summary(planted, tmp_path: Path) -> None:
    data, _ = planted
    rec, end_only = Recorder(), EndOnly()
    summary = train_worker(_job(data, tmp_path / "run", (rec, end_only)))
    assert [e for e, _ in rec.epochs] == [1, 2]
    for (_, record), entry in zip(rec.epochs, summary["history"], strict=True):
        assert record == entry
        assert set(record) >= {"epoch", "train_loss", "seconds", "samples_per_s", "valid"}
        assert 0.0 < record["valid"]["auc"] <= 1.0
    assert rec.summaries == [summary] and end_only.called == 1


def test_a_failing_callback_stops_training_with_its_name(planted, tmp_path: Path) -> None:
    data, _ = planted
    with pytest.raises(TrainError, match=r"Broken\.on_epoch_end failed: tracking server"):
        train_worker(_job(data, tmp_path / "run", (Broken(),), epochs=1))


class Threads:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        import torch

        self.seen.append(torch.get_num_threads())


def test_a_cpu_worker_leaves_the_reader_a_core_and_restores_the_callers_threads(
    planted, tmp_path: Path
) -> None:
    """``train.threads`` auto: LR trains on one thread fewer than the caller's 2, and the
    caller (tune, the benchmarks) gets its 2 back after the run."""
    import torch

    data, _ = planted
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = Threads()
        train_worker(_job(data, tmp_path / "run", (seen,), epochs=1))
        assert seen.seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
