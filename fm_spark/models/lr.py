"""Logistic regression: the baseline every interaction model has to beat."""

from __future__ import annotations

from torch import Tensor

from fm_spark.models.layers import CTRModel


class LogisticRegression(CTRModel):
    """``bias + sum_i w_i x_i``.

    Accepts the family-wide hyperparameters so one training config fits every model;
    ``init_std`` and ``l2_embed`` have nothing to act on here (weights start at zero).
    """

    name = "lr"

    def forward(self, ids: Tensor, values: Tensor | None = None) -> Tensor:
        return self.linear(ids, self._values(ids, values))
