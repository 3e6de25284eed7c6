"""The API in-process (httpx ASGI transport) on the llama.cpp backend: every route and every error."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agentic.api.app import create_app
from agentic.ml.base import BaseModelManager
from agentic.ml.model_manager import ModelManager
from conftest import make_settings


@pytest.fixture(scope="module")
def manager() -> Iterator[BaseModelManager]:
    with ModelManager(make_settings(model_context_size=512, model_n_threads=2)) as manager:
        yield manager


def _app(manager: BaseModelManager, **overrides: Any) -> FastAPI:
    return create_app(make_settings(model_context_size=512, model_n_threads=2, **overrides), manager=manager)


@pytest.fixture()
async def client(manager: BaseModelManager) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app(manager)), base_url="http://test") as client:
        yield client


def _events(text: str) -> list[Any]:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


async def test_chat_completion(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={
        "model": "heavy", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "gemma-3-270m-q4_k_m.gguf"
    assert body["usage"]["completion_tokens"] == 5
    assert response.headers["x-request-id"]


async def test_completion_stream_with_usage_chunk(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={
        "model": "light", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True}})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 6
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in event for event in events[:-1])
    plain = await client.post("/v1/completions", json={
        "model": "light", "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == plain.json()["choices"][0]["text"]


async def test_stream_without_include_usage_has_no_usage(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={
        "model": "heavy", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True})
    events = _events(response.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all("usage" not in event and event["choices"] for event in events)


def _counter(text: str, sample: str) -> float:
    """The value of one sample line of the metrics text (0 when absent)."""
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " ")), 0.0)


async def test_json_schema_response_format_gives_valid_json(client: httpx.AsyncClient) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    forced = 'agentic_forced_tokens_total{backend="llama_cpp",tier="heavy"}'
    before = _counter((await client.get("/metrics")).text, forced)
    response = await client.post("/v1/chat/completions", json={
        "model": "heavy", "messages": [{"role": "user", "content": "Name a city as JSON."}], "max_tokens": 40,
        "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}})
    content = json.loads(response.json()["choices"][0]["message"]["content"])
    assert isinstance(content["city"], str)
    assert _counter((await client.get("/metrics")).text, forced) > before  # '{"city": "' written, not sampled


async def test_models_lists_tiers_and_real_name(client: httpx.AsyncClient) -> None:
    ids = [entry["id"] for entry in (await client.get("/v1/models")).json()["data"]]
    assert ids == ["heavy", "light", "gemma-3-270m-q4_k_m.gguf", "embedding"]
    response = await client.post("/v1/completions", json={"model": "gemma-3-270m-q4_k_m.gguf", "prompt": "Hi",
                                                            "max_tokens": 2})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "gpt-4", "prompt": "x"}, 404, "model", "model_not_found"),
        ({"model": "heavy", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
        ({"model": "heavy", "prompt": "x", "temperature": 5}, 400, "temperature", "invalid_value"),
        ({"model": "heavy", "prompt": "x", "n": 2}, 400, "n", "invalid_value"),
        ({"model": "heavy"}, 400, "prompt", "invalid_value"),
        ({"model": "heavy", "prompt": "x", "max_tokens": 100000}, 400, "max_tokens", "invalid_value"),
        ({"model": "heavy", "prompt": "word " * 1000, "max_tokens": 4}, 400, "prompt", "context_length_exceeded"),
        ({"model": "heavy", "prompt": "word " * 1000, "stream": True}, 400, "prompt", "context_length_exceeded"),
    ],
)
async def test_errors_use_openai_envelope(client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str,
                                          code: str) -> None:
    response = await client.post("/v1/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"]) == (param, code)
    assert "Traceback" not in error["message"]


async def test_context_error_reports_token_counts(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={
        "model": "heavy", "messages": [{"role": "user", "content": "word " * 1000}]})
    message = response.json()["error"]["message"]
    assert "context window is 512 tokens, but the messages are 1009 tokens" in message


async def test_bad_json_and_bad_message_role(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", content=b"{not json",
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "body"
    response = await client.post("/v1/chat/completions", json={"model": "heavy",
                                                                "messages": [{"role": "robot", "content": "x"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages.0.role"


async def test_body_over_limit_is_413(manager: BaseModelManager) -> None:
    app = _app(manager, api_max_body_bytes=2048)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/v1/completions", json={"model": "heavy", "prompt": "x" * 5000})
    assert response.status_code == 413
    assert "API_MAX_BODY_BYTES=2048" in response.json()["error"]["message"]


async def test_auth_required_when_keys_set(manager: BaseModelManager) -> None:
    app = _app(manager, api_keys="k-one, k-two")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        missing = await client.get("/v1/models")
        wrong = await client.get("/v1/models", headers={"authorization": "Bearer nope"})
        right = await client.get("/v1/models", headers={"authorization": "Bearer k-two"})
        health = await client.get("/health")
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200 and health.status_code == 200


async def test_backend_route_hides_secrets(manager: BaseModelManager) -> None:
    app = _app(manager, api_keys="top-secret-key")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/v1/backend", headers={"authorization": "Bearer top-secret-key"})
    body = response.json()
    assert body["backend"] == "llama_cpp"
    assert body["settings"]["API_KEYS"] == {"value": "SET", "source": "argument"}
    assert body["settings"]["OPENAI_API_KEY"]["value"] == "NOT SET"
    assert "top-secret-key" not in response.text


async def test_health_ready_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    await client.post("/v1/completions", json={"model": "heavy", "prompt": "Hi", "max_tokens": 3})
    await client.post("/v1/completions", json={"model": "nope", "prompt": "Hi"})
    text = (await client.get("/metrics")).text
    assert 'agentic_requests_total{backend="llama_cpp",endpoint="completions",status="200",tier="heavy"} 1.0' in text
    assert 'agentic_completion_tokens_total{backend="llama_cpp",tier="heavy"} 3.0' in text
    # Time to first token is a streamed answer's: a non-streamed one is not counted as 0 s.
    assert 'agentic_time_to_first_token_seconds_count{backend="llama_cpp",tier="heavy"}' not in text
    streamed = await client.post("/v1/completions", json={"model": "heavy", "prompt": "Hi", "max_tokens": 3,
                                                          "stream": True})
    assert streamed.text.rstrip().endswith("data: [DONE]")
    text = (await client.get("/metrics")).text
    assert 'agentic_time_to_first_token_seconds_count{backend="llama_cpp",tier="heavy"} 1.0' in text
    assert 'agentic_queue_depth{backend="llama_cpp",tier="heavy"} 0.0' in text


async def test_request_log_line_has_no_prompt_unless_asked(manager: BaseModelManager,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentic.api")
    for log_prompts in (False, True):
        app = _app(manager, api_log_prompts=log_prompts)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            await client.post("/v1/completions", json={"model": "heavy", "prompt": "PRIVATE-PROMPT", "max_tokens": 2})
        lines = [r.getMessage() for r in caplog.records if r.name == "agentic.api"]
        assert any("endpoint=completions tier=heavy backend=llama_cpp status=200" in line for line in lines)
        assert any("PRIVATE-PROMPT" in line for line in lines) is log_prompts
        caplog.clear()


async def test_unenforceable_json_schema_is_400_not_500(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={
        "model": "heavy", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "unknowntype"}}}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format" and "cannot be enforced by llama.cpp" in error["message"]


async def test_ready_is_503_when_the_check_itself_fails(manager: BaseModelManager,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str | None:
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(manager, "problem", broken)
    app = _app(manager)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.get("/ready")
    assert answer.status_code == 503
    assert answer.json() == {"status": "not_ready", "loaded": answer.json()["loaded"],
                             "problem": "the readiness check failed (RuntimeError)"}


async def test_what_start_up_built_is_frozen_out_of_full_collections_while_the_app_runs() -> None:
    app = _app(ModelManager(make_settings(model_context_size=512, model_n_threads=1)))  # closed by its lifespan
    gc.unfreeze()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
