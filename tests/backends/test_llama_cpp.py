"""llama.cpp backend on the real Gemma 3 270M GGUF."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentic.errors import ContextLengthExceededError, InvalidRequestError, ModelFileNotFoundError, ModelLoadError
from agentic.ml.model_factory import create_model_manager
from agentic.ml.model_manager import LlamaCppModel, ModelManager
from conftest import make_settings
from gguf_split import rewrite_gguf, split_gguf

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def manager() -> Iterator[ModelManager]:
    with ModelManager(make_settings(model_n_threads=2)) as manager:
        yield manager


def test_factory_builds_llama_manager_by_default() -> None:
    manager = create_model_manager(make_settings())
    assert isinstance(manager, ModelManager)
    assert not manager.is_loaded(heavy=True)


def test_completion_greedy_is_deterministic_with_real_usage(manager: ModelManager) -> None:
    model, lock = manager.get(heavy=True)
    with lock:
        first = model(prompt=PROMPT, max_tokens=12, temperature=0)
        second = model(prompt=PROMPT, max_tokens=12, temperature=0)
    text = first["choices"][0]["text"]
    assert text.strip() and text == second["choices"][0]["text"]
    assert first["choices"][0]["finish_reason"] == "length"
    prompt_tokens = model.count_tokens(PROMPT)
    assert first["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 12,
                              "total_tokens": prompt_tokens + 12, "prompt_tokens_details": {"cached_tokens": 0}}
    # The second time the prompt's KV cells are reused, all but the last token (whose logits start the answer).
    assert second["usage"]["prompt_tokens_details"] == {"cached_tokens": prompt_tokens - 1}


def test_same_text_as_raw_llama_cpp(manager: ModelManager, gemma_path: Path) -> None:
    from llama_cpp import Llama

    # The same offload as the manager's (a CUDA build computes on the GPU, whose rounding differs from the CPU's).
    raw = Llama(model_path=str(gemma_path), n_ctx=2048, n_threads=2, verbose=False,
                n_gpu_layers=manager.settings.model_gpu_layers)
    expected = raw.create_completion(PROMPT, max_tokens=16, temperature=0)["choices"][0]["text"]
    raw.close()
    model, lock = manager.get(heavy=True)
    with lock:
        assert model(prompt=PROMPT, max_tokens=16, temperature=0)["choices"][0]["text"] == expected


def test_seed_makes_sampling_reproducible(manager: ModelManager) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("on a GPU a prefix-cache hit computes with other kernels: a seed is exact only on the CPU "
                    "(README, continuous batching)")
    model, _ = manager.get(heavy=True)
    runs = [model(prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=seed)["choices"][0]["text"]
            for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_stop_sequence_cuts_text_and_reports_stop(manager: ModelManager) -> None:
    model, _ = manager.get(heavy=True)
    full = model(prompt=PROMPT, max_tokens=20, temperature=0)["choices"][0]["text"]
    word = full.split()[2]
    result = model(prompt=PROMPT, max_tokens=20, temperature=0, stop=[word])
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["choices"][0]["text"] == full[: full.index(word)]


def test_stop_when_ends_the_answer_where_it_says_with_the_tokens_generated_as_usage(manager: ModelManager) -> None:
    """A Python caller's `stop_when` sees the text so far after each piece and ends the generation at True."""
    model, _ = manager.get(heavy=True)
    full = model(prompt=PROMPT, max_tokens=20, temperature=0)
    seen: list[str] = []

    def three_words(text: str) -> bool:
        seen.append(text)
        return len(text.split()) >= 3

    result = model(prompt=PROMPT, max_tokens=20, temperature=0, stop_when=three_words)
    text = result["choices"][0]["text"]
    assert result["choices"][0]["finish_reason"] == "stop" and len(text.split()) == 3
    assert full["choices"][0]["text"].startswith(text) and seen[-1] == text and len(seen) > 1
    assert result["usage"]["completion_tokens"] == len(seen) < full["usage"]["completion_tokens"]
    with pytest.raises(InvalidRequestError, match="stop_when='no' is not valid") as refused:
        model(prompt=PROMPT, max_tokens=5, stop_when="no")
    assert refused.value.param == "stop_when"


