"""The guide's import path of the OpenAI backend, which lives in `agentic.ml.backends.openai_api`."""

from .backends.openai_api import OpenAIChatModel, OpenAIModelManager

__all__ = ["OpenAIChatModel", "OpenAIModelManager"]
