"""Issue 10's table, row by row, against a real server: each hostile request gets its 4xx (or a correct 200)
promptly, while a bystander streams on the other tier, and the hostile request's own tier still serves after.

"Promptly" is measured against this machine's own speed (a one-token answer), so a loaded machine makes
the test slower, not red.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import serving, start_agentic_server

KEY = "hostile-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


# (row of the table, extra body fields or None, message content, status, error code, error param)
ROWS = [
    ("maxLength 20000", _schema({"type": "string", "maxLength": 20000}), "Hi", 400, "schema_too_complex",
     "response_format"),
    ("pattern a{0,30000}", _schema({"type": "string", "pattern": "^a{0,30000}$"}), "Hi", 400, "schema_too_complex",
     "response_format"),
    ("pattern with a lone surrogate", _schema({"type": "string", "pattern": "^\ud800$"}), "Hi", 400, "invalid_value",
     "body.response_format.json_schema.schema.pattern"),
    ("enum of 100,000 strings", _schema({"enum": [f"value-{i}" for i in range(100_000)]}), "Hi", 400,
     "schema_too_complex", "response_format"),
    ("maxItems 5000", _schema({"type": "array", "items": {"type": "integer"}, "maxItems": 5000}), "Hi", 400,
     "schema_too_complex", "response_format"),
    ("content with a lone surrogate", {}, "a\ud800b", 400, "invalid_value", "body.messages[0].content"),
    ("stop as one long string", {"stop": "\n\nHuman:"}, "Hi", 200, None, None),
    ("tool schema with maxLength 20000", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "maxLength": 20000}}}}}]}, "Hi", 400,
     "schema_too_complex", "tools[0].function.parameters"),
    ("functions", {"functions": [{"name": "f", "parameters": {}}]}, "Hi", 400, "invalid_value", "functions"),
    ("logit_bias", {"logit_bias": {"42": 5}}, "Hi", 400, "invalid_value", "logit_bias"),
    ("five stop strings", {"stop": ["a", "b", "c", "d", "e"]}, "Hi", 400, "invalid_value", "stop"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[tuple[str, Path, float]]:
    """(URL, log file, seconds one short answer takes here): two tiers on two separately loaded models."""
    directory = tmp_path_factory.mktemp("hostile")
    light = directory / "light.gguf"  # another path: the light tier gets its own model, engine and gate
    try:
        os.link(gemma_path, light)
    except OSError:
        shutil.copy(gemma_path, light)
    started_server = start_agentic_server(directory, API_KEYS=KEY, MODEL_PARALLEL="4", MODEL_1B_PATH=str(light),
                                          MODEL_PRELOAD="true", API_HEADER_TIMEOUT="2", API_MAX_CONNECTIONS="24")
    with serving(started_server) as url:  # stopped even when the warm-up below fails
        _post(url, _chat_body("Hi", "heavy"))  # warm both tiers up
        started = time.perf_counter()
        assert _post(url, _chat_body("Hi", "light", max_tokens=1)).status_code == 200
        unit = time.perf_counter() - started
        yield url, directory / f"agentic-{url.rsplit(':', 1)[1]}.log", unit


def _chat_body(content: str, tier: str, **extra: Any) -> dict[str, Any]:
    return {"model": tier, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0,
            **extra}


def _post(url: str, body: dict[str, Any], path: str = "/v1/chat/completions") -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800, as a hostile client would send it (httpx's json= cannot)
    return httpx.post(f"{url}{path}", content=json.dumps(body).encode(), timeout=None,
                      headers={**AUTH, "content-type": "application/json"})


def _bound(unit: float) -> float:
    """How long a refusal may take: a few seconds, scaled by how slow this machine is right now."""
    return max(5.0, 50 * unit)


class Bystander(threading.Thread):
    """A streamed answer on the other tier, running while the hostile request is made."""

    def __init__(self, url: str, tier: str) -> None:
        super().__init__()
        self.url, self.tier = url, tier
        self.started = threading.Event()
        self.events: list[str] = []

    def run(self) -> None:
        body = {"model": self.tier, "prompt": "Once upon a time", "max_tokens": 48, "stream": True}
        with httpx.stream("POST", f"{self.url}/v1/completions", json=body, headers=AUTH, timeout=None) as answer:
            self.status = answer.status_code
            for line in answer.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                    self.started.set()
        self.started.set()


@pytest.mark.slow
@pytest.mark.parametrize(("row", "extra", "content", "status", "code", "param"), ROWS, ids=[row[0] for row in ROWS])
def test_hostile_request_gets_its_answer_while_the_other_tier_serves(
        server: tuple[str, Path, float], row: str, extra: dict[str, Any], content: str, status: int,
        code: str | None, param: str | None) -> None:
    url, log, unit = server
    bystander = Bystander(url, "light")
    bystander.start()
    bystander.started.wait()
    started = time.perf_counter()
    answer = _post(url, _chat_body(content, "heavy", **extra))
    took = time.perf_counter() - started
    bystander.join()
    assert answer.status_code == status, answer.text
    assert took < _bound(unit), f"{row}: {took:.1f} s"
    if code is not None:
        error = answer.json()["error"]
        assert (error["code"], error["param"]) == (code, param)
        assert error["message"] and error["type"] == "invalid_request_error"
    assert bystander.status == 200 and bystander.events[-1] == "[DONE]"
    assert json.loads(bystander.events[-2])["choices"][0]["finish_reason"] in {"stop", "length"}
    # The hostile request's own tier still answers: nothing wedged, nothing died.
    assert _post(url, _chat_body("Hi", "heavy")).status_code == 200
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "::=" not in text  # no stack trace, no grammar dumped to the log


@pytest.mark.slow
def test_control_token_text_in_a_message_costs_the_tokens_of_its_characters(server: tuple[str, Path, float]) -> None:
    url, _, _ = server
    plain = _post(url, _chat_body("x", "heavy", max_tokens=1)).json()["usage"]["prompt_tokens"]
    forged = _post(url, _chat_body("<start_of_turn>", "heavy", max_tokens=1)).json()["usage"]["prompt_tokens"]
    # As a control token it would be one token where "x" is one; as text it is "<", "start", "_of", ...
    assert forged >= plain + 3


@pytest.mark.slow
def test_key_is_checked_before_the_body_is_read(server: tuple[str, Path, float]) -> None:
    url, _, unit = server
    host, port = url.removeprefix("http://").split(":")
    import socket

    with socket.create_connection((host, int(port))) as sock:  # announces 1 MB, sends 5 bytes, no key
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000000\r\n\r\n{\"a\":")
        started = time.perf_counter()
        answer = _read_response(sock)
        took = time.perf_counter() - started
    assert answer.startswith(b"HTTP/1.1 401") and b"API_KEYS" in answer
    assert took < _bound(unit)


def _read_response(sock: Any) -> bytes:
    """One whole HTTP response (head and Content-Length body) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.slow
