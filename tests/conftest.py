"""Shared fixtures: one Spark session for the whole test session, small data everywhere."""

from __future__ import annotations

import os
import warnings

import pytest
from mlflow_support import ctr_data, mlflow_store, registered  # noqa: F401  (MLflow fixtures)

os.environ.setdefault("FM_SPARK_SHUFFLE_PARTITIONS", "4")
os.environ.setdefault("FM_SPARK_LOG_LEVEL", "ERROR")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def spark():
    from fm_spark.spark import get_spark

    session = get_spark("fm-spark-tests", conf={"spark.master": "local[2]"})
    yield session
    session.stop()


@pytest.fixture(scope="session", autouse=True)
def _mlflow_in_tmp(tmp_path_factory):
    """CLI commands track to MLflow: keep every test's runs out of the working directory."""
    if "MLFLOW_TRACKING_URI" not in os.environ:
        root = tmp_path_factory.mktemp("mlflow-default")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    yield
