"""Fixtures for the MLflow tests: a tiny Criteo-format log, its features, registered models.

Everything lives in one session-wide temporary MLflow store (SQLite + artifact folder), so
the pyfunc, registry, serving, scoring and parity tests share two 1-epoch trainings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROWS = 3000
MODEL_NAME = "ctr"
OVERRIDES = [
    "train.epochs=1",
    "train.batch_size=256",
    "train.device=cpu",
    "train.lr=0.01",
    "encoding.min_count=2",
    "output.row_group_rows=500",
]


@dataclass
class CtrData:
    log: Path
    features: Path
    config_path: Path
    overrides: list[str]
    root: Path

    def config(self, *extra: str):
        from fm_spark.config import load_config

        return load_config(self.config_path, [*self.overrides, *extra])


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh SQLite tracking store for this test session (also in the environment, so
    subprocesses and CLI commands use it)."""
    from fm_spark.tracking import configure

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return configure(uri)


@pytest.fixture(scope="session")
def ctr_data(spark, mlflow_store, tmp_path_factory) -> CtrData:
    from fm_spark.config import load_config
    from fm_spark.datagen import generate
    from fm_spark.features.job import featurize

    root = tmp_path_factory.mktemp("ctr")
    log = root / "day0.tsv"
    generate(format="criteo", rows=ROWS, seed=3, output=log, bad_fraction=0.01)
    config_path = Path("conf/criteo.yaml").resolve()
    cfg = load_config(config_path, OVERRIDES)
    featurize(cfg, str(log), str(root / "features"), spark=spark)
    return CtrData(log, root / "features", config_path, OVERRIDES, root)


@pytest.fixture(scope="session")
def registered(ctr_data: CtrData, mlflow_store: str) -> dict[str, dict]:
    """Two versions of ``ctr`` (fm, then lr), both registered; v2 is the challenger."""
    import torch

    from fm_spark.tracking import train_tracked

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for model in ("fm", "lr"):
            out[model] = train_tracked(
                ctr_data.config(),
                str(ctr_data.features),
                model,
                ctr_data.root / "runs" / model,
                register=MODEL_NAME,
            )
    finally:
        torch.set_num_threads(threads)
    return out
