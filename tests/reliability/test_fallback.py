"""MODEL_FALLBACK: a failing primary backend hands the request to the next backend's same tier."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentic.errors import InvalidRequestError, UpstreamTimeoutError
from agentic.ml.backends.fallback import FallbackManager
from agentic.ml.model_factory import create_model_manager
from conftest import make_settings, start_agentic_server, stop
from faults import SECRET, dead_url, fault_server

GEMMA = "gemma-3-270m-q4_k_m.gguf"


def _manager(url: str | None, **overrides: Any) -> FallbackManager:
    values: dict[str, Any] = {"model_backend": "openai", "openai_base_url": url, "openai_api_key": SECRET,
                              "model_fallback": "llama_cpp", "openai_max_retries": 0, "model_n_threads": 2,
                              "model_parallel": 2}
    values.update(overrides)
    manager = create_model_manager(make_settings(**values))
    assert isinstance(manager, FallbackManager)
    return manager


@pytest.fixture()
def events() -> list[tuple[str, str, str, str]]:
    return []


def _ask(manager: FallbackManager, events: list[tuple[str, str, str, str]], heavy: bool = True) -> dict[str, Any]:
    manager.listeners.append(lambda *event: events.append(event))
    model, lock = manager.get(heavy=heavy)  # the guide's interface, unchanged
    with lock:
        result = model(prompt="The capital of France is", max_tokens=4, temperature=0)
    assert isinstance(result, dict)
    return result


def test_dead_base_url_is_served_by_the_fallback(events: list[tuple[str, str, str, str]],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with _manager(dead_url()) as manager, caplog.at_level(logging.WARNING):
        result = _ask(manager, events)
        light = _ask(manager, events, heavy=False)
    assert result["model"] == GEMMA and result["system_fingerprint"] == "agentic-llama_cpp"
    assert result["choices"][0]["text"] and result["usage"]["completion_tokens"] == 4
    assert light["model"] == GEMMA
    assert events[0] == ("heavy", "openai", "llama_cpp", "upstream_unreachable")
    assert events[1][0] == "light"
    assert "heavy tier answered by llama_cpp" in caplog.text


def test_backend_without_a_key_is_skipped(events: list[tuple[str, str, str, str]],
                                          caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        manager = _manager(None, openai_api_key=None)
    with manager:
        assert manager.backend == "openai"
        result = _ask(manager, events)
    assert result["system_fingerprint"] == "agentic-llama_cpp"
    assert "MODEL_FALLBACK: openai is not usable (OPENAI_API_KEY not provided" in caplog.text
    assert events == [("heavy", "openai", "llama_cpp", "missing_api_key")]
    assert "heavy tier on openai failed" not in caplog.text  # said once at start, not per request


def test_429_storm_is_retried_with_backoff_then_fails_over(events: list[tuple[str, str, str, str]]) -> None:
    with fault_server("429") as (url, handler), _manager(url, openai_max_retries=2) as manager:
        result = _ask(manager, events)
    assert handler.calls == 3  # the first try and OPENAI_MAX_RETRIES retries, then the fallback
    assert result["system_fingerprint"] == "agentic-llama_cpp"
    assert events == [("heavy", "openai", "llama_cpp", "rate_limit_exceeded")]


def test_slow_upstream_hits_the_timeout(events: list[tuple[str, str, str, str]]) -> None:
    with fault_server("slow") as (url, handler):
        handler.delay = 3.0
        plain = create_model_manager(make_settings(model_backend="openai", openai_base_url=url, openai_api_key=SECRET,
                                                   openai_timeout=0.5, openai_max_retries=0))
        with plain, pytest.raises(UpstreamTimeoutError, match="OPENAI_TIMEOUT"):
            plain.get()[0](prompt="hi", max_tokens=2)
        with _manager(url, openai_timeout=0.5) as manager:
            result = _ask(manager, events)
    assert result["system_fingerprint"] == "agentic-llama_cpp"
    assert events[0][3] == "upstream_timeout"


def test_a_bad_request_is_not_sent_elsewhere(events: list[tuple[str, str, str, str]]) -> None:
    with fault_server("400") as (url, handler), _manager(url) as manager:
        with pytest.raises(InvalidRequestError):
            _ask(manager, events)
        model, _ = manager.get()
        with pytest.raises(InvalidRequestError):  # refused before any backend is asked
            model(prompt="hi", max_tokens=0)
    assert handler.calls == 1 and events == []


def test_a_stream_cut_after_text_is_an_error_not_another_models_text() -> None:
    with fault_server("cut") as (url, _), _manager(url) as manager:
        model, _ = manager.get()
        stream = model.create_chat_completion(messages=[{"role": "user", "content": "hi"}], stream=True)
        chunks: list[Any] = []
        with pytest.raises(Exception, match="incomplete"):
            for chunk in stream:  # type: ignore[union-attr]
                chunks.append(chunk)
    assert chunks[0]["system_fingerprint"] == "agentic-openai"
    assert all(c["system_fingerprint"] == "agentic-openai" for c in chunks)


@pytest.fixture(scope="module")
def fallback_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our API on the openai backend with a dead base URL and MODEL_FALLBACK=llama_cpp."""
    url, process = start_agentic_server(tmp_path_factory.mktemp("fallback"), MODEL_BACKEND="openai",
                                        OPENAI_BASE_URL=dead_url(), OPENAI_API_KEY=SECRET, OPENAI_MAX_RETRIES="0",
                                        MODEL_FALLBACK="llama_cpp")
    yield url
    stop(process)


