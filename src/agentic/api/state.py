"""The server's configuration at run time: what a request runs on, and the switch a reload makes."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config import Settings, load_settings
from ..errors import AgenticError, ModelNotFoundError
from ..ml.base import BaseModelManager, Model
from ..ml.model_factory import create_model_manager
from ..ml.tiers import TIERS, Tier
from .metrics import ENGINE_COUNTERS, Metrics
from .runtime import ModelGate
from .security import check_bind_address

__all__ = ["EMBEDDING", "Readiness", "Server", "ServerState", "workers"]

EMBEDDING = "embedding"  # the model id (and metrics tier label) of the backend's embedding model

_log = logging.getLogger("agentic.api")
READY_TTL = 2.0  # seconds a readiness answer is reused


class Readiness:
    """The manager's readiness, checked at most every READY_TTL seconds, one check at a time, off the model pool.

    A probe is unauthenticated and cheap: twenty of them cost one check (on the openai backend, one
    `models.list` per server), run on a thread of its own, so they never queue behind or slow down inference.
    """

    def __init__(self, manager: BaseModelManager) -> None:
        self.manager = manager
        self._executor = ThreadPoolExecutor(1, "agentic-ready")
        self._checked_at = -READY_TTL
        self._problem: str | None = None
        self._check: asyncio.Future[str | None] | None = None

    async def problem(self) -> str | None:
        """Why the backend cannot serve (None: it can), at most READY_TTL seconds old."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked_at < READY_TTL:
            return self._problem
        if self._check is None:
            self._check = asyncio.ensure_future(loop.run_in_executor(self._executor, self.manager.problem))
            self._check.add_done_callback(self._store)
        try:
            return await asyncio.shield(self._check)
        except Exception as exc:  # noqa: BLE001 - a failing check means "not ready", never a 500
            return f"the readiness check failed ({type(exc).__name__})"

    def _store(self, check: asyncio.Future[str | None]) -> None:
        self._check = None
        self._checked_at = asyncio.get_running_loop().time()
        if check.cancelled():
            self._problem = "the readiness check was cancelled"
        elif (error := check.exception()) is not None:
            self._problem = f"the readiness check failed ({type(error).__name__})"
        else:
            self._problem = check.result()

    def close(self) -> None:
        self._executor.shutdown(wait=False)


class ServerState:
    """One configuration: settings, the manager, one gate per loaded model. A reload makes a new one."""

    def __init__(self, settings: Settings, manager: BaseModelManager, metrics: Metrics) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics
        self.keys = settings.api_key_list
        self.readiness = Readiness(manager)
        self.active = 0  # requests running on this configuration
        self.retired = False  # replaced by a reload: freed when its last request ends
        capacity = manager.capacity()
        gates: dict[str, ModelGate] = {}
        for tier in TIERS:
            spec = manager.specs[tier]
            gates.setdefault(spec.key, ModelGate(spec.name, capacity, settings.api_max_queue))
        self.gates: dict[Tier, ModelGate] = {tier: gates[manager.specs[tier].key] for tier in TIERS}
        self.embedding_gate = ModelGate("embeddings", capacity, settings.api_max_queue)
        listeners = getattr(manager, "listeners", None)
        if listeners is not None:  # a FallbackManager: count each failover
            listeners.append(lambda tier, failed, served, code: metrics.fallbacks.labels(
                tier=tier, from_backend=failed, to_backend=served, reason=code).inc())

    def tier_of(self, model_id: str) -> Tier:
        """`heavy`, `light`, or a tier's real model name; anything else is a 404, never another model."""
        for tier in TIERS:
            if model_id == tier:
                return tier
        for tier in TIERS:
            if self.manager.specs[tier].name == model_id:
                return tier
        names = sorted({*TIERS, *(self.manager.specs[tier].name for tier in TIERS)})
        raise ModelNotFoundError(f"The model {model_id!r} does not exist here. Use one of: {', '.join(names)} "
                                 "(GET /v1/models lists them).")

    def check_embedding_id(self, model_id: str) -> None:
        """`embedding`, or the embedding model's name; anything else is a 404, never another model."""
        label = type(self.manager).embedding_label(self.settings)
        names = {EMBEDDING, *([label] if label else [])}
        if self.manager.has_embedder():
            names.add(self.manager.embedding_model().name)
        if model_id not in names:
            raise ModelNotFoundError(f"The embedding model {model_id!r} does not exist here. Use one of: "
                                     f"{', '.join(sorted(names))} (GET /v1/models lists them).")

    async def model(self, tier: Tier) -> Model:
        """The tier's model, loaded in a worker thread on first use."""
        model, _ = await asyncio.to_thread(self.manager.for_tier, tier)
        return model

    def labels(self, tier: str) -> dict[str, str]:
        return {"tier": tier, "backend": self.manager.backend}

    def enter(self) -> ServerState:
        self.active += 1
        return self

    def leave(self) -> None:
        """One request ended; the last one on a retired configuration frees its models."""
        self.active -= 1
        if self.retired and self.active == 0:
            self._free()

    def retire(self) -> None:
        self.retired = True
        if self.active == 0:
            self._free()

    def _free(self) -> None:
        _log.info("freeing the previous configuration (%s)", self.manager.backend)
        self.readiness.close()
        threading.Thread(target=self.manager.close, name="agentic-free", daemon=True).start()


class Server:
    """What one app holds across reloads: the metrics and the configuration new requests use."""

    def __init__(self, settings: Settings, manager: BaseModelManager, env_file: str | Path | None = ".env",
                 host: str | None = None) -> None:
        self.metrics = Metrics()
        self.current = ServerState(settings, manager, self.metrics)
        self.env_file = env_file
        self.host = host or settings.api_host  # the address it listens on: a reload must keep it safe
        self.metrics.count_engines(self._engine_counts)
        self._reloading = asyncio.Lock()

    def _engine_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        manager = self.current.manager
        return {(tier, manager.backend): {counter: manager.engine_count(tier, counter) for counter in ENGINE_COUNTERS}
                for tier in TIERS}

    async def reload(self) -> ServerState:
        """Re-read the settings and switch to a new manager; a bad config raises and changes nothing.

        Requests already running finish on the old manager, which is freed after the last one.
        """
        async with self._reloading:
            try:
                settings = await asyncio.to_thread(load_settings, self.env_file)
                check_bind_address(self.host, settings)  # the start-up rules hold for every configuration
                manager = await asyncio.to_thread(create_model_manager, settings)
            except AgenticError:
                self.metrics.reloads.labels(result="refused").inc()
                raise
            old, self.current = self.current, ServerState(settings, manager, self.metrics)
            if workers(self.current) > workers(old):  # more parallel calls than the thread pool was sized for
                asyncio.get_running_loop().set_default_executor(
                    ThreadPoolExecutor(workers(self.current), "agentic-model"))
            self.metrics.reloads.labels(result="ok").inc()
            _log.info("reloaded: backend %s -> %s, heavy %s, light %s", old.manager.backend, manager.backend,
                      manager.specs["heavy"].name, manager.specs["light"].name)
            old.retire()
            gc.unfreeze()  # the old configuration's objects, frozen at start-up, can be collected once retired
            return self.current

    async def reload_logged(self) -> None:
        """SIGHUP: reload, or log why not and keep serving."""
        try:
            await self.reload()
        except AgenticError as exc:
            _log.error("reload refused, the previous configuration keeps serving: %s", exc.message)


def workers(state: ServerState) -> int:
    """Threads for model calls: every gate's capacity, plus a few for loading and readiness checks."""
    return sum(gate.capacity for gate in {*state.gates.values(), state.embedding_gate}) + 4
