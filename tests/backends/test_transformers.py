"""Transformers backend on the real Gemma GGUF weights, on the CPU when there is no CUDA."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentic.errors import ContextLengthExceededError, ModelLoadError, ModelNotAvailableError, OutOfMemoryError
from agentic.ml.backends.transformers_gpu import PROBE_TEXT, check_converted_tokenizer, outputs_are_finite
from agentic.ml.gpu_model_manager import GPUModelManager, TransformersModel
from agentic.ml.model_manager import ModelManager
from conftest import make_settings


@pytest.fixture(scope="module")
def manager() -> Iterator[GPUModelManager]:
    with GPUModelManager(make_settings(model_backend="transformers_gpu")) as manager:
        yield manager


def test_cpu_fallback_float32_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    caplog.set_level(logging.INFO, logger="agentic")
    manager = GPUModelManager(make_settings(model_backend="transformers_gpu", gpu_torch_dtype="bfloat16"))
    model, _ = manager.get(heavy=True)
    assert isinstance(model, TransformersModel)
    assert str(model.device) == "cpu" and model.model.dtype == torch.float32
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "runs gemma-3-270m-q4_k_m.gguf on the CPU in float32" in warnings[0]
    assert "GPU_TORCH_DTYPE=bfloat16" in warnings[0]
    manager.close()


def test_greedy_text_agrees_with_llama_cpp(manager: GPUModelManager, gemma_path: Path) -> None:
    model, lock = manager.get(heavy=True)
    with lock:
        ours = model(prompt="The capital of France is", max_tokens=6, temperature=0)
    reference = ModelManager(make_settings(model_7b_path=gemma_path)).get(heavy=True)[0]
    theirs = reference(prompt="The capital of France is", max_tokens=6, temperature=0)
    # Same weights, same tokenizer: the prompt token count must match exactly, and the greedy text
    # starts the same (de-quantized float32 vs quantized kernels may part ways later).
    assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
    assert ours["choices"][0]["text"].split()[:2] == theirs["choices"][0]["text"].split()[:2]


def test_chat_stops_at_end_of_turn_token(manager: GPUModelManager) -> None:
    model, _ = manager.get(heavy=True)
    assert isinstance(model, TransformersModel)
    end_of_turn = model.tokenizer.get_vocab()["<end_of_turn>"]
    assert end_of_turn in model.end_tokens


def test_prompt_over_context_is_refused() -> None:
    manager = GPUModelManager(make_settings(model_backend="transformers_gpu", model_context_size=64))
    model, _ = manager.get(heavy=True)
    with pytest.raises(ContextLengthExceededError) as caught:
        model(prompt="word " * 200, max_tokens=4)
    assert "context window is 64 tokens" in caught.value.message
    manager.close()


def test_hub_id_not_available_offline_names_the_variable() -> None:
    manager = GPUModelManager(make_settings(model_backend="transformers_gpu",
                                            gpu_heavy_model="microsoft/DialoGPT-medium"))
    with pytest.raises(ModelNotAvailableError) as caught:
        manager.get(heavy=True)
    message = caught.value.message
    assert message.startswith("GPU_HEAVY_MODEL='microsoft/DialoGPT-medium' is not available offline")
    assert "huggingface-cli download microsoft/DialoGPT-medium" in message


def test_local_directory_loads(manager: GPUModelManager) -> None:
    manager.get(heavy=True)  # converts the GGUF into the cache on first use
    cached = next((manager.settings.model_cache_dir / "transformers").glob("gemma-3-270m-q4_k_m-*"))
    directory_manager = GPUModelManager(make_settings(model_backend="transformers_gpu", gpu_light_model=str(cached)))
    model, _ = directory_manager.get(heavy=False)
    assert model(prompt="Hello", max_tokens=3, temperature=0)["usage"]["completion_tokens"] == 3
    directory_manager.close()


def test_cuda_out_of_memory_becomes_error_with_hints(manager: GPUModelManager, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    model, _ = manager.get(heavy=True)
    assert isinstance(model, TransformersModel)

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "_forward", out_of_memory)  # the fault a full GPU raises mid-generation
    with pytest.raises(OutOfMemoryError) as caught:
        model(prompt="Hello", max_tokens=4)
    message = caught.value.message
    assert message.startswith("CUDA out of memory while generating")
    assert "MODEL_CONTEXT_SIZE=2048" in message and "MODEL_GPU_LAYERS" in message and "GPU_MAX_MEMORY" in message


PROMPTS = ["The capital of France is", "Water is made of", "Once upon a time", "The best way to learn is"]


def _concurrently(function: Any, items: list[Any]) -> list[Any]:
    results: dict[int, Any] = {}
    threads = [threading.Thread(target=lambda i=i, x=x: results.__setitem__(i, function(x)))
               for i, x in enumerate(items)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=None)
    return [results[i] for i in range(len(items))]


def test_requests_arriving_together_share_a_batch_and_match_one_at_a_time(manager: GPUModelManager) -> None:
    import torch

    model, _ = manager.get(heavy=True)
    assert isinstance(model, TransformersModel) and model.batcher is not None
    calls = 0
    forward = model.model.forward

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return forward(*args, **kwargs)

    model.model.forward = counting_forward
    try:
        batched = _concurrently(lambda p: model(prompt=p, max_tokens=12, temperature=0), PROMPTS)
    finally:
        del model.model.forward
    assert calls <= 13  # one prefill + 11 decode steps for all four, not 4 x 12 forward passes
    for prompt, result in zip(PROMPTS, batched, strict=True):
        ids = model.tokenizer(prompt).input_ids
        generated = model.tokenizer(result["choices"][0]["text"], add_special_tokens=False).input_ids
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor([ids + generated])).logits[0].float()
        for step, token in enumerate(generated):
            row = logits[len(ids) - 1 + step]
            best = int(row.argmax())
            if best != token:  # padding changes rounding: a different choice only at a near-tie
                assert float(row[best] - row[token]) < 0.5, prompt
                break


def test_closing_a_batched_stream_ends_its_row(manager: GPUModelManager) -> None:
    model, _ = manager.get(heavy=True)
    assert isinstance(model, TransformersModel) and model.batcher is not None
    batcher, steps = model.batcher, []
    forward = batcher.forward
    batcher.forward = lambda cache, **inputs: steps.append(1) or forward(cache, **inputs)  # counts decode steps
    try:
        stream = model(prompt="Once upon a time", max_tokens=500, temperature=0.8, stream=True)
        next(stream)
        stream.close()  # type: ignore[attr-defined]
        steps.clear()
        quick = model(prompt="Hi", max_tokens=2, temperature=0)  # waits only for the closed row's batch to end
    finally:
        batcher.forward = forward
    assert quick["usage"]["completion_tokens"] == 2
    assert len(steps) < 20  # the closed row stopped within a step or two; running on would take ~500 steps


def test_batcher_close_is_idempotent_and_refuses_new_work() -> None:
    """As the llama.cpp engine does: after close, no worker would answer, so generate refuses at once."""
    from agentic.errors import ModelClosedError
    from agentic.ml.engines.transformers_batch import TransformersBatcher
    from agentic.ml.generation import GenerationRequest, SamplingSpec

    batcher = TransformersBatcher(lambda **inputs: None, "cpu", 0, {1}, lambda *args: 1, slots=2)
    batcher.close()
    batcher.close()
    with pytest.raises(ModelClosedError, match="closed"):
        batcher.generate(GenerationRequest([1, 2, 3], 4, SamplingSpec(0.0, 1.0)))


def _converted_directory(manager: GPUModelManager) -> str:
    import transformers

    return manager._local_directory(manager.specs["heavy"], transformers)


def test_a_dtype_that_overflows_is_caught_at_load(manager: GPUModelManager) -> None:
    """Gemma 3 in float16 computes NaN logits (seen on an H200, and on the CPU alike): the load-time probe sees it."""
    import torch
    import transformers

    directory = _converted_directory(manager)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    half = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float16).eval()
    assert not outputs_are_finite(half, tokenizer)
    base = transformers.AutoModel.from_pretrained(directory, dtype=torch.float16).eval()
    assert not outputs_are_finite(base, tokenizer)  # the embedding model's hidden states overflow alike
    del base
    model, _ = manager.get(heavy=True)
    assert outputs_are_finite(model.model, tokenizer)  # float32 here
    # Without a bfloat16 GPU to fall back on, the load is refused with the setting to change.
    with pytest.raises(ModelLoadError) as refused:
        manager._load_finite(lambda dtype: half, tokenizer, torch.float16, manager.specs["heavy"])
    assert refused.value.param == "GPU_TORCH_DTYPE" and "GPU_TORCH_DTYPE=float32" in refused.value.message


class _OneTokenPerCharacter:
    """What transformers 5.17 made of the Gemma GGUF's tokenizer (seen on the H200 machine): a char-level split."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(char) for char in text]}


def test_a_gguf_tokenizer_converted_wrongly_is_refused(manager: GPUModelManager, gemma_path: Path) -> None:
    import transformers

    check_converted_tokenizer(gemma_path, transformers.AutoTokenizer.from_pretrained(_converted_directory(manager)))
    with pytest.raises(ModelLoadError) as refused:
        check_converted_tokenizer(gemma_path, _OneTokenPerCharacter())
    message = refused.value.message
    assert "converts the tokenizer of gemma-3-270m-q4_k_m.gguf wrongly" in message
    assert f"is {len(PROBE_TEXT)} tokens" not in message and f"{len(PROBE_TEXT)} after conversion" in message
