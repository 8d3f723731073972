"""The admin console in a real browser (headless Debian Chromium driven by Playwright) against real processes: the
tenant-service, a gateway and the notes app. Saves the screenshots of docs/console.md (1280 x 800)."""

from __future__ import annotations

import re
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from support.stacks import gw, make_tenant
from tenantry_devtools import ensure_binaries, find_chromium
from tenantry_devtools.platform import Installation, Platform
from tenantry_devtools.processes import wait_until

pytestmark = pytest.mark.e2e

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "images" / "console"
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
async def inst(pg_url: str, redis_url: str) -> AsyncIterator[Installation]:
    installation = Installation.isolated(pg_url, redis_url, label="console")
    await installation.create()
    yield installation
    await installation.drop()


@pytest.fixture(scope="module")
def platform(inst: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    # Gateways flush their usage counts every second, so the tenant page's chart shows this test's requests.
    started = Platform.launch(
        inst,
        tmp_path_factory.mktemp("console"),
        gateway_env={"DIRECTORY_REFRESH_SECONDS": "0.5", "USAGE_FLUSH_SECONDS": "1"},
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ensure_binaries(install=True, postgres=False, redis=False, chromium=True)  # Debian's chromium, no download
    chromium = find_chromium()
    assert chromium is not None
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        yield launched
        launched.close()


class Recorder:
    """Every request a page makes, and every CSP violation or script error it reports."""

    def __init__(self, context: BrowserContext) -> None:
        self.urls: list[str] = []
        self.problems: list[str] = []
        context.on("request", lambda request: self.urls.append(request.url))
        context.on("weberror", lambda error: self.problems.append(str(error.error)))

    def watch(self, page: Page) -> Page:
        page.on(
            "console",
            lambda msg: (
                self.problems.append(msg.text)
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )
        return page


def no_inline_script(page: Page) -> None:
    assert page.locator("script:not([src])").count() == 0
    assert page.locator("[style]").count() == 0


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


class _Accepting(BaseHTTPRequestHandler):
    """A webhook receiver that takes every delivery (204) and keeps the event types it got."""

    received: list[str]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.received.append(body.decode())  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Accepting)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def sign_in(page: Page, platform: Platform) -> None:
    page.fill("#token", platform.installation.admin_token)
    page.click("button[type=submit]")


def usage_today(platform: Platform, slug: str) -> int:
    """The tenant's requests today in its daily usage history (admin API)."""
    answer = platform.admin.get(f"/admin/tenants/{slug}/usage", params={"granularity": "day"})
    assert answer.status_code == 200, answer.text
    today = answer.json()["history"][-1]
    return int(today["requests"]) + int(today["rejected"])


def test_an_admin_runs_a_tenant_from_the_console(
    platform: Platform, browser: Browser, receiver: ThreadingHTTPServer
) -> None:
    base = platform.service.url
    acme = make_tenant(platform, "acme-shop", limits={"requests_per_minute": 1_000_000, "requests_per_day": 10**8})
    for slug in ("globex", "initech", "umbrella-labs", "hooli"):
        platform.admin.post("/admin/tenants", json={"slug": slug, "name": slug.replace("-", " ").title()})
    doomed = make_tenant(platform, "doomed-co")
    capacity = platform.admin.patch("/admin/servers/default", json={"capacity": 20})  # a bar worth a screenshot
    assert capacity.status_code == 200, capacity.text

    context = browser.new_context(viewport=VIEWPORT, base_url=base)
    recorder = Recorder(context)
    page = recorder.watch(context.new_page())

    # Without a session: the sign-in page, which brings the admin back where they were going.
    page.goto("/console/servers")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next=/console/servers$"))
    no_inline_script(page)
    shot(page, "sign-in")
    page.fill("#token", "not-the-token-" + "x" * 20)
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_have_text("That token is not valid.")
    sign_in(page, platform)
    expect(page).to_have_url(f"{base}/console/servers")
    expect(page.locator("svg.capacity").first).to_be_visible()
    no_inline_script(page)
    shot(page, "servers")

    # A webhook for what happens next: its signing secret shows once.
    page.goto("/console/webhooks")
    page.fill("#webhook-url", f"http://127.0.0.1:{receiver.server_address[1]}/tenantry")
    for event in ("tenant.suspended", "tenant.resumed", "backup.completed", "tenant.purged"):
        page.check(f"input[name=events][value='{event}']")
    page.get_by_role("button", name="Create webhook").click()
    expect(page.locator("#new-secret-value")).to_contain_text("whsec_")
    webhook_page = urlsplit(page.locator("form[action$='/rotate-secret']").get_attribute("action") or "").path
    webhook_page = webhook_page.removesuffix("/rotate-secret")

    # Find the tenant by searching (htmx replaces the table as one types).
    page.goto("/console/tenants")
    expect(page.locator("#tenant-table")).to_contain_text("globex")
    page.fill("#q", "acme")
    expect(page.locator("#tenant-table")).not_to_contain_text("globex")
    expect(page).to_have_url(re.compile(r"q=acme"))
    page.fill("#q", "")
    expect(page.locator("#tenant-table")).to_contain_text("globex")
    no_inline_script(page)
    shot(page, "tenants")
    page.fill("#q", "acme")
    page.get_by_role("link", name="acme-shop").click()
    expect(page.locator("h1")).to_contain_text("acme-shop")
    no_inline_script(page)

    # Suspend: the gateway refuses the tenant; resume: it serves again.
    assert gw(platform, "GET", "/notes", acme).status_code == 200
    page.get_by_role("button", name="Suspend").click()
    expect(page.locator("#tenant-status")).to_have_text("suspended")
    wait_until(lambda: gw(platform, "GET", "/notes", acme).status_code == 403, timeout=15, what="refused")
    assert gw(platform, "GET", "/notes", acme).json()["code"] == "tenant_suspended"
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#tenant-status")).to_have_text("active")
    wait_until(lambda: gw(platform, "GET", "/notes", acme).status_code == 200, timeout=15, what="served again")

    # Rotate the key: the new one shows once, and works; a later visit does not show it.
    page.get_by_role("button", name="Rotate").first.click()
    new_key = page.locator("#new-key-value").inner_text()
    assert new_key.startswith("tk_")
    assert new_key != acme.key
    page.goto(f"/console/tenants/{acme.slug}")
    expect(page.locator("#new-key")).to_have_count(0)
    assert new_key not in page.content()
    wait_until(
        lambda: httpx.get(f"{platform.gateway.url}/notes", headers={"X-API-Key": new_key}).status_code == 200,
        timeout=15,
        what="the rotated key served",
    )

    # A backup: its operation's progress updates by itself until it has succeeded.
    page.fill("#note", "from the console")
    page.get_by_role("button", name="Start a backup").click()
    expect(page.locator("p.notice")).to_contain_text("backup was started")
    expect(page.locator("#operations")).to_contain_text("succeeded", timeout=60_000)
    # The chart of the last 30 days: today's bar is the requests this test sent through the gateway, counted by the
    # gateway and flushed into the usage history (the bar appears once the flush has landed).
    for _ in range(40):
        assert gw(platform, "GET", "/notes", acme).status_code == 200
    wait_until(
        lambda: usage_today(platform, acme.slug) >= 40, timeout=30, what="the gateway's counts in the usage history"
    )
    page.goto(f"/console/tenants/{acme.slug}")
    expect(page.get_by_role("button", name="Restore this backup")).to_have_count(1)
    expect(page.locator("#usage-history svg.chart rect.chart-bar")).to_have_count(30)
    no_inline_script(page)
    shot(page, "tenant")

    # Restore that backup: a restore operation (after a pre-restore backup), followed live until it has succeeded.
    page.get_by_role("button", name="Restore this backup").click()
    expect(page.locator("p.notice")).to_contain_text("restore was started")
    expect(page.locator("#operations tr.op-succeeded", has_text="restore")).to_have_count(1, timeout=90_000)
    wait_until(lambda: gw(platform, "GET", "/notes", acme).status_code == 200, timeout=15, what="served after restore")

    # A forged form (no CSRF token) is refused and changes nothing.
    page.evaluate(
        """slug => { const f = document.createElement('form'); f.method = 'post';
        f.action = '/console/tenants/' + slug + '/lifecycle/suspend'; document.body.append(f); f.submit(); }""",
        acme.slug,
    )
    expect(page.locator("h1")).to_have_text("Refused")
    assert platform.admin.get(f"/admin/tenants/{acme.slug}").json()["status"] == "active"

    # Plans and the audit log, where the console's actions carry the admin as actor.
    page.goto("/console/plans")
    expect(page.locator("h2", has_text="free")).to_be_visible()
    no_inline_script(page)
    shot(page, "plans")
    page.goto("/console/audit")
    expect(page.locator("table.audit")).to_contain_text("tenant.suspend")
    expect(page.locator("table.audit")).to_contain_text("admin:")
    no_inline_script(page)
    shot(page, "audit")

    # Purge asks for the slug: a wrong one changes nothing, the right one purges.
    page.goto(f"/console/tenants/{doomed.slug}")
    page.locator("details.purge summary").click()
    page.fill("#confirm_slug", "doomed")
    page.get_by_role("button", name=f"Purge {doomed.slug}").click()
    expect(page.locator("p.error")).to_contain_text("Type the tenant's slug exactly")
    assert platform.admin.get(f"/admin/tenants/{doomed.slug}").status_code == 200
    page.goto(f"/console/tenants/{doomed.slug}")
    page.locator("details.purge summary").click()
    page.fill("#confirm_slug", doomed.slug)
    page.get_by_role("button", name=f"Purge {doomed.slug}").click()
    expect(page.locator("p.notice")).to_contain_text("purged")
    assert platform.admin.get(f"/admin/tenants/{doomed.slug}").status_code == 404

    # The webhook's delivery log: every event since it was created, delivered to the receiver.
    wait_until(lambda: any("tenant.purged" in body for body in receiver.received), timeout=30, what="tenant.purged")
    page.goto(webhook_page)
    expect(page.locator("#deliveries")).to_contain_text("tenant.purged")
    expect(page.locator("#deliveries")).to_contain_text("tenant.suspended")
    expect(page.locator("#new-secret")).to_have_count(0)
    no_inline_script(page)
    shot(page, "webhook")

    # Sign out: the old cookie no longer opens a page.
    cookies = context.cookies()
    session_cookie = next(c for c in cookies if c["name"] == "tenantry_console")
    assert session_cookie["httpOnly"] is True
    assert session_cookie["sameSite"] == "Strict"
    assert session_cookie["path"] == "/console"
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in"))
    replay = browser.new_context(viewport=VIEWPORT, base_url=base)
    replay.add_cookies([session_cookie])
    old = replay.new_page()
    old.goto("/console/tenants")
    expect(old).to_have_url(re.compile(r"/console/sign-in\?next="))
    replay.close()

    # Nothing came from another site, and nothing broke the CSP.
    origin = urlsplit(base).netloc
    foreign = [u for u in recorder.urls if urlsplit(u).netloc != origin]
    assert foreign == []
    assert any(u.endswith("/console/static/htmx.min.js") for u in recorder.urls)
    assert recorder.problems == []
    context.close()
