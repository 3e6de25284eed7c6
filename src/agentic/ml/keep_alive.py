"""MODEL_KEEP_ALIVE: a model nobody used for that long is unloaded; the next request loads it again.

Like Ollama's keep_alive and llama-server's sleep when idle: a machine that serves now and then gives its
memory back between bursts. A model is "used" from `manager.get()` and while any generation on it runs, so
a request in flight is never unloaded under its feet.
"""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = ["KeepAlive"]


class _Unloads(Protocol):
    def unload_idle(self, seconds: float) -> list[str]: ...


class KeepAlive:
    """A daemon thread that asks `manager` to unload models idle for `seconds`, checking twice per period."""

    def __init__(self, manager: _Unloads, seconds: float) -> None:
        self.manager, self.seconds = manager, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentic-keep-alive", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(min(self.seconds / 2, 5.0)):
            self.manager.unload_idle(self.seconds)

    def stop(self) -> None:
        """No more unloading (the manager is closing)."""
        self._stop.set()
