"""Batch size and learning rate fitted to small train splits (fm_spark/train/sizing.py)."""

from __future__ import annotations

import math

import pytest
from train_support import config

from fm_spark.train.sizing import MIN_WORKER_BATCH, fit_to_data


def test_large_split_keeps_the_configured_batch_and_rate() -> None:
    cfg = config(batch_size=1024, lr=0.003)
    assert fit_to_data(cfg, 1_000_000) is cfg


@pytest.mark.parametrize(
    ("scaling", "factor"), [("sqrt", math.sqrt(320 / 1024)), ("linear", 320 / 1024), ("none", 1)]
)
def test_small_split_gets_enough_steps_and_a_matching_rate(scaling, factor) -> None:
    cfg = config(batch_size=1024, lr=0.003, min_steps_per_epoch=50, lr_scaling=scaling)
    fitted = fit_to_data(cfg, 16_000).train
    assert fitted.batch_size == 320 and 16_000 // fitted.batch_size >= 50
    assert fitted.lr == pytest.approx(0.003 * factor)


def test_workers_get_equal_batches_and_a_floor() -> None:
    fitted = fit_to_data(config(batch_size=1024, workers=2), 16_000).train
    assert fitted.batch_size % 2 == 0 and (16_000 // 2) // (fitted.batch_size // 2) >= 50
    tiny = fit_to_data(config(batch_size=1024, workers=2), 500).train
    assert tiny.batch_size == 2 * MIN_WORKER_BATCH
