"""agentic doctor: a healthy setup passes; each broken one fails with its fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentic import checks, doctor
from agentic.cli import app
from agentic.doctor import run_checks
from conftest import make_settings
from gguf_split import split_gguf


def _failed(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {check.name: check for check in checks if not check.ok}


def test_embedded_default_passes_every_check() -> None:
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output and "MODEL_7B_PATH file" in result.output


def test_file_that_is_not_gguf_fails_with_fix(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 Not Found</html>")
    failed = _failed(run_checks(make_settings(model_7b_path=fake)))
    assert failed["MODEL_7B_PATH file"].detail == f"{fake} does not start with the GGUF magic bytes"
    assert "download the file again" in failed["MODEL_7B_PATH file"].fix


def test_split_model_with_a_missing_part_fails(gemma_path: Path, tmp_path: Path) -> None:
    parts = split_gguf(gemma_path, tmp_path, max_tensors=150)
    assert not _failed(run_checks(make_settings(model_1b_path=parts[0])))
    parts[1].unlink()
    failed = _failed(run_checks(make_settings(model_1b_path=parts[0])))
    assert failed["MODEL_1B_PATH file"].detail == f"missing: {parts[1]}"


def test_gpu_visible_but_cpu_only_build_is_the_silent_trap(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build has GPU support")
    monkeypatch.setattr(checks, "gpu_visible", lambda: True)  # as on a machine with an NVIDIA driver
    failed = _failed(run_checks(make_settings(model_gpu_layers=30)))
    assert "the GPU is silently unused" in failed["GPU offload"].detail
    assert 'CMAKE_ARGS="-DGGML_CUDA=on"' in failed["GPU offload"].fix
    assert not _failed(run_checks(make_settings(model_gpu_layers=0)))


def test_openai_backend_checks_server_key_and_model_names(llama_server: str) -> None:
    good = run_checks(make_settings(model_backend="openai", openai_base_url=llama_server,
                                    openai_heavy_model="gemma", openai_light_model="gpt-3.5-turbo"))
    failed = _failed(good)
    assert set(failed) == {"OPENAI_LIGHT_MODEL"}
    assert failed["OPENAI_LIGHT_MODEL"].detail == f"'gpt-3.5-turbo' is not listed by {llama_server}"
    assert "gemma" in failed["OPENAI_LIGHT_MODEL"].fix


def test_openai_backend_unreachable_and_missing_key() -> None:
    failed = _failed(run_checks(make_settings(model_backend="openai", openai_base_url="http://127.0.0.1:9/v1")))
    assert failed["OpenAI server http://127.0.0.1:9/v1"].detail.startswith("Could not reach http://127.0.0.1:9/v1")
    failed = _failed(run_checks(make_settings(model_backend="openai")))
    assert failed["OpenAI client"].detail.startswith("OPENAI_API_KEY not provided")


def test_transformers_hub_id_not_offline_fails_with_download_fix() -> None:
    failed = _failed(run_checks(make_settings(model_backend="transformers_gpu",
                                              gpu_heavy_model="microsoft/DialoGPT-medium")))
    assert failed["GPU_HEAVY_MODEL"].fix.startswith("huggingface-cli download microsoft/DialoGPT-medium")


def test_doctor_exit_code_is_one_on_failure(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    shutil.copyfile(__file__, fake)
    result = CliRunner().invoke(app, ["doctor"], env={"MODEL_7B_PATH": str(fake)})
    assert result.exit_code == 1
    assert "FAIL" in result.output and "fix: download the file again" in result.output
