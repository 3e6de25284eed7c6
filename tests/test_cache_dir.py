"""An unusable MODEL_CACHE_DIR (cannot be created, or a file) is one `Error:` line naming it, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentic.errors import ConfigError
from agentic.ml.default_model import embedded_model_path
from agentic.ml.gpu_model_manager import GPUModelManager
from conftest import REPO_ROOT, free_port, make_settings

EXAMPLES = REPO_ROOT / "examples" / "business_ideas.csv"
COMMANDS = {
    "generate": [sys.executable, "-m", "agentic.cli", "generate", "hello", "--max-tokens", "4"],
    "analyze": [sys.executable, "-m", "agentic.cli", "analyze", str(EXAMPLES), "--out", "run", "--no-progress"],
    "doctor": [sys.executable, "-m", "agentic.cli", "doctor"],
    "api": [sys.executable, str(REPO_ROOT / "src" / "agentic" / "api" / "app.py")],
}


def _unusable_cache(kind: str, tmp_path: Path) -> Path:
    """A folder that cannot be created (under /proc), or a regular file where the folder should be."""
    if kind == "cannot be created":
        return Path("/proc/agentic-no-such-cache")
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder")
    return blocker


@pytest.mark.parametrize("kind", ["cannot be created", "a file"])
def test_embedded_model_in_an_unusable_cache_is_a_config_error(tmp_path: Path, kind: str) -> None:
    cache = _unusable_cache(kind, tmp_path)
    with pytest.raises(ConfigError, match="Set MODEL_CACHE_DIR to a writable folder") as caught:
        embedded_model_path(cache)
    assert f"MODEL_CACHE_DIR={cache} cannot be created or written" in caught.value.message
    assert caught.value.param == "MODEL_CACHE_DIR"


def test_gguf_conversion_into_an_unusable_cache_fails_before_converting(tmp_path: Path) -> None:
    cache = _unusable_cache("a file", tmp_path)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    manager = object.__new__(GPUModelManager)  # no model resolved: only the cache step is under test
    manager.settings = make_settings(model_cache_dir=cache)
    with pytest.raises(ConfigError, match=f"MODEL_CACHE_DIR={cache} cannot be created or written"):
        manager._converted(gguf, transformers=None)  # None: converting would fail with AttributeError


@pytest.mark.parametrize("kind", ["cannot be created", "a file"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_commands_print_one_error_line_for_an_unusable_cache(tmp_path: Path, kind: str, command: str) -> None:
    cache = _unusable_cache(kind, tmp_path)
    environment = {**os.environ, "MODEL_CACHE_DIR": str(cache), "API_PORT": str(free_port())}
    process = subprocess.run(COMMANDS[command], cwd=tmp_path, env=environment, capture_output=True, text=True,
                             timeout=None)
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, process.stderr
    assert f"MODEL_CACHE_DIR={cache}" in errors[0] and "writable folder" in errors[0]
    if kind == "a file":
        assert Path(cache).read_text() == "not a folder"
