"""Shared pieces of the FM family, and the base class that gives every model the same contract.

Every model maps ``ids`` (int64 ``[batch, num_columns]``, global feature ids) and optional
``values`` (float ``[batch, num_columns]``, default 1.0) to logits ``[batch]``. A value of 0.0
switches a column off entirely: that is how padding slots of multi-valued fields are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn

from fm_spark.features.feature_map import FeatureMap

COMMON_HYPERPARAMETERS: tuple[str, ...] = ("sparse", "init_std", "l2_linear", "l2_embed")


def pair_indices(n: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Rows and columns of the strict upper triangle (``i < j``), row-major.

    This order is part of the serving contract: POLY2 hashes the pair ``(ids[i], ids[j])`` with
    ``i < j`` by column, so both sides must enumerate pairs the same way.
    """
    rows, cols = torch.triu_indices(n, n, offset=1, device=device)
    return rows, cols


def fm_pairwise(embedded: Tensor) -> Tensor:
    """``sum_{i<j} <e_i, e_j>`` for ``embedded`` ``[batch, n, k]`` in O(n k), not O(n^2 k).

    Uses ``0.5 * ((sum e)^2 - sum e^2)``; values must already be folded into ``embedded``.
    """
    square_of_sum = embedded.sum(dim=1).pow(2)
    sum_of_square = embedded.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


def gather_rows(table: nn.Embedding, index: Tensor) -> Tensor:
    """``table(index)``, but through ``index_select`` when the table is dense.

    For a dense gradient CPU ``embedding_dense_backward`` is several times slower than the
    ``index_add`` behind ``index_select`` on width-1 tables hit by millions of indices (POLY2's
    pairs); a sparse table must go through the embedding op to get a sparse gradient.
    """
    if table.sparse:
        return table(index)
    flat = table.weight.index_select(0, index.reshape(-1))
    return flat.view(*index.shape, table.embedding_dim)


class FeaturesLinear(nn.Module):
    """Bias plus one weight per feature, stored as an ``nn.Embedding`` so it can be sparse.

    A dense ``nn.Linear`` over a one-hot input of tens of millions of features would touch every
    weight every step; a lookup touches only the rows in the batch.
    """

    def __init__(self, num_features: int, sparse: bool = False) -> None:
        super().__init__()
        self.weights = nn.Embedding(num_features, 1, sparse=sparse)
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, ids: Tensor, values: Tensor) -> Tensor:
        return (gather_rows(self.weights, ids).squeeze(-1) * values).sum(dim=1) + self.bias


class FeaturesEmbedding(nn.Embedding):
    """The factor table ``v``: one ``dim``-vector per global feature id, normal-initialised.

    Small random init breaks the symmetry between factors; zeros would leave every pairwise
    gradient at zero forever.
    """

    def __init__(
        self, num_features: int, dim: int, sparse: bool = False, init_std: float = 0.01
    ) -> None:
        super().__init__(num_features, dim, sparse=sparse)
        nn.init.normal_(self.weight, mean=0.0, std=init_std)


class CTRModel(nn.Module):
    """Base of every model: the linear part, the L2 penalty and the sparse/dense split.

    Subclasses add their second-order tables (as ``nn.Embedding`` indexed by feature id or pair
    bucket, so that ``sparse=True`` makes their gradients sparse) and implement
    :meth:`interaction` and :meth:`_second_order_rows`.
    """

    name: ClassVar[str] = ""
    hyperparameters: ClassVar[tuple[str, ...]] = COMMON_HYPERPARAMETERS

    def __init__(
        self,
        feature_map: FeatureMap,
        *,
        sparse: bool = False,
        init_std: float = 0.01,
        l2_linear: float = 0.0,
        l2_embed: float = 0.0,
    ) -> None:
        super().__init__()
        if init_std < 0 or l2_linear < 0 or l2_embed < 0:
            raise ValueError(
                f"{self.name}: init_std, l2_linear and l2_embed must be >= 0, got "
                f"{init_std}, {l2_linear}, {l2_embed}"
            )
        self.num_features = feature_map.num_features
        self.num_fields = feature_map.num_fields
        self.num_columns = feature_map.num_columns
        self.sparse = bool(sparse)
        self.init_std = float(init_std)
        self.l2_linear = float(l2_linear)
        self.l2_embed = float(l2_embed)
        self.linear = FeaturesLinear(self.num_features, sparse=self.sparse)
        # Not persistent: it is derived from the feature map, which serving loads anyway.
        self.register_buffer(
            "column_fields",
            torch.tensor(feature_map.column_fields, dtype=torch.long),
            persistent=False,
        )

    # -- forward ---------------------------------------------------------------------------
    def forward(self, ids: Tensor, values: Tensor | None = None) -> Tensor:
        x = self._values(ids, values)
        return self.linear(ids, x) + self.interaction(ids, x)

    def interaction(self, ids: Tensor, x: Tensor) -> Tensor:
        """The second-order term ``[batch]``; ``x`` already has the parameters' dtype."""
        raise NotImplementedError

    def _values(self, ids: Tensor, values: Tensor | None) -> Tensor:
        if ids.dim() != 2 or ids.shape[1] != self.num_columns:
            raise ValueError(
                f"{self.name}: ids must be [batch, {self.num_columns}], got {tuple(ids.shape)}"
            )
        dtype = self.linear.weights.weight.dtype
        if values is None:
            return torch.ones(ids.shape, dtype=dtype, device=ids.device)
        if values.shape != ids.shape:
            raise ValueError(
                f"{self.name}: values must have the shape of ids {tuple(ids.shape)}, "
                f"got {tuple(values.shape)}"
            )
        return values.to(dtype)

    # -- regularisation ----------------------------------------------------------------------
    def penalty(self, ids: Tensor) -> Tensor:
        """``l2_linear * sum(w[ids]^2) + l2_embed * sum(v[ids]^2)`` over the rows this batch uses.

        Rows are gathered, not read from the whole table, so with ``sparse=True`` the gradient
        stays sparse; a row is counted once per occurrence, so frequent features are pulled
        towards zero in proportion to how often they are updated (as in libFM/libffm's SGD).
        """
        weight = self.linear.weights.weight
        total = torch.zeros((), dtype=weight.dtype, device=weight.device)
        if self.l2_linear > 0:
            total = total + self.l2_linear * gather_rows(self.linear.weights, ids).pow(2).sum()
        if self.l2_embed > 0:
            for rows in self._second_order_rows(ids):
                total = total + self.l2_embed * rows.pow(2).sum()
        return total

    def _second_order_rows(self, ids: Tensor) -> list[Tensor]:
        """The rows of the second-order tables that ``ids`` touches (gathered)."""
        return []

    # -- optimiser routing ---------------------------------------------------------------------
    def sparse_parameters(self) -> Iterator[nn.Parameter]:
        """Tables built with ``sparse=True``: their ``.grad`` is a sparse tensor.

        Route them to ``torch.optim.SparseAdam`` (or ``Adagrad``); empty when ``sparse=False``.
        """
        for module in self.modules():
            if isinstance(module, nn.Embedding) and module.sparse:
                yield module.weight

    def dense_parameters(self) -> Iterator[nn.Parameter]:
        """Everything else (biases, FwFM field-pair weights, tables when ``sparse=False``)."""
        sparse = {id(p) for p in self.sparse_parameters()}
        for p in self.parameters():
            if id(p) not in sparse:
                yield p
