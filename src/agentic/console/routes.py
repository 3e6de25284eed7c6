"""The console's routes: the page at `/` and its static files (open, they hold no data), and the data it shows
under /console/api/ (status, metrics, analysis runs), which RequestGuard keeps behind API_KEYS like /v1.

The playground needs no route of its own: the page streams from /v1/chat/completions with the same key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api.routes import server_of
from ..api.state import Server
from ..errors import AgenticError
from .runs import FILES, AnalysisRuns
from .sampler import MetricsSampler
from .status import Footprints, server_status

if TYPE_CHECKING:  # (importlib.resources.abc is Python 3.11+)
    from importlib.resources.abc import Traversable

__all__ = ["Console", "console_of", "router"]

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".md": "text/markdown; charset=utf-8"}
# The page loads nothing from elsewhere and cannot: scripts, styles and requests go to this server only. Inline
# styles are allowed for the reports, which are shown in a sandboxed frame (no scripts) that inherits this policy.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
               "connect-src 'self'; frame-src 'self' blob:; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")
STATIC_HEADERS = {"content-security-policy": PAGE_POLICY, "x-content-type-options": "nosniff",
                  "referrer-policy": "no-referrer", "cache-control": "no-cache"}
# A run's file fetched directly: inert (no scripts, its own origin), whatever the model wrote in it.
FILE_HEADERS = {"content-security-policy": "sandbox", "x-content-type-options": "nosniff", "cache-control": "no-store"}


class Console:
    """What the console keeps for one app: the metrics sampler, the analysis runs, the memory estimates."""

    def __init__(self, server: Server) -> None:
        self.sampler = MetricsSampler(server)
        self.runs = AnalysisRuns()
        self.footprints = Footprints()

    def close(self) -> None:
        self.sampler.close()


def console_of(request: Request) -> Console:
    """The app's console state, made on first use (an app served without its lifespan still works)."""
    console: Console | None = getattr(request.app.state, "agentic_console", None)
    if console is None:
        console = Console(server_of(request))
        request.app.state.agentic_console = console
    return console


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The console starts nothing with the app; it stops its sampler when the app stops."""
    yield
    console: Console | None = getattr(app.state, "agentic_console", None)
    if console is not None:
        console.close()


router = APIRouter(lifespan=_lifespan)


def _static_files(folder: Traversable, prefix: str = "") -> dict[str, Traversable]:
    """Every file shipped under static/, by its path there: the only names the static route serves."""
    found: dict[str, Traversable] = {}
    for entry in folder.iterdir():
        if entry.is_dir():
            found.update(_static_files(entry, f"{prefix}{entry.name}/"))
        elif not entry.name.startswith("."):
            found[f"{prefix}{entry.name}"] = entry
    return found


STATIC_FILES: Mapping[str, Traversable] = MappingProxyType(
    _static_files(resources.files("agentic.console").joinpath("static")))


def _static(name: str) -> Response:
    entry = STATIC_FILES.get(name)
    if entry is None:  # the app's 404, in OpenAI's envelope
        raise StarletteHTTPException(404, "Not Found")
    media_type = CONTENT_TYPES.get(Path(name).suffix, "text/plain; charset=utf-8")
    return Response(entry.read_bytes(), media_type=media_type, headers=STATIC_HEADERS)


@router.get("/", include_in_schema=False)
async def page() -> Response:
    return _static("index.html")


@router.get("/console/static/{name:path}", include_in_schema=False)
async def static(name: str) -> Response:
    return _static(name)


@router.get("/console/api/status", summary="Console: backend, fallback chain, tiers, slots, memory", tags=["console"])
async def status(request: Request) -> dict[str, Any]:
    server, console = server_of(request), console_of(request)
    problem = await server.current.readiness.problem()
    footprints = await asyncio.to_thread(console.footprints.of, server.current.manager)
    return server_status(server, problem, footprints, request.app.version)


@router.get("/console/api/metrics", summary="Console: the last minutes of the server's metrics", tags=["console"])
async def metrics(request: Request) -> dict[str, Any]:
    return console_of(request).sampler.read()


def _runs_dir(request: Request) -> Path:
    return server_of(request).current.settings.api_runs_dir


@router.get("/console/api/runs", summary="Console: analysis runs, newest first", tags=["console"])
async def runs(request: Request) -> dict[str, Any]:
    records = await asyncio.to_thread(console_of(request).runs.recent, _runs_dir(request))
    return {"object": "list", "data": [record.model_dump() for record in records]}


@router.post("/console/api/runs", status_code=201, tags=["console"],
             summary="Console: analyze an uploaded CSV or JSONL of ideas (the body is the file)")
async def start_run(request: Request, filename: str = Query("ideas.csv", min_length=1, max_length=255)) -> JSONResponse:
    body = await request.body()  # RequestGuard has read it whole, within API_MAX_BODY_BYTES
    state = server_of(request).current.enter()  # its models stay until the run ends, even across a reload
    loop = asyncio.get_running_loop()

    def on_end() -> None:
        try:
            loop.call_soon_threadsafe(state.leave)
        except RuntimeError:  # the server has stopped: nothing is left to free
            pass

    # `start` leaves the configuration itself (through on_end), whether the run starts or the upload is refused.
    record = await asyncio.to_thread(console_of(request).runs.start, state, _runs_dir(request), filename, body, on_end)
    return JSONResponse(record.model_dump(), status_code=201)


@router.get("/console/api/runs/{run_id}", summary="Console: one run and its progress", tags=["console"])
async def run(request: Request, run_id: str) -> dict[str, Any]:
    record = await asyncio.to_thread(console_of(request).runs.get, _runs_dir(request), run_id)
    return record.model_dump()


@router.get("/console/api/runs/{run_id}/files/{name}", summary="Console: a run's report or results",
            tags=["console"])
async def run_file(request: Request, run_id: str, name: str) -> Response:
    path = await asyncio.to_thread(console_of(request).runs.file, _runs_dir(request), run_id, name)
    try:
        content = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise AgenticError(f"{name} of run {run_id} cannot be read ({exc.strerror}).") from None
    disposition = f'inline; filename="{run_id}-{name}"'
    return Response(content, media_type=FILES[name], headers={**FILE_HEADERS, "content-disposition": disposition})
