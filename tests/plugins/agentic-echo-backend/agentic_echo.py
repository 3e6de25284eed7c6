"""A toy backend: the "model" repeats the words of its prompt. It uses only agentic's public backend API.

Settings (its own, read from the environment and the same .env as agentic's): ECHO_HEAVY_MODEL,
ECHO_LIGHT_MODEL, ECHO_CONTEXT_SIZE.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from pydantic_settings import BaseSettings, SettingsConfigDict

from agentic.checks import Check
from agentic.config import Settings
from agentic.ml.base import (
    BaseModelManager,
    Delta,
    GenerationParams,
    GenerationRequest,
    Message,
    Model,
    ModelSpec,
    TokenTextStream,
)
from agentic.ml.tiers import Tier


class EchoSettings(BaseSettings):
    """The echo backend's own settings."""

    model_config = SettingsConfigDict(env_prefix="ECHO_", extra="ignore")

    heavy_model: str = "echo-large"
    light_model: str = "echo-small"
    context_size: int = 256


class EchoModel(Model):
    """Generates the prompt's words again, in order (temperature 0) or drawn at random (seeded)."""

    backend = "echo"

    def _complete(self, prompt: str, params: GenerationParams) -> Iterator[Delta]:
        return self._generate(prompt.split(), params)

    def _chat(self, messages: list[Message], params: GenerationParams) -> Iterator[Delta]:
        return self._generate(" ".join(str(message.get("content") or "") for message in messages).split(), params)

    def _generate(self, words: list[str], params: GenerationParams) -> Iterator[Delta]:
        words = words or ["echo"]
        request = GenerationRequest.resolve(list(range(len(words))), params, self.context_size)
        stream = TokenTextStream(lambda token: f" {words[token]}".encode(), lambda token: False, request, params.stop)
        chooser = random.Random(params.seed)

        def tokens() -> Iterator[int]:
            step = 0
            while True:
                yield chooser.randrange(len(words)) if params.temperature > 0 else step % len(words)
                step += 1

        return stream.run(tokens())


class EchoModelManager(BaseModelManager):
    """Heavy tier ECHO_HEAVY_MODEL, light tier ECHO_LIGHT_MODEL."""

    backend = "echo"
    tier_settings = ("ECHO_HEAVY_MODEL", "ECHO_LIGHT_MODEL")
    settings_class = EchoSettings

    @classmethod
    def tier_labels(cls, settings: Settings) -> tuple[str, str]:
        own = cls.own_settings(settings)
        assert isinstance(own, EchoSettings)
        return own.heavy_model, own.light_model

    @classmethod
    def preflight(cls, settings: Settings) -> list[Check]:
        checks = super().preflight(settings)
        heavy, light = cls.tier_labels(settings) if all(check.ok for check in checks) else ("?", "?")
        return [*checks, Check("echo words", True, f"heavy {heavy}, light {light}")]

    def _resolve(self, tier: Tier) -> ModelSpec:
        name = self.tier_labels(self.settings)[0 if tier == "heavy" else 1]
        return ModelSpec(name, name, f"ECHO_{tier.upper()}_MODEL")

    def _load(self, spec: ModelSpec) -> Model:
        own = self.own_settings(self.settings)
        assert isinstance(own, EchoSettings)
        return EchoModel(spec.name, own.context_size)
