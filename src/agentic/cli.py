"""The `agentic` command: `agentic config | generate | analyze | serve | cost | doctor`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer
from pydantic_settings import BaseSettings

from .config import Settings, env_name, load_settings
from .cost import CostLine, PriceTable, Workload, compare
from .errors import AgenticError
from .logs import configure_logging
from .ml.model_factory import create_model_manager, describe_configuration, manager_class

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
    configure_logging(logging.WARNING if quiet else logging.INFO, "agentic: %(message)s")


@app.command()
def config(
    describe: Annotated[bool, typer.Option("--describe", "-d", help="Also explain every setting.")] = False,
) -> None:
    """Show the backend, both tiers' models and every effective setting with its source."""
    settings = _run(load_settings)
    typer.echo("\n".join(_run(lambda: describe_configuration(settings))))
    if describe:
        typer.echo("\nWhat each setting does:")
        names = [settings.model_backend, *settings.fallback_backends]
        own = [each for each in (manager_class(name).settings_class for name in names) if each is not None]
        settings_classes: list[type[BaseSettings]] = [Settings, *own]
        for settings_class in settings_classes:
            for field, info in settings_class.model_fields.items():
                typer.echo(f"  {env_name(settings_class, field)}: {info.description or ''}".rstrip())


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
    """Serve the OpenAI-compatible API (/v1/chat/completions with tools, /v1/completions, /v1/embeddings,
    /v1/models, /v1/backend, /v1/ideas/analyze, /health, /ready, /metrics) and the web console at
    http://HOST:PORT/ (its page, /console/static/..., and its data under /console/api/...: status, metrics,
    analysis runs). API_KEYS guards /v1/ and /console/api/. POST /admin/reload or SIGHUP re-reads .env without a
    restart. Limits: API_MAX_BODY_BYTES, API_MAX_CONNECTIONS, API_HEADER_TIMEOUT, API_BODY_TIMEOUT, MODEL_SCHEMA_*
    (see README)."""
    from .api.app import serve as serve_api

    _run(lambda: serve_api(load_settings(), host=host, port=port))


