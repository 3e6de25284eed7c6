"""The GPU check: the transformers_gpu backend and llama.cpp GPU offload on a real CUDA device, each against its
raw peer on the same loaded weights (embedded Gemma 3 270M).

    python benchmarks/gpu.py [--skip-llama] [--dtypes float16 bfloat16] [--clients 16] [--max-tokens 128]

Prints one JSON line per measurement and a table at the end. Needs a CUDA build of torch (transformers part)
and a CUDA build of llama-cpp-python (llama.cpp part; CMAKE_ARGS="-DGGML_CUDA=on", see README).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from agentic.config import load_settings  # noqa: E402
from agentic.ml.model_factory import create_model_manager  # noqa: E402

PROMPTS = [f"Write a long story about a {thing} and the town around it." for thing in
           ("lighthouse keeper", "baker", "river", "clockmaker", "fox", "ship", "library", "mountain")]
ROWS: list[dict[str, Any]] = []


def record(**row: Any) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def concurrent(call: Callable[[str], int], clients: int) -> tuple[float, int]:
    """`clients` threads each make one call at once: (wall seconds, total completion tokens)."""
    counts: list[int] = []
    threads = [threading.Thread(target=lambda i=i: counts.append(call(PROMPTS[i % len(PROMPTS)])))
               for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, sum(counts)


def ours(manager: Any, max_tokens: int) -> Callable[[str], int]:
    model, lock = manager.get(heavy=True)

    def call(prompt: str) -> int:
        with lock:
            answer = model(prompt=prompt, max_tokens=max_tokens, temperature=0.0)
        return int(answer["usage"]["completion_tokens"])
    return call


def measure(label: str, call: Callable[[str], int], clients: int, runs: int = 3) -> None:
    call(PROMPTS[0])  # warm-up
    for n in sorted({1, clients}):
        rates = []
        for _ in range(runs):
            wall, tokens = concurrent(call, n)
            rates.append(tokens / wall)
        record(what=label, clients=n, tokens_per_s=round(statistics.median(rates), 1))


def transformers_part(dtype: str, clients: int, max_tokens: int) -> None:
    import torch

    settings = load_settings(env_file=None, model_backend="transformers_gpu", gpu_torch_dtype=dtype,
                             model_parallel=clients, model_context_size=2048)
    started = time.perf_counter()
    manager = create_model_manager(settings)
    model, lock = manager.get(heavy=True)
    record(what=f"transformers {dtype} load", seconds=round(time.perf_counter() - started, 1),
           device=str(model.device), dtype=str(model.model.dtype))
    with lock:
        text = model(prompt=PROMPTS[0], max_tokens=48, temperature=0.0)["choices"][0]["text"]
    record(what=f"transformers {dtype} sample", text=text)
    measure(f"transformers {dtype} ours", ours(manager, max_tokens), clients)
    hf, tokenizer = model.model, model.tokenizer
    tokenizer.padding_side = "left"

    def raw(prompt: str) -> int:  # the peer: HF generate, one prompt per call (calls serialize on the GPU)
        ids = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = hf.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        return int(out.shape[1] - ids["input_ids"].shape[1])

    measure(f"transformers {dtype} raw generate", raw, 1)
    batch = tokenizer([PROMPTS[i % len(PROMPTS)] for i in range(clients)], return_tensors="pt",
                      padding=True).to(model.device)
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        with torch.inference_mode():
            out = hf.generate(**batch, max_new_tokens=max_tokens, do_sample=False, min_new_tokens=max_tokens)
        rates.append(clients * (out.shape[1] - batch["input_ids"].shape[1]) / (time.perf_counter() - started))
    record(what=f"transformers {dtype} raw generate, one padded batch", clients=clients,
           tokens_per_s=round(statistics.median(rates), 1))
    record(what=f"transformers {dtype} GPU memory", peak_mb=round(torch.cuda.max_memory_allocated() / 2**20))
    manager.close()


def llama_part(layers: int, clients: int, max_tokens: int) -> None:
    settings = load_settings(env_file=None, model_gpu_layers=layers, model_parallel=clients,
                             model_context_size=2048)
    started = time.perf_counter()
    manager = create_model_manager(settings)
    manager.get(heavy=True)
    record(what=f"llama.cpp gpu_layers={layers} load", seconds=round(time.perf_counter() - started, 1))
    measure(f"llama.cpp gpu_layers={layers} ours", ours(manager, max_tokens), clients)
    manager.close()


def llama_raw(layers: int, max_tokens: int) -> None:
    from llama_cpp import Llama

    from agentic.ml.default_model import embedded_model_path

    path = embedded_model_path(load_settings(env_file=None).model_cache_dir)
    raw = Llama(model_path=str(path), n_gpu_layers=layers, n_ctx=2048, verbose=False)
    lock = threading.Lock()

    def call(prompt: str) -> int:
        with lock:
            answer = raw(prompt, max_tokens=max_tokens, temperature=0.0)
        return int(answer["usage"]["completion_tokens"])
    measure(f"llama.cpp gpu_layers={layers} raw Llama", call, 1)
    raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    if not args.skip_transformers:
        for dtype in args.dtypes:
            transformers_part(dtype, args.clients, args.max_tokens)
    if not args.skip_llama:
        for layers in (99, 0):
            llama_part(layers, args.clients, args.max_tokens)
            llama_raw(layers, args.max_tokens)
    print("\n| measurement | clients | tokens/s |\n|---|---|---|")
    for row in ROWS:
        if "tokens_per_s" in row:
            print(f"| {row['what']} | {row['clients']} | {row['tokens_per_s']} |")


if __name__ == "__main__":
    main()
