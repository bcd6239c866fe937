"""How a numeric field's raw string becomes a number, in both executors side by side.

Both accept exactly the strings of :data:`~fm_spark.features.spec.INT_PATTERN` /
:data:`~fm_spark.features.spec.FLOAT_PATTERN` (int: within int64; float: finite), so the
quarantine's ``bad_int``/``bad_float`` and every numeric encoding agree between Spark and
serving. An absent value is *missing* (null / not present), never an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fm_spark.features.spec import FLOAT_PATTERN, INT_PATTERN

if TYPE_CHECKING:
    from pyspark.sql import Column

__all__ = ["Numbers", "full_match", "numeric_value", "parse_numbers", "per_unique"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_PATTERNS = {"int": re.compile(INT_PATTERN), "float": re.compile(FLOAT_PATTERN)}


# -- Spark ---------------------------------------------------------------------------------------
def full_match(col: Column, pattern: str) -> Column:
    """``col`` matches ``pattern`` as a whole (Spark's ``rlike`` only searches)."""
    return col.rlike(f"^(?:{pattern})\\z")


def numeric_value(col: Column, dtype: str) -> Column:
    """The parsed number of a raw string column, null when missing *or* unparseable.

    int: optional sign and digits within int64 (as bigint); float: a finite decimal (as
    double). The caller tells missing from unparseable with ``col.isNull()``.
    """
    from pyspark.sql import functions as F

    if dtype == "int":
        return F.when(full_match(col, INT_PATTERN), col.cast("bigint"))
    x = F.when(full_match(col, FLOAT_PATTERN), col.cast("double"))
    return F.when(F.abs(x) < F.lit(float("inf")), x)


# -- numpy ---------------------------------------------------------------------------------------
@dataclass
class Numbers:
    """A parsed numeric column: ``exact`` (int64 for ints, float64 for floats; 0 where not
    present), ``x`` (float64, NaN where not present) and ``present``."""

    exact: np.ndarray
    x: np.ndarray
    present: np.ndarray

    def __getitem__(self, mask: np.ndarray) -> Numbers:
        return Numbers(self.exact[mask], self.x[mask], self.present[mask])

    @classmethod
    def of(cls, values: np.ndarray) -> Numbers:
        """All present (tests and tools)."""
        values = np.asarray(values)
        return cls(values, values.astype(np.float64), np.ones(len(values), dtype=bool))


def per_unique(col: pd.Series, fn: Any) -> tuple[np.ndarray, list[Any]]:
    """``fn`` applied once per distinct non-missing value: (codes, results); code -1 = missing.

    What is per value by nature (parsing a number, a date) runs once per *distinct* value.
    """
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    return codes, [fn(v) for v in uniques]


def _parse_one(v: str, dtype: str) -> int | float | None:
    if not _PATTERNS[dtype].fullmatch(v):
        return None
    if dtype == "int":
        i = int(v)
        return i if _INT64_MIN <= i <= _INT64_MAX else None
    x = float(v)
    return x if math.isfinite(x) else None


def parse_numbers(raw: pd.Series, dtype: str) -> tuple[Numbers, np.ndarray]:
    """Parse a numeric field as Spark's rules do; returns the numbers and the bad-row mask."""
    codes, parsed = per_unique(raw, lambda v: _parse_one(v, dtype))
    kind = np.int64 if dtype == "int" else np.float64
    if not parsed:
        zeros = np.zeros(len(raw), dtype=kind)
        nothing = np.zeros(len(raw), dtype=bool)
        return Numbers(zeros, np.full(len(raw), np.nan), nothing), nothing
    ok = np.array([p is not None for p in parsed], dtype=bool)
    table = np.array([p if p is not None else 0 for p in parsed], dtype=kind)
    has = codes >= 0
    at = np.maximum(codes, 0)
    present = has & ok[at]
    exact = np.where(present, table[at], 0).astype(kind)
    x = np.where(present, exact.astype(np.float64), np.nan)
    return Numbers(exact, x, present), has & ~present
