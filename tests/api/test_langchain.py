"""A LangChain agent and LangChain embeddings against our server on each backend, with no change to LangChain's code."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from agentic.ml.embeddings import cosine
from conftest import SLOW_MACHINE_TIMEOUT


@tool
def get_weather(city: str, unit: str) -> str:
    """Current weather in a city; unit is celsius or fahrenheit."""
    return f"18 degrees {unit} and sunny in {city}"


class Idea(BaseModel):
    """A business idea."""

    name: str
    score: int


@pytest.fixture()
def server(server_on: str) -> str:
    """Our server on each backend (see conftest.server_on)."""
    return f"{server_on}/v1"


def _chat(server: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=server, api_key="unused", model="heavy", temperature=0, max_tokens=96,
                      timeout=SLOW_MACHINE_TIMEOUT, max_retries=0)


def test_agent_tool_loop(server: str) -> None:
    llm = _chat(server)
    question = HumanMessage("What is the weather in Paris, in celsius?")
    call_message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    assert call_message.tool_calls and call_message.tool_calls[0]["name"] == "get_weather"
    call = call_message.tool_calls[0]
    assert set(call["args"]) == {"city", "unit"} and call["id"]
    result = get_weather.invoke(call["args"])
    final = llm.invoke([question, call_message, ToolMessage(result, tool_call_id=call["id"])])
    assert isinstance(final.content, str) and final.content


def test_structured_output_by_function_calling(server: str) -> None:
    structured = _chat(server).with_structured_output(Idea, method="function_calling")
    idea = structured.invoke("Describe a business idea with a name and a score from 1 to 10.")
    assert isinstance(idea, Idea)


def test_embeddings(server: str) -> None:
    embeddings = OpenAIEmbeddings(base_url=server, api_key="unused", model="embedding",
                                  check_embedding_ctx_length=False, timeout=SLOW_MACHINE_TIMEOUT, max_retries=0)
    documents = embeddings.embed_documents(["a bakery for dogs", "quantum error correction"])
    query = embeddings.embed_query("a bakery for dogs")
    assert len(documents) == 2 and cosine(documents[0], query) > 0.999 > cosine(documents[1], query)
