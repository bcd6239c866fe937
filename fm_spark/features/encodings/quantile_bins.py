"""``quantile_bins``: bins between quantile edges learned on train.

Fit: Spark's ``approxQuantile`` at i/num_bins for every quantile field in one pass; the edges
are the distinct sorted quantiles. A value gets id 1 + (number of edges <= x): Spark sums
comparisons, numpy uses ``searchsorted(side="right")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fm_spark.features.encodings.base import Encoding, FieldInput, FitContext, Param
from fm_spark.features.spec import BIN_FIRST_ID, MISSING_ID

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

__all__ = ["QuantileBins"]


class QuantileBins(Encoding):
    name = "quantile_bins"
    summary = "bins a number between `num_bins`-quantile edges learned on train"
    ids = "0 missing, 1 + number of edges <= x"
    kinds = ("numeric",)
    params = (
        Param(
            "num_bins",
            int,
            "quantile bins of a quantile_bins field",
            default=20,
            shared=True,
            constraints={"gt": 0},
        ),
    )
    fitted_keys = ("bin_edges",)
    fit_group: ClassVar[str | None] = "quantiles"

    @property
    def edges(self) -> list[float]:
        return list(self.fitted["bin_edges"] or [])

    @property
    def size(self) -> int:
        return BIN_FIRST_ID + len(self.edges) + 1

    @classmethod
    def spark_fit(
        cls, train: DataFrame, encodings: list[Encoding], ctx: FitContext
    ) -> dict[str, dict[str, Any]]:
        xs = train.select(
            *[e.spark_number().cast("double").alias(f"x{i}") for i, e in enumerate(encodings)]
        )
        bins = [int(e.field.params["num_bins"]) for e in encodings]
        # approxQuantile takes one probability list for all columns: ask for the union, then
        # pick each field's own probabilities out of it.
        probs = sorted({i / b for b in bins for i in range(1, b)})
        if not probs:
            return {e.field.name: {"bin_edges": []} for e in encodings}
        quantiles = xs.approxQuantile(list(xs.columns), probs, ctx.quantile_relative_error)
        out = {}
        for e, b, q in zip(encodings, bins, quantiles, strict=True):
            wanted = {i / b for i in range(1, b)}
            picked = [v for p, v in zip(probs, q, strict=False) if p in wanted]
            out[e.field.name] = {"bin_edges": sorted(set(picked))}
        return out

    def spark_encode(
        self, df: DataFrame, root: str
    ) -> tuple[DataFrame, list[Column], list[Column | None]]:
        from pyspark.sql import functions as F

        x = self.spark_number().cast("double")
        above = sum((F.when(x >= F.lit(e), 1).otherwise(0) for e in self.edges), F.lit(0))
        return df, [F.when(x.isNull(), MISSING_ID).otherwise(BIN_FIRST_ID + above)], [None]

    def encode(self, inp: FieldInput) -> tuple[np.ndarray, np.ndarray | None]:
        num = inp.num
        assert num is not None, "numeric fields are parsed before encoding"
        edges = np.asarray(self.edges, dtype=np.float64)
        ids = np.searchsorted(edges, np.where(num.present, num.x, 0.0), side="right")
        out = np.where(num.present, BIN_FIRST_ID + ids, MISSING_ID).astype(np.int64)
        return out.reshape(-1, 1), None
