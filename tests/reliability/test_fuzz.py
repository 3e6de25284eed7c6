"""The server's own OpenAPI schema, fuzzed with schemathesis against a real server: never a 500."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import start_agentic_server, stop

ADMIN = "fuzz-admin-key"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A small context bounds every generation the fuzzer asks for.
    directory: Path = tmp_path_factory.mktemp("fuzz")
    (directory / ".env").write_text(f"API_ADMIN_KEYS={ADMIN}\n")
    url, process = start_agentic_server(directory, MODEL_CONTEXT_SIZE="256", MODEL_PARALLEL="4")
    yield url
    stop(process)


# 5xx answers the server may give by design: the model gave no valid JSON after its retries (the
# 256-token context of this server cuts long analyses off), or the queue is full. Never a 500.
EXPECTED_5XX = {502: "invalid_model_output", 503: "queue_full"}


def _check(response: object) -> int:
    status = int(getattr(response, "status_code", 0))
    text = getattr(response, "text", "")
    assert status < 500 or EXPECTED_5XX.get(status) == response.json()["error"]["code"], text  # type: ignore[attr-defined]
    if status >= 400:  # every error in OpenAI's envelope, naming what was wrong
        error = response.json()["error"]  # type: ignore[attr-defined]
        assert error["message"] and error["type"]
    return status


def _fuzz(url: str, path: str, method: str, examples: int, timeout: float) -> Counter[int]:
    """Send up to `examples` generated requests to one operation; return how many got each status."""
    operation = schemathesis.openapi.from_url(f"{url}/openapi.json")[path][method]
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(), real_model=st.booleans())
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)  # the same cases every run: a failure reproduces
    def run(case: schemathesis.Case, real_model: bool) -> None:
        if real_model and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = "heavy"  # half the cases get past the model lookup to the model itself
        statuses[_check(case.call(base_url=url, timeout=timeout))] += 1

    run()
    return statuses


@pytest.mark.slow
@pytest.mark.parametrize(("path", "method", "examples"), [
    ("/v1/chat/completions", "POST", 40), ("/v1/completions", "POST", 40), ("/v1/models", "GET", 5),
    ("/v1/backend", "GET", 5), ("/ready", "GET", 3), ("/admin/reload", "POST", 5), ("/v1/ideas/analyze", "POST", 4),
])
def test_fuzzed_requests_never_get_a_500(server_url: str, path: str, method: str, examples: int) -> None:
    statuses = _fuzz(server_url, path, method, examples, timeout=None)
    print(path, dict(statuses))
    assert sum(statuses.values()) >= 1 and 500 not in statuses
    if path in {"/v1/chat/completions", "/v1/completions"}:
        assert statuses[200] > 0 and sum(statuses.values()) > statuses[200]  # both answers and refusals