def test_server_keeps_answering_with_the_network_cable_pulled(fallback_server: str) -> None:
    for _ in range(3):
        answer = httpx.post(f"{fallback_server}/v1/chat/completions", timeout=None, json={
            "model": "heavy", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-agentic-backend"] == "llama_cpp"
        assert answer.json()["model"] == GEMMA
    with httpx.stream("POST", f"{fallback_server}/v1/chat/completions", timeout=None, json={
            "model": "light", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "stream": True}) as streamed:
        assert streamed.headers["x-agentic-backend"] == "llama_cpp"
        events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length" and events[0]["model"] == GEMMA
    metrics = httpx.get(f"{fallback_server}/metrics").text
    line = next(line for line in metrics.splitlines() if line.startswith("agentic_fallbacks_total{")
                and 'tier="heavy"' in line)
    assert 'from_backend="openai"' in line and 'to_backend="llama_cpp"' in line and float(line.split()[-1]) >= 3
    ready = httpx.get(f"{fallback_server}/ready").json()
    assert ready["status"] == "ready"


def test_config_shows_the_fallback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agentic.cli import app

    (tmp_path / ".env").write_text("MODEL_FALLBACK=llama_cpp\nMODEL_BACKEND=openai\n")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "Fallback: llama_cpp (heavy " in result.output


def test_upstream_killed_mid_stream_gives_the_client_a_clean_error_event(tmp_path: Path) -> None:
    with fault_server("cut") as (upstream, _):
        url, process = start_agentic_server(tmp_path, MODEL_BACKEND="openai", OPENAI_BASE_URL=upstream,
                                            OPENAI_API_KEY=SECRET, OPENAI_MAX_RETRIES="0",
                                            MODEL_FALLBACK="llama_cpp")
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=None, json={
                    "model": "heavy", "messages": [{"role": "user", "content": "Hi"}], "stream": True}) as streamed:
                assert streamed.status_code == 200
                assert streamed.headers["x-agentic-backend"] == "openai"  # text came from openai: no failover
                events = [json.loads(line[6:]) for line in streamed.iter_lines() if line.startswith("data: {")]
            assert events[1]["choices"][0]["delta"]["content"] == "Hello"
            error = events[-1]["error"]
            assert error["code"] == "upstream_unreachable" and "incomplete" in error["message"]
            assert SECRET not in json.dumps(events)
            health = httpx.get(f"{url}/health", timeout=5)  # the server is fine afterwards
            assert health.status_code == 200
        finally:
            stop(process)


def test_analysis_usage_is_logged_under_the_backend_that_answered() -> None:
    from agentic.ideas.analyzer import TRIAGE_SYSTEM, CallRecord, IdeaAnalyzer
    from agentic.ideas.schemas import Triage

    calls: list[CallRecord] = []
    with _manager(dead_url()) as manager:
        IdeaAnalyzer(manager, retries=2, on_call=calls.append).structured(
            "idea", "light", TRIAGE_SYSTEM, "Title: Dog bakery\nDescription: Treats for dogs.", Triage)
    assert calls and all((call.backend, call.model) == ("llama_cpp", GEMMA) for call in calls)
