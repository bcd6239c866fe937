"""Field-weighted factorization machine (Pan et al., 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fm_spark.features.feature_map import FeatureMap
from fm_spark.models.layers import COMMON_HYPERPARAMETERS, CTRModel, FeaturesEmbedding, RowTable


class FieldWeightedFactorizationMachine(CTRModel):
    """FM with a learned weight ``r`` per (unordered) pair of logical fields.

    ``sum_{i<j} r_{f(i), f(j)} <v_i, v_j> x_i x_j``: one k-vector per feature like FM, plus
    ``F (F + 1) / 2`` dense weights, yet close to FFM's accuracy because it learns which field
    pairs matter. The diagonal ``r_{f, f}`` serves pairs of slots of one multi-valued field.
    """

    name = "fwfm"
    hyperparameters = (*COMMON_HYPERPARAMETERS, "embed_dim")

    def __init__(self, feature_map: FeatureMap, *, embed_dim: int = 8, **common: Any) -> None:
        super().__init__(feature_map, **common)
        if embed_dim < 1:
            raise ValueError(f"{self.name}: embed_dim must be >= 1, got {embed_dim}")
        self.embed_dim = int(embed_dim)
        self.embedding = FeaturesEmbedding(
            self.num_features, self.embed_dim, sparse=self.sparse, init_std=self.init_std
        )
        nf = self.num_fields
        # Starts as a plain FM (all ones) and learns away from it.
        self.field_pair_weights = nn.Parameter(torch.ones(nf * (nf + 1) // 2))
        # Column pair (i, j), i < j -> index of the field pair in the packed upper triangle;
        # pairs with i >= j point at an extra zero slot, so one gather gives the masked matrix.
        f = self.column_fields
        lo, hi = torch.minimum(f[:, None], f[None, :]), torch.maximum(f[:, None], f[None, :])
        packed = lo * nf - lo * (lo - 1) // 2 + (hi - lo)
        upper = torch.ones_like(packed, dtype=torch.bool).triu(diagonal=1)
        self.register_buffer(
            "pair_weight_index", torch.where(upper, packed, nf * (nf + 1) // 2), persistent=False
        )

    def field_pair_matrix(self) -> Tensor:
        """``W[i, j] = r_{f(i), f(j)}`` for column pairs ``i < j``, 0 elsewhere: ``[C, C]``."""
        padded = torch.cat([self.field_pair_weights, self.field_pair_weights.new_zeros(1)])
        return padded[self.pair_weight_index]

    def interaction(self, ids: Tensor, x: Tensor) -> Tensor:
        e = self.embedding(ids) * x.unsqueeze(-1)  # [B, C, k]
        b, c, k = e.shape
        # sum_ij W_ij <e_i, e_j> = sum_i <e_i, (W e)_i>, no [B, P, k] pairs. One [C, C] x
        # [C, B k] GEMM rather than a matmul broadcast over the batch (B tiny GEMMs): forward
        # and backward 1.4 -> 0.95 ms on MovieLens' 1,024 x 15 x 8, never slower on Criteo's.
        we = self.field_pair_matrix() @ e.transpose(0, 1).reshape(c, b * k)
        return (e * we.view(c, b, k).transpose(0, 1)).sum(dim=(1, 2))

    def _second_order_rows(self, ids: Tensor) -> list[Tensor]:
        return [self.embedding(ids)]

    def second_order_tables(self) -> list[RowTable]:
        return [self.embedding]
