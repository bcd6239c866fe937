"""The promotion holdout: a featurized directory's test split, read back as *raw* rows.

The feature job keeps no raw text for good rows, so the test rows are re-derived from the
raw log the job read (``summary.json``'s ``input``) with the job's own code: the same reader,
quarantine rules, split key and cut points (:mod:`fm_spark.features.source`,
:mod:`~fm_spark.features.quarantine`, :mod:`~fm_spark.features.split`). Every model then
encodes those raw rows with its own encoder, so models with different vocabularies compare
on exactly the same rows. The parity tests check that the rows re-derived here give exactly
the ids of the feature job's ``test/`` split.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from fm_spark.config import DatasetConfig, SplitSpec

__all__ = ["LABEL_COLUMN", "holdout_frame", "split_rows"]

LABEL_COLUMN = "_label"  # 1.0 / 0.0, beside the raw input columns


def _read_json(location: str, name: str) -> dict[str, Any]:
    from pyarrow import fs as pafs

    from fm_spark.data.reader import dataset_url

    fs, root = pafs.FileSystem.from_uri(dataset_url(location))
    with fs.open_input_stream(f"{root}/{name}") as handle:
        return json.loads(handle.read())


def split_rows(spark: Any, cfg: DatasetConfig, input_path: str | list[str], split: str) -> Any:
    """The good rows of ``split`` of a raw log as a Spark frame: the input columns (strings,
    missing = null) and ``_label``; exactly the rows the feature job put in that split."""
    from pyspark.sql import functions as F

    from fm_spark.features.quarantine import LABEL, good_rows, parse_rules, split_key_rule
    from fm_spark.features.quarantine import with_reason as add_reason
    from fm_spark.features.source import read_raw
    from fm_spark.features.split import SPLIT_KEY, assign, cut_points, split_key

    raw = read_raw(spark, cfg.input, input_path)
    rules = parse_rules(cfg)
    rule = split_key_rule(cfg.split)
    if rule is not None:
        rules.append(rule)
    good = good_rows(add_reason(raw, rules, cfg.label))
    keyed = good.withColumn(SPLIT_KEY, split_key(cfg.split))
    cuts = cut_points(cfg.split, keyed)
    rows = keyed.where(assign(F.col(SPLIT_KEY), cuts) == F.lit(split))
    return rows.select(*cfg.input.columns, F.col(LABEL).alias(LABEL_COLUMN))


def holdout_frame(
    spark: Any, cfg: DatasetConfig, features_dir: str, max_rows: int | None = None
) -> pd.DataFrame:
    """The test split of ``features_dir`` as raw rows (pandas), at most ``max_rows``.

    ``cfg`` gives the raw format and rules (the challenger's config); the split is the one
    recorded in the directory's feature map, the input the one in its ``summary.json``.
    """
    summary = _read_json(features_dir, "summary.json")
    fmap = _read_json(features_dir, "feature_map.json")
    split = fmap.get("split") or (fmap.get("extra") or {}).get("split")
    if split is not None:
        cfg = cfg.model_copy(update={"split": SplitSpec.model_validate(split)})
    rows = split_rows(spark, cfg, summary["input"], "test")
    if max_rows is not None:
        rows = rows.limit(max_rows)
    return rows.toPandas()
