"""Chat templates: compiled once per template, errors as invalid requests naming `messages`."""

from __future__ import annotations

import pytest

from agentic.errors import InvalidRequestError
from agentic.ml.chat_templates import GEMMA_TEMPLATE, ChatTemplate, _compiled

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


def test_a_template_is_compiled_once_and_renders_the_same_every_time() -> None:
    """Compiling Gemma's template took about 5 ms of every chat request's time to first token."""
    template = ChatTemplate(GEMMA_TEMPLATE, bos_token="<bos>")
    first = template.render(MESSAGES)
    compiled = _compiled.cache_info().misses
    assert template.render(MESSAGES) == first == "<bos><start_of_turn>user\nBe brief.\n\nHello<end_of_turn>\n" \
                                                 "<start_of_turn>model\n"
    assert ChatTemplate(GEMMA_TEMPLATE, bos_token="<s>").render(MESSAGES).startswith("<s><start_of_turn>")
    assert _compiled.cache_info().misses == compiled


def test_a_template_that_refuses_the_messages_or_does_not_compile_is_an_invalid_request() -> None:
    refusing = ChatTemplate("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turn') }}"
                            "{% endif %}", name="strict")
    with pytest.raises(InvalidRequestError, match="refused these messages: no system turn") as refused:
        refusing.render(MESSAGES)
    assert refused.value.param == "messages"
    for _ in range(2):  # a broken template is not cached as if it compiled
        with pytest.raises(InvalidRequestError, match="chat template of broken failed"):
            ChatTemplate("{% for message in messages %}", name="broken").render(MESSAGES)


def test_text_known_to_hold_no_control_token_text_is_tokenized_once() -> None:
    """Checking a message for control-token text tokenizes it twice more (5.5 of 8.5 ms for a 1,200-token system
    prompt on Gemma 3): skipped for text `plain` clears; text it does not clear is still checked."""
    calls: list[tuple[str, bool]] = []

    def tokenize(text: str, special: bool) -> list[int]:
        calls.append((text, special))
        return [ord(character) for character in text]

    template = ChatTemplate(GEMMA_TEMPLATE, bos_token="<bos>")
    assert template.tokenize(MESSAGES, tokenize, [2], plain=lambda text: "<" not in text)
    assert len(calls) == 1  # the whole prompt only
    calls.clear()
    template.tokenize(MESSAGES, tokenize, [2])
    assert len(calls) == 5  # each message twice, then the whole prompt
