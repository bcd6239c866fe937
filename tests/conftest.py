"""Shared fixtures: one Spark session for the whole test session, small data everywhere."""

from __future__ import annotations

import os
import warnings

import pytest

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
