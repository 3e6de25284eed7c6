"""The shared contract pieces: argument checks, stop sequences, UTF-8 safe streaming."""

from __future__ import annotations

import pytest

from agentic.errors import ContextLengthExceededError, InvalidRequestError
from agentic.ml.base import GenerationParams, StopMatcher, TokenTextStream, check_context
from agentic.ml.generation import GenerationRequest


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 3.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop": [""]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"repeat_penalty": 1.1}, "repeat_penalty"),
    ],
)
def test_bad_generation_argument_is_named(kwargs: dict[str, object], param: str) -> None:
    values: dict[str, object] = {"max_tokens": 8, "temperature": 0.5, "top_p": 0.9, "stop": None, "seed": None}
    values.update(kwargs)
    with pytest.raises(InvalidRequestError) as caught:
        GenerationParams.build(**values)  # type: ignore[arg-type]
    assert caught.value.param == param
    assert param in caught.value.message


def test_stop_matcher_holds_back_partial_stop_then_cuts() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("hello E") == ("hello ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("D and more") == ("", True)


def test_stop_matcher_releases_false_alarm() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("xE") == ("x", False)
    assert matcher.feed("x") == ("Ex", False)
    assert matcher.flush() == ""


def test_token_stream_decodes_split_utf8_and_counts() -> None:
    pieces = {1: b"caf", 2: b"\xc3", 3: b"\xa9!", 9: b""}
    request = GenerationRequest.resolve([0] * 4, GenerationParams.build(10, 0.0, 1.0, None, None), context_size=104)
    stream = TokenTextStream(pieces.__getitem__, lambda token: token == 9, request)
    deltas = list(stream.run(iter([1, 2, 3, 9])))
    assert "".join(d.text for d in deltas) == "café!"
    assert "\ufffd" not in "".join(d.text for d in deltas)
    assert (deltas[-1].finish_reason, deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == ("stop", 4, 3)


def test_token_stream_stops_at_max_tokens_and_room() -> None:
    request = GenerationRequest.resolve([0], GenerationParams.build(5, 0.0, 1.0, None, None), context_size=4)
    stream = TokenTextStream(lambda token: b"a", lambda token: False, request)
    deltas = list(stream.run(iter(range(100))))
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].completion_tokens == 3


def test_context_check_reports_counts() -> None:
    with pytest.raises(ContextLengthExceededError) as caught:
        check_context(5000, 4096)
    assert "4096" in caught.value.message and "5000" in caught.value.message
    assert caught.value.code == "context_length_exceeded"
    check_context(4095, 4096)
