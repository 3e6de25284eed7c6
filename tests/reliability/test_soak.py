"""A bounded soak: thousands of mixed requests on a real server; each valid one answered exactly once.

AGENTIC_SOAK_REQUESTS sets the count (default 2000). The figures are printed for the closing notes.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import start_agentic_server, stop

REQUESTS = int(os.environ.get("AGENTIC_SOAK_REQUESTS", "2000"))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    url, process = start_agentic_server(tmp_path_factory.mktemp("soak"), MODEL_CONTEXT_SIZE="256",
                                        MODEL_PARALLEL="8", API_MAX_QUEUE="256", MODEL_PRELOAD="true")
    yield url, process.pid
    stop(process)


class Soak:
    """One kind of request each call; counts what came back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(base_url=url, timeout=None)
        self.outcomes: Counter[str] = Counter()
        self.request_ids: list[str] = []
        self.lock = threading.Lock()

    def _done(self, outcome: str, request_id: str | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if request_id:
                self.request_ids.append(request_id)

    def chat(self, index: int) -> None:
        answer = self.client.post("/v1/chat/completions", json={
            "model": "heavy", "messages": [{"role": "user", "content": f"Say {index}"}],
            "max_tokens": 1 + index % 4, "temperature": 0.7})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["choices"][0]["finish_reason"] in {"stop", "length"} and body["usage"]["completion_tokens"] >= 1
        self._done("chat", answer.headers["x-request-id"])

    def stream(self, index: int) -> None:
        body = {"model": "light", "prompt": f"Count {index}:", "max_tokens": 2 + index % 5, "stream": True}
        with self.client.stream("POST", "/v1/completions", json=body) as streamed:
            assert streamed.status_code == 200
            lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
            request_id = streamed.headers["x-request-id"]
        finishes = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in lines[:-1]]
        assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
        assert [f for f in finishes if f] in (["stop"], ["length"])  # exactly one end per answer
        self._done("stream", request_id)

    def cancelled(self, index: int) -> None:
        with self.client.stream("POST", "/v1/chat/completions", json={
                "model": "heavy", "messages": [{"role": "user", "content": f"Tell a long story {index}"}],
                "max_tokens": 200, "stream": True}) as streamed:
            assert streamed.status_code == 200
            lines = streamed.iter_lines()
            next(line for line in lines if line.startswith("data: "))  # one event, then hang up
        self._done("cancelled")

    def invalid(self, index: int) -> None:
        kind = index % 5
        if kind == 0:
            answer = self.client.post("/v1/chat/completions", content=b"{not json",
                                      headers={"content-type": "application/json"})
        elif kind == 1:
            answer = self.client.post("/v1/chat/completions", json={
                "model": "heavy", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})
        elif kind == 2:
            answer = self.client.post("/v1/chat/completions", json={
                "model": "gpt-99", "messages": [{"role": "user", "content": "x"}]})
        elif kind == 3:
            answer = self.client.post("/v1/completions", json={"model": "light", "prompt": "word " * 400})
        else:
            answer = self.client.post("/v1/chat/completions", json={"model": "heavy", "messages": []})
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.json()["error"]["message"]
        self._done(f"invalid-{answer.status_code}")


@pytest.mark.slow
@pytest.mark.timeout(7200)  # 2,000 requests: ~70 s here, but a busy machine must make it slower, not red
def test_soak_mixed_requests(soak_server: tuple[str, int]) -> None:
    url, pid = soak_server
    soak = Soak(url)
    kinds = [soak.chat] * 40 + [soak.stream] * 20 + [soak.cancelled] * 15 + [soak.invalid] * 25
    plan = [random.Random(index).choice(kinds) for index in range(REQUESTS)]
    warmup = 100
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: plan[i](i), range(warmup)))
        time.sleep(1.0)
        rss_before = _rss_kb(pid)
        started = time.perf_counter()
        list(pool.map(lambda i: plan[i](i), range(warmup, REQUESTS)))
        elapsed = time.perf_counter() - started
    time.sleep(1.0)
    rss_after = _rss_kb(pid)
    metrics = soak.client.get("/metrics").text
    valid = soak.outcomes["chat"] + soak.outcomes["stream"]
    print(f"\nsoak: {REQUESTS} requests in {elapsed + 0:.1f} s after {warmup} warm-up "
          f"({(REQUESTS - warmup) / elapsed:.1f} requests/s), outcomes {dict(soak.outcomes)}, "
          f"RSS {rss_before / 1024:.0f} MB -> {rss_after / 1024:.0f} MB ({(rss_after / rss_before - 1) * 100:+.1f}%)")
    assert sum(soak.outcomes.values()) == REQUESTS
    assert len(set(soak.request_ids)) == len(soak.request_ids) == valid  # each valid request answered once
    ok = _metric_sum(metrics, "agentic_requests_total", status="200")
    hung_up = _metric_sum(metrics, "agentic_requests_total", status="499")
    # The server logged each valid request once; a cancelled stream is a 499, or a 200 when it ended first.
    assert ok + hung_up == valid + soak.outcomes["cancelled"] and ok >= valid
    assert _metric_sum(metrics, "agentic_requests_total", status="500") == 0
    assert _metric_sum(metrics, "agentic_in_flight") == 0 and _metric_sum(metrics, "agentic_queue_depth") == 0
    assert rss_after < rss_before * 1.10
