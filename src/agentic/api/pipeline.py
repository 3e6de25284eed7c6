"""One inference request from its gate to its answer: queue, worker thread, SSE, usage, metrics, log line.

`answer()` runs a completion or chat call on its tier (streamed or not); `record()` counts a finished
request in the metrics and writes its log line. The routes in `app.py` only turn the request body into
the call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import AgenticError, EngineFailedError, InvalidRequestError
from ..ml.base import Model
from ..ml.shapes import answered_by
from .runtime import ModelGate, iterate_in_thread
from .state import ServerState

__all__ = ["ModelCall", "answer", "record"]

_log = logging.getLogger("agentic.api")
ModelCall = Callable[[Model, bool], Any]


def _check_max_tokens(model: Model, max_tokens: int | None) -> None:
    if max_tokens is not None and model.context_size and max_tokens > model.context_size:
        raise InvalidRequestError(
            f"max_tokens={max_tokens} is larger than the model's context window of {model.context_size} tokens. "
            "Lower max_tokens (or raise MODEL_CONTEXT_SIZE).", param="max_tokens")


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def answer(state: ServerState, endpoint: str, model_id: str, max_tokens: int | None, stream: bool,
                  include_usage: bool, call: ModelCall, prompt_text: str, request: Request) -> Response:
    """Run one request on its tier: queue, thread, metrics, the request log line."""
    tier = state.tier_of(model_id)
    gate, labels = state.gates[tier], state.labels(tier)
    started, request_id = time.perf_counter(), uuid.uuid4().hex[:12]
    if state.settings.api_log_prompts:
        _log.info("request id=%s prompt=%r", request_id, prompt_text)
    streaming, acquired, chunks = False, False, None
    state.enter()
    try:
        await gate.acquire()
        acquired = True
        model = await state.model(tier)
        _check_max_tokens(model, max_tokens)
        if not stream:
            if model.streams_usage:  # generated as a stream, so a client that hangs up stops it within a token
                chunks = iterate_in_thread(lambda: call(model, True))
                result = await _gather(chunks, request)
            else:
                result = await asyncio.to_thread(call, model, False)
            usage = result.get("usage") if result is not None else None
            record(state, labels, endpoint, 200 if result is not None else 499, usage, started, request_id, started)
            if result is None:
                return Response(status_code=499)
            return JSONResponse(result, headers={"x-request-id": request_id, **_served_by(result)})
        chunks = iterate_in_thread(lambda: call(model, True))
        first = await chunks.__anext__()  # a bad prompt fails here, as a proper HTTP error
        streaming = True
    except AgenticError as exc:
        record(state, labels, endpoint, exc.status_code, None, started, request_id, started, exc)
        raise
    finally:
        if acquired and not streaming:
            gate.release()
        if not streaming:
            state.leave()
        if chunks is not None and not streaming:  # answered, failed or cancelled: stop the worker
            asyncio.ensure_future(chunks.aclose())  # type: ignore[attr-defined]
    return StreamingResponse(_stream_events(state, endpoint, labels, first, chunks, gate, include_usage, started,
                                            request_id), media_type="text/event-stream",
                             headers={"x-request-id": request_id, "cache-control": "no-cache", **_served_by(first)})


async def _gather(chunks: AsyncIterator[dict[str, Any]], request: Request) -> dict[str, Any] | None:
    """One completion / chat.completion dict from a stream's chunks; None when the client hung up first."""
    head: dict[str, Any] = {}
    text, finish, usage, chat = [], None, None, False
    async for chunk in chunks:
        head = head or chunk
        choice = chunk["choices"][0]
        chat = "delta" in choice
        text.append((choice["delta"].get("content") if chat else choice.get("text")) or "")
        finish, usage = choice["finish_reason"] or finish, chunk.get("usage") or usage
        if finish is None and await request.is_disconnected():
            return None
    answer: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
    answer.update({"message": {"role": "assistant", "content": "".join(text)}} if chat else {"text": "".join(text)})
    return {**head, "object": "chat.completion" if chat else "text_completion", "choices": [answer], "usage": usage}


def _served_by(result: dict[str, Any]) -> dict[str, str]:
    """The x-agentic-backend header: the backend that answered (a fallback's, when one did)."""
    backend = answered_by(result)
    return {"x-agentic-backend": backend} if backend else {}


async def _stream_events(state: ServerState, endpoint: str, labels: dict[str, str], first: dict[str, Any],
                         chunks: AsyncIterator[dict[str, Any]], gate: ModelGate, include_usage: bool, started: float,
                         request_id: str) -> AsyncIterator[str]:
    """SSE: the chunks, a usage chunk when asked, `[DONE]`; an error mid-stream becomes an error event."""
    first_token_at, usage, status, error = time.perf_counter(), None, 200, None
    try:
        chunk: dict[str, Any] | None = first
        while chunk is not None:
            usage = chunk.pop("usage", usage)
            yield _sse(chunk)
            chunk = await chunks.__anext__() if chunk["choices"][0]["finish_reason"] is None else None
        if include_usage:
            yield _sse({**{k: first[k] for k in ("id", "object", "created", "model")}, "choices": [], "usage": usage})
        yield _sse("[DONE]")
    except AgenticError as exc:
        status, error = exc.status_code, exc
        yield _sse(exc.to_openai())
    except Exception as exc:  # noqa: BLE001 - a bug must end the stream with an error event, not a cut connection
        _log.exception("request id=%s failed mid-stream", request_id)
        error = EngineFailedError(f"Internal error while generating ({type(exc).__name__}); see the server log.")
        status = error.status_code
        yield _sse(error.to_openai())
    except (asyncio.CancelledError, GeneratorExit):
        status = 499  # the client went away: its generation was stopped and its slot freed
        raise
    finally:
        # Synchronous bookkeeping first: when the client hangs up, Starlette cancels this task and an
        # await here would be interrupted, leaking the slot. The worker stops within one token.
        gate.release()
        state.leave()
        record(state, labels, endpoint, status, usage, started, request_id, first_token_at, error)
        await chunks.aclose()  # type: ignore[attr-defined]


def record(state: ServerState, labels: dict[str, str], endpoint: str, status: int, usage: dict[str, Any] | None,
            started: float, request_id: str, first_token_at: float, error: AgenticError | None = None) -> None:
    """Metrics and the log line of one finished request (`error`: what ended it, counted by its code)."""
    metrics, elapsed = state.metrics, time.perf_counter() - started
    if error is not None:
        metrics.errors.labels(**labels, code=error.code or error.error_type).inc()
    metrics.requests.labels(**labels, endpoint=endpoint, status=str(status)).inc()
    metrics.latency.labels(**labels).observe(elapsed)
    metrics.time_to_first_token.labels(**labels).observe(first_token_at - started)
    usage = usage or {}
    metrics.prompt_tokens.labels(**labels).inc(usage.get("prompt_tokens", 0))
    metrics.cached_tokens.labels(**labels).inc((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
    metrics.completion_tokens.labels(**labels).inc(usage.get("completion_tokens", 0))
    _log.info("request id=%s endpoint=%s tier=%s backend=%s status=%s prompt_tokens=%s completion_tokens=%s "
              "latency_ms=%.0f", request_id, endpoint, labels["tier"], labels["backend"], status,
              usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), elapsed * 1000)
