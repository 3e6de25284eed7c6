"""The web console tried as a new user would: `agentic serve` with no settings (the embedded model), the page in
Debian's chromium, a prompt on each tier, then the sample ideas uploaded and analyzed from the page.

    .venv/bin/python benchmarks/console_walkthrough.py [OUT_DIR]      (default docs/console)

Writes 1-status.png, 2-playground-heavy.png, 2-playground-light.png, 3-analysis-report.png, 4-metrics-after.png
and serve.log, and prints each answer's tokens and tokens/s, the analysis wall time, the report's summary, and
any request that left 127.0.0.1 or console error (both should be empty).
"""
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
OUT = str(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "console")
os.makedirs(OUT, exist_ok=True)
work = tempfile.mkdtemp(prefix="agentic-newuser-")
server = subprocess.Popen([str(ROOT / ".venv/bin/agentic"), "serve", "--port", "8765"], cwd=work,
                          stdout=open(f"{OUT}/serve.log", "w"), stderr=subprocess.STDOUT)
try:
    for _ in range(600):
        try:
            urllib.request.urlopen("http://127.0.0.1:8765/health")
            break
        except OSError:  # not listening yet
            time.sleep(1)
    foreign, errors = [], []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = b.new_page(viewport={"width": 1360, "height": 1000})
        page.on("request", lambda r: None if r.url.startswith("http://127.0.0.1:8765") else foreign.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto("http://127.0.0.1:8765/")
        page.locator("#status-tiles .tile-value", has_text="llama_cpp").wait_for(timeout=600_000)
        page.screenshot(path=f"{OUT}/1-status.png")
        for tier in ("heavy", "light"):
            page.select_option("#play-tier", tier)
            page.fill("#play-prompt", "Give three tips for a new coffee shop owner.")
            page.fill("#play-max-tokens", "80")
            page.click("#play-send")
            finish = page.locator("#play-finish", has_text="length")
            finish.or_(page.locator("#play-finish", has_text="stop")).wait_for(timeout=600_000)
            page.locator("#playground").screenshot(path=f"{OUT}/2-playground-{tier}.png")
            print(tier, page.locator("#play-tokens").inner_text(), page.locator("#play-rate").inner_text(), flush=True)
        page.set_input_files("#run-file", str(ROOT / "examples" / "business_ideas.csv"))
        started = time.time()
        page.click("#run-start")
        page.locator("#run-table tbody tr[data-state='done']").wait_for(timeout=1_800_000)
        row = page.locator("#run-table tbody tr").first.inner_text()
        print("analysis wall", round(time.time() - started, 1), row, flush=True)
        frame = page.frame_locator("#report-frame")
        frame.locator("h1").wait_for()
        page.locator("#report").scroll_into_view_if_needed()
        page.screenshot(path=f"{OUT}/3-analysis-report.png", full_page=True)
        page.locator("#metrics").screenshot(path=f"{OUT}/4-metrics-after.png")
        print("summary:", frame.locator("#summary").inner_text())
        print("foreign requests:", foreign, "console errors:", errors)
        b.close()
finally:
    server.terminate()
    server.wait()
