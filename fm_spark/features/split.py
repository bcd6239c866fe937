"""Train/valid/test assignment as column expressions.

``hash``: ``u = pmod(xxhash64('<seed>:' || raw line), 10^6) / 10^6`` against the cumulative
fractions: stable per line whatever the partitioning, and reproducible outside Spark.
``time``: by the split column, against string ``cutoffs`` (valid from, test from) or against
cut points at the cumulative fractions, found with ``approxQuantile`` over the good rows: train
takes the keys up to and including the train quantile, valid up to and including the next
(rows sharing a timestamp always land in the same split).

The key (``_split_key``) is computed while the raw line is still at hand; the assignment
(``_split``) needs the cut points, which for time fractions come from the data.
"""

from __future__ import annotations

import math

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from fm_spark.config import SplitSpec
from fm_spark.features.quarantine import RAW, numeric_value

__all__ = ["HASH_SPACE", "SPLIT", "SPLITS", "SPLIT_KEY", "assign", "cut_points", "split_key"]

SPLITS = ("train", "valid", "test")
SPLIT = "_split"
SPLIT_KEY = "_split_key"
HASH_SPACE = 1_000_000
QUANTILE_RELATIVE_ERROR = 0.001


def split_key(split: SplitSpec) -> Column:
    """What the split compares: a uniform draw in [0, 1) or the time column (double/string)."""
    if split.method == "hash":
        digest = F.xxhash64(F.concat(F.lit(f"{split.seed}:"), F.col(RAW)))
        return F.pmod(digest, F.lit(HASH_SPACE)) / F.lit(float(HASH_SPACE))
    col = F.col(split.column)
    return col if split.cutoffs is not None else numeric_value(col, "float")


def cut_points(split: SplitSpec, good: DataFrame) -> tuple[float | str, float | str]:
    """``(valid_from, test_from)``: keys below the first are train, below the second valid.

    Only time fractions look at the data (``good`` must carry ``_split_key``).
    """
    fr = split.fractions
    if split.method == "time" and split.cutoffs is not None:
        return split.cutoffs["valid"], split.cutoffs["test"]
    valid_from, test_from = fr["train"], fr["train"] + fr["valid"]
    if split.method == "hash":
        return valid_from, test_from
    inf = float("inf")
    probs = [min(valid_from, 1.0), min(test_from, 1.0)]
    quantiles = good.approxQuantile(SPLIT_KEY, probs, QUANTILE_RELATIVE_ERROR)
    if len(quantiles) < 2:  # no good rows: nothing to cut
        return inf, inf
    # Each split takes the keys up to *and including* its quantile (the next double above it
    # is the exclusive bound), so a heavily repeated first timestamp cannot leave train empty;
    # a zero fraction at the end takes nothing.
    q_valid = inf if fr["valid"] + fr["test"] == 0 else math.nextafter(quantiles[0], inf)
    q_test = inf if fr["test"] == 0 else math.nextafter(quantiles[1], inf)
    return q_valid, q_test


def assign(key: Column, cuts: tuple[float | str, float | str]) -> Column:
    valid_from, test_from = cuts
    return (
        F.when(key < F.lit(valid_from), F.lit("train"))
        .when(key < F.lit(test_from), F.lit("valid"))
        .otherwise(F.lit("test"))
    )
