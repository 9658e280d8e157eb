"""A real browser against the real server on loopback: upload a Corel photo, see neighbours, click one.

Needs Debian's chromium (.ci/run installs it). Elsewhere the test skips, saying so; under CI it fails
instead, so CI can never pass it by skipping. A screenshot is saved to test-artifacts/ on failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import simsearch
from simsearch.config import Settings
from simsearch.embedder import HubEmbedder
from simsearch.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, corel_images: Path, tiny_embedder: HubEmbedder) -> Iterator[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser test")
        pytest.skip("chromium not installed (apt-get install chromium)")
    import uvicorn

    store = simsearch.open(tmp_path_factory.mktemp("browser") / "store", model=tiny_embedder, settings=Settings(), create=True)
    store.index(corel_images)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    store.close()


def test_upload_shows_neighbours_and_click_searches_again(server: str, corel_images: Path,
                                                          request: pytest.FixtureRequest) -> None:
    from playwright.sync_api import expect, sync_playwright

    probe = corel_images / "q_0.jpg"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone screen
        try:
            page.goto(server)
            expect(page.locator("#stats")).to_contain_text("1000 photos indexed")
            page.set_input_files("#file", str(probe))
            hits = page.locator("#results .hit")
            expect(hits).to_have_count(20, timeout=30_000)
            expect(hits.nth(0).locator(".path")).to_have_text(str(probe))
            first_thumb = hits.nth(0).locator("img")
            first_thumb.scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first_thumb.element_handle())

            clicked = hits.nth(3).locator(".path").inner_text()
            hits.nth(3).click()
            expect(hits.nth(0).locator(".path")).to_have_text(clicked, timeout=30_000)
            expect(hits).to_have_count(20)
            expect(page.locator("#status")).to_contain_text("photos like")
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            raise
        finally:
            browser.close()
