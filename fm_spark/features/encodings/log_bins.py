"""``log_bins``: a count becomes the token of its log bin, then is vocabulary-indexed.

The bin is :func:`fm_spark.features.spec.log_bin` (``floor(ln(x) * ln(x))`` above 2, else
``floor(x)``), as its integer text; the tokens share ``vocab``'s fit, files and id layout.
Spark's ``log`` is ``StrictMath.log``; numpy's agrees with it over the range the parity tests
cover. Casts saturate at the int64 range, as Spark's ``cast(.. as bigint)`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fm_spark.features.encodings.base import FieldInput
from fm_spark.features.encodings.numbers import Numbers
from fm_spark.features.encodings.vocab import Vocab
from fm_spark.features.spec import LOG_BIN_LINEAR_MAX, log_bin

if TYPE_CHECKING:
    from pyspark.sql import Column

__all__ = ["LogBins", "log_bin_token", "log_bin_tokens"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def log_bin_token(x: Column, dtype: str) -> Column:
    """Spark: the bin token of a parsed number column (null stays null)."""
    from pyspark.sql import functions as F

    xd = x.cast("double")
    small = x if dtype == "int" else F.floor(xd)
    return (
        F.when(x.isNull(), F.lit(None))
        .when(xd > LOG_BIN_LINEAR_MAX, F.floor(F.log(xd) * F.log(xd)))
        .otherwise(small)
        .cast("bigint")
        .cast("string")
    )


def _floor_int64(x: np.ndarray) -> np.ndarray:
    """Spark's ``cast(floor(x) as bigint)``: saturates at the int64 range."""
    f = np.floor(x)
    high, low = f >= 2.0**63, f < -(2.0**63)
    out = np.where(high | low, 0.0, f).astype(np.int64)
    out[high], out[low] = _INT64_MAX, _INT64_MIN
    return out


def log_bin_tokens(num: Numbers, dtype: str) -> np.ndarray:
    """numpy: the bin token of parsed numbers, as object strings (None: missing)."""
    xs = np.where(num.present, num.x, 0.0)
    small = num.exact if dtype == "int" else _floor_int64(xs)
    tokens = log_bin(xs, small).astype(str).astype(object)
    tokens[~num.present] = None
    return tokens


class LogBins(Vocab):
    name = "log_bins"
    summary = "bins a count by `floor(ln(x)^2)` above 2 (else `floor(x)`), vocab-indexed"
    ids = "as vocab, over the bin tokens"
    kinds = ("numeric",)

    def spark_token(self) -> Column:
        return log_bin_token(self.spark_number(), self.field.dtype)

    def np_tokens(self, inp: FieldInput) -> np.ndarray:
        assert inp.num is not None, "numeric fields are parsed before encoding"
        return log_bin_tokens(inp.num, self.field.dtype)
