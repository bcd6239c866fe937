"""A Gaussian prior on every table row, charged lazily when a row is next looked up.

The models' own L2 (``l2_linear`` / ``l2_embed``, :meth:`CTRModel.penalty`) is charged once per
*occurrence*, as libFM/libffm do: a feature seen 10,000 times is pulled towards zero 10,000
times, one seen 10 times 10 times, so relative to its data every row gets the same pull and
rare rows, whose estimates are mostly noise, are not held back at all. On the generated logs
that is what lets FFM over-fit after one or two epochs whatever its value (README, Defaults).

``train.prior_l2_linear`` / ``train.prior_l2_embed`` (``lambda``) are a prior instead: an
epoch minimises the *summed* logloss plus ``lambda / 2 * ||w||^2`` over *every* row, i.e. a
``N(0, 1 / lambda)`` prior, the same whatever the number of rows (MLlib's ``regParam`` on its
mean loss is ``lambda / rows``). With mean batch losses that is a pull of ``lambda / rows per
epoch`` per step on every row (torch's ``weight_decay``); a row is pulled as hard whether it
was seen once or a thousand times, so a rare row's few gradients cannot outweigh it. Touching
every row of a million-row table each step would cost what the row optimizer exists to avoid,
so a row's pull accumulates while it is not used and is charged, ``delta`` steps at once, on
the step that next looks it up (``delta`` = steps since its last lookup): the same total, on
the rows of the batch only.

The last-lookup steps are not checkpointed: after ``--resume`` a row's first charge covers the
steps since the resume only (at most one epoch's worth of under-charge per row).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fm_spark.config import TrainSpec
from fm_spark.train.errors import TrainError

__all__ = ["RowDecay"]


class RowDecay:
    """The lazy prior term of one model's row tables, added to each step's loss.

    ``linear`` and ``embed`` are per-step rates (``lambda / rows per epoch``): each step charges
    ``rate / 2 * delta * ||w||^2`` for every row it looked up.
    """

    def __init__(self, model: nn.Module, linear: float, embed: float) -> None:
        self.step = 0
        self.tables: list[tuple[nn.Embedding, float, Tensor]] = []
        row_tables = {id(t) for t in model.row_tables()}
        wanted = [(model.linear.weights, linear)] + [
            (t, embed) for t in model.second_order_tables()
        ]
        for table, decay in wanted:
            if decay <= 0:
                continue
            if id(table) not in row_tables or not table.row_updates:
                raise TrainError(
                    "train.prior_l2_linear/prior_l2_embed need the row optimizer "
                    "(train.sparse: true, the default); set them to 0 and use "
                    "train.l2_linear/l2_embed with dense tables"
                )
            last = torch.zeros(table.num_embeddings, dtype=torch.long, device=table.weight.device)
            self.tables.append((table, decay, last))

    @classmethod
    def build(cls, model: nn.Module, spec: TrainSpec, rows_per_epoch: int) -> RowDecay | None:
        """The prior ``spec`` asks for as per-step rates, or None when both are 0."""
        if spec.prior_l2_linear <= 0 and spec.prior_l2_embed <= 0:
            return None
        rows = max(int(rows_per_epoch), 1)
        return cls(model, spec.prior_l2_linear / rows, spec.prior_l2_embed / rows)

    def penalty(self) -> Tensor:
        """This step's term, from the rows the forward pass just looked up; call once per step."""
        self.step += 1
        total: Tensor | None = None
        for table, decay, last in self.tables:
            for lk in table.lookups:
                delta = (self.step - last.index_select(0, lk.ids)).to(lk.rows.dtype)
                last.index_fill_(0, lk.ids, self.step)
                term = 0.5 * decay * (lk.rows.pow(2).sum(dim=1) * delta).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return total
