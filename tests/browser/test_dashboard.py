"""The dashboard in a real browser: sign-in, the live jobs table, a job's
streaming timeline, cancel, the kill switch, roles and CSRF, the agent log
pane, and `corral ui`'s one-time link."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, expect

from corral.testing import ServerProcess
from tests.acceptance._helpers import marker, pids_matching, wait_for, wait_job

TIMEOUT = 15_000  # ms: what a live change may take to show, under load
expect.set_options(timeout=TIMEOUT)
# In the page: the number of the last `tick N` line of the log pane (-1: none yet).
LAST_TICK = (
    "(+(document.querySelector('#log')?.lastElementChild?.textContent ?? '')"
    ".split('tick ')[1] || -1)"
)


def sign_in(
    browser: Browser, srv: ServerProcess, key: str | None = None, **options: Any
) -> BrowserContext:
    """A browser context signed in through the login form with ``key``."""
    ctx = browser.new_context(base_url=srv.url, **options)
    ctx.set_default_timeout(TIMEOUT)
    page = ctx.new_page()
    page.goto("/ui/login")
    page.fill("input[name=key]", key or srv.admin_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{srv.url}/ui/jobs")
    page.close()
    return ctx


@pytest.fixture
def admin(browser: Browser, srv: ServerProcess) -> Iterator[BrowserContext]:
    ctx = sign_in(browser, srv)
    yield ctx
    ctx.close()


def submit(http: httpx.Client, **body: Any) -> str:
    resp = http.post("/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["job_id"]
    return job_id


def viewer_key(srv: ServerProcess) -> str:
    res = srv.cli(
        "keys",
        "create",
        "--role",
        "viewer",
        "--name",
        "watcher",
        "--data-dir",
        str(srv.data_dir),
        "--json",
    )
    assert res.returncode == 0, res.stderr
    key: str = json.loads(res.stdout)["key"]
    return key


def test_sign_in_and_out(browser: Browser, srv: ServerProcess, shots: Path) -> None:
    ctx = browser.new_context(base_url=srv.url)
    ctx.set_default_timeout(TIMEOUT)
    page = ctx.new_page()
    page.goto("/ui/jobs")
    expect(page).to_have_url(f"{srv.url}/ui/login?next=/ui/jobs")
    page.fill("input[name=key]", "crl_nope_nope")
    page.click("button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("invalid or revoked API key")
    page.screenshot(path=shots / "login.png")
    page.fill("input[name=key]", srv.admin_key)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Jobs")
    cookie = next(c for c in ctx.cookies() if c["name"] == "corral_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert srv.admin_key not in cookie["value"]
    page.click("text=Sign out")
    expect(page).to_have_url(f"{srv.url}/ui/login")
    page.goto("/ui/fleet")
    expect(page).to_have_url(f"{srv.url}/ui/login?next=/ui/fleet")
    ctx.close()


# Records in sessionStorage (it survives the page's reload when the job ends)
# the browser's clock when each `line-N` first appeared in the timeline.
SEEN_LINES = """
document.addEventListener("DOMContentLoaded", () => {
  const tl = document.getElementById("timeline");
  if (!tl) return;
  new MutationObserver((changes) => {
    for (const c of changes) for (const n of c.addedNodes) {
      const key = ((n.textContent || "").match(/line-[0-9]+/) || [])[0];
      if (key && !sessionStorage.getItem(key)) sessionStorage.setItem(key, String(Date.now()));
    }
  }).observe(tl, { childList: true });
});
"""


def test_a_job_appears_live_and_its_timeline_streams(
    admin: BrowserContext, http: httpx.Client, shots: Path
) -> None:
    page = admin.new_page()
    page.goto("/ui/jobs")
    page.wait_for_function("() => document.readyState === 'complete'")
    mark = uuid.uuid4().hex[:8]
    script = f"echo start-{mark}; for i in $(seq 1 10); do echo line-$i; sleep 0.3; done; sleep 4"
    job_id = submit(http, command=script, labels=["ui", mark], title=f"stream {mark}")
    row = page.locator(f"#job-{job_id}")
    expect(row).to_be_visible()  # no reload: the SSE feed brought it
    expect(row.locator(".chip", has_text=mark)).to_be_visible()
    page.screenshot(path=shots / "jobs.png", full_page=True)

    job_page = admin.new_page()
    job_page.add_init_script(SEEN_LINES)
    job_page.goto(f"/ui/jobs/{job_id}")
    timeline = job_page.locator("#timeline")
    expect(timeline).to_contain_text(f"start-{mark}")
    expect(timeline).to_contain_text("line-3")
    job_page.screenshot(path=shots / "job-running.png", full_page=True)
    # The row on the table page follows the job to its end; the job page
    # reloads with the result, and replays the timeline without repeating it.
    expect(row.locator("[data-f=state]")).to_have_text("done")
    expect(job_page.locator("#job-state .state")).to_have_text("done")
    expect(job_page.locator("#result")).to_contain_text("line-10")
    expect(job_page.locator("#timeline li", has_text="line-")).to_have_count(10)
    job_page.screenshot(path=shots / "job-done.png", full_page=True)
    # Lines were shown while the job ran, not after it.
    seen = job_page.evaluate("Object.fromEntries(Object.entries(sessionStorage))")
    finished = datetime.fromisoformat(http.get(f"/jobs/{job_id}").json()["finished_at"])
    early = [k for k, at in seen.items() if int(at) < finished.timestamp() * 1000]
    assert len(early) >= 3, (seen, finished)


def test_cancel_from_the_page_kills_the_job(admin: BrowserContext, http: httpx.Client) -> None:
    mark = marker()
    job_id = submit(http, command=f"echo up; sleep 300.{mark}")  # the marker names the process
    page = admin.new_page()
    page.goto(f"/ui/jobs/{job_id}")
    expect(page.locator("#timeline")).to_contain_text("up")
    wait_for(lambda: pids_matching(f"300.{mark}"), what="the job's sleep to start")
    page.on("dialog", lambda d: d.accept())
    page.click("#cancel")
    expect(page.locator("#job-state .state")).to_have_text("cancelled")
    assert wait_job(http, job_id)["state"] == "cancelled"
    wait_for(lambda: not pids_matching(f"300.{mark}"), what="the job's processes to end")
    expect(page.locator("#cancel")).to_have_count(0)
    expect(page.locator("#retry")).to_be_visible()


def test_the_kill_switch_pauses_dispatch(
    admin: BrowserContext, http: httpx.Client, shots: Path
) -> None:
    page = admin.new_page()
    page.goto("/ui/fleet")
    toggle = page.locator("#ks-toggle")
    expect(toggle).to_have_text("Pause dispatch")
    toggle.click()
    expect(page.locator("#ks-state")).to_contain_text("ON")
    expect(page.locator("#paused-pill")).to_be_visible()
    assert http.get("/status").json()["paused"] is True
    try:
        job_id = submit(http, command="echo after-resume")
        job = http.get(f"/jobs/{job_id}").json()
        assert job["state"] == "queued"
        assert "kill switch" in (job["waiting"] or ""), job["waiting"]
        page.screenshot(path=shots / "fleet-paused.png", full_page=True)
        page.locator("#ks-toggle").click()
        expect(page.locator("#ks-state")).to_contain_text("off")
        assert http.get("/status").json()["paused"] is False
        assert wait_job(http, job_id)["state"] == "done"
    finally:
        http.post("/admin/resume")
    page.screenshot(path=shots / "fleet.png", full_page=True)


def test_a_viewer_sees_no_write_buttons_and_forged_posts_are_refused(
    browser: Browser, admin: BrowserContext, srv: ServerProcess, http: httpx.Client, shots: Path
) -> None:
    job_id = submit(http, command="sleep 600")
    viewer = sign_in(browser, srv, viewer_key(srv))
    try:
        page = viewer.new_page()
        page.goto("/ui/jobs")
        expect(page.locator(".who .role")).to_have_text("viewer")
        expect(page.locator("#submit")).to_have_count(0)
        page.goto(f"/ui/jobs/{job_id}")
        expect(page.locator("#timeline")).to_be_visible()
        expect(page.locator("#cancel")).to_have_count(0)
        page.goto("/ui/fleet")
        expect(page.locator("#ks-state")).to_be_visible()
        expect(page.locator("#ks-toggle")).to_have_count(0)
        page.goto("/ui/agents")
        expect(page.locator("#agents")).to_be_visible()
        expect(page.locator("#agents button")).to_have_count(0)
        page.screenshot(path=shots / "agents-viewer.png", full_page=True)
        # The viewer's own session, with its CSRF token: the role still refuses.
        csrf = page.locator("meta[name=csrf]").get_attribute("content")
        resp = viewer.request.post(f"/ui/jobs/{job_id}/cancel", form={"csrf": csrf or ""})
        assert resp.status == 403, resp.text()
    finally:
        viewer.close()
    # An admin's session, without the token (what a forged form would send).
    resp = admin.request.post("/ui/pause", form={"next": "/ui/fleet"})
    assert resp.status == 403 and "CSRF" in resp.text(), resp.text()
    resp = admin.request.post(f"/ui/jobs/{job_id}/cancel", form={"csrf": "forged"})
    assert resp.status == 403
    # The cookie does not stand in for a key on the API's writes.
    assert admin.request.post(f"/jobs/{job_id}/cancel").status == 401
    assert http.get("/status").json()["paused"] is False
    assert http.get(f"/jobs/{job_id}").json()["state"] in ("queued", "assigned", "running")
    http.post(f"/jobs/{job_id}/cancel")


def test_the_log_pane_follows_an_agent_daemon(
    admin: BrowserContext, http: httpx.Client, shots: Path
) -> None:
    wait_for(
        lambda: http.get("/agents/ticker").json()["status"] == "running", what="ticker running"
    )
    page = admin.new_page()
    page.goto("/ui/agents/ticker")
    log = page.locator("#log")
    expect(log.locator("div").first).to_be_visible()

    def last_tick() -> int:
        text = log.locator("div").last.inner_text()
        return int(text.rsplit("tick ", 1)[1])

    first = last_tick()
    # Ten more lines arrive (a line every 100 ms) without a reload.
    page.wait_for_function(f"n => {LAST_TICK} >= n", arg=first + 10)
    offsets = page.eval_on_selector_all("#log div", "els => els.map(e => +e.dataset.offset)")
    assert offsets == sorted(set(offsets)), "lines repeated or out of order"
    page.screenshot(path=shots / "agent-log.png")
    page.click("button[data-action=stop]")
    expect(page.locator("#agent-status")).to_have_text("stopped")
    page.click("button[data-action=start]")
    expect(page.locator("#agent-status")).to_have_text("running")
    # The new process's lines follow (its ticks count from 0 again: compare offsets).
    offset = int(log.locator("div").last.get_attribute("data-offset") or 0)
    page.wait_for_function(
        "n => +document.querySelector('#log').lastElementChild.dataset.offset > n + 5", arg=offset
    )


def test_corral_ui_opens_a_signed_in_page_once(browser: Browser, srv: ServerProcess) -> None:
    res = srv.cli("ui", "--no-browser")
    assert res.returncode == 0, res.stderr
    link = res.stdout.strip()
    assert link.startswith(f"{srv.url}/ui/login/")
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT)
    page = ctx.new_page()
    page.goto(link)
    expect(page).to_have_url(f"{srv.url}/ui/jobs")
    expect(page.locator(".who .role")).to_have_text("admin")
    ctx.close()
    again = browser.new_context()
    page = again.new_page()
    page.goto(link)
    expect(page.locator(".flash")).to_contain_text("used already")
    again.close()


def test_phone_width_and_dark(
    browser: Browser, srv: ServerProcess, http: httpx.Client, shots: Path
) -> None:
    submit(http, command="echo phone", labels=["phone"])
    ctx = sign_in(browser, srv, viewport={"width": 390, "height": 844}, color_scheme="dark")
    page = ctx.new_page()
    page.goto("/ui/jobs")
    expect(page.locator("#jobs")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width ({width}px)"
    bg = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    assert bg == "rgb(17, 19, 23)", bg  # the dark palette
    page.screenshot(path=shots / "jobs-phone-dark.png", full_page=True)
    ctx.close()


def test_charts_render_with_data(admin: BrowserContext, http: httpx.Client, shots: Path) -> None:
    ok, bad = submit(http, command="echo ok"), submit(http, command="exit 3", max_attempts=1)
    assert wait_job(http, ok)["state"] == "done"
    assert wait_job(http, bad)["state"] == "failed"
    stats = http.get("/stats", params={"bucket": "minute", "group_by": "state"}).json()
    keys = {s["key"] for s in stats["series"]}
    assert {"done", "failed"} <= keys, stats
    page = admin.new_page()
    page.goto("/ui/stats?range=1h")
    finished = page.locator("section.chart", has_text="Jobs finished")
    expect(finished.locator("svg rect.c-ok").first).to_be_visible()
    expect(finished.locator("svg rect.c-bad").first).to_be_visible()
    height = float(finished.locator("svg rect.c-ok").first.get_attribute("height") or 0)
    assert height > 0
    assert int(page.locator("#stats-jobs").inner_text()) >= 2
    expect(finished.locator("svg rect.c-ok title").first).to_contain_text("done")
    page.screenshot(path=shots / "stats.png", full_page=True)


def test_needs_you_answer_unblocks_a_waiting_job(
    admin: BrowserContext, http: httpx.Client, shots: Path
) -> None:
    """A worker (driven here by hand over the runner protocol) asks a question;
    the question shows in "Needs you" with a count; an answer from the page
    is what the worker's waiting call returns."""
    runner = http.post(
        "/runners/register", json={"name": "hand", "providers": ["asker"], "slots": 1}
    )
    assert runner.status_code == 200, runner.text
    job_id = submit(http, command="true", provider="asker", title="deploy to staging?")
    lease = http.post(
        f"/runners/{runner.json()['runner_id']}/lease", json={"max_jobs": 1, "wait": 10}
    ).json()
    [item] = lease["jobs"]
    assert item["job"]["id"] == job_id
    worker = {"Authorization": f"Bearer {item['token']}"}
    # A page open before the question is asked shows the count without a reload.
    watching = admin.new_page()
    watching.goto("/ui/jobs")
    expect(watching.locator("#needs-count")).to_have_count(0)
    asked = http.post(
        "/worker/questions",
        json={"question": "Deploy to staging now?", "options": ["yes", "not yet"]},
        headers=worker,
    )
    assert asked.status_code == 200, asked.text
    question_id = asked.json()["question_id"]
    [open_q] = http.get("/questions").json()
    assert (open_q["job_id"], open_q["question_id"]) == (job_id, question_id)
    assert open_q["options"] == ["yes", "not yet"]
    # The navigation polls every 10 s while the page is visible.
    expect(watching.locator("#needs-count")).to_have_text("1", timeout=TIMEOUT + 10_000)
    watching.close()

    page = admin.new_page()
    page.goto("/ui/needs")
    expect(page.locator("#needs-count")).to_have_text("1")
    card = page.locator(f"#q-{question_id}")
    expect(card).to_contain_text("Deploy to staging now?")
    page.screenshot(path=shots / "needs.png", full_page=True)
    card.locator("button.option", has_text="not yet").click()
    expect(page.locator("#nothing-needed")).to_be_visible()
    expect(page.locator("#needs-count")).to_have_count(0)

    waited = http.post(f"/worker/questions/{question_id}/wait", json={"wait": 0}, headers=worker)
    assert waited.status_code == 200, waited.text
    assert waited.json()["state"] == "answered"
    assert waited.json()["answer"] == "not yet"
    assert waited.json()["answered_by"] == "local admin"
    assert http.get("/questions").json() == []
    page.goto(f"/ui/jobs/{job_id}")
    expect(page.locator("#timeline")).to_contain_text("answer from local admin: not yet")
    http.post(f"/jobs/{job_id}/cancel")