def test_stream_yields_chunks_that_add_up(manager: ModelManager) -> None:
    model, _ = manager.get(heavy=False)
    whole = model(prompt=PROMPT, max_tokens=10, temperature=0)
    chunks = list(model(prompt=PROMPT, max_tokens=10, temperature=0, stream=True))
    assert len(chunks) > 2
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert chunks[-1]["usage"] == whole["usage"]
    assert len({c["id"] for c in chunks}) == 1


def test_chat_uses_gemma_turn_format(manager: ModelManager) -> None:
    model, _ = manager.get(heavy=True)
    assert isinstance(model, LlamaCppModel)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
    prompt = model.template.render(messages)
    assert prompt == ("<bos><start_of_turn>user\nBe brief.\n\nName a color.<end_of_turn>\n"
                      "<start_of_turn>model\n")
    result = model.create_chat_completion(messages=messages, max_tokens=8, temperature=0)
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["role"] == "assistant"
    assert result["usage"]["prompt_tokens"] == len(model.llama.tokenize(prompt.encode(), add_bos=False, special=True))


def test_both_tiers_share_one_model_when_same_file(manager: ModelManager) -> None:
    heavy, heavy_lock = manager.get(heavy=True)
    light, light_lock = manager.get(heavy=False)
    assert heavy is light and heavy_lock is light_lock


def test_tiers_on_different_files_load_separately(gemma_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "light.gguf"
    try:
        os.link(gemma_path, copy)  # a second path that is not a symlink to the first
    except OSError:
        shutil.copyfile(gemma_path, copy)
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_1b_path=copy))
    heavy, _ = manager.get(heavy=True)
    light, _ = manager.get(heavy=False)
    assert heavy is not light and light.name == "light.gguf"
    manager.close()


def test_threads_and_context_are_applied(gemma_path: Path) -> None:
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_n_threads=1, model_context_size=512,
                                         model_parallel=1))
    model, _ = manager.get(heavy=True)
    assert isinstance(model, LlamaCppModel) and model.engine is None
    assert model.threads == 1
    assert model.llama.n_ctx() == model.context_size == 512
    manager.close()


def test_batching_engine_gets_threads_context_and_slots(gemma_path: Path) -> None:
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_n_threads=1, model_context_size=512,
                                         model_parallel=4))
    model, lock = manager.get(heavy=True)
    assert isinstance(model, LlamaCppModel) and model.engine is not None
    assert model.threads == 1 and model.context_size == 512
    assert model.engine.context_tokens >= 4 * 512 and model.engine.slots == 4
    assert isinstance(lock, threading.BoundedSemaphore)
    manager.close()


def test_gpu_layers_ignored_without_gpu_build_with_one_log_line(
    gemma_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has GPU support")
    caplog.set_level(logging.INFO, logger="agentic")
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_gpu_layers=30))
    model, _ = manager.get(heavy=True)
    assert isinstance(model, LlamaCppModel) and model.gpu_layers == 0
    assert [r.message for r in caplog.records].count(
        'MODEL_GPU_LAYERS=30 ignored: this llama-cpp-python build has no GPU support '
        '(reinstall with CMAKE_ARGS="-DGGML_CUDA=on" to use the GPU)') == 1
    manager.close()


def test_preload_true_loads_both_tiers_at_creation(gemma_path: Path) -> None:
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_preload=True))
    assert manager.is_loaded(heavy=True) and manager.is_loaded(heavy=False)
    manager.close()
    lazy = ModelManager(make_settings(model_7b_path=gemma_path, model_preload=False))
    assert not lazy.is_loaded(heavy=True)


def test_split_gguf_loads_from_first_part(gemma_path: Path, tmp_path: Path, manager: ModelManager) -> None:
    parts = split_gguf(gemma_path, tmp_path, max_tensors=150)
    assert [p.name for p in parts] == ["gemma-3-270m-q4_k_m-00001-of-00002.gguf",
                                       "gemma-3-270m-q4_k_m-00002-of-00002.gguf"]
    split_manager = ModelManager(make_settings(model_7b_path=parts[0], model_n_threads=2))
    model, _ = split_manager.get(heavy=True)
    whole, _ = manager.get(heavy=True)
    expected = whole(prompt=PROMPT, max_tokens=8, temperature=0)["choices"][0]["text"]
    assert model(prompt=PROMPT, max_tokens=8, temperature=0)["choices"][0]["text"] == expected
    split_manager.close()


