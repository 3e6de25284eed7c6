"""The console's status panel: what the server runs now, from its current configuration (`ServerState`)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..api.state import Server
from ..errors import AgenticError
from ..ml.base import BaseModelManager
from ..ml.tiers import TIERS, Tier
from ..registry import is_remote
from .sampler import process_rss_mb

__all__ = ["Footprints", "server_status"]

_log = logging.getLogger("agentic.console")


class Footprints:
    """Each tier's estimated memory, worked out once per model file and size (it reads the GGUF header)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, int, int], float | None] = {}
        self._lock = threading.Lock()

    def of(self, manager: BaseModelManager) -> dict[str, float | None]:
        """Tier -> MiB the loaded model holds or will hold (None: nothing local to count, or unknown)."""
        settings = manager.settings
        found: dict[str, float | None] = {}
        for tier in TIERS:
            spec = manager.specs[tier]
            key = (manager.backend, spec.key, settings.model_parallel, settings.model_context_size)
            with self._lock:
                if key not in self._known:
                    self._known[key] = self._estimate(manager, tier)
                found[tier] = self._known[key]
        return found

    @staticmethod
    def _estimate(manager: BaseModelManager, tier: Tier) -> float | None:
        try:
            estimate = manager.footprint_mb(manager.specs[tier])
        except Exception as exc:  # noqa: BLE001 - a figure for display: without it the panel shows "unknown"
            _log.info("console: no memory estimate for the %s tier (%s)", tier, exc)
            return None
        return None if estimate is None else round(estimate, 1)


def _chain(manager: BaseModelManager) -> list[dict[str, Any]]:
    """MODEL_BACKEND then each MODEL_FALLBACK backend: usable, or why not (a FallbackManager holds the chain)."""
    chain = getattr(manager, "chain", None)
    if chain is None:
        return [{"backend": manager.backend, "usable": True, "problem": None}]
    return [{"backend": name, "usable": not isinstance(member, AgenticError),
             "problem": member.message.splitlines()[0] if isinstance(member, AgenticError) else None}
            for name, member in chain]


def server_status(server: Server, problem: str | None, footprints: dict[str, float | None],
                  version: str) -> dict[str, Any]:
    """Backend, fallback chain, each tier's model (loaded or not, memory, slots), embeddings, memory, limits."""
    state = server.current
    manager, settings = state.manager, state.settings
    local = not is_remote(manager.backend)
    tiers = {}
    for tier in TIERS:
        spec, gate = manager.specs[tier], state.gates[tier]
        earlier = [other for other in TIERS[:TIERS.index(tier)] if manager.specs[other].key == spec.key]
        tiers[tier] = {"model": spec.name, "origin": spec.origin, "loaded": manager.tier_loaded(tier),
                       "shared_with": earlier[0] if earlier else None,  # one loaded model serves both tiers
                       "memory_mb": footprints.get(tier), "running": gate.running, "waiting": gate.waiting,
                       "slots": gate.capacity}
    label, embedder = type(manager).embedding_label(settings), state.embedding_gate
    embedding = None if label is None else {"model": label, "loaded": manager.has_embedder(),
                                            "running": embedder.running, "waiting": embedder.waiting,
                                            "slots": embedder.capacity}
    return {
        "version": version, "backend": manager.backend, "local": local, "ready": problem is None,
        "problem": problem, "fallback": _chain(manager), "tiers": tiers,
        "embedding": embedding,
        "context_size": settings.model_context_size if local else None,
        "parallel": manager.capacity(), "max_queue": settings.api_max_queue,
        "memory": {"process_rss_mb": _round(process_rss_mb()), "budget_mb": settings.model_memory_budget_mb or None},
        "limits": {"max_body_bytes": settings.api_max_body_bytes},
        "keys_required": bool(state.keys),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
