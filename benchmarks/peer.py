"""Our server against llama.cpp's own C++ `llama-server`, the peer a user would pick, on every workload.

    .venv/bin/python benchmarks/peer.py [--rounds 3] [--llama-server PATH] [--proxy]

Without --llama-server it builds llama-server once (about 13 minutes on 2 cores) from the llama.cpp sources
vendored in the sdist of the installed llama-cpp-python, so both run the same llama.cpp, into
~/.cache/agentic/llama-server/<version>/. Benchmark-only: nothing in the package or the tests uses it.

Same GGUF (the embedded Gemma 3 270M), same threads (physical cores), 16 slots x 2048 tokens on both
(llama-server --parallel 16 -c 32768 --no-jinja --chat-template gemma; ours MODEL_PARALLEL=16), and a second
pair with 8 slots each. Rounds alternate which server goes first; each row prints the medians, the
median of the per-round ratios and their range. Every request opens a fresh connection (llama-server drops a kept-alive
one after a stream). --proxy adds llama-server behind our openai backend (the cost of managing llama-server
as the engine instead of running our own).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import print_table  # noqa: E402
from load import CLIENT, PROMPTS, Server, load, rss_mb  # noqa: E402

from agentic.config import load_settings, physical_cores  # noqa: E402
from agentic.ml.default_model import embedded_model_path  # noqa: E402

INSTRUCTIONS = ("You are a senior analyst who reviews business ideas for a small investment fund. For each idea, "
                "describe the target market and its size, the main competitors, the strengths and the risks, and "
                "give a score from 1 to 10 with a one-sentence reason. Be concrete, avoid generic advice, and keep "
                "each part short. ") * 6  # about 400 tokens with the chat template
IDEAS = ["a dog bakery", "a solar phone-charging kiosk", "a tool library", "a repair cafe", "rooftop bee hives",
         "electric boat rentals", "weekend coding camps", "smart compost bins", "a night market app",
         "a bicycle repair van", "a tea subscription", "a language exchange cafe", "a plant nursery for offices",
         "a used textbook exchange", "a mobile car wash", "a board game bar"]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "category": {"type": "string"},
                                           "customer": {"type": "string"}, "score": {"type": "integer"}},
          "required": ["name", "category", "customer", "score"]}
Workload = Callable[[Server], dict[str, float]]
_RUNS = itertools.count(1)


def chat(url: str, model: str, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    """One non-streaming chat completion on a fresh connection."""
    body = {"model": model, "messages": messages, **extra}
    answer = CLIENT.post(f"{url}/v1/chat/completions", json=body)
    answer.raise_for_status()
    return dict(answer.json())


def shared_prefix(server: Server) -> dict[str, float]:
    """16 requests with the same ~400-token instructions, 8 at a time: wall time and prompt tokens computed."""
    def one(idea: str) -> dict[str, Any]:
        return chat(server.url, server.model, [{"role": "system", "content": INSTRUCTIONS},
                                               {"role": "user", "content": f"Idea: {idea}."}],
                    max_tokens=64, temperature=0.7)

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, IDEAS))
    wall = time.perf_counter() - started
    prompt = sum(a["usage"]["prompt_tokens"] for a in answers)
    cached = sum(_cached(a) for a in answers)
    return {"wall_s": wall, "prompt_tokens": prompt, "computed": prompt - cached,
            "tokens_per_s": sum(a["usage"]["completion_tokens"] for a in answers) / wall}


def long_prefix(server: Server) -> dict[str, float]:
    """8 requests one after another, each ~1,200 tokens of the same instructions (past Gemma 3's 512-token sliding
    window) and a different idea, with 0.3 s between them (a user reading the answer; long enough for our engine
    to move idle cells to host memory): the time the 8 requests took and prompt tokens computed. Each run's
    instructions begin with a new number, so that no run finds an earlier one's prompts cached."""
    instructions = f"Review number {next(_RUNS)}. " + INSTRUCTIONS * 3
    prompt = computed = generated = 0
    busy = 0.0
    for idea in IDEAS[:8]:
        started = time.perf_counter()
        answer = chat(server.url, server.model, [{"role": "system", "content": instructions},
                                                 {"role": "user", "content": f"Idea: {idea}."}],
                      max_tokens=32, temperature=0.7)
        busy += time.perf_counter() - started
        prompt += answer["usage"]["prompt_tokens"]
        computed += answer["usage"]["prompt_tokens"] - _cached(answer)
        generated += answer["usage"]["completion_tokens"]
        time.sleep(0.3)
    return {"wall_s": busy, "prompt_tokens": prompt, "computed": computed, "tokens_per_s": generated / busy}


