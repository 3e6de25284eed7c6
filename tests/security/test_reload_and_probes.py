"""Reload cannot weaken security; readiness probes are cheap, cached and quiet; URLs never show credentials."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import start_agentic_server, stop

KEY, ADMIN = "probe-test-key", "probe-admin-key"


class ModelsUpstream(BaseHTTPRequestHandler):
    """An upstream that only lists models, slowly, counting the calls; `failing` makes it answer 500."""

    calls = 0
    failing = False

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).calls += 1
        time.sleep(0.3)
        if self.failing:
            body = json.dumps({"error": {"message": "upstream exploded " + "x" * 5000}}).encode()
            status = 500
        else:
            body = json.dumps({"object": "list", "data": [{"id": "gemma", "object": "model"}]}).encode()
            status = 200
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def upstream() -> Iterator[tuple[str, type[ModelsUpstream]]]:
    handler = type("Upstream", (ModelsUpstream,), {"calls": 0, "failing": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # credentials in the URL, as some proxies need: they must never be shown
        yield f"http://agent:s3cret-pw@127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_ready_is_cached_off_the_inference_pool_and_hides_details(
        tmp_path: Path, upstream: tuple[str, type[ModelsUpstream]]) -> None:
    base_url, handler = upstream
    url, process = start_agentic_server(tmp_path, MODEL_BACKEND="openai", OPENAI_BASE_URL=base_url,
                                        OPENAI_API_KEY="sk-unused", OPENAI_HEAVY_MODEL="gemma",
                                        OPENAI_LIGHT_MODEL="gemma", API_KEYS=KEY)
    try:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: httpx.get(f"{url}/ready", timeout=None), range(20)))
        assert {answer.status_code for answer in answers} == {200}
        assert all(answer.json() == {"status": "ready"} for answer in answers)  # no key: nothing more
        assert handler.calls <= 2  # twenty probes, one upstream check (two if the cache expired between)
        handler.failing = True
        time.sleep(2.1)  # READY_TTL: the next probe checks again
        detailed = httpx.get(f"{url}/ready", headers={"authorization": f"Bearer {KEY}"}, timeout=None)
        bare = httpx.get(f"{url}/ready", timeout=None)
        assert detailed.status_code == bare.status_code == 503 and bare.json() == {"status": "not_ready"}
        problem = detailed.json()["problem"]
        assert "127.0.0.1" in problem and "s3cret" not in problem and "agent:" not in problem
        assert len(problem) < 1000 and "trimmed" in problem  # the upstream's 5 KB error text is cut short
        backend = httpx.get(f"{url}/v1/backend", headers={"authorization": f"Bearer {KEY}"}, timeout=None).json()
        shown = backend["settings"]["OPENAI_BASE_URL"]["value"]
        assert shown.startswith("http://127.0.0.1:") and "s3cret" not in json.dumps(backend)
        log = (tmp_path / f"agentic-{url.rsplit(':', 1)[1]}.log").read_text()
        assert "s3cret" not in log
    finally:
        stop(process)


@pytest.mark.slow
def test_reload_that_would_open_a_public_server_is_refused(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(f"API_KEYS={KEY}\nAPI_ADMIN_KEYS={ADMIN}\n")
    url, process = start_agentic_server(tmp_path, API_HOST="0.0.0.0")  # listens on every interface, with keys
    url = url.replace("0.0.0.0", "127.0.0.1")
    admin = {"authorization": f"Bearer {ADMIN}"}
    try:
        assert httpx.get(f"{url}/v1/models", timeout=None).status_code == 401
        env.write_text(f"API_ADMIN_KEYS={ADMIN}\n")  # someone drops API_KEYS from .env ...
        refused = httpx.post(f"{url}/admin/reload", headers=admin, timeout=None)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "reload_refused" and "API_KEYS" in error["message"] and "0.0.0.0" in error["message"]
        assert httpx.get(f"{url}/v1/models", timeout=None).status_code == 401  # ... and the keys still hold
        process.send_signal(signal.SIGHUP)  # the same through SIGHUP: refused, logged
        log = tmp_path / f"agentic-{url.rsplit(':', 1)[1]}.log"
        deadline = time.monotonic() + 600
        while "reload refused" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Refusing to listen on 0.0.0.0 without API_KEYS" in log.read_text()
        assert httpx.get(f"{url}/v1/models", timeout=None).status_code == 401
        unnamed = httpx.post(f"{url}/admin/reload", headers={"authorization": "Bearer wrong"}, timeout=None)
        assert unnamed.status_code == 401 and "API_ADMIN_KEYS" in unnamed.json()["error"]["message"]
    finally:
        stop(process)
