"""Helpers shared by the training tests: a planted dataset and configs that train on it fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fm_spark.config import DatasetConfig, parse_config
from fm_spark.datagen import write_planted_dataset

NUM_FIELDS = 8
ROWS = {"train": 40_000, "valid": 10_000, "test": 10_000}


def config_dict(**train: Any) -> dict[str, Any]:
    """A config for the planted data (fields f0..f7) with small, quick training settings."""
    names = [f"f{i}" for i in range(NUM_FIELDS)]
    return {
        "name": "planted",
        "input": {"format": "parquet", "columns": ["label", *names]},
        "fields": [{"name": n, "kind": "categorical", "encoding": "hash"} for n in names],
        "train": {
            "epochs": 8,
            "batch_size": 512,
            "lr": 0.01,
            "patience": 1,
            "l2_embed": 1e-5,
            "l2_linear": 1e-5,
            "shuffle_buffer": 10_000,
            "device": "cpu",
            "log_every_steps": 20,
            **train,
        },
        "models": {
            "poly2": {"hash_bits": 12},
            "fm": {"embed_dim": 8},
            "ffm": {"embed_dim": 4},
            "fwfm": {"embed_dim": 8},
        },
    }


def config(**train: Any) -> DatasetConfig:
    return parse_config(config_dict(**train))


def write_config(path: Path, **train: Any) -> Path:
    path.write_text(yaml.safe_dump(config_dict(**train)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A featurized dataset drawn from a planted FM, and that model's own AUC per split."""
    out = tmp_path_factory.mktemp("planted")
    oracle = write_planted_dataset(out, rows=ROWS, row_group_rows=4_000, seed=1)
    return out, oracle


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while these tests train: the models are small, and on a shared
    2-core machine a second OpenMP thread spends its time spin-waiting (10x slower steps
    were measured under load). TorchDistributor's workers get OMP_NUM_THREADS=1 anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
