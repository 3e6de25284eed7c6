"""Chat prompts for local models: the model's own Jinja template, or a fallback by architecture."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidRequestError

__all__ = ["ChatTemplate", "fallback_template"]

# Gemma's turn format; its GGUF files often ship without a template. The system message is folded
# into the first user turn, as Gemma's own template does.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] if messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' }}"
    "{% if loop.first and system %}{{ system + '\\n\\n' }}{% endif %}"
    "{{ (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_FALLBACKS = {"gemma": (GEMMA_TEMPLATE, ("<end_of_turn>",))}


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the special tokens it refers to."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    name: str = "model"

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text that asks the model for the assistant's next turn."""
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise InvalidRequestError(f"The model's chat template refused these messages: {message}",
                                      param="messages")

        try:
            return environment.from_string(self.source).render(
                messages=messages, bos_token=self.bos_token, eos_token=self.eos_token,
                add_generation_prompt=True, raise_exception=raise_exception,
                strftime_now=lambda fmt: datetime.now().strftime(fmt),
            )
        except TemplateError as exc:
            raise InvalidRequestError(f"The chat template of {self.name} failed on these messages: {exc}",
                                      param="messages") from None


def fallback_template(architecture: str, bos_token: str, eos_token: str) -> ChatTemplate:
    """The template for a model file that has none: its family's format, else ChatML."""
    for family, (source, stop) in _FALLBACKS.items():
        if architecture.startswith(family):
            return ChatTemplate(source, bos_token, eos_token, stop, f"{family} (fallback)")
    return ChatTemplate(CHATML_TEMPLATE, bos_token, eos_token, ("<|im_end|>",), "chatml (fallback)")
