"""One inference request from its gate to its answer: queue, worker thread, SSE, usage, metrics, log line.

A route turns its body into an `Inference` (what to call and how to answer); `answer()` runs it on its
tier, streamed or not, through one `RequestContext` (the request's tier, gate, id and clock), whose
`record()` counts the finished request in the metrics and writes its log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import AgenticError, EngineFailedError
from ..ml.base import Model
from ..ml.shapes import answered_by, join_chunks
from ..ml.tiers import Tier
from .runtime import ModelGate, iterate_in_thread
from .state import EMBEDDING, ServerState

__all__ = ["Inference", "ModelCall", "RequestContext", "answer", "embed"]

_log = logging.getLogger("agentic.api")
ModelCall = Callable[[Model, bool], Any]  # (model, stream) -> a result dict, or an iterator of chunks


@dataclass(frozen=True)
class Inference:
    """What a route asks of the pipeline: the call on the tier's model, and how the client wants the answer."""

    endpoint: str  # "chat" or "completions", for metrics and logs
    model_id: str  # the request's `model`: a tier name or a tier's model name
    call: ModelCall
    prompt_text: str  # logged only with API_LOG_PROMPTS
    stream: bool = False
    include_usage: bool = False


@dataclass
class RequestContext:
    """One request on its way through the server: its configuration, tier, gate, id and clock."""

    state: ServerState
    endpoint: str
    tier: str  # a Tier, or EMBEDDING for /v1/embeddings
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.perf_counter)

    @property
    def gate(self) -> ModelGate:
        return self.state.embedding_gate if self.tier == EMBEDDING else self.state.gates[cast(Tier, self.tier)]

    @property
    def labels(self) -> dict[str, str]:
        return self.state.labels(self.tier)

    def record(self, status: int, usage: dict[str, Any] | None = None, error: AgenticError | None = None,
               first_token_at: float | None = None) -> None:
        """Metrics and the log line of the finished request (`error`: what ended it, counted by its code)."""
        metrics, labels, elapsed = self.state.metrics, self.labels, time.perf_counter() - self.started
        if error is not None:
            metrics.errors.labels(**labels, code=error.code or error.error_type).inc()
        metrics.requests.labels(**labels, endpoint=self.endpoint, status=str(status)).inc()
        metrics.latency.labels(**labels).observe(elapsed)
        if first_token_at is not None:  # streamed: a non-streamed answer has no first token the client sees
            metrics.time_to_first_token.labels(**labels).observe(first_token_at - self.started)
        usage = usage or {}
        metrics.prompt_tokens.labels(**labels).inc(usage.get("prompt_tokens", 0))
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        metrics.cached_tokens.labels(**labels).inc(cached)
        metrics.completion_tokens.labels(**labels).inc(usage.get("completion_tokens", 0))
        _log.info("request id=%s endpoint=%s tier=%s backend=%s status=%s prompt_tokens=%s completion_tokens=%s "
                  "latency_ms=%.0f", self.request_id, self.endpoint, self.tier, labels["backend"], status,
                  usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), elapsed * 1000)


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def answer(state: ServerState, inference: Inference, request: Request) -> Response:
    """Run one request on its tier: queue, thread, metrics, the request log line."""
    tier = state.tier_of(inference.model_id)
    context = RequestContext(state, inference.endpoint, tier)
    if state.settings.api_log_prompts:
        _log.info("request id=%s prompt=%r", context.request_id, inference.prompt_text)
    streaming, acquired, chunks = False, False, None
    state.enter()
    try:
        await context.gate.acquire()
        acquired = True
        model = await state.model(tier)
        if not inference.stream:
            if model.streams_usage:  # generated as a stream, so a client that hangs up stops it within a token
                chunks = iterate_in_thread(lambda: inference.call(model, True))
                result = await _gather(chunks, request)
            else:
                result = await asyncio.to_thread(inference.call, model, False)
            context.record(200 if result is not None else 499, result.get("usage") if result is not None else None)
            if result is None:
                return Response(status_code=499)
            return JSONResponse(result, headers=_headers(context, result))
        chunks = iterate_in_thread(lambda: inference.call(model, True))
        first = await chunks.__anext__()  # a bad prompt fails here, as a proper HTTP error
        streaming = True
    except AgenticError as exc:
        context.record(exc.status_code, error=exc)
        raise
    finally:
        if acquired and not streaming:
            context.gate.release()
        if not streaming:
            state.leave()
        if chunks is not None and not streaming:  # answered, failed or cancelled: stop the worker
            asyncio.ensure_future(chunks.aclose())  # type: ignore[attr-defined]
    return StreamingResponse(_stream_events(context, first, chunks, inference.include_usage),
                             media_type="text/event-stream",
                             headers={**_headers(context, first), "cache-control": "no-cache"})


async def embed(state: ServerState, model_id: str, options: dict[str, Any]) -> Response:
    """/v1/embeddings: the backend's embedding model on `options` (input, encoding_format, dimensions)."""
    context = RequestContext(state, "embeddings", EMBEDDING)
    state.enter()
    acquired = False
    try:
        state.check_embedding_id(model_id)
        await context.gate.acquire()
        acquired = True
        model = await asyncio.to_thread(state.manager.embedding_model)
        result = await asyncio.to_thread(model.create_embedding, **options)
    except AgenticError as exc:
        context.record(exc.status_code, error=exc)
        raise
    finally:
        if acquired:
            context.gate.release()
        state.leave()
    context.record(200, result["usage"])
    return JSONResponse(result, headers={"x-request-id": context.request_id, "x-agentic-backend": model.backend})


async def _gather(chunks: AsyncIterator[dict[str, Any]], request: Request) -> dict[str, Any] | None:
    """The whole answer from a stream's chunks; None when the client hung up first."""
    received = []
    async for chunk in chunks:
        received.append(chunk)
        finished = bool(chunk["choices"]) and chunk["choices"][0]["finish_reason"] is not None
        if not finished and await request.is_disconnected():
            return None
    return join_chunks(received)


def _headers(context: RequestContext, result: dict[str, Any]) -> dict[str, str]:
    """x-request-id, and x-agentic-backend: the backend that answered (a fallback's, when one did)."""
    backend = answered_by(result)
    return {"x-request-id": context.request_id, **({"x-agentic-backend": backend} if backend else {})}


async def _stream_events(context: RequestContext, first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]],
                         include_usage: bool) -> AsyncIterator[str]:
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
        _log.exception("request id=%s failed mid-stream", context.request_id)
        error = EngineFailedError(f"Internal error while generating ({type(exc).__name__}); see the server log.")
        status = error.status_code
        yield _sse(error.to_openai())
    except (asyncio.CancelledError, GeneratorExit):
        status = 499  # the client went away: its generation was stopped and its slot freed
        raise
    finally:
        # Synchronous bookkeeping first: when the client hangs up, Starlette cancels this task and an
        # await here would be interrupted, leaking the slot. The worker stops within one token.
        context.gate.release()
        context.state.leave()
        context.record(status, usage, error, first_token_at)
        await chunks.aclose()  # type: ignore[attr-defined]
