"""The benchmark suite: one command, our code against the real peers on the same model and machine.

    .venv/bin/python benchmarks/bench.py [--clients 1 4 8 16] [--max-tokens 64] [--requests 2] [--skip-transformers]

Parts (each prints a table and ratios):
  1. our `model(prompt)` vs raw `llama_cpp.Llama`, one stream in process: tokens/s, time to first token
  2. our HTTP server, one streaming client, vs raw in process
  3. N concurrent streaming clients against our server and `python -m llama_cpp.server` (its best
     settings: --n_threads = cores, --logits_all False, --interrupt_requests False): aggregate tokens/s,
     TTFT p50/p95, per-stream tokens/s spread, streams that finished
  4. the transformers backend (CPU here) at 1 and 8 concurrent clients
  5. server memory (RSS) beyond the model
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import Server, load, rss_mb, stream_once  # noqa: E402

from agentic.config import load_settings, physical_cores  # noqa: E402
from agentic.ml.default_model import embedded_model_path  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper."


def in_process(max_tokens: int, runs: int = 5) -> dict[str, dict[str, float]]:
    """Part 1: raw llama_cpp.Llama vs our model(), single stream, same thread count."""
    from llama_cpp import Llama

    from agentic.ml.model_manager import ModelManager

    threads, gguf = physical_cores(), embedded_model_path(Path.home() / ".cache" / "agentic")
    raw = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, verbose=False)
    manager = ModelManager(load_settings(env_file=None, model_context_size=2048, model_n_threads=threads))
    ours, _ = manager.get(heavy=True)

    def measure(call: object) -> dict[str, float]:
        samples = []
        for _ in range(runs):
            started, first, tokens = time.perf_counter(), None, 0
            for chunk in call(PROMPT, max_tokens=max_tokens, temperature=0.7, stream=True):  # type: ignore[operator]
                if chunk["choices"][0]["text"]:
                    first = first or time.perf_counter()
                    tokens += 1
            elapsed = time.perf_counter() - started
            samples.append({"tokens_per_s": tokens / elapsed, "ttft": (first or started) - started})
        return {key: statistics.median(s[key] for s in samples) for key in samples[0]}

    measure(raw.create_completion)  # warm both: the first decodes of a context are slower
    measure(ours)
    result = {"raw llama_cpp.Llama": measure(raw.create_completion), "agentic model()": measure(ours)}
    raw.close()
    manager.close()
    return result


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    threads, gguf = physical_cores(), embedded_model_path(Path.home() / ".cache" / "agentic")
    print(f"Gemma 3 270M Q4_K_M, {threads} threads, {os.cpu_count()} CPUs, max_tokens={args.max_tokens}, "
          f"{args.requests} requests per client")

    local = in_process(args.max_tokens)
    raw, ours = local["raw llama_cpp.Llama"], local["agentic model()"]
    print_table("1. In process, one stream", ["", "tokens/s", "TTFT s"],
                [[name, f"{r['tokens_per_s']:.1f}", f"{r['ttft']:.3f}"] for name, r in local.items()]
                + [["ratio agentic/raw", f"{ours['tokens_per_s'] / raw['tokens_per_s']:.2f}x",
                    f"{ours['ttft'] / raw['ttft']:.2f}x"]])

    env = {"MODEL_N_THREADS": str(threads), "MODEL_CONTEXT_SIZE": "2048", "MODEL_PRELOAD": "true",
           "API_MAX_QUEUE": "256", "MODEL_PARALLEL": str(max(8, max(args.clients)))}
    agentic = Server.agentic(18080, env)
    peer = Server.peer(18081, gguf, threads)
    results: dict[str, dict[int, dict[str, float]]] = {}
    memory: dict[str, tuple[float, float]] = {}
    for server in (agentic, peer):
        with server:
            idle = rss_mb(server.pid)
            stream_once(server.url, server.model, "Warm up", 4)
            results[server.name] = {n: load(server.url, server.model, n, args.requests, args.max_tokens)
                                    for n in args.clients}
            memory[server.name] = (idle, rss_mb(server.pid))

    one = results["agentic"][1]
    print_table("2. HTTP, one streaming client, vs raw in process", ["", "tokens/s", "TTFT s"],
                [["agentic server", f"{one['tokens_per_s']:.1f}", f"{one['ttft_p50']:.3f}"],
                 ["ratio server/raw in process", f"{one['tokens_per_s'] / raw['tokens_per_s']:.2f}x",
                  f"{one['ttft_p50'] / raw['ttft']:.2f}x"]])

    rows = []
    for clients in args.clients:
        for name in results:
            r = results[name][clients]
            rows.append([str(clients), name, f"{r['tokens_per_s']:.1f}", f"{r['ttft_p50']:.2f}", f"{r['ttft_p95']:.2f}",
                         f"{r['stream_min']:.1f} / {r['stream_median']:.1f} / {r['stream_max']:.1f}",
                         f"{r['finished']:.0%}"])
        a, p = results["agentic"][clients], results["llama_cpp.server"][clients]
        rows.append([str(clients), "**ratio agentic/peer**", f"**{a['tokens_per_s'] / p['tokens_per_s']:.2f}x**",
                     f"{a['ttft_p50'] / p['ttft_p50']:.2f}x", f"**{a['ttft_p95'] / p['ttft_p95']:.2f}x**", "", ""])
    print_table("3. Concurrent streaming clients, our server vs llama_cpp.server",
                ["clients", "server", "aggregate tokens/s", "TTFT p50 s", "TTFT p95 s",
                 "per-stream tokens/s min / median / max", "finished"], rows)

    if not args.skip_transformers:
        tf_env = {**env, "MODEL_BACKEND": "transformers_gpu", "MODEL_PARALLEL": "8"}
        with Server.agentic(18082, tf_env) as server:
            stream_once(server.url, server.model, "Warm up", 4)
            tf = {n: load(server.url, server.model, n, 1, 32) for n in (1, 8)}
        print_table("4. transformers backend (CPU, float32), max_tokens=32",
                    ["clients", "aggregate tokens/s", "TTFT p50 s", "TTFT p95 s"],
                    [[str(n), f"{r['tokens_per_s']:.1f}", f"{r['ttft_p50']:.2f}", f"{r['ttft_p95']:.2f}"]
                     for n, r in tf.items()]
                    + [["8 vs 1", f"{tf[8]['tokens_per_s'] / tf[1]['tokens_per_s']:.2f}x", "", ""]])

    print_table("5. Server memory (RSS, MB)", ["server", "idle, model loaded", f"after {max(args.clients)} clients",
                                               "growth under load"],
                [[name, f"{idle:.0f}", f"{after:.0f}", f"{after - idle:+.0f}"]
                 for name, (idle, after) in memory.items()])


if __name__ == "__main__":
    main()
