"""Tool calling on every backend: required and named choices always give a call whose arguments validate,
`none` never does, and a full round trip (call, result, answer) works with the official SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from agentic.errors import InvalidOutputError, InvalidRequestError
from agentic.ml.base import BaseModelManager
from agentic.ml.tools import ToolPlan, check_tools, parse_calls
from conftest import SLOW_MACHINE_TIMEOUT, manager_on

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
SUM = {"type": "function", "function": {
    "name": "add", "description": "Add two whole numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [WEATHER, SUM]
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


def _args_valid(call: dict[str, Any]) -> None:
    tool = next(t for t in TOOLS if t["function"]["name"] == call["function"]["name"])
    jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
    assert call["type"] == "function" and call["id"].startswith("call_")


def test_tools_and_choice_are_checked_by_name() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_tools([{"type": "function", "function": {"name": "bad name"}}], None, None)
    assert caught.value.param == "tools[0]"
    with pytest.raises(InvalidRequestError, match="get_weather, add"):
        check_tools(TOOLS, {"type": "function", "function": {"name": "nope"}}, None)
    with pytest.raises(InvalidRequestError) as caught:
        check_tools(None, "required", None)
    assert caught.value.param == "tool_choice"
    assert check_tools([], None, None) is None
    with pytest.raises(InvalidRequestError) as caught:
        check_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}], None, None)
    assert caught.value.param == "tools[0].function.parameters"


def test_a_call_whose_arguments_do_not_validate_is_an_error() -> None:
    plan = check_tools(TOOLS, "required", None)
    assert isinstance(plan, ToolPlan)
    text, calls = parse_calls('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', plan)
    assert text == "" and json.loads(calls[0]["function"]["arguments"]) == {"a": 1, "b": 2}
    with pytest.raises(InvalidOutputError, match="do not match"):
        parse_calls('<tool_call>{"name": "add", "arguments": {"a": "one", "b": 2}}</tool_call>', plan)
    with pytest.raises(InvalidOutputError, match="without calling"):
        parse_calls("It is sunny.", plan)


@pytest.fixture(scope="module", params=["llama_cpp", "transformers_gpu", "openai"])
def manager(request: pytest.FixtureRequest) -> Iterator[BaseModelManager]:
    manager: BaseModelManager = manager_on(request.param, request)
    yield manager
    manager.close()


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_required_and_named_choices_always_call_validly(manager: BaseModelManager, choice: Any) -> None:
    model, lock = manager.get(heavy=True)
    prompts = ["What is the weather in Paris, in celsius?", "Add 2 and 3.", "Tell me a joke."]
    with lock:
        for prompt in prompts:
            result = model.create_chat_completion(messages=[{"role": "user", "content": prompt}], tools=TOOLS,
                                                  tool_choice=choice, max_tokens=96, temperature=0.7)
            choice_out = result["choices"][0]
            assert choice_out["finish_reason"] == "tool_calls"
            calls = choice_out["message"]["tool_calls"]
            assert calls and all(_args_valid(call) is None for call in calls)
            if isinstance(choice, dict):
                assert {call["function"]["name"] for call in calls} == {"get_weather"}


def test_none_never_calls(manager: BaseModelManager) -> None:
    model, lock = manager.get(heavy=True)
    with lock:
        result = model.create_chat_completion(messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=24,
                                              temperature=0)
    message = result["choices"][0]["message"]
    assert "tool_calls" not in message and result["choices"][0]["finish_reason"] in {"stop", "length"}
    assert "<tool_call>" not in message["content"]


def test_streamed_call_arrives_as_openai_streams_it(manager: BaseModelManager) -> None:
    model, lock = manager.get(heavy=True)
    with lock:
        chunks = list(model.create_chat_completion(messages=ASK, tools=TOOLS, tool_choice="required",
                                                   max_tokens=96, temperature=0, stream=True))
    pieces = [tc for chunk in chunks for tc in (chunk["choices"][0]["delta"].get("tool_calls") or [])]
    first = pieces[0]
    assert first["index"] == 0 and first["id"].startswith("call_") and first["function"]["name"]
    arguments = "".join(piece["function"].get("arguments", "") for piece in pieces if piece["index"] == 0)
    jsonschema.validate(json.loads(arguments), next(
        t for t in TOOLS if t["function"]["name"] == first["function"]["name"])["function"]["parameters"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_sdk_round_trip_against_our_server(server_on: str) -> None:
    client = openai.OpenAI(base_url=f"{server_on}/v1", api_key="unused", max_retries=0,
                           timeout=SLOW_MACHINE_TIMEOUT)
    messages: list[Any] = list(ASK)
    first = client.chat.completions.create(model="heavy", messages=messages, tools=TOOLS, tool_choice="required",
                                           max_tokens=96, temperature=0)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.name in {"get_weather", "add"}
    json.loads(call.function.arguments)
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18})}]
    final = client.chat.completions.create(model="heavy", messages=messages, tools=TOOLS, tool_choice="none",
                                           max_tokens=32, temperature=0)
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    streamed = client.chat.completions.create(model="heavy", messages=ASK, tools=TOOLS, tool_choice="required",
                                              max_tokens=96, temperature=0, stream=True)
    deltas = [c.choices[0].delta for c in streamed if c.choices]
    names = [tc.function.name for d in deltas for tc in (d.tool_calls or []) if tc.function and tc.function.name]
    assert names and names[0] in {"get_weather", "add"}


HERMES = (  # the shape of Qwen 2.5's template: it lists the tools and asks for <tool_call> blocks itself
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n"
    "Call with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}"
    "</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")


def test_a_template_that_takes_tools_gets_them_as_they_are() -> None:
    from agentic.ml.chat_templates import GEMMA_TEMPLATE, ChatTemplate
    from agentic.ml.tools import template_input

    template = ChatTemplate(HERMES, name="hermes-like")
    assert template.hermes_tools and not ChatTemplate(GEMMA_TEMPLATE).hermes_tools
    plan = check_tools(TOOLS, "auto", None)
    conversation = [*ASK, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    messages, tools = template_input(conversation, plan, native=True)
    text = template.render(messages, tools)
    assert '"name": "get_weather"' in text.split("</tools>")[0]  # the template lists the tools
    assert '"arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>' in text  # an object, not a string
    assert "<|im_start|>tool\n18 C" in text and "You can call these functions" not in text
    fallback, none = template_input(conversation, plan, native=False)
    assert none is None and "You can call these functions" in fallback[0]["content"]
    assert fallback[-1] == {"role": "user", "content": "<tool_response>\n18 C\n</tool_response>"}
