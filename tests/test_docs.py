"""The docs name every setting the code reads, and the help texts name every command."""

from __future__ import annotations

from typer.testing import CliRunner

from agentic.cli import app
from agentic.config import Settings
from conftest import REPO_ROOT


def test_every_setting_is_in_the_readme_table_and_env_example() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    example = (REPO_ROOT / ".env.example").read_text()
    names = [Settings.env_name(field) for field in Settings.model_fields]
    assert [name for name in names if f"| `{name}` |" not in readme] == []
    assert [name for name in names if f"{name}=" not in example] == []


def test_help_lists_every_command_the_readme_uses() -> None:
    result = CliRunner().invoke(app, ["--help"])
    readme = (REPO_ROOT / "README.md").read_text()
    for command in ("config", "generate", "analyze", "serve", "cost", "doctor"):
        assert command in result.output and f"agentic {command}" in readme
