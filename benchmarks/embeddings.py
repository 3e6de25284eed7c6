"""Embeddings: our /v1/embeddings against llama.cpp's `llama-server --embeddings`, same GGUF, same threads.

    .venv/bin/python benchmarks/embeddings.py [--rounds 3] [--llama-server PATH]

256 short texts (business ideas, 10-25 tokens each), sent as 8 requests of 32 inputs: one client at a
time, then 4 clients at once. Both servers mean-pool and normalize (llama-server `--pooling mean`, its
default normalization); both get an 8192-token batch. Rounds alternate which server goes first; the table
prints the medians and the median of the per-round ratios ours / llama-server. Also checks that both
servers' vectors for the same text point the same way (cosine).
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from load import Server
from peer import IDEAS, report, setup

TEXTS = [f"Business idea {index}: {IDEAS[index % len(IDEAS)]} for {audience}"
         for index, audience in enumerate(["students", "retirees", "small shops", "farmers", "nurses", "tourists",
                                           "parents", "cyclists"] * 32)]
BATCH = 32


def _embed(server: Server, texts: list[str]) -> list[list[float]]:
    with httpx.Client(timeout=600) as client:  # a fresh connection per request, as in peer.py
        response = client.post(f"{server.url}/v1/embeddings",
                               json={"model": server.model, "input": texts, "encoding_format": "float"})
    response.raise_for_status()
    data: list[dict[str, Any]] = response.json()["data"]
    return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]


def workload(clients: int) -> Any:
    def run(server: Server) -> dict[str, float]:
        batches = [TEXTS[start:start + BATCH] for start in range(0, len(TEXTS), BATCH)]
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            vectors = [vector for batch in pool.map(lambda texts: _embed(server, texts), batches) for vector in batch]
        wall = time.perf_counter() - started
        assert len(vectors) == len(TEXTS)
        return {"inputs_per_s": len(TEXTS) / wall, "wall_s": wall}
    return run


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (math.hypot(*a) * math.hypot(*b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args, binary, gguf, threads = setup(parser)
    ours = Server.agentic(8111, {"MODEL_CONTEXT_SIZE": "8192", "MODEL_N_THREADS": str(threads),
                                 "API_MAX_QUEUE": "256"})
    ours.model = "embedding"
    peer = Server("llama-server", [str(binary), "-m", str(gguf), "--port", "8112", "--host", "127.0.0.1",
                                   "-t", str(threads), "-tb", str(threads), "--embeddings", "--pooling", "mean",
                                   "-c", "8192", "-b", "8192", "-ub", "8192", "--parallel", "4", "-a", "gemma",
                                   "--no-webui"], 8112, "gemma", {"LD_LIBRARY_PATH": str(binary.parent)})
    rows = {"256 inputs, 32 per request, 1 client": workload(1), "256 inputs, 32 per request, 4 clients": workload(4)}
    figures: dict[str, list[dict[str, float]]] = {}
    with ours, peer:
        same = [_cosine(a, b) for a, b in zip(_embed(ours, TEXTS[:8]), _embed(peer, TEXTS[:8]), strict=True)]
        print(f"cosine of our vector and llama-server's for the same text: min {min(same):.4f}", flush=True)
        for round_index in range(args.rounds):
            order = (ours, peer) if round_index % 2 == 0 else (peer, ours)
            for row, run in rows.items():
                for server in order:
                    figures.setdefault(f"{row}/{server.name}", []).append(run(server))
                    print(f"  round {round_index + 1} {row} {server.name}: {figures[f'{row}/{server.name}'][-1]}",
                          flush=True)
    report(list(rows), figures, title="Embeddings: ours vs llama-server --embeddings")


if __name__ == "__main__":
    main()
