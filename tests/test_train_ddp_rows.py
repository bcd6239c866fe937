"""Sparse tables under DDP: the row all-gather gives one worker's weights and moves only the
batch's rows; a 2M-feature FFM table trains on 2 workers within table + optimizer memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_support import config

from fm_spark.bench.row_ddp import DDPRun, run_workers
from fm_spark.datagen import write_planted_dataset
from fm_spark.features.feature_map import FeatureMap
from fm_spark.models import build_model
from fm_spark.train.run import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SIZES = [300, 500, 200, 400, 100, 250]


@pytest.mark.parametrize(
    ("model", "optimizer"), [("ffm", "adam"), ("fwfm", "adagrad"), ("poly2", "ftrl")]
)
def test_two_workers_take_the_steps_one_worker_takes(model: str, optimizer: str) -> None:
    hparams = {"hash_bits": 10} if model == "poly2" else {"embed_dim": 4}
    run = DDPRun(
        model,
        SIZES,
        {**hparams, "l2_embed": 1e-3, "l2_linear": 1e-3},
        {"optimizer": optimizer, "lr": 0.02},
        batch=256,
        steps=4,
    )
    (one,) = run_workers(run, 1)
    two = run_workers(run, 2)
    torch.manual_seed(run.seed)  # the workers' initial weights
    start = build_model(model, FeatureMap.synthetic(SIZES), sparse=True, **run.hparams).state_dict()
    for key, value in one["state"].items():
        # Replicas stay identical: every worker applied the same update to the same rows.
        torch.testing.assert_close(two[0]["state"][key], two[1]["state"][key], rtol=0, atol=0)
        torch.testing.assert_close(two[0]["state"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    table = "pair_weights.weight" if model == "poly2" else "embedding.weight"
    assert float((one["state"][table] - start[table]).abs().max()) > 1e-3  # it trained
    # The global loss is the mean of the two halves' losses.
    np.testing.assert_allclose(
        np.mean([two[0]["losses"], two[1]["losses"]], axis=0), one["losses"], rtol=1e-5
    )


def test_traffic_scales_with_the_batch_not_the_table() -> None:
    spec = {"optimizer": "adam", "lr": 0.01}
    small = DDPRun("fm", SIZES, {"embed_dim": 8}, spec, batch=256, steps=3)
    big = DDPRun(
        "fm", [s * 100 for s in SIZES], {"embed_dim": 8}, spec, batch=256, steps=3,
        draw_sizes=SIZES,
    )  # fmt: skip
    small_bytes = run_workers(small, 2)[0]["bytes_per_step"]
    big_bytes = run_workers(big, 2)[0]["bytes_per_step"]
    # The same ids in a 100x larger table: the same bytes, far below the table's own size.
    assert big_bytes == small_bytes > 0
    table_bytes = sum(SIZES) * 100 * (8 + 1) * 4
    assert big_bytes < table_bytes / 50
    # And bounded by what a batch can touch: per worker, at most its rows x columns ids.
    most_ids = 128 * len(SIZES)
    assert small_bytes <= 2 * 2 * (8 + most_ids * (8 + 8 * 4) + 8 + most_ids * (8 + 4))


def test_a_2m_feature_ffm_table_trains_on_two_workers_in_bounded_memory(
    spark, tmp_path: Path
) -> None:
    sizes = [250_000] * 8  # 2M features; FFM rows of 8 fields x k=4 floats
    data = tmp_path / "wide"
    write_planted_dataset(
        data, rows={"train": 8_000, "valid": 2_000, "test": 2_000}, field_sizes=sizes
    )
    cfg = config(epochs=1, workers=2, batch_size=1024)
    result = train(cfg, str(data), "ffm", tmp_path / "run")
    assert result["workers"] == 2 and result["sparse"]
    assert np.isfinite(result["test"]["logloss"])
    features = sum(sizes)
    table = features * 8 * 4 * 4 + features * 4  # FFM table + linear weights, float32
    state = 2 * table  # Adam's two moments
    # Traffic per step: rows the batch touched, not the 2M-row table.
    assert result["row_exchange_bytes_per_step"] < table / 20
    for worker in result["worker_memory"]:
        grown = worker["peak_rss"] - worker["rss_at_start"]
        # Table + state once (plus the reader and the step), not the 2x+ a dense
        # gradient, its all-reduce buffers and a dense optimizer step would need.
        assert grown < 1.5 * (table + state), (grown, table + state)
        print(f"worker grew {grown / 2**20:.0f} MiB for {(table + state) / 2**20:.0f} MiB")
