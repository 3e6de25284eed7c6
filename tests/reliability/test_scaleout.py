"""Several OpenAI-compatible servers behind one backend: spread by load, a killed one taken out."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agentic.ml.backends.endpoints import BACKOFF_START
from agentic.ml.openai_model_manager import OpenAIModelManager
from conftest import SLOW_MACHINE_TIMEOUT, make_settings, start_llama_server, stop


@pytest.fixture()
def three_servers(gemma_path: Path, tmp_path: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    servers: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for _ in range(3):
            servers.append(start_llama_server(gemma_path, tmp_path))
        yield servers
    finally:
        for _, process in servers:
            stop(process)


@pytest.mark.slow
def test_load_is_spread_and_a_killed_server_is_taken_out_then_probed_back(
    three_servers: list[tuple[str, subprocess.Popen[bytes]]], gemma_path: Path, tmp_path: Path
) -> None:
    urls = [url for url, _ in three_servers]
    settings = make_settings(model_backend="openai", openai_base_url=",".join(urls), openai_heavy_model="gemma",
                             openai_light_model="gemma", openai_timeout=SLOW_MACHINE_TIMEOUT)
    with OpenAIModelManager(settings) as manager:
        model, lock = manager.get(heavy=True)

        def ask(index: int) -> str:
            with lock:
                result = model(prompt=f"Fact number {index}:", max_tokens=8, temperature=0.7, seed=index)
            assert isinstance(result, dict)
            return str(result["choices"][0]["finish_reason"])

        endpoints = {endpoint.url: endpoint for endpoint in manager.pool.endpoints}
        dead = endpoints[urls[1]]
        with ThreadPoolExecutor(6) as pool:
            finishes = list(pool.map(ask, range(15)))
            assert all(endpoints[url].served > 0 for url in urls)  # least outstanding spreads work over all three
            later = pool.map(ask, range(15, 45))
            deadline = time.monotonic() + 30
            while dead.outstanding == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            three_servers[1][1].kill()  # in the middle of the run, with requests in flight on it
            finishes += list(later)
        assert finishes.count("length") + finishes.count("stop") == 45  # every request answered
        assert dead.failures >= 1 and not dead.in_service
        assert endpoints[urls[0]].served + endpoints[urls[2]].served >= 30

        # The dead server is not probed back while it stays dead ...
        time.sleep(BACKOFF_START * 2 ** dead.failures + 0.5)
        manager.pool.order()  # starts a probe of the taken-out server
        time.sleep(1.0)
        assert not dead.in_service
        # ... and is back in service once a server answers on its address again.
        port = int(urls[1].rsplit(":", 1)[1].split("/")[0])
        revived = _restart_on(port, gemma_path, tmp_path)
        try:
            deadline = time.monotonic() + 60
            while not dead.in_service and time.monotonic() < deadline:
                manager.pool.order()
                time.sleep(0.5)
            assert dead.in_service
        finally:
            stop(revived)


def _restart_on(port: int, gemma_path: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    import sys

    log = tmp_path / "revived.log"
    with log.open("wb") as output:
        return subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gemma_path), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
                                 "--model_alias", "gemma"], stdout=output, stderr=subprocess.STDOUT)
