"""A backend from another package: installed from tests/plugins, it works with no change to agentic.

The package (`agentic-echo-backend`, a toy model that repeats the prompt's words) declares one
`agentic.backends` entry point. Installed next to agentic, it must pass the backend contract tests and be
known to settings validation, `agentic config`, `agentic doctor` and `agentic cost`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PLUGIN = REPO_ROOT / "tests" / "plugins" / "agentic-echo-backend"
AGENTIC = str(Path(sys.executable).with_name("agentic"))


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed with pip into its own directory (a copy is built, so the repository stays clean)."""
    source = shutil.copytree(PLUGIN, tmp_path_factory.mktemp("source") / PLUGIN.name)
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    return target


def _run(plugin_path: Path | None, *command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if plugin_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_path), env.get("PYTHONPATH")]))
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)


def test_contract_tests_pass_on_the_plugin_backend(plugin_path: Path) -> None:
    result = _run(plugin_path, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  "tests/backends/test_contract.py", "-k", "echo", cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_settings_and_config_know_the_plugin(plugin_path: Path, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODEL_BACKEND=echo\nECHO_HEAVY_MODEL=parrot\n")
    result = _run(plugin_path, AGENTIC, "config", "--describe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Model Backend: echo" in lines and "Heavy Model: parrot" in lines and "Light Model: echo-small" in lines
    assert any(line.split() == ["ECHO_HEAVY_MODEL", "parrot", "[.env]"] for line in lines)
    assert any(line.split() == ["ECHO_CONTEXT_SIZE", "256", "[default]"] for line in lines)

    (tmp_path / ".env").write_text("MODEL_BACKEND=echo\nECHO_CONTEXT_SIZE=lots\n")
    bad = _run(plugin_path, AGENTIC, "config", cwd=tmp_path)
    assert bad.returncode == 2 and "ECHO_CONTEXT_SIZE='lots' is not valid" in bad.stderr
    assert "Traceback" not in bad.stderr

    (tmp_path / ".env").write_text("MODEL_BACKEND=parrot\n")
    unknown = _run(plugin_path, AGENTIC, "config", cwd=tmp_path)
    assert "expected 'llama_cpp', 'openai', 'transformers_gpu' or 'echo'" in unknown.stderr


def test_without_the_package_the_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODEL_BACKEND=echo\n")
    result = _run(None, AGENTIC, "config", cwd=tmp_path)
    assert result.returncode == 2
    assert "MODEL_BACKEND='echo' is not valid: expected 'llama_cpp', 'openai' or 'transformers_gpu'" in result.stderr


def test_doctor_runs_the_plugins_checks(plugin_path: Path, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODEL_BACKEND=echo\nECHO_LIGHT_MODEL=mynah\n")
    result = _run(plugin_path, AGENTIC, "doctor", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "echo settings" in result.stdout and "heavy echo-large, light mynah" in result.stdout

    (tmp_path / ".env").write_text("MODEL_BACKEND=echo\nECHO_CONTEXT_SIZE=lots\n")
    failed = _run(plugin_path, AGENTIC, "doctor", cwd=tmp_path)
    assert failed.returncode == 1 and "ECHO_CONTEXT_SIZE='lots' is not valid" in failed.stdout


def test_cost_prices_the_plugin_as_a_local_backend(plugin_path: Path, tmp_path: Path) -> None:
    result = _run(plugin_path, AGENTIC, "cost", "--tokens-per-second", "100", "--hardware-per-hour", "1",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("echo "))
    assert "ECHO_HEAVY_MODEL / ECHO_LIGHT_MODEL" in line and "8.3 min at 100 output tokens/s" in line


def test_generate_answers_from_the_plugin(plugin_path: Path, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODEL_BACKEND=echo\n")
    result = _run(plugin_path, AGENTIC, "generate", "one two three", "--max-tokens", "4", "--temperature", "0",
                  "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:4] == ["one", "two", "three", "one"]
