"""Degree-2 polynomial model with hashed pair weights (POLY2, as in Chang et al., 2010)."""

from __future__ import annotations

from typing import Any, TypeVar

from torch import Tensor, nn

from fm_spark.features.feature_map import FeatureMap
from fm_spark.models.layers import COMMON_HYPERPARAMETERS, CTRModel, RowTable, pair_indices

# Serving contract: change any of these and every trained POLY2 model is silently wrong.
HASH_PRIME = 2**31 - 1  # Mersenne prime; every product below stays < 2^62, no int64 overflow
HASH_MUL_I = 1_234_567_891
HASH_MUL_J = 987_654_323
HASH_MUL_MIX = 1_598_375_863
MAX_HASH_BITS = 30

_Int = TypeVar("_Int", Tensor, int)


def poly2_hash(id_i: _Int, id_j: _Int, bits: int) -> _Int:
    """Bucket of the feature pair ``(id_i, id_j)`` (global ids, ``i < j`` by column).

    ``(((id_i * A) % P + (id_j * B) % P) % P * C % P) % 2^bits`` with ``P = 2^31 - 1`` and the
    constants above. A pure function of the two ids, so serving recomputes it anywhere; it works
    unchanged on int64 tensors, NumPy int64 arrays and Python ints. Ids must be ``< P``. The final
    multiply mixes all 31 bits into the low ones, so ids that agree modulo ``2^bits`` do not share
    all their pair weights (they would with a plain ``id * A ^ id * B`` hash).
    """
    p = HASH_PRIME
    mixed = ((id_i * HASH_MUL_I) % p + (id_j * HASH_MUL_J) % p) % p
    return ((mixed * HASH_MUL_MIX) % p) % (1 << bits)


class Poly2(CTRModel):
    """LR plus ``sum_{i<j} w[h(id_i, id_j)] x_i x_j`` over all column pairs.

    An explicit weight per pair, hashed into ``2^hash_bits`` buckets because the pair space is
    far too large to store. Pair weights start at zero (the model is convex); ``l2_embed`` is
    the L2 weight on the pair buckets a batch touches.
    """

    name = "poly2"
    hyperparameters = (*COMMON_HYPERPARAMETERS, "hash_bits")

    def __init__(self, feature_map: FeatureMap, *, hash_bits: int = 18, **common: Any) -> None:
        super().__init__(feature_map, **common)
        if not 1 <= hash_bits <= MAX_HASH_BITS:
            raise ValueError(f"{self.name}: hash_bits must be in [1, {MAX_HASH_BITS}]")
        if self.num_features >= HASH_PRIME:
            raise ValueError(f"{self.name}: num_features must be < {HASH_PRIME} for the hash")
        self.hash_bits = int(hash_bits)
        self.pair_weights = RowTable(1 << self.hash_bits, 1, sparse=self.sparse)
        nn.init.zeros_(self.pair_weights.weight)
        rows, cols = pair_indices(self.num_columns)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)

    def pair_buckets(self, ids: Tensor) -> Tensor:
        """``poly2_hash`` of every column pair of every row: ``[batch, C (C - 1) / 2]``.

        The per-id halves of the hash are computed once per column, not once per pair; the
        result is the same integers (the exactness test checks it against ``poly2_hash``).
        """
        p = HASH_PRIME
        left = (ids * HASH_MUL_I).remainder_(p)[:, self.pair_rows]
        right = (ids * HASH_MUL_J).remainder_(p)[:, self.pair_cols]
        mixed = left.add_(right).remainder_(p).mul_(HASH_MUL_MIX).remainder_(p)
        return mixed.bitwise_and_((1 << self.hash_bits) - 1)

    def interaction(self, ids: Tensor, x: Tensor) -> Tensor:
        w = self.pair_weights(self.pair_buckets(ids)).squeeze(-1)
        return (w * x[:, self.pair_rows] * x[:, self.pair_cols]).sum(dim=1)

    def _second_order_rows(self, ids: Tensor) -> list[Tensor]:
        return [self.pair_weights(self.pair_buckets(ids))]

    def second_order_tables(self) -> list[RowTable]:
        return [self.pair_weights]
