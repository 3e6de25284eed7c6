"""MODEL_MEMORY_BUDGET_MB: a load that would pass the budget unloads an idle model first, or is refused clearly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from agentic.api.app import create_app
from agentic.errors import MemoryBudgetError, ModelClosedError
from agentic.ml.gguf import gguf_parts
from agentic.ml.model_manager import ModelManager
from conftest import make_settings

SMALL = {"model_parallel": 2, "model_context_size": 512, "model_n_threads": 2}


def _second_file(gemma_path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "light.gguf"
    try:
        os.link(gemma_path, copy)  # a second path (another model to the manager) without copying 250 MB
    except OSError:
        shutil.copyfile(gemma_path, copy)
    return copy


def test_the_estimate_counts_weights_and_the_kv_cache(gemma_path: Path) -> None:
    manager = ModelManager(make_settings(model_7b_path=gemma_path, **SMALL))
    small = manager.footprint_mb(manager.specs["heavy"])
    manager.settings = make_settings(model_7b_path=gemma_path, **{**SMALL, "model_parallel": 4})
    bigger = manager.footprint_mb(manager.specs["heavy"])
    weights = gemma_path.stat().st_size / 2**20
    # Gemma 3 270M: 18 layers x 1 KV head x (256 + 256) x 2 bytes = 18 KiB per token; 2 x 512 tokens more = 18 MiB
    assert weights < small and bigger - small == pytest.approx(18.0, rel=0.01)
    manager.close()


def test_a_model_larger_than_the_budget_is_refused_with_the_figures(gemma_path: Path) -> None:
    manager = ModelManager(make_settings(model_7b_path=gemma_path, model_memory_budget_mb=100, **SMALL))
    with pytest.raises(MemoryBudgetError) as caught:
        manager.get(heavy=True)
    message = caught.value.message
    assert "MODEL_MEMORY_BUDGET_MB=100" in message and "MODEL_PARALLEL" in message and " MB" in message
    assert caught.value.status_code == 503 and caught.value.param == "MODEL_MEMORY_BUDGET_MB"
    assert not manager.is_loaded(heavy=True)


def test_the_least_recently_used_idle_model_makes_room(gemma_path: Path, tmp_path: Path) -> None:
    light_path = _second_file(gemma_path, tmp_path)
    settings = make_settings(model_7b_path=gemma_path, model_1b_path=light_path, **SMALL)
    one = ModelManager(settings).footprint_mb(ModelManager(settings).specs["heavy"])
    budget = int(one * 1.5)  # room for one of the two, not both
    with ModelManager(make_settings(model_7b_path=gemma_path, model_1b_path=light_path,
                                    model_memory_budget_mb=budget, **SMALL)) as manager:
        heavy, _ = manager.get(heavy=True)
        first = heavy(prompt="Hello", max_tokens=4, temperature=0)["choices"][0]["text"]
        light, _ = manager.get(heavy=False)  # the heavy model is idle: unloaded to make room
        assert manager.is_loaded(heavy=False) and not manager.is_loaded(heavy=True)
        with pytest.raises(ModelClosedError, match=r"call manager\.get\(\) again"):  # a reference kept from before
            heavy(prompt="Hello", max_tokens=4, temperature=0)
        assert light(prompt="Hello", max_tokens=4, temperature=0)["choices"][0]["text"] == first
        heavy, _ = manager.get(heavy=True)  # and it comes back on the next request, the light one leaving
        assert manager.is_loaded(heavy=True) and not manager.is_loaded(heavy=False)


def test_a_model_generating_is_not_unloaded_the_load_is_refused(gemma_path: Path, tmp_path: Path) -> None:
    light_path = _second_file(gemma_path, tmp_path)
    settings = make_settings(model_7b_path=gemma_path, model_1b_path=light_path, **SMALL)
    budget = int(ModelManager(settings).footprint_mb(ModelManager(settings).specs["heavy"]) * 1.5)
    with ModelManager(make_settings(model_7b_path=gemma_path, model_1b_path=light_path,
                                    model_memory_budget_mb=budget, **SMALL)) as manager:
        heavy, _ = manager.get(heavy=True)
        stream = iter(heavy(prompt="Once upon a time", max_tokens=40, temperature=0, stream=True))
        next(stream)
        with pytest.raises(MemoryBudgetError) as caught:
            manager.get(heavy=False)
        assert "generating now" in caught.value.message and caught.value.retry_after
        chunks = list(stream)  # the running generation finishes on its model, untouched
        assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
        assert manager.is_loaded(heavy=True) and not manager.is_loaded(heavy=False)


async def test_the_api_answers_a_refused_load_in_openai_s_envelope(gemma_path: Path) -> None:
    settings = make_settings(model_7b_path=gemma_path, model_memory_budget_mb=100, **SMALL)
    app = create_app(settings, manager=ModelManager(settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        answer = await client.post("/v1/completions", json={"model": "heavy", "prompt": "Hi", "max_tokens": 2})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "memory_budget" and "MODEL_MEMORY_BUDGET_MB=100" in error["message"]


def test_split_files_count_every_part(tmp_path: Path) -> None:
    parts = [tmp_path / f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for part in parts:
        part.write_bytes(b"x")
    assert gguf_parts(parts[0]) == parts
    assert gguf_parts(tmp_path / "single.gguf") == [tmp_path / "single.gguf"]
