"""Running blocking model calls from the event loop: bounded queues per model, threads, cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from ..errors import ServerBusyError
from ..ml.generation import close_iterator

__all__ = ["ModelGate", "iterate_in_thread"]

T = TypeVar("T")
_END = object()


class ModelGate:
    """Admits at most `capacity` running and `max_queue` waiting requests for one model."""

    def __init__(self, label: str, capacity: int, max_queue: int) -> None:
        self.label = label
        self.capacity = capacity
        self.max_queue = max_queue
        self.waiting = 0
        self.running = 0
        self._slots = asyncio.Semaphore(capacity)

    async def acquire(self) -> None:
        """Wait for a free slot, or fail at once with 503 when the queue is full."""
        if self.running >= self.capacity and self.waiting >= self.max_queue:
            raise ServerBusyError(
                f"The model {self.label} is busy: {self.running} running and {self.waiting} waiting "
                f"(API_MAX_QUEUE={self.max_queue}). Retry after a second.")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        """Give the slot back; synchronous, so a cancelled request cannot skip it."""
        self.running -= 1
        self._slots.release()


async def iterate_in_thread(start: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Run a blocking iterator in a worker thread and yield its items on the event loop.

    When the consumer stops early (a client disconnected), the worker stops at its next item and
    closes the iterator, so a generation frees its model within one token.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancelled = threading.Event()

    def work() -> None:
        try:
            iterator = start()
            try:
                for item in iterator:
                    if cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            finally:
                close_iterator(iterator)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop and raised there
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    worker = loop.run_in_executor(None, work)
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()  # first, and without awaiting: this may run while the task is being cancelled
        await asyncio.shield(worker)
