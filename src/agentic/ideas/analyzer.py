"""One idea through both tiers: light triage, then heavy analysis, each answer validated against its schema."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import AgenticError, InvalidOutputError, InvalidRequestError
from ..ml.base import BaseModelManager, Model
from ..ml.shapes import answered_by
from ..ml.tiers import Tier
from .schemas import Analysis, Idea, IdeaResult, Triage, response_format

__all__ = ["ANALYSIS_SYSTEM", "TRIAGE_SYSTEM", "CallRecord", "IdeaAnalyzer", "analysis_prompt", "idea_prompt"]

_log = logging.getLogger(__name__)
S = TypeVar("S", bound=BaseModel)

TRIAGE_SYSTEM = (
    "You triage business ideas. Reply with a JSON object only, with the keys category (the industry, a few "
    "words), target_customer (who would pay) and summary (the idea in one line)."
)
ANALYSIS_SYSTEM = (
    "You are a venture analyst. Reply with a JSON object only, with the keys market (size and demand), "
    "competition (who else does this), strengths (a list of up to three), risks (a list of up to three), "
    "score (a whole number from 1, poor, to 10, excellent), verdict (pursue, refine or drop) and reason "
    "(why, in one sentence)."
)


def idea_prompt(title: str, description: str) -> str:
    """The user message the light tier triages."""
    return f"Title: {title}\nDescription: {description}"


def analysis_prompt(idea_text: str, triage: Triage) -> str:
    """The user message the heavy tier analyzes: the idea and its triage."""
    return f"{idea_text}\nTriage: {triage.model_dump_json()}"


@dataclass(frozen=True)
class CallRecord:
    """One model call, as logged to the usage database."""

    idea_id: str
    tier: str
    backend: str
    model: str
    attempt: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ok: bool
    error: str | None


class IdeaAnalyzer:
    """Runs ideas through a manager's two tiers; `on_call` sees every call (usage logging, progress).

    The token limits fit the schemas' longest answers even when a model spells a string out one token
    per character (digits do that on Gemma's tokenizer).
    """

    def __init__(self, manager: BaseModelManager, *, retries: int = 2, temperature: float = 0.2,
                 triage_tokens: int = 320, analysis_tokens: int = 1200,
                 on_call: Callable[[CallRecord], None] | None = None) -> None:
        self.manager = manager
        self.retries = retries
        self.temperature = temperature
        self.max_tokens = {"light": triage_tokens, "heavy": analysis_tokens}
        self.on_call = on_call or (lambda record: None)

    def analyze(self, idea: Idea) -> IdeaResult:
        """Both tiers' answers, or a failed result saying why; never raises for a model's bad output."""
        started = time.perf_counter()
        calls: list[CallRecord] = []
        result = IdeaResult(id=idea.id, status="failed", idea=idea, backend=self.manager.backend,
                            models={tier: spec.name for tier, spec in self.manager.specs.items()})
        try:
            idea_text = idea_prompt(idea.title, idea.description)
            result.triage = self.structured(idea.id, "light", TRIAGE_SYSTEM, idea_text, Triage, calls)
            result.analysis = self.structured(idea.id, "heavy", ANALYSIS_SYSTEM,
                                              analysis_prompt(idea_text, result.triage), Analysis, calls)
            result.status = "ok"
        except AgenticError as exc:
            result.error = exc.message
        result.prompt_tokens = sum(call.prompt_tokens for call in calls)
        result.completion_tokens = sum(call.completion_tokens for call in calls)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def structured(self, idea_id: str, tier: Tier, system: str, user: str, schema: type[S],
                   calls: list[CallRecord] | None = None) -> S:
        """The tier's answer as a validated `schema`, retrying invalid output `retries` times."""
        model, lock = self.manager.for_tier(tier)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        problem = ""
        for attempt in range(1, self.retries + 2):
            # A retry samples more freely: the same greedy-ish path would likely fail the same way.
            temperature = self.temperature if attempt == 1 else min(1.0, self.temperature + 0.3 * attempt)
            started = time.perf_counter()
            answer: Any = None
            try:
                with lock:
                    answer = model.create_chat_completion(messages=messages, max_tokens=self.max_tokens[tier],
                                                          temperature=temperature,
                                                          response_format=response_format(schema))
                assert isinstance(answer, dict)
                content = answer["choices"][0]["message"].get("content") or ""
                # strict=False: a raw newline inside a string (some servers' grammars allow it) is not worth
                # a retry; the schema is what must hold.
                value = schema.model_validate(json.loads(content, strict=False))
            except json.JSONDecodeError as exc:
                problem = _describe(f"not JSON ({exc})", answer)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(map(str, first["loc"])) or "answer"
                problem = _describe(f"{exc.error_count()} schema error(s), first {where}: {first['msg']}", answer)
            except InvalidRequestError:
                raise  # our request is wrong: a retry cannot fix it
            except AgenticError as exc:  # the backend failed after its own retries
                problem = exc.message
                self._record(idea_id, tier, model, answer, attempt, started, problem, calls)
                raise
            else:
                self._record(idea_id, tier, model, answer, attempt, started, None, calls)
                return value
            self._record(idea_id, tier, model, answer, attempt, started, problem, calls)
            _log.info("idea %s, %s tier, attempt %d: invalid output (%s)", idea_id, tier, attempt, problem)
        raise InvalidOutputError(f"The {tier} model ({model.name}) gave no valid {schema.__name__} in "
                                 f"{self.retries + 1} attempts; last problem: {problem}")

    def _record(self, idea_id: str, tier: Tier, model: Model, answer: Any, attempt: int, started: float,
                error: str | None, calls: list[CallRecord] | None) -> None:
        """Log one call under the backend and model that answered it (a fallback's, when one did)."""
        answer = answer if isinstance(answer, dict) else {}
        usage = answer.get("usage") or {}
        backend = answered_by(answer) or model.backend
        record = CallRecord(idea_id, tier, backend, str(answer.get("model") or model.name), attempt,
                            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                            round(time.perf_counter() - started, 4), error is None, error)
        if calls is not None:
            calls.append(record)
        self.on_call(record)


def _describe(detail: str, answer: Any) -> str:
    """One line on why an answer was rejected, mentioning a cut-off answer (finish_reason=length)."""
    finish = answer["choices"][0].get("finish_reason") if isinstance(answer, dict) else None
    return detail + (" - the answer hit max_tokens" if finish == "length" else "")
