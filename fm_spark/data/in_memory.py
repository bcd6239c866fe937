"""A split (or one worker's shard of it) held in memory, for passes that would re-read it.

Two passes read the same rows again and again: the training epochs and the validation after
each of them. When a worker's shard is no larger than the shuffling buffer, Petastorm's
``BatchedDataLoader`` holds the whole shard before it hands out the first batch anyway, so an
epoch is already a uniform random permutation of it; reading the shard once and permuting it
in memory gives the same distribution of batches, with the same memory, without re-opening a
reader and decoding every row group each epoch (on MovieLens-100K, cProfile of an FwFM run:
the reader's opens and the wait for its batches were 0.12 s of a 0.53 s epoch).
The permutation is drawn from the epoch's seed alone, so a resumed epoch replays exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

from fm_spark.data.reader import Batch, open_batches
from fm_spark.features.feature_map import FeatureMap

__all__ = ["batches_of", "bytes_per_row", "read_shard"]

# Rows per Petastorm batch while reading a shard whole: only the copy's granularity.
_READ_BATCH = 65_536


def bytes_per_row(fmap: FeatureMap) -> int:
    """Bytes one row takes as a :class:`Batch`: int64 ids, float32 values if any, the label."""
    columns = fmap.num_columns
    return columns * 8 + (columns * 4 if any(fmap.value_columns) else 0) + 4


def read_shard(
    url: str,
    fmap: FeatureMap,
    *,
    cur_shard: int | None = None,
    shard_count: int | None = None,
    pool: Literal["thread", "dummy"] = "thread",
    workers: int = 2,
) -> Batch:
    """Every row of a split (or of shard ``cur_shard`` of ``shard_count``) as one Batch, in
    file order: the same rows a Petastorm pass of that shard reads."""
    with open_batches(
        url,
        fmap,
        batch_size=_READ_BATCH,
        cur_shard=cur_shard,
        shard_count=shard_count,
        pool=pool,
        workers=workers,
    ) as it:
        parts = list(it)
    if not parts:
        raise ValueError(f"{url} holds no rows for shard {cur_shard} of {shard_count}")
    values = None if parts[0].values is None else torch.cat([p.values for p in parts])
    return Batch(
        ids=torch.cat([p.ids for p in parts]),
        values=values,
        label=torch.cat([p.label for p in parts]),
    )


def batches_of(
    rows: Batch, batch_size: int, *, seed: int | None = None, pin_memory: bool = False
) -> Iterator[Batch]:
    """``rows`` in batches of ``batch_size`` (the last may be short): in order, or in the
    random order ``seed`` draws (a full permutation, as a shuffling buffer that holds them all
    would give)."""
    n = rows.label.shape[0]
    if seed is not None:
        # One gather of the whole shard per epoch, then views: not three gathers per step.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        rows = Batch(*(None if t is None else t.index_select(0, order) for t in rows))
    for start in range(0, n, batch_size):
        part = Batch(*(None if t is None else t[start : start + batch_size] for t in rows))
        if pin_memory:
            part = Batch(*(None if t is None else t.pin_memory() for t in part))
        yield part
