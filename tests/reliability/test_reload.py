"""Hot reload: POST /admin/reload and SIGHUP switch the backend without a restart or a lost request."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentic.api.app import create_app
from agentic.ml.model_manager import ModelManager
from conftest import make_settings, start_agentic_server, stop

ADMIN = "admin-key-for-tests"


def _chat(url: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=None, json={
        "model": "heavy", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **extra})


def _reload(url: str, key: str | None = ADMIN) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/admin/reload", headers=headers, timeout=None)


@pytest.mark.slow
def test_reload_switches_backend_while_a_stream_finishes_on_the_old_one(tmp_path: Path, llama_server: str) -> None:
    env = tmp_path / ".env"
    env.write_text(f"MODEL_BACKEND=llama_cpp\nAPI_ADMIN_KEYS={ADMIN}\n")
    url, process = start_agentic_server(tmp_path)
    try:
        assert _chat(url).headers["x-agentic-backend"] == "llama_cpp"
        # A long stream starts on llama.cpp ...
        finished: dict[str, Any] = {}

        def long_stream() -> None:
            with httpx.stream("POST", f"{url}/v1/completions", timeout=None, json={
                    "model": "heavy", "prompt": "Once upon a time", "max_tokens": 150, "temperature": 0.8,
                    "stream": True}) as streamed:
                finished["backend"] = streamed.headers["x-agentic-backend"]
                events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
            finished["last"] = json.loads(events[-2])["choices"][0]["finish_reason"]
            finished["done"] = events[-1] == "[DONE]"

        reader = threading.Thread(target=long_stream)
        reader.start()
        time.sleep(1.0)
        # ... the config switches to the openai backend on a real llama_cpp.server ...
        env.write_text(f"MODEL_BACKEND=openai\nOPENAI_BASE_URL={llama_server}\nOPENAI_HEAVY_MODEL=gemma\n"
                       f"OPENAI_LIGHT_MODEL=gemma\nAPI_ADMIN_KEYS={ADMIN}\n")
        assert _reload(url, key=None).status_code == 401
        assert _reload(url, key="wrong").status_code == 401
        answer = _reload(url)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "reloaded", "backend": "openai",
                                 "tiers": {"heavy": "gemma", "light": "gemma"}}
        # ... new requests go to the new backend while the old stream is still running
        assert "backend" not in finished or "last" not in finished
        new = _chat(url)
        assert new.status_code == 200 and new.headers["x-agentic-backend"] == "openai"
        assert new.json()["model"] == "gemma"
        reader.join(timeout=None)
        assert finished == {"backend": "llama_cpp", "last": "length", "done": True}

        # A bad config is refused with the reason, and the running one keeps serving.
        env.write_text(f"MODEL_BACKEND=llama_cpp\nMODEL_7B_PATH={tmp_path / 'missing.gguf'}\nAPI_ADMIN_KEYS={ADMIN}\n")
        refused = _reload(url)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "reload_refused" and "missing.gguf" in error["message"]
        assert "previous configuration keeps serving" in error["message"]
        assert _chat(url).headers["x-agentic-backend"] == "openai"

        # SIGHUP does the same as the admin route.
        env.write_text(f"MODEL_BACKEND=llama_cpp\nAPI_ADMIN_KEYS={ADMIN}\n")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/v1/backend").json()["backend"] != "llama_cpp" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _chat(url).headers["x-agentic-backend"] == "llama_cpp"
        metrics = httpx.get(f"{url}/metrics").text
        assert 'agentic_reloads_total{result="ok"} 2.0' in metrics
        assert 'agentic_reloads_total{result="refused"} 1.0' in metrics
    finally:
        stop(process)
    log = next(tmp_path.glob("agentic-*.log")).read_text()
    assert log.count("freeing the previous configuration") == 2  # each old manager freed once its requests ended


async def test_admin_route_is_off_without_admin_keys() -> None:
    with ModelManager(make_settings(model_n_threads=2)) as manager:
        app = create_app(make_settings(), manager, env_file=None)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            answer = await client.post("/admin/reload")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "admin_disabled" and "API_ADMIN_KEYS" in answer.json()["error"]["message"]
