"""One idea through both tiers: light triage, then heavy analysis, each answer validated against its schema."""

from __future__ import annotations

import functools
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
from .quality import EarlyCheck, Instructions, answer_problems
from .resume import Resume
from .schemas import Analysis, Idea, IdeaResult, Triage, response_format

__all__ = ["ANALYSIS_SYSTEM", "EXAMPLES", "TRIAGE_SYSTEM", "CallRecord", "DegenerateAnswerError", "IdeaAnalyzer",
           "analysis_prompt", "idea_prompt", "instructions_for"]

_log = logging.getLogger(__name__)
S = TypeVar("S", bound=BaseModel)

TRIAGE_SYSTEM = "You triage business ideas. Answer with one JSON object about the idea you are given."
ANALYSIS_SYSTEM = (
    "You are a venture analyst. Judge the idea you are given on its own merits and answer with one JSON object. "
    "Score it from 1 to 10 and pick pursue, refine or drop to match the score."
)

# Worked examples, shown before the real idea as earlier turns of the conversation: a small or base model copies
# the shape and the kind of content of an answer far better than it follows a description of one. Two analyses
# with different scores, so the score is not read as a constant. An answer that repeats them is degenerate.
EXAMPLE_IDEAS = (
    ("Coffee cart for office parks", "A coffee cart that visits office parks at set times and takes pre-orders "
     "in an app."),
    ("Fax machine repair shop", "A high-street shop that repairs fax machines for households."),
)
EXAMPLES: dict[str, Any] = {
    "triage": Triage(category="food and drink", target_customer="office workers far from cafes",
                     summary="Pre-ordered coffee brought to office parks on a fixed schedule."),
    "triage_low": Triage(category="electronics repair", target_customer="fax machine owners",
                         summary="A shop that fixes old fax machines."),
    "analysis": Analysis(
        market="Office workers buy coffee daily; parks far from cafes have steady unmet demand.",
        competition="Nearby cafes, office coffee machines and delivery apps.",
        strengths=["pre-orders cut the wait", "low rent compared to a shop"],
        risks=["weather and seasons", "fewer staff in offices since remote work"],
        score=6, verdict="refine", reason="Demand is steady, but one cart can serve only a few sites a day."),
    "analysis_low": Analysis(
        market="Few households still own a fax machine and the number shrinks every year.",
        competition="Replacing the machine is cheaper; electronics repair shops take the rare job.",
        strengths=["almost no competition"], risks=["a vanishing market", "spare parts are hard to find"],
        score=2, verdict="drop", reason="The customers are disappearing faster than a shop could find them."),
}


def idea_prompt(title: str, description: str) -> str:
    """The user message the light tier triages."""
    return f"Title: {title}\nDescription: {description}"


def analysis_prompt(idea_text: str, triage: Triage) -> str:
    """The user message the heavy tier analyzes: the idea and its triage."""
    return f"{idea_text}\nCategory: {triage.category}\nCustomers: {triage.target_customer}"


def _examples(schema: type[BaseModel]) -> list[tuple[str, BaseModel]]:
    """The worked examples for a schema: (user message, answer) pairs; none for a schema of someone else's."""
    first, second = (idea_prompt(*idea) for idea in EXAMPLE_IDEAS)
    if schema is Triage:
        return [(first, EXAMPLES["triage"]), (second, EXAMPLES["triage_low"])]
    if schema is Analysis:
        return [(analysis_prompt(first, EXAMPLES["triage"]), EXAMPLES["analysis"]),
                (analysis_prompt(second, EXAMPLES["triage_low"]), EXAMPLES["analysis_low"])]
    return []


def _example_turns(schema: type[BaseModel]) -> list[dict[str, str]]:
    """The worked examples as earlier user/assistant turns of the conversation."""
    turns: list[dict[str, str]] = []
    for user, answer in _examples(schema):
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer.model_dump_json()}]
    return turns


@functools.lru_cache(maxsize=16)
def shown_to(system: str, schema: type[BaseModel]) -> Instructions:
    """What a call is shown besides the idea (instructions, field descriptions, examples): an answer repeating it
    did not answer."""
    return Instructions.of(system, schema, [answer for _, answer in _examples(schema)])


def instructions_for(tier: Tier) -> Instructions:
    """What the application's call on a tier is shown besides the idea."""
    return shown_to(TRIAGE_SYSTEM, Triage) if tier == "light" else shown_to(ANALYSIS_SYSTEM, Analysis)


