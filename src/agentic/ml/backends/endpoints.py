"""Several OpenAI-compatible servers behind one backend: least outstanding requests first, failures taken out.

OPENAI_BASE_URL=http://a:8000/v1,http://b:8000/v1 spreads requests over vLLM, llama.cpp server, TGI,
Ollama or other agentic servers. A request goes to the endpoint with the fewest requests in flight. An
endpoint that fails (unreachable, timeout, 5xx, 429) is taken out for a back-off (1 s, doubling up to
30 s); then a background probe (GET /models) puts it back once it answers. While every endpoint is out
the least recently failed one is still tried, so a recovered fleet is used at once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Endpoint", "EndpointPool"]

_log = logging.getLogger(__name__)
BACKOFF_START, BACKOFF_MAX, PROBE_TIMEOUT = 1.0, 30.0, 3.0


@dataclass(eq=False)
class Endpoint:
    """One server: its SDK client, requests in flight, and whether it is taken out."""

    url: str
    client: Any
    outstanding: int = 0
    served: int = 0  # requests answered
    failures: int = 0
    out_until: float = 0.0  # taken out until then (monotonic); 0 = in service
    probing: bool = field(default=False, repr=False)

    @property
    def in_service(self) -> bool:
        return self.out_until == 0.0


class EndpointPool:
    """Chooses an endpoint per request and keeps track of which ones work."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self._lock = threading.Lock()

    def order(self) -> list[Endpoint]:
        """Endpoints to try for one request: in service by fewest in flight, then those taken out."""
        now = time.monotonic()
        with self._lock:
            for endpoint in self.endpoints:
                if not endpoint.in_service and now >= endpoint.out_until and not endpoint.probing:
                    endpoint.probing = True
                    threading.Thread(target=self._probe, args=(endpoint,), name="agentic-probe", daemon=True).start()
            serving = sorted((e for e in self.endpoints if e.in_service), key=lambda e: e.outstanding)
            out = sorted((e for e in self.endpoints if not e.in_service), key=lambda e: e.out_until)
        return serving + out

    def start(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.outstanding += 1

    def finish(self, endpoint: Endpoint, failed: bool) -> None:
        """A request on `endpoint` ended; a failure takes the endpoint out, a success puts it back."""
        with self._lock:
            endpoint.outstanding -= 1
            if failed:
                self._take_out(endpoint)
                return
            endpoint.served += 1
            if not endpoint.in_service:
                _log.info("%s answers again: back in service", endpoint.url)
                endpoint.failures, endpoint.out_until = 0, 0.0

    def _take_out(self, endpoint: Endpoint) -> None:
        endpoint.failures += 1
        pause = min(BACKOFF_MAX, BACKOFF_START * 2 ** (endpoint.failures - 1))
        endpoint.out_until = time.monotonic() + pause
        if len(self.endpoints) > 1:
            _log.warning("%s failed: taken out of service for %.0f s (probed back after)", endpoint.url, pause)

    def _probe(self, endpoint: Endpoint) -> None:
        try:
            endpoint.client.with_options(timeout=PROBE_TIMEOUT, max_retries=0).models.list()
        except Exception:  # noqa: BLE001 - any failure means "still out"
            with self._lock:
                self._take_out(endpoint)
        else:
            with self._lock:
                _log.info("%s answers the probe: back in service", endpoint.url)
                endpoint.failures, endpoint.out_until = 0, 0.0
        finally:
            endpoint.probing = False

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.client.close()
