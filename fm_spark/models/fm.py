"""Factorization machine (Rendle, 2010)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fm_spark.features.feature_map import FeatureMap
from fm_spark.models.layers import (
    COMMON_HYPERPARAMETERS,
    CTRModel,
    FeaturesEmbedding,
    RowTable,
    fm_pairwise,
)


class FactorizationMachine(CTRModel):
    """LR plus ``sum_{i<j} <v_i, v_j> x_i x_j``.

    Factorising the pair weights lets pairs never seen together still get a weight, and the
    sum costs O(n k) by the square-of-sums identity instead of O(n^2 k).
    """

    name = "fm"
    hyperparameters = (*COMMON_HYPERPARAMETERS, "embed_dim")

    def __init__(self, feature_map: FeatureMap, *, embed_dim: int = 8, **common: Any) -> None:
        super().__init__(feature_map, **common)
        if embed_dim < 1:
            raise ValueError(f"{self.name}: embed_dim must be >= 1, got {embed_dim}")
        self.embed_dim = int(embed_dim)
        self.embedding = FeaturesEmbedding(
            self.num_features, self.embed_dim, sparse=self.sparse, init_std=self.init_std
        )

    def interaction(self, ids: Tensor, x: Tensor) -> Tensor:
        return fm_pairwise(self.embedding(ids) * x.unsqueeze(-1))

    def _second_order_rows(self, ids: Tensor) -> list[Tensor]:
        return [self.embedding(ids)]

    def second_order_tables(self) -> list[RowTable]:
        return [self.embedding]
