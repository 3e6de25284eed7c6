"""The console's fixtures: real servers on 127.0.0.1 (with and without API_KEYS), Debian's chromium driven by
Playwright, and a folder for the screenshots of each step (AGENTIC_ARTIFACTS, default tests/artifacts/console)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import REPO_ROOT, serving, start_agentic_server

CHROMIUM = Path(os.environ.get("AGENTIC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
API_KEY = "console-test-key"
# One model thread: on a busy 2-core machine llama.cpp's threads wait for each other at every step, and a second
# thread made a 400-token answer take minutes instead of seconds. The analysis asks for up to 1200 tokens, so
# the context is 2048.
SERVER_ENV = {"MODEL_N_THREADS": "1", "MODEL_PARALLEL": "2", "MODEL_CONTEXT_SIZE": "2048"}


def artifacts_dir() -> Path:
    """Where screenshots go (git-ignored): $AGENTIC_ARTIFACTS/console, else tests/artifacts/console."""
    configured = os.environ.get("AGENTIC_ARTIFACTS")
    base = Path(configured) if configured else REPO_ROOT / "tests" / "artifacts"
    folder = base / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    """Debian's chromium; its absence fails the browser tests with the command that installs it."""
    on_path = shutil.which("chromium")
    found = CHROMIUM if CHROMIUM.is_file() else Path(on_path) if on_path else None
    if found is None:
        pytest.fail(f"chromium is not installed (looked for {CHROMIUM} and `chromium` on PATH): the web console is "
                    "tested in a real headless browser. Install it with `apt-get install -y chromium` (Debian/Ubuntu; "
                    ".ci/run does this), or point AGENTIC_CHROMIUM at a Chromium binary. Do not run `playwright "
                    "install`: the tests use the system browser.", pytrace=False)
    return found


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our server without API_KEYS, on the embedded model; its runs under its own temporary folder."""
    directory = tmp_path_factory.mktemp("console")
    with serving(start_agentic_server(directory, **SERVER_ENV, API_RUNS_DIR=str(directory / "runs"))) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our server with API_KEYS set."""
    directory = tmp_path_factory.mktemp("console-keyed")
    env = {**SERVER_ENV, "API_KEYS": API_KEY, "API_RUNS_DIR": str(directory / "runs")}
    with serving(start_agentic_server(directory, **env)) as url:
        yield url


@pytest.fixture(scope="module")
def browser(chromium_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Watched:
    """A page and everything it did: requests (URL and headers), failed requests, console errors."""

    page: Any
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        path = artifacts_dir() / name
        self.page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar stays at the top of a full-page shot
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def foreign_requests(self) -> list[str]:
        """Requests that left 127.0.0.1 (data: and blob: URLs stay in the page)."""
        return [url for url, _ in self.requests
                if urlsplit(url).scheme not in ("data", "blob") and urlsplit(url).hostname != "127.0.0.1"]


@pytest.fixture()
def watched(browser: Any) -> Iterator[Watched]:
    """A fresh tab (its own sessionStorage) that records what it loads and every console error."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(120_000)  # a slow machine, never a fixed short wait: each step waits on the page
    seen = Watched(page)
    page.on("request", lambda request: seen.requests.append((request.url, request.headers)))
    page.on("requestfailed", lambda request: seen.failed.append((request.url, request.failure or "")))
    page.on("console", lambda message: seen.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: seen.errors.append(f"page error: {error}"))
    try:
        yield seen
    finally:
        context.close()
