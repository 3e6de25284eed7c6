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
import gc
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import Settings, load_settings
from ..console.routes import router as console
from ..errors import AgenticError, InvalidRequestError
from ..ideas.routes import router as ideas
from ..logs import configure_logging
from ..ml.base import BaseModelManager
from ..ml.model_factory import create_model_manager
from .routes import admin, inference, info
from .security import RequestGuard, check_bind_address, guarded_protocol, route_keys
from .state import Server, workers

__all__ = ["Server", "create_app", "main", "serve"]

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
               env_file: str | Path | None = ".env", host: str | None = None,
               routers: tuple[APIRouter, ...] = (ideas, console)) -> FastAPI:
    """The FastAPI app over the configured backend (models load now when MODEL_PRELOAD=true).

    `env_file` is what POST /admin/reload and SIGHUP read again; `host` (default API_HOST) is the
    address the server listens on, which every reloaded configuration must keep safe. `routers` are the
    applications served next to the core's routes (default: the business-idea route and the web console at `/`).
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
        # What start-up built (app, models, libraries: ~80k objects) lives as long as the server: frozen, the
        # cyclic collector's full passes skip it (22 ms each otherwise, holding the GIL the engine needs).
        gc.collect()
        gc.freeze()
        yield
        gc.unfreeze()
        server.current.manager.close()

    app = FastAPI(title="agentic", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API over llama.cpp, the OpenAI API or transformers.")
    app.state.agentic = server
    app.add_middleware(RequestGuard, keys_for=lambda path: route_keys(server.current.settings, path),
                       limit=settings.api_max_body_bytes, body_timeout=settings.api_body_timeout)
    _install_error_handlers(app)
    for router in (inference, info, admin, *routers):
        app.include_router(router)
    return app


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
