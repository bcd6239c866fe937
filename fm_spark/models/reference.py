"""The textbook FFM: one embedding table per field and a Python loop over field pairs.

This is the form FFM is usually published in (libffm, pytorch-fm's
``FieldAwareFactorizationMachine``). It is kept only as a yardstick: the exactness test checks
the vectorised :class:`~fm_spark.models.ffm.FieldAwareFactorizationMachine` against it, and the
benchmark measures how much faster the vectorised form is. Never train with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fm_spark.models.ffm import FieldAwareFactorizationMachine
from fm_spark.models.layers import FeaturesLinear


class TextbookFFM(nn.Module):
    """``xs[f] = table_f(ids)``; pair ``(i, j)`` is ``xs[field(j)][:, i] * xs[field(i)][:, j]``."""

    def __init__(
        self, num_features: int, column_fields: list[int], embed_dim: int, sparse: bool = False
    ) -> None:
        super().__init__()
        self.column_fields = list(column_fields)
        self.num_fields = max(self.column_fields) + 1
        self.linear = FeaturesLinear(num_features, sparse=sparse)
        self.embeddings = nn.ModuleList(
            nn.Embedding(num_features, embed_dim, sparse=sparse) for _ in range(self.num_fields)
        )
        for table in self.embeddings:
            nn.init.normal_(table.weight, std=0.01)

    @classmethod
    def from_ffm(cls, model: FieldAwareFactorizationMachine) -> TextbookFFM:
        """A textbook FFM holding a copy of ``model``'s parameters (same dtype and device)."""
        ref = cls(
            model.num_features,
            model.column_fields.tolist(),
            model.embed_dim,
            sparse=model.sparse,
        )
        weight = model.embedding.weight.detach()
        ref = ref.to(device=weight.device, dtype=weight.dtype)
        per_field = weight.view(model.num_features, model.num_fields, model.embed_dim)
        with torch.no_grad():
            ref.linear.weights.weight.copy_(model.linear.weights.weight)
            ref.linear.bias.copy_(model.linear.bias)
            for f, table in enumerate(ref.embeddings):
                table.weight.copy_(per_field[:, f])
        return ref

    def forward(self, ids: Tensor, values: Tensor | None = None) -> Tensor:
        dtype = self.linear.weights.weight.dtype
        x = torch.ones(ids.shape, dtype=dtype, device=ids.device) if values is None else values
        x = x.to(dtype)
        xs = [table(ids) * x.unsqueeze(-1) for table in self.embeddings]
        cf = self.column_fields
        pairs = []
        for i in range(len(cf) - 1):
            for j in range(i + 1, len(cf)):
                pairs.append(xs[cf[j]][:, i] * xs[cf[i]][:, j])
        interaction = torch.stack(pairs, dim=1).sum(dim=(1, 2))
        return self.linear(ids, x) + interaction


class OneGatherFFM(nn.Module):
    """FFM as FuxiCTR's FFMv2 computes it: one table of width fields x k, and for the pair
    ``(i, j)`` one gather of ``v_{i, f(j)}`` and one of ``v_{j, f(i)}`` over all pairs at once
    (``[batch, pairs, k]`` each). A yardstick for the benchmark, with ``model``'s parameters."""

    def __init__(self, model: FieldAwareFactorizationMachine) -> None:
        super().__init__()
        self.k, self.nf = model.embed_dim, model.num_fields
        self.linear = FeaturesLinear(model.num_features, sparse=model.sparse)
        self.embedding = nn.Embedding(
            model.num_features, model.num_fields * model.embed_dim, sparse=model.sparse
        )
        weight = model.embedding.weight
        self.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.linear.weights.weight.copy_(model.linear.weights.weight)
            self.linear.bias.copy_(model.linear.bias)
            self.embedding.weight.copy_(model.embedding.weight)
        cf = model.column_fields
        rows, cols = torch.triu_indices(len(cf), len(cf), offset=1, device=cf.device)
        self.register_buffer("left", rows * self.nf + cf[cols], persistent=False)
        self.register_buffer("right", cols * self.nf + cf[rows], persistent=False)

    def forward(self, ids: Tensor, values: Tensor | None = None) -> Tensor:
        dtype = self.embedding.weight.dtype
        x = torch.ones(ids.shape, dtype=dtype, device=ids.device) if values is None else values
        b, c = ids.shape
        v = (self.embedding(ids) * x.unsqueeze(-1)).view(b, c * self.nf, self.k)
        pairs = (v.index_select(1, self.left) * v.index_select(1, self.right)).sum(dim=(1, 2))
        return self.linear(ids, x.to(dtype)) + pairs
