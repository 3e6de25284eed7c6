"""What one generation asks for and gives back, shared by every backend and engine.

`GenerationParams` (the sampling arguments, checked once), `GenerationRequest` (the token budget and
sampling resolved after tokenizing, what both local engines take), `Delta` (a piece of the answer),
`Message`, `ModelSpec` (what a tier resolves to), and the input checks every entry point applies: text
that is valid Unicode, max_tokens within the window, a prompt that leaves room, well-formed messages and
response_format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ContextLengthExceededError, InvalidRequestError

if TYPE_CHECKING:
    from .tools import ToolPlan

__all__ = [
    "Delta",
    "GenerationParams",
    "GenerationRequest",
    "Message",
    "ModelSpec",
    "SamplingSpec",
    "check_context",
    "check_max_tokens",
    "check_messages",
    "close_iterator",
    "check_text",
    "invalid_text",
    "invalid_text_message",
]

Message = dict[str, Any]


@dataclass(frozen=True)
class GenerationParams:
    """Validated sampling arguments shared by every backend."""

    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    response_format: dict[str, Any] | None = None
    tools: ToolPlan | None = None  # chat only: the tools the model may call (set by Model.create_chat_completion)
    # Python callers only: called with the answer's text so far after each piece; True ends the answer there, as a
    # stop sequence does (finish_reason "stop", usage counting the tokens generated). The local backends honour it;
    # on a remote API the answer runs to its end, whose usage the server reports only then.
    stop_when: Callable[[str], bool] | None = None
    # Python callers only, honoured by the batched llama.cpp engine (MODEL_PARALLEL > 1), elsewhere ignored: texts the
    # answer must not start with (the first token of each is never sampled first): a retry that must not repeat
    # the start of a refused answer.
    avoid_first: tuple[str, ...] = ()
    continue_final: bool = False  # chat only: the last message is the assistant's answer so far, continued

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must follow: {} for any JSON object, None for free text."""
        kind = (self.response_format or {}).get("type", "text")
        if kind == "json_object":
            return {}
        if kind == "json_schema":
            return dict(self.response_format["json_schema"]["schema"])  # type: ignore[index]
        return None

    @classmethod
    def build(
        cls,
        max_tokens: int | None,
        temperature: float,
        top_p: float,
        stop: str | Sequence[str] | None,
        seed: int | None,
        stream: bool = False,
        response_format: dict[str, Any] | None = None,
        stop_when: Callable[[str], bool] | None = None,
        avoid_first: Sequence[str] = (),
        **extra: Any,
    ) -> GenerationParams:
        """Check every argument and say which one is wrong and how to fix it."""
        if extra:
            raise InvalidRequestError(
                f"Unsupported argument(s): {', '.join(sorted(extra))}. Every backend takes max_tokens, temperature, "
                "top_p, stop, seed, stream and response_format.", param=sorted(extra)[0])
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise InvalidRequestError(
                f"max_tokens={max_tokens!r} is not valid: use a whole number >= 1 (or None for the rest "
                "of the context).", param="max_tokens")
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise InvalidRequestError(
                f"temperature={temperature!r} is not valid: use a number from 0 (greedy) to 2.",
                param="temperature")
        if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise InvalidRequestError(
                f"top_p={top_p!r} is not valid: use a number greater than 0 and at most 1.", param="top_p")
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if any(not isinstance(s, str) or not s for s in stops):
            raise InvalidRequestError(
                f"stop={stop!r} is not valid: use a non-empty string or a list of them.", param="stop")
        if seed is not None and not isinstance(seed, int):
            raise InvalidRequestError(f"seed={seed!r} is not valid: use a whole number.", param="seed")
        check_response_format(response_format)
        if stop_when is not None and not callable(stop_when):
            raise InvalidRequestError(f"stop_when={stop_when!r} is not valid: pass a function of the answer's text "
                                      "so far that returns True to end the answer there.", param="stop_when")
        if isinstance(avoid_first, str) or any(not isinstance(text, str) or not text for text in avoid_first):
            raise InvalidRequestError(f"avoid_first={avoid_first!r} is not valid: pass a list of non-empty strings.",
                                      param="avoid_first")
        return cls(max_tokens, float(temperature), float(top_p), stops, seed, bool(stream), response_format,
                   stop_when=stop_when, avoid_first=tuple(avoid_first))


