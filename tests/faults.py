"""A fault-injecting OpenAI-compatible server (401, 400, 429, 500, slow, a stream cut mid-answer).

Only for faults: every normal answer in the tests comes from a real model.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "sk-test-0123456789abcdef-secret"


class FaultHandler(BaseHTTPRequestHandler):
    """Answers every POST with the fault the test set in `mode`."""

    mode = "500"
    calls = 0
    delay = 3.0  # seconds the "slow" mode waits before answering

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        type(self).calls += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.mode == "cut":
            self._cut_mid_stream()
            return
        if self.mode == "slow":
            time.sleep(self.delay)
        status = {"400": 400, "401": 401, "429": 429, "500": 500, "slow": 500}[self.mode]
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "x",
                                     "param": None, "code": None}}).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (a timeout test)

    def _cut_mid_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", "100000")
        self.end_headers()
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]}
        for _ in range(2):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.2)
        self.connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def fault_server(mode: str = "500") -> Iterator[tuple[str, type[FaultHandler]]]:
    """(base URL ending in /v1, the handler class whose `mode` and `calls` the test sets and reads)."""
    handler = type("Handler", (FaultHandler,), {"calls": 0, "mode": mode})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """A base URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