def conversations(server: Server) -> dict[str, float]:
    """4 users with the same instructions take turns, one request at a time, 3 turns each (each turn sends the
    conversation so far): wall time and prompt tokens computed. A user's next turn finds its history cached only
    when the other users' prompts in between did not take its cells."""
    histories = [[{"role": "system", "content": INSTRUCTIONS}] for _ in range(4)]
    prompt = computed = generated = 0
    started = time.perf_counter()
    for turn in range(3):
        for user, history in enumerate(histories):
            history.append({"role": "user", "content": f"Idea: {IDEAS[user]}." if turn == 0 else
                            "Go on: what would you check first?"})
            answer = chat(server.url, server.model, history, max_tokens=48, temperature=0.7)
            history.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
            prompt += answer["usage"]["prompt_tokens"]
            computed += answer["usage"]["prompt_tokens"] - _cached(answer)
            generated += answer["usage"]["completion_tokens"]
    wall = time.perf_counter() - started
    return {"wall_s": wall, "prompt_tokens": prompt, "computed": computed, "tokens_per_s": generated / wall}


def _cached(answer: dict[str, Any]) -> int:
    details = answer["usage"].get("prompt_tokens_details") or {}
    if "cached_tokens" in details:
        return int(details["cached_tokens"])
    return int((answer.get("timings") or {}).get("cache_n", 0))  # llama-server's own field


def structured(server: Server) -> dict[str, float]:
    """8 clients, identical prompts, a json_schema of 3 strings + an integer: tokens/s and valid answers."""
    schema_format = {"type": "json_schema", "json_schema": {"name": "idea", "schema": SCHEMA}}

    def one(_: int) -> dict[str, Any]:
        return chat(server.url, server.model, [{"role": "user", "content": "Describe a business idea as JSON with "
                                                                           "name, category, customer and score."}],
                    max_tokens=256, temperature=0.7, response_format=schema_format)

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    wall = time.perf_counter() - started
    valid = sum(_valid(a) for a in answers)
    tokens = sum(a["usage"]["completion_tokens"] for a in answers)
    return {"tokens_per_s": tokens / wall, "valid_pct": 100 * valid / len(answers), "valid_per_s": valid / wall}


def _valid(answer: dict[str, Any]) -> bool:
    choice = answer["choices"][0]
    try:
        value = json.loads(choice["message"]["content"])
    except (json.JSONDecodeError, TypeError):
        return False
    return (choice["finish_reason"] == "stop" and isinstance(value, dict) and set(SCHEMA["required"]) <= set(value)
            and isinstance(value["score"], int))


def streaming(clients: int, max_tokens: int) -> Workload:
    # One client sends 8 requests in a row: 3 (about 4 s a server) left a round's ratio within +-5% noise.
    def run(server: Server) -> dict[str, float]:
        return load(server.url, server.model, clients, 1 if clients > 1 else 8, max_tokens)
    return run


def idle_memory(server: Server) -> dict[str, float]:
    return {"rss_mb": rss_mb(server.pid)}


def llama_server_binary(explicit: str | None) -> Path:
    """The llama-server built from the installed llama-cpp-python's own llama.cpp sources (built once)."""
    if explicit:
        return Path(explicit)
    import importlib.metadata

    version = importlib.metadata.version("llama-cpp-python")
    cache = Path.home() / ".cache" / "agentic" / "llama-server" / version
    binary = cache / "llama-server"
    if binary.is_file():
        return binary
    work = Path(tempfile.mkdtemp(prefix="llama-server-build-"))
    print(f"Building llama-server {version} in {work} (once, about 13 minutes on 2 cores) ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(work),
                    f"llama-cpp-python=={version}"], check=True)
    subprocess.run(["tar", "xzf", str(next(work.glob("*.tar.gz"))), "-C", str(work)], check=True)
    source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    subprocess.run(["cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TOOLS=ON",
                    "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_UI=OFF",
                    "-DLLAMA_USE_PREBUILT_UI=OFF"], cwd=source, check=True)
    subprocess.run(["cmake", "--build", "build", "--target", "llama-server", "-j", str(physical_cores())],
                   cwd=source, check=True)
    cache.mkdir(parents=True, exist_ok=True)
    for built in (source / "build" / "bin").iterdir():  # the binary and the shared libraries it loads
        target = cache / built.name
        target.write_bytes(built.read_bytes())
        target.chmod(0o755)
    return binary


def setup(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Path, Path, int]:
    """--llama-server parsed with the script's own options: (args, llama-server binary, the GGUF, threads)."""
    parser.add_argument("--llama-server", help="a llama-server binary (default: build it once from the sources)")
    args = parser.parse_args()
    gguf = embedded_model_path(load_settings(env_file=None).model_cache_dir)
    return args, llama_server_binary(args.llama_server), gguf, physical_cores()


