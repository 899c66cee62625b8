"""The gateway's web interface: routes, and the page driven in headless Chromium end to end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from openenv_zmq.gateway import create_gateway_app
from openenv_zmq.gateway.web import web_interface_enabled
from tests.processes import Processes, serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_TIMEOUT_MS = 15_000
SCREENSHOT_ENV_VAR = "SAVE_SCREENSHOT"
"""When set, the browser test saves a screenshot of the page to this path (docs/web.png)."""


@pytest.fixture
def gateway(procs: Processes) -> Iterator[str]:
    broker = procs.broker(workers=1, envs=("echo",))
    with serving(create_gateway_app(broker.frontend, "echo", web=True)) as url:
        yield url


def serves_page(web: bool | None) -> bool:
    # Outside a `with` block TestClient runs no lifespan, so no broker is needed.
    client = TestClient(create_gateway_app("tcp://127.0.0.1:1", "echo", web=web))
    status = {client.get(path, follow_redirects=False).status_code for path in ("/", "/web/")}
    assert status in ({307, 200}, {404}), status
    return status == {307, 200}


@pytest.mark.parametrize(
    ("value", "enabled"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("false", False), ("", False)],
)
def test_the_env_var_switches_the_page_on(value: str, enabled: bool) -> None:
    assert web_interface_enabled({"ENABLE_WEB_INTERFACE": value}) is enabled
    assert web_interface_enabled({}) is False


def test_web_parameter_overrides_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLE_WEB_INTERFACE", "true")
    assert serves_page(None)
    assert not serves_page(False)
    monkeypatch.setenv("ENABLE_WEB_INTERFACE", "false")
    assert not serves_page(None)
    assert serves_page(True)


def test_root_redirects_to_the_page(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=10) as http:
        for path in ("/", "/web"):
            reply = http.get(path)
            assert reply.status_code == 307
            assert reply.headers["location"] == "/web/"
        page = http.get("/web/", follow_redirects=True)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'id="action-form"' in page.text
        # the page is self-contained: no script or stylesheet is fetched from elsewhere
        assert "<script src" not in page.text and "<link" not in page.text
        assert "/web/" not in {p for p in http.get("/openapi.json").json()["paths"]}


def test_page_resets_and_steps_the_echo_env(gateway: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 640})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(gateway + "/")
            assert page.url == gateway + "/web/"
            expect(page.locator("#title")).to_have_text("echo")
            expect(page.locator("#status")).to_have_text("connected")

            page.click("#reset")
            expect(page.locator("#observation")).to_contain_text("Echo environment ready!")
            expect(page.locator("#reward")).to_have_text("0")
            expect(page.locator("#state-view")).to_contain_text('"step_count": 0')

            # the form was generated from the schema: EchoAction's one field, no metadata
            expect(page.locator("#fields input, #fields textarea")).to_have_count(1)
            page.fill("#field-message", "Hello")
            page.click("#step")
            expect(page.locator("#observation")).to_contain_text('"echoed_message": "Hello"')
            expect(page.locator("#observation")).to_contain_text('"message_length": 5')
            expect(page.locator("#reward")).to_have_text("0.5")
            expect(page.locator("#done")).to_have_text("false")
            expect(page.locator("#state-view")).to_contain_text('"step_count": 1')
            expect(page.locator("#history li")).to_have_count(2)
            expect(page.locator("#history li").first).to_contain_text('{"message":"Hello"}')
            expect(page.locator("#error")).to_have_text("")

            screenshot = os.environ.get(SCREENSHOT_ENV_VAR)
            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