def test_bulk_cancel_of_a_filtered_set(admin: BrowserContext, http: httpx.Client) -> None:
    mark = uuid.uuid4().hex[:8]
    http.post("/admin/pause")  # they stay queued: the count is exact
    try:
        ids = [submit(http, command="sleep 30", labels=[f"bulk-{mark}"]) for _ in range(3)]
        other = submit(http, command="sleep 30", labels=["not-this-one"])
        page = admin.new_page()
        page.goto(f"/ui/jobs?label=bulk-{mark}")
        messages: list[str] = []
        page.on("dialog", lambda d: (messages.append(d.message), d.accept()))
        page.click("#bulk-cancel")
        expect(page.locator("#notice")).to_have_text("3 jobs cancelled")
        assert messages == ["Cancel 3 jobs?"]
        assert {http.get(f"/jobs/{i}").json()["state"] for i in ids} == {"cancelled"}
        assert http.get(f"/jobs/{other}").json()["state"] == "queued"
        expect(page.locator("#bulk-retry")).to_have_text("Retry 3")
    finally:
        http.post("/admin/resume")
        http.post(f"/jobs/{other}/cancel")


def test_a_job_s_webhook_deliveries_and_redeliver(
    admin: BrowserContext, http: httpx.Client, shots: Path
) -> None:
    """The job's page lists its deliveries with their attempts; Redeliver
    sends one again (the receiver sees the same delivery id twice)."""
    seen: list[str] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers["X-Corral-Delivery"])
            self.send_response(204)
            self.end_headers()

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        job_id = submit(http, command="echo hooked", webhook={"url": url, "states": ["done"]})
        wait_job(http, job_id)
        wait_for(lambda: len(seen) == 1, what="the delivery")
        page = admin.new_page()
        page.goto(f"/ui/jobs/{job_id}")
        row = page.locator("#deliveries tbody tr")
        expect(row).to_have_count(1)
        expect(row.locator("[data-f=state]")).to_have_text("delivered")
        expect(row).to_contain_text("204")
        page.screenshot(path=shots / "job-deliveries.png", full_page=True)
        row.locator("button[data-action=redeliver]").click()
        expect(page).to_have_url(f"{http.base_url}/ui/jobs/{job_id}")
        wait_for(lambda: len(seen) == 2, what="the redelivery")
        assert seen[0] == seen[1]  # the same delivery, sent again
        page.reload()
        expect(page.locator("#deliveries tbody tr [data-f=state]")).to_have_text("delivered")
        attempts = http.get(f"/jobs/{job_id}/deliveries").json()[0]["attempts"]
        assert attempts == 2
    finally:
        receiver.shutdown()
        receiver.server_close()


