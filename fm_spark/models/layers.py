"""Shared pieces of the FM family, and the base class that gives every model the same contract.

Every model maps ``ids`` (int64 ``[batch, num_columns]``, global feature ids) and optional
``values`` (float ``[batch, num_columns]``, default 1.0) to logits ``[batch]``. A value of 0.0
switches a column off entirely: that is how padding slots of multi-valued fields are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class RowLookup:
    """One deduplicated lookup: the table rows ``ids`` (unique) as a leaf ``rows`` tensor.

    Autograd accumulates every use of a row into ``rows.grad`` (``[U, dim]``, dense over the
    unique rows only); ``counts`` is how often each row occurs in the batch (for L2);
    ``inverse`` maps each position of the (flattened) index to its row in ``rows``.
    """

    ids: Tensor
    counts: Tensor
    rows: Tensor
    inverse: Tensor | None = None


_last_unique: tuple[Tensor, int, tuple[Tensor, Tensor, Tensor]] | None = None


def deduplicate(index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(unique ids, inverse, counts)`` of ``index`` (flattened), sorted by id.

    Every model looks up its linear table and its factor table with the same ``ids`` tensor,
    so the result for the last tensor seen is kept and reused while that tensor object is
    unchanged (same object, same in-place version): one sort of the batch's ids per step
    instead of one per table.
    """
    global _last_unique
    try:
        version = index._version
    except RuntimeError:  # inference tensors keep no version counter: nothing to key on
        version = None
    last = _last_unique
    if version is not None and last is not None and last[0] is index and last[1] == version:
        return last[2]
    result = _unique(index.reshape(-1))
    _last_unique = None if version is None else (index, version, result)
    return result


# ``bincount`` when the id range is at most half the batch's ids: its O(ids + max id) pass
# beats ``unique``'s sort there (5x on a MovieLens batch, 13k ids into 3.5k rows); past about
# one row per id the pass over the empty counts costs more than the sort (measured: 160k ids
# into 544k rows, 2.5x slower).
_BINCOUNT_MAX_SPAN = 0.5