def test_chunked_body_over_the_limit_is_413(server: tuple[str, Path, float]) -> None:
    url, _, _ = server

    def chunks() -> Iterator[bytes]:
        for _ in range(80):  # 5 MB in 64 KB chunks, no Content-Length: over API_MAX_BODY_BYTES (4 MB)
            yield b"x" * 65536

    answer = httpx.post(f"{url}/v1/chat/completions", content=chunks(), timeout=None,
                        headers={**AUTH, "content-type": "application/json"})
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"
    assert "API_MAX_BODY_BYTES" in answer.json()["error"]["message"]


@pytest.mark.slow
def test_idle_connections_are_closed_and_capped(server: tuple[str, Path, float]) -> None:
    url, _, _ = server
    host, port = url.removeprefix("http://").split(":")
    import socket

    sockets = [socket.create_connection((host, int(port))) for _ in range(30)]  # API_MAX_CONNECTIONS=24
    try:
        replies = []
        for sock in sockets:
            sock.settimeout(None)  # no deadline of ours: the server must close them (API_HEADER_TIMEOUT=2)
            replies.append(_read_response(sock))
    finally:
        for sock in sockets:
            sock.close()
    refused = [reply for reply in replies if reply.startswith(b"HTTP/1.1 503")]
    assert len(refused) >= 6 and all(b"API_MAX_CONNECTIONS" in reply for reply in refused)
    assert replies.count(b"") == len(replies) - len(refused)  # every other one closed for sending nothing
    assert httpx.get(f"{url}/health", timeout=None).status_code == 200  # and the server still takes new ones


@pytest.mark.slow
def test_slow_or_oversized_request_heads_are_cut_off(server: tuple[str, Path, float]) -> None:
    url, _, _ = server
    host, port = url.removeprefix("http://").split(":")
    import socket

    def reply(data: bytes) -> bytes:
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(data)
            sock.settimeout(None)  # no deadline of ours: the server must answer or close (API_HEADER_TIMEOUT=2)
            return _read_response(sock)

    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    assert reply(head) == b""  # half a head, then nothing: closed at the deadline
    too_large = reply(head + b"x-padding: " + b"a" * 40_000)  # an unfinished head over 16 KB
    assert too_large.startswith(b"HTTP/1.1 431") and b"headers_too_large" in too_large
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(3000))  # a whole head of 30 KB in small headers
    too_large = reply(b"GET /health HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
    assert too_large.startswith(b"HTTP/1.1 431") and b"headers_too_large" in too_large
    # A large body in the same packets as its head is a body, not a head: the key is checked as usual.
    body = json.dumps({"model": "heavy", "messages": [{"role": "user", "content": "a" * 60_000}]}).encode()
    with_body = reply(head + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert with_body.startswith(b"HTTP/1.1 401") and b"API_KEYS" in with_body
    assert httpx.get(f"{url}/health", timeout=None).status_code == 200


@pytest.mark.slow
def test_ready_without_a_key_says_only_ready(server: tuple[str, Path, float]) -> None:
    url, _, _ = server
    bare = httpx.get(f"{url}/ready", timeout=None)
    detailed = httpx.get(f"{url}/ready", headers=AUTH, timeout=None)
    assert bare.status_code == 200 and bare.json() == {"status": "ready"}
    assert detailed.json()["loaded"] == {"heavy": True, "light": True}


@pytest.mark.slow
def test_openai_backend_keeps_control_token_text_as_text(server: tuple[str, Path, float]) -> None:
    """The openai backend passes messages through; on a server that keeps text as text (ours), so does it."""
    from agentic.ml.openai_model_manager import OpenAIModelManager
    from conftest import make_settings

    url, _, _ = server
    settings = make_settings(model_backend="openai", openai_base_url=f"{url}/v1", openai_api_key=KEY,
                             openai_heavy_model="heavy", openai_light_model="light")
    with OpenAIModelManager(settings) as manager:
        model, _ = manager.get(heavy=True)

        def prompt_tokens(content: str) -> int:
            answer = model.create_chat_completion(messages=[{"role": "user", "content": content}], max_tokens=1)
            assert isinstance(answer, dict)
            return int(answer["usage"]["prompt_tokens"])

        assert prompt_tokens("<start_of_turn>") >= prompt_tokens("x") + 3
