"""What the dashboard's routes share: who is signed in, the CSRF check,
form bodies, and rendering a template."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from corral import __version__, auth
from corral.auth import BrowserSession, Principal, permits
from corral.errors import BadRequest, CorralError, Forbidden, Unauthorized
from corral.jobs import JobState
from corral.models import Job
from corral.services import Services

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
CSRF_HEADER = "x-csrf-token"
# Bulk cancel and retry act on at most this many of the jobs a filter matches.
BULK_MAX = 1000
MAX_FORM_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person signed in to this page: their key's principal, session and CSRF token."""

    principal: Principal
    session: BrowserSession
    csrf: str

    def can(self, permission: str) -> bool:
        return permits(self.principal.role, permission)


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def viewer(request: Request) -> Viewer | None:
    """The signed-in viewer, or None (no cookie, a bad or expired one, a revoked key)."""
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if not cookie:
        return None
    svc = services(request)
    try:
        who, session = await svc.browser_principal(cookie)
    except Unauthorized:
        return None
    if not permits(who.role, "read"):
        return None
    return Viewer(who, session, auth.csrf_token(session, svc.browser_secret))


async def matching(svc: Services, filters: dict[str, Any], limit: int) -> list[Job]:
    """The newest ``limit`` jobs the jobs page's filters match."""
    try:
        states = [JobState(s) for s in filters.get("state") or []]
    except ValueError:
        raise BadRequest(f"unknown state in {filters['state']!r}") from None
    return await svc.store.jobs.list(
        states=states,
        provider=filters.get("provider") or None,
        label=filters.get("label") or None,
        source=filters.get("source") or None,
        text=filters.get("q") or None,
        limit=limit,
    )


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


async def form(request: Request) -> dict[str, str]:
    """A urlencoded form body (the last value of each field)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise BadRequest(f"form over {MAX_FORM_BYTES} bytes")
    if body and kind != "application/x-www-form-urlencoded":
        raise BadRequest("send the form as application/x-www-form-urlencoded")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the form is not UTF-8") from None
    return {k: v[-1] for k, v in fields.items()}


async def writer(request: Request, permission: str) -> tuple[Viewer, dict[str, str]]:
    """The viewer behind a browser write and its form, after the checks: a
    live session, the session's CSRF token (form field ``csrf`` or the
    X-CSRF-Token header), a role that holds ``permission``."""
    who = await viewer(request)
    if who is None:
        raise Unauthorized("sign in first (/ui/login)")
    fields = await form(request)
    token = fields.get("csrf") or request.headers.get(CSRF_HEADER, "")
    if not auth.csrf_matches(who.session, services(request).browser_secret, token):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")
    who.principal.require(permission)
    return who, fields


def back(fields: dict[str, str], default: str, error: CorralError | None = None) -> Response:
    """303 to the form's ``next`` (a dashboard path only), with the error to show."""
    target = fields.get("next", "")
    if not target.startswith("/ui/") or target.startswith("//"):
        target = default
    if error is not None:
        sep = "&" if "?" in target else "?"
        target += f"{sep}error={quote(error.message[:300])}"
    return RedirectResponse(target, status_code=303)


async def render(
    request: Request, name: str, who: Viewer | None, status: int = 200, **context: Any
) -> HTMLResponse:
    paused, needs = False, 0
    if who is not None:
        store = services(request).store
        paused = await store.settings.get("paused") == "true"
        needs = len(await store.questions.pending())
    return templates.TemplateResponse(
        request,
        name,
        {
            "who": who,
            "version": __version__,
            "paused": paused,
            "needs": needs,
            "error": request.query_params.get("error"),
            "notice": request.query_params.get("notice"),
            "path": request.url.path,
            **context,
        },
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


ERROR_TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Not allowed"}


def wants_page(request: Request) -> bool:
    """A browser asking for a dashboard page: errors answer as a page, not JSON."""
    return request.method in ("GET", "HEAD") and (
        request.url.path == "/ui" or request.url.path.startswith("/ui/")
    )


async def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """The dashboard's error page (an unknown job, a bad filter...), with the
    navigation when the person is signed in."""
    who = await viewer(request)
    title = ERROR_TITLES.get(status, "Error")
    return await render(
        request, "error.html", who, status=status, code=status, title=title, message=message
    )


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """``when`` as people read it in a table: 12s, 4m, 3h, 2d."""
    if when is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 60:
        return f"{max(0, int(seconds))}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 86400)}d"


def duration_s(seconds: float | None) -> str:
    """A number of seconds as people read it: 9.5s, 4m07s, 3.2h, 2.1d."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return ""
    return duration_s(((end or datetime.now(UTC)) - start).total_seconds())


def iso(when: datetime | None) -> str:
    return "" if when is None else when.isoformat().replace("+00:00", "Z")


templates.env.filters["ago"] = ago
templates.env.filters["iso"] = iso
templates.env.globals["duration"] = duration
templates.env.globals["duration_s"] = duration_s
