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
