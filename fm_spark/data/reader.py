"""Field-indexed Parquet -> ``(ids, values, label)`` torch batches, through Petastorm.

Training never loads more than its shuffling buffer: Petastorm's ``make_batch_reader`` streams
row groups (one shard of them per worker, ``cur_shard``/``shard_count``) and
``BatchedDataLoader`` draws batches from a bounded shuffling buffer. Memory is therefore bounded
by the buffer plus a few row groups in flight, whatever the size of the data. (A shard that
fits the buffer whole is read once and permuted in memory each epoch instead:
:mod:`fm_spark.data.in_memory`.)

Petastorm hands each row group over as one numpy array per Parquet column. Before the
shuffling buffer sees them, :class:`_PackedReader` stacks the id columns into one
``[rows, columns]`` array (and the value columns into another), so the buffer shuffles three
tensors instead of one per column and every batch comes out ready for the model. Batches are
assembled in a background thread (:class:`~fm_spark.data.prefetch.Prefetcher`), overlapping
with the training step.

Shard arithmetic and the schema check live in :mod:`fm_spark.data.layout` (re-exported here).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from fm_spark.data.layout import DataError, SplitLayout, check_schema, split_layout, steps_per_epoch
from fm_spark.data.petastorm_fixes import (
    fix_thread_pool,
    quiet_petastorm_warnings,
    seeded_loader,
)
from fm_spark.data.prefetch import Prefetcher
from fm_spark.features.feature_map import FeatureMap

__all__ = [
    "Batch",
    "DataError",
    "SplitLayout",
    "check_schema",
    "dataset_url",
    "open_batches",
    "petastorm_seed",
    "split_layout",
    "steps_per_epoch",
]


class Batch(NamedTuple):
    """One training batch. ``values`` is None when no column carries a value (all 1.0)."""

    ids: torch.Tensor  # int64 [B, C], global feature ids
    values: torch.Tensor | None  # float32 [B, C]
    label: torch.Tensor  # float32 [B]


def dataset_url(path: str | Path) -> str:
    """A URL Petastorm accepts: ``file://`` for local paths, anything with a scheme unchanged."""
    text = str(path)
    if "://" in text:
        return text.rstrip("/")
    # Not Path.as_uri(): it percent-encodes ('+' -> '%2B', ' ' -> '%20') and Petastorm's
    # filesystem resolution does not decode, so such a folder "does not exist".
    return "file://" + Path(text).expanduser().resolve().as_posix()


def petastorm_seed(seed: int, epoch: int) -> int:
    """A per-epoch seed for the row-group order and the shuffling buffer.

    Petastorm treats seed 0 as "no seed" (a non-repeatable shuffle), so the result is never 0;
    a different seed per epoch gives a different order each epoch, and the same seed the same
    order, which is what makes a resumed epoch replay exactly.
    """
    return (seed * 1_000_003 + epoch * 7_919) % (2**31 - 2) + 1


_Packed = namedtuple("_Packed", ["ids", "values", "label"])
_PackedNoValues = namedtuple("_PackedNoValues", ["ids", "label"])


class _PackedReader:
    """A Petastorm reader seen through a lens that packs columns into ``[rows, C]`` arrays.

    ``BatchedDataLoader`` iterates its reader and calls ``_asdict()`` on each item; giving it
    three arrays per row group instead of ~40 makes the shuffling buffer's per-batch gathers
    3 instead of 40. Everything else is delegated to the real reader.
    """

    def __init__(self, reader, feature_map: FeatureMap) -> None:
        self._reader = reader
        self._id_columns = feature_map.column_names
        self._label = feature_map.label_column
        self._values = [(i, v) for i, v in enumerate(feature_map.value_columns) if v]

    @property
    def batched_output(self) -> bool:
        return self._reader.batched_output

    def __iter__(self) -> Iterator[tuple]:
        for group in self._reader:
            cols = group._asdict()
            ids = np.stack([cols[c] for c in self._id_columns], axis=1)
            # A copy: Arrow-backed arrays are read-only, which torch warns about.
            label = np.array(cols[self._label], dtype=np.float32)
            if not self._values:
                yield _PackedNoValues(ids, label)
                continue
            values = np.ones(ids.shape, dtype=np.float32)
            for i, name in self._values:
                values[:, i] = cols[name]
            yield _Packed(ids, values, label)

    def stop(self) -> None:
        self._reader.stop()

    def join(self) -> None:
        self._reader.join()

    def reset(self) -> None:
        self._reader.reset()


def _to_batch(item: dict[str, torch.Tensor], pin_memory: bool) -> Batch:
    values = item.get("values")
    batch = Batch(
        ids=item["ids"].long(),
        values=values.float() if values is not None else None,
        label=item["label"].float(),
    )
    if not pin_memory:
        return batch
    return Batch(*(None if t is None else t.pin_memory() for t in batch))


@contextmanager
def open_batches(
    url: str,
    feature_map: FeatureMap,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int | None = None,
    shuffle_buffer: int = 0,
    cur_shard: int | None = None,
    shard_count: int | None = None,
    pool: Literal["thread", "dummy"] = "thread",
    workers: int = 2,
    prefetch: int = 3,
    pin_memory: bool = False,
) -> Iterator[Iterator[Batch]]:
    """One pass over a split (or one shard of it) as :class:`Batch` es, on the CPU.

    With ``shuffle``, the row-group order and a shuffling buffer of ``shuffle_buffer`` rows
    are both driven by ``seed`` alone (from :func:`petastorm_seed`): the same seed gives the
    same batches, with the thread pool too. The last batch may be short. ``prefetch`` batches
    are assembled ahead in a background thread (0: in the caller's thread), in page-locked
    memory with ``pin_memory`` (for non-blocking copies to a GPU). Leaving the
    ``with`` block stops the prefetch thread and Petastorm's reader threads, also when the
    pass was not read to the end.
    """
    from petastorm import make_batch_reader

    if shuffle and not seed:
        raise ValueError("a shuffled pass needs a non-zero seed (see petastorm_seed)")
    quiet_petastorm_warnings()
    wanted = [feature_map.label_column, *feature_map.column_names]
    wanted += [v for v in feature_map.value_columns if v]
    sharded = shard_count is not None and shard_count > 1
    reader = make_batch_reader(
        url,
        # Exact names, not patterns: Petastorm treats these as regexes.
        schema_fields=[f"^{name}$" for name in wanted],
        reader_pool_type=pool,
        workers_count=workers,
        # Row groups decoded ahead of the loop: bounds memory to a few row groups per worker.
        results_queue_size=2 * workers,
        # Not convert_early_to_numpy=True: converting Arrow -> numpy (via pandas) in several
        # reader threads at once corrupted the heap of DDP workers (SIGSEGV/SIGABRT in about
        # 1 of 2 runs of 6k steps, never with it off); one thread converts instead.
        seed=seed if shuffle else None,
        shuffle_row_groups=shuffle,
        num_epochs=1,
        cur_shard=cur_shard if sharded else None,
        shard_count=shard_count if sharded else None,
    )
    fix_thread_pool(reader)
    loader = seeded_loader(
        _PackedReader(reader, feature_map),
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer if shuffle else 0,
        seed=seed or 1,
    )
    batches = (_to_batch(item, pin_memory) for item in loader)
    prefetcher = Prefetcher(batches, prefetch) if prefetch > 0 else None
    try:
        yield prefetcher if prefetcher is not None else batches
    finally:
        if prefetcher is not None:
            prefetcher.close()
        reader.stop()
        reader.join()