@dataclass
class Delta:
    """A piece of generated text; the last one of a generation carries finish_reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None  # prompt tokens reused from a prefix cache (None: the backend has none)
    served_by: tuple[str, str] | None = None  # (backend, model) on the first delta when a fallback answered
    tool_calls: list[dict[str, Any]] | None = None  # on the last delta: OpenAI-shaped calls (id, type, function)


def check_response_format(response_format: Any) -> None:
    if response_format is None:
        return
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    schema = (response_format.get("json_schema") or {}).get("schema") if kind == "json_schema" else {}
    if kind not in {"text", "json_object", "json_schema"} or not isinstance(schema, dict):
        raise InvalidRequestError(
            f"response_format={response_format!r} is not valid: use {{'type': 'text'}}, {{'type': 'json_object'}} "
            "or {'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}.", param="response_format")


def invalid_text(value: Any, path: str) -> str | None:
    """The path of the first string in `value` (keys included) that is not valid Unicode; None if all are.

    JSON allows a lone surrogate escape (`"\\ud800"`); no tokenizer, grammar or UTF-8 encoder does.
    """
    pending = [(path, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return where
        elif isinstance(item, dict):
            for key, inner in item.items():
                pending.append((where, key))
                pending.append((f"{where}.{key}", inner))
        elif isinstance(item, list | tuple):
            pending.extend((f"{where}[{index}]", inner) for index, inner in enumerate(item))
    return None


def invalid_text_message(where: str) -> str:
    """What a request with a lone surrogate at `where` is told (the library and the API say the same)."""
    return (f"{where} is not valid Unicode: it holds a lone surrogate (such as \\ud800), which no model can read. "
            "Send valid UTF-8 text.")


def check_text(value: Any, param: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate), naming where it is."""
    where = invalid_text(value, param)
    if where is not None:
        raise InvalidRequestError(invalid_text_message(where), param=where)


@dataclass(frozen=True)
class SamplingSpec:
    """How one generation picks its tokens (llama.cpp's defaults for what the API does not set)."""

    temperature: float
    top_p: float
    seed: int | None = None
    top_k: int = 40
    min_p: float = 0.05


@dataclass(frozen=True)
class GenerationRequest:
    """One generation as a local engine takes it, resolved once after tokenizing (`resolve`)."""

    prompt: list[int]
    limit: int  # most tokens to generate
    sampling: SamplingSpec
    parting: int = 0  # where prompts sharing this one's start likely part (a chat's last message); 0: unknown

    @classmethod
    def resolve(cls, prompt: list[int], params: GenerationParams, context_size: int,
                what: str = "prompt", parting: int = 0) -> GenerationRequest:
        """The generation budget, the one place it is worked out.

        A prompt that leaves no room is refused (never truncated); max_tokens is then capped by the room
        the prompt leaves, and the answer ends with finish_reason "length" when it runs out. (max_tokens
        larger than the whole window was refused before tokenizing: `check_max_tokens`.)
        """
        check_context(len(prompt), context_size, what)
        room = context_size - len(prompt)
        sampling = SamplingSpec(params.temperature, params.top_p, params.seed)
        return cls(list(prompt), min(params.max_tokens or room, room), sampling, parting)


def close_iterator(iterator: object) -> None:
    """Close `iterator` if it can be closed (a generator, a TokenChannel): how a reader that stops early (a
    stop sequence, a client hang-up) ends the generation beneath it, layer by layer, down to the engine."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def check_max_tokens(max_tokens: int | None, context_size: int) -> None:
    """Refuse max_tokens larger than the model's whole context window (0: the backend does not say)."""
    if max_tokens is not None and context_size and max_tokens > context_size:
        raise InvalidRequestError(
            f"max_tokens={max_tokens} is larger than the model's context window of {context_size} tokens. "
            "Lower max_tokens (or raise MODEL_CONTEXT_SIZE).", param="max_tokens")


def check_context(prompt_tokens: int, context_size: int, what: str = "prompt") -> None:
    """Refuse a prompt that leaves no room to generate: never truncate it silently."""
    if prompt_tokens >= context_size:
        raise ContextLengthExceededError(
            f"This model's context window is {context_size} tokens, but the {what} "
            f"{'is' if what == 'prompt' else 'are'} {prompt_tokens} tokens, leaving no room for the answer. "
            "Shorten the prompt or raise MODEL_CONTEXT_SIZE.",
            param="prompt" if what == "prompt" else "messages")


def check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of {'role', 'content'} dicts.",
                                  param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in {"system", "user", "assistant", "tool"}:
            raise InvalidRequestError(
                f"messages[{index}] is not valid: each message needs a role of system, user, assistant or "
                "tool and a content string.", param=f"messages[{index}]")


@dataclass(frozen=True)
class ModelSpec:
    """What a tier resolves to; tiers with the same `key` share one loaded model."""

    key: str
    name: str
    origin: str
