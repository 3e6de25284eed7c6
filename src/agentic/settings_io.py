"""Reading any pydantic-settings model the way agentic reads its own: the variable of a field, secrets shown as
SET / NOT SET, one-line errors naming the variable, the value and the fix, and where each value came from.

Generic on purpose: a plugin backend's own settings model (`BaseModelManager.settings_class`) gets the same
treatment as agentic's `Settings` (in `config.py`, which re-exports these).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import AliasChoices, SecretStr, ValidationError
from pydantic_settings import BaseSettings

from .errors import ConfigError

__all__ = ["SettingSource", "display_url", "env_name", "load_backend_settings", "secret_fields", "setting_sources"]

_S = TypeVar("_S", bound=BaseSettings)
SettingSource = Literal["default", ".env", "environment", "argument"]


def display_url(url: str) -> str:
    """`url` as it may be shown (config, logs, errors, /v1/backend): without `user:password@`."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def env_name(settings_class: type[BaseSettings], field: str) -> str:
    """The environment variable that sets `field` of any settings model (its alias, else prefix + name)."""
    alias = settings_class.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if isinstance(alias, str):
        return alias
    return (str(settings_class.model_config.get("env_prefix", "")) + field).upper()


def secret_fields(settings_class: type[BaseSettings]) -> frozenset[str]:
    """The fields shown only as SET / NOT SET: those typed SecretStr."""
    return frozenset(name for name, info in settings_class.model_fields.items()
                     if info.annotation is SecretStr or SecretStr in get_args(info.annotation))


def load_backend_settings(settings_class: type[_S], env_file: str | Path | None = ".env", **overrides: Any) -> _S:
    """Read any settings model (a plugin backend's own) the way `load_settings` reads agentic's."""
    try:
        settings = settings_class(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(settings_class, exc)) from None
    object.__setattr__(settings, "_env_file_path", env_file)
    return settings


def _describe_validation_error(settings_class: type[BaseSettings], exc: ValidationError) -> str:
    """One line per bad setting: the variable, the value and the valid choices."""
    lines = []
    fields = settings_class.model_fields
    by_env = {env_name(settings_class, field).upper(): field for field in fields}
    for error in exc.errors():
        where = str(error["loc"][0]) if error["loc"] else "?"
        field = by_env.get(where.upper(), where)
        known = field in fields
        name = env_name(settings_class, field) if known else where
        description = (fields[field].description or "") if known else ""
        shown = "<hidden>" if field in secret_fields(settings_class) else repr(error.get("input"))
        expected = error.get("ctx", {}).get("expected")
        message = error["msg"].removeprefix("Value error, ")
        reason = f"expected {expected}" if expected else message[0].lower() + message[1:]
        lines.append(f"{name}={shown} is not valid: {reason}. {description}".rstrip())
    return "Invalid setting: " + " | ".join(lines)


def setting_sources(settings: BaseSettings) -> dict[str, SettingSource]:
    """Where each effective value came from: argument, environment, .env or default."""
    env_file = getattr(settings, "_env_file_path", ".env")
    dotenv_keys: set[str] = set()
    if env_file and Path(env_file).is_file():
        dotenv_keys = {key.upper() for key, value in dotenv_values(env_file).items() if value is not None}
    environment = {key.upper() for key in os.environ}
    sources: dict[str, SettingSource] = {}
    for field in type(settings).model_fields:
        name = env_name(type(settings), field).upper()
        if field in settings.model_fields_set and name not in environment and name not in dotenv_keys:
            sources[field] = "argument"
        elif name in environment:
            sources[field] = "environment"
        elif name in dotenv_keys:
            sources[field] = ".env"
        else:
            sources[field] = "default"
    return sources
