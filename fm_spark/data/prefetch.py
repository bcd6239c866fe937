"""Run a batch iterator in a background thread, a few batches ahead of the training loop.

Assembling a batch (packing columns, the shuffling buffer's gathers, int32 -> int64) costs a
few milliseconds that would otherwise add to every training step. In a thread they overlap
with the step: both sides spend their time in numpy/torch kernels that release the GIL. The
queue is bounded, so memory stays at ``depth`` batches.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Prefetcher"]

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.05


class Prefetcher(Generic[T]):
    """Iterates ``source`` in a daemon thread; iterate this object to get its items in order.

    An exception in the thread is re-raised in the consumer. :meth:`close` stops the thread
    after its current item, so the caller can then shut down what ``source`` reads from.
    """

    def __init__(self, source: Iterator[T], depth: int = 3) -> None:
        self._source = source
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fm-spark-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # stay exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread and wait for it (it finishes the item it is producing)."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a pending put
                self._queue.get_nowait()
            self._thread.join(timeout=_POLL_S)
