"""Chat prompts for local models: the model's own Jinja template, or a fallback by architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import Template
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
_MARK = "\U000f0000"  # a private-use character no template emits: marks where a message's content goes
_FALLBACKS = {"gemma": (GEMMA_TEMPLATE, ("<end_of_turn>",))}


@lru_cache(maxsize=32)
def _compiled(source: str) -> Template:
    """A template compiled once (about 5 ms for Gemma's on every request before; rendering is thread-safe)."""
    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)


Tokenize = Callable[[str, bool], list[int]]  # (text, parse control-token text?) -> token ids, no BOS added


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the special tokens it refers to."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    stop: tuple[str, ...] = ()
    name: str = "model"

    @property
    def hermes_tools(self) -> bool:
        """Whether the template offers tools itself and asks for `<tool_call>` blocks (Qwen 2.5, Hermes): then
        tools, calls and results go through it as they are (see agentic.ml.tools)."""
        return "tools" in self.source and "<tool_call>" in self.source

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text that asks the model for its next turn (`tools`: for a template that takes them)."""
        def raise_exception(message: str) -> None:
            raise InvalidRequestError(f"The model's chat template refused these messages: {message}",
                                      param="messages")

        try:
            return _compiled(self.source).render(
                messages=messages, tools=tools, bos_token=self.bos_token, eos_token=self.eos_token,
                add_generation_prompt=True, raise_exception=raise_exception,
                strftime_now=lambda fmt: datetime.now().strftime(fmt),
            )
        except TemplateError as exc:
            raise InvalidRequestError(f"The chat template of {self.name} failed on these messages: {exc}",
                                      param="messages") from None

    def tokenize(self, messages: list[dict[str, Any]], tokenize: Tokenize, bos: list[int],
                 tools: list[dict[str, Any]] | None = None, plain: Callable[[str], bool] | None = None) -> list[int]:
        """The prompt's tokens, with the messages' own text never read as control tokens.

        Only the template's markup may become control tokens: `<start_of_turn>` typed by a user costs
        the tokens of its characters, so user text cannot forge a turn or a system prompt. Prompts
        whose messages hold no control-token text are tokenized in one piece, exactly as before.
        `bos` is prepended unless the rendered text starts with the BOS token itself. `plain(text)`: True when
        `text` certainly holds no control-token text (then it is not tokenized twice to find out).
        """
        text = self.render(messages, tools)
        start = [] if self.bos_token and text.startswith(self.bos_token) else bos
        contents = [(index, message["content"]) for index, message in enumerate(messages)
                    if isinstance(message.get("content"), str) and message["content"]]
        risky = [index for index, content in contents
                 if not (plain and plain(content)) and tokenize(content, True) != tokenize(content, False)]
        if not risky:
            return start + tokenize(text, True)
        pieces = self._split(messages, text, [index for index, _ in contents], tools)
        if pieces is None:
            raise InvalidRequestError(
                f"messages[{risky[0]}].content holds control-token text that the chat template of {self.name} "
                "changes on the way, so it cannot be kept as plain text. Remove the control-token text.",
                param=f"messages[{risky[0]}].content")
        tokens = list(start)
        for piece, literal in pieces:
            tokens += tokenize(piece, not literal)
        return tokens

    def _split(self, messages: list[dict[str, Any]], text: str, indexes: list[int],
               tools: list[dict[str, Any]] | None) -> list[tuple[str, bool]] | None:
        """`text` cut into (markup, False) and (message content, True) pieces; None if the two cannot be told apart.

        The template is rendered once more with a placeholder for each content, which shows its markup;
        the real rendering must then be that markup with each content (or the content trimmed, as many
        templates do) in the placeholders' places.
        """
        marked = [dict(message) for message in messages]
        for number, index in enumerate(indexes):
            marked[index]["content"] = f"{_MARK}{number}{_MARK}"
        parts = self.render(marked, tools).split(_MARK)
        if len(parts) != 2 * len(indexes) + 1:
            return None
        markup, pieces, position = parts[0::2], [], 0
        for number, index in enumerate(indexes + [-1]):
            if not text.startswith(markup[number], position):
                return None
            pieces.append((markup[number], False))
            position += len(markup[number])
            if index < 0:
                break
            content = messages[index]["content"]
            for shown in (content, content.strip(), content.lstrip(), content.rstrip()):
                after = position + len(shown)
                if text.startswith(shown, position) and text.startswith(markup[number + 1], after):
                    pieces.append((shown, True))
                    position = after
                    break
            else:
                return None
        return [(piece, literal) for piece, literal in pieces if piece] if position == len(text) else None


def fallback_template(architecture: str, bos_token: str, eos_token: str) -> ChatTemplate:
    """The template for a model file that has none: its family's format, else ChatML."""
    for family, (source, stop) in _FALLBACKS.items():
        if architecture.startswith(family):
            return ChatTemplate(source, bos_token, eos_token, stop, f"{family} (fallback)")
    return ChatTemplate(CHATML_TEMPLATE, bos_token, eos_token, ("<|im_end|>",), "chatml (fallback)")
