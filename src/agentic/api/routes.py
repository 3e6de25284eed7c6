"""The server core's routes, on one APIRouter per concern: inference (/v1/chat/completions, /v1/completions),
info (/v1/models, /v1/backend, /health, /ready, /metrics) and admin (/admin/reload).

A route turns its body into an `Inference` and hands it to the pipeline; applications add their own
routers (`agentic.ideas.routes`) next to these in `app.py`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..config import effective_values
from ..errors import AgenticError, ClientAuthenticationError, InvalidRequestError, ReloadRefusedError
from ..ml.base import Model
from ..ml.tiers import TIERS
from .pipeline import Inference, answer, embed
from .schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .security import check_bearer
from .state import EMBEDDING, Server

__all__ = ["admin", "inference", "info", "server_of"]


def server_of(request: Request) -> Server:
    """The server a route runs in (its current configuration is `.current`)."""
    server: Server = request.app.state.agentic
    return server


# Routes by concern; keys were checked by RequestGuard before any of them runs (/v1: API_KEYS, /admin:
# API_ADMIN_KEYS). Each reads the configuration current when it starts (`server_of(request).current`).
inference = APIRouter()
info = APIRouter()
admin = APIRouter()


@inference.post("/v1/chat/completions", summary="Chat completion (stream or not)")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    messages = [message.plain() for message in body.messages]
    options = {**body.sampling(), "max_tokens": body.max_completion_tokens or body.max_tokens,
               "response_format": body.response_format, "tools": body.tools, "tool_choice": body.tool_choice,
               "parallel_tool_calls": body.parallel_tool_calls}
    if body.continue_final_message:  # only when asked: every backend takes the others
        options["continue_final_message"] = True

    def call(model: Model, stream: bool) -> Any:
        return model.create_chat_completion(messages=messages, stream=stream, **options)

    return await answer(server_of(request).current, Inference(
        "chat", body.model, call, json.dumps(messages, ensure_ascii=False), body.stream,
        bool(body.stream_options and body.stream_options.include_usage)), request)


@inference.post("/v1/completions", summary="Text completion (stream or not)")
async def completions(body: CompletionRequest, request: Request) -> Response:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or body.echo:
        raise InvalidRequestError("Only one prompt per request and echo=false are supported.", param="prompt")
    options = body.sampling()

    def call(model: Model, stream: bool) -> Any:
        return model.create_completion(prompts[0], stream=stream, **options)

    return await answer(server_of(request).current, Inference(
        "completions", body.model, call, prompts[0], body.stream,
        bool(body.stream_options and body.stream_options.include_usage)), request)


@inference.post("/v1/embeddings", summary="Embeddings of one or more inputs (normalized vectors)")
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    options = {"input": body.input, "encoding_format": body.encoding_format, "dimensions": body.dimensions}
    return await embed(server_of(request).current, body.model, options)


@info.get("/v1/models", summary="The tiers and their real model names")
async def models(request: Request) -> dict[str, Any]:
    state = server_of(request).current
    specs, loaded = state.manager.specs, {tier: state.manager.tier_loaded(tier) for tier in TIERS}
    ids: dict[str, bool] = {tier: loaded[tier] for tier in TIERS}
    ids.update({specs[tier].name: loaded[tier] for tier in TIERS})
    label = type(state.manager).embedding_label(state.settings)
    if label is not None:  # the embedding model, by its id and, once loaded, its name
        embedder = state.manager.embedding_model() if state.manager.has_embedder() else None
        ids[EMBEDDING] = embedder is not None
        if embedder is not None:
            ids.setdefault(embedder.name, True)
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "loaded": is_loaded,
                                        "owned_by": f"agentic-{state.manager.backend}"}
                                       for model_id, is_loaded in ids.items()]}


@info.get("/v1/backend", summary="The effective configuration (secrets as SET/NOT SET)")
async def backend(request: Request) -> dict[str, Any]:
    state = server_of(request).current
    return {"backend": state.manager.backend,
            "tiers": {tier: {"model": state.manager.specs[tier].name, "origin": state.manager.specs[tier].origin,
                             "loaded": state.manager.tier_loaded(tier)} for tier in TIERS},
            "settings": {name: {"value": shown, "source": source}
                         for name, shown, source in effective_values(state.settings)}}


@admin.post("/admin/reload", summary="Re-read .env and switch backend or models without a restart")
async def reload(request: Request) -> dict[str, Any]:
    try:
        state = await server_of(request).reload()
    except AgenticError as exc:
        raise ReloadRefusedError(f"Reload refused, the previous configuration keeps serving: {exc.message}",
                                 param=exc.param) from None
    return {"status": "reloaded", "backend": state.manager.backend,
            "tiers": {tier: state.manager.specs[tier].name for tier in TIERS}}


@info.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@info.get("/ready", summary="Models loaded (with MODEL_PRELOAD) and backend reachable; details with a key")
async def ready(request: Request) -> JSONResponse:
    state = server_of(request).current
    loaded = {tier: state.manager.tier_loaded(tier) for tier in TIERS}
    problem = await state.readiness.problem()
    settings = state.settings
    if problem is None and settings.model_preload and not settings.model_keep_alive and not all(loaded.values()):
        problem = "models are still loading"  # (with MODEL_KEEP_ALIVE an unloaded model is idle, not loading)
    body: dict[str, Any] = {"status": "ready" if problem is None else "not_ready"}
    try:  # the details (what is loaded, what is wrong upstream) only for a caller with a key
        check_bearer(request.headers.get("authorization"), state.keys)
        body.update(loaded=loaded, problem=problem)
    except ClientAuthenticationError:
        pass
    return JSONResponse(body, status_code=200 if problem is None else 503)


@info.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    state = server_of(request).current
    for tier, gate in state.gates.items():
        state.metrics.queue_depth.labels(**state.labels(tier)).set(gate.waiting)
        state.metrics.in_flight.labels(**state.labels(tier)).set(gate.running)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")
