"""Who may call the API and how much they may send: keys, loopback-only default, bounded connections and bodies.

Everything here runs before a route does: the key is checked before the body is read, a body is read
whole (at most API_MAX_BODY_BYTES, within API_BODY_TIMEOUT) before it is parsed, and a connection that
does not send its request head within API_HEADER_TIMEOUT, sends a head over 16 KB, or exceeds
API_MAX_CONNECTIONS, is closed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from ..config import Settings
from ..errors import (
    AdminDisabledError,
    AgenticError,
    ClientAuthenticationError,
    ConfigError,
    HeadersTooLargeError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServerBusyError,
)

__all__ = ["RequestGuard", "check_bearer", "check_bind_address", "guarded_protocol", "route_keys"]

KeysFor = Callable[[str], tuple[list[str], str] | None]  # path -> (accepted keys, the setting naming them)


def check_bind_address(host: str, settings: Settings) -> None:
    """Refuse to listen beyond loopback with no API_KEYS, unless explicitly allowed."""
    if settings.api_key_list or settings.api_allow_unauthenticated:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"Refusing to listen on {host} without API_KEYS: anyone on the network could use the models. "
            "Set API_KEYS=key1,key2 (clients send 'Authorization: Bearer key1'), listen on 127.0.0.1, or set "
            "API_ALLOW_UNAUTHENTICATED=true if the network is trusted.", param="API_HOST")


def check_bearer(authorization: str | None, keys: list[str], setting: str = "API_KEYS") -> None:
    """Accept the request when it carries one of `keys`; every key is compared in constant time."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip().encode(), key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise ClientAuthenticationError(
            f"Incorrect or missing API key: send 'Authorization: Bearer <key>' with one of the server's {setting}.")


# Paths that need one of API_KEYS: the API, and the data behind the web console (its page and static files at
# / and /console/static/ hold no data and stay open, so a browser can load the page and then ask for a key).
KEYED_PREFIXES = ("/v1/", "/console/api/")


def route_keys(settings: Settings, path: str) -> tuple[list[str], str] | None:
    """The keys a path needs (and the setting that holds them); None for open paths (/health, /ready, docs)."""
    if path.startswith(KEYED_PREFIXES):
        return settings.api_key_list, "API_KEYS"
    if path.startswith("/admin/"):
        if not settings.admin_key_list:
            raise AdminDisabledError(f"{path} is off: set API_ADMIN_KEYS=<key> and send 'Authorization: Bearer "
                                     "<key>' (or send SIGHUP to the server process to reload).")
        return settings.admin_key_list, "API_ADMIN_KEYS"
    return None


class RequestGuard:
    """ASGI middleware: the key first, then the whole body, bounded in size and time, before any route runs."""

    def __init__(self, app: Any, keys_for: KeysFor, limit: int, body_timeout: float) -> None:
        self.app = app
        self.keys_for = keys_for
        self.limit = limit
        self.body_timeout = body_timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        try:
            required = self.keys_for(scope["path"])
            if required is not None:
                check_bearer(headers.get(b"authorization", b"").decode("latin-1"), *required)
            body = await self._read_body(headers.get(b"content-length"), receive)
        except AgenticError as exc:
            await send_error(send, exc)
            return
        delivered = False

        async def replay() -> Any:
            nonlocal delivered
            if delivered:
                return await receive()  # later calls: a disconnect, as the route expects
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read_body(self, declared: bytes | None, receive: Any) -> bytes:
        """The request body, refusing one over the limit (declared or chunked) or one sent too slowly."""
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise PayloadTooLargeError(self._too_large())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise RequestTimeoutError(f"The request body did not arrive within API_BODY_TIMEOUT="
                                          f"{self.body_timeout:g} seconds. Send it faster, or raise "
                                          "API_BODY_TIMEOUT on the server.") from None
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise PayloadTooLargeError(self._too_large())
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _too_large(self) -> str:
        return (f"Request body is larger than API_MAX_BODY_BYTES={self.limit} bytes. Send less, or raise "
                "API_MAX_BODY_BYTES on the server.")


