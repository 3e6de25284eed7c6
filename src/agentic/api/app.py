"""The OpenAI-compatible API: `create_app(settings)`; `python src/agentic/api/app.py` serves it.

Any OpenAI client, SDK or tool works unchanged against it, on whichever backend MODEL_BACKEND names.
Inference runs in worker threads behind a bounded queue per model, so the event loop never blocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script, as the guide does: python src/agentic/api/app.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import agentic.api  # noqa: F401 - the parent package of the relative imports below

    __package__ = "agentic.api"

import asyncio
import json
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import Settings, effective_values, load_settings
from ..errors import AgenticError, ClientAuthenticationError, InvalidRequestError, ReloadRefusedError
from ..ideas.analyzer import ANALYSIS_SYSTEM, TRIAGE_SYSTEM, CallRecord, IdeaAnalyzer, analysis_prompt, idea_prompt
from ..ideas.schemas import Analysis, Triage
from ..logs import configure_logging
from ..ml.base import BaseModelManager, Model
from ..ml.model_factory import create_model_manager
from ..ml.tiers import TIERS, Tier
from .pipeline import answer, record
from .schemas import ChatCompletionRequest, CompletionRequest, IdeaRequest
from .security import RequestGuard, check_bearer, check_bind_address, guarded_protocol, route_keys
from .state import Server, ServerState, workers

__all__ = ["Server", "ServerState", "create_app", "main", "serve"]

_log = logging.getLogger("agentic.api")
SHUTDOWN_GRACE_S = 30  # on SIGTERM, streams still running after this long are cut (uvicorn waits forever)


def _error_response(exc: AgenticError) -> JSONResponse:
    headers = {"retry-after": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(exc.to_openai(), status_code=exc.status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's envelope; never a traceback to the client."""

    @app.exception_handler(AgenticError)
    async def agentic_error(request: Request, exc: AgenticError) -> JSONResponse:
        _log.info("request error path=%s status=%s code=%s", request.url.path, exc.status_code, exc.code)
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
        if error["type"] == "json_invalid":
            message, where = "The request body is not valid JSON.", "body"
        elif error["type"] == "agentic_request":  # our own validators name the field themselves
            message, where = error["msg"], error["ctx"]["param"]
        else:
            message = f"Invalid value for '{where}': {error['msg']}."
        return _error_response(InvalidRequestError(message, param=where))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = AgenticError(f"{exc.detail}: {request.method} {request.url.path}")
        error.status_code, error.error_type, error.code = exc.status_code, "invalid_request_error", None
        return _error_response(error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("unexpected error on %s", request.url.path)
        return _error_response(AgenticError(f"Internal error ({type(exc).__name__}); see the server log."))


def create_app(settings: Settings | None = None, manager: BaseModelManager | None = None,
               env_file: str | Path | None = ".env", host: str | None = None) -> FastAPI:
    """The FastAPI app over the configured backend (models load now when MODEL_PRELOAD=true).

    `env_file` is what POST /admin/reload and SIGHUP read again; `host` (default API_HOST) is the
    address the server listens on, which every reloaded configuration must keep safe.
    """
    settings = settings if settings is not None else load_settings(env_file)
    server = Server(settings, manager if manager is not None else create_model_manager(settings), env_file, host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(workers(server.current), "agentic-model"))
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(server.reload_logged()))
        except (NotImplementedError, RuntimeError, AttributeError):  # no SIGHUP here, or not the main thread
            pass
        yield
        server.current.manager.close()

    app = FastAPI(title="agentic", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API over llama.cpp, the OpenAI API or transformers.")
    app.state.agentic = server
    app.add_middleware(RequestGuard, keys_for=lambda path: route_keys(server.current.settings, path),
                       limit=settings.api_max_body_bytes, body_timeout=settings.api_body_timeout)
    _install_error_handlers(app)
    for router in (inference, ideas, info, admin):
        app.include_router(router)
    return app


async def _analyze_idea(state: ServerState, body: IdeaRequest) -> JSONResponse:
    """POST /v1/ideas/analyze: the light tier's triage, then the heavy tier's analysis, each behind its gate."""
    calls: list[CallRecord] = []
    analyzer = IdeaAnalyzer(state.manager, retries=body.retries)
    idea_text = idea_prompt(body.title, body.description)
    started, request_id = time.perf_counter(), uuid.uuid4().hex[:12]

    async def on_tier(tier: Tier, system: str, text: str, schema: type[Triage] | type[Analysis]) -> Any:
        gate, labels = state.gates[tier], state.labels(tier)
        await gate.acquire()
        try:
            await state.model(tier)
            return await asyncio.to_thread(analyzer.structured, request_id, tier, system, text, schema, calls)
        except AgenticError as exc:
            record(state, labels, "ideas", exc.status_code, None, started, request_id, started, exc)
            raise
        finally:
            gate.release()

    triage = await on_tier("light", TRIAGE_SYSTEM, idea_text, Triage)
    analysis = await on_tier("heavy", ANALYSIS_SYSTEM, analysis_prompt(idea_text, triage), Analysis)
    usage = {"prompt_tokens": sum(c.prompt_tokens for c in calls),
             "completion_tokens": sum(c.completion_tokens for c in calls)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    record(state, state.labels("heavy"), "ideas", 200, usage, started, request_id, started)
    return JSONResponse({"id": f"idea-{request_id}", "object": "idea.analysis", "backend": state.manager.backend,
                         "models": {tier: state.manager.specs[tier].name for tier in TIERS},
                         "triage": triage.model_dump(), "analysis": analysis.model_dump(),
                         "attempts": len(calls), "usage": usage}, headers={"x-request-id": request_id})


def _server(request: Request) -> Server:
    """The server a route runs in (its current configuration is `.current`)."""
    server: Server = request.app.state.agentic
    return server


# Routes by concern; keys were checked by RequestGuard before any of them runs (/v1: API_KEYS, /admin:
# API_ADMIN_KEYS). Each reads the configuration current when it starts (`_server(request).current`).
inference = APIRouter()
ideas = APIRouter()
info = APIRouter()
admin = APIRouter()


@inference.post("/v1/chat/completions", summary="Chat completion (stream or not)")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    messages = [message.plain() for message in body.messages]
    options = {**body.sampling(), "max_tokens": body.max_completion_tokens or body.max_tokens,
               "response_format": body.response_format}

    def call(model: Model, stream: bool) -> Any:
        return model.create_chat_completion(messages=messages, stream=stream, **options)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await answer(_server(request).current, "chat", body.model, options["max_tokens"], body.stream,
                         include_usage, call, json.dumps(messages, ensure_ascii=False), request)


@inference.post("/v1/completions", summary="Text completion (stream or not)")
async def completions(body: CompletionRequest, request: Request) -> Response:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or body.echo:
        raise InvalidRequestError("Only one prompt per request and echo=false are supported.", param="prompt")
    options = body.sampling()

    def call(model: Model, stream: bool) -> Any:
        return model.create_completion(prompts[0], stream=stream, **options)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await answer(_server(request).current, "completions", body.model, body.max_tokens, body.stream,
                         include_usage, call, prompts[0], request)


@ideas.post("/v1/ideas/analyze", summary="One business idea: light triage, heavy analysis")
async def analyze_idea(body: IdeaRequest, request: Request) -> JSONResponse:
    state = _server(request).current.enter()
    try:
        return await _analyze_idea(state, body)
    finally:
        state.leave()


@info.get("/v1/models", summary="The tiers and their real model names")
async def models(request: Request) -> dict[str, Any]:
    state = _server(request).current
    specs, loaded = state.manager.specs, {tier: state.manager.tier_loaded(tier) for tier in TIERS}
    ids: dict[str, bool] = {tier: loaded[tier] for tier in TIERS}
    ids.update({specs[tier].name: loaded[tier] for tier in TIERS})
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "loaded": is_loaded,
                                        "owned_by": f"agentic-{state.manager.backend}"}
                                       for model_id, is_loaded in ids.items()]}


