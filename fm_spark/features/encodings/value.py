"""``value``: the number itself, as the value of one id.

Id 1 with value x when present, id 0 with value 1.0 when missing; no fitting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fm_spark.features.encodings.base import Encoding, FieldInput
from fm_spark.features.spec import MISSING_ID, VALUE_PRESENT_ID

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["Value"]


class Value(Encoding):
    name = "value"
    summary = "keeps the number as the value of a single id (value column `<field>__value`)"
    ids = "0 missing (value 1.0), 1 present (value x)"
    kinds = ("numeric",)

    @property
    def size(self) -> int:
        return 2

    def value_column(self, column: str) -> str | None:
        return f"{column}__value"

    def spark_encode(
        self, df: DataFrame, root: str
    ) -> tuple[DataFrame, list[Column], list[Column | None]]:
        from pyspark.sql import functions as F

        x = self.spark_number().cast("double")
        present = x.isNotNull()
        ids = F.when(present, VALUE_PRESENT_ID).otherwise(MISSING_ID)
        return df, [ids], [F.when(present, x).otherwise(1.0)]

    def encode(self, inp: FieldInput) -> tuple[np.ndarray, np.ndarray | None]:
        num = inp.num
        assert num is not None, "numeric fields are parsed before encoding"
        ids = np.where(num.present, VALUE_PRESENT_ID, MISSING_ID).astype(np.int64)
        values = np.where(num.present, num.x, 1.0).astype(np.float32)
        return ids.reshape(-1, 1), values.reshape(-1, 1)
