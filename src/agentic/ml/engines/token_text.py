"""Token ids to text deltas, the part of generating both local engines share: UTF-8 safe detokenizing,
stop sequences held back until they are ruled out, a caller's `stop_when`, the token limit and the finish reason."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator

from ..generation import Delta, GenerationRequest, close_iterator

__all__ = ["StopMatcher", "TokenTextStream"]


class StopMatcher:
    """Finds stop sequences in streamed text, holding back a tail that may be the start of one."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop sequence was reached)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        keep = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(stop[:size]):
                    keep = size
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        """Text held back when generation ended without a stop sequence."""
        out, self.pending = self.pending, ""
        return out


class TokenTextStream:
    """Turns generated token ids into text deltas: UTF-8 safe, stop sequences, finish reasons."""

    def __init__(
        self,
        detokenize: Callable[[int], bytes],
        is_end: Callable[[int], bool],
        request: GenerationRequest,
        stops: Iterable[str] = (),
        stop_when: Callable[[str], bool] | None = None,
    ) -> None:
        self.detokenize = detokenize
        self.stop_when = stop_when
        self.is_end = is_end
        self.limit = request.limit
        self.prompt_tokens = len(request.prompt)
        self.stop = StopMatcher(stops)

    def run(self, tokens: Iterator[int]) -> Iterator[Delta]:
        """Consume `tokens` until a stop, the end token, `stop_when` or the token limit; then close it."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        count, finish, answer = 0, "length", ""
        try:
            for token in tokens:
                if self.is_end(token):
                    finish = "stop"
                    break
                count += 1
                text, stopped = self.stop.feed(decoder.decode(self.detokenize(token)))
                if text:
                    yield Delta(text)
                if stopped:
                    finish = "stop"
                    break
                if text and self.stop_when is not None:
                    answer += text
                    if self.stop_when(answer):
                        finish = "stop"
                        break
                if count >= self.limit:
                    break
        finally:
            close_iterator(tokens)  # a TokenChannel (cancels the generation) or a generator
        tail = "" if finish == "stop" and not self.stop.pending else self.stop.flush() + decoder.decode(b"", True)
        yield Delta(tail, finish, self.prompt_tokens, count, getattr(tokens, "cached_tokens", None))