@app.command()
def analyze(
    ideas: Annotated[Path, typer.Argument(help="CSV with a title,description header, or JSONL of such objects.")],
    out: Annotated[Path | None, typer.Option(help="Output directory (default: runs/<file name>).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, help="Ideas in flight at once (default: MODEL_PARALLEL, or API_REMOTE_CONCURRENCY on openai).")] = None,
    retries: Annotated[int, typer.Option(min=0, help="Extra attempts when an answer does not match its schema.")] = 2,
    retry_failed: Annotated[bool, typer.Option(
        help="Run again the ideas that failed or were low quality in an earlier run.")] = False,
    hardware_per_hour: Annotated[float, typer.Option(
        min=0.0, help="What an hour of this machine costs, $ (for the local backends' cost in the report).")] = 0.0,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    cluster_threshold: Annotated[float, typer.Option(
        min=-1.0, max=1.0, help="Ideas whose embeddings' centered cosine is at least this are grouped as related "
        "in the report.")] = 0.45,
    clusters: Annotated[bool, typer.Option(help="Group related ideas by their embeddings.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log lines.")] = False,
) -> None:
    """Triage every idea with the light model and analyze it with the heavy one; write results and a report.

    Results are appended to OUT/results.jsonl as each idea finishes: after Ctrl-C or a crash, run the
    same command again and it goes on with the ideas not done yet.
    """
    from .ideas.report import build_report
    from .ideas.runner import analyze_file

    _setup_logging(quiet)
    out_dir = out or Path("runs") / ideas.stem

    def run() -> None:
        manager = create_model_manager(load_settings())
        try:
            summary = analyze_file(manager, ideas, out_dir, concurrency=concurrency, retry_failed=retry_failed,
                                   show_progress=progress, retries=retries,
                                   cluster_threshold=cluster_threshold if clusters else None)
        finally:
            manager.close()
        for problem in summary.problems:
            typer.secho(problem, fg=typer.colors.YELLOW, err=True)
        done = summary.ok + summary.low_quality + summary.failed
        if summary.skipped:
            typer.echo(f"{summary.skipped} of {summary.ideas} ideas were already done in {out_dir / 'results.jsonl'} "
                       "(skipped; --retry-failed runs the failed and low-quality ones again)")
        if done:
            typer.echo(f"{done} ideas analyzed: {summary.ok} ok, {summary.low_quality} low quality (not ranked), "
                       f"{summary.failed} failed, in {summary.wall_s:.1f} s; "
                       f"{summary.prompt_tokens:,} prompt + {summary.completion_tokens:,} completion tokens "
                       f"({summary.tokens_per_second:.1f} completion tokens/s)")
        if summary.interrupted:
            typer.secho(f"Interrupted: {done} finished ideas are saved in {out_dir / 'results.jsonl'}; run the "
                        "same command again to go on.", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130)
        report = build_report(out_dir, PriceTable.load(), hardware_per_hour)
        typer.echo(f"Report: {report.html} (also {report.markdown.name}, results.jsonl, usage.db in {out_dir})")
        if summary.ideas and not summary.ok and not summary.skipped:
            raise typer.Exit(1)

    _run(run)


@app.command()
def cost(
    requests: Annotated[int, typer.Option(min=1, help="Number of calls.")] = 100,
    input_tokens: Annotated[int, typer.Option(min=0, help="Prompt tokens per call.")] = 500,
    output_tokens: Annotated[int, typer.Option(min=0, help="Completion tokens per call.")] = 500,
    from_dir: Annotated[Path | None, typer.Option(
        "--from", help="Price a finished `agentic analyze` run (its usage.db) instead of a scenario.")] = None,
    prices: Annotated[Path | None, typer.Option(help="Price table JSON (default: the shipped, dated one).")] = None,
    tokens_per_second: Annotated[float | None, typer.Option(
        help="Output tokens/s of the local backends (e.g. from `make bench`) where no run measured it.")] = None,
    hardware_per_hour: Annotated[float, typer.Option(min=0.0, help="What an hour of the local machine costs, $.")]
    = 0.0,
) -> None:
    """Cost of a workload on every backend side by side (default: the guide's 100 x 500 in / 500 out)."""
    table = _run(lambda: PriceTable.load(prices))
    if from_dir is not None:
        lines = _run(lambda: _run_costs(from_dir, table, hardware_per_hour, tokens_per_second))
    else:
        workload = Workload.uniform(requests, input_tokens, output_tokens)
        typer.echo(f"{requests} requests x ({input_tokens} in + {output_tokens} out) tokens = "
                   f"{workload.total_input:,} input + {workload.total_output:,} output tokens")
        lines = compare(workload, table, hardware_per_hour, tokens_per_second=tokens_per_second)
    typer.echo(f"Prices: {table.source}\n")
    typer.echo(f"{'backend':<17}{'model':<34}{'input $':>10}{'output $':>10}{'total $':>10}  how")
    for line in lines:
        money = [f"{value:10.4f}" if value is not None else f"{'n/a':>10}"
                 for value in (line.input_cost, line.output_cost, line.total)]
        typer.echo(f"{line.backend:<17}{line.model:<34}{''.join(money)}  {line.note}")


def _run_costs(out_dir: Path, table: PriceTable, hardware_per_hour: float,
               tokens_per_second: float | None) -> list[CostLine]:
    """Print what a finished run used; return its cost on every backend."""
    from .errors import ConfigError
    from .ideas.report import cost_of_run

    if not (out_dir / "usage.db").is_file():
        raise ConfigError(f"--from {str(out_dir)!r}: no usage.db there. Give the output directory of "
                          "`agentic analyze` (default runs/<file name>).", param="--from")
    totals, measured, lines = cost_of_run(out_dir, table, hardware_per_hour, tokens_per_second)
    calls = sum(t.calls for t in totals)
    typer.echo(f"Run in {out_dir}: {calls} calls, {sum(t.prompt_tokens for t in totals):,} input + "
               f"{sum(t.completion_tokens for t in totals):,} output tokens")
    for t in totals:
        typer.echo(f"  {t.backend} {t.tier} ({t.model}): {t.calls} calls, {t.prompt_tokens:,} in + "
                   f"{t.completion_tokens:,} out, {t.call_seconds:.1f} s in calls")
    for backend, rate in measured.items():
        typer.echo(f"  measured on {backend}: {rate:.1f} output tokens/s over the run's wall time")
    return lines


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
