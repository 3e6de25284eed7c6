"""OpenAI backend: the official SDK against a real llama_cpp.server, and a fault server for errors."""

from __future__ import annotations

import builtins
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from agentic.errors import (
    BackendNotInstalledError,
    InvalidAPIKeyError,
    OpenAIKeyMissingError,
    RateLimitError,
    UpstreamConnectionError,
    UpstreamError,
)
from agentic.ml.model_factory import create_model_manager
from agentic.ml.openai_model_manager import OpenAIModelManager
from conftest import SLOW_MACHINE_TIMEOUT, make_settings
from faults import SECRET, FaultHandler, fault_server


def test_prompt_call_works_on_real_server_in_completion_shape(llama_server: str) -> None:
    manager = create_model_manager(make_settings(model_backend="openai", openai_base_url=llama_server,
                                                 openai_heavy_model="gemma", openai_light_model="gemma"))
    assert isinstance(manager, OpenAIModelManager)
    model, lock = manager.get(heavy=True)
    with lock:
        result = model(prompt="The capital of France is", max_tokens=8, temperature=0)
    assert result["object"] == "text_completion"
    assert result["model"] == "gemma"
    assert result["choices"][0]["text"].strip()
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 8 and result["usage"]["prompt_tokens"] > 5
    manager.close()


def test_chat_stream_and_stop_on_real_server(llama_server: str) -> None:
    manager = OpenAIModelManager(make_settings(model_backend="openai", openai_base_url=llama_server,
                                               openai_api_key=SECRET, openai_light_model="gemma"))
    model, _ = manager.get(heavy=False)
    messages = [{"role": "user", "content": "Count from one to ten: one, two,"}]
    chunks = list(model.create_chat_completion(messages=messages, max_tokens=12, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    whole = model.create_chat_completion(messages=messages, max_tokens=12, temperature=0)
    assert text == whole["choices"][0]["message"]["content"]
    manager.close()


@pytest.fixture(name="fault_server")
def fault_server_fixture() -> Iterator[tuple[str, type[FaultHandler]]]:
    with fault_server("500") as served:
        yield served


def _model(url: str, retries: int = 0) -> Any:
    manager = OpenAIModelManager(make_settings(model_backend="openai", openai_base_url=url, openai_api_key=SECRET,
                                               openai_max_retries=retries, openai_timeout=SLOW_MACHINE_TIMEOUT))
    return manager.get(heavy=True)[0]


def test_401_is_invalid_api_key_with_guide_checks_and_no_key(
    fault_server: tuple[str, type[FaultHandler]], caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = fault_server
    handler.mode = "401"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InvalidAPIKeyError) as caught:
        _model(url)(prompt="hi", max_tokens=4)
    message = caught.value.message
    assert message.startswith("Invalid API key")
    assert "1. Key is correctly copied from https://platform.openai.com/api-keys" in message
    assert "2. Key hasn't been revoked" in message
    assert "3. Organization is set correctly (if using org account)" in message
    assert SECRET not in message and SECRET not in caplog.text


@pytest.mark.parametrize(
    ("mode", "retries", "error", "text"),
    [("429", 2, RateLimitError, "429"), ("500", 1, UpstreamError, "HTTP 500")],
)
def test_retryable_status_is_retried_with_backoff_then_clear_error(
    fault_server: tuple[str, type[FaultHandler]], mode: str, retries: int, error: type[Exception], text: str
) -> None:
    url, handler = fault_server
    handler.mode = mode
    with pytest.raises(error) as caught:
        _model(url, retries=retries)(prompt="hi", max_tokens=4)
    assert handler.calls == retries + 1
    message = str(caught.value)
    assert text in message and SECRET not in message


def test_connection_cut_mid_stream_is_a_clean_error(fault_server: tuple[str, type[FaultHandler]]) -> None:
    url, handler = fault_server
    handler.mode = "cut"
    stream = _model(url).create_chat_completion(messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(UpstreamConnectionError) as caught:
        list(stream)
    assert "incomplete" in caught.value.message


def test_unreachable_server_is_connection_error() -> None:
    with pytest.raises(UpstreamConnectionError) as caught:
        _model("http://127.0.0.1:9/v1")(prompt="hi", max_tokens=4)
    assert "OPENAI_BASE_URL" in caught.value.message


def test_missing_key_is_guide_error_at_creation() -> None:
    with pytest.raises(OpenAIKeyMissingError) as caught:
        create_model_manager(make_settings(model_backend="openai"))
    assert caught.value.message.startswith("OPENAI_API_KEY not provided")
    assert "OPENAI_API_KEY=sk-your-key-here" in caught.value.message


def test_missing_openai_module_is_guide_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_openai(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "openai" or name.startswith("openai."):
            raise ImportError("No module named 'openai'", name="openai")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "openai", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_openai)
    with pytest.raises(BackendNotInstalledError) as caught:
        create_model_manager(make_settings(model_backend="openai", openai_api_key=SECRET))
    assert caught.value.message.startswith("openai module not found")
    assert "pip install openai" in caught.value.message
