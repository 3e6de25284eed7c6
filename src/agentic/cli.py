"""The `agentic` command: `agentic config | generate | serve | cost | doctor`."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer

from .config import Settings, load_settings
from .cost import PriceTable, Workload, api_cost, local_cost
from .errors import AgenticError
from .ml.model_factory import create_model_manager, describe_configuration

__all__ = ["app", "main"]

app = typer.Typer(
    help="Run the same LLM code on llama.cpp (default), the OpenAI API or transformers. "
    "Settings come from .env and the environment; see `agentic config`.",
    no_args_is_help=True,
    add_completion=False,
)
T = TypeVar("T")


def _run(action: Callable[[], T]) -> T:
    """Run a command; an agentic error becomes one clear message and exit code 2, never a traceback."""
    try:
        return action()
    except AgenticError as exc:
        typer.secho(f"Error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="agentic: %(message)s",
                        stream=sys.stderr)


@app.command()
def config(
    describe: Annotated[bool, typer.Option("--describe", "-d", help="Also explain every setting.")] = False,
) -> None:
    """Show the backend, both tiers' models and every effective setting with its source."""
    settings = _run(load_settings)
    typer.echo("\n".join(describe_configuration(settings)))
    if describe:
        typer.echo("\nWhat each setting does:")
        for field, info in Settings.model_fields.items():
            typer.echo(f"  {Settings.env_name(field)}: {info.description}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt to complete (or the user message with --chat).")],
    light: Annotated[bool, typer.Option("--light", help="Use the light tier instead of the heavy one.")] = False,
    chat: Annotated[bool, typer.Option("--chat", help="Send the prompt as a chat message.")] = False,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")] = 0.7,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log lines, just the text.")] = False,
) -> None:
    """Generate text with the configured backend, streaming it as it comes."""
    _setup_logging(quiet)

    def stream() -> None:
        manager = create_model_manager(load_settings())
        try:
            model, lock = manager.get(heavy=not light)
            started = time.perf_counter()
            with lock:
                if chat:
                    result = model.create_chat_completion(messages=[{"role": "user", "content": prompt}],
                                                          max_tokens=max_tokens, temperature=temperature,
                                                          seed=seed, stream=True)
                else:
                    result = model(prompt=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed,
                                   stream=True)
                last = _echo_chunks(cast(Iterator[dict[str, Any]], result))
            elapsed = time.perf_counter() - started
        finally:
            manager.close()
        usage = last.get("usage", {})
        if not quiet:
            typer.echo(f"[{model.backend} {model.name}: {usage.get('prompt_tokens', 0)} prompt + "
                       f"{usage.get('completion_tokens', 0)} completion tokens in {elapsed:.2f}s, "
                       f"finish_reason={last['choices'][0]['finish_reason']}]", err=True)

    _run(stream)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default: API_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: API_PORT, 8000).")] = None,
) -> None:
    """Serve the OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /metrics)."""
    from .api.app import serve as serve_api

    _run(lambda: serve_api(load_settings(), host=host, port=port))


@app.command()
def cost(
    requests: Annotated[int, typer.Option(min=1, help="Number of calls.")] = 100,
    input_tokens: Annotated[int, typer.Option(min=0, help="Prompt tokens per call.")] = 500,
    output_tokens: Annotated[int, typer.Option(min=0, help="Completion tokens per call.")] = 500,
    prices: Annotated[Path | None, typer.Option(help="Price table JSON (default: the shipped, dated one).")] = None,
    tokens_per_second: Annotated[float | None, typer.Option(
        help="Measured output tokens/s of the local backends (e.g. from `make bench`).")] = None,
    hardware_per_hour: Annotated[float, typer.Option(min=0.0, help="What an hour of the local machine costs, $.")]
    = 0.0,
) -> None:
    """Cost of a workload on every backend side by side (default: the guide's 100 x 500 in / 500 out)."""
    table = _run(lambda: PriceTable.load(prices))
    workload = Workload(requests, input_tokens, output_tokens)
    lines = [api_cost(model, workload, table) for model in table.prices]
    lines += [local_cost(backend, label, workload, tokens_per_second, hardware_per_hour)
              for backend, label in (("llama_cpp", "MODEL_7B_PATH / MODEL_1B_PATH"),
                                     ("transformers_gpu", "GPU_HEAVY_MODEL / GPU_LIGHT_MODEL"))]
    typer.echo(f"{requests} requests x ({input_tokens} in + {output_tokens} out) tokens = "
               f"{workload.total_input:,} input + {workload.total_output:,} output tokens")
    typer.echo(f"Prices: {table.source}\n")
    typer.echo(f"{'backend':<17}{'model':<34}{'input $':>10}{'output $':>10}{'total $':>10}  how")
    for line in lines:
        money = [f"{value:10.4f}" if value is not None else f"{'n/a':>10}"
                 for value in (line.input_cost, line.output_cost, line.total)]
        typer.echo(f"{line.backend:<17}{line.model:<34}{''.join(money)}  {line.note}")


@app.command()
def doctor() -> None:
    """Preflight checks of the configured backend, each failure with its fix; exit code 1 if any fails."""
    from .doctor import run_checks

    checks = _run(lambda: run_checks(load_settings()))
    width = max(len(check.name) for check in checks)
    for check in checks:
        mark = typer.style("PASS", fg=typer.colors.GREEN) if check.ok else typer.style("FAIL", fg=typer.colors.RED)
        typer.echo(f"{mark}  {check.name:<{width}}  {check.detail}")
        if not check.ok and check.fix:
            typer.echo(f"      {'':<{width}}  fix: {check.fix}")
    failed = sum(not check.ok for check in checks)
    typer.echo(f"\n{len(checks) - failed} passed, {failed} failed")
    if failed:
        raise typer.Exit(1)


def _echo_chunks(chunks: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Print streamed text as it arrives; return the last chunk (finish_reason, usage)."""
    last: dict[str, Any] = {}
    for chunk in chunks:
        choice = chunk["choices"][0]
        typer.echo(choice.get("text") or choice.get("delta", {}).get("content") or "", nl=False)
        last = chunk
    typer.echo()
    return last


def main() -> None:
    """Entry point of the `agentic` console script."""
    app()


if __name__ == "__main__":
    main()
