"""The dbt docs site, served on 127.0.0.1 and opened in a real headless Chromium (Debian's, driven by Playwright):
a staging model's page renders its column descriptions, PII and deprecation marks, and unique condition."""

from __future__ import annotations

import functools
import shutil
import threading
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loaders import runtime
from loaders.loads import load_asapp
from loaders.sandbox.exports import write_partition
from tests.python.helpers import PROJECT, Warehouse

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


def test_docs_site_renders_column_descriptions(exports: Path, warehouse: Warehouse, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: run `make sysdeps` (apt-get install chromium)")
    write_partition(
        exports,
        "convos_intents",
        datetime(2026, 11, 1, tzinfo=UTC),
        [{"issue_id": 1, "final_intent_code": "BILLING", "instance_ts": "2026-11-01 00:00:00"}],
    )
    load_asapp()
    assert runtime.run_dbt(["build", "--select", "stg_asapp__convos_intents"])
    assert runtime.run_dbt(["docs", "generate"])
    site = tmp_path / "target"
    assert (site / "index.html").exists() and (site / "catalog.json").exists()

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/#!/model/model.asapp_elt.stg_asapp__convos_intents"
    screenshot = PROJECT / "test-output" / "docs-site-stg_asapp__convos_intents.png"
    screenshot.parent.mkdir(exist_ok=True)
    try:
        with playwright.sync_playwright() as p:
            # Playwright gives every launch a fresh, empty user data dir
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(url)
            page.get_by_text("The final code name classifying the customer's query").first.wait_for(timeout=30_000)
            text = page.inner_text("body")
            page.screenshot(path=str(screenshot), full_page=False)
            browser.close()
    finally:
        server.shutdown()
    assert "stg_asapp__convos_intents" in text
    assert "unique condition: issue_id" in text  # the model description carries key and sync time
    assert "sync 1h" in text
    assert "Undocumented: named by the feed's unique condition or ordering key" in text  # instance_ts
    assert screenshot.stat().st_size > 10_000
