"""Encodings that index a *token* (a string): vocabularies, hashing and log bins.

A single-valued field has one token per row; a multi-valued one (the modifier in
:mod:`.modifiers`) one per slot. Slot values are 1.0 for a token, 0.0 for padding, and 1.0 for
the missing id in slot 0 of a row without any token. Subclasses say how a row becomes its
token (:meth:`spark_token` / :meth:`np_tokens`) and how a token becomes a local id
(:meth:`spark_index` / :meth:`np_index`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fm_spark.features.encodings.base import TMP_PREFIX, Encoding, FieldInput
from fm_spark.features.encodings.modifiers import multi_slots, multi_tokens
from fm_spark.features.spec import MISSING_ID

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["TokenEncoding"]


class TokenEncoding(Encoding):
    kinds = ("categorical", "multi_categorical")

    # -- Spark -------------------------------------------------------------------------------
    def spark_token(self) -> Column:
        """A single-valued row's token (null: missing)."""
        return self.spark_raw()

    def token_columns(self) -> list[str]:
        return [f"{TMP_PREFIX}{c}" for c in self.field.column_names]

    def spark_slots(self) -> dict[str, Column]:
        f = self.field
        if f.multi:
            tokens = multi_tokens(self.spark_raw(), f.separator, f.max_values)
            slots = [tokens.getItem(k) for k in range(f.max_values)]
        else:
            slots = [self.spark_token()]
        return dict(zip(self.token_columns(), slots, strict=True))

    def spark_index(
        self, df: DataFrame, tokens: list[str], root: str
    ) -> tuple[DataFrame, list[Column]]:
        """Local id per token column (0 for a null token)."""
        raise NotImplementedError

    def spark_encode(
        self, df: DataFrame, root: str
    ) -> tuple[DataFrame, list[Column], list[Column | None]]:
        from pyspark.sql import functions as F

        names = self.token_columns()
        df, ids = self.spark_index(df, names, root)
        if not self.field.multi:
            return df, ids, [None]
        # A padding slot (no token) is exactly a slot with the missing id: the values follow
        # from the ids, so the index may drop its token columns as soon as it has joined them.
        values = [F.lit(1.0), *[F.when(i == MISSING_ID, 0.0).otherwise(1.0) for i in ids[1:]]]
        return df, ids, values

    # -- numpy -------------------------------------------------------------------------------
    def np_tokens(self, inp: FieldInput) -> np.ndarray:
        """A single-valued row's token, as an object array (None: missing)."""
        return np.asarray(inp.raw, dtype=object)

    def np_index(self, tokens: np.ndarray) -> np.ndarray:
        """Local ids of a token array (None -> 0)."""
        raise NotImplementedError

    def encode(self, inp: FieldInput) -> tuple[np.ndarray, np.ndarray | None]:
        f = self.field
        if f.multi:
            slots = multi_slots(inp.raw, f.separator, f.max_values)
        else:
            slots = [self.np_tokens(inp)]
        ids = np.stack([self.np_index(s) for s in slots], axis=1)
        if not f.multi:
            return ids, None
        values = np.stack([pd.notna(s) for s in slots], axis=1).astype(np.float32)
        values[:, 0] = 1.0  # a token, or the missing id of a row without any token
        return ids, values

    def load(self, directory: Path) -> None:
        return None
