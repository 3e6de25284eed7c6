"""What goes in (an idea) and what must come out (triage, analysis): pydantic models, sent as JSON schemas."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = ["Analysis", "Idea", "IdeaResult", "Triage", "response_format"]

Point = Annotated[str, StringConstraints(min_length=3, max_length=80)]


class Idea(BaseModel):
    """One business idea from the input file; `id` is stable across runs (a hash of its text)."""

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=4000)
    line: int | None = Field(None, description="Line of the input file it came from.")

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.title}\n{self.description}".encode()).hexdigest()[:16]


class Triage(BaseModel):
    """The light tier's quick read of an idea."""

    model_config = ConfigDict(extra="forbid")
    LABELS: ClassVar[tuple[str, ...]] = ("category",)  # classes shared by many ideas (quality.py: not a copy)

    # Summary first: a small model restates the idea before it names a sector, instead of copying an example's.
    summary: str = Field(min_length=10, max_length=160, description="The idea in one line.")
    target_customer: str = Field(min_length=2, max_length=80, description="Who would pay for it.")
    category: str = Field(min_length=2, max_length=40, description="Industry or sector, a few words.")


class Analysis(BaseModel):
    """The heavy tier's analysis of an idea."""

    model_config = ConfigDict(extra="forbid")

    market: str = Field(min_length=10, max_length=200, description="Market size and demand.")
    competition: str = Field(min_length=10, max_length=200, description="Who else does this.")
    strengths: list[Point] = Field(min_length=1, max_length=3, description="Up to three strengths.")
    risks: list[Point] = Field(min_length=1, max_length=3, description="Up to three risks.")
    score: int = Field(ge=1, le=10, description="1 (poor) to 10 (excellent).")
    verdict: Literal["pursue", "refine", "drop"] = Field(description="What to do with the idea.")
    reason: str = Field(min_length=10, max_length=160, description="Why, in one sentence.")


class IdeaResult(BaseModel):
    """One line of results.jsonl: an idea and its answers, or why it failed."""

    id: str
    status: Literal["ok", "failed", "low_quality"]
    idea: Idea
    triage: Triage | None = None
    analysis: Analysis | None = None
    error: str | None = None
    problems: list[str] = Field(default_factory=list, description="Why a low_quality answer was not ranked.")
    backend: str
    models: dict[str, str] = Field(default_factory=dict, description="tier -> model name")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def response_format(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAI `response_format` that asks for `schema`, understood by every backend."""
    return {"type": "json_schema",
            "json_schema": {"name": schema.__name__.lower(), "schema": schema.model_json_schema()}}
