"""The three places where Petastorm 0.13.1 (pinned) needs help, each contained and tested.

1. :func:`quiet_petastorm_warnings`: Petastorm drives pyarrow 12's deprecated legacy dataset
   API and triggers dozens of FutureWarnings per reader.
2. :func:`fix_thread_pool`: its thread pool can end a pass early (often with 0 rows), and
   hands row groups over in an order that depends on thread timing.
3. :func:`seeded_loader`: its ``BatchedDataLoader`` shuffles with torch's *global* RNG; ours
   draws from a generator of its own, so the order depends on the seed alone, also when the
   loader runs in a prefetch thread and is stopped part way (see ``fm_spark.data.prefetch``).

Petastorm is imported lazily: ``fm-spark --help`` and the driver-side checks stay fast.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

__all__ = ["fix_thread_pool", "quiet_petastorm_warnings", "seeded_loader"]


def quiet_petastorm_warnings() -> None:
    """Silence the deprecation warnings Petastorm 0.13 triggers in pyarrow 12 on every read.

    They are about Petastorm's use of pyarrow's legacy dataset API, nothing a user can act
    on, and left alone they bury the training log. Only deprecation categories are
    filtered, and only those raised from Petastorm's modules or naming pyarrow's legacy API.
    """
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"petastorm(\..*)?$")
        warnings.filterwarnings(
            "ignore", category=category, message=r".*(pyarrow|legacy|ParquetDataset).*"
        )


@functools.cache
def _ordered_pool() -> type:
    from petastorm.workers_pool.thread_pool import ThreadPool

    class OrderedThreadPool(ThreadPool):
        def _ventilating(self) -> bool:
            return self._ventilator is not None and not self._ventilator.completed()

        def all_workers_done(self) -> bool:
            return not self._ventilating() and super().all_workers_done()

        def current_worker_done(self, worker_id: int) -> bool:
            return not self._ventilating() and super().current_worker_done(worker_id)

    return OrderedThreadPool


def fix_thread_pool(reader: Any) -> None:
    """Make Petastorm 0.13.1's thread pool end passes only at the end, and hand row groups
    over in ventilation order.

    Row group ``j`` goes to worker ``j % W`` and ``get_results`` reads the workers round
    robin, so results could come back in ventilation order, but two checks read "no work
    pending *right now*" as "no more work":

    * ``get_results`` ends the pass when ``all_workers_done()`` and *then*
      ``ventilator.completed()``; the ventilator can hand out and finish the remaining row
      groups between the two reads, and the pass ends with them unread (often with 0 rows on
      small shards, silently: in distributed training one worker would run short of steps);
    * it skips a worker whose items so far are all consumed, while the ventilator (throttled
      by its queue) has not yet handed it the next one: the next result then comes from
      another worker, and the order depends on thread timing.

    Both answer "done" only once the ventilator has finished. Waiting instead cannot stall:
    if the consumer has taken every row group handed out, the ventilator's queue is empty and
    the next row group it hands out goes to exactly the worker being waited on. Only this
    reader's pool changes class (same state, two methods differ).
    """
    from petastorm.workers_pool.thread_pool import ThreadPool

    pool = getattr(reader, "_workers_pool", None)
    if type(pool) is ThreadPool:
        pool.__class__ = _ordered_pool()


@functools.cache
def _seeded_loader_class() -> type:
    from petastorm.pytorch import BatchedDataLoader, _sanitize_pytorch_types
    from petastorm.reader_impl.pytorch_shuffling_buffer import (
        BatchedNoopShufflingBuffer,
        BatchedRandomShufflingBuffer,
    )

    class SeededShufflingBuffer(BatchedRandomShufflingBuffer):
        """Petastorm's buffer, drawing each permutation from its own generator."""

        def __init__(self, *args: Any, generator: torch.Generator, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._generator = generator

        def retrieve(self) -> list[torch.Tensor]:
            if self._random_indices is None and self._size > 0:
                # What the base class would do next, with our generator instead of the global.
                self.next_sample_head = 0
                self._random_indices = torch.randperm(
                    int(self._size), generator=self._generator, device=self._items[0].device
                )
            return super().retrieve()

    class SeededBatchedDataLoader(BatchedDataLoader):
        """``BatchedDataLoader`` whose shuffling buffer has a seeded generator of its own.

        ``_iter_impl`` is Petastorm 0.13.1's, with the buffer class swapped: reading rows,
        sanitizing types, buffering and batching are unchanged.
        """

        def __init__(
            self, reader: Any, batch_size: int, shuffling_queue_capacity: int, seed: int
        ) -> None:
            super().__init__(
                reader, batch_size=batch_size, shuffling_queue_capacity=shuffling_queue_capacity
            )
            self._generator = torch.Generator().manual_seed(seed)

        def _iter_impl(self):
            if self.shuffling_queue_capacity > 0:
                min_after_dequeue = self.shuffling_queue_capacity - 1
                self._shuffling_buffer = SeededShufflingBuffer(
                    min_after_dequeue + self.batch_size,
                    min_after_retrieve=min_after_dequeue,
                    extra_capacity=100_000_000,
                    batch_size=self.batch_size,
                    generator=self._generator,
                )
            else:
                self._shuffling_buffer = BatchedNoopShufflingBuffer(batch_size=self.batch_size)
            keys = None
            for row in self.reader:
                row_as_dict = row._asdict()
                keys = row_as_dict.keys()
                _sanitize_pytorch_types(row_as_dict)
                self._shuffling_buffer.add_many(
                    [self.transform_fn(v) for v in row_as_dict.values()]
                )
                yield from self._yield_batches(keys)
            self._shuffling_buffer.finish()
            yield from self._yield_batches(keys)

    return SeededBatchedDataLoader


def seeded_loader(reader: Any, batch_size: int, shuffle_buffer: int, seed: int) -> Any:
    """A Petastorm ``BatchedDataLoader`` over ``reader`` that shuffles with ``seed`` only.

    ``shuffle_buffer`` 0 batches rows in reading order (no shuffling buffer).
    """
    return _seeded_loader_class()(reader, batch_size, shuffle_buffer, seed)
