"""How a raw string becomes what an encoding indexes, as Spark column expressions.

Each function here has a twin in :mod:`fm_spark.features.encoder` (pure Python); the parity
tests hold them to the same output. Keep them small and free of lenient casts: every
conversion must be one both backends perform identically.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from fm_spark.features.spec import HASH_FIRST_ID, YYMMDDHH_PATTERN

__all__ = [
    "YYMMDDHH_PATTERN",
    "hash_local_id",
    "java_regex_quote",
    "log_bin_token",
    "multi_tokens",
    "raw_value",
    "transformed",
]


def java_regex_quote(text: str) -> str:
    """A Java regex matching ``text`` literally (for ``split``): ASCII punctuation escaped."""
    return "".join(f"\\{c}" if c.isascii() and not c.isalnum() else c for c in text)


def transformed(col: Column, transform: str) -> Column:
    """Apply a field's ``transform`` to its raw string; anything unparseable becomes missing.

    ``yymmddhh_hour``: characters 7-8. ``yymmddhh_weekday``: Spark's ``dayofweek``
    (1 = Sunday .. 7 = Saturday) of 20YY-MM-DD. ``make_date`` is used rather than
    ``to_date(.., 'yyMMdd')`` because the latter raises on some invalid dates (Spark 3's
    parser-upgrade check) instead of giving null.
    """
    if transform == "none":
        return col
    ok = col.rlike(f"^{YYMMDDHH_PATTERN}\\z")
    if transform == "yymmddhh_hour":
        return F.when(ok, F.substring(col, 7, 2))
    if transform == "yymmddhh_weekday":
        date = F.make_date(
            F.lit(2000) + F.substring(col, 1, 2).cast("int"),
            F.substring(col, 3, 2).cast("int"),
            F.substring(col, 5, 2).cast("int"),
        )
        return F.when(ok, F.dayofweek(date).cast("string"))
    raise ValueError(f"unknown transform {transform!r}")


def raw_value(source: str, transform: str) -> Column:
    """The (transformed) raw string a field encodes; null means missing."""
    return transformed(F.col(source), transform)


def log_bin_token(x: Column, dtype: str) -> Column:
    """Criteo winners' binning as a token: ``floor(ln(x)^2)`` for x > 2, ``floor(x)`` otherwise.

    ``ln(x) * ln(x)`` rather than ``pow``: a product is exactly rounded on every platform, so
    Python reproduces it bit for bit (Spark's ``log`` is ``StrictMath.log``).
    """
    xd = x.cast("double")
    small = x if dtype == "int" else F.floor(xd)
    return (
        F.when(x.isNull(), F.lit(None))
        .when(xd > 2, F.floor(F.log(xd) * F.log(xd)))
        .otherwise(small)
        .cast("bigint")
        .cast("string")
    )


def multi_tokens(col: Column, separator: str, max_values: int) -> Column:
    """Distinct non-empty tokens in first-occurrence order, the first ``max_values`` of them.

    Tokens past ``max_values`` are dropped (they are neither counted nor encoded); a missing
    value gives an empty array.
    """
    parts = F.split(col, java_regex_quote(separator), -1)
    tokens = F.array_distinct(F.filter(parts, lambda t: t != F.lit("")))
    return F.coalesce(F.slice(tokens, 1, max_values), F.array().cast("array<string>"))


def hash_local_id(token: Column, salt: str, num_buckets: int) -> Column:
    """``1 + pmod(xxhash64(salt || token), num_buckets)``; 0 (missing) for a null token.

    The null guard matters: ``xxhash64(null)`` is the seed, not null.
    """
    bucket = F.pmod(F.xxhash64(F.concat(F.lit(salt), token)), F.lit(num_buckets))
    return F.when(token.isNull(), F.lit(0)).otherwise(F.lit(HASH_FIRST_ID) + bucket)
