"""Property-based fuzzing of response_format schemas against a real server: deep, wide and regex-heavy
schemas, some far past every limit. Every answer is a 200 or a 400 in OpenAI's envelope; the process never
dies, its workers never stop, and a normal request is answered after all of them.

`AGENTIC_FUZZ_SCHEMAS` sets the number of cases (default 120).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import start_agentic_server, stop

CASES = int(os.environ.get("AGENTIC_FUZZ_SCHEMAS", "120"))
REFUSALS = {"schema_too_complex", "invalid_value"}  # over a limit, or a schema llama.cpp cannot enforce

# Regex pieces: quantifiers with huge bounds, nesting, classes, escapes, anchors, alternation.
_REGEX_ATOMS = st.sampled_from(["a", "b", ".", "\\d", "\\w", "[a-z]", "[^\"]", "\\{", "x|y", "\\\\"])
_QUANTIFIERS = st.one_of(st.sampled_from(["", "*", "+", "?"]),
                         st.builds(lambda m, n: f"{{{m},{n}}}", st.integers(0, 50), st.integers(50, 40_000)),
                         st.builds(lambda n: f"{{{n}}}", st.integers(0, 5_000)))
_REGEX = st.recursive(
    st.builds(lambda atom, quantifier: atom + quantifier, _REGEX_ATOMS, _QUANTIFIERS),
    lambda inner: st.one_of(
        st.builds(lambda parts: "".join(parts), st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda part, quantifier: f"({part}){quantifier}", inner, _QUANTIFIERS)),
    max_leaves=12)

_COUNT = st.integers(0, 6_000)
_NAMES = st.text("abcdefghij_", min_size=1, max_size=8)
_LEAVES = st.one_of(
    st.fixed_dictionaries({"type": st.just("string")}, optional={"minLength": _COUNT, "maxLength": _COUNT}),
    st.fixed_dictionaries({"type": st.just("string"), "pattern": _REGEX.map(lambda r: f"^{r}$")}),
    st.fixed_dictionaries({"type": st.just("integer")},
                          optional={"minimum": st.integers(-10**6, 10), "maximum": st.integers(0, 10**6)}),
    st.fixed_dictionaries({"type": st.sampled_from(["number", "boolean", "null"])}),
    st.builds(lambda size: {"enum": [f"value-{i}" for i in range(size)]},
              st.one_of(st.integers(1, 20), st.integers(500, 5_000))),
    st.builds(lambda value: {"const": value}, st.text(max_size=20)),
)


def _containers(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda props: {"type": "object", "properties": props, "required": sorted(props)},
                  st.dictionaries(_NAMES, inner, min_size=1, max_size=6)),
        st.builds(lambda items, low, high: {"type": "array", "items": items, "minItems": low, "maxItems": high},
                  inner, st.integers(0, 3), st.one_of(st.integers(1, 5), _COUNT)),
        st.builds(lambda options: {"anyOf": options}, st.lists(inner, min_size=1, max_size=4)),
    )


def _deep(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for level in range(depth):
        schema = {"type": "object", "properties": {f"l{level}": schema}, "required": [f"l{level}"]} if level % 2 \
            else {"type": "array", "items": schema, "maxItems": 2}
    return schema


SCHEMAS = st.one_of(
    st.recursive(_LEAVES, _containers, max_leaves=25),
    st.builds(_deep, st.integers(1, 400)),  # deep chains, past MODEL_SCHEMA_MAX_DEPTH and the converter's recursion
    st.builds(lambda width: {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(width)}},
              st.integers(1, 3_000)),  # wide objects, past MODEL_SCHEMA_MAX_BYTES
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    directory: Path = tmp_path_factory.mktemp("schema_fuzz")
    url, process = start_agentic_server(directory, MODEL_PARALLEL="4", MODEL_CONTEXT_SIZE="512")
    yield url, process
    stop(process)


@pytest.mark.slow
def test_fuzzed_schemas_get_200_or_400_and_never_hurt_the_server(server: tuple[str, Any]) -> None:
    url, process = server
    statuses: Counter[str] = Counter()
    slowest = [0.0, ""]

    @given(schema=SCHEMAS)
    @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,  # the same cases each run
              suppress_health_check=list(HealthCheck))
    def run(schema: dict[str, Any]) -> None:
        body = {"model": "heavy", "messages": [{"role": "user", "content": "Answer in JSON."}], "max_tokens": 6,
                "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "f",
                                                                                            "schema": schema}}}
        started = time.perf_counter()
        answer = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(body).encode(), timeout=None,
                            headers={"content-type": "application/json"})
        took = time.perf_counter() - started
        if took > slowest[0]:
            slowest[:] = [took, json.dumps(schema)[:120]]
        assert answer.status_code in {200, 400}, (answer.status_code, answer.text[:500], json.dumps(schema)[:500])
        if answer.status_code == 400:
            error = answer.json()["error"]
            assert error["code"] in REFUSALS and error["param"].startswith(("response_format", "body")), error
            statuses[f"400 {error['code']}"] += 1
        else:
            statuses["200"] += 1
        assert process.poll() is None  # the process is alive after every case

    run()
    print(f"\n{sum(statuses.values())} schemas: {dict(statuses)}; slowest answer {slowest[0]:.2f} s: {slowest[1]}")
    assert statuses["200"] > 0 and statuses["400 schema_too_complex"] > 0  # the cases reach both outcomes
    assert httpx.get(f"{url}/ready", timeout=None).status_code == 200  # no worker down
    normal = httpx.post(f"{url}/v1/chat/completions", timeout=None, json={
        "model": "heavy", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert normal.status_code == 200 and normal.json()["usage"]["completion_tokens"] > 0
