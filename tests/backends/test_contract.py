"""One contract, checked on every installed backend: the same calls give the same shapes.

The built-in three always; a backend an installed package adds too (tests/test_plugin_backend.py runs this
file with tests/plugins/agentic-echo-backend installed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agentic.ml.base import BaseModelManager
from agentic.ml.model_factory import create_model_manager
from agentic.registry import backend_names
from conftest import make_settings

BACKENDS = list(backend_names())


@pytest.fixture(scope="module", params=BACKENDS)
def manager(request: pytest.FixtureRequest) -> Iterator[BaseModelManager]:
    overrides: dict[str, Any] = {"model_backend": request.param, "model_n_threads": 2}
    if request.param == "openai":
        server = request.getfixturevalue("llama_server")
        overrides.update(openai_base_url=server, openai_heavy_model="gemma", openai_light_model="gemma")
    manager = create_model_manager(make_settings(**overrides))
    yield manager
    manager.close()


def _check_head(result: dict[str, Any], object_name: str) -> None:
    assert set(result) >= {"id", "object", "created", "model", "choices"}
    assert result["object"] == object_name
    assert isinstance(result["created"], int) and result["model"]


def test_completion_shape(manager: BaseModelManager) -> None:
    model, lock = manager.get(heavy=True)
    with lock:
        result = model(prompt="The capital of France is", max_tokens=6, temperature=0)
    _check_head(result, "text_completion")
    choice = result["choices"][0]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason"}
    assert choice["text"] and choice["finish_reason"] == "length"
    usage = result["usage"]
    assert usage["completion_tokens"] == 6 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_shape(manager: BaseModelManager) -> None:
    model, lock = manager.get(heavy=False)
    with lock:
        result = model.create_chat_completion(messages=[{"role": "user", "content": "Say hello."}], max_tokens=6,
                                              temperature=0)
    _check_head(result, "chat.completion")
    choice = result["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in {"stop", "length"}
    assert result["usage"]["prompt_tokens"] > 0


def test_stream_shape_matches_non_stream(manager: BaseModelManager) -> None:
    model, lock = manager.get(heavy=True)
    with lock:
        whole = model(prompt="One, two, three,", max_tokens=8, temperature=0)
        chunks = list(model(prompt="One, two, three,", max_tokens=8, temperature=0, stream=True))
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == whole["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


def test_stop_and_seed(manager: BaseModelManager) -> None:
    model, lock = manager.get(heavy=True)
    with lock:
        full = model(prompt="The capital of France is", max_tokens=10, temperature=0)["choices"][0]["text"]
        stop_word = full.split()[1]
        cut = model(prompt="The capital of France is", max_tokens=10, temperature=0, stop=stop_word)
        seeded = [model(prompt="Once upon a time", max_tokens=8, temperature=0.9, seed=11)["choices"][0]["text"]
                  for _ in range(2)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == full[: full.index(stop_word)]
    assert seeded[0] == seeded[1]