def _error_response(error: AgenticError) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers of an OpenAI-envelope error response."""
    body = json.dumps(error.to_openai()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    return body, headers


async def send_error(send: Any, error: AgenticError) -> None:
    """An OpenAI-envelope error response, sent straight on the ASGI channel."""
    body, headers = _error_response(error)
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


MAX_HEAD_BYTES = 16 * 1024  # a request line and headers past this are refused (h11's default cap under uvicorn)


def _refuse(transport: Any, error: AgenticError) -> None:
    """The same error response written straight on the connection (before any ASGI cycle), which is then closed."""
    body, headers = _error_response(error)
    status = HTTPStatus(error.status_code)
    head = b"".join(name + b": " + value + b"\r\n" for name, value in [*headers, (b"connection", b"close")])
    transport.write(f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() + head + b"\r\n" + body)
    transport.close()


class _HeadGuard:
    """The guard's half of the protocol class (mixed in before uvicorn's HttpToolsProtocol)."""

    header_timeout: float
    max_connections: int
    busy: ServerBusyError
    too_large: HeadersTooLargeError
    connections: set[Any]  # these four are HttpToolsProtocol's
    loop: asyncio.AbstractEventLoop
    transport: Any
    cycle: Any
    _head_deadline: asyncio.TimerHandle | None = None
    # The request head being read: its parsed line and headers, and the bytes received since it began (a
    # header still arriving sits in httptools' buffer, not yet parsed). None between heads.
    _head_bytes: int | None = None
    _head_received: int | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if len(self.connections) > self.max_connections:
            _refuse(transport, self.busy)
            return
        self._await_head()

    def _await_head(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _idle(self) -> bool:
        """No whole request head since the last answer."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self._idle() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._head_received is not None and not self.transport.is_closing():
            self._head_received += len(data)  # the head is still unfinished after these bytes
            if self._head_received > MAX_HEAD_BYTES:
                _refuse(self.transport, self.too_large)

    def _count(self, size: int) -> None:
        if self._head_bytes is not None:
            self._head_bytes += size
            if self._head_bytes > MAX_HEAD_BYTES:  # stops the parser: uvicorn then calls send_400_response
                raise ValueError(f"request head over {MAX_HEAD_BYTES} bytes")  # httptools: HttpParserCallbackError

    def send_400_response(self, msg: str) -> None:
        if self._head_bytes is not None and self._head_bytes > MAX_HEAD_BYTES:
            _refuse(self.transport, self.too_large)
        else:
            super().send_400_response(msg)  # type: ignore[misc]

    def on_message_begin(self) -> None:
        self._head_bytes = self._head_received = 0
        super().on_message_begin()  # type: ignore[misc]

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._head_bytes = self._head_received = None
        self._disarm()
        super().on_headers_complete()  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and self._idle():
            self._await_head()  # the next request's head has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


def guarded_protocol(header_timeout: float, max_connections: int) -> type[Any]:
    """uvicorn's httptools protocol with a deadline and a size cap for each request head, and a cap on open
    connections.

    uvicorn has neither deadline nor cap: a client that connects and sends nothing, or sends its headers a
    byte at a time, holds its connection (and a file descriptor) forever, and httptools buffers a head of
    any size. Past `max_connections` a new connection is answered 503 in OpenAI's envelope and closed; a
    request head over MAX_HEAD_BYTES, whole or still arriving, is answered 431 and closed. httptools (C)
    rather than h11 (Python): a streamed token costs the event loop about a third less (benchmarks/RESULTS.md).
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    busy = ServerBusyError(f"The server has API_MAX_CONNECTIONS={max_connections} connections open. Retry "
                           "after a second, or raise API_MAX_CONNECTIONS.")
    too_large = HeadersTooLargeError(f"The request line and headers are over {MAX_HEAD_BYTES} bytes. Send "
                                     "large values in the body.")
    return type("GuardedHttpToolsProtocol", (_HeadGuard, HttpToolsProtocol),
                {"header_timeout": header_timeout, "max_connections": max_connections, "busy": busy,
                 "too_large": too_large})
