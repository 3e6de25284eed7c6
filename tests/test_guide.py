"""The guide's own words, run unchanged: its Python snippet and the CLI's main job."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from agentic.cli import app
from conftest import REPO_ROOT

GUIDE_SNIPPET = '''
from src.agentic.ml.model_factory import create_model_manager

# Factory automatically creates the right manager based on MODEL_BACKEND
model_manager = create_model_manager()

# All managers implement the same interface
model, lock = model_manager.get(heavy=True)
with lock:
    response = model(
        prompt="Your prompt",
        max_tokens=256,
        temperature=0.7
    )
print(response["choices"][0]["finish_reason"], response["usage"]["completion_tokens"])
'''


def test_guide_snippet_runs_unchanged_from_repo_root() -> None:
    environment = {**os.environ, "MODEL_N_THREADS": "2", "MODEL_CONTEXT_SIZE": "1024"}
    result = subprocess.run([sys.executable, "-c", GUIDE_SNIPPET], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=None)
    assert result.returncode == 0, result.stderr[-2000:]
    finish_reason, completion_tokens = result.stdout.split()
    assert finish_reason in {"stop", "length"} and int(completion_tokens) > 0


def test_generate_streams_text_on_embedded_model() -> None:
    result = CliRunner().invoke(app, ["generate", "The capital of France is", "--max-tokens", "5",
                                      "--temperature", "0"])
    assert result.exit_code == 0, result.output
    assert "llama_cpp gemma-3-270m-q4_k_m.gguf" in result.output
    assert "5 completion tokens" in result.output


def test_generate_reports_missing_model_file_without_traceback() -> None:
    result = CliRunner().invoke(app, ["generate", "hi"], env={"MODEL_7B_PATH": "models/qwen-7b/missing.gguf"})
    assert result.exit_code == 2
    assert "Model file not found: MODEL_7B_PATH=models/qwen-7b/missing.gguf" in result.output
    assert "ls models/qwen-7b/" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_all_interfaces_without_keys() -> None:
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2
    assert "Refusing to listen on 0.0.0.0 without API_KEYS" in result.output
