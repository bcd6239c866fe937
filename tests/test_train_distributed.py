"""Training on 2 workers under TorchDistributor (local mode, CPU, gloo DDP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from train_support import ROWS, config, one_torch_thread, planted

from fm_spark.datagen import write_planted_dataset
from fm_spark.train.errors import NonFiniteLossError
from fm_spark.train.run import train

__all__ = ["one_torch_thread", "planted"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_two_workers_train_as_well_as_one(spark, planted, tmp_path: Path) -> None:
    data, oracle = planted
    one = train(config(epochs=4), str(data), "fm", tmp_path / "one")
    two = train(config(epochs=4, workers=2), str(data), "fm", tmp_path / "two")
    assert two["workers"] == 2 and one["workers"] == 1
    assert one["sparse"] and two["sparse"]  # row tables under DDP too (row_exchange)
    # The global batch is split over the workers, so both take the same steps per epoch
    # (up to the rows the uneven shards leave out).
    assert two["steps_per_epoch"] >= 0.9 * one["steps_per_epoch"]
    for split in ("valid", "test"):
        assert two[split]["auc"] == pytest.approx(one[split]["auc"], abs=0.01)
        assert two[split]["logloss"] == pytest.approx(one[split]["logloss"], abs=0.01)
    assert two["test"]["auc"] > oracle["test"] - 0.03


def test_uneven_shards_finish_in_lockstep(spark, tmp_path: Path) -> None:
    # Row groups of 30k, 2k, 6k, 2k rows: worker 0 gets 36k rows, worker 1 only 4k.
    data = tmp_path / "uneven"
    sizes = [30_000, 2_000, 6_000, 2_000]
    write_planted_dataset(data, rows={**ROWS, "train": sum(sizes)}, row_group_sizes=sizes)
    result = train(config(epochs=2, workers=2), str(data), "ffm", tmp_path / "run")
    assert result["workers"] == 2
    assert result["steps_per_epoch"] == 4_000 // 256  # the small shard sets the pace
    assert result["epochs_run"] == 2
    assert np.isfinite(result["test"]["logloss"])


def test_non_finite_loss_on_a_worker_reaches_the_driver(spark, planted, tmp_path: Path) -> None:
    data, _ = planted
    with pytest.raises(NonFiniteLossError, match=r"worker \d: loss became .* step 2 .*train\.lr"):
        train(config(lr=1e30, workers=2), str(data), "fm", tmp_path / "nan")
    assert not (tmp_path / "nan" / "model.pt").exists()