def servers(binary: Path, gguf: Path, slots: int, threads: int) -> tuple[Server, Server]:
    ours = Server.agentic(8101, {"MODEL_PARALLEL": str(slots), "MODEL_CONTEXT_SIZE": "2048", "MODEL_PRELOAD": "true",
                                 "MODEL_N_THREADS": str(threads), "API_MAX_QUEUE": "256"})
    peer = Server("llama-server", [str(binary), "-m", str(gguf), "--port", "8102", "--host", "127.0.0.1",
                                   "-t", str(threads), "-tb", str(threads), "--parallel", str(slots),
                                   "-c", str(2048 * slots), "--no-jinja", "--chat-template", "gemma",
                                   "-a", "gemma", "--no-webui"], 8102, "gemma",
                  {"LD_LIBRARY_PATH": str(binary.parent)})
    return ours, peer


def compare(rows: dict[str, Workload], pair: tuple[Server, Server], rounds: int,
            figures: dict[str, list[dict[str, float]]]) -> None:
    """Alternating rounds of every row on both servers; appends each run's figures under 'row/server'."""
    for round_index in range(rounds):
        order = pair if round_index % 2 == 0 else pair[::-1]
        for row, workload in rows.items():
            for server in order:
                figures.setdefault(f"{row}/{server.name}", []).append(workload(server))
                print(f"  round {round_index + 1} {row} {server.name}: {figures[f'{row}/{server.name}'][-1]}",
                      flush=True)


def report(rows: list[str], figures: dict[str, list[dict[str, float]]], ours_name: str = "agentic",
           title: str = "Ours vs llama-server") -> None:
    table = []
    for row in rows:
        ours, peer = figures[f"{row}/{ours_name}"], figures[f"{row}/llama-server"]
        for metric in ours[0]:
            ratios = [a[metric] / b[metric] for a, b in zip(ours, peer, strict=True) if b[metric]]
            table.append([row, metric, f"{statistics.median(a[metric] for a in ours):.2f}",
                          f"{statistics.median(b[metric] for b in peer):.2f}",
                          f"**{statistics.median(ratios):.2f}x**" if ratios else "-",
                          f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"])
    print_table(f"{title} (medians over alternating rounds; ratio = median of per-round ours/peer)",
                ["workload", "metric", ours_name, "llama-server", "ratio", "per-round ratios"], table)


def proxied(binary: Path, gguf: Path, threads: int) -> tuple[Server, Server]:
    """Design 2 of issue 11: agentic's openai backend in front of a llama-server, against that llama-server."""
    _, peer = servers(binary, gguf, 16, threads)
    proxy = Server.agentic(8103, {"MODEL_BACKEND": "openai", "OPENAI_BASE_URL": f"{peer.url}/v1",
                                  "OPENAI_API_KEY": "unused", "OPENAI_HEAVY_MODEL": peer.model,
                                  "OPENAI_LIGHT_MODEL": peer.model, "API_REMOTE_CONCURRENCY": "16"})
    proxy.name = "agentic->llama-server"
    return proxy, peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--proxy", action="store_true",
                        help="also measure llama-server behind agentic's openai backend (a managed llama-server's "
                             "cost: the proxy hop per token)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only the rows whose name contains TEXT (repeatable), e.g. --only '1 streaming'")
    args, binary, gguf, threads = setup(parser)
    figures: dict[str, list[dict[str, float]]] = {}
    sixteen = {"idle memory, 16 slots": idle_memory, "1 streaming client, 64 tokens": streaming(1, 64),
               "16 clients, 64 tokens": streaming(16, 64), "16 clients, 256 tokens": streaming(16, 256),
               "shared ~400-token prefix, 16 requests 8 at a time": shared_prefix,
               "4 conversations taking turns, 3 turns each": conversations,
               "shared ~1,200-token prefix, 8 requests one at a time": long_prefix,
               "structured json_schema, 8 clients": structured}
    eight = {"8 clients, 64 tokens, 8 slots each": streaming(8, 64)}
    if args.only:
        sixteen, eight = ({row: run for row, run in rows.items() if any(text in row for text in args.only)}
                          for rows in (sixteen, eight))
    print(f"Gemma 3 270M Q4_K_M, {threads} threads, prompts {PROMPTS[0]!r}...", flush=True)
    for slots, rows in ((16, sixteen), (8, eight)):
        if not rows:
            continue
        ours, peer = servers(binary, gguf, slots, threads)
        with ours, peer:
            compare(rows, (ours, peer), args.rounds, figures)
    report([*sixteen, *eight], figures)
    if args.proxy:
        rows = {"1 streaming client, 64 tokens": streaming(1, 64), "16 clients, 64 tokens": streaming(16, 64)}
        proxy, peer = proxied(binary, gguf, threads)
        proxied_figures: dict[str, list[dict[str, float]]] = {}
        with peer, proxy:
            compare(rows, (proxy, peer), args.rounds, proxied_figures)
        report(list(rows), proxied_figures, proxy.name, "llama-server behind agentic's openai backend vs llama-server")


if __name__ == "__main__":
    main()
