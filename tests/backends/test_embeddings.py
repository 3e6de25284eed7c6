"""Embeddings on every backend: the same shape, normalized vectors, batching that changes nothing, clear errors."""

from __future__ import annotations

import base64
import struct
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from agentic.errors import ContextLengthExceededError, InvalidRequestError
from agentic.ml.backends.llama_cpp import LlamaCppEmbeddingModel
from agentic.ml.base import BaseModelManager
from agentic.ml.embeddings import EmbeddingModel, cosine
from agentic.ml.model_factory import create_model_manager
from conftest import make_settings, manager_on

TEXTS = ["a bakery for dogs", "a cake shop for pets", "quantum error correction"]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module", params=["llama_cpp", "transformers_gpu", "openai"])
def manager(request: pytest.FixtureRequest) -> Iterator[BaseModelManager]:
    manager: BaseModelManager = manager_on(request.param, request)
    yield manager
    manager.close()


def test_shape_normalized_and_deterministic(manager: BaseModelManager) -> None:
    model = manager.embedding_model()
    result = model.create_embedding(input=[TEXTS[0], TEXTS[0], TEXTS[2]])
    assert result["object"] == "list" and result["model"] == model.name
    data = result["data"]
    assert [item["index"] for item in data] == [0, 1, 2] and all(item["object"] == "embedding" for item in data)
    vectors = [item["embedding"] for item in data]
    assert len({len(vector) for vector in vectors}) == 1 and len(vectors[0]) > 100
    assert abs(_dot(vectors[0], vectors[0]) - 1) < 1e-4  # normalized: the cosine of an input with itself is 1
    assert vectors[0] == pytest.approx(vectors[1], abs=1e-5)  # the same input gives the same vector
    assert cosine(vectors[0], vectors[2]) < 0.999
    assert result["usage"]["prompt_tokens"] == result["usage"]["total_tokens"] > 0


def test_batch_equals_one_by_one(manager: BaseModelManager) -> None:
    model = manager.embedding_model()
    together = model.embed(TEXTS)
    alone = [model.embed(text)[0] for text in TEXTS]
    for batched, single in zip(together, alone, strict=True):  # batched kernels round differently: same direction
        assert cosine(batched, single) > 0.999
    assert cosine(together[0], together[1]) > cosine(together[0], together[2])  # related ideas are closer


def test_base64_is_the_same_floats(manager: BaseModelManager) -> None:
    model = manager.embedding_model()
    floats = model.create_embedding(input=TEXTS[1])["data"][0]["embedding"]
    packed = model.create_embedding(input=TEXTS[1], encoding_format="base64")["data"][0]["embedding"]
    raw = base64.b64decode(packed)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(floats, abs=1e-4)


def test_bad_input_is_refused_by_name(manager: BaseModelManager) -> None:
    model = manager.embedding_model()
    for bad, param in [([], "input"), (["ok", ""], "input[1]"), ([3.5], "input[0]"), ("\ud800", "input[0]")]:
        with pytest.raises(InvalidRequestError) as caught:
            model.create_embedding(input=bad)
        assert caught.value.param == param
    with pytest.raises(InvalidRequestError, match="encoding_format"):
        model.create_embedding(input="x", encoding_format="hex")


@pytest.fixture(scope="module")
def local() -> Iterator[EmbeddingModel]:
    manager = create_model_manager(make_settings(model_n_threads=2, model_context_size=64))
    yield manager.embedding_model()
    manager.close()


def test_an_input_over_the_context_is_refused_not_cut(local: EmbeddingModel) -> None:
    with pytest.raises(ContextLengthExceededError) as caught:
        local.create_embedding(input=["short", "word " * 200])
    assert caught.value.param == "input[1]" and "never cut" in caught.value.message


def test_token_ids_embed_like_their_text(local: EmbeddingModel) -> None:
    assert isinstance(local, LlamaCppEmbeddingModel)
    tokens = local.engine.tokenize(TEXTS[0])
    assert local.embed([tokens])[0] == pytest.approx(local.embed(TEXTS[0])[0], abs=1e-5)
    with pytest.raises(InvalidRequestError, match="token id 99999999"):
        local.create_embedding(input=[[1, 99999999]])
    with pytest.raises(InvalidRequestError, match="dimensions"):
        local.create_embedding(input="x", dimensions=8)


def test_one_request_is_one_decode_and_concurrent_requests_share_one(local: EmbeddingModel,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(local, LlamaCppEmbeddingModel)
    engine = local.engine
    before = engine.passes
    texts = [f"idea {index}" for index in range(8)]
    assert sum(len(engine.tokenize(text)) for text in texts) <= local.context_size
    local.embed(texts)
    assert engine.passes == before + 1  # 8 short inputs that fit the context together: one decode call

    first_pass = threading.Event()
    run = engine._run

    def held(jobs: Any) -> None:  # the first pass waits until four more callers have queued behind it
        if not first_pass.is_set():
            first_pass.set()
            while len(engine._jobs) < 4:
                threading.Event().wait(0.01)
        run(jobs)

    monkeypatch.setattr(engine, "_run", held)
    threads = [threading.Thread(target=local.embed, args=([f"text {index}"],)) for index in range(5)]
    threads[0].start()
    first_pass.wait()
    before = engine.passes
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join()
    assert engine.passes == before + 2  # the held pass, then the four queued requests in one decode call


def test_openai_sdk_against_our_server(agentic_server: str) -> None:
    client = openai.OpenAI(base_url=f"{agentic_server}/v1", api_key="unused", max_retries=0)
    listed = {model.id for model in client.models.list()}
    assert "embedding" in listed
    answer = client.embeddings.create(model="embedding", input=TEXTS)  # the SDK asks for base64 and decodes it
    assert [item.index for item in answer.data] == [0, 1, 2]
    floats = client.embeddings.create(model="embedding", input=TEXTS, encoding_format="float")
    assert answer.data[2].embedding == pytest.approx(floats.data[2].embedding, abs=1e-5)
    assert answer.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-ada-002", input="x")
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="embedding", input=["word " * 2000])
    assert caught.value.code == "context_length_exceeded"

