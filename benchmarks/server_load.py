"""Load our API server and the peer `llama_cpp.server` on the same GGUF, in one run, and print ratios.

    python benchmarks/server_load.py [--clients 1 8] [--requests 3] [--max-tokens 64]

Each client sends streaming /v1/completions requests one after another; we measure aggregate
completion tokens/s, requests/s, time to first token (p50/p95), and how many streams ended with
a finish_reason (a stream cut off by the server has none).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from agentic.config import physical_cores  # noqa: E402
from agentic.ml.default_model import embedded_model_path  # noqa: E402

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how bread rises.",
           "List reasons to learn a second language.", "Describe a busy market in the morning."]


def stream_once(url: str, model: str, prompt: str, max_tokens: int) -> dict[str, float | int | bool]:
    """One streaming request: time to first token, completion tokens, whether it finished."""
    started = time.perf_counter()
    first, tokens, finished = None, 0, False
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.7, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            if choice.get("text"):
                first = first or time.perf_counter()
                tokens += 1
            finished = finished or choice.get("finish_reason") is not None
    return {"ttft": (first or time.perf_counter()) - started, "tokens": tokens, "finished": finished,
            "seconds": time.perf_counter() - started}


def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    """`clients` concurrent clients, each sending `requests` streaming requests in turn."""
    def client(index: int) -> list[dict[str, float | int | bool]]:
        return [stream_once(url, model, PROMPTS[(index + i) % len(PROMPTS)], max_tokens) for i in range(requests)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(client, range(clients)) for r in batch]
    wall = time.perf_counter() - started
    ttfts = sorted(float(r["ttft"]) for r in results)
    return {"tokens_per_s": sum(int(r["tokens"]) for r in results) / wall, "requests_per_s": len(results) / wall,
            "ttft_p50": statistics.median(ttfts), "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
            "finished": sum(bool(r["finished"]) for r in results) / len(results)}


def start(command: list[str], url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{command} did not start; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    gguf, threads = embedded_model_path(Path.home() / ".cache" / "agentic"), physical_cores()
    logs = Path(tempfile.mkdtemp(prefix="agentic-bench-"))
    env = {**os.environ, "MODEL_N_THREADS": str(threads), "MODEL_CONTEXT_SIZE": "2048", "MODEL_PRELOAD": "true",
           "API_PORT": "18080", "API_MAX_QUEUE": "256"}
    servers = {
        "agentic": ([sys.executable, str(ROOT / "src" / "agentic" / "api" / "app.py")], "http://127.0.0.1:18080",
                    "heavy"),
        "llama_cpp.server": ([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", "18081",
                              "--n_ctx", "2048", "--n_threads", str(threads), "--logits_all", "False",
                              "--interrupt_requests", "False", "--model_alias", "gemma"],
                             "http://127.0.0.1:18081", "gemma"),
    }
    results: dict[str, dict[int, dict[str, float]]] = {}
    for name, (command, url, model) in servers.items():
        process = start(command, url, env, logs / f"{name}.log")
        try:
            stream_once(url, model, "Warm up", 4)
            results[name] = {n: load(url, model, n, args.requests, args.max_tokens) for n in args.clients}
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"Gemma 3 270M Q4_K_M, {threads} threads, {args.requests} requests/client, max_tokens={args.max_tokens}")
    print("| clients | server | tokens/s | requests/s | TTFT p50 s | TTFT p95 s | streams finished |")
    print("|---|---|---|---|---|---|---|")
    for clients in args.clients:
        for name in servers:
            r = results[name][clients]
            print(f"| {clients} | {name} | {r['tokens_per_s']:.1f} | {r['requests_per_s']:.2f} | {r['ttft_p50']:.2f} "
                  f"| {r['ttft_p95']:.2f} | {r['finished']:.0%} |")
        ours, peer = results["agentic"][clients], results["llama_cpp.server"][clients]
        print(f"| {clients} | ratio agentic/peer | {ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x | | "
              f"{ours['ttft_p50'] / peer['ttft_p50']:.2f}x | {ours['ttft_p95'] / peer['ttft_p95']:.2f}x | |")


if __name__ == "__main__":
    main()
