"""Logging set-up shared by the CLI and the server: no credentials in any log line."""

from __future__ import annotations

import logging
import re

__all__ = ["configure_logging", "without_credentials"]

# HTTP client libraries log every request's full URL at INFO; the openai SDK ships its own httpx copy.
_CHATTY = ("httpx", "httpcore", "httpx2", "httpcore2", "openai")
_CREDENTIALS = re.compile(r"//[^/@\s]+@")  # the user:password@ of a URL


def without_credentials(text: str) -> str:
    """`text` with the `user:password@` of every URL in it removed."""
    return _CREDENTIALS.sub("//", text) if "@" in text else text


class _NoCredentials(logging.Filter):
    """Removes `user:password@` from every URL in a log line, whichever library wrote it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = without_credentials(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def configure_logging(level: int, format: str) -> None:
    """Our log lines at `level`; HTTP client libraries only from WARNING; URLs without credentials."""
    logging.basicConfig(level=level, format=format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_NoCredentials())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
