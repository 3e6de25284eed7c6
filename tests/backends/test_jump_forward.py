"""Jump-forward: the text a JSON schema fixes is written for the model, and only that text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentic.ideas.analyzer import TRIAGE_SYSTEM, _example_turns, idea_prompt
from agentic.ideas.schemas import Analysis, Triage, response_format
from agentic.ml.engines.jump_forward import JsonJump
from agentic.ml.model_manager import LlamaCppModel
from conftest import batched_llama

ANALYSIS = response_format(Analysis)["json_schema"]["schema"]
ANSWER = ('{"market":"Dogs love treats.","competition":"Pet shops.","strengths":["fresh","local"],'
          '"risks":["churn","rules","costs"],"score":6,"verdict":"refine","reason":"Thin margins."}')


def _jump(schema: dict[str, Any] = ANALYSIS) -> JsonJump:
    jump = JsonJump.for_schema(schema)
    assert jump is not None
    return jump


def _write(jump: JsonJump, answer: str) -> tuple[str, str]:
    """The answer as a model writes it with jump-forward: (all text, the characters the model chose itself)."""
    text, chosen = "", ""
    while not jump.done and len(text) < len(answer):
        forced = jump.forced()
        if forced:
            assert answer.startswith(text + forced), f"forced {forced!r} after {text!r}"
            text += forced
            jump.feed(forced)
        else:
            char = answer[len(text)]
            text, chosen = text + char, chosen + char
            jump.feed(char)
    return text, chosen


def test_every_key_colon_and_opening_quote_is_forced_and_nothing_the_model_chooses() -> None:
    jump = _jump()
    text, chosen = _write(jump, ANSWER)
    assert text == ANSWER and jump.done
    # The model chose its layout (`{"`: compact), the values, where each string ends, whether a list goes on (the
    # next item's quote is then forced), and the verdict's first letter.
    assert chosen == '{"Dogs love treats."Pet shops."fresh",local"]churn",rules",costs"6,rThin margins."'


def test_a_model_that_pretty_prints_keeps_its_layout_only_key_names_are_forced() -> None:
    pretty = json.dumps(json.loads(ANSWER), indent=2)
    text, chosen = _write(_jump(), pretty)
    assert text == pretty
    assert "market" not in chosen and "verdict" not in chosen and "refine" not in chosen
    assert chosen.count("\n") == pretty.count("\n")  # every line break and indent is the model's


@pytest.mark.parametrize(("written", "forced"), [
    ("", ""),  # the model shows its layout first
    ('{"', 'market":"'),
    ('{"market":"x"', ',"competition":"'),
    ('{"market":"x", "comp', 'etition":"'),  # the model's own space, then part of the key
    ('{"market":"x","competition":"y","strengths":["a"', ""),  # another item or the end: the model's choice
    ('{"market":"x","competition":"y","strengths":["a","b","c"', '],"risks":["'),  # the third item is the last
    ('{"market":"x","competition":"y","strengths":["a"],"risks":["b"],"score":1', ""),  # 1 or 10
    ('{"market":"x","competition":"y","strengths":["a"],"risks":["b"],"score":1,', '"verdict":"'),
    ('{"market":"x","competition":"y","strengths":["a"],"risks":["b"],"score":1,"verdict":"d', 'rop","reason":"'),
    ('{"market":"x","competition":"y","strengths":["a"],"risks":["b"],"score":1,"verdict":"drop","reason":"z"',
     "}"),
    ('{"market":"a \\" quote"', ',"competition":"'),  # an escaped quote does not end the string
    ('{\n  "market": "x"', ""),  # pretty-printed: the whitespace around keys stays the model's
    ('{\n  "market": "x",\n  "comp', 'etition'),  # the model writes the quote with what follows
    ('{\n "market": "x",\n "competition": "y",\n "strengths": ["a"],\n "risks": ["b"],\n "score": 1,\n '
     '"verdict": "r', 'efine'),
])
def test_what_is_forced_after_each_kind_of_text(written: str, forced: str) -> None:
    jump = _jump()
    jump.feed(written)
    assert jump.forced() == forced


def test_text_outside_the_schema_stops_the_following_for_good() -> None:
    jump = _jump()
    jump.feed('{"price":')  # not the schema's first key
    assert jump.forced() == "" and jump.state == "lost"
    jump.feed('"x"')
    assert jump.forced() == ""


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["a"]},
    {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": True},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}, "required": ["a"]},
    {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]}}, "required": ["a"]},
    {"type": "array", "items": {"type": "string"}},
    {},
])
def test_schemas_whose_order_or_shape_the_grammar_leaves_open_are_not_followed(schema: dict[str, Any]) -> None:
    assert JsonJump.for_schema(schema) is None


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaCppModel]:
    with batched_llama(model_parallel=2, model_context_size=1024, model_n_threads=2) as model:
        yield model


PLAIN = [{"role": "user", "content": "Triage this business idea as JSON: a bakery for dogs."}]
SHOWN = [{"role": "system", "content": TRIAGE_SYSTEM}, *_example_turns(Triage),
         {"role": "user", "content": idea_prompt("Dog bakery", "Fresh treats for dogs, delivered weekly.")}]


@pytest.mark.parametrize(("messages", "compact"), [(SHOWN, True), (PLAIN, False)], ids=["examples", "plain"])
def test_the_engine_writes_forced_tokens_without_sampling_them(model: LlamaCppModel, messages: list[dict[str, str]],
                                                              compact: bool) -> None:
    """Real answers: schema-valid JSON that ends by itself, its forced tokens counted apart. Shown compact
    examples, the model writes compact JSON and every fixed piece is forced; asked plainly, it pretty-prints
    and keeps its layout, with only the rest of each key forced."""
    assert model.engine is not None
    before = model.engine.forced_tokens
    answer = model.create_chat_completion(messages=messages, max_tokens=200, temperature=0,
                                          response_format=response_format(Triage))
    content = answer["choices"][0]["message"]["content"]  # type: ignore[index]
    assert answer["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    value = Triage.model_validate_json(content)
    assert (content == json.dumps(value.model_dump(), separators=(",", ":"), ensure_ascii=False)) is compact
    forced = model.engine.forced_tokens - before
    keys = len(Triage.model_fields)
    # Compact: every key's name, and the `":"` after the first, at least; pretty: every key's name at least.
    assert forced >= (keys + 1 if compact else keys)
    assert forced < answer["usage"]["completion_tokens"]  # type: ignore[index]


def test_a_key_longer_than_a_sequences_share_of_the_batch_is_left_to_the_model() -> None:
    """Every sequence's pending tokens must fit in one llama_batch (512 tokens, 8 sequences: 64 each): a key
    name of ~530 tokens, all forced in one step, would write past the batch. The answer is still valid."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    key = "_".join(f"{words[n % 8]}{n * 37 % 100}" for n in range(150))
    schema = {"type": "object", "properties": {"a": {"type": "string"}, key: {"type": "string"}},
              "required": ["a", key]}
    with batched_llama(model_parallel=8, model_context_size=1024, model_n_threads=2) as model:
        assert model.engine is not None and len(model.llama.tokenize(key.encode(), add_bos=False)) > 512
        answer = model.create_chat_completion(
            messages=[{"role": "user", "content": "Fill in the JSON."},
                      {"role": "assistant", "content": '{"a":"b"}'}, {"role": "user", "content": "Again."}],
            max_tokens=900, temperature=0, response_format={"type": "json_schema",
                                                            "json_schema": {"name": "long", "schema": schema}})
        assert answer["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
        assert set(json.loads(answer["choices"][0]["message"]["content"])) == {"a", key}  # type: ignore[index]
        assert model.engine.forced_tokens <= 2 * (512 // 8)