@info.get("/v1/backend", summary="The effective configuration (secrets as SET/NOT SET)")
async def backend(request: Request) -> dict[str, Any]:
    state = _server(request).current
    return {"backend": state.manager.backend,
            "tiers": {tier: {"model": state.manager.specs[tier].name, "origin": state.manager.specs[tier].origin,
                             "loaded": state.manager.tier_loaded(tier)} for tier in TIERS},
            "settings": {name: {"value": shown, "source": source}
                         for name, shown, source in effective_values(state.settings)}}


@admin.post("/admin/reload", summary="Re-read .env and switch backend or models without a restart")
async def reload(request: Request) -> dict[str, Any]:
    try:
        state = await _server(request).reload()
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
    state = _server(request).current
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
    state = _server(request).current
    for tier, gate in state.gates.items():
        state.metrics.queue_depth.labels(**state.labels(tier)).set(gate.waiting)
        state.metrics.in_flight.labels(**state.labels(tier)).set(gate.running)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


def serve(settings: Settings | None = None, host: str | None = None, port: int | None = None) -> None:
    """Run the API with uvicorn on API_HOST:API_PORT (or the given host and port)."""
    import uvicorn

    settings = settings if settings is not None else load_settings()
    host = host or settings.api_host
    check_bind_address(host, settings)
    configure_logging(logging.INFO, "%(levelname)s %(name)s: %(message)s")
    protocol = guarded_protocol(settings.api_header_timeout, settings.api_max_connections)
    uvicorn.run(create_app(settings, host=host), host=host, port=port or settings.api_port, log_level="info",
                http=protocol, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


def main() -> None:
    """`python src/agentic/api/app.py`: serve, or print one clear error and exit 2."""
    try:
        serve()
    except AgenticError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
