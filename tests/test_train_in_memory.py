"""A shard no larger than the shuffling buffer is read once and permuted in memory each epoch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import ROWS, config, one_torch_thread, planted

from fm_spark.data.in_memory import batches_of, read_shard
from fm_spark.data.reader import Batch, dataset_url, open_batches
from fm_spark.features.feature_map import FeatureMap
from fm_spark.train.run import train

__all__ = ["one_torch_thread", "planted"]  # fixtures, imported for pytest

pytestmark = pytest.mark.timeout(300)


def _rows(batch: Batch) -> np.ndarray:
    """Rows as sorted records (label, ids...), to compare sets of rows in any order."""
    table = np.concatenate([batch.label.numpy()[:, None], batch.ids.numpy()], axis=1)
    return table[np.lexsort(table.T[::-1])]


def test_shards_read_whole_hold_the_rows_a_petastorm_pass_reads(planted) -> None:
    data, _ = planted
    url, fmap = dataset_url(data / "train"), FeatureMap.load(data)
    with open_batches(url, fmap, batch_size=4_096, pool="dummy") as it:
        parts = list(it)
    streamed = Batch(torch.cat([p.ids for p in parts]), None, torch.cat([p.label for p in parts]))
    whole = read_shard(url, fmap, pool="dummy")
    assert whole.ids.dtype == torch.int64 and whole.ids.shape == (ROWS["train"], fmap.num_columns)
    np.testing.assert_array_equal(_rows(whole), _rows(streamed))
    halves = [read_shard(url, fmap, cur_shard=i, shard_count=2, pool="dummy") for i in (0, 1)]
    assert 0 < halves[0].label.shape[0] < ROWS["train"]
    joined = Batch(torch.cat([h.ids for h in halves]), None, torch.cat([h.label for h in halves]))
    np.testing.assert_array_equal(_rows(joined), _rows(whole))


def test_batches_of_a_seed_are_a_repeatable_permutation() -> None:
    n = 1_000
    rows = Batch(torch.arange(n).repeat(3, 1).T.contiguous(), None, torch.arange(n).float())
    first = list(batches_of(rows, 128, seed=7))
    assert [b.label.shape[0] for b in first] == [128] * 7 + [104]
    order = torch.cat([b.label for b in first]).long()
    assert sorted(order.tolist()) == list(range(n))  # every row once
    assert not torch.equal(order, torch.arange(n))  # shuffled
    assert all(torch.equal(b.ids[:, 0], b.label.long()) for b in first)  # rows stay whole
    again = torch.cat([b.label for b in batches_of(rows, 128, seed=7)]).long()
    other = torch.cat([b.label for b in batches_of(rows, 128, seed=8)]).long()
    assert torch.equal(order, again) and not torch.equal(order, other)
    in_order = torch.cat([b.label for b in batches_of(rows, 300)]).long()
    assert torch.equal(in_order, torch.arange(n))


class _MoveTrainSplitAway:
    """After epoch 1, moves the train split out of the data folder: later epochs can only
    train if the first one kept the rows."""

    def __init__(self, data: str, parked: str) -> None:
        self.data, self.parked = data, parked

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        if epoch == 1:
            shutil.move(str(Path(self.data) / "train"), self.parked)


def test_a_shard_within_the_shuffle_buffer_is_read_once(planted, tmp_path: Path) -> None:
    data, oracle = planted
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    cfg = config(shuffle_buffer=ROWS["train"], epochs=3, patience=5, reader_pool="dummy")
    mover = _MoveTrainSplitAway(str(copy), str(tmp_path / "parked"))
    result = train(cfg, str(copy), "fm", tmp_path / "run", callbacks=(mover,))
    assert not (copy / "train").exists()
    assert result["epochs_run"] == 3
    assert result["test"]["auc"] > oracle["test"] - 0.05  # it learned from the kept rows
    # The same settings again (the split back in place): the seeds alone fix the batches.
    shutil.move(str(tmp_path / "parked"), str(copy / "train"))
    again = train(cfg, str(copy), "fm", tmp_path / "again")
    assert [h["train_loss"] for h in again["history"]] == pytest.approx(
        [h["train_loss"] for h in result["history"]], abs=1e-6
    )


def test_a_shard_larger_than_the_buffer_streams_every_epoch(planted, tmp_path: Path) -> None:
    data, _ = planted
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    cfg = config(shuffle_buffer=ROWS["train"] // 4, epochs=3, patience=5, reader_pool="dummy")
    mover = _MoveTrainSplitAway(str(copy), str(tmp_path / "parked"))
    with pytest.raises(OSError, match="train"):  # epoch 2 reads the split again
        train(cfg, str(copy), "fm", tmp_path / "run", callbacks=(mover,))