class DegenerateAnswerError(InvalidOutputError):
    """Every attempt passed the schema but said nothing (quality.py); the last answer and its problems."""

    def __init__(self, message: str, *, answer: BaseModel, problems: list[str]) -> None:
        super().__init__(message)
        self.answer, self.problems = answer, problems


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

    # 0.7 on the first attempt: near-greedy sampling (0.2) made a small model copy the worked examples and repeat
    # list items more often, and every such answer costs a retry. `make run`'s analysis, 3 runs each: 0.2 took
    # 49-55 s with 31-34 of ~72 calls degenerate; 0.7 took 42-49 s with 17-29 of ~64 (benchmarks/RESULTS.md).
    def __init__(self, manager: BaseModelManager, *, retries: int = 2, temperature: float = 0.7,
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
            result.triage = self.structured(idea.id, "light", TRIAGE_SYSTEM, idea_text, Triage, calls,
                                            title=idea.title)
            result.analysis = self.structured(idea.id, "heavy", ANALYSIS_SYSTEM,
                                              analysis_prompt(idea_text, result.triage), Analysis, calls,
                                              title=idea.title)
            result.status = "ok"
        except DegenerateAnswerError as exc:  # kept, with why, to be shown apart from the ranking
            result.status, result.error, result.problems = "low_quality", exc.message, exc.problems
            if isinstance(exc.answer, Triage):
                result.triage = exc.answer
            elif isinstance(exc.answer, Analysis):
                result.analysis = exc.answer
        except AgenticError as exc:
            result.error = exc.message
        result.prompt_tokens = sum(call.prompt_tokens for call in calls)
        result.completion_tokens = sum(call.completion_tokens for call in calls)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def structured(self, idea_id: str, tier: Tier, system: str, user: str, schema: type[S],
                   calls: list[CallRecord] | None = None, *, title: str | None = None) -> S:
        """The tier's answer as a validated `schema`, retrying invalid output `retries` times.

        With the idea's `title`, an answer that passes the schema but is degenerate (quality.py) is invalid too;
        if no attempt is good and one at least was degenerate, DegenerateAnswerError carries the last degenerate
        answer and its problems (else InvalidOutputError names the last problem). Every attempt but the last is
        stopped as soon as it is sure to be degenerate (`EarlyCheck`, on the local backends): the last one runs to
        its end, so that an idea whose every answer is degenerate still keeps one.
        """
        model, lock = self.manager.for_tier(tier)
        messages = [{"role": "system", "content": system}, *_example_turns(schema), {"role": "user", "content": user}]
        shown = shown_to(system, schema)
        problem, degenerate, resume = "", None, Resume()
        for attempt in range(1, self.retries + 2):
            # A retry samples more freely: the same path would likely fail the same way.
            temperature = self.temperature if attempt == 1 else min(1.0, self.temperature + 0.3 * attempt)
            early = EarlyCheck(schema, title, shown) if title and attempt <= self.retries else None
            started = time.perf_counter()
            try:
                answer, value, problem = self._attempt(model, lock, messages, tier, schema, temperature, early,
                                                       resume)
            except InvalidRequestError:
                raise  # our request is wrong: a retry cannot fix it
            except AgenticError as exc:  # the backend failed after its own retries
                self._record(idea_id, tier, model, None, attempt, started, exc.message, calls)
                raise
            if early is not None and early.problems:  # stopped where it went wrong (no value to keep)
                found = early.problems
                problem = f"degenerate: {'; '.join(found)} - the answer was stopped there"
                if model.continues_messages:  # the next attempt rewrites only the value that went wrong
                    resume.after(_content(answer, resume.answered))
            else:
                found = answer_problems(value, title, shown) if value is not None and title else []
                degenerate = (value, found) if value is not None and found else degenerate
                problem = f"degenerate: {'; '.join(found)}" if found else problem
            self._record(idea_id, tier, model, answer, attempt, started, problem or None, calls)
            if value is not None and not found:
                return value
            _log.info("idea %s, %s tier, attempt %d: invalid output (%s)", idea_id, tier, attempt, problem)
        message = (f"The {tier} model ({model.name}) gave no valid {schema.__name__} in {self.retries + 1} "
                   f"attempts; last problem: {problem}")
        if degenerate is not None:
            raise DegenerateAnswerError(message, answer=degenerate[0], problems=degenerate[1])
        raise InvalidOutputError(message)

    def _attempt(self, model: Model, lock: Any, messages: list[dict[str, str]], tier: Tier, schema: type[S],
                 temperature: float, early: EarlyCheck | None, resume: Resume) -> tuple[Any, S | None, str]:
        """One call, stopped by `early` when it finds the answer degenerate: (the raw answer, the validated value
        or None, why not; "" when `early` stopped it: its `problems` say why). The call continues the answer
        `resume` kept from the last attempt, if any."""
        answer: Any = None
        # Never more than the model's whole window (the library refuses that); the room left after the prompt
        # caps it further, so a small MODEL_CONTEXT_SIZE still gets answers.
        max_tokens = min(self.max_tokens[tier], model.context_size or self.max_tokens[tier])
        try:
            with lock:
                answer = model.create_chat_completion(
                    messages=messages + resume.messages(), max_tokens=max_tokens, temperature=temperature,
                    response_format=response_format(schema), stop_when=resume.watched(early), **resume.options())
            assert isinstance(answer, dict)
            content = _content(answer, resume.answered)
            if early is not None and early.problems:
                return answer, None, ""
            # strict=False: a raw newline inside a string (some servers' grammars allow it) is not worth a retry.
            return answer, schema.model_validate(json.loads(content, strict=False)), ""
        except json.JSONDecodeError as exc:
            return answer, None, _describe(f"not JSON ({exc})", answer)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(map(str, first["loc"])) or "answer"
            return answer, None, _describe(f"{exc.error_count()} schema error(s), first {where}: {first['msg']}",
                                           answer)

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


def _content(answer: dict[str, Any], answered: str = "") -> str:
    """The whole answer's text: what was kept from the attempt before (`answered`), then this call's reply."""
    return answered + (answer["choices"][0]["message"].get("content") or "")


def _describe(detail: str, answer: Any) -> str:
    """One line on why an answer was rejected, mentioning a cut-off answer (finish_reason=length)."""
    finish = answer["choices"][0].get("finish_reason") if isinstance(answer, dict) else None
    return detail + (" - the answer hit max_tokens" if finish == "length" else "")
