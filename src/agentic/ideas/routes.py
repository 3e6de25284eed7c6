"""The business-idea application's HTTP route, POST /v1/ideas/analyze, on its own APIRouter.

The server core (`agentic.api`) knows nothing of it; `agentic.api.app` adds this router next to the core's.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field

from ..api.pipeline import RequestContext
from ..api.routes import server_of
from ..api.schemas import RequestBody
from ..api.state import ServerState
from ..errors import AgenticError
from ..ml.tiers import TIERS, Tier
from .analyzer import (
    ANALYSIS_SYSTEM,
    TRIAGE_SYSTEM,
    CallRecord,
    DegenerateAnswerError,
    IdeaAnalyzer,
    analysis_prompt,
    idea_prompt,
)
from .schemas import Analysis, Triage

__all__ = ["IdeaRequest", "router"]

router = APIRouter()


class IdeaRequest(RequestBody):
    """POST /v1/ideas/analyze: one business idea."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=4000)
    retries: int = Field(2, ge=0, le=5, description="Extra attempts when an answer does not match its schema.")


async def _analyze_idea(state: ServerState, body: IdeaRequest) -> JSONResponse:
    """POST /v1/ideas/analyze: the light tier's triage, then the heavy tier's analysis, each behind its gate."""
    calls: list[CallRecord] = []
    analyzer = IdeaAnalyzer(state.manager, retries=body.retries)
    idea_text = idea_prompt(body.title, body.description)
    context = RequestContext(state, "ideas", "light")

    async def on_tier(tier: Tier, system: str, text: str, schema: type[Triage] | type[Analysis]) -> Any:
        context.tier = tier
        gate = context.gate
        await gate.acquire()
        try:
            await state.model(tier)
            return await asyncio.to_thread(partial(analyzer.structured, context.request_id, tier, system, text,
                                                   schema, calls, title=body.title))
        except DegenerateAnswerError:
            raise  # answered: a low_quality result, not an error
        except AgenticError as exc:
            context.record(exc.status_code, error=exc)
            raise
        finally:
            gate.release()

    triage, analysis, status, problems = None, None, "ok", []
    try:
        triage = await on_tier("light", TRIAGE_SYSTEM, idea_text, Triage)
        analysis = await on_tier("heavy", ANALYSIS_SYSTEM, analysis_prompt(idea_text, triage), Analysis)
    except DegenerateAnswerError as exc:  # valid JSON that said nothing: shown, flagged, not ranked
        status, problems = "low_quality", exc.problems
        triage = triage or (exc.answer if isinstance(exc.answer, Triage) else None)
        analysis = exc.answer if isinstance(exc.answer, Analysis) else None
    usage = {"prompt_tokens": sum(c.prompt_tokens for c in calls),
             "completion_tokens": sum(c.completion_tokens for c in calls)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    context.tier = "heavy"  # the answer is the heavy tier's: its labels count the request
    context.record(200, usage)
    manager = state.manager
    return JSONResponse({"id": f"idea-{context.request_id}", "object": "idea.analysis", "backend": manager.backend,
                         "models": {tier: manager.specs[tier].name for tier in TIERS},
                         "status": status, "problems": problems,
                         "triage": triage and triage.model_dump(), "analysis": analysis and analysis.model_dump(),
                         "attempts": len(calls), "usage": usage}, headers={"x-request-id": context.request_id})


@router.post("/v1/ideas/analyze", summary="One business idea: light triage, heavy analysis")
async def analyze_idea(body: IdeaRequest, request: Request) -> JSONResponse:
    state = server_of(request).current.enter()
    try:
        return await _analyze_idea(state, body)
    finally:
        state.leave()
