"""Field-aware factorization machine (Juan et al., 2016), vectorised over all field pairs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from fm_spark.features.feature_map import FeatureMap
from fm_spark.models import ffm_kernel
from fm_spark.models.layers import COMMON_HYPERPARAMETERS, CTRModel, FeaturesEmbedding, RowTable


class _PairDots(torch.autograd.Function):
    """``D[b, i, j] = <V[b, i, j], V[b, j, i]>`` with a hand-written backward.

    Autograd would differentiate ``V * V^T`` as two products plus a transpose-add over the
    ``[B, C, C, k]`` tensor; since ``D`` is symmetric the gradient is one product,
    ``dV[b, i, j] = (G + G^T)[b, i, j] * V[b, j, i]``. At these sizes FFM is memory-bound, so
    each full pass saved is a few percent of the step.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, v: Tensor) -> Tensor:
        ctx.save_for_backward(v)
        return (v * v.transpose(1, 2)).sum(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:
        (v,) = ctx.saved_tensors
        return (grad + grad.transpose(1, 2)).unsqueeze(-1) * v.transpose(1, 2)


class FieldAwareFactorizationMachine(CTRModel):
    """LR plus ``sum_{i<j} <v_{i, f(j)}, v_{j, f(i)}> x_i x_j``.

    Each feature has one k-vector per logical field it can meet, stored as a single table of
    width ``num_fields * k`` (one lookup per column instead of one table per field). With
    ``V[b, i, j] = v_{id_i, f(j)}`` the pair term is ``<V[b, i, j], V[b, j, i]>``: an
    elementwise product of ``V`` with its own transpose, so no loop over field pairs and no
    pair-gather copies. When every field has one column, ``V`` is the lookup itself, reshaped.
    """

    name = "ffm"
    hyperparameters = (*COMMON_HYPERPARAMETERS, "embed_dim")

    def __init__(self, feature_map: FeatureMap, *, embed_dim: int = 8, **common: Any) -> None:
        super().__init__(feature_map, **common)
        if embed_dim < 1:
            raise ValueError(f"{self.name}: embed_dim must be >= 1, got {embed_dim}")
        self.embed_dim = int(embed_dim)
        self.embedding = FeaturesEmbedding(
            self.num_features,
            self.num_fields * self.embed_dim,
            sparse=self.sparse,
            init_std=self.init_std,
        )
        # On the CPU the pair term runs in fm_spark.models.ffm_kernel when it is built; the
        # torch ops below give the same values (tested) and serve GPUs.
        self.use_kernel = True
        identity = torch.arange(self.num_fields)
        self._one_column_per_field = self.num_columns == self.num_fields and bool(
            torch.equal(self.column_fields, identity)
        )
        self.register_buffer(
            "upper", torch.ones(self.num_columns, self.num_columns).triu(1), persistent=False
        )

    def field_vectors(self, ids: Tensor) -> Tensor:
        """``V[b, i, j] = v_{ids[b, i], field(j)}``: ``[batch, columns, columns, k]``."""
        b, c = ids.shape
        v = self.embedding(ids).view(b, c, self.num_fields, self.embed_dim)
        return v if self._one_column_per_field else v[:, :, self.column_fields]

    def interaction(self, ids: Tensor, x: Tensor) -> Tensor:
        if ids.device.type == "cpu" and self.use_kernel and ffm_kernel.available():
            table, cf, k = self.embedding, self.column_fields, self.embed_dim
            # The kernel picks v_{i, f(j)} itself. Evaluation and row-update training read
            # rows in place (the table, or the batch's unique rows by inverse) so no
            # [B, C, F*k] copy is made; other gradient modes need the gathered tensor.
            if not torch.is_grad_enabled():
                return ffm_kernel.pair_interaction_rows(table.weight, ids, x, cf, k)
            if table.row_updates:
                lookup = table.lookup(ids)
                inverse = lookup.inverse.view(ids.shape)
                return ffm_kernel.pair_interaction_rows(lookup.rows, inverse, x, cf, k)
            return ffm_kernel.pair_interaction(table(ids), x, cf, k)
        return self.interaction_torch(ids, x)

    def interaction_torch(self, ids: Tensor, x: Tensor) -> Tensor:
        """The pair term in torch ops (GPU, and CPU without the C++ kernel)."""
        v = self.field_vectors(ids)
        dots = _PairDots.apply(v)  # [B, C, C], symmetric
        xx = x.unsqueeze(2) * x.unsqueeze(1)
        return (dots * xx * self.upper).sum(dim=(1, 2))

    def _second_order_rows(self, ids: Tensor) -> list[Tensor]:
        return [self.embedding(ids)]

    def second_order_tables(self) -> list[RowTable]:
        return [self.embedding]
