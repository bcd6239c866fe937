"""``hash``: ``1 + pmod(xxhash64(salt || token, seed 42), num_buckets)``, no fitting.

The salt (``<field>:``) keeps two fields' tokens apart. Python's ``xxhash.xxh64_intdigest``
read as int64 equals Spark's ``xxhash64``; numpy's ``%`` takes the divisor's sign as
``pmod`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xxhash

from fm_spark.features.encodings.base import FieldDef, Param
from fm_spark.features.encodings.tokens import TokenEncoding
from fm_spark.features.spec import HASH_FIRST_ID, HASH_SEED, MISSING_ID

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["Hash"]


class Hash(TokenEncoding):
    name = "hash"
    summary = "hashes each token into `num_buckets` buckets (xxhash64, salted per field)"
    ids = "0 missing, 1 + bucket"
    params = (
        Param(
            "num_buckets",
            int,
            "buckets of a hashed field",
            default=1 << 20,
            shared=True,
            constraints={"gt": 0},
        ),
    )
    fitted_keys = ("hash_salt",)

    def __init__(self, fdef: FieldDef, fitted: dict[str, Any] | None = None) -> None:
        super().__init__(fdef, fitted or {"hash_salt": f"{fdef.name}:"})

    @property
    def num_buckets(self) -> int:
        return int(self.field.params["num_buckets"])

    @property
    def size(self) -> int:
        return HASH_FIRST_ID + self.num_buckets

    def spark_index(
        self, df: DataFrame, tokens: list[str], root: str
    ) -> tuple[DataFrame, list[Column]]:
        from pyspark.sql import functions as F

        salt = F.lit(self.fitted["hash_salt"])
        ids = []
        for name in tokens:
            token = F.col(name)
            bucket = F.pmod(F.xxhash64(F.concat(salt, token)), F.lit(self.num_buckets))
            # The null guard matters: xxhash64(null) is the seed, not null.
            ids.append(F.when(token.isNull(), F.lit(MISSING_ID)).otherwise(HASH_FIRST_ID + bucket))
        return df, ids

    def np_index(self, tokens: np.ndarray) -> np.ndarray:
        """Hashes each distinct token once."""
        codes, uniques = pd.factorize(pd.Series(tokens, dtype=object))
        if len(uniques) == 0:
            return np.full(len(tokens), MISSING_ID, dtype=np.int64)
        salt = self.fitted["hash_salt"]
        digests = np.array(
            [xxhash.xxh64_intdigest((salt + t).encode("utf-8"), seed=HASH_SEED) for t in uniques],
            dtype=np.uint64,
        )
        buckets = digests.view(np.int64) % np.int64(self.num_buckets)
        ids = np.where(codes >= 0, HASH_FIRST_ID + buckets[np.maximum(codes, 0)], MISSING_ID)
        return ids.astype(np.int64)
