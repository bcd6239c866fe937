"""Intra-op threads of a CPU worker (fm_spark/train/threads.py)."""

from __future__ import annotations

import pytest
import torch

from fm_spark.config import TrainSpec
from fm_spark.train.threads import intra_op_threads


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_auto_leaves_the_reader_a_core_but_ffm_keeps_every_core(four_threads) -> None:
    auto = TrainSpec()
    assert auto.threads == 0
    assert [intra_op_threads(auto, m, False) for m in ("lr", "fm", "fwfm", "poly2")] == [3] * 4
    assert intra_op_threads(auto, "ffm", False) is None
    torch.set_num_threads(1)
    assert intra_op_threads(auto, "fm", False) == 1  # never 0


def test_explicit_threads_win_and_auto_leaves_distributed_workers_alone() -> None:
    assert intra_op_threads(TrainSpec(threads=2), "ffm", True) == 2
    assert intra_op_threads(TrainSpec(), "fm", True) is None


def test_a_worker_training_from_memory_keeps_every_core(four_threads) -> None:
    # No Petastorm feed runs during its epochs, so there is no reader to leave a core to.
    auto = TrainSpec()
    for model in ("lr", "fm", "fwfm", "poly2", "ffm"):
        assert intra_op_threads(auto, model, False, streams=False) is None
    assert intra_op_threads(TrainSpec(threads=1), "fm", False, streams=False) == 1


def test_small_steps_from_memory_take_one_thread_but_ffm_keeps_every_core(four_threads) -> None:
    auto = TrainSpec()
    movielens, generated = 1024 * 13, 1024 * 39  # ids per step: batch x id columns
    for model in ("lr", "fm", "fwfm", "poly2"):
        assert intra_op_threads(auto, model, False, streams=False, ids_per_step=movielens) == 1
        assert intra_op_threads(auto, model, False, streams=False, ids_per_step=generated) is None
    assert intra_op_threads(auto, "ffm", False, streams=False, ids_per_step=movielens) is None
    assert intra_op_threads(TrainSpec(threads=2), "fm", False, False, ids_per_step=10) == 2
