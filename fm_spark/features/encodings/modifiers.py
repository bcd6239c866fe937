"""What happens to a raw string before an encoding sees it: source transforms and multi-valued
input, each in both executors side by side.

* A **transform** derives the encoded string from the source column (``yymmddhh_hour``,
  ``yymmddhh_weekday``); anything it cannot read becomes missing, in both executors.
* **Multi-valued** input (``kind: multi_categorical``) splits the string on ``separator`` and
  keeps the distinct non-empty tokens in first-occurrence order, the first ``max_values`` of
  them; each becomes one slot (column) of the field.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fm_spark.features.encodings.base import Param
from fm_spark.features.encodings.numbers import full_match, per_unique
from fm_spark.features.spec import YYMMDDHH_PATTERN, regex_quote

if TYPE_CHECKING:
    from pyspark.sql import Column

__all__ = [
    "MULTI_PARAMS",
    "TRANSFORMS",
    "multi_slots",
    "multi_tokens",
    "spark_transformed",
    "transformed",
]

# name -> what it gives (the README and the config's validation read this)
TRANSFORMS: dict[str, str] = {
    "none": "the raw value",
    "yymmddhh_hour": "hour of day `HH` of a `YYMMDDHH` timestamp",
    "yymmddhh_weekday": "day of week of `YYMMDDHH` (1 = Sunday .. 7 = Saturday)",
}

MULTI_PARAMS = (
    Param("separator", str, "splits a multi-valued string into tokens"),
    Param(
        "max_values",
        int,
        "slots of a multi-valued field: the first distinct tokens kept",
        default=8,
        shared=True,
        constraints={"gt": 0},
    ),
)


# -- transforms: Spark ---------------------------------------------------------------------------
def spark_transformed(col: Column, transform: str) -> Column:
    """Apply a field's ``transform`` to its raw string column; unreadable -> null.

    ``yymmddhh_weekday``: Spark's ``dayofweek`` of 20YY-MM-DD. ``make_date`` rather than
    ``to_date(.., 'yyMMdd')``: the latter raises on some invalid dates (Spark 3's
    parser-upgrade check) instead of giving null.
    """
    from pyspark.sql import functions as F

    if transform == "none":
        return col
    ok = full_match(col, YYMMDDHH_PATTERN)
    if transform == "yymmddhh_hour":
        return F.when(ok, F.substring(col, 7, 2))
    if transform == "yymmddhh_weekday":
        day = F.make_date(
            F.lit(2000) + F.substring(col, 1, 2).cast("int"),
            F.substring(col, 3, 2).cast("int"),
            F.substring(col, 5, 2).cast("int"),
        )
        return F.when(ok, F.dayofweek(day).cast("string"))
    raise ValueError(f"unknown transform {transform!r}")


# -- transforms: numpy ---------------------------------------------------------------------------
def _weekday(v: str) -> str | None:
    """Spark's ``dayofweek`` (1 = Sunday .. 7 = Saturday) of 20YY-MM-DD; None if invalid."""
    try:
        d = date(2000 + int(v[0:2]), int(v[2:4]), int(v[4:6]))
    except ValueError:
        return None
    return str(d.isoweekday() % 7 + 1)


def transformed(col: pd.Series, transform: str) -> pd.Series:
    """The numpy twin of :func:`spark_transformed` (object strings, None = missing)."""
    if transform == "none":
        return col
    s = col.astype(object)
    ok = s.str.fullmatch(YYMMDDHH_PATTERN, na=False).astype(bool)
    if transform == "yymmddhh_hour":
        return s.str[6:8].where(ok, None)
    if transform == "yymmddhh_weekday":
        codes, days = per_unique(s.where(ok, None), _weekday)
        table = np.array([*days, None], dtype=object)  # code -1 picks the trailing None
        return pd.Series(table[codes], index=s.index, dtype=object)
    raise ValueError(f"unknown transform {transform!r}")


# -- multi-valued input --------------------------------------------------------------------------
def multi_tokens(col: Column, separator: str, max_values: int) -> Column:
    """Spark: the kept tokens as an array (empty for a missing value)."""
    from pyspark.sql import functions as F

    parts = F.split(col, regex_quote(separator), -1)
    tokens = F.array_distinct(F.filter(parts, lambda t: t != F.lit("")))
    return F.coalesce(F.slice(tokens, 1, max_values), F.array().cast("array<string>"))


def _kept(separator: str, max_values: int) -> Callable[[str], list[str]]:
    return lambda v: list(dict.fromkeys(t for t in v.split(separator) if t))[:max_values]


def multi_slots(raw: pd.Series, separator: str, max_values: int) -> list[np.ndarray]:
    """numpy: one object array per slot (None past a row's last token), split once per
    distinct raw string."""
    codes, lists = per_unique(raw, _kept(separator, max_values))
    slots = []
    for k in range(max_values):
        table = np.array([*(t[k] if k < len(t) else None for t in lists), None], dtype=object)
        slots.append(table[codes])
    return slots
