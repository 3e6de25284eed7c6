"""Tool calling, one behaviour on every backend: check `tools` / `tool_choice`, offer the tools to a local model,
keep its calls valid, and turn them into OpenAI's `tool_calls`.

Local models (llama.cpp, transformers) see the tools in the system message and call them in one documented
format, one block per call:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Tool results go back as `tool` messages, shown to the model as `<tool_response>` blocks in a user turn.
Generation is constrained by a grammar built from the tools' schemas: with `required` or a named tool the
answer is a call (a valid one); with `auto` the model writes text or a call, and once it starts a call the
grammar holds it to the schemas. Whatever the backend (the openai one passes tools through), every call's
arguments are validated against its tool's parameters: a call that does not validate is an error, never a
malformed call handed on.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOutputError, InvalidRequestError
from .generation import Delta, Message, close_iterator

__all__ = ["CALL_CLOSE", "CALL_OPEN", "ToolCallStream", "ToolPlan", "check_tools", "checked_calls", "parse_calls",
           "render_tool_messages", "template_input", "tool_system_text", "validate_calls"]

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BLOCK = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    """The request's tools and how the model may use them: choice is auto, none, required, or a tool's name."""

    tools: tuple[dict[str, Any], ...]  # each {"name", "description", "parameters"}
    choice: str
    parallel: bool = True

    @property
    def calls_allowed(self) -> bool:
        return self.choice != "none"

    @property
    def call_required(self) -> bool:
        return self.choice not in ("auto", "none")

    @property
    def offered(self) -> tuple[dict[str, Any], ...]:
        """The tools the model may call: all of them, or the named one."""
        if self.choice in ("auto", "none", "required"):
            return self.tools
        return tuple(tool for tool in self.tools if tool["name"] == self.choice)

    def call_schema(self) -> dict[str, Any]:
        """The JSON schema of one call: {"name": <an offered tool>, "arguments": <its parameters>}."""
        options = [{"type": "object", "properties": {"name": {"const": tool["name"]}, "arguments": tool["parameters"]},
                    "required": ["name", "arguments"], "additionalProperties": False} for tool in self.offered]
        return options[0] if len(options) == 1 else {"anyOf": options}


def _tool(index: int, value: Any) -> dict[str, Any]:
    function = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(
            f"tools[{index}] is not valid: use {{'type': 'function', 'function': {{'name': 'a_name', 'description': "
            "..., 'parameters': {JSON schema}}}}; names are 1-64 letters, digits, _ or -.", param=f"tools[{index}]")
    assert isinstance(function, dict)
    parameters = function.get("parameters") or _EMPTY_PARAMETERS
    import jsonschema

    try:
        if not isinstance(parameters, dict):
            raise jsonschema.SchemaError("it is not an object")
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise InvalidRequestError(f"tools[{index}].function.parameters is not a valid JSON schema: "
                                  f"{str(exc).splitlines()[0]}", param=f"tools[{index}].function.parameters") from None
    return {"name": name, "description": str(function.get("description") or ""), "parameters": parameters}


def check_tools(tools: Any, tool_choice: Any, parallel_tool_calls: Any) -> ToolPlan | None:
    """`tools`, `tool_choice` and `parallel_tool_calls` as OpenAI takes them; None when no tools are given."""
    if tools is None or tools == []:
        if tool_choice not in (None, "none", "auto"):
            raise InvalidRequestError("tool_choice needs tools: give the tools the model may call.",
                                      param="tool_choice")
        return None
    if not isinstance(tools, list):
        raise InvalidRequestError("tools must be a list of {'type': 'function', 'function': {...}}.", param="tools")
    checked = tuple(_tool(index, value) for index, value in enumerate(tools))
    names = [tool["name"] for tool in checked]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tools has two functions with the same name; names must be unique.", param="tools")
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type") == "function" else None
        choice = function.get("name") if isinstance(function, dict) else None
        if choice not in names:
            raise InvalidRequestError(f"tool_choice names a function that is not in tools; use one of: "
                                      f"{', '.join(names)}.", param="tool_choice")
    elif choice not in ("auto", "none", "required"):
        raise InvalidRequestError(f"tool_choice={tool_choice!r} is not valid: use 'auto', 'none', 'required' or "
                                  "{'type': 'function', 'function': {'name': ...}}.", param="tool_choice")
    if parallel_tool_calls not in (None, True, False):
        raise InvalidRequestError("parallel_tool_calls must be true or false.", param="parallel_tool_calls")
    return ToolPlan(checked, str(choice), parallel_tool_calls is not False)


def tool_system_text(plan: ToolPlan) -> str:
    """What a local model is told about its tools (added to the system message)."""
    listed = "\n".join(json.dumps({"type": "function", "function": tool}, ensure_ascii=False) for tool in plan.offered)
    how = (f"Call the function {plan.choice} now." if plan.call_required and plan.choice != "required" else
           "You must call one of the functions." if plan.choice == "required" else
           "Call a function when it helps to answer; otherwise answer in text.")
    many = " one block per call;" if plan.parallel else ""
    return (f"You can call these functions (JSON schemas):\n<tools>\n{listed}\n</tools>\nTo call a function, answer "
            f"with{many} only:\n{CALL_OPEN}\n{{\"name\": <function name>, \"arguments\": <arguments object>}}\n"
            f"{CALL_CLOSE}\nA function's result comes back in a <tool_response> block. {how}")


def template_input(messages: list[Message], plan: ToolPlan | None,
                   native: bool) -> tuple[list[Message], list[dict[str, Any]] | None]:
    """(messages, tools) for a local model's chat template. A template that takes tools in this format
    (`native`, e.g. Qwen 2.5's) gets them as they are, with each call's arguments as an object; any other
    gets them written out (`render_tool_messages`)."""
    if not native:
        return render_tool_messages(messages, plan), None
    out = []
    for message in messages:
        if message.get("role") == "assistant" and message.get("tool_calls"):
            calls = [{"type": "function", "id": call.get("id"), "function": _as_block(call)}
                     for call in message["tool_calls"]]
            message = {**message, "tool_calls": calls}
        out.append(message)
    offered = [{"type": "function", "function": tool} for tool in plan.offered] if plan and plan.calls_allowed else None
    return out, offered


def render_tool_messages(messages: list[Message], plan: ToolPlan | None) -> list[Message]:
    """The conversation as a local model's chat template takes it: tools in the system message, the assistant's
    calls as call blocks, tool results as <tool_response> blocks in user turns."""
    out: list[Message] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            blocks = [f"{CALL_OPEN}\n{json.dumps(_as_block(call), ensure_ascii=False)}\n{CALL_CLOSE}"
                      for call in message["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join([content, *blocks] if content else blocks)})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if plan is not None and plan.calls_allowed:
        text = tool_system_text(plan)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def _as_block(call: Any) -> dict[str, Any]:
    function = call.get("function", {}) if isinstance(call, dict) else {}
    arguments = function.get("arguments", "{}")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        parsed = arguments
    return {"name": function.get("name"), "arguments": parsed}


def _new_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def validate_calls(calls: list[dict[str, Any]], plan: ToolPlan) -> list[dict[str, Any]]:
    """Each call names an offered tool and its arguments validate against that tool's parameters; else an error."""
    import jsonschema

    offered = {tool["name"]: tool for tool in plan.offered}
    for call in calls:
        function = call.get("function") or {}
        name = function.get("name")
        if name not in offered:
            raise InvalidOutputError(f"The model called {name!r}, which is not among the tools offered "
                                     f"({', '.join(offered)}).")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
            jsonschema.validate(arguments, offered[name]["parameters"])
        except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
            raise InvalidOutputError(f"The model's call of {name} has arguments that do not match its parameters: "
                                     f"{str(exc).splitlines()[0]}") from None
    if plan.call_required and not calls:
        raise InvalidOutputError("The model answered without calling a tool, but tool_choice asked for a call.")
    return calls


def parse_calls(text: str, plan: ToolPlan) -> tuple[str, list[dict[str, Any]]]:
    """(text outside the call blocks, the calls) of a local model's answer."""
    calls = []
    for block in _BLOCK.findall(text):
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            raise InvalidOutputError(f"The model's tool call is not valid JSON: {block[:200]!r}") from None
        if not isinstance(value, dict) or not isinstance(value.get("arguments"), dict):
            raise InvalidOutputError(f"The model's tool call lacks a name and an arguments object: {block[:200]!r}")
        calls.append(_new_call(str(value.get("name")), value["arguments"]))
    rest = _BLOCK.sub("", text)
    unfinished = rest.find(CALL_OPEN)
    if unfinished >= 0:  # max_tokens ran out inside a call: the calls before it stand, the cut one is dropped
        rest = rest[:unfinished]
        if not calls:
            raise InvalidOutputError("The answer ran out of max_tokens inside a tool call; raise max_tokens.")
    return rest.strip(), validate_calls(calls, plan)


def checked_calls(deltas: Iterator[Delta], plan: ToolPlan) -> Iterator[Delta]:
    """A backend's own tool calls (a remote API's), validated as ours are: `deltas` with the last one checked."""
    try:
        for delta in deltas:
            if delta.finish_reason is not None:
                validate_calls(delta.tool_calls or [], plan)
            yield delta
    finally:
        close_iterator(deltas)


class ToolCallStream:
    """A local model's deltas, with its call blocks turned into `tool_calls`.

    Text streams as it comes until it could be the start of a call; from there on the answer is held back
    and parsed when it ends (a call is sent whole, as its id, name and arguments).
    """

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan

    def run(self, deltas: Iterator[Delta]) -> Iterator[Delta]:
        try:
            yield from self._run(deltas)
        finally:
            close_iterator(deltas)  # a reader that stops early ends the generation

    def _run(self, deltas: Iterator[Delta]) -> Iterator[Delta]:
        held, text_mode, served_by = "", False, None
        for delta in deltas:
            served_by = served_by or delta.served_by
            if text_mode:
                yield delta
                continue
            held += delta.text
            if delta.finish_reason is None:
                if self.plan.call_required or _may_start_call(held):
                    continue
                text_mode = True  # text came first: the grammar allows no call after it
                yield Delta(held, served_by=served_by)
                continue
            text, calls = parse_calls(held, self.plan)
            yield Delta(text, "tool_calls" if calls else delta.finish_reason, delta.prompt_tokens,
                        delta.completion_tokens, delta.cached_tokens, served_by, tool_calls=calls or None)


def _may_start_call(text: str) -> bool:
    """Whether `text` is (the start of) a call block, leading whitespace aside."""
    stripped = text.lstrip()
    return CALL_OPEN.startswith(stripped) or stripped.startswith(CALL_OPEN)
