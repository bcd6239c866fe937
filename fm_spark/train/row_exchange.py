"""Sparse tables under DDP: all-gather the workers' touched rows instead of all-reducing tables.

DDP all-reduces every gradient it manages, and a table's gradient is table-sized unless it is
sparse, which gloo mishandled in torch 2.13 (heap corruption) and NCCL cannot reduce at all.
So the tables stay out of DDP, and after backward each worker's
:class:`~fm_spark.train.optim.RowOptimizer` hands :class:`RowExchange` its (unique ids, row
gradients) per table. Every worker gets every worker's rows, sums the gradients of ids that
several workers touched, divides by the number of workers (DDP's mean, so a global batch split
over N workers takes the step one worker takes on the whole batch), and applies the same
update: the replicas stay identical, and the bytes moved per step scale with the unique ids
of the batch, not with the table.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fm_spark.train.optim import merge_rows

__all__ = ["RowExchange"]


class RowExchange:
    """All-gather of (ids, row gradients) over the default process group.

    ``payload_bytes`` adds up what the all-gathers moved (every worker's padded ids and rows,
    the sizes included) since the last :meth:`reset`: the per-step traffic the benchmark and
    the tests read.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.payload_bytes = 0

    def reset(self) -> None:
        self.payload_bytes = 0

    def __call__(self, ids: Tensor, grads: Tensor) -> tuple[Tensor, Tensor]:
        import torch.distributed as dist

        world, device = self.world_size, ids.device
        count = torch.tensor([ids.numel()], dtype=torch.long, device=device)
        counts = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        most = max(sizes)
        dim = grads.shape[1]
        # gloo's all_gather wants equal shapes: pad to the largest worker's row count.
        padded_ids = ids.new_zeros(most)
        padded_ids[: ids.numel()] = ids
        padded_rows = grads.new_zeros(most, dim)
        padded_rows[: ids.numel()] = grads
        all_ids = [torch.empty_like(padded_ids) for _ in range(world)]
        all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
        dist.all_gather(all_ids, padded_ids)
        dist.all_gather(all_rows, padded_rows)
        self.payload_bytes += world * (
            count.element_size()
            + most * padded_ids.element_size()
            + most * dim * padded_rows.element_size()
        )
        merged_ids, merged = merge_rows(
            torch.cat([i[:n] for i, n in zip(all_ids, sizes, strict=True)]),
            torch.cat([r[:n] for r, n in zip(all_rows, sizes, strict=True)]),
        )
        return merged_ids, merged.div_(world)
