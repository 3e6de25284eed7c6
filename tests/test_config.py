"""Settings: the guide's names and defaults, .env vs environment, clear one-line errors, sources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentic.cli import app
from agentic.config import Settings, load_settings, physical_cores, setting_sources
from agentic.errors import ConfigError
from conftest import REPO_ROOT

GUIDE_DEFAULTS = {
    "MODEL_BACKEND": "llama_cpp",
    "MODEL_CONTEXT_SIZE": 4096,
    "MODEL_GPU_LAYERS": 30,
    "OPENAI_HEAVY_MODEL": "gpt-4",
    "OPENAI_LIGHT_MODEL": "gpt-3.5-turbo",
    "GPU_MAX_MEMORY": 8.0,
    "GPU_TORCH_DTYPE": "float16",
}


def test_every_guide_variable_has_its_default() -> None:
    settings = load_settings(env_file=None)
    for name, value in GUIDE_DEFAULTS.items():
        field = next(f for f in Settings.model_fields if Settings.env_name(f) == name)
        assert getattr(settings, field) == value, name
    assert settings.openai_api_key is None
    assert str(settings.model_7b_path).endswith("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf")


def test_threads_default_to_physical_cores() -> None:
    assert load_settings(env_file=None).threads == physical_cores() >= 1
    assert load_settings(env_file=None, model_n_threads=3).threads == 3


def test_dotenv_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("MODEL_BACKEND=openai\nOPENAI_HEAVY_MODEL=gpt-4o\nMODEL_CONTEXT_SIZE=1024\n")
    monkeypatch.setenv("MODEL_CONTEXT_SIZE", "2048")
    settings = load_settings()
    assert settings.model_backend == "openai"
    assert settings.openai_heavy_model == "gpt-4o"
    assert settings.model_context_size == 2048
    sources = setting_sources(settings)
    assert sources["model_backend"] == ".env"
    assert sources["model_context_size"] == "environment"
    assert sources["openai_light_model"] == "default"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODEL_BACKEND", "vllm",
         "MODEL_BACKEND='vllm' is not valid: expected 'llama_cpp', 'openai' or 'transformers_gpu'"),
        ("MODEL_GPU_LAYERS", "abc", "MODEL_GPU_LAYERS='abc' is not valid: input should be a valid integer"),
        ("GPU_TORCH_DTYPE", "float8",
         "GPU_TORCH_DTYPE='float8' is not valid: expected 'float16', 'bfloat16' or 'float32'"),
        ("MODEL_CONTEXT_SIZE", "0", "MODEL_CONTEXT_SIZE='0' is not valid: input should be greater than or equal to 64"),
        ("MODEL_PRELOAD", "maybe", "MODEL_PRELOAD='maybe' is not valid"),
    ],
)
def test_bad_value_names_variable_value_and_choices(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=None)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_bad_value_in_dotenv_fails_at_cli_start_without_traceback() -> None:
    Path(".env").write_text("MODEL_BACKEND=gpu\n")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 2
    assert "MODEL_BACKEND='gpu' is not valid" in result.output
    assert "Traceback" not in result.output


def test_blank_key_in_dotenv_means_not_set() -> None:
    Path(".env").write_text("OPENAI_API_KEY=\n")
    assert load_settings().openai_api_key is None


def _monitor(env_lines: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The guide's monitoring command, with a .env in the working directory and the repo on the path."""
    (tmp_path / ".env").write_text(env_lines)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "src.agentic.ml.model_factory"], cwd=tmp_path, env=environment,
                          capture_output=True, text=True, timeout=None)


def test_monitoring_command_prints_the_guide_lines(tmp_path: Path) -> None:
    result = _monitor("MODEL_BACKEND=openai\nOPENAI_API_KEY=sk-secret-test-key\n", tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == ["Model Backend: openai", "API Key: SET", "Heavy Model: gpt-4", "Light Model: gpt-3.5-turbo"]
    assert "sk-secret-test-key" not in result.stdout
    assert any(line.split() == ["MODEL_BACKEND", "openai", "[.env]"] for line in lines)
    assert any(line.split() == ["OPENAI_HEAVY_MODEL", "gpt-4", "[default]"] for line in lines)


def test_monitoring_command_runs_as_the_guide_types_it() -> None:
    result = subprocess.run([sys.executable, "-m", "src.agentic.ml.model_factory"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Model Backend: ")


def test_agentic_config_shows_sources_and_hides_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_BACKEND", "openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-print-me")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0
    assert "API Key: SET" in result.output
    assert "sk-never-print-me" not in result.output
    assert "[environment]" in result.output


def test_llama_backend_names_embedded_model_when_paths_unset() -> None:
    result = CliRunner().invoke(app, ["config"])
    assert "Heavy Model: embedded default (Gemma 3 270M Q4_K_M)" in result.output
    assert "API Key" not in result.output


def test_agentic_config_describe_explains_every_setting() -> None:
    result = CliRunner().invoke(app, ["config", "--describe"])
    assert result.exit_code == 0
    for field, info in Settings.model_fields.items():
        assert f"{Settings.env_name(field)}: {info.description}" in result.output


def test_home_in_paths_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_CACHE_DIR")
    env = tmp_path / ".env"
    env.write_text("MODEL_CACHE_DIR=~/agentic-cache\nMODEL_7B_PATH=~/models/big.gguf\n")
    settings = load_settings(env_file=env)
    assert settings.model_cache_dir == Path.home() / "agentic-cache"
    assert settings.model_7b_path == Path.home() / "models" / "big.gguf"


@pytest.mark.parametrize("value", [",", " , ,", " "])
def test_api_keys_with_no_key_is_refused_or_unset(value: str) -> None:
    if not value.strip():  # blank: simply not set
        assert load_settings(env_file=None, api_keys=value).api_key_list == []
        return
    with pytest.raises(ConfigError, match=r"API_KEYS=<hidden> is not valid: it holds no key"):
        load_settings(env_file=None, api_keys=value)
    with pytest.raises(ConfigError, match=r"API_ADMIN_KEYS=<hidden> is not valid: it holds no key"):
        load_settings(env_file=None, api_admin_keys=value)


def test_urls_are_shown_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://agent:pw-123@10.0.0.5:8000/v1,https://api.example.com/v1")
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0
    assert "http://10.0.0.5:8000/v1,https://api.example.com/v1" in result.output
    assert "pw-123" not in result.output and "agent:" not in result.output
