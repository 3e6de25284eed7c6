"""The web console in a real headless Chromium against a real server on the embedded model: the page, the status,
a streamed answer and its Stop button, an analysis from an uploaded CSV, and the key gate under API_KEYS.

Each step leaves a screenshot in AGENTIC_ARTIFACTS/console (default tests/artifacts/console). No step sleeps a
fixed time: each waits on what the page shows, with limits meant for a busy 2-core machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from .conftest import API_KEY, Watched

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("chromium_path")]  # no browser: fail first, say how

STREAM_MAX_TOKENS = 600  # far more than the model writes before the test presses Stop
AT_LEAST_FIVE = re.compile(r"^([5-9]|[1-9][0-9,]+)$")
IDEAS_CSV = """title,description
Dog bakery,"Fresh treats for dogs, baked daily and delivered by bike."
Solar kiosks,Phone charging kiosks powered by solar panels in rural markets.
Tutor match,An app that pairs students with retired teachers for tutoring.
"""


def _tokens(watched: Watched) -> int:
    text = watched.page.locator("#play-tokens").inner_text().replace(",", "")
    return int(text) if text.isdigit() else 0


def test_page_loads_offline_with_no_error_and_shows_the_backend(console_server: str, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{console_server}/")
    page.locator("#status-tiles .tile-value", has_text="llama_cpp").wait_for()
    page.locator("#tier-table tbody tr").nth(1).wait_for()
    expect(page.locator(".uplot canvas")).to_have_count(5)
    expect(page.locator("#metric-totals .total")).to_have_count(3)
    watched.shot("01-status-and-metrics.png")

    assert page.locator("#key-gate").is_hidden()
    assert page.locator("#ready-badge").inner_text().startswith("llama_cpp")
    tiers = page.locator("#tier-table tbody").inner_text()
    assert "heavy" in tiers and "light" in tiers and "gemma-3-270m" in tiers
    assert watched.errors == []
    assert watched.foreign_requests() == []
    loaded = {url.removeprefix(console_server) for url, _ in watched.requests}
    assert {"/", "/console/static/vendor/uPlot.iife.min.js", "/console/api/status", "/console/api/metrics"} <= loaded


def test_playground_streams_an_answer_and_stop_ends_it(console_server: str, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{console_server}/")
    page.locator("#status-tiles .tile-value", has_text="llama_cpp").wait_for()
    page.select_option("#play-tier", "light")
    page.fill("#play-temperature", "0")
    page.fill("#play-max-tokens", str(STREAM_MAX_TOKENS))
    page.fill("#play-prompt", "Count from 1 to 500, one number per line.")
    page.click("#play-send")
    expect(page.locator("#play-tokens")).to_have_text(AT_LEAST_FIVE, timeout=300_000)
    assert page.locator("#play-stop").is_enabled()
    watched.shot("02-playground-streaming.png")

    page.click("#play-stop")
    page.locator("#play-finish", has_text="stopped").wait_for()
    shown = _tokens(watched)
    watched.shot("03-playground-stopped.png")
    assert 5 <= shown < STREAM_MAX_TOKENS
    assert page.locator("#play-send").is_enabled() and page.locator("#play-stop").is_disabled()
    assert page.locator("#play-ttft").inner_text() != "–"
    aborted = [failure for url, failure in watched.failed if url.endswith("/v1/chat/completions")]
    assert aborted and "ABORTED" in aborted[0]
    # The server saw the client go: the request is counted as 499, not as an answer of 600 tokens.
    metrics = httpx.get(f"{console_server}/metrics", timeout=60).text
    assert 'status="499"' in metrics

    page.fill("#play-max-tokens", "8")
    page.click("#play-send")
    page.locator("#play-finish", has_text="length").wait_for(timeout=300_000)
    assert _tokens(watched) == 8 and page.locator("#play-rate").inner_text() != "–"

    page.click("#play-schema-box summary")
    page.fill("#play-schema", "{not json")
    page.click("#play-send")
    expect(page.locator("#play-answer")).to_contain_text("The JSON schema is not valid JSON")
    page.fill("#play-schema", '{"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}')
    page.click("#play-send")
    page.locator("#play-finish", has_text="length").or_(page.locator("#play-finish", has_text="stop")).wait_for(
        timeout=300_000)
    assert page.locator("#play-answer").inner_text().lstrip().startswith("{")  # the schema's grammar held
    assert watched.errors == []


@pytest.mark.timeout(1800)
def test_csv_upload_runs_an_analysis_to_its_report(console_server: str, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    ideas = tmp_path / "three_ideas.csv"
    ideas.write_text(IDEAS_CSV)
    page.goto(f"{console_server}/")
    page.locator("#status-tiles .tile-value", has_text="llama_cpp").wait_for()
    page.set_input_files("#run-file", str(ideas))
    page.click("#run-start")
    page.locator("#run-table tbody tr", has_text="three_ideas.csv").wait_for()
    watched.shot("04-analysis-started.png")

    page.locator("#run-table tbody tr[data-state='done']").wait_for(timeout=1_500_000)
    report = page.frame_locator("#report-frame")
    report.locator("h1", has_text="Business idea analysis").wait_for()
    assert report.locator("#summary").inner_text().startswith("3 ideas")
    assert page.locator("#run-table tbody tr[data-state='done'] td").nth(2).inner_text() == "3"
    watched.shot("05-analysis-report.png")

    with page.expect_download() as download_info:
        page.click("#report [data-download='report.md']")
    download = download_info.value
    assert download.suggested_filename.endswith("-report.md")
    assert "# Business idea analysis" in Path(download.path()).read_text()
    assert watched.errors == [] and watched.foreign_requests() == []


def test_with_api_keys_the_page_refuses_to_work_until_a_valid_key(keyed_server: str, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{keyed_server}/")
    page.locator("#key-gate").wait_for()
    assert page.locator("#console").is_hidden()
    assert page.locator("#status-tiles").inner_text() == ""
    watched.shot("06-key-required.png")

    page.fill("#key-input", "not-the-key")
    page.click("#key-submit")
    page.locator("#key-error", has_text="refused").wait_for()
    assert page.locator("#console").is_hidden() and page.locator("#key-gate").is_visible()
    assert page.evaluate("sessionStorage.length") == 0
    watched.shot("07-key-refused.png")

    page.fill("#key-input", API_KEY)
    page.click("#key-submit")
    page.locator("#status-tiles .tile-value", has_text="llama_cpp").wait_for()
    assert page.locator("#key-gate").is_hidden()
    expect(page.locator(".uplot canvas")).to_have_count(5)
    watched.shot("08-key-accepted.png")

    assert API_KEY in page.evaluate("Object.values(sessionStorage)")
    assert all(API_KEY not in url for url, _ in watched.requests)  # the key never goes into a URL
    data = [headers for url, headers in watched.requests if "/console/api/" in url]
    assert data and data[-1].get("authorization") == f"Bearer {API_KEY}"
    page.reload()  # the key stays for the tab
    page.locator("#status-tiles .tile-value", has_text="llama_cpp").wait_for()
    assert page.locator("#key-gate").is_hidden()
    assert watched.foreign_requests() == []
