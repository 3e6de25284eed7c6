"""Structured output (response_format with a JSON schema): our backends against the real peers.

    .venv/bin/python benchmarks/structured.py [--clients 1 8] [--requests 2] [--skip-transformers]

Parts (each prints a table and ratios):
  1. HTTP, N concurrent clients asking for the Triage schema: our server (grammar checked on the
     sampled token, continuous batching) vs `python -m llama_cpp.server` (its `json_object` + schema,
     llama.cpp's grammar sampler over the whole vocabulary): completion tokens/s, answers that validate
  2. In process, one request: the cost of the schema on our llama.cpp model and, with xgrammar, on
     the transformers backend (CPU), against the same request without a schema
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import print_table  # noqa: E402
from load import Server  # noqa: E402

from agentic.config import load_settings, physical_cores  # noqa: E402
from agentic.ideas.analyzer import TRIAGE_SYSTEM, idea_prompt  # noqa: E402
from agentic.ideas.schemas import Triage, response_format  # noqa: E402
from agentic.ml.default_model import embedded_model_path  # noqa: E402

IDEAS = [("Dog bakery", "Fresh dog treats delivered monthly."), ("Solar kiosk", "Phone charging at markets."),
         ("Tool library", "Borrow power tools with a membership."), ("Repair cafe", "Volunteers fix things."),
         ("Bee hives", "Beehives on office roofs."), ("Boat rentals", "Electric boats by the hour."),
         ("Coding camps", "Weekend coding camps in libraries."), ("Compost bins", "Bins that book pickups.")]


def _body(index: int, model: str, peer: bool) -> dict[str, Any]:
    title, description = IDEAS[index % len(IDEAS)]
    schema_format = response_format(Triage)
    if peer:  # llama_cpp.server takes a schema only inside json_object
        schema_format = {"type": "json_object", "schema": schema_format["json_schema"]["schema"]}
    return {"model": model, "max_tokens": 320, "temperature": 0.7, "seed": index, "response_format": schema_format,
            "messages": [{"role": "system", "content": TRIAGE_SYSTEM},
                         {"role": "user", "content": idea_prompt(title, description)}]}


def http_load(server: Server, clients: int, requests: int) -> dict[str, float]:
    """Aggregate completion tokens/s and the share of answers that validate against Triage."""
    peer = server.name != "agentic"

    def one(index: int) -> tuple[int, bool]:
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=_body(index, server.model, peer), timeout=600)
        answer.raise_for_status()
        body = answer.json()
        try:
            Triage.model_validate_json(body["choices"][0]["message"]["content"])
            valid = True
        except ValueError:
            valid = False
        return int(body["usage"]["completion_tokens"]), valid

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients * requests)))
    elapsed = time.perf_counter() - started
    return {"tokens_per_s": sum(t for t, _ in results) / elapsed, "valid": sum(v for _, v in results) / len(results),
            "seconds": elapsed}


def in_process(backend: str, max_tokens: int, runs: int = 3) -> dict[str, float]:
    """One request at a time, with and without the schema: completion tokens/s (median of `runs`)."""
    from agentic.ml.model_factory import create_model_manager

    settings = load_settings(env_file=None, model_backend=backend, model_context_size=2048,
                             model_n_threads=physical_cores())
    with create_model_manager(settings) as manager:
        model, _ = manager.get(heavy=True)
        messages = _body(0, "heavy", False)["messages"]

        def rate(schema: bool) -> float:
            samples = []
            for run in range(runs + 1):  # the first run warms up (and compiles the grammar tables)
                started = time.perf_counter()
                answer = model.create_chat_completion(
                    messages=messages, max_tokens=max_tokens, temperature=0.7, seed=run,
                    response_format=response_format(Triage) if schema else None)
                elapsed = time.perf_counter() - started
                if run:
                    samples.append(answer["usage"]["completion_tokens"] / elapsed)  # type: ignore[index]
            return statistics.median(samples)

        return {"free": rate(False), "schema": rate(True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    threads, gguf = physical_cores(), embedded_model_path(Path.home() / ".cache" / "agentic")
    print(f"Gemma 3 270M Q4_K_M, {threads} threads, Triage schema, max_tokens=320, {args.requests} requests/client")

    env = {"MODEL_N_THREADS": str(threads), "MODEL_CONTEXT_SIZE": "2048", "MODEL_PRELOAD": "true",
           "API_MAX_QUEUE": "256", "MODEL_PARALLEL": str(max(8, max(args.clients)))}
    results: dict[str, dict[int, dict[str, float]]] = {}
    for server in (Server.agentic(18090, env), Server.peer(18091, gguf, threads)):
        with server:
            http_load(server, 1, 1)  # warm-up
            results[server.name] = {n: http_load(server, n, args.requests) for n in args.clients}
    rows = []
    for clients in args.clients:
        for name, by_clients in results.items():
            r = by_clients[clients]
            rows.append([str(clients), name, f"{r['tokens_per_s']:.1f}", f"{r['valid']:.0%}", f"{r['seconds']:.1f}"])
        ours, peer = results["agentic"][clients], results["llama_cpp.server"][clients]
        rows.append([str(clients), "**ratio agentic/peer**", f"**{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x**",
                     "", ""])
    print_table("1. HTTP, Triage schema, our server vs llama_cpp.server",
                ["clients", "server", "completion tokens/s", "answers valid", "wall s"], rows)

    rows = []
    for backend in ["llama_cpp"] + ([] if args.skip_transformers else ["transformers_gpu"]):
        r = in_process(backend, 320 if backend == "llama_cpp" else 96)
        rows.append([backend, f"{r['free']:.1f}", f"{r['schema']:.1f}", f"{r['schema'] / r['free']:.2f}x"])
    print_table("2. In process, one request: free text vs the schema enforced",
                ["backend", "free text tokens/s", "with schema tokens/s", "ratio"], rows)


if __name__ == "__main__":
    main()
