"""Who may call the API and how much they may send: Bearer keys, loopback-only default, body size."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from ..config import Settings
from ..errors import ClientAuthenticationError, ConfigError, PayloadTooLargeError

__all__ = ["BodyLimit", "check_bind_address", "check_bearer"]


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


def check_bearer(authorization: str | None, keys: list[str]) -> None:
    """Accept the request when it carries one of `keys`; every key is compared in constant time."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.strip().encode(), key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise ClientAuthenticationError(
            "Incorrect or missing API key: send 'Authorization: Bearer <key>' with one of the server's API_KEYS.")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 before it is parsed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def counted_receive() -> Any:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise PayloadTooLargeError(self._message())
            return message

        try:
            await self.app(scope, counted_receive, send)
        except PayloadTooLargeError:
            await self._refuse(send)

    def _message(self) -> str:
        return f"Request body is larger than API_MAX_BODY_BYTES={self.limit} bytes."

    async def _refuse(self, send: Any) -> None:
        import json

        body = json.dumps(PayloadTooLargeError(self._message()).to_openai()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
