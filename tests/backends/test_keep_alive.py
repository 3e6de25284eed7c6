"""MODEL_KEEP_ALIVE: idle models are unloaded and come back on the next request; models in use stay."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from agentic.api.app import create_app
from agentic.ml.model_manager import ModelManager
from conftest import make_settings

KEEP_ALIVE = 0.5


def _wait_until(condition: Any) -> None:
    """Poll until `condition()` holds; no deadline of ours (pytest-timeout guards a hang)."""
    while not condition():
        time.sleep(0.05)


def test_an_idle_model_is_unloaded_and_loads_again_on_the_next_request() -> None:
    with ModelManager(make_settings(model_keep_alive=KEEP_ALIVE, model_parallel=2, model_n_threads=2)) as manager:
        model, _ = manager.get(heavy=True)
        first = model(prompt="Hello", max_tokens=4, temperature=0)
        assert manager.is_loaded(heavy=True)
        _wait_until(lambda: not manager.is_loaded(heavy=True))
        model, _ = manager.get(heavy=True)  # loads it again
        again = model(prompt="Hello", max_tokens=4, temperature=0)
        assert again["choices"][0]["text"] == first["choices"][0]["text"]


def test_a_model_generating_is_never_unloaded() -> None:
    with ModelManager(make_settings(model_keep_alive=KEEP_ALIVE, model_parallel=2, model_n_threads=2)) as manager:
        model, _ = manager.get(heavy=True)
        stream = iter(model(prompt="Once upon a time", max_tokens=40, temperature=0, stream=True))
        next(stream)
        time.sleep(4 * KEEP_ALIVE)  # several keep-alive periods with the stream open and unread
        assert manager.is_loaded(heavy=True) and model.active == 1
        chunks = list(stream)  # and it finishes on the same model
        assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
        _wait_until(lambda: not manager.is_loaded(heavy=True))
        assert manager.unload_idle(KEEP_ALIVE) == []  # nothing left to unload


@pytest.mark.slow
async def test_ready_and_models_say_what_is_loaded() -> None:
    settings = make_settings(model_keep_alive=KEEP_ALIVE, model_preload=True, model_parallel=2, model_n_threads=2)
    manager = ModelManager(settings)
    app = create_app(settings, manager=manager)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        listed = [entry for entry in (await client.get("/v1/models")).json()["data"] if entry["id"] != "embedding"]
        assert all(entry["loaded"] for entry in listed)  # (the embedding model loads on first use)
        _wait_until(lambda: not manager.is_loaded(heavy=True))
        listed = (await client.get("/v1/models")).json()["data"]
        assert not any(entry["loaded"] for entry in listed)
        ready = await client.get("/ready")  # unloaded by MODEL_KEEP_ALIVE is idle, not "still loading"
        assert ready.status_code == 200 and ready.json()["loaded"] == {"heavy": False, "light": False}
        answer = await client.post("/v1/completions", json={"model": "heavy", "prompt": "Hi", "max_tokens": 2})
        assert answer.status_code == 200 and manager.is_loaded(heavy=True)
    manager.close()
