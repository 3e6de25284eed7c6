"""The token channel both local engines use: one generation's tokens from the worker thread to the reader.

The worker `put`s tokens and `end`s the channel, with the error that ended it if one did. The reader
iterates: tokens, then the error raised after the tokens before it, or the end. The reader `close`s the
channel to cancel the generation (the worker sees `cancelled` at its next step and frees the slot). A
reader never waits on a dead worker: while nothing arrives, `worker_alive` is asked every second.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator

from ...errors import EngineFailedError

__all__ = ["TokenChannel"]

_END = -1
LIVENESS_CHECK = 1.0  # seconds a reader waits for a token before checking that the worker still runs


def _nothing() -> None:
    return None


class TokenChannel(Iterator[int]):
    """One generation's token ids as they are sampled; `close()` cancels it."""

    def __init__(self, worker_alive: Callable[[], bool], on_cancel: Callable[[], None] = _nothing) -> None:
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()  # C-level: the worker's put is cheap
        self._worker_alive = worker_alive
        self._on_cancel = on_cancel
        self.error: BaseException | None = None
        self.ended = False  # the worker is done with it
        self.cancelled = False  # the reader is done with it
        self.cached_tokens: int | None = None  # prompt tokens reused from a prefix cache (None: the engine has none)

    # --- the worker's side
    def put(self, token: int) -> None:
        """Hand one sampled token to the reader."""
        self._queue.put(token)

    def end(self, error: BaseException | None = None) -> None:
        """No more tokens; the reader raises `error` after the ones before it. Later calls change nothing."""
        if self.ended:
            return
        self.error, self.ended = error, True
        self._queue.put(_END)

    # --- the reader's side
    def __next__(self) -> int:
        token = self._next()
        if token != _END:
            return token
        self._queue.put(_END)  # a reader that asks again gets the end again
        self.close()
        if self.error is not None:
            error, self.error = self.error, None  # raised once
            raise error
        raise StopIteration

    def _next(self) -> int:
        while True:
            try:
                return self._queue.get(timeout=LIVENESS_CHECK)
            except queue.Empty:
                if not self._worker_alive() and self._queue.empty():
                    self.end(EngineFailedError("The model's worker thread stopped while this request waited; "
                                               "retry the request."))

    def close(self) -> None:
        """Stop reading: the generation ends at the worker's next step and frees its slot."""
        if not self.cancelled:
            self.cancelled = True
            self._on_cancel()
