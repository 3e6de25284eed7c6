"""Tool calls: how many are valid, ours against llama.cpp's `llama-server --jinja`, same GGUF, same threads.

    .venv/bin/python benchmarks/tools.py [--requests 100] [--llama-server PATH]

100 chat requests (8 at a time) offering 3 tools, each request's question written for one of them, with
tool_choice "required" and then "auto", temperature 0.7, max_tokens 128. A call counts as valid when it
names an offered tool and its arguments parse and validate against that tool's parameters; "right" when
it is also the tool the question was written for. llama-server runs the model's own chat template
(`--jinja`; Gemma 3's has no tool support, so llama-server uses its generic tool-call format).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
from load import Server
from peer import report, setup

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city", "unit"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two whole numbers.",
                                      "parameters": {"type": "object", "properties": {
                                          "a": {"type": "integer"}, "b": {"type": "integer"}},
                                          "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "find_flights", "description": "Flights between two airports on a day.",
                                      "parameters": {"type": "object", "properties": {
                                          "origin": {"type": "string"}, "destination": {"type": "string"},
                                          "date": {"type": "string"}}, "required": ["origin", "destination", "date"]}}},
]
QUESTIONS = [("What is the weather in {city}?", "get_weather"), ("How much is {a} plus {b}?", "add"),
             ("Find me a flight from {city} to Rome on 2027-03-{day:02d}.", "find_flights")]
CITIES = ["Paris", "Lagos", "Lima", "Osaka", "Oslo", "Cairo", "Quito", "Perth", "Dakar", "Hanoi"]


def _request(index: int) -> tuple[str, str]:
    template, tool = QUESTIONS[index % len(QUESTIONS)]
    return template.format(city=CITIES[index % len(CITIES)], a=index, b=index * 7, day=index % 28 + 1), tool


def _judge(answer: dict[str, Any], expected: str) -> tuple[bool, bool]:
    calls = (answer.get("choices") or [{}])[0].get("message", {}).get("tool_calls") or []
    if not calls:
        return False, False
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}
    try:
        for call in calls:
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
    except (KeyError, json.JSONDecodeError, jsonschema.ValidationError, TypeError):
        return False, False
    return True, calls[0]["function"]["name"] == expected


def workload(choice: str, requests: int) -> Any:
    def run(server: Server) -> dict[str, float]:
        def one(index: int) -> tuple[bool, bool]:
            question, expected = _request(index)
            body = {"model": server.model, "messages": [{"role": "user", "content": question}], "tools": TOOLS,
                    "tool_choice": choice, "max_tokens": 128, "temperature": 0.7}
            with httpx.Client(timeout=600) as client:
                response = client.post(f"{server.url}/v1/chat/completions", json=body)
            return _judge(response.json(), expected) if response.status_code == 200 else (False, False)

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            judged = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
        return {"valid_pct": 100 * sum(v for v, _ in judged) / requests,
                "right_tool_pct": 100 * sum(r for _, r in judged) / requests, "requests_per_s": requests / wall}
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    args, binary, gguf, threads = setup(parser)
    ours = Server.agentic(8121, {"MODEL_PARALLEL": "8", "MODEL_CONTEXT_SIZE": "2048", "MODEL_PRELOAD": "true",
                                 "MODEL_N_THREADS": str(threads), "API_MAX_QUEUE": "256"})
    peer = Server("llama-server", [str(binary), "-m", str(gguf), "--port", "8122", "--host", "127.0.0.1",
                                   "-t", str(threads), "-tb", str(threads), "--parallel", "8", "-c", str(2048 * 8),
                                   "--jinja", "-a", "gemma", "--no-webui"], 8122, "gemma",
                  {"LD_LIBRARY_PATH": str(binary.parent)})
    rows = {f"tool_choice {choice}, 3 tools": workload(choice, args.requests) for choice in ("required", "auto")}
    figures: dict[str, list[dict[str, float]]] = {}
    with ours, peer:
        for row, run in rows.items():
            for server in (ours, peer):
                figures.setdefault(f"{row}/{server.name}", []).append(run(server))
                print(f"  {row} {server.name}: {figures[f'{row}/{server.name}'][-1]}", flush=True)
    report(list(rows), figures, title=f"Tool calls, {args.requests} requests: ours vs llama-server --jinja")


if __name__ == "__main__":
    main()