def _unique(flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)``."""
    if flat.numel() and flat.device.type == "cpu":
        lo, hi = torch.aminmax(flat)
        span = int(hi) + 1
        if span <= _BINCOUNT_MAX_SPAN * flat.numel() and int(lo) >= 0:
            counts = torch.bincount(flat, minlength=span)
            present = counts > 0
            ids = present.nonzero().squeeze(1)
            return ids, (torch.cumsum(present, 0) - 1)[flat], counts[ids]
    return torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)


class RowTable(nn.Embedding):
    """A table looked up by row id: the base of every table in the family.

    Three ways to differentiate a lookup, chosen by the table's settings:

    - ``row_updates`` on (training's default, set by :class:`fm_spark.train.optim.RowOptimizer`):
      the lookup deduplicates its index once (``unique`` + inverse), gathers the unique rows
      into a leaf tensor and records it in :attr:`lookups`; the gradient lands there, dense
      over the unique rows, and the row optimizer updates those rows in place. The table's
      own ``weight.grad`` stays ``None``: no COO tensor is built or coalesced, and no
      whole-table gradient exists for DDP to all-reduce.
    - ``sparse=True`` without row updates: ``nn.Embedding``'s sparse COO gradient (for
      ``SparseAdam``/``Adagrad``; kept as the reference the row path is tested against).
    - dense: ``index_select``, whose backward is an ``index_add`` (on CPU several times
      faster than ``embedding_dense_backward`` for width-1 tables hit by millions of
      indices, e.g. POLY2's pairs).

    Without gradients (evaluation, serving) every mode is a plain ``index_select``.
    """

    def __init__(self, num_rows: int, dim: int, sparse: bool = False) -> None:
        super().__init__(num_rows, dim, sparse=sparse)
        self.row_updates = False
        self.lookups: list[RowLookup] = []

    def forward(self, index: Tensor) -> Tensor:
        if self.row_updates and torch.is_grad_enabled():
            return self._deduplicated(index)
        if self.sparse and torch.is_grad_enabled():
            return super().forward(index)
        flat = self.weight.index_select(0, index.reshape(-1))
        return flat.view(*index.shape, self.embedding_dim)

    def _deduplicated(self, index: Tensor) -> Tensor:
        lookup = self.lookup(index)
        return lookup.rows.index_select(0, lookup.inverse).view(*index.shape, self.embedding_dim)

    def lookup(self, index: Tensor) -> RowLookup:
        """Record this step's lookup of ``index`` and return it (row-update mode only).

        For a model that consumes the unique rows itself (FFM's kernel reads ``rows[inverse]``
        in place) instead of the gathered ``[*index.shape, dim]`` tensor.
        """
        ids, inverse, counts = deduplicate(index)
        rows = self.weight.detach().index_select(0, ids).requires_grad_(True)
        lookup = RowLookup(ids, counts, rows, inverse)
        self.lookups.append(lookup)
        return lookup

    def occurrence_sum_sq(self) -> Tensor:
        """``sum(row^2)`` over this step's looked-up rows, each counted once per occurrence.

        The same value (and gradient) as summing the squares of the gathered ``[batch, ...]``
        rows, computed on the unique rows, so the L2 term costs no second lookup.
        """
        if not self.lookups:
            raise RuntimeError("occurrence_sum_sq needs this step's forward pass first")
        total = self.weight.new_zeros(())
        for lk in self.lookups:
            total = total + (lk.rows.pow(2).sum(dim=1) * lk.counts.to(lk.rows.dtype)).sum()
        return total


def gather_rows(table: nn.Embedding, index: Tensor) -> Tensor:
    """``table(index)``: kept for callers written before :class:`RowTable` chose the path."""
    return table(index)


class FeaturesLinear(nn.Module):
    """Bias plus one weight per feature, stored as a row table so it can be updated sparsely.

    A dense ``nn.Linear`` over a one-hot input of tens of millions of features would touch every
    weight every step; a lookup touches only the rows in the batch.
    """

    def __init__(self, num_features: int, sparse: bool = False) -> None:
        super().__init__()
        self.weights = RowTable(num_features, 1, sparse=sparse)
        nn.init.zeros_(self.weights.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, ids: Tensor, values: Tensor) -> Tensor:
        return (self.weights(ids).squeeze(-1) * values).sum(dim=1) + self.bias


class FeaturesEmbedding(RowTable):
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

        Rows are gathered, not read from the whole table, so the gradient stays on the batch's
        rows; a row is counted once per occurrence, so frequent features are pulled towards
        zero in proportion to how often they are updated (as in libFM/libffm's SGD). Tables
        with row updates take the rows of this step's forward pass instead of a new lookup.
        """
        weight = self.linear.weights.weight
        total = torch.zeros((), dtype=weight.dtype, device=weight.device)
        if self.l2_linear > 0:
            table = self.linear.weights
            if table.row_updates:
                total = total + self.l2_linear * table.occurrence_sum_sq()
            else:
                total = total + self.l2_linear * table(ids).pow(2).sum()
        if self.l2_embed > 0:
            tables = self.second_order_tables()
            if tables and all(t.row_updates for t in tables):
                for table in tables:
                    total = total + self.l2_embed * table.occurrence_sum_sq()
            else:
                for rows in self._second_order_rows(ids):
                    total = total + self.l2_embed * rows.pow(2).sum()
        return total

    def _second_order_rows(self, ids: Tensor) -> list[Tensor]:
        """The rows of the second-order tables that ``ids`` touches (gathered)."""
        return []

    def second_order_tables(self) -> list[RowTable]:
        """The tables :meth:`_second_order_rows` reads, in the same order."""
        return []

    def row_tables(self) -> list[RowTable]:
        """Every table built with ``sparse=True``: what the row optimizer updates."""
        return [m for m in self.modules() if isinstance(m, RowTable) and m.sparse]

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
