"""A real uvicorn server, started with the guide's command, driven by the official openai client."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from conftest import REPO_ROOT, start_agentic_server, stop


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, process = start_agentic_server(tmp_path_factory.mktemp("server"), API_MAX_QUEUE="16", MODEL_PRELOAD="true")
    yield url
    stop(process)


@pytest.fixture()
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def test_openai_client_chat_and_completions(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="heavy", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage and chat.usage.completion_tokens == 5
    text = client.completions.create(model="light", prompt="The capital of France is", max_tokens=5, temperature=0)
    assert text.choices[0].text and text.choices[0].finish_reason == "length"
    streamed = client.completions.create(model="light", prompt="The capital of France is", max_tokens=5,
                                         temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == text.choices[0].text


def test_openai_client_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="heavy", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"


async def test_async_openai_client_stream(server: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(model="light", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=4, stream=True)
    finishes = [chunk.choices[0].finish_reason async for chunk in stream]
    assert finishes[-1] == "length"
    await client.close()


def test_continue_final_message_through_the_sdk(client: openai.OpenAI) -> None:
    """vLLM's `continue_final_message` (extra_body): the reply continues the assistant's answer so far; asked
    without a final assistant message, a 400 naming the field."""
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model="heavy", messages=ask, max_tokens=12, temperature=0)
    text = whole.choices[0].message.content or ""
    kept = text[:len(text) // 2]
    rest = client.chat.completions.create(model="heavy", messages=[*ask, {"role": "assistant", "content": kept}],
                                          max_tokens=12, temperature=0, extra_body={"continue_final_message": True})
    assert rest.usage and whole.usage and rest.usage.prompt_tokens > whole.usage.prompt_tokens
    assert rest.choices[0].message.content and not (rest.choices[0].message.content or "").startswith(kept)
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="heavy", messages=ask, max_tokens=4,
                                       extra_body={"continue_final_message": True})
    assert refused.value.param == "continue_final_message"


def test_model_not_found_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "model_not_found"


def test_eight_concurrent_streams_all_finish(client: openai.OpenAI) -> None:
    def one(index: int) -> tuple[str, str | None]:
        stream = client.completions.create(model="heavy", prompt=f"Story number {index}:", max_tokens=12,
                                           temperature=0.8, seed=index, stream=True)
        text, finish = "", None
        for chunk in stream:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        return text, finish

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(finish in {"stop", "length"} for _, finish in results)
    assert all(text for text, _ in results)


def test_disconnect_mid_stream_frees_the_model(server: str, client: openai.OpenAI) -> None:
    body = {"model": "heavy", "prompt": "Once upon a time", "max_tokens": 900, "stream": True}
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=None) as response:
        next(response.iter_lines())  # one chunk, then hang up
    started = time.monotonic()
    answer = client.completions.create(model="heavy", prompt="Hi", max_tokens=2, timeout=None)
    assert answer.choices[0].finish_reason == "length"
    assert time.monotonic() - started < 10  # 900 tokens would take far longer: the abandoned one stopped
    metrics = httpx.get(f"{server}/metrics").text
    assert 'endpoint="completions",status="499",tier="heavy"} 1.0' in metrics
    assert 'agentic_in_flight{backend="llama_cpp",tier="heavy"} 0.0' in metrics


def test_disconnect_during_a_non_streaming_request_frees_the_model(server: str, client: openai.OpenAI) -> None:
    body = {"model": "light", "messages": [{"role": "user", "content": "Tell a long story"}], "max_tokens": 900,
            "temperature": 0.8, "seed": 1}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s and closes the connection
        httpx.post(f"{server}/v1/chat/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 10
    metrics = ""
    while 'endpoint="chat",status="499",tier="light"} 1.0' not in metrics and time.monotonic() < deadline:
        time.sleep(0.2)
        metrics = httpx.get(f"{server}/metrics").text
    assert 'endpoint="chat",status="499",tier="light"} 1.0' in metrics  # stopped, not run to 900 tokens
    assert 'agentic_in_flight{backend="llama_cpp",tier="light"} 0.0' in metrics
    answer = client.chat.completions.create(model="light", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert answer.choices[0].finish_reason == "length" and answer.usage and answer.usage.completion_tokens == 3


def test_queue_overflow_is_503_with_retry_after(tmp_path: Path) -> None:
    url, process = start_agentic_server(tmp_path, API_MAX_QUEUE="0", MODEL_PARALLEL="1")
    try:
        body = {"model": "heavy", "prompt": "Once upon a time", "max_tokens": 300, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=None) as first:
            lines = first.iter_lines()  # keep a reference: a collected iterator closes the connection
            next(lines)
            busy = httpx.post(f"{url}/v1/completions", json={"model": "light", "prompt": "Hi", "max_tokens": 2})
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "queue_full"
        metrics = httpx.get(f"{url}/metrics").text
        assert 'agentic_errors_total{backend="llama_cpp",code="queue_full",tier="light"} 1.0' in metrics
    finally:
        stop(process)


def test_auth_with_api_keys(tmp_path: Path) -> None:
    url, process = start_agentic_server(tmp_path, API_KEYS="secret-one")
    try:
        denied = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            denied.models.list()
        allowed = openai.OpenAI(base_url=f"{url}/v1", api_key="secret-one", max_retries=0)
        assert [model.id for model in allowed.models.list()][:2] == ["heavy", "light"]
    finally:
        stop(process)
    assert "secret-one" not in (tmp_path / f"agentic-{url.rsplit(':', 1)[1]}.log").read_text()


def test_binding_all_interfaces_without_keys_is_refused(tmp_path: Path) -> None:
    environment = {**os.environ, "API_HOST": "0.0.0.0", "API_PORT": "1"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "src" / "agentic" / "api" / "app.py")], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=None)
    assert result.returncode == 2
    assert "Refusing to listen on 0.0.0.0 without API_KEYS" in result.stderr
    assert "Traceback" not in result.stderr


def test_openai_backend_behind_our_server(llama_server: str, tmp_path: Path) -> None:
    url, process = start_agentic_server(tmp_path, MODEL_BACKEND="openai", OPENAI_BASE_URL=llama_server,
                                        OPENAI_HEAVY_MODEL="gemma", OPENAI_LIGHT_MODEL="gemma")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="heavy", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=4, temperature=0)
        assert answer.model == "gemma" and answer.usage and answer.usage.prompt_tokens > 0
        chunks = list(client.completions.create(model="gemma", prompt="One, two,", max_tokens=4, stream=True))
        assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
        assert httpx.get(f"{url}/ready").json()["status"] == "ready"
    finally:
        stop(process)
