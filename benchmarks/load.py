"""Load-generation helpers for bench.py: start servers, stream requests, read RSS."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how bread rises.",
           "List reasons to learn a second language.", "Describe a busy market in the morning."]
# One client for every request (thread-safe), with no kept-alive connections: each request still opens its own
# (llama-server drops a kept-alive one after a stream), but without a new httpx.Client per request, whose SSL
# context alone takes ~25 ms of CPU on this machine and was most of every measured time to first token.
CLIENT = httpx.Client(timeout=900, limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))


def stream_once(url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streaming /v1/completions request: time to first token, tokens, whether it finished."""
    started = time.perf_counter()
    first, tokens, finished = None, 0, False
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.7, "stream": True}
    with CLIENT.stream("POST", f"{url}/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("text"):
                first = first or time.perf_counter()
                tokens += 1
            finished = finished or choices[0].get("finish_reason") is not None
    end = time.perf_counter()
    first = first or end
    return {"ttft": first - started, "tokens": tokens, "finished": finished,
            "stream_rate": tokens / (end - first) if end > first else 0.0}


def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    """`clients` concurrent clients, each sending `requests` streaming requests one after another."""
    def client(index: int) -> list[dict[str, Any]]:
        return [stream_once(url, model, PROMPTS[(index + i) % len(PROMPTS)], max_tokens) for i in range(requests)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(client, range(clients)) for r in batch]
    wall = time.perf_counter() - started
    ttfts = sorted(r["ttft"] for r in results)
    rates = sorted(r["stream_rate"] for r in results)
    return {"tokens_per_s": sum(r["tokens"] for r in results) / wall, "requests_per_s": len(results) / wall,
            "ttft_p50": statistics.median(ttfts), "ttft_p95": ttfts[round(0.95 * (len(ttfts) - 1))],
            "stream_min": rates[0], "stream_median": statistics.median(rates), "stream_max": rates[-1],
            "finished": sum(r["finished"] for r in results) / len(results)}


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """A server process started for the benchmark and stopped after it."""

    def __init__(self, name: str, command: list[str], port: int, model: str, env: dict[str, str]) -> None:
        self.name, self.command, self.model = name, command, model
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def agentic(cls, port: int, env: dict[str, str]) -> Server:
        return cls("agentic", [sys.executable, str(ROOT / "src" / "agentic" / "api" / "app.py")], port, "heavy",
                   {**env, "API_PORT": str(port)})

    @classmethod
    def peer(cls, port: int, gguf: Path, threads: int) -> Server:
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
                   "--n_ctx", "2048", "--n_threads", str(threads), "--logits_all", "False",
                   "--interrupt_requests", "False", "--model_alias", "gemma"]
        return cls("llama_cpp.server", command, port, "gemma", {})

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Server:
        log = Path(tempfile.mkdtemp(prefix="agentic-bench-")) / f"{self.name}.log"
        with log.open("wb") as output:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {log}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not start; see {log}")

    def __exit__(self, *exc_info: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=30)