def test_prompt_over_context_is_an_error_not_truncated(gemma_path: Path) -> None:
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_context_size=128))
    model, _ = manager.get(heavy=True)
    long_prompt = "word " * 400
    with pytest.raises(ContextLengthExceededError) as caught:
        model(prompt=long_prompt, max_tokens=4)
    assert f"context window is {model.context_size} tokens" in caught.value.message
    assert str(model.count_tokens(long_prompt)) in caught.value.message
    with pytest.raises(ContextLengthExceededError):
        model.create_chat_completion(messages=[{"role": "user", "content": long_prompt}], stream=True)
    manager.close()


def test_max_tokens_is_capped_by_the_context(gemma_path: Path) -> None:
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_context_size=256))
    model, _ = manager.get(heavy=True)
    result = model(prompt=PROMPT, max_tokens=255, temperature=0)
    assert result["usage"]["total_tokens"] == model.context_size < result["usage"]["prompt_tokens"] + 255
    assert result["choices"][0]["finish_reason"] == "length"
    with pytest.raises(InvalidRequestError) as caught:  # larger than the whole window: refused, as by the API
        model(prompt=PROMPT, max_tokens=500)
    assert caught.value.param == "max_tokens" and "context window of 256 tokens" in caught.value.message
    manager.close()


def test_missing_user_path_is_guide_error_with_ls_hint(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "qwen-7b" / "nope.gguf"
    with pytest.raises(ModelFileNotFoundError) as caught:
        ModelManager(make_settings(model_7b_path=missing))
    message = caught.value.message
    assert message.startswith("Model file not found: MODEL_7B_PATH=")
    assert f"ls {missing.parent}/" in message


def test_concurrent_threads_with_lock_get_independent_results(gemma_path: Path) -> None:
    # One request at a time (MODEL_PARALLEL=1): the guide's lock serializes, results match exactly.
    # The batching engine's version of this is in test_batching.py.
    serial = ModelManager(make_settings(model_7b_path=gemma_path, model_parallel=1, model_n_threads=2))
    model, lock = serial.get(heavy=True)
    prompts = ["The capital of France is", "Water is made of", "The first planet is", "Two plus two is"]
    with lock:
        expected = {p: model(prompt=p, max_tokens=8, temperature=0)["choices"][0]["text"] for p in prompts}
    results: dict[str, str] = {}

    def worker(prompt: str) -> None:
        with lock:
            results[prompt] = model(prompt=prompt, max_tokens=8, temperature=0)["choices"][0]["text"]

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=None)
    assert results == expected


def test_unloadable_file_gives_out_of_memory_hints(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    manager = ModelManager(make_settings(model_7b_path=broken))
    with pytest.raises(ModelLoadError) as caught:
        manager.get(heavy=True)
    message = caught.value.message
    assert message.startswith(f"llama.cpp could not load {broken}")
    assert "MODEL_GPU_LAYERS=20 instead of 30" in message and "MODEL_CONTEXT_SIZE" in message


def test_chat_uses_the_template_stored_in_the_gguf(gemma_path: Path, tmp_path: Path) -> None:
    template = ("{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[ASSISTANT] {% endif %}")
    with_template = tmp_path / "templated.gguf"
    rewrite_gguf(gemma_path, with_template, extra={"tokenizer.chat_template": template})
    manager = ModelManager(make_settings(model_7b_path=with_template, model_parallel=1))
    model, _ = manager.get(heavy=True)
    assert isinstance(model, LlamaCppModel)
    assert model.template.render([{"role": "user", "content": "Hi"}]) == "[USER] Hi\n[ASSISTANT] "
    result = model.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)
    assert result["usage"]["prompt_tokens"] == model.count_tokens("[USER] Hi\n[ASSISTANT] ")
    manager.close()