def test_unknown_pages_answer_with_a_page(admin: BrowserContext, http: httpx.Client) -> None:
    page = admin.new_page()
    for path, says in (
        ("/ui/jobs/0123456789abcdef", "no job"),
        ("/ui/agents/nobody", "no agent 'nobody'"),
        ("/ui/nowhere", "no page /ui/nowhere"),
    ):
        resp = page.goto(path)
        assert resp is not None and resp.status == 404, path
        assert resp.headers["content-type"].startswith("text/html")
        expect(page.locator("#error-page h1")).to_have_text("404 · Not found")
        expect(page.locator("#error-page")).to_contain_text(says)
        expect(page.locator(".who .role")).to_have_text("admin")  # the navigation stays
    # The API keeps its JSON errors.
    resp = http.get("/jobs/0123456789abcdef")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "job_not_found"


def test_sessions_list_leads_to_a_session(admin: BrowserContext, http: httpx.Client) -> None:
    job_id = submit(http, command="echo listed", title="a listed session")
    session_id = wait_job(http, job_id)["session_id"]
    listed = http.get("/sessions", params={"limit": 5}).json()
    assert listed[0]["id"] == session_id
    page = admin.new_page()
    page.goto("/ui/sessions")
    row = page.locator(f"#session-{session_id}")
    expect(row).to_contain_text("a listed session")
    expect(row.locator(".state")).to_have_text("done")
    row.locator("a").first.click()
    expect(page).to_have_url(f"{http.base_url}/ui/sessions/{session_id}")
    expect(page.locator(".turns")).to_contain_text("listed")


def test_the_submit_form_takes_a_local_run_at(
    browser: Browser, srv: ServerProcess, http: httpx.Client
) -> None:
    """ "Not before" is the browser's local time; the job's run_at is that instant in UTC."""
    ctx = sign_in(browser, srv, timezone_id="Asia/Tokyo")  # UTC+9, no daylight saving
    try:
        page = ctx.new_page()
        page.goto("/ui/jobs")
        page.click("#submit summary")
        page.fill("#submit input[name=command]", "echo later")
        page.fill("#submit input[name=run_at]", "2031-05-06T07:08")
        page.click("#submit button[type=submit]")
        expect(page.locator("#job-state .state")).to_have_text("queued")
        job_id = page.url.rsplit("/", 1)[1]
        job = http.get(f"/jobs/{job_id}").json()
        assert job["run_at"].startswith("2031-05-05T22:08:00"), job["run_at"]
        assert "2031" in (job["waiting"] or ""), job["waiting"]
        http.post(f"/jobs/{job_id}/cancel")
    finally:
        ctx.close()
